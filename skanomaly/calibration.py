"""Conformal p-values: how unusual a new sample is among held-out normal ones."""

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

__all__ = ["conformal_pvalues"]


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
    >>> bool(p[0] > 0.5), float(p[1]) == 1 / 21
    (True, True)
    """
    head = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
    check_is_fitted(head, "calibration_scores_")
    scores = estimator.score_samples(X)
    calibration = np.sort(head.calibration_scores_)
    at_or_below = np.searchsorted(calibration, scores, side="right")
    return (1.0 + at_or_below) / (len(calibration) + 1.0)
