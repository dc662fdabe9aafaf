"""``python -m skanomaly_runtime MODEL.onnx IMAGE_OR_DIR... --out DIR``: score
images with an exported model, without torch.

Writes ``predictions.csv`` (image, score, p_value, label, error) and, for
models with maps, ``masks/*.png`` and ``boxes.json``, a batch at a time; an
unreadable image is named on stderr and in the error column, the others are
scored, and the exit status is 1. ``skanomaly predict
MODEL.onnx`` writes the same and also heatmap overlays (it needs the full
install).
"""

import argparse
import sys

from . import load
from ._output import predict_to_folder
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
    except (ValueError, ImportError) as exc:
        print(f"skanomaly_runtime: error: {exc}", file=sys.stderr)
        return 1

    def scores_and_maps(images):
        if not model.metadata_["maps"]:
            return None, model.score_samples(images)
        return model.anomaly_maps(images, return_scores=True)

    threshold = model.metadata_["pixel_threshold"] if model.metadata_["maps"] else None
    summary, n_failed = predict_to_folder(
        paths, args.out, scores_and_maps, lambda s: model.conformal_pvalues(scores=s),
        model.offset_, threshold, contamination=model.metadata_.get("contamination"))
    print(summary)
    return 1 if n_failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
