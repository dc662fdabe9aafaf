"""Gaussian density heads: PaDiM on patch grids, DFM on image vectors."""

import numbers

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.utils._param_validation import Interval, StrOptions

from ._base import (
    _IMAGE_SCORE_SIGMA_CONSTRAINT,
    _BaseDetector,
    _smoothed_max,
    _torch_smoothed_max,
    _TorchGaussianBlur,
)

# Positions whose (d, d) matrices are processed at once: bounds the temporary
# (positions, n_images, d) block when estimating per-position covariances.
_POSITION_CHUNK = 256
_IMAGE_CHUNK = 32


def _regularised_precision(cov, regularization, scale):
    """Inverse of covariances + regularization * unit * I, and their log-determinants.

    cov : tensor of shape (p, d, d), float64 (modified in place)
    scale : "absolute" (unit 1), "position" (each covariance's mean variance),
        a float or a (p,) tensor (units given by the caller)
    """
    if isinstance(scale, torch.Tensor):
        unit = scale.to(cov.dtype)
    elif scale == "absolute":
        unit = torch.ones(len(cov), dtype=cov.dtype)
    elif scale == "position":
        unit = _mean_variance(cov)
    else:
        unit = torch.full((len(cov),), float(scale), dtype=cov.dtype)
    # A constant feature has zero variance: keep the matrix invertible.
    unit = unit.clamp_min(torch.finfo(torch.float32).tiny)
    cov += (regularization * unit)[:, None, None] * torch.eye(cov.shape[-1], dtype=cov.dtype)
    chol = torch.linalg.cholesky(cov)
    precision = torch.cholesky_inverse(chol)
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    return precision, logdet


def _mean_variance(cov):
    return torch.diagonal(cov, dim1=-2, dim2=-1).mean(-1)


def _position_blocks(positions):
    return [slice(start, min(start + _POSITION_CHUNK, positions))
            for start in range(0, positions, _POSITION_CHUNK)]


def _triangle(d):
    """Row and column of each entry of a packed (d, d) upper triangle: the
    one layout that ``_packed``, ``_unpacked`` and diagonal reads share."""
    return torch.triu_indices(d, d)


def _packed(matrices):
    """The float32 upper triangles of symmetric (p, d, d) matrices."""
    rows, cols = _triangle(matrices.shape[-1])
    return matrices[:, rows, cols].to(torch.float32).numpy()


def _unpacked(packed, d):
    """Symmetric (p, d, d) float64 matrices from their float32 upper triangles."""
    rows, cols = _triangle(d)
    values = torch.from_numpy(packed).double()
    full = torch.empty((len(packed), d, d), dtype=torch.float64)
    full[:, rows, cols] = values
    full[:, cols, rows] = values
    return full


def _block_moments(feats, idx, block):
    """Mean and centred scatter matrices of the samples ``feats[idx, block]``
    (``feats``: (n, positions, d)), in float64.

    Read ``_IMAGE_CHUNK`` images at a time, so a memory-mapped ``feats`` is
    never held whole. Sums are of the samples minus the first one, which is
    near the mean, so the scatter does not cancel catastrophically.
    """
    reference = torch.from_numpy(np.asarray(feats[idx[0], block], dtype=np.float64))
    total = torch.zeros_like(reference)
    scatter = torch.zeros(reference.shape + reference.shape[-1:], dtype=torch.float64)
    for start in range(0, len(idx), _IMAGE_CHUNK):
        part = torch.from_numpy(np.asarray(feats[idx[start:start + _IMAGE_CHUNK], block],
                                           dtype=np.float64)) - reference
        total += part.sum(0)
        part = part.transpose(0, 1).contiguous()  # (positions, images, d)
        scatter.baddbmm_(part.transpose(1, 2), part)
    shift = total / len(idx)
    return reference + shift, scatter - len(idx) * shift[:, :, None] * shift[:, None, :]

