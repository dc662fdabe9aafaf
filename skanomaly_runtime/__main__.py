"""``python -m skanomaly_runtime MODEL.onnx IMAGE_OR_DIR... --out DIR``: score
images with an exported model, without torch.

Writes ``predictions.csv`` (image, score, p_value, label) and, for models
with maps, ``masks/*.png`` and ``boxes.json``. ``skanomaly predict
MODEL.onnx`` writes the same and also heatmap overlays (it needs the full
install).
"""

import argparse
import sys

import numpy as np

from . import load
from ._output import _write_results
from .images import image_files


def main(argv=None):
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m skanomaly_runtime", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL", help=".onnx file from 'skanomaly export'")
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "openvino"))
    args = parser.parse_args(argv)
    try:
        model = load(args.model, backend=args.backend)
        paths = image_files(args.images)
        if not model.metadata_["maps"]:
            maps, scores = None, model.score_samples(paths)
        else:
            maps, scores = model.anomaly_maps(paths, return_scores=True)
    except (ValueError, ImportError) as exc:
        print(f"skanomaly_runtime: error: {exc}", file=sys.stderr)
        return 1
    labels = np.where(scores - model.offset_ >= 0, 1, -1)
    masks = boxes = None
    if maps is not None:
        masks = model.anomaly_masks(maps=maps)
        boxes = model.anomaly_boxes(maps=maps)
    print(_write_results(args.out, paths, scores, model.conformal_pvalues(scores=scores), labels,
                         masks, boxes, model.metadata_["pixel_threshold"]))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
