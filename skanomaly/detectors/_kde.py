"""Kernel density head on image vectors (DFKDE)."""

import numbers

import numpy as np
from sklearn.decomposition import PCA
from sklearn.neighbors import KernelDensity
from sklearn.utils._param_validation import Interval, StrOptions

from ._base import _BaseDetector


class KDEDetector(_BaseDetector):
    """Gaussian kernel density of PCA-reduced image features (DFKDE).

    As anomalib's DFKDE: features are projected on their first
    ``n_components`` principal components, whitened (each component to unit
    variance, so that the bandwidth rule scales with the data's covariance,
    as in scipy's ``gaussian_kde`` and anomalib's ``GaussianKDE``), and
    modelled with scikit-learn's :class:`~sklearn.neighbors.KernelDensity`. The anomaly score is minus the
    log density. Works on vectors ``(n, d)`` (e.g. from
    :class:`~skanomaly.ImageEmbedder`), not on patch grids.

    Parameters
    ----------
    n_components : int, default=16
        PCA components (capped at the number of samples and features).
    bandwidth : float or {"scott", "silverman"}, default="scott"
        Kernel bandwidth, in the whitened (or scaled) PCA space.
    whiten : bool, default=True
        Whiten the components. False instead scales them so that the largest
        training vector has unit norm: an isotropic kernel over components
        whose variances differ by orders of magnitude, which the first
        components then dominate (bottle image AUROC 0.942 against 0.988
        whitened; panel figures in ``benchmarks/bench_accuracy.py``).
    kernel : str, default="gaussian"
        Any kernel of :class:`~sklearn.neighbors.KernelDensity`.
    calibration_in_model : bool, default=True
        Once ``offset_`` is set on the held-out calibration samples, fit the
        PCA and the density again on every training sample (as
        :class:`GaussianDetector` does), so the model learns from all of
        them while the threshold comes from samples it had not seen.
    contamination : float in (0, 0.5], default=0.05
        Largest fraction of new normal samples that ``predict`` may flag.
    calibration_size : "cross-fit", float in (0, 1) or int, default="cross-fit"
        How ``offset_`` is calibrated. ``"cross-fit"``: every training sample
        is scored by a model that did not learn from it (five folds), so the
        threshold rests on the whole training set rather than a tenth of it; a
        streamed fit of several chunks and ``partial_fit`` hold out 20% (at
        most 200) instead. A share or a number: that many samples are held out
        of the model, calibrate, and then join it.
    random_state : int, RandomState instance or None, default=None
        Seeds the calibration split.

    Attributes
    ----------
    pca_ : PCA
    scale_ : float
        Norm of the largest projected training vector (1 when whitened).
    kde_ : KernelDensity
    offset_ : float
    calibration_scores_ : ndarray
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.detectors import KDEDetector
    >>> X = np.random.default_rng(0).normal(size=(300, 5))
    >>> det = KDEDetector(n_components=3, random_state=0).fit(X)
    >>> det.predict([[0.0] * 5, [9.0] * 5]).tolist()
    [1, -1]
    """

    _accepts_grids = False
    _calibration_cap = 100

    _parameter_constraints = {
        **_BaseDetector._parameter_constraints,
        "n_components": [Interval(numbers.Integral, 1, None, closed="left")],
        "bandwidth": [Interval(numbers.Real, 0, None, closed="neither"),
                      StrOptions({"scott", "silverman"})],
        "whiten": ["boolean"],
        "kernel": [StrOptions({"gaussian", "tophat", "epanechnikov",
                               "exponential", "linear", "cosine"})],
        "calibration_in_model": ["boolean"],
    }

    def __init__(
        self,
        n_components=16,
        *,
        bandwidth="scott",
        whiten=True,
        kernel="gaussian",
        calibration_in_model=True,
        contamination=0.05,
        calibration_size="cross-fit",
        random_state=None,
    ):
        self.n_components = n_components
        self.bandwidth = bandwidth
        self.whiten = whiten
        self.kernel = kernel
        self.calibration_in_model = calibration_in_model
        self.contamination = contamination
        self.calibration_size = calibration_size
        self.random_state = random_state

    def _project(self, X):
        return self.pca_.transform(X.reshape(len(X), -1).astype(np.float64)) / self.scale_

    def _fit_normal(self, X, fit_idx, rng):
        flat = X[fit_idx].reshape(len(fit_idx), -1).astype(np.float64)
        n_components = min(self.n_components, *flat.shape)
        self.pca_ = PCA(n_components=n_components, whiten=self.whiten,
                        svd_solver="full").fit(flat)
        projected = self.pca_.transform(flat)
        norm = float(np.linalg.norm(projected, axis=1).max())
        self.scale_ = 1.0 if self.whiten or norm == 0 else norm
        self.kde_ = KernelDensity(bandwidth=self.bandwidth, kernel=self.kernel).fit(
            projected / self.scale_
        )

    def _patch_and_image_scores(self, X):
        anomaly = -self.kde_.score_samples(self._project(X))
        return anomaly.reshape(-1, 1, 1).astype(np.float32), anomaly
