"""Anomaly-detection metrics on image scores and pixel maps.

Image-level functions take labels in scikit-learn's outlier convention
(+1 normal, -1 anomalous) and scores as ``decision_function`` or
``score_samples`` return them (higher = more normal), so that
``image_roc_auc(y, pipe.decision_function(X))`` is the usual image AUROC.
Pixel-level functions take masks (non-zero = anomalous; None = a good image)
and anomaly maps (higher = more anomalous), as :func:`skanomaly.anomaly_maps`
returns them.
"""

import numpy as np
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score
from sklearn.utils.validation import column_or_1d

__all__ = [
    "f1_max",
    "image_operating_point",
    "image_roc_auc",
    "per_defect_type",
    "pixel_aupro",
    "pixel_operating_point",
    "pixel_roc_auc",
    "pro_curve",
]


def _check_labels(y_true, y_score):
    y_true = column_or_1d(y_true)
    y_score = column_or_1d(y_score).astype(np.float64)
    if len(y_true) != len(y_score):
        raise ValueError(f"Got {len(y_true)} labels for {len(y_score)} scores.")
    if not set(np.unique(y_true).tolist()) <= {1, -1}:
        raise ValueError("Labels must be +1 (normal) or -1 (anomalous).")
    if len(np.unique(y_true)) != 2:
        raise ValueError("Need both normal (+1) and anomalous (-1) samples.")
    if not np.all(np.isfinite(y_score)):
        raise ValueError("Scores must be finite.")
    return y_true, y_score


def image_roc_auc(y_true, y_score):
    """Image-level area under the ROC curve.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        +1 normal, -1 anomalous.
    y_score : array-like of shape (n,)
        Higher = more normal (``decision_function`` / ``score_samples``).

    Returns
    -------
    auroc : float

    Examples
    --------
    >>> from skanomaly.metrics import image_roc_auc
    >>> image_roc_auc([1, 1, -1], [0.5, 0.2, -3.0])
    1.0
    """
    y_true, y_score = _check_labels(y_true, y_score)
    return float(roc_auc_score(y_true, y_score))


def f1_max(y_true, y_score):
    """Best F1 score for detecting anomalies over all thresholds.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        +1 normal, -1 anomalous (the positive class of F1).
    y_score : array-like of shape (n,)
        Higher = more normal.

    Returns
    -------
    f1 : float
    threshold : float
        Flagging the samples with ``y_score <= threshold`` reaches ``f1``.

    Examples
    --------
    >>> from skanomaly.metrics import f1_max
    >>> f1_max([1, 1, -1, -1], [0.9, 0.8, 0.1, 0.85])
    (0.8, 0.85)
    """
    y_true, y_score = _check_labels(y_true, y_score)
    precision, recall, thresholds = precision_recall_curve(y_true == -1, -y_score)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0)
    best = int(np.argmax(f1[:-1]))
    return float(f1[best]), float(-thresholds[best])


def per_defect_type(y_true, y_score, defect_types, metric=None):
    """A metric per defect type: all normal samples against that type's.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        +1 normal, -1 anomalous.
    y_score : array-like of shape (n,)
        Higher = more normal.
    defect_types : sequence of str of length n
        Defect type of each sample (ignored for normal ones).
    metric : callable or None, default=None
        ``metric(y_true, y_score) -> float``; :func:`image_roc_auc` when None.

    Returns
    -------
    scores : dict of str to float
        Sorted by defect type.

    Examples
    --------
    >>> from skanomaly.metrics import per_defect_type
    >>> per_defect_type([1, 1, -1, -1], [0.9, 0.5, 0.7, 0.1], ["good", "good", "crack", "hole"])
    {'crack': 0.5, 'hole': 1.0}
    """
    y_true, y_score = _check_labels(y_true, y_score)
    defect_types = np.asarray(defect_types, dtype=object)
    if len(defect_types) != len(y_true):
        raise ValueError(f"Got {len(defect_types)} defect types for {len(y_true)} labels.")
    metric = image_roc_auc if metric is None else metric
    normal = y_true == 1
    out = {}
    for kind in sorted(set(defect_types[~normal].tolist())):
        keep = normal | ((defect_types == kind) & ~normal)
        out[kind] = float(metric(y_true[keep], y_score[keep]))
    return out


def _load_mask(mask, shape):
    if mask is None:
        return np.zeros(shape, dtype=bool)
    if isinstance(mask, np.ndarray):
        array = mask
    else:
        from PIL import Image

        with Image.open(mask) as image:
            array = np.asarray(image.convert("L"))
    if array.ndim == 3:
        array = array[..., 0]
    if array.shape != tuple(shape):
        raise ValueError(
            f"Mask of shape {array.shape} does not match its map of shape {tuple(shape)}."
        )
    return array > (0 if array.dtype == np.bool_ else array.max(initial=0) / 2)


