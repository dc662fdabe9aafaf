"""The files a prediction run writes, in one place for both command lines.

A run streams: images are decoded, scored and written a batch at a time, so
memory stays flat over any number of images, and an image that cannot be
read is reported (a line on stderr, an ``error`` cell in its CSV row) while
the others are scored. Every file is complete once it exists: each CSV row
is flushed as a whole line, and masks, overlays and ``boxes.json`` are
written under a temporary name and renamed, so an interrupted run leaves
only valid files behind.
"""

import csv
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from ._regions import MIN_AREA, region_boxes
from .images import load_image

# Images decoded, scored and written at a time.
_BATCH = 16
CSV_COLUMNS = ("image", "score", "p_value", "label", "error")


def _result_stem(index, path):
    """File-name stem of the ``index``-th image's masks and overlays."""
    return f"{index:04d}_{Path(path).stem}"


def _save_png(array, path):
    """Write a PNG under a temporary name, then rename: never half a file."""
    from PIL import Image

    partial = path.with_name(path.name + ".partial")
    Image.fromarray(array).save(partial, format="PNG")
    os.replace(partial, path)


def drift_warning(n_flagged, n_images, contamination, alpha=1e-3):
    """A warning line when a run flagged far more than ``contamination`` of
    its images (one-sided binomial test at level ``alpha``), else None.

    Examples
    --------
    >>> drift_warning(3, 100, 0.05) is None
    True
    >>> drift_warning(30, 100, 0.05).startswith("warning: 30 of 100")
    True
    """
    if not n_images or not contamination:
        return None
    # P(X >= n_flagged) for X ~ Binomial(n_images, contamination).
    tail = sum(math.exp(math.lgamma(n_images + 1) - math.lgamma(k + 1)
                        - math.lgamma(n_images - k + 1) + k * math.log(contamination)
                        + (n_images - k) * math.log1p(-contamination))
               for k in range(n_flagged, n_images + 1))
    if tail >= alpha:
        return None
    return (f"warning: {n_flagged} of {n_images} images flagged, far above the "
            f"{contamination:g} the threshold was set for on good images: either many of these "
            "parts are defective, or the images differ from the training images (light, "
            "position, supplier). If most flagged parts are good, recalibrate on recent good "
            "parts: skanomaly calibrate MODEL --good DIR -o NEW_MODEL.")


def predict_to_folder(paths, out, scores_and_maps, pvalues_of, offset, threshold,
                      overlay=None, batch_size=None, stderr=None, contamination=None):
    """Score ``paths`` batch by batch and write the results under ``out``.

    Parameters
    ----------
    paths : list of str
        Image files.
    out : path
        Output folder (created).
    scores_and_maps : callable
        ``f(images) -> (maps or None, scores)`` on a list of decoded RGB
        float arrays (higher scores = more normal; maps at each image's size).
    pvalues_of : callable
        ``f(scores) -> p-values``.
    offset : float
        Threshold on the scores: below it an image is labelled -1.
    threshold : float or None
        Pixel threshold of the masks and boxes (None: no maps).
    overlay : callable or None
        ``f(image, map, mask) -> uint8 RGB`` heatmap overlay; None writes none.
    batch_size : int or None
        Images in memory at a time (None: 16).
    stderr : file or None
        Where unreadable images are reported (default ``sys.stderr``), and
        the drift warning (:func:`drift_warning`).
    contamination : float or None
        The false-alarm rate the threshold was set for: a run that flags
        far more is warned about (None: no check).

    Returns
    -------
    summary : str
        One line: images scored, flagged, failed, and the folder.
    n_failed : int
        Images that could not be read or scored.
    """
    stderr = sys.stderr if stderr is None else stderr
    batch_size = _BATCH if batch_size is None else batch_size
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    boxes, n_flagged, n_failed = [], 0, 0
    with open(out / "predictions.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        fh.flush()
        for start in range(0, len(paths), batch_size):
            images, good = [], []
            for index in range(start, min(start + batch_size, len(paths))):
                try:
                    images.append(load_image(paths[index], index))
                    good.append(index)
                except ValueError as exc:
                    n_failed += 1
                    print(f"skipped: {exc}", file=stderr, flush=True)
                    writer.writerow([paths[index], "", "", "", str(exc)])
            if images:
                maps, scores = scores_and_maps(images)
                pvalues = pvalues_of(scores)
                for row, index in enumerate(good):
                    label = 1 if scores[row] - offset >= 0 else -1
                    n_flagged += label == -1
                    writer.writerow([paths[index], scores[row], pvalues[row], label, ""])
                    if maps is not None:
                        boxes.append({"image": paths[index], "boxes": _write_maps(
                            out, index, paths[index], images[row], maps[row], threshold, overlay)})
            fh.flush()  # rows so far are complete lines on disk
            del images
    if threshold is not None and boxes:
        partial = out / "boxes.json.partial"
        partial.write_text(json.dumps({"pixel_threshold": threshold, "images": boxes}, indent=2))
        os.replace(partial, out / "boxes.json")
    n_scored = len(paths) - n_failed
    warning = drift_warning(int(n_flagged), n_scored, contamination)
    if warning:
        print(warning, file=stderr, flush=True)
    failed = f", {n_failed} could not be read" if n_failed else ""
    return (f"{n_scored} images, {n_flagged} flagged as anomalous{failed} -> {out}",
            n_failed)


def _write_maps(out, index, path, image, amap, threshold, overlay):
    """Write one image's mask (and overlay); return its boxes."""
    mask = np.asarray(amap) > threshold
    stem = _result_stem(index, path)
    (out / "masks").mkdir(exist_ok=True)
    _save_png(mask.astype(np.uint8) * 255, out / "masks" / f"{stem}_mask.png")
    if overlay is not None:
        (out / "overlays").mkdir(exist_ok=True)
        _save_png(overlay(image, amap, mask), out / "overlays" / f"{stem}_overlay.png")
    return region_boxes(amap, mask, MIN_AREA)
