"""``python -m skanomaly_runtime MODEL.onnx IMAGE_OR_DIR... --out DIR``: score
images with an exported model, without torch.

Writes ``predictions.csv`` (image, score, p_value, label) and, for models
with maps, ``masks/*.png`` and ``boxes.json``. ``skanomaly predict
MODEL.onnx`` writes the same and also heatmap overlays (it needs the full
install).
"""

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from . import load
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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    labels = np.where(scores - model.offset_ >= 0, 1, -1)
    with open(out / "predictions.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "score", "p_value", "label"])
        writer.writerows(zip(paths, scores, model.conformal_pvalues(scores=scores), labels))
    if maps is not None:
        from PIL import Image

        (out / "masks").mkdir(exist_ok=True)
        for index, (path, mask) in enumerate(zip(paths, model.anomaly_masks(maps=maps))):
            name = f"{index:04d}_{Path(path).stem}_mask.png"
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / name)
        threshold = model.metadata_["pixel_threshold"]
        with open(out / "boxes.json", "w") as fh:
            json.dump({"pixel_threshold": threshold,
                       "images": [{"image": p, "boxes": b}
                                  for p, b in zip(paths, model.anomaly_boxes(maps=maps))]},
                      fh, indent=2)
    print(f"{len(paths)} images, {int((labels == -1).sum())} flagged as anomalous -> {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
