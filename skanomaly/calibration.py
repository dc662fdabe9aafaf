"""Thresholds and what they promise: conformal p-values, the pixel threshold
of masks and boxes, and recalibration from recent labelled images."""

import weakref

import numpy as np
from skanomaly_runtime._calibration import conformal_pvalues_of
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from .detectors._base import conformal_offset

__all__ = ["calibrate", "confident_offset", "conformal_pvalues", "pixel_threshold", "set_thresholds"]


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
    >>> bool(p[0] > p[1]), float(p[1]) == 1 / 101  # 100 of the 200 cross-fitted
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
        Pixels with ``map > threshold`` are anomalous. Without
        ``false_alarm_rate``, a threshold chosen with
        :func:`set_thresholds` (``pixel_threshold_``) when there is one.

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
    if false_alarm_rate is None and getattr(head, "pixel_threshold_", None) is not None:
        return float(head.pixel_threshold_)  # chosen by set_thresholds
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


# Per head, the map maxima of its current calibration: masks and the app ask
# for the threshold again and again. Kept beside the head, not in it, so a
# saved model carries no cache.
_MAP_MAXIMA = weakref.WeakKeyDictionary()


def _map_maxima(head, model_shape, sigma):
    """Sorted largest map value of each calibration grid of ``head``."""
    from .maps import upsample_patch_scores

    grids = head.calibration_patch_scores_
    key = (None if model_shape is None else tuple(model_shape), float(sigma))
    cached = _MAP_MAXIMA.get(head)
    if cached is not None and cached[0] == key and cached[2] is grids:
        return cached[1]
    if model_shape is None:
        maxima = grids.reshape(len(grids), -1).max(axis=1)
    else:
        maps = upsample_patch_scores(grids, [tuple(model_shape)] * len(grids),
                                     model_shape=tuple(model_shape), sigma=sigma)
        maxima = np.array([m.max() for m in maps])
    maxima = np.sort(maxima.astype(np.float64))
    _MAP_MAXIMA[head] = (key, maxima, grids)
    return maxima


# calibrate(pool="auto"): the level of the rank test that keeps the
# training calibration out when the new good images score differently.
_SHIFT_TEST_LEVEL = 0.05


def _alike(good_scores, training_scores):
    """Whether a two-sided Mann-Whitney test finds no sign that the new good
    images score differently from the training calibration: lower (a drift
    that would raise false alarms) or higher (calibration scores that would
    make the threshold needlessly strict)."""
    from scipy.stats import mannwhitneyu

    if len(good_scores) < 2 or len(training_scores) < 2:
        return False, float("nan")
    p_value = float(mannwhitneyu(good_scores, training_scores, alternative="two-sided").pvalue)
    return p_value >= _SHIFT_TEST_LEVEL, p_value


