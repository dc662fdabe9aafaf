"""What every detector head shares: input checks, held-out calibration and
scikit-learn's outlier-detector contract."""

import numbers
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils import check_random_state
from sklearn.utils._available_if import available_if
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

# Held-out images scored at a time during fit.
_CALIBRATION_CHUNK = 64
# Folds of a cross-fitted calibration: each image is scored by a model fitted
# on the other 80% of the training set; the final model, fitted on all of
# them, sits a little closer to new normal images than the fold models did to
# theirs, so the threshold errs towards fewer false alarms.
_CROSS_FIT_FOLDS = 5
# A streamed fit of several chunks cannot cross-fit (earlier chunks' features
# are gone by the end): it holds out this share of the images, at most this
# many, keeps their features, and scores them with the final model.
_STREAMED_CALIBRATION_SHARE = 0.2
_STREAMED_CALIBRATION_CAP = 200


class _FewCalibrationSamplesWarning(UserWarning):
    """Too few calibration scores for the requested false-alarm rate. A
    streamed fit scores its held-out images once, at the end, so it is
    raised once per fit."""


def conformal_offset(calibration_scores, contamination):
    """Threshold on normality scores that flags at most ``contamination`` of
    new normal samples.

    With n calibration scores from normal samples the model never saw, a new
    normal sample's score falls below the k-th smallest of them with
    probability at most ``k / (n + 1)`` (exchangeability), so
    ``k = floor(contamination * (n + 1))`` honours the requested rate.

    Parameters
    ----------
    calibration_scores : array-like of shape (n,)
        ``score_samples`` of held-out normal samples (higher = more normal).
    contamination : float in (0, 0.5]
        Largest tolerated fraction of normal samples flagged.

    Returns
    -------
    offset : float
    """
    scores = np.sort(np.asarray(calibration_scores, dtype=np.float64))
    k = int(np.floor(contamination * (len(scores) + 1)))
    if k < 1:
        warnings.warn(
            f"{len(scores)} calibration samples cannot guarantee a false-alarm "
            f"rate of {contamination:g} (that needs at least "
            f"{int(np.ceil(1 / contamination)) - 1}); the threshold is the "
            "lowest calibration score, whose rate is about "
            f"{1 / (len(scores) + 1):.3g}.",
            _FewCalibrationSamplesWarning,
            stacklevel=3,
        )
        k = 1
    return float(scores[k - 1])


# Every head with an ``image_score_sigma`` validates it with this one rule.
_IMAGE_SCORE_SIGMA_CONSTRAINT = [Interval(numbers.Real, 0, None, closed="left")]


def _smoothed_max(patch, sigma):
    """Per image, the largest patch score after a Gaussian blur of ``sigma`` cells.

    A maximum over raw patches follows the noisiest patch; over a smoothed
    map it needs a few neighbouring patches to agree (as the maximum of
    anomalib's blurred PaDiM map does).
    """
    if sigma == 0 or patch.shape[1] * patch.shape[2] == 1:
        return patch.reshape(len(patch), -1).max(axis=1).astype(np.float64)
    smooth = gaussian_filter(patch.astype(np.float64), sigma=(0, sigma, sigma), mode="nearest")
    return smooth.reshape(len(patch), -1).max(axis=1)


class _TorchGaussianBlur(torch.nn.Module):
    """``gaussian_filter(mode="nearest")`` (scipy's truncate of 4 standard
    deviations) over the last two axes of an (n, h, w) tensor, as two
    convolutions an ONNX graph can hold."""

    def __init__(self, sigma):
        super().__init__()
        radius = int(4.0 * sigma + 0.5)
        x = np.arange(-radius, radius + 1, dtype=np.float64)
        kernel = np.exp(-0.5 * (x / sigma) ** 2)
        self.radius = radius
        self.register_buffer("kernel", torch.from_numpy((kernel / kernel.sum()).astype(np.float32)))

    def forward(self, maps):
        x = F.pad(maps[:, None], (self.radius, self.radius, 0, 0), mode="replicate")
        x = F.conv2d(x, self.kernel.view(1, 1, 1, -1))
        x = F.pad(x, (0, 0, self.radius, self.radius), mode="replicate")
        return F.conv2d(x, self.kernel.view(1, 1, -1, 1))[:, 0]


def _torch_smoothed_max(patch, blur):
    """:func:`_smoothed_max` of an (n, h, w) tensor; ``blur`` a _TorchGaussianBlur or None."""
    if blur is None or patch.shape[1] * patch.shape[2] == 1:
        return patch.flatten(1).amax(1)
    return blur(patch).flatten(1).amax(1)


