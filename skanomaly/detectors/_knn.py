"""Memory-bank nearest-neighbour detector (PatchCore)."""

import numbers

import numpy as np
from scipy.special import logsumexp
from sklearn.utils._param_validation import Interval

from ..coreset import kcenter_greedy
from ..neighbors import kneighbors
from ._base import _BaseDetector


class KNNDetector(_BaseDetector):
    """Nearest-neighbour anomaly detector with a coreset memory bank (PatchCore).

    ``fit`` stores the normal features (every patch of every image for patch
    grids) in a memory bank, subsampled by greedy k-center selection to
    ``coreset_ratio`` of its size. A patch's anomaly score is its Euclidean
    distance to the nearest bank entry. An image's anomaly score is its worst
    patch's, re-weighted as in PatchCore (Roth et al., 2022, eq. 7): by how
    isolated that patch's nearest bank entry is among its own
    ``n_neighbors`` nearest bank entries.

    Parameters
    ----------
    coreset_ratio : float in (0, 1], default=0.1
        Share of the training features kept in the memory bank; 1 keeps all.
    n_neighbors : int, default=9
        Bank neighbourhood used to re-weight image scores; 1 turns the
        re-weighting off (image score = max patch distance).
    contamination : float in (0, 0.5], default=0.05
        Largest fraction of new normal samples that ``predict`` may flag;
        ``offset_`` is set on held-out normal samples to honour it.
    calibration_size : float in (0, 1) or int, default=0.1
        Share (or number) of training samples held out of the memory bank to
        calibrate ``offset_``.
    projection_dim : int or None, default=128
        Dimension of the random projection the coreset is selected on.
    random_state : int, RandomState instance or None, default=None
        Seeds the calibration split, the projection and the first centre.

    Attributes
    ----------
    memory_bank_ : ndarray of shape (n_bank, n_features), float32
        The stored normal features.
    offset_ : float
        Threshold on ``score_samples``; ``decision_function = score_samples - offset_``.
    calibration_scores_ : ndarray of shape (n_calibration,)
        Sorted ``score_samples`` of the held-out normal samples.
    n_features_in_ : int
        Feature dimension seen in ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only for 2D input with string column names.

    See Also
    --------
    skanomaly.make_patchcore : the full image pipeline.
    skanomaly.coreset.kcenter_greedy : the coreset selection.

    Notes
    -----
    2D input is one "patch" per sample, so the detector is also a plain kNN
    novelty detector on tabular features. Thresholds never come from training
    samples that sit in the bank (their distance is ~0).

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import KNNDetector
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 4))
    >>> det = KNNDetector(coreset_ratio=0.5, random_state=0).fit(X)
    >>> det.memory_bank_.shape
    (90, 4)
    >>> det.predict([[0.0, 0.0, 0.0, 0.0], [8.0, 8.0, 8.0, 8.0]]).tolist()
    [1, -1]
    """

    _parameter_constraints = {
        **_BaseDetector._parameter_constraints,
        "coreset_ratio": [Interval(numbers.Real, 0, 1, closed="right")],
        "n_neighbors": [Interval(numbers.Integral, 1, None, closed="left")],
        "projection_dim": [Interval(numbers.Integral, 1, None, closed="left"), None],
    }

    def __init__(
        self,
        coreset_ratio=0.1,
        n_neighbors=9,
        *,
        contamination=0.05,
        calibration_size=0.1,
        projection_dim=128,
        random_state=None,
    ):
        self.coreset_ratio = coreset_ratio
        self.n_neighbors = n_neighbors
        self.contamination = contamination
        self.calibration_size = calibration_size
        self.projection_dim = projection_dim
        self.random_state = random_state

    def _fit_normal(self, X, rng):
        features = X.reshape(-1, X.shape[-1])
        n_centers = max(1, int(self.coreset_ratio * len(features)))
        if n_centers < len(features):
            keep = kcenter_greedy(
                features, n_centers, projection_dim=self.projection_dim,
                random_state=rng,
            )
            features = features[keep]
        self.memory_bank_ = np.ascontiguousarray(features, dtype=np.float32)

    def _patch_and_image_scores(self, X):
        n, h, w, d = X.shape
        bank = self.memory_bank_
        distances, nearest = kneighbors(X.reshape(-1, d), bank, 1)
        patch = distances.reshape(n, h * w)
        worst = patch.argmax(axis=1)
        rows = np.arange(n)
        image = patch[rows, worst].astype(np.float64)
        k = min(self.n_neighbors, len(bank))
        if k > 1:
            # PatchCore eq. 7: w = 1 - exp(s) / sum_j exp(||x* - m_j||), the
            # sum over the k bank entries nearest to m* (m* included).
            m_star = nearest.reshape(n, h * w)[rows, worst]
            _, support = kneighbors(bank[m_star], bank, k)
            x_star = X.reshape(n, h * w, d)[rows, worst].astype(np.float64)
            support_dist = np.linalg.norm(bank[support] - x_star[:, None, :], axis=2)
            image = image * (1.0 - np.exp(image - logsumexp(support_dist, axis=1)))
        return patch.reshape(n, h, w), image