def calibrate(estimator, good, defective=None, *, false_alarm_rate=None, confidence=None,
              pool="auto"):
    """Set a fitted model's thresholds from recent labelled images.

    The training images promise a false-alarm rate on new images *like
    them*; when production images drift (light, fixture, supplier), good
    parts recently inspected say where the threshold belongs. The image
    threshold is set on the ``good`` images' scores by
    :func:`confident_offset`: the share of new good images flagged stays
    within ``false_alarm_rate`` on average (``confidence=None``, the promise
    ``fit`` makes) or with probability ``confidence``; of the thresholds
    that keep that promise it is the loosest, which flags the most defects
    any of them can (recall only grows as the threshold loosens, so
    defective images do not move it; they are scored to report the
    recall). The good images become the model's calibration
    (``calibration_scores_`` for p-values, ``calibration_patch_scores_`` for
    :func:`pixel_threshold`) and ``contamination`` becomes
    ``false_alarm_rate``. The model is changed in place.

    A few dozen good images pin a 5% quantile down poorly: with 20, the
    threshold must be their lowest score, wherever it fell. So by default
    (``pool="auto"``) the new good images join the model's own calibration
    (its cross-fitted training scores) unless a two-sided rank test
    (Mann-Whitney, level 0.05) says the two differ, e.g. the line has
    drifted: then they replace it. The user guide's operating-point table
    shows what it does on the shared panel, calibrating on half of each
    test set and judging the other half.

    Parameters
    ----------
    estimator : fitted Pipeline
        Its last step is a skanomaly head.
    good : list of images
        Normal images the model has not learnt from (not training images).
    defective : list of images or None, default=None
        Anomalous images, scored to report the recall.
    false_alarm_rate : float in (0, 0.5] or None, default=None
        Largest share of good images to flag; None keeps the head's
        ``contamination``.
    confidence : float in (0, 1) or None, default=None
        None: the false-alarm rate holds on average over draws of the good
        images. A probability that it holds: below about ``log(1 -
        confidence) / log(1 - false_alarm_rate)`` good images (45 at 0.9
        and 0.05) no threshold can promise it, and the lowest good score is
        taken with a warning.
    pool : {"auto", True, False}, default="auto"
        Whether the model's calibration scores join the good images': "auto"
        unless the rank test finds them different, True always, False never
        (the good images alone, the distribution-free promise above).

    Returns
    -------
    summary : dict
        ``offset`` (the new ``offset_``), ``n_good``, ``good_flagged`` (how
        many of the good images the new threshold flags), ``confidence``,
        ``false_alarm_rate``, ``pooled`` (whether the model's calibration
        joined), ``drift_p_value`` (the rank test's; NaN when not run), and
        with ``defective``, ``recall`` (share of them flagged).

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import make_padim
    >>> from skanomaly.calibration import calibrate
    >>> rng = np.random.default_rng(0)
    >>> pipe = make_padim(image_size=32, random_state=0).fit(rng.random((20, 32, 32, 3)))
    >>> summary = calibrate(pipe, rng.random((60, 32, 32, 3)), false_alarm_rate=0.1)
    >>> summary["n_good"], summary["good_flagged"] <= 6
    (60, True)
    """
    from .maps import _draws_maps, _patch_scores_by_batch

    if not isinstance(estimator, Pipeline):
        raise ValueError(f"calibrate needs a fitted Pipeline, got {type(estimator).__name__}.")
    head = estimator.steps[-1][1]
    check_is_fitted(head, "calibration_scores_")
    rate = head.contamination if false_alarm_rate is None else float(false_alarm_rate)
    if not 0 < rate <= 0.5:
        raise ValueError(f"false_alarm_rate must be in (0, 0.5], got {rate}.")
    if confidence is not None and not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1) or None, got {confidence}.")
    if len(good) < 1:
        raise ValueError("calibrate needs at least one good image.")
    if pool not in ("auto", True, False):
        raise ValueError(f"pool must be 'auto', True or False, got {pool!r}.")
    if _draws_maps(head):
        batches = list(_patch_scores_by_batch(estimator, good))
        scores = np.concatenate([batch[1] for batch in batches])
        grids = np.concatenate([batch[2] for batch in batches]).astype(np.float32)
    else:
        grids, scores = None, estimator.score_samples(good)
    scores = np.asarray(scores, dtype=np.float64)
    training = np.asarray(head.calibration_scores_, dtype=np.float64)
    pooled, p_value = (bool(pool), float("nan")) if pool != "auto" else _alike(scores, training)
    own_grids = getattr(head, "calibration_patch_scores_", None)
    if pooled:
        if grids is not None and own_grids is not None and own_grids.shape[1:] == grids.shape[1:]:
            grids = np.concatenate([grids, own_grids.astype(np.float32)])
        elif grids is not None:
            pooled = False  # an earlier release's pooled patch scores: keep the images' own
    reference = np.sort(np.r_[scores, training] if pooled else scores)
    head.offset_ = confident_offset(reference, rate, confidence)
    head.calibration_scores_ = reference
    if grids is not None:
        head.calibration_patch_scores_ = grids
    head.pixel_threshold_ = None  # from the new calibration, at the new rate
    head.contamination = rate
    summary = {"offset": head.offset_, "n_good": len(scores),
               "good_flagged": int(np.sum(scores < head.offset_)), "confidence": confidence,
               "false_alarm_rate": rate, "pooled": pooled, "drift_p_value": p_value}
    if defective is not None and len(defective):
        summary["recall"] = float(np.mean(estimator.score_samples(defective) < head.offset_))
    return summary