def _masks_and_maps(masks, maps):
    if len(masks) != len(maps):
        raise ValueError(f"Got {len(masks)} masks for {len(maps)} maps.")
    if len(maps) == 0:
        raise ValueError("Need at least one map.")
    maps = [np.asarray(m, dtype=np.float32) for m in maps]
    if any(m.ndim != 2 for m in maps):
        raise ValueError("Each map must be a 2D (H, W) array.")
    if not all(np.all(np.isfinite(m)) for m in maps):
        raise ValueError("Maps must be finite.")
    return [_load_mask(k, m.shape) for k, m in zip(masks, maps)], maps


# Bins of the streamed pixel metrics (evaluate_pipeline): 2**16 equal bins
# over the test set's score range tie only scores closer than 1/65536 of it.
_PIXEL_BINS = 2 ** 16
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connected regions, as MVTec AD's PRO


def _area_to(fpr, pro, max_fpr):
    """Area under ``pro`` against ``fpr`` up to ``max_fpr``, divided by it."""
    if fpr[-1] < max_fpr:  # cannot happen with every pixel flagged (fpr = 1)
        raise ValueError("The FPR range does not reach max_fpr.")
    stop = int(np.searchsorted(fpr, max_fpr, side="left"))
    pro_at_max = np.interp(max_fpr, fpr[stop - 1:stop + 1], pro[stop - 1:stop + 1])
    xs = np.r_[fpr[:stop], max_fpr]
    ys = np.r_[pro[:stop], pro_at_max]
    return float(np.trapezoid(ys, xs) / max_fpr)


class _PixelTally:
    """Pixel counts per score bin, added one image at a time.

    The pixel metrics of a test set need every pixel's score, but not all at
    once: each image adds its pixels to per-bin counts (normal pixels,
    defect pixels, and defect pixels weighted by one over their region's
    size), and the ROC and PRO curves are read off the counts at the end, a
    threshold at each bin edge. With a bin for every distinct map value
    (:func:`_exact_tally`) the curves are the exact ones; with fixed bins over a
    known range (:meth:`uniform`) memory stays that of the bins and of one
    map however many images there are, and only scores that share a bin are
    tied. With a ``threshold``, each image also adds the counts of the masks
    and boxes drawn at it.
    """

    def __init__(self, n_bins, bin_of, threshold=None, min_area=16):
        self._bin_of = bin_of
        self.threshold = threshold
        self.min_area = min_area
        self.normal = np.zeros(n_bins, dtype=np.int64)
        self.defect = np.zeros(n_bins, dtype=np.int64)
        self.region_weight = np.zeros(n_bins, dtype=np.float64)
        self.n_regions = 0
        self.tp = self.fp = self.fn = self.regions_hit = 0
        self.boxes_on_good = []

    @classmethod
    def uniform(cls, low, high, n_bins=_PIXEL_BINS, **kwargs):
        """``n_bins`` equal bins over ``[low, high]``; values outside go to the ends."""
        scale = n_bins / max(float(high) - float(low), np.finfo(np.float32).tiny)

        def bin_of(values):
            return np.clip(((values - low) * scale).astype(np.int64), 0, n_bins - 1)

        return cls(n_bins, bin_of, **kwargs)

    def add(self, mask, amap):
        """Count one image: ``mask`` (bool, True = defect) and its map."""
        labels, count = ndimage.label(mask, structure=_EIGHT)
        self._count(self._bin_of(amap.ravel()), mask.ravel(), _region_weights(labels), count)
        self._at_threshold(mask, amap, labels, count)

    def _count(self, bins, flat_mask, weights, n_regions):
        size = len(self.normal)
        self.normal += np.bincount(bins[~flat_mask], minlength=size)
        self.defect += np.bincount(bins[flat_mask], minlength=size)
        self.region_weight += np.bincount(bins, weights=weights, minlength=size)
        self.n_regions += n_regions

    def _at_threshold(self, mask, amap, labels, n_regions):
        if self.threshold is None:
            return
        from skanomaly_runtime._regions import region_boxes

        flagged = amap > self.threshold
        self.tp += int(np.count_nonzero(flagged & mask))
        self.fp += int(np.count_nonzero(flagged & ~mask))
        self.fn += int(np.count_nonzero(~flagged & mask))
        boxes = region_boxes(amap, flagged, self.min_area)
        if not n_regions:
            self.boxes_on_good.append(len(boxes))
            return
        covered = np.zeros_like(mask)
        for box in boxes:
            covered[box["y0"]:box["y1"], box["x0"]:box["x1"]] = True
        self.regions_hit += len(np.unique(labels[covered & mask]))

    def _flagged_from_top(self, counts):
        """Running totals over the non-empty bins from the highest down, from 0."""
        filled = (self.normal + self.defect)[::-1] > 0
        return np.r_[0.0, np.cumsum(counts[::-1], dtype=np.float64)[filled]]

    def roc_auc(self):
        n_pos, n_neg = int(self.defect.sum()), int(self.normal.sum())
        if n_pos == 0 or n_neg == 0:
            raise ValueError("Pixel AUROC needs both anomalous and normal pixels.")
        tps = self._flagged_from_top(self.defect) / n_pos
        fps = self._flagged_from_top(self.normal) / n_neg
        return float(np.trapezoid(tps, fps))

    def pro_curve(self):
        if self.n_regions == 0:
            raise ValueError("AUPRO needs at least one anomalous region in the masks.")
        n_normal = int(self.normal.sum())
        if n_normal == 0:
            raise ValueError("AUPRO needs normal pixels to measure false positives.")
        return (self._flagged_from_top(self.normal) / n_normal,
                self._flagged_from_top(self.region_weight) / self.n_regions)

    def aupro(self, max_fpr=0.3):
        return _area_to(*self.pro_curve(), max_fpr)

    def operating_point(self):
        n_pos = int(self.defect.sum())
        best = float("nan")
        if n_pos:
            # Flagging every bin from the top down to each one in turn.
            tp = np.cumsum(self.defect[::-1])
            fp = np.cumsum(self.normal[::-1])
            best = float(np.max(2 * tp / np.maximum(tp + fp + n_pos, 1)))
        good = self.boxes_on_good
        return {
            "pixel_f1": float(2 * self.tp / max(2 * self.tp + self.fp + self.fn, 1)),
            "best_pixel_f1": best,
            "good_with_box": float(np.mean([n > 0 for n in good])) if good else float("nan"),
            "boxes_per_good": float(np.mean(good)) if good else float("nan"),
            "region_hit_rate": (float(self.regions_hit / self.n_regions)
                                if self.n_regions else float("nan")),
        }


