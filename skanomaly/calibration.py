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


def pixel_threshold(estimator, false_alarm_rate=None):
    """Anomaly-map threshold that few pixels of normal images exceed.

    Computed from the patch scores of the normal images the head held out of
    training (``calibration_patch_scores_``): the smallest value exceeded by
    at most ``false_alarm_rate`` of them. :func:`~skanomaly.anomaly_maps`
    smooths patch scores, which lowers their extremes, so the share of normal
    *pixels* above the threshold is at most about the same (conservative).

    Parameters
    ----------
    estimator : fitted Pipeline or detector head
        Its last step must have ``calibration_patch_scores_``.
    false_alarm_rate : float in (0, 1) or None, default=None
        Share of normal pixels allowed above the threshold; None uses the
        head's ``contamination``.

    Returns
    -------
    threshold : float
        Pixels with ``map > threshold`` are anomalous.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import KNNDetector
    >>> from skanomaly.calibration import pixel_threshold
    >>> grids = np.random.default_rng(0).normal(size=(20, 4, 4, 3)).astype(np.float32)
    >>> det = KNNDetector(random_state=0).fit(grids)
    >>> bool(pixel_threshold(det, 0.01) >= pixel_threshold(det, 0.1))
    True
    """
    head = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
    check_is_fitted(head, "calibration_patch_scores_")
    rate = head.contamination if false_alarm_rate is None else false_alarm_rate
    if not 0 < rate < 1:
        raise ValueError(f"false_alarm_rate must be in (0, 1), got {rate}.")
    scores = np.sort(head.calibration_patch_scores_)
    # Conformal upper quantile: the ceil((1 - rate) * (n + 1))-th smallest.
    rank = int(np.ceil((1 - rate) * (len(scores) + 1)))
    return float(scores[min(rank, len(scores)) - 1])
