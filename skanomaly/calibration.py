"""Conformal p-values: how unusual a new sample is among held-out normal ones."""

import numpy as np
from skanomaly_runtime._calibration import conformal_pvalues_of
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

__all__ = ["conformal_pvalues", "pixel_threshold"]


def conformal_pvalues(estimator, X):
    """Conformal p-value of each sample under "it is normal".

    A fitted head keeps the scores of the normal samples it held out of
    training (``calibration_scores_``). The p-value of a new sample with
    score ``s`` is ``(1 + #{calibration scores <= s}) / (n + 1)``: for a new
    normal sample it is uniformly distributed (up to ties), so flagging
    ``p <= alpha`` raises false alarms on at most ``alpha`` of normal samples.
    ``predict`` with ``contamination=alpha`` flags exactly those.

    Parameters
    ----------
    estimator : fitted Pipeline or detector head
        Its last step must have ``calibration_scores_`` (every skanomaly head).
    X : images or features
        Whatever ``estimator.score_samples`` takes.

    Returns
    -------
    pvalues : ndarray of shape (n_samples,)
        In ``(0, 1]``; small = anomalous.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import KNNDetector
    >>> from skanomaly.calibration import conformal_pvalues
    >>> X = np.random.default_rng(0).normal(size=(200, 2))
    >>> det = KNNDetector(random_state=0).fit(X)
    >>> p = conformal_pvalues(det, [[0.0, 0.0], [9.0, 9.0]])
    >>> bool(p[0] > p[1]), float(p[1]) == 1 / 21
    (True, True)
    """
    head = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
    check_is_fitted(head, "calibration_scores_")
    return _pvalues_of_scores(head, estimator.score_samples(X))


def _pvalues_of_scores(head, scores):
    """p-values of already computed ``score_samples`` of a fitted head."""
    return conformal_pvalues_of(head.calibration_scores_, scores)


def pixel_threshold(estimator, false_alarm_rate=None, *, sigma=4.0):
    """Anomaly-map threshold that the maps of few normal images exceed anywhere.

    The head keeps the patch scores of its calibration images, each scored
    by a model that had not learnt from it (``calibration_patch_scores_``,
    one grid per image). Each grid is drawn as :func:`~skanomaly.anomaly_maps`
    draws maps (upsampled to the embedder's input size, smoothed with
    ``sigma``) and its largest value kept; the threshold is the conformal
    upper quantile of those maxima. So a new normal image from the training
    images' distribution gets any pixel above it (any mask, any box) with
    probability at most ``false_alarm_rate``, while defects are cut at the
    level normal images reach at their worst, not at a share of pixels that
    every normal image would carry.

    Parameters
    ----------
    estimator : fitted Pipeline or detector head
        Its last step must have ``calibration_patch_scores_``. A head alone
        has no map resolution: its raw patch grids' maxima are used, which
        no smoothed map exceeds (a stricter threshold).
    false_alarm_rate : float in (0, 1) or None, default=None
        Largest share of normal images with any pixel above the threshold;
        None uses the head's ``contamination``.
    sigma : float, default=4.0
        The smoothing the maps are drawn with (:func:`~skanomaly.anomaly_maps`).

    Returns
    -------
    threshold : float
        Pixels with ``map > threshold`` are anomalous.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import KNNDetector
    >>> from skanomaly.calibration import pixel_threshold
    >>> grids = np.random.default_rng(0).normal(size=(40, 4, 4, 3)).astype(np.float32)
    >>> det = KNNDetector(random_state=0).fit(grids)
    >>> bool(pixel_threshold(det, 0.05) >= pixel_threshold(det, 0.2))
    True
    """
    if isinstance(estimator, Pipeline):
        from .maps import _model_input_shape

        head = estimator.steps[-1][1]
        check_is_fitted(head, "calibration_patch_scores_")
        grids = head.calibration_patch_scores_
        model_shape = _model_input_shape(estimator[:-1], tuple(grids.shape[1:]))
    else:
        head, model_shape = estimator, None
    return _pixel_threshold_of(head, false_alarm_rate, model_shape, sigma)


def _pixel_threshold_of(head, false_alarm_rate, model_shape, sigma):
    """:func:`pixel_threshold` of a head whose maps are drawn at
    ``model_shape`` (None: its raw patch grids) with ``sigma``."""
    check_is_fitted(head, "calibration_patch_scores_")
    rate = head.contamination if false_alarm_rate is None else false_alarm_rate
    if not 0 < rate < 1:
        raise ValueError(f"false_alarm_rate must be in (0, 1), got {rate}.")
    grids = head.calibration_patch_scores_
    if grids.ndim == 1:
        # A model saved before calibration kept one grid per image: all its
        # patch scores pooled, so the rate is a share of normal patches.
        maxima = np.sort(grids)
    else:
        maxima = _map_maxima(head, model_shape, sigma)
    # Conformal upper quantile: the ceil((1 - rate) * (n + 1))-th smallest.
    rank = int(np.ceil((1 - rate) * (len(maxima) + 1)))
    return float(maxima[min(rank, len(maxima)) - 1])


def _map_maxima(head, model_shape, sigma):
    """Sorted largest map value of each calibration grid, cached on the head
    for its current calibration (masks and the app ask again and again)."""
    from .maps import upsample_patch_scores

    grids = head.calibration_patch_scores_
    key = (id(grids), None if model_shape is None else tuple(model_shape), float(sigma))
    cached = getattr(head, "_map_maxima_cache", None)
    if cached is not None and cached[0] == key and cached[2] is grids:
        return cached[1]
    if model_shape is None:
        maxima = grids.reshape(len(grids), -1).max(axis=1)
    else:
        maps = upsample_patch_scores(grids, [tuple(model_shape)] * len(grids),
                                     model_shape=tuple(model_shape), sigma=sigma)
        maxima = np.array([m.max() for m in maps])
    maxima = np.sort(maxima.astype(np.float64))
    head._map_maxima_cache = (key, maxima, grids)
    return maxima