def _region_weights(labels):
    """Per pixel, one over the size of its defect region (0 off defects): a
    region's pixels add up to 1 however large it is, as PRO weighs them."""
    flat = labels.ravel()
    sizes = np.bincount(flat).astype(np.float64)
    sizes[0] = np.inf
    return 1.0 / sizes[flat]


def _exact_tally(masks, maps, **kwargs):
    """A tally with a bin for every distinct value of ``maps``: one sort of
    all their pixels, as exact ROC and PRO curves need, and one count."""
    masks, maps = _masks_and_maps(masks, maps)
    edges, bins = np.unique(np.concatenate([m.ravel() for m in maps]), return_inverse=True)
    tally = _PixelTally(len(edges), None, **kwargs)
    labelled = [ndimage.label(mask, structure=_EIGHT) for mask in masks]
    tally._count(bins.ravel(), np.concatenate([k.ravel() for k in masks]),
                 np.concatenate([_region_weights(labels) for labels, _ in labelled]),
                 sum(count for _, count in labelled))
    for mask, amap, (labels, count) in zip(masks, maps, labelled):
        tally._at_threshold(mask, amap, labels, count)
    return tally


def pixel_roc_auc(masks, maps):
    """Area under the ROC curve of all pixels of all images pooled together.

    Parameters
    ----------
    masks : list of (path, ndarray or None)
        Ground-truth masks, non-zero = anomalous; None = all normal (a good image).
    maps : ndarray of shape (n, H, W) or list of (H_i, W_i) arrays
        Anomaly maps, higher = more anomalous, each the size of its mask.

    Returns
    -------
    auroc : float

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.metrics import pixel_roc_auc
    >>> mask = np.zeros((4, 4), bool); mask[0, 0] = True
    >>> pixel_roc_auc([mask, None], [mask.astype(float), np.zeros((4, 4))])
    1.0
    """
    return _exact_tally(masks, maps).roc_auc()


