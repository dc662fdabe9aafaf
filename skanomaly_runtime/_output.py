"""The files a prediction run writes, in one place for both command lines."""

import csv
import json
from pathlib import Path

import numpy as np


def _result_stem(index, path):
    """File-name stem of the ``index``-th image's masks and overlays."""
    return f"{index:04d}_{Path(path).stem}"


def _write_results(out, paths, scores, pvalues, labels, masks=None, boxes=None, threshold=None):
    """Write ``predictions.csv`` and, with ``masks``, ``masks/*.png`` and
    ``boxes.json`` under ``out``; returns the one-line summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "score", "p_value", "label"])
        writer.writerows(zip(paths, scores, pvalues, labels))
    if masks is not None:
        from PIL import Image

        (out / "masks").mkdir(exist_ok=True)
        for index, (path, mask) in enumerate(zip(paths, masks)):
            name = f"{_result_stem(index, path)}_mask.png"
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / name)
        with open(out / "boxes.json", "w") as fh:
            json.dump({"pixel_threshold": threshold,
                       "images": [{"image": p, "boxes": b} for p, b in zip(paths, boxes)]},
                      fh, indent=2)
    flagged = int((np.asarray(labels) == -1).sum())
    return f"{len(paths)} images, {flagged} flagged as anomalous -> {out}"