class GaussianDetector(_BaseDetector):
    """Gaussian model of normal features: PaDiM on patch grids, DFM on vectors.

    On patch grids ``(n, h, w, d)`` (PaDiM, Defard et al., 2021) one Gaussian
    is fitted per grid position, with covariance ``S + regularization * I``;
    a patch's anomaly score is its Mahalanobis distance to its position's
    Gaussian, an image's the largest of its patches'. On vectors
    ``(n, d)`` (DFM, Ahuja et al., 2019) one Gaussian is fitted to all rows,
    optionally after PCA; the score is the Mahalanobis distance, the Gaussian
    negative log-likelihood, or the PCA feature-reconstruction error. With
    ``score_type="reconstruction"`` on a grid (e.g. ``ImageEmbedder(grid_size=4,
    keep_grid=True)``), the PCA is fitted to each image's whole grid
    flattened, as on vectors, and each cell's share of the reconstruction
    error is its patch score: the image score is their sum, and the cells
    make DFM's coarse anomaly map. (The likelihood scores after a PCA of
    the whole grid have no per-cell share: their map is one cell.)

    Parameters
    ----------
    n_components : int, float in (0, 1) or None, default=None
        PCA before the Gaussian, of each sample's whole features (a grid
        flattened): a number of components, or the fraction of variance to
        keep (DFM uses 0.97). None: no PCA (on grids: one Gaussian per
        position).
    score_type : {"mahalanobis", "nll", "reconstruction"}, default="mahalanobis"
        ``"nll"``: negative log-likelihood under the Gaussian (ranks like the
        Mahalanobis distance for one Gaussian, but comparable across
        positions). ``"reconstruction"``: squared error of the PCA
        reconstruction (needs ``n_components``), per cell on grids.
    regularization : float, default=0.01
        Added to the covariance diagonal, in the unit ``regularization_scale``
        says (PaDiM's ``0.01 I`` is ``regularization=0.01`` with
        ``"absolute"``).
    regularization_scale : {"absolute", "position", "global"}, default="absolute"
        Unit of ``regularization``: 1 (``"absolute"``), the mean feature
        variance of the position the covariance belongs to (``"position"``),
        or the mean feature variance over all positions (``"global"``; the
        same as ``"position"`` on vectors). The relative units make the
        regularization independent of the backbone's feature scale.
    image_score_sigma : float, default=0.0
        On patch grids, the image score is the largest patch score after a
        Gaussian blur of this many grid cells (0: the largest raw patch
        score). Patch scores themselves are not blurred.
    calibration_in_model : bool, default=True
        Once ``offset_`` is set on the held-out calibration samples, fit the
        model again on every training sample, as :class:`KNNDetector`'s
        ``calibration_in_bank`` adds them to its bank: the model learns from
        all the normal images, and the threshold stays conservative (set by
        samples the model had not seen). Without PCA the held-out samples'
        sums are added to the statistics, so the others are not read again;
        with PCA the PCA and the Gaussian are fitted again. Chosen on the
        four-set panel (doc/benchmarks.md): DFM's tire image AUROC 0.711 -> 0.731 and
        PaDiM's screw 0.839 -> 0.846, the other sets level or higher.
    contamination : float in (0, 0.5], default=0.05
        Largest fraction of new normal samples that ``predict`` may flag.
    calibration_size : "cross-fit", float in (0, 1) or int, default="cross-fit"
        How ``offset_`` is calibrated. ``"cross-fit"``: every training sample
        is scored by a model that did not learn from it (exactly leave-one-out
        for per-position Gaussians, five folds with PCA), so the threshold
        rests on the whole training set rather than a tenth of it; a streamed
        fit of several chunks and ``partial_fit`` hold out 20% (at most 200)
        instead. A share or a number: that many samples are held out of the
        model, calibrate, and then join it.
    random_state : int, RandomState instance or None, default=None
        Seeds the calibration split.

    Attributes
    ----------
    mean_ : ndarray of shape (h, w, d) or (d,)
        Gaussian mean(s), in PCA space when PCA is used.
    precision_ : ndarray of shape (h, w, d, d) or (d, d), float32
        Inverse regularised covariance(s).
    pca_ : PCA or None
        The fitted PCA.
    offset_ : float
        Threshold on ``score_samples``.
    calibration_scores_ : ndarray
        Sorted ``score_samples`` of the held-out normal samples.
    n_features_in_ : int
        Feature dimension seen in ``fit``.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.detectors import GaussianDetector
    >>> X = np.random.default_rng(0).normal(size=(300, 3))
    >>> det = GaussianDetector(random_state=0).fit(X)
    >>> det.predict([[0.0, 0.0, 0.0], [6.0, 6.0, 6.0]]).tolist()
    [1, -1]
    """

    _parameter_constraints = {
        **_BaseDetector._parameter_constraints,
        "n_components": [
            Interval(numbers.Integral, 1, None, closed="left"),
            Interval(numbers.Real, 0, 1, closed="neither"),
            None,
        ],
        "score_type": [StrOptions({"mahalanobis", "nll", "reconstruction"})],
        "regularization": [Interval(numbers.Real, 0, None, closed="left")],
        "regularization_scale": [StrOptions({"absolute", "position", "global"})],
        "image_score_sigma": _IMAGE_SCORE_SIGMA_CONSTRAINT,
        "calibration_in_model": ["boolean"],
    }

    def __init__(
        self,
        n_components=None,
        score_type="mahalanobis",
        *,
        regularization=0.01,
        regularization_scale="absolute",
        image_score_sigma=0.0,
        calibration_in_model=True,
        contamination=0.05,
        calibration_size="cross-fit",
        random_state=None,
    ):
        self.n_components = n_components
        self.score_type = score_type
        self.regularization = regularization
        self.regularization_scale = regularization_scale
        self.image_score_sigma = image_score_sigma
        self.calibration_in_model = calibration_in_model
        self.contamination = contamination
        self.calibration_size = calibration_size
        self.random_state = random_state

    def _fit_normal(self, X, fit_idx, rng):
        _, h, w, _ = X.shape
        if self.score_type == "reconstruction" and self.n_components is None:
            raise ValueError("score_type='reconstruction' needs n_components (PCA).")
        # Without PCA: a Gaussian per position (one on vectors), from moments
        # that the held-out samples are later merged into. With PCA a grid is
        # one sample: one PCA of the flattened grids.
        if self.n_components is None:
            self._merge_grid_statistics(X, fit_idx, None)
        else:
            self._set_pca_statistics(X, fit_idx)

    def _can_partial_fit(self):
        # A PCA needs every sample at once; per-position Gaussians are moments.
        return self.n_components is None

    def _update_normal(self, X, fit_idx, rng):
        if self.pca_ is not None:
            raise ValueError(
                f"{type(self).__name__} was fitted with a PCA (n_components="
                f"{self.n_components!r}), which cannot take new samples: fit it again.")
        if tuple(X.shape[1:3]) != self._grid_shape:
            raise ValueError(
                f"X has {X.shape[1]} x {X.shape[2]} grids, but {type(self).__name__} "
                f"was fitted on {self._grid_shape[0]} x {self._grid_shape[1]} grids "
                "(one Gaussian per position).")
        if len(fit_idx) == 0:
            return
        if not hasattr(self, "_running"):
            raise ValueError(f"This {type(self).__name__} was fitted by an earlier skanomaly "
                             "without the moments that partial_fit continues: fit it again.")
        self._merge_grid_statistics(X, fit_idx, self._running)

    def _after_calibration(self, X, cal_idx, rng):
        if self.pca_ is not None:
            return super()._after_calibration(X, cal_idx, rng)
        if self.calibration_in_model:
            # The statistics are moments: the held-out images' are merged in,
            # so the others are not read again.
            self._update_normal(X, cal_idx, rng)

    def _merge_grid_statistics(self, X, idx, running):
        """Merge ``X[idx]`` into the per-position moments ``running`` (no PCA).

        ``running`` is ``(n, mean, packed)`` of the samples learnt so far (None:
        none): their count, float64 means and centred scatter matrices in
        float32 upper triangles (centred, so float32 loses nothing that the
        stored precisions keep). One pass over ``_POSITION_CHUNK`` positions at
        a time (Chan et al.'s pairwise update), so no (positions, d, d) float64
        array is held whole. The precisions are a function of the moments:
        dropped here, and built by ``_build_precisions`` when the model next
        scores (calibration) or the fit ends (``_finish_fit``), not after
        every merge of a streamed fit.
        """
        _, h, w, d = X.shape
        positions = h * w
        feats = X.reshape(len(X), positions, d)
        n_old, mean_old, packed_old = running if running is not None else (0, None, None)
        n = n_old + len(idx)
        if running is not None:
            # Freed for the merge; rebuilt from the old moments if it fails.
            self.precision_ = None
        try:
            mean = np.empty((positions, d), dtype=np.float64)
            packed = np.empty((positions, d * (d + 1) // 2), dtype=np.float32)
            with torch.inference_mode():
                for block in _position_blocks(positions):
                    mean_b, m2 = _block_moments(feats, idx, block)
                    if n_old:
                        mean_a = torch.from_numpy(mean_old[block])
                        delta = mean_b - mean_a
                        mean_b = mean_a + delta * (len(idx) / n)
                        m2 += _unpacked(packed_old[block], d)
                        m2 += (n_old * len(idx) / n) * delta[:, :, None] * delta[:, None, :]
                    mean[block] = mean_b.numpy()
                    packed[block] = _packed(m2)
        except BaseException:
            if running is not None:
                self._build_precisions()
            raise
        self._running = (n, mean, packed)
        self.pca_ = None
        self.precision_ = None  # of the new moments: built when needed
        self._grid_shape = (h, w)
        shape = self._grid_shape if positions > 1 else ()  # vectors: (d,)
        self.mean_ = mean.astype(np.float32).reshape(shape + (d,))

    def _build_precisions(self):
        """``precision_`` and the log-determinants from the running moments
        (regularised as ``regularization_scale`` says), if they were dropped."""
        if self.pca_ is not None or self.precision_ is not None:
            return
        precision, self._logdet = self._precisions(self._running[0] - 1)
        self.precision_ = precision.reshape(self.mean_.shape + (self.mean_.shape[-1],))

    def _precisions(self, divisor):
        """Inverses of ``scatter / divisor + regularization * unit * I`` per
        position, and their log-determinants; the unit is the model's own
        (from ``scatter / (n - 1)``) whatever the divisor."""
        n, _, packed = self._running
        positions = len(packed)
        d = self.mean_.shape[-1]
        rows, cols = _triangle(d)
        on_diagonal = (rows == cols).numpy()
        scale = self.regularization_scale
        if scale == "global":
            # sum_p tr(S_p) / (p d), before any precision is built.
            trace = packed[:, on_diagonal].sum(dtype=np.float64)
            scale = trace / max(n - 1, 1) / (positions * d)
        precision = np.empty((positions, d, d), dtype=np.float32)
        logdet = np.empty(positions, dtype=np.float64)
        with torch.inference_mode():
            for block in _position_blocks(positions):
                scatter = _unpacked(packed[block], d)
                unit = scale
                if scale == "position":
                    unit = _mean_variance(scatter) / max(n - 1, 1)
                prec, ld = _regularised_precision(scatter / max(divisor, 1), self.regularization, unit)
                precision[block] = prec.numpy()
                logdet[block] = ld.numpy()
        return precision, logdet

    def _cross_fit(self, X, rng):
        """Leave-one-out scores of every training grid, exactly, from the
        model of all of them (per-position Gaussians without PCA).

        Removing sample i from the moments changes the scatter by a rank-one
        term, ``S_-i = S - n / (n - 1) u u^T`` with ``u = x_i - mean``, and
        its distance to the mean of the others is ``n / (n - 1) u``; with
        ``A = S / (n - 2) + regularization * unit * I`` and ``m = u^T A^-1
        u``, Sherman-Morrison gives the squared Mahalanobis distance
        ``(n / (n - 1))^2 m / (1 - c m)``, ``c = n / ((n - 1) (n - 2))``,
        and the matrix determinant lemma the log-determinant ``log det A +
        log(1 - c m)``. So the threshold is calibrated on models of n - 1
        samples, not of the 80% that folds would leave: a Mahalanobis
        distance grows as the sample shrinks (more so with 100 features
        from 200 images), which made fold models set thresholds that new
        normal images seldom reach. The regularisation unit stays the full
        model's (it moves by about 1/n).
        """
        n = X.shape[0]
        if self.n_components is not None or n < 3:
            return super()._cross_fit(X, rng)
        self._fit_normal(X, np.arange(n), rng)
        precision, logdet = self._precisions(n - 2)
        _, h, w, d = X.shape
        m = _squared_mahalanobis(X.reshape(n, h * w, d), self.mean_.reshape(h * w, d), precision)
        # cov_-i is positive definite, so 1 - c m > 0 up to rounding.
        rest = np.maximum(1.0 - n / ((n - 1) * (n - 2)) * m, np.finfo(np.float32).eps)
        return self._scores_of(
            (n / (n - 1)) ** 2 * m / rest, logdet[None, :] + np.log(rest), (n, h, w))

    def _finish_model(self):
        # Not after every chunk of a streamed fit: the next one merges again.
        self._build_precisions()

    def _set_pca_statistics(self, X, idx):
        """PCA of the samples ``X[idx]`` flattened, and one Gaussian in its space."""
        _, h, w, d = X.shape
        n = len(idx)
        feats = np.asarray(X[idx]).reshape(n, h * w * d).astype(np.float64)
        n_components = self.n_components
        if isinstance(n_components, numbers.Integral):
            n_components = min(n_components, *feats.shape)  # a grid's whole width
        self.pca_ = PCA(n_components=n_components, svd_solver="full").fit(feats)
        feats = self.pca_.transform(feats)
        with torch.inference_mode():
            block = torch.from_numpy(np.ascontiguousarray(feats))[None]
            mean = block.mean(dim=1).numpy()
            block = block - block.mean(dim=1, keepdim=True)
            cov = block.transpose(1, 2) @ block / max(n - 1, 1)
            scale = "position" if self.regularization_scale != "absolute" else "absolute"
            prec, ld = _regularised_precision(cov, self.regularization, scale)
        dim = mean.shape[-1]
        self._grid_shape = (h, w)
        self.mean_ = mean.astype(np.float32).reshape(dim)
        self.precision_ = prec.numpy().astype(np.float32).reshape(dim, dim)
        self._logdet = ld.numpy()

    # -- ONNX export (skanomaly.export) ------------------------------------------
    @property
    def _not_exportable(self):
        if self.n_components is not None:
            return "its scores go through a PCA of the whole grid (n_components), not exported yet"
        return None

    def _export_graph(self):
        dim = self.precision_.shape[-1]
        return _GaussianGraph(self.mean_, self.precision_, self._logdet, dim,
                              self.score_type == "nll", self.image_score_sigma)

    def _patch_and_image_scores(self, X):
        # Built here when a merge dropped them: calibration scores the
        # held-out samples between merges.
        self._build_precisions()
        n, h, w, d = X.shape
        if self.pca_ is not None:
            fitted = getattr(self, "_grid_shape", (1, 1))
            if (h, w) != fitted:
                raise ValueError(
                    f"X has {h} x {w} grids, but {type(self).__name__} was fitted "
                    f"on {fitted[0]} x {fitted[1]} grids (one PCA of the whole grid)."
                )
            flat = X.reshape(n, h * w * d).astype(np.float64)
            projected = self.pca_.transform(flat)
            if self.score_type == "reconstruction":
                residual = (flat - self.pca_.inverse_transform(projected)) ** 2
                cells = residual.reshape(n, h, w, d).sum(-1)
                return cells.astype(np.float32), cells.reshape(n, -1).sum(1)
            feats = projected.reshape(n, 1, -1)
            h = w = 1  # one joint score: a one-cell map
        else:
            feats = X.reshape(n, h * w, d)
        positions = feats.shape[1]
        mean = self.mean_.reshape(positions, -1)
        dim = mean.shape[1]
        d2 = _squared_mahalanobis(feats, mean, self.precision_.reshape(positions, dim, dim))
        return self._scores_of(d2, self._logdet[None, :], (n, h, w))

    def _scores_of(self, d2, logdet, shape):
        """(patch, image) anomaly scores from squared Mahalanobis distances
        (n, positions) and the covariances' log-determinants (broadcast to
        them); ``shape`` is the (n, h, w) of the patch grids."""
        if self.score_type == "nll":
            patch = 0.5 * (d2 + logdet + self.mean_.shape[-1] * np.log(2 * np.pi))
        else:
            patch = np.sqrt(d2)
        patch = patch.reshape(shape)
        return patch.astype(np.float32), _smoothed_max(patch, self.image_score_sigma)


def _squared_mahalanobis(feats, mean, precision):
    """(n, positions) float64 squared distances of ``feats`` (n, positions, d)
    to per-position ``mean`` (positions, d) under ``precision`` (positions,
    d, d). Images in chunks: the (positions, images, d) difference block of
    a stride-4 PaDiM grid is ~5 MB per image."""
    n, positions, _ = feats.shape
    precision = torch.from_numpy(np.ascontiguousarray(precision, dtype=np.float32))
    d2 = np.empty((n, positions), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, n, _IMAGE_CHUNK):
            part = feats[start:start + _IMAGE_CHUNK] - mean[None]
            diff = torch.from_numpy(np.ascontiguousarray(part.transpose(1, 0, 2), dtype=np.float32))
            d2[start:start + len(part)] = ((diff @ precision) * diff).sum(-1).clamp_(min=0).numpy().T
    return d2


class _GaussianGraph(torch.nn.Module):
    """``_patch_and_image_scores`` of a per-position (or shared) Gaussian in
    torch ops an ONNX graph can hold."""

    def __init__(self, mean, precision, logdet, dim, nll, image_score_sigma):
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(np.asarray(mean, np.float32).reshape(-1, dim)))
        self.register_buffer("precision", torch.from_numpy(
            np.asarray(precision, np.float32).reshape(-1, dim, dim)))
        constant = np.asarray(logdet, np.float64).reshape(-1) + dim * np.log(2 * np.pi)
        self.register_buffer("constant", torch.from_numpy(constant.astype(np.float32)))
        self.nll = nll
        self.blur = _TorchGaussianBlur(image_score_sigma) if image_score_sigma else None

    def forward(self, grids):
        n, h, w, d = grids.shape
        diff = (grids.reshape(n, h * w, d) - self.mean[None]).permute(1, 0, 2)
        d2 = ((diff @ self.precision) * diff).sum(-1).clamp(min=0).T
        patch = 0.5 * (d2 + self.constant[None]) if self.nll else d2.sqrt()
        patch = patch.reshape(n, h, w)
        return patch, _torch_smoothed_max(patch, self.blur)
