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
    "image_roc_auc",
    "per_defect_type",
    "pixel_aupro",
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


def _descending_curve(scores, *steps):
    """Cumulative sums of ``steps`` over pixels sorted by decreasing score.

    Returns, for each step array, its running total after each group of
    equal scores (pixels with one value cross any threshold together),
    starting from 0. One sort serves ROC and PRO curves of millions of pixels.
    """
    order = np.argsort(-scores)
    sorted_scores = scores[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]
    return [np.r_[0.0, np.cumsum(step[order], dtype=np.float64)[last_of_tie]] for step in steps]


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
    masks, maps = _masks_and_maps(masks, maps)
    truth = np.concatenate([k.ravel() for k in masks])
    scores = np.concatenate([m.ravel() for m in maps])
    n_pos = int(truth.sum())
    if n_pos == 0 or n_pos == len(truth):
        raise ValueError("Pixel AUROC needs both anomalous and normal pixels.")
    # Same trapezoidal ROC area as sklearn's roc_auc_score, several times
    # faster on the ~10^7 pixels of a test set.
    tps, fps = _descending_curve(scores, truth, ~truth)
    return float(np.trapezoid(tps / n_pos, fps / (len(truth) - n_pos)))


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
    fpr, pro = pro_curve(masks, maps)
    if fpr[-1] < max_fpr:  # cannot happen with every pixel flagged (fpr = 1)
        raise ValueError("The FPR range does not reach max_fpr.")
    stop = int(np.searchsorted(fpr, max_fpr, side="left"))
    pro_at_max = np.interp(max_fpr, fpr[stop - 1:stop + 1], pro[stop - 1:stop + 1])
    xs = np.r_[fpr[:stop], max_fpr]
    ys = np.r_[pro[:stop], pro_at_max]
    return float(np.trapezoid(ys, xs) / max_fpr)


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
    masks, maps = _masks_and_maps(masks, maps)
    eight = np.ones((3, 3), dtype=bool)
    weights, scores = [], []
    n_regions = 0
    labelled = []
    for mask in masks:
        labels, count = ndimage.label(mask, structure=eight)
        labelled.append(labels)
        n_regions += count
    if n_regions == 0:
        raise ValueError("AUPRO needs at least one anomalous region in the masks.")
    n_normal = sum(int((~m).sum()) for m in masks)
    if n_normal == 0:
        raise ValueError("AUPRO needs normal pixels to measure false positives.")
    for labels, amap in zip(labelled, maps):
        flat = labels.ravel()
        sizes = np.bincount(flat)
        # A normal pixel adds 1/n_normal to the FPR; a region pixel adds
        # 1/(|region| * n_regions) to the PRO. Stored as one signed weight:
        # negative = FPR step, positive = PRO step.
        w = np.where(flat == 0, -1.0 / n_normal, 1.0 / (sizes[flat] * n_regions))
        weights.append(w)
        scores.append(amap.ravel())
    weights = np.concatenate(weights)
    scores = np.concatenate(scores)
    return _descending_curve(
        scores, np.where(weights < 0, -weights, 0.0), np.where(weights > 0, weights, 0.0)
    )
