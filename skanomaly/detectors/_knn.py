"""Memory-bank nearest-neighbour detector (PatchCore)."""

import copy
import numbers

import numpy as np
import torch
from scipy.special import logsumexp
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions

from ..coreset import kcenter_greedy
from ..neighbors import ApproximateNeighbors, kneighbors
from ..streaming import _coreset_chunk_images, _even_chunks
from ._base import _CROSS_FIT_FOLDS, _BaseDetector

# Fewest images per fold for a bank built fold by fold (five folds: 160
# images); on fewer, one coreset over all of them covers them better (seen
# on 10 synthetic images), and refitting five folds costs little.
_FOLD_BANK_MIN_IMAGES = 32


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
    calibration_size : "cross-fit", float in (0, 1) or int, default="cross-fit"
        How ``offset_`` is calibrated. ``"cross-fit"``: every training sample
        is scored by a model that did not learn from it (five folds, each
        scored against the union of the other folds' coresets; at most 100
        scored), so the threshold rests on the whole training set rather than a
        tenth of it; a streamed fit of several chunks and ``partial_fit`` hold
        out 20% (at most 200) instead. A share or a number: that many samples
        are held out of the model, calibrate, and then join it. A share holds
        out at most 100 samples: scoring one costs time in proportion to the
        training set, so a share without a limit would make ``fit`` grow with
        the square of the training set. Pass an int for more.
    projection_dim : "auto", int or None, default="auto"
        Dimension of the random projection the coreset is selected on (see
        :func:`~skanomaly.coreset.kcenter_greedy`); ``"auto"`` projects only
        features wider than the Johnson-Lindenstrauss dimension of the
        training patches, None never. Chosen on the four-set panel: at
        Lite0's 152 features, selecting without a projection raised
        PatchCore's image AUROC on tire, screw and KolektorSDD over a
        128-dimensional one (three seeds each).
    calibration_in_bank : bool, default=True
        Once ``offset_`` is set on the held-out calibration samples, add
        them to the memory bank (coreset-subsampled and filtered as the
        rest), so that the bank learns from every training image. The
        threshold stays conservative: a larger bank can only bring a new
        normal patch closer to its nearest entry.
    mode : {"patchcore", "spade"}, default="patchcore"
        ``"spade"`` (Cohen & Hoshen, 2020): the image score is the mean
        distance of the image's pooled feature (its patches' average) to
        those of the ``n_neighbors`` nearest training images, and each patch
        is scored against the patches of those images only. SPADE keeps every
        training patch, so it needs ``coreset_ratio=1.0``.
    train_patch_outlier_quantile : float in [0, 1), default=0.0
        SoftPatch (Jiang et al., 2022) bank filtering for training sets with
        some bad images: each training patch gets a local outlier score, its
        distance to the 9th nearest patch of the *same grid position* in the
        other training images, divided by that position's median; this
        share of the most outlying patches is dropped before the coreset.
        0 keeps all (plain PatchCore).
    coreset_chunk_size : int or None, default=262144
        Most training patches the coreset is selected from at once. Larger
        training sets are split, image by image, into near-equal chunks,
        each subsampled to ``coreset_ratio`` (and SoftPatch-filtered) on its
        own and the results stacked: greedy selection costs
        ``patches x centres``, quadratic in the training set, while chunks
        keep it linear and bound the memory to one chunk's features. The
        default holds 256 images of 32 x 32 patches, so MVTec-sized sets use
        one chunk (plain greedy k-center). None: always one chunk.
    metric : {"euclidean", "cosine"}, default="euclidean"
        Patch distance. ``"cosine"``: features are scaled to unit length
        (bank and queries) and a patch scores its cosine distance
        ``1 - cos`` to the nearest bank entry, as AnomalyDINO (Damm et al.,
        2025) scores DINOv2 patches. PatchCore mode only.
    top_fraction : float in (0, 1] or None, default=None
        Image score. None: PatchCore's, the worst patch re-weighted by
        ``n_neighbors``. A share: the mean score of the image's highest
        ``top_fraction`` of patches (at least one; AnomalyDINO's 0.01), less
        sensitive to one stray patch than the maximum; ``n_neighbors`` is
        then unused. PatchCore mode only.
    algorithm : {"auto", "exact", "approximate"}, default="auto"
        Nearest-bank-entry search when scoring patches. ``"exact"``: chunked
        matrix products, whose cost grows with the bank. ``"auto"``: exact
        up to 40,000 bank rows (about twice an MVTec category's 10%
        coreset), approximate beyond, so scoring stays fast as the training
        set grows. ``"approximate"``: an inverted file over k-means
        cells (:class:`~skanomaly.neighbors.ApproximateNeighbors`), each
        patch compared with the bank rows of its 8 nearest cells only,
        worth it for banks of hundreds of thousands of entries; building it
        costs a k-means on the bank at fit time, done again only once the
        bank has doubled (rows added by later chunks, calibration images or
        ``partial_fit`` join the existing cells). The 32 highest-scoring
        patches of each image are then searched exactly, so image scores
        (a maximum, which one missed neighbour would inflate) stay exact in
        practice. PatchCore mode only.
    random_state : int, RandomState instance or None, default=None
        Seeds the calibration split, the projection and the first centre.

    Attributes
    ----------
    memory_bank_ : ndarray of shape (n_bank, n_features), float32
        The stored normal features (in SPADE mode, every patch of every
        training image, image by image).
    image_features_ : ndarray of shape (n_train_images, n_features)
        SPADE mode only: the pooled feature of each training image.
    n_filtered_patches_ : int
        Training patches dropped by ``train_patch_outlier_quantile``.
    index_ : ApproximateNeighbors or None
        The inverted file when the search is approximate (``"approximate"``,
        or ``"auto"`` past 40,000 bank rows); None for exact search.
    offset_ : float
        Threshold on ``score_samples``; ``decision_function = score_samples - offset_``.
    calibration_scores_ : ndarray of shape (n_calibration,)
        Sorted ``score_samples`` of the held-out normal samples.
    n_features_in_ : int
        Feature dimension seen in ``fit``.
    feature_names_in_ : ndarray of shape (``n_features_in_``,)
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
    >>> det.memory_bank_.shape  # half of the 180 fitted rows, then of the 20 held out
    (100, 4)
    >>> det.predict([[0.0, 0.0, 0.0, 0.0], [8.0, 8.0, 8.0, 8.0]]).tolist()
    [1, -1]
    """

    _parameter_constraints = {
        **_BaseDetector._parameter_constraints,
        "coreset_ratio": [Interval(numbers.Real, 0, 1, closed="right")],
        "n_neighbors": [Interval(numbers.Integral, 1, None, closed="left")],
        "projection_dim": [Interval(numbers.Integral, 1, None, closed="left"),
                           StrOptions({"auto"}), None],
        "mode": [StrOptions({"patchcore", "spade"})],
        "train_patch_outlier_quantile": [Interval(numbers.Real, 0, 1, closed="left")],
        "coreset_chunk_size": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "algorithm": [StrOptions({"auto", "exact", "approximate"})],
        "calibration_in_bank": ["boolean"],
        "metric": [StrOptions({"euclidean", "cosine"})],
        "top_fraction": [Interval(numbers.Real, 0, 1, closed="right"), None],
    }

    _calibration_cap = 100

    def __init__(
        self,
        coreset_ratio=0.1,
        n_neighbors=9,
        *,
        contamination=0.05,
        calibration_size="cross-fit",
        projection_dim="auto",
        calibration_in_bank=True,
        mode="patchcore",
        train_patch_outlier_quantile=0.0,
        coreset_chunk_size=262144,
        metric="euclidean",
        top_fraction=None,
        algorithm="auto",
        random_state=None,
    ):
        self.coreset_ratio = coreset_ratio
        self.n_neighbors = n_neighbors
        self.contamination = contamination
        self.calibration_size = calibration_size
        self.projection_dim = projection_dim
        self.calibration_in_bank = calibration_in_bank
        self.mode = mode
        self.train_patch_outlier_quantile = train_patch_outlier_quantile
        self.coreset_chunk_size = coreset_chunk_size
        self.metric = metric
        self.top_fraction = top_fraction
        self.algorithm = algorithm
        self.random_state = random_state

    @classmethod
    def _from_memory_bank(cls, bank, calibration_grids, **params):
        """A fitted detector around a bank chosen elsewhere (an imported
        model): the bank as given, the threshold from ``calibration_grids``
        (patch grids of normal images the bank has not seen), which do not
        join the bank, so scores stay those of the given bank."""
        head = cls(calibration_in_bank=False, **params)
        head._validate_params()
        bank = np.ascontiguousarray(bank, dtype=np.float32)
        if bank.ndim != 2 or len(bank) == 0:
            raise ValueError(f"A memory bank must be a non-empty (m, d) array, got shape {bank.shape}.")
        if len(calibration_grids) == 0:
            raise ValueError("The threshold needs calibration images (normal, not in the bank); got none.")
        X = head._check_features(calibration_grids, reset=True)
        if X.shape[-1] != bank.shape[1]:
            raise ValueError(f"The bank has {bank.shape[1]} features, the images' patches "
                             f"{X.shape[-1]}.")
        rng = check_random_state(head.random_state)
        head.memory_bank_, head.n_filtered_patches_ = bank, 0
        head._build_index(rng)
        head._calibrate(X, np.arange(X.shape[0]), rng)
        return head

    def _can_partial_fit(self):
        return True

    def _features(self, grids):
        """The patches as the bank compares them (unit length for cosine)."""
        grids = np.asarray(grids, dtype=np.float32)
        if self.metric == "cosine":
            norms = np.linalg.norm(grids, axis=-1, keepdims=True)
            grids = grids / np.maximum(norms, np.finfo(np.float32).tiny)
        return grids

    def _fit_normal(self, X, fit_idx, rng):
        if self.mode == "spade" and (self.metric != "euclidean" or self.top_fraction is not None):
            raise ValueError("metric='cosine' and top_fraction are PatchCore-mode options; "
                             "mode='spade' scores with Euclidean distances and its own image score.")
        if self.mode == "spade":
            X = X[fit_idx]
            if (self.coreset_ratio != 1.0 or self.train_patch_outlier_quantile
                    or self.algorithm == "approximate"):
                raise ValueError(
                    "mode='spade' keeps every training patch of every image and "
                    "searches them image by image: use coreset_ratio=1.0, "
                    "train_patch_outlier_quantile=0 and algorithm='exact' (or 'auto')."
                )
            self.image_features_ = X.mean(axis=(1, 2), dtype=np.float64).astype(np.float32)
            self.memory_bank_ = np.ascontiguousarray(X.reshape(-1, X.shape[-1]))
            self.n_filtered_patches_ = 0
            self.index_ = None
            return
        self.memory_bank_, self.n_filtered_patches_ = self._select_bank(X, fit_idx, rng)
        self._build_index(rng)

    def _update_normal(self, X, fit_idx, rng):
        # New samples join as fit's chunks do: their own SoftPatch filter and
        # coreset, stacked onto the bank.
        if self.mode == "spade":
            self._add_spade_images(X, fit_idx)
            return
        extra, n_filtered = self._select_bank(X, fit_idx, rng)
        self.n_filtered_patches_ += n_filtered
        if not len(extra):
            return
        index = getattr(self, "index_", None)
        grown = len(self.memory_bank_) + len(extra)
        if (index is not None and self._searches_approximately(grown)
                and grown <= _INDEX_REBUILD_GROWTH * getattr(index, "n_clustered_", 0)):
            # Cells clustered on a bank not much smaller still fit it: file
            # the new rows in them instead of a k-means on the whole bank
            # (fit's streamed chunks and calibration images, partial_fit).
            self.memory_bank_ = index.add(extra)._share_rows()
            return
        self.memory_bank_ = np.ascontiguousarray(np.concatenate([self.memory_bank_, extra]))
        self._build_index(rng)

    def _add_spade_images(self, X, idx):
        held = np.asarray(X[idx])
        self.image_features_ = np.concatenate([
            self.image_features_,
            held.mean(axis=(1, 2), dtype=np.float64).astype(np.float32)])
        self.memory_bank_ = np.ascontiguousarray(np.concatenate(
            [self.memory_bank_, held.reshape(-1, held.shape[-1])]))

    def _select_bank(self, X, idx, rng, keep=None):
        """SoftPatch-filtered coreset of the patches of ``X[idx]``, chunk by
        chunk; ``keep``: the filter's verdict on every patch of ``X``, made
        beforehand (None: the filter runs on each chunk)."""
        if len(idx) == 0:
            return np.empty((0, X.shape[-1]), dtype=np.float32), 0
        bank, n_filtered = [], 0
        for chunk in self._coreset_chunks(idx, X.shape[1] * X.shape[2]):
            grids = self._features(X[chunk])
            features = grids.reshape(-1, grids.shape[-1])
            keep_chunk = (_soft_patch_mask(grids, self.train_patch_outlier_quantile)
                          if keep is None else keep[chunk].ravel())
            n_dropped = int((~keep_chunk).sum())
            if n_dropped:
                features = features[keep_chunk]
            n_centers = max(1, int(self.coreset_ratio * len(features)))
            if n_centers < len(features):
                selected = kcenter_greedy(
                    features, n_centers, projection_dim=self.projection_dim,
                    random_state=rng,
                )
                features = features[selected]
            bank.append(np.asarray(features, dtype=np.float32))
            n_filtered += n_dropped
            del grids
        return np.ascontiguousarray(np.concatenate(bank)), n_filtered

    def _searches_approximately(self, n_rows):
        return n_rows > 1 and (self.algorithm == "approximate" or (
            self.algorithm == "auto" and n_rows > _APPROXIMATE_FROM_ROWS))

    def _build_index(self, rng):
        self.index_ = None
        if self._searches_approximately(len(self.memory_bank_)):
            self.index_ = ApproximateNeighbors(
                self.memory_bank_, random_state=int(rng.randint(np.iinfo(np.int32).max)),
            )
            # The bank's row order means nothing: keep it in the index's cell
            # order, one array shared with the index, so a fitted model holds
            # (and a file stores, see __getstate__) the bank once.
            self.memory_bank_ = self.index_._share_rows()

    def __getstate__(self):
        state = dict(super().__getstate__())
        index = state.get("index_")
        if index is not None and index._sorted is state.get("memory_bank_"):
            index = copy.copy(index)
            index._sorted = None  # restored from memory_bank_ on load
            state["index_"] = index
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        index = getattr(self, "index_", None)
        if index is not None and index._sorted is None:
            index._sorted = self.memory_bank_

    def _after_calibration(self, X, cal_idx, rng):
        if not self.calibration_in_bank:
            return
        self._update_normal(X, cal_idx, rng)

    def _cross_fit(self, X, rng):
        """Out-of-fold scores from a bank built fold by fold.

        The images are cut into ``_CROSS_FIT_FOLDS`` random folds; each
        fold's patches get their own SoftPatch filter and coreset (as a
        streamed fit's chunks do), and the bank is their union. An image is
        scored against the union of the *other* folds' parts: a bank that
        never saw it, built by the same rule, so no extra coreset is
        selected (greedy selection costs patches x centres, so five folds
        cost a fifth of one selection over all patches). At most
        ``_calibration_cap`` images, drawn across the folds, are scored:
        scoring costs time in proportion to the bank. Below
        ``_FOLD_BANK_MIN_IMAGES`` images a fold, the bank is one coreset of
        all the images and the folds are refitted (the base class's way).
        """
        n = X.shape[0]
        if self.mode == "spade" or n < _CROSS_FIT_FOLDS * _FOLD_BANK_MIN_IMAGES:
            # SPADE searches image by image; a few images' coreset covers
            # them better chosen all together, and five refits of a small
            # set cost little.
            return super()._cross_fit(X, rng)
        # SoftPatch's filter compares each patch with the other images: it
        # runs once on all of them, as fit's would (a fold of the images
        # would weaken it), and each fold's coreset takes its kept patches.
        keep = self._soft_patch_keep(X)
        folds, scored = self._cross_fit_folds(n, rng)
        parts, filtered = [], 0
        for fold in folds:
            part, n_filtered = self._select_bank(X, fold, rng, keep)
            parts.append(part)
            filtered += n_filtered

        def bank_without(k):
            self.memory_bank_ = np.ascontiguousarray(
                np.concatenate([p for j, p in enumerate(parts) if j != k]))
            self.index_ = None  # calibration searches exactly

        scores = self._out_of_fold_scores(X, folds, scored, bank_without)
        self.memory_bank_ = np.ascontiguousarray(np.concatenate(parts))
        self.n_filtered_patches_ = filtered
        self._build_index(rng)
        return scores

    def _soft_patch_keep(self, X):
        """SoftPatch's verdict on every patch of ``X``, (n, h, w) booleans,
        over the coreset chunks that ``fit`` filters one by one."""
        n, h, w, _ = X.shape
        keep = np.ones((n, h, w), dtype=bool)
        if self.train_patch_outlier_quantile:
            for chunk in self._coreset_chunks(np.arange(n), h * w):
                keep[chunk] = _soft_patch_mask(
                    self._features(X[chunk]), self.train_patch_outlier_quantile,
                ).reshape(len(chunk), h, w)
        return keep

    def _coreset_chunks(self, fit_idx, patches_per_image):
        """Groups of training images, each about ``coreset_chunk_size`` patches."""
        most = _coreset_chunk_images(self.coreset_chunk_size, patches_per_image)
        return [fit_idx[chunk] for chunk in _even_chunks(len(fit_idx), most)]

    def _spade_scores(self, X):
        n, h, w, d = X.shape
        bank_images = self.image_features_
        k = min(self.n_neighbors, len(bank_images))
        pooled = X.mean(axis=(1, 2), dtype=np.float64)
        distances, nearest = kneighbors(pooled, bank_images, k)
        per_image = len(self.memory_bank_) // len(bank_images)
        grids = self.memory_bank_.reshape(len(bank_images), per_image, d)
        patch = np.empty((n, h * w), dtype=np.float32)
        for i in range(n):
            support = grids[nearest[i]].reshape(-1, d)
            patch[i] = kneighbors(X[i].reshape(-1, d), support, 1)[0][:, 0]
        return patch.reshape(n, h, w), distances.mean(axis=1).astype(np.float64)

    def _patch_and_image_scores(self, X):
        if self.mode == "spade":
            return self._spade_scores(X)
        n, h, w, d = X.shape
        X = self._features(X)
        bank = self.memory_bank_
        # As AnomalyDINO: the share rounded down, at least one patch.
        n_top = None if self.top_fraction is None else max(1, int(self.top_fraction * h * w))
        if getattr(self, "index_", None) is not None:
            distances, nearest = self.index_.kneighbors(X.reshape(-1, d), 1)
            # A missed neighbour overestimates a patch's distance, and the image
            # score is a maximum (or a mean of the highest): one miss on a normal
            # image would flag it. The patches that can set it are searched exactly.
            top = min(max(_EXACT_TOP_PATCHES, n_top or 0), h * w)
            worst = np.argsort(-distances.reshape(n, h * w), axis=1)[:, :top]
            rows = (np.arange(n)[:, None] * (h * w) + worst).ravel()
            exact_d, exact_i = kneighbors(X.reshape(-1, d)[rows], bank, 1)
            distances[rows], nearest[rows] = exact_d, exact_i
        else:
            distances, nearest = kneighbors(X.reshape(-1, d), bank, 1)
        patch = _patch_distance(distances.reshape(n, h * w), self.metric)
        if n_top is not None:
            highest = -np.partition(-patch, n_top - 1, axis=1)[:, :n_top]
            return patch.reshape(n, h, w), highest.mean(axis=1, dtype=np.float64)
        worst = patch.argmax(axis=1)
        rows = np.arange(n)
        image = patch[rows, worst].astype(np.float64)
        k = min(self.n_neighbors, len(bank))
        if k > 1:
            # PatchCore eq. 7: w = 1 - exp(s) / sum_j exp(d(x*, m_j)), the
            # sum over the k bank entries nearest to m* (m* included).
            m_star = nearest.reshape(n, h * w)[rows, worst]
            _, support = kneighbors(bank[m_star], bank, k)
            x_star = X.reshape(n, h * w, d)[rows, worst].astype(np.float64)
            support_dist = _patch_distance(
                np.linalg.norm(bank[support] - x_star[:, None, :], axis=2), self.metric)
            image = image * (1.0 - np.exp(image - logsumexp(support_dist, axis=1)))
        return patch.reshape(n, h, w), image


    # -- ONNX export (skanomaly.export) ------------------------------------------
    @property
    def _not_exportable(self):
        if self.mode == "spade":
            return "mode='spade' searches a different support set per image"
        return None

    def _export_graph(self):
        return _KNNGraph(self.memory_bank_, self.metric, self.n_neighbors, self.top_fraction)


class _KNNGraph(torch.nn.Module):
    """``_patch_and_image_scores`` in torch ops an ONNX graph can hold: exact
    search (the ranking GEMM centred on the bank mean, the distance of the
    chosen row computed directly, as :func:`~skanomaly.neighbors.kneighbors`)."""

    def __init__(self, bank, metric, n_neighbors, top_fraction):
        super().__init__()
        bank = np.asarray(bank, dtype=np.float32)
        centre = bank.mean(axis=0, dtype=np.float64).astype(np.float32)
        centred = bank - centre
        self.register_buffer("bank", torch.from_numpy(bank))
        self.register_buffer("centre", torch.from_numpy(centre))
        # The bank's columns in groups of about sqrt(rows): the nearest row
        # is found as the group with the smallest minimum, then the row
        # within it. onnxruntime and OpenVINO run a flat ArgMin over the
        # (patches, rows) block several times slower than a ReduceMin over
        # it (doc/benchmarks.md: bench_export.py); the two-level search reads the block
        # once, picks the same (first) row, and the padding rows, at +inf,
        # are never picked.
        self.group_size = int(np.ceil(np.sqrt(len(bank))))
        padding = -len(bank) % self.group_size
        # -2 times the centred rows (a power of two: exact), so that the
        # ranking is one GEMM plus a bias, which runtimes fuse into one pass
        # over the (patches, bank rows) block instead of three.
        scaled_t = np.pad(-2.0 * centred.T, ((0, 0), (0, padding)))
        centred_sq = np.pad((centred.astype(np.float64) ** 2).sum(1).astype(np.float32),
                            (0, padding), constant_values=np.inf)
        self.register_buffer("scaled_t", torch.from_numpy(np.ascontiguousarray(scaled_t)))
        self.register_buffer("centred_sq", torch.from_numpy(centred_sq))
        self.cosine = metric == "cosine"
        self.k = min(n_neighbors, len(bank))
        self.top_fraction = top_fraction

    def _nearest(self, queries, k):
        ranking = torch.addmm(self.centred_sq, queries - self.centre, self.scaled_t)
        if k > 1:
            return torch.topk(ranking, k, dim=1, largest=False).indices
        groups = ranking.reshape(-1, self.centred_sq.shape[0] // self.group_size, self.group_size)
        group = groups.amin(dim=2).argmin(dim=1, keepdim=True)
        within = torch.gather(groups, 1, group[:, :, None].expand(-1, 1, self.group_size))
        return group * self.group_size + within[:, 0].argmin(dim=1, keepdim=True)

    def _distance(self, euclidean):
        return euclidean.pow(2) / 2 if self.cosine else euclidean

    def forward(self, grids):
        n, h, w, d = grids.shape
        x = grids.reshape(-1, d)
        if self.cosine:
            x = x / x.norm(dim=1, keepdim=True).clamp_min(float(np.finfo(np.float32).tiny))
        nearest = self._nearest(x, 1)[:, 0]
        patch = self._distance((x - self.bank[nearest]).norm(dim=1)).reshape(n, h * w)
        if self.top_fraction is not None:
            n_top = max(1, int(self.top_fraction * h * w))
            return patch.reshape(n, h, w), torch.topk(patch, n_top, dim=1).values.mean(1)
        image, worst = patch.max(dim=1)
        if self.k > 1:
            rows = torch.arange(n) * (h * w) + worst
            m_star = nearest[rows]
            support = self._nearest(self.bank[m_star], self.k)
            x_star = x[rows]
            support_dist = self._distance((self.bank[support] - x_star[:, None]).norm(dim=2))
            # logsumexp spelled out around the maximum: runtimes differ in how
            # they compute ReduceLogSumExp (OpenVINO's moved scores by 1%).
            top = support_dist.amax(dim=1)
            spread = torch.log(torch.exp(support_dist - top[:, None]).sum(dim=1))
            image = image * (1.0 - torch.exp(image - top - spread))
        return patch.reshape(n, h, w), image


def _patch_distance(euclidean, metric):
    """Patch scores from Euclidean distances (between unit vectors for cosine:
    ``1 - cos = ||a - b||^2 / 2``)."""
    if metric == "cosine":
        return (euclidean.astype(np.float64) ** 2 / 2).astype(euclidean.dtype)
    return euclidean


# algorithm="auto": banks larger than this are searched approximately. Exact
# search costs bank rows x patches per image, the inverted file about its
# square root. About twice bottle's bank (21,401 rows): below it, exact
# search costs at most ~2x what it does on one MVTec category; past it the
# inverted file is faster (4x bottle, 85,604 rows: 64 against 242 ms per
# image, pixel AUROC 0.9836 against 0.9837, one thread).
_APPROXIMATE_FROM_ROWS = 40_000

# A bank grown to at most this multiple of the rows its inverted file was
# clustered on joins the existing cells; past it the index is built again,
# so a bank streamed in chunks is clustered O(log) times instead of per
# chunk (at 16x bottle: twice instead of 14 times). Cells then hold up to
# 2x the rows a fresh index's would: a query compares 2 sqrt(m) centres and
# the rows of 8 cells, at most 18% more rows than after a fresh build.
_INDEX_REBUILD_GROWTH = 2.0

# Patches per image re-searched exactly after an approximate search.
_EXACT_TOP_PATCHES = 32

# Neighbours defining SoftPatch's local outlier score of a training patch.
_SOFTPATCH_NEIGHBORS = 9


def _soft_patch_mask(X, quantile):
    """True for the training patches kept after SoftPatch filtering.

    X : (n, h, w, d) grids. Each patch is compared with the patches at the
    same grid position in the other images: its distance to the k-th nearest
    of them, over that position's median, is its outlier score.
    """
    n, h, w, d = X.shape
    if quantile <= 0 or n < 2:
        return np.ones(n * h * w, dtype=bool)
    k = min(_SOFTPATCH_NEIGHBORS, n - 1)
    positions = torch.from_numpy(
        np.ascontiguousarray(X.reshape(n, h * w, d).transpose(1, 0, 2))
    )
    scores = np.empty((h * w, n), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, h * w, 128):
            block = positions[start:start + 128]
            dist = torch.cdist(block, block)  # (p, n, n), self at distance 0
            kth = torch.topk(dist, k + 1, dim=2, largest=False).values[..., k]
            median = kth.median(dim=1, keepdim=True).values.clamp_min(1e-12)
            scores[start:start + 128] = (kth / median).numpy()
    scores = scores.T.reshape(-1)  # back to image-major patch order
    return scores <= np.quantile(scores, 1.0 - quantile)