class _BaseDetector(OutlierMixin, BaseEstimator):
    """Base class of the heads: 2D rows or 4D patch grids in, outlier contract out.

    Subclasses implement ``_fit_normal(X, fit_idx, random_state)`` on 4D
    grids (fit on the samples ``X[fit_idx]``; indexing is left to them so
    that large grids can be read in chunks instead of copied whole) and
    ``_patch_and_image_scores(X)`` returning (patch anomaly scores of shape
    (n, h, w), image anomaly scores of shape (n,)); higher = more anomalous.
    Heads whose model can grow with new samples also implement
    ``_update_normal(X, fit_idx, random_state)`` (``fit_idx`` may be empty)
    and return True from ``_can_partial_fit``; they then have ``partial_fit``.
    2D input is treated as a grid of one patch per sample.
    """

    # Heads that model whole-image vectors only refuse patch grids.
    _accepts_grids = True
    # Most samples a fractional calibration_size holds out (None: no limit).
    # Heads whose scoring cost grows with the training set set one: their
    # calibration would otherwise cost (training set)^2.
    _calibration_cap = None

    _parameter_constraints = {
        "contamination": [Interval(numbers.Real, 0, 0.5, closed="right")],
        "calibration_size": [
            StrOptions({"cross-fit"}),
            Interval(numbers.Real, 0, 1, closed="neither"),
            Interval(numbers.Integral, 1, None, closed="left"),
        ],
        "random_state": ["random_state"],
    }

    @property
    def novelty(self):
        """Always True: a novelty detector, as ``LocalOutlierFactor(novelty=True)``.

        The head memorises its training samples, so their own scores say
        nothing about new data; it is fitted on normal samples and scores new
        ones, with a threshold calibrated on normal samples held out of the
        model. Hence there is no ``fit_predict``.
        """
        return True

    @property
    def fit_predict(self):
        raise AttributeError(
            f"{type(self).__name__} has no fit_predict: it is a novelty "
            "detector whose training samples are memorised, so labelling them "
            "would be meaningless. Fit on normal samples, then predict new ones."
        )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags

    # -- input ---------------------------------------------------------------
    def _check_features(self, X, *, reset):
        """Return X as a float32 (n, h, w, d) grid; 2D input gives h = w = 1."""
        name = type(self).__name__
        if getattr(X, "ndim", None) == 4:
            if not self._accepts_grids:
                raise ValueError(
                    f"{name} models one vector per image: give it (n_samples, "
                    f"n_features) input, e.g. from ImageEmbedder, not patch grids "
                    f"of shape {X.shape}."
                )
            X = check_array(
                X, allow_nd=True, dtype=np.float32, ensure_min_samples=1,
                estimator=self, input_name="X",
            )
            if min(X.shape[1:]) < 1:
                raise ValueError(f"{name} got an empty patch grid of shape {X.shape}.")
            n_features = X.shape[-1]
            if reset:
                self.n_features_in_ = n_features
                if hasattr(self, "feature_names_in_"):
                    del self.feature_names_in_
            elif n_features != self.n_features_in_:
                raise ValueError(
                    f"X has {n_features} features, but {name} is expecting "
                    f"{self.n_features_in_} features as input."
                )
            return X
        X = validate_data(self, X, reset=reset, dtype=np.float32)
        return X[:, None, None, :]

    def _cross_fits(self):
        return self.calibration_size == "cross-fit"

    def _calibration_split(self, n_samples, rng, allow_empty_fit=False, n_held_out=None):
        """Indices of the samples to learn from and of those held out.

        ``allow_empty_fit`` (``partial_fit``): a batch may be held out whole,
        and an integer ``calibration_size`` is capped by the batch.
        ``n_held_out``: hold out this many instead (a streamed fit's share of
        the whole training set, see ``_n_held_out``).
        """
        if n_held_out is None:
            n_held_out = self._n_held_out(n_samples, allow_empty_fit)
        order = rng.permutation(n_samples)
        return np.sort(order[n_held_out:]), np.sort(order[:n_held_out])

    def _n_held_out(self, n_samples, allow_empty_fit=False):
        """How many of ``n_samples`` samples ``fit`` (or, with
        ``allow_empty_fit``, ``partial_fit``) holds out for calibration."""
        name = type(self).__name__
        if allow_empty_fit:
            if isinstance(self.calibration_size, numbers.Integral):
                return min(int(self.calibration_size), n_samples)
            return self._share_held_out(n_samples)
        if n_samples < 2:
            raise ValueError(
                f"{name} needs at least 2 samples (some to learn from, some to "
                f"calibrate the threshold on); got {n_samples} sample."
            )
        if isinstance(self.calibration_size, numbers.Integral):
            n_cal = int(self.calibration_size)
            if n_cal >= n_samples:
                raise ValueError(
                    f"calibration_size={n_cal} leaves no sample to learn from "
                    f"out of {n_samples}."
                )
            return n_cal
        return min(self._share_held_out(n_samples), n_samples - 1)

    def _share_held_out(self, n_samples):
        """Samples a fractional (or, where it cannot cross-fit, a
        ``"cross-fit"``) ``calibration_size`` holds out of ``n_samples``."""
        if self._cross_fits():
            n_cal = min(int(np.ceil(_STREAMED_CALIBRATION_SHARE * n_samples)),
                        _STREAMED_CALIBRATION_CAP, self._calibration_cap or n_samples)
            return max(n_cal, 1)
        n_cal = int(np.ceil(self.calibration_size * n_samples))
        if self._calibration_cap is not None:
            n_cal = min(n_cal, self._calibration_cap)
        return max(n_cal, 1)

    # -- contract ------------------------------------------------------------
    def fit(self, X, y=None):
        """Learn normality from ``X`` and calibrate the threshold.

        With ``calibration_size="cross-fit"`` every training sample
        calibrates: the samples are split into 5 folds, each scored by the
        model fitted on the other four, and the final model is fitted on
        all of them. Otherwise a ``calibration_size`` share is held out,
        scored by the model fitted on the rest, and (for heads with
        ``calibration_in_bank`` / ``calibration_in_model``) joins it
        afterwards. Either way ``offset_`` is set from scores of normal
        samples that the scoring model had not seen, so that about
        ``contamination`` of new normal samples from the same distribution
        are flagged.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_images, h, w, n_features)
            Normal samples, or patch grids of normal images.
        y : ignored
            Accepted so that ``GridSearchCV`` can pass labels through.

        Returns
        -------
        self : object
            Fitted detector.
        """
        self._fit(X)
        self._finish_fit()
        return self

    def _can_partial_fit(self):
        return False

    @available_if(lambda self: self._can_partial_fit())
    def partial_fit(self, X, y=None):
        """Add normal samples to a fitted model, without refitting it.

        The first call on an unfitted detector is ``fit(X)``. Later calls
        hold out a share of ``X`` (``calibration_size``; 20%, at most 200,
        for ``"cross-fit"``), add the others to the model
        (memory bank entries selected with the same coreset rule, per chunk,
        as ``fit``; Gaussian sums continued), then score the held-out
        samples with the updated model, merge their scores into
        ``calibration_scores_`` and set ``offset_`` again; held-out samples
        then join the model (``calibration_in_bank`` /
        ``calibration_in_model``). The scores kept from earlier calls came
        from the model as it was then: for a memory bank, which only grows,
        they are lower than the model would give them now, so the threshold
        errs towards fewer false alarms.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_images, h, w, n_features)
            New normal samples, shaped as in ``fit``.
        y : ignored

        Returns
        -------
        self : object

        Examples
        --------
        >>> import numpy as np
        >>> from skanomaly import KNNDetector
        >>> rng = np.random.default_rng(0)
        >>> det = KNNDetector(coreset_ratio=1.0, random_state=0).fit(rng.normal(size=(50, 2)))
        >>> det.partial_fit(rng.normal(size=(30, 2))).memory_bank_.shape
        (80, 2)
        """
        if not hasattr(self, "offset_"):
            return self.fit(X)
        self._partial_fit(X)
        self._finish_fit()
        return self

    def _partial_fit(self, X, n_held_out=None):
        """``partial_fit`` of a fitted detector, holding out ``n_held_out``
        samples of ``X`` (None: the ``calibration_size`` rule); the held-out
        samples are scored by ``_finish_fit``, once the model has every
        other sample."""
        self._validate_params()
        X = self._check_features(X, reset=False)
        rng = check_random_state(self.random_state)
        fit_idx, cal_idx = self._calibration_split(X.shape[0], rng, allow_empty_fit=True,
                                                   n_held_out=n_held_out)
        self._update_normal(X, fit_idx, rng)
        self._hold_for_calibration(X, cal_idx, rng, merge=True)
        return self

    def _fit(self, X, n_held_out=None):
        """``fit``, holding out ``n_held_out`` samples (None: the
        ``calibration_size`` rule); at least one, and one left to learn from."""
        self._validate_params()
        X = self._check_features(X, reset=True)
        if n_held_out is not None and not 1 <= n_held_out < X.shape[0]:
            raise ValueError(f"{type(self).__name__} needs 1 to {X.shape[0] - 1} of "
                             f"{X.shape[0]} samples held out; got {n_held_out}.")
        return self._fit_checked(X, n_held_out)

    def _finish_fit(self):
        """Run once ``fit`` or ``partial_fit`` (or a streamed fit's last
        chunk) is done: score the held-out samples with the finished model
        and set the threshold, then ``_finish_model``."""
        pending = self.__dict__.pop("_pending_calibration", None)
        if pending is not None:
            merge, blocks, rng = pending
            self._calibrate_blocks(blocks, rng, merge=merge)
        self._finish_model()

    def _finish_model(self):
        """Hook run once the fit is done: what the steps in between need not build."""

    def _fit_checked(self, X, n_held_out=None):
        rng = check_random_state(self.random_state)
        self.__dict__.pop("_pending_calibration", None)
        if n_held_out is None and self._cross_fits():
            if X.shape[0] < 2:
                raise ValueError(
                    f"{type(self).__name__} needs at least 2 samples (each is scored "
                    "by a model fitted on the others to calibrate the threshold); got "
                    f"{X.shape[0]} sample.")
            patches, images = self._cross_fit(X, rng)
            self._set_calibration([patches], [images], merge=False)
            return self
        fit_idx, cal_idx = self._calibration_split(X.shape[0], rng, n_held_out=n_held_out)
        self._fit_normal(X, fit_idx, rng)
        if n_held_out is None:
            # The whole training set is here: the model is finished.
            self._calibrate(X, cal_idx, rng)
        else:
            self._hold_for_calibration(X, cal_idx, rng, merge=False)
        return self

    def _cross_fit(self, X, rng):
        """Out-of-fold (patch, image) anomaly scores of the samples of ``X``,
        leaving the model fitted on all of them.

        The samples are cut into ``_CROSS_FIT_FOLDS`` random folds (one per
        sample below that), each scored by the model fitted on the others.
        Heads whose model can be cut into folds more cheaply override this.
        """
        n = X.shape[0]
        folds, scored = self._cross_fit_folds(n, rng)
        # The fold models draw from their own stream: the final model gets
        # the same draws whatever the fold models used (an approximate
        # index's k-means, for one).
        fold_rng = check_random_state(rng.randint(np.iinfo(np.int32).max))

        def fit_without(k):
            self._fit_normal(X, np.setdiff1d(np.arange(n), folds[k]), fold_rng)

        scores = self._out_of_fold_scores(X, folds, scored, fit_without)
        self._fit_normal(X, np.arange(n), rng)
        return scores

    def _cross_fit_folds(self, n, rng):
        """The random folds of ``range(n)`` and the samples to score: all of
        them, or ``_calibration_cap`` drawn across the folds for heads whose
        scoring cost grows with the training set."""
        folds = [np.sort(f) for f in np.array_split(rng.permutation(n), min(_CROSS_FIT_FOLDS, n))]
        scored = np.sort(rng.permutation(n)[:min(n, self._calibration_cap or n)])
        return folds, scored

    def _out_of_fold_scores(self, X, folds, scored, fit_without):
        """Scores of the ``scored`` samples of each fold, the model set by
        ``fit_without(k)`` to the one that did not learn from fold k."""
        patches, images = [], []
        for k, fold in enumerate(folds):
            rows = fold[np.isin(fold, scored)]
            if len(rows):
                fit_without(k)
                self._scores_in_chunks(X, rows, patches, images)
        return np.concatenate(patches), np.concatenate(images)

    def _scores_in_chunks(self, X, rows, patches, images):
        """Append the (patch, image) scores of ``X[rows]`` to the two lists,
        ``_CALIBRATION_CHUNK`` samples at a time: grids are never copied whole."""
        for start in range(0, len(rows), _CALIBRATION_CHUNK):
            p, i = self._patch_and_image_scores(X[rows[start:start + _CALIBRATION_CHUNK]])
            patches.append(p)
            images.append(i)

    def _hold_for_calibration(self, X, cal_idx, rng, merge):
        """Keep ``X[cal_idx]`` until ``_finish_fit`` scores it with the
        finished model (a streamed fit's later chunks add theirs)."""
        block = np.asarray(X[cal_idx])
        pending = getattr(self, "_pending_calibration", None)
        if pending is None:
            self._pending_calibration = (merge, [(block, np.arange(len(block)))], rng)
        else:
            pending[1].append((block, np.arange(len(block))))

    def _calibrate(self, X, cal_idx, rng, merge=False):
        """Set ``offset_`` from the scores of the held-out ``X[cal_idx]``
        (with ``merge``, added to the earlier calibration scores), now."""
        self._calibrate_blocks([(X, cal_idx)], rng, merge=merge)

    def _calibrate_blocks(self, blocks, rng, merge=False):
        """Score the held-out samples ``X[idx]`` of each ``(X, idx)`` of
        ``blocks`` with the model as it is, set the calibration from them,
        then let them join the model (``_after_calibration``)."""
        patches, images = [], []
        for X, idx in blocks:
            self._scores_in_chunks(X, idx, patches, images)
        self._set_calibration(patches, images, merge=merge)
        for X, idx in blocks:
            if len(idx):
                self._after_calibration(X, idx, rng)

    def _set_calibration(self, patches, images, merge):
        """``calibration_scores_``, ``calibration_patch_scores_`` and
        ``offset_`` from the anomaly scores of normal samples the scoring
        model had not seen (with ``merge``, added to the kept ones)."""
        cal_images = [-np.asarray(i, dtype=np.float64) for i in images]
        cal_patches = [np.asarray(p, dtype=np.float32) for p in patches]
        if merge:
            cal_images.append(self.calibration_scores_)
            kept = self.calibration_patch_scores_
            if kept.ndim == 3:
                cal_patches.append(kept)
        self.calibration_scores_ = np.sort(np.concatenate(cal_images))
        # Patch scores of those normal images, one grid each: the reference
        # for pixel thresholds (skanomaly.calibration.pixel_threshold).
        self.calibration_patch_scores_ = np.concatenate(cal_patches)
        self.offset_ = conformal_offset(self.calibration_scores_, self.contamination)

    def _after_calibration(self, X, cal_idx, rng):
        """Hook run once ``offset_`` is set; ``X[cal_idx]`` are the held-out samples.

        Heads with ``calibration_in_model=True`` are fitted again on every
        sample: the threshold came from samples the model had not seen, and
        the model then learns from all of them.
        """
        if getattr(self, "calibration_in_model", False):
            self._fit_normal(X, np.arange(X.shape[0]), rng)

    def score_samples(self, X):
        """Normality score of each sample; higher is more normal.

        For patch grids the score is minus the image's anomaly score (its
        worst patch, see the class notes).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_images, h, w, n_features)

        Returns
        -------
        scores : ndarray of shape (n_samples,), float64
        """
        check_is_fitted(self)
        X = self._check_features(X, reset=False)
        return -self._patch_and_image_scores(X)[1].astype(np.float64)

    def decision_function(self, X):
        """``score_samples(X) - offset_``: negative for anomalies.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_images, h, w, n_features)

        Returns
        -------
        decision : ndarray of shape (n_samples,), float64
        """
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """+1 for normal samples, -1 for anomalies.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_images, h, w, n_features)

        Returns
        -------
        labels : ndarray of shape (n_samples,), int
        """
        return np.where(self.decision_function(X) >= 0, 1, -1)

    def score_samples_and_patches(self, X):
        """``score_samples(X)`` and ``score_patches(X)`` from one pass.

        Patch-level heads compute the patch scores to get the image scores
        anyway; SPADE's cost, for one, is all in that pass.

        Parameters
        ----------
        X : ndarray of shape (n_images, h, w, n_features)

        Returns
        -------
        scores : ndarray of shape (n_images,), float64
            As ``score_samples``: higher is more normal.
        patch_scores : ndarray of shape (n_images, h, w), float32
            As ``score_patches``: higher is more anomalous.
        """
        X = self._check_grid(X, "score_samples_and_patches")
        patches, images = self._patch_and_image_scores(X)
        return -images.astype(np.float64), patches

    def _check_grid(self, X, method):
        check_is_fitted(self)
        if getattr(X, "ndim", None) != 4:
            raise ValueError(
                f"{method} needs 4D patch grids (n_images, h, w, n_features), "
                f"e.g. from PatchEmbedder; got shape {np.shape(X)}."
            )
        return self._check_features(X, reset=False)

    def score_patches(self, X):
        """Anomaly score of every patch of patch grids; higher is more anomalous.

        Parameters
        ----------
        X : ndarray of shape (n_images, h, w, n_features)

        Returns
        -------
        scores : ndarray of shape (n_images, h, w), float32
        """
        return self._patch_and_image_scores(self._check_grid(X, "score_patches"))[0]