def set_thresholds(estimator, *, false_alarm_rate=None, offset=None,
                   pixel_false_alarm_rate=None, pixel_value=None):
    """Set a fitted model's image and pixel thresholds to chosen values.

    What the app's Save button does with its sliders: no image is scored.
    The image threshold is given as a false-alarm rate (``predict`` then
    flags the images whose conformal p-value is at most it: ``contamination``
    becomes the rate) or as a raw ``offset_`` on ``score_samples``
    (``contamination`` becomes the share of calibration images it flags, as
    a conformal estimate, so the drift warning expects that rate). The
    pixel threshold is given as the share of normal images with any mask
    (:func:`pixel_threshold` at that rate) or as a raw map value; it is kept
    as ``pixel_threshold_``, which masks, boxes and the export then use,
    until :func:`calibrate` recomputes it. The model is changed in place.

    Parameters
    ----------
    estimator : fitted Pipeline
        Its last step is a skanomaly head.
    false_alarm_rate : float in (0, 0.5] or None, default=None
    offset : float or None, default=None
        At most one of these two; neither keeps the image threshold.
    pixel_false_alarm_rate : float in (0, 1) or None, default=None
    pixel_value : float or None, default=None
        At most one of these two; neither keeps the pixel threshold. Only
        for a model that draws maps.

    Returns
    -------
    summary : dict
        ``offset``, ``contamination`` and ``pixel_threshold`` (None without
        maps) as they now are.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import make_padim
    >>> from skanomaly.calibration import pixel_threshold, set_thresholds
    >>> rng = np.random.default_rng(0)
    >>> pipe = make_padim(image_size=32, random_state=0).fit(rng.random((20, 32, 32, 3)))
    >>> summary = set_thresholds(pipe, false_alarm_rate=0.2, pixel_value=1.5)
    >>> summary["contamination"], pixel_threshold(pipe)
    (0.2, 1.5)
    """
    from .maps import _draws_maps

    if not isinstance(estimator, Pipeline):
        raise ValueError(f"set_thresholds needs a fitted Pipeline, got {type(estimator).__name__}.")
    head = estimator.steps[-1][1]
    check_is_fitted(head, "calibration_scores_")
    if false_alarm_rate is not None and offset is not None:
        raise ValueError("Give the image threshold as false_alarm_rate or as offset, not both.")
    if pixel_false_alarm_rate is not None and pixel_value is not None:
        raise ValueError("Give the pixel threshold as pixel_false_alarm_rate or as pixel_value, "
                         "not both.")
    draws_maps = _draws_maps(head)
    if (pixel_false_alarm_rate is not None or pixel_value is not None) and not draws_maps:
        raise ValueError(f"{type(head).__name__} scores whole images: it has no pixel threshold.")
    if false_alarm_rate is not None and not 0 < false_alarm_rate <= 0.5:
        raise ValueError(f"false_alarm_rate must be in (0, 0.5], got {false_alarm_rate}.")
    if pixel_false_alarm_rate is not None and not 0 < pixel_false_alarm_rate < 1:
        raise ValueError(f"pixel_false_alarm_rate must be in (0, 1), got {pixel_false_alarm_rate}.")
    for name, value in (("offset", offset), ("pixel_value", pixel_value)):
        if value is not None and not np.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}.")
    scores = np.sort(np.asarray(head.calibration_scores_, dtype=np.float64))
    if pixel_false_alarm_rate is not None:  # before contamination moves
        pixel_value = pixel_threshold(estimator, pixel_false_alarm_rate)
    if false_alarm_rate is not None:
        head.contamination = float(false_alarm_rate)
        head.offset_ = conformal_offset(scores, head.contamination)
    elif offset is not None:
        head.offset_ = float(offset)
        implied = (np.count_nonzero(scores < head.offset_) + 1) / (len(scores) + 1)
        head.contamination = float(min(implied, 0.5))
    if pixel_value is not None:
        head.pixel_threshold_ = float(pixel_value)
    return {"offset": float(head.offset_), "contamination": float(head.contamination),
            "pixel_threshold": pixel_threshold(estimator) if draws_maps else None}


def confident_offset(good_scores, false_alarm_rate, confidence=None):
    """Threshold on ``score_samples`` that flags at most ``false_alarm_rate``
    of new good images: on average, or with probability ``confidence``.

    With n good scores, the loosest threshold that flags j of them (their
    (j + 1)-th lowest score) has a false-alarm rate distributed as Beta(j + 1,
    n - j) over the draw of the good images, whose mean is (j + 1) / (n + 1).
    ``confidence=None`` keeps the largest j whose mean is at most the rate
    (``fit``'s own rule: ``j + 1 = floor(rate * (n + 1))``); a confidence
    keeps the largest j whose upper tail at the rate is at most ``1 -
    confidence``. Either is the threshold that flags the most defects with
    that guarantee. With too few scores for any j, the lowest score is taken
    and a warning says so.

    Parameters
    ----------
    good_scores : array-like of shape (n,)
        ``score_samples`` of good images the model did not learn from.
    false_alarm_rate : float in (0, 1)
    confidence : float in (0, 1) or None, default=None
        None: the false-alarm rate is at most ``false_alarm_rate`` on
        average over draws of the good images. A probability: it is at most
        that with this probability, a stricter threshold (fewer defects
        caught) the fewer good images there are.

    Returns
    -------
    offset : float
        Images with ``score_samples < offset`` are flagged.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.calibration import confident_offset
    >>> scores = np.random.default_rng(0).normal(size=1000)
    >>> offset = confident_offset(scores, 0.05)
    >>> 0.03 < float(np.mean(scores < offset)) < 0.05
    True
    """
    import warnings

    from scipy.stats import beta

    order = np.sort(np.asarray(good_scores, dtype=np.float64))
    n = len(order)
    if n < 1:
        raise ValueError("A threshold needs at least one good score.")
    if confidence is None:
        return conformal_offset(order, false_alarm_rate)
    j = np.arange(n)
    allowed = np.flatnonzero(beta.sf(false_alarm_rate, j + 1, n - j) <= 1 - confidence)
    if not len(allowed):
        warnings.warn(
            f"{n} good images cannot promise a false-alarm rate of {false_alarm_rate:g} with "
            f"confidence {confidence:g} (that needs at least "
            f"{int(np.ceil(np.log(1 - confidence) / np.log(1 - false_alarm_rate)))}); the "
            f"threshold is the lowest good score, whose expected rate is about "
            f"{1 / (n + 1):.3g}.", UserWarning, stacklevel=3)
    return float(order[allowed.max() if len(allowed) else 0])