def pixel_aupro(masks, maps, *, max_fpr=0.3):
    """Normalised area under the per-region-overlap curve (AUPRO).

    As defined with MVTec AD (Bergmann et al., 2021): every connected
    anomalous region (8-connectivity) of every mask is a region; at a
    threshold, a region's overlap is the share of its pixels whose map value
    reaches the threshold, and PRO is the mean overlap over all regions. The
    PRO curve is traced against the false-positive rate on normal pixels,
    integrated up to ``max_fpr`` and divided by ``max_fpr``, so 1 is perfect.
    The curve is exact: every distinct map value is a threshold.

    Parameters
    ----------
    masks : list of (path, ndarray or None)
        Ground-truth masks; None = a good image.
    maps : ndarray of shape (n, H, W) or list of (H_i, W_i) arrays
        Anomaly maps, higher = more anomalous.
    max_fpr : float in (0, 1], default=0.3

    Returns
    -------
    aupro : float

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.metrics import pixel_aupro
    >>> mask = np.zeros((8, 8), bool); mask[2:4, 2:4] = True
    >>> pixel_aupro([mask], [mask.astype(float)])
    1.0
    """
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}.")
    return _area_to(*pro_curve(masks, maps), max_fpr)


def pro_curve(masks, maps):
    """The per-region-overlap curve behind :func:`pixel_aupro`.

    Parameters
    ----------
    masks : list of (path, ndarray or None)
    maps : ndarray of shape (n, H, W) or list of (H_i, W_i) arrays

    Returns
    -------
    fpr : ndarray
        False-positive rate on normal pixels at each distinct threshold,
        increasing from 0 to 1.
    pro : ndarray
        Mean per-region overlap at the same thresholds.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.metrics import pro_curve
    >>> fpr, pro = pro_curve([np.array([[1, 0]], bool)], [np.array([[0.9, 0.1]])])
    >>> fpr.tolist(), pro.tolist()
    ([0.0, 0.0, 1.0], [0.0, 1.0, 1.0])
    """
    return _exact_tally(masks, maps).pro_curve()


def image_operating_point(y_true, y_score, false_alarm_rate):
    """What a threshold at 0 does to labelled images, beside the best it could do.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        +1 normal, -1 anomalous.
    y_score : array-like of shape (n,)
        ``decision_function`` values: negative = flagged, as ``predict``.
    false_alarm_rate : float in (0, 1)
        The rate the threshold was set for (the head's ``contamination``).

    Returns
    -------
    point : dict
        ``false_alarm_rate``: share of normal images flagged; ``recall``:
        share of anomalous images flagged; ``oracle_recall``: the recall of
        the threshold that flags exactly ``floor(false_alarm_rate * n_normal)``
        of these normal images (chosen with the labels: the most any
        threshold with that false-alarm rate can catch here).

    Examples
    --------
    >>> from skanomaly.metrics import image_operating_point
    >>> point = image_operating_point([1, 1, 1, -1, -1], [0.5, 0.2, -0.1, -3.0, 0.1], 0.05)
    >>> round(point["false_alarm_rate"], 2), point["recall"], point["oracle_recall"]
    (0.33, 0.5, 0.5)
    """
    y_true, y_score = _check_labels(y_true, y_score)
    normal, anomalous = y_score[y_true == 1], y_score[y_true == -1]
    allowed = int(np.floor(false_alarm_rate * len(normal)))
    # Flag what scores below the (allowed + 1)-th lowest normal score.
    cut = np.sort(normal)[allowed]
    return {
        "false_alarm_rate": float(np.mean(normal < 0)),
        "recall": float(np.mean(anomalous < 0)),
        "oracle_recall": float(np.mean(anomalous < cut)),
    }


def pixel_operating_point(masks, maps, threshold, *, min_area=16):
    """What a pixel threshold does to labelled images: masks and boxes.

    Parameters
    ----------
    masks : list of (path, array or None)
        Ground truth, as for :func:`pixel_roc_auc` (None = a good image).
    maps : list of ndarray
        Anomaly maps (higher = more anomalous), one per image.
    threshold : float
        Pixels with ``map > threshold`` are anomalous (e.g.
        :func:`skanomaly.calibration.pixel_threshold`).
    min_area : int, default=16
        As :func:`skanomaly.anomaly_boxes`: smaller regions are no box.

    Returns
    -------
    point : dict
        ``pixel_f1`` at ``threshold`` over all pixels of all images;
        ``best_pixel_f1`` over every threshold; ``good_with_box``: share of
        good images with at least one box; ``boxes_per_good``; and
        ``region_hit_rate``: share of ground-truth defect regions (8-connected)
        that some box overlaps.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.metrics import pixel_operating_point
    >>> truth = np.zeros((32, 32), bool); truth[8:16, 8:16] = True
    >>> amap = truth.astype(float)
    >>> point = pixel_operating_point([truth, None], [amap, np.zeros((32, 32))], 0.5)
    >>> point["pixel_f1"], point["good_with_box"], point["region_hit_rate"]
    (1.0, 0.0, 1.0)
    """
    return _exact_tally(masks, maps, threshold=threshold, min_area=min_area).operating_point()
