"""Conformal p-values from calibration scores (numpy only)."""

import numpy as np


def conformal_pvalues_of(calibration_scores, scores):
    """``(1 + #{calibration scores <= s}) / (n + 1)`` for each score ``s``.

    The rule behind :func:`skanomaly.calibration.conformal_pvalues` and the
    exported models' p-values; both call this.

    Examples
    --------
    >>> from skanomaly_runtime._calibration import conformal_pvalues_of
    >>> conformal_pvalues_of([1.0, 2.0, 3.0], [0.5, 2.0, 9.0]).tolist()
    [0.25, 0.75, 1.0]
    """
    calibration = np.sort(np.asarray(calibration_scores, dtype=np.float64))
    at_or_below = np.searchsorted(calibration, scores, side="right")
    return (1.0 + at_or_below) / (len(calibration) + 1.0)
