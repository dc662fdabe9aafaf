"""Pixel-level anomaly maps from a fitted patch pipeline."""

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from skanomaly_runtime._regions import MIN_AREA
from skanomaly_runtime._resize import resize_image
from skanomaly_runtime.images import _decoded_batches

from .embedders import _BaseEmbedder
from .images import check_images
from .preprocessing import ImagePreprocessor

__all__ = ["anomaly_boxes", "anomaly_maps", "anomaly_masks", "upsample_patch_scores"]


class _NoMapsError(ValueError):
    """The pipeline scores whole images only: it has no anomaly map to draw."""


def _is_image_level(patch_scores):
    """True for a head that scores whole images: a 1 x 1 patch grid is no map."""
    return patch_scores.shape[1:] == (1, 1)


def _draws_maps(head):
    """Whether a fitted head draws anomaly maps, from its calibration state:
    it keeps every patch score of its calibration images, so more patch
    scores than images means a grid larger than 1 x 1 (image-level heads,
    DFKDE or GANomaly, keep one per image)."""
    patch_scores = getattr(head, "calibration_patch_scores_", None)
    if patch_scores is None:
        return False
    if patch_scores.ndim == 3:
        return patch_scores.shape[1:] != (1, 1)
    return len(patch_scores) > len(head.calibration_scores_)  # saved by an earlier release


def _resizing_first_step_shape(transformers):
    """``image_shape_`` of the pipeline's first step when it is one of ours,
    which begins by resizing every image to it; else None."""
    first = transformers.steps[0][1]
    if isinstance(first, (_BaseEmbedder, ImagePreprocessor)):
        return tuple(first.image_shape_)
    return None


def _model_input_shape(transformers, default=None):
    """The (height, width) the pipeline's embedder resizes images to, or ``default``."""
    for _, step in transformers.steps:
        shape = getattr(step, "image_shape_", None)
        if shape is not None:
            return tuple(shape)
    return default


def _resize(array, shape):
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    if tuple(tensor.shape[-2:]) == tuple(shape):
        return array.astype(np.float32, copy=False)
    tensor = F.interpolate(tensor, size=tuple(shape), mode="bilinear", align_corners=False)
    return tensor[0, 0].numpy()


def upsample_patch_scores(patch_scores, image_shapes, *, model_shape=None, sigma=4.0):
    """Turn ``(n, h, w)`` patch scores into smoothed per-pixel maps.

    Each grid is upsampled (bilinear) to ``model_shape``, smoothed with a
    Gaussian of ``sigma`` pixels there, then resized to its image's shape.

    Parameters
    ----------
    patch_scores : ndarray of shape (n, h, w)
        E.g. a head's ``score_patches`` output; higher = more anomalous.
    image_shapes : sequence of (int, int)
        Height and width of each output map.
    model_shape : (int, int) or None, default=None
        Resolution the backbone saw (the embedder's ``image_size``); None
        uses each image's own shape.
    sigma : float, default=4.0
        Gaussian standard deviation in pixels at ``model_shape``; 0 disables.

    Returns
    -------
    maps : list of ndarray of shape (H_i, W_i), float32

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.maps import upsample_patch_scores
    >>> maps = upsample_patch_scores(np.ones((2, 4, 4)), [(32, 32), (10, 20)], model_shape=(32, 32))
    >>> [m.shape for m in maps]
    [(32, 32), (10, 20)]
    """
    if len(patch_scores) != len(image_shapes):
        raise ValueError(f"Got {len(patch_scores)} score grids for {len(image_shapes)} shapes.")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}.")
    maps = []
    for scores, shape in zip(patch_scores, image_shapes):
        smooth = _resize(scores, model_shape or shape)
        if sigma > 0:
            smooth = gaussian_filter(smooth, sigma=sigma, mode="nearest")
        maps.append(_resize(smooth, shape))
    return maps


class _LazyMaps:
    """A test set's anomaly maps, each drawn from its patch scores when indexed.

    Full-size maps of a few hundred large images take gigabytes; their
    patch grids a few megabytes. ``maps[i]`` is
    ``upsample_patch_scores(patch_scores[i:i + 1], [shape_i], ...)[0]``.
    """

    def __init__(self, patch_scores, image_shapes, *, model_shape=None, sigma=4.0):
        if len(patch_scores) != len(image_shapes):
            raise ValueError(f"Got {len(patch_scores)} score grids for {len(image_shapes)} shapes.")
        self._patch_scores, self._shapes = patch_scores, list(image_shapes)
        self._model_shape, self._sigma = model_shape, sigma

    def __len__(self):
        return len(self._shapes)

    def __getitem__(self, index):
        index = range(len(self))[index]  # an int; negative and out-of-range as a list's
        return upsample_patch_scores(self._patch_scores[index:index + 1], [self._shapes[index]],
                                     model_shape=self._model_shape, sigma=self._sigma)[0]


def anomaly_maps(estimator, X, *, sigma=4.0, batch_size=32, return_scores=False):
    """Per-pixel anomaly maps, each at its input image's size.

    The head's patch scores are upsampled (bilinear) to the resolution the
    backbone saw (the embedder's ``image_size``), smoothed with a Gaussian of
    standard deviation ``sigma`` pixels there, as in the PatchCore paper, and
    resized to each input image's own height and width. With
    ``return_scores=True`` the image scores come from the same pass: each
    image is decoded and embedded once for both.

    Parameters
    ----------
    estimator : Pipeline
        A fitted pipeline whose transformers output patch grids (e.g.
        :class:`~skanomaly.PatchEmbedder`) and whose last step has
        ``score_patches`` (e.g. :class:`~skanomaly.KNNDetector`).
    X : list of images or ndarray of shape (n, H, W[, C])
        Images as accepted everywhere (paths, arrays, PIL images).
    sigma : float, default=4.0
        Gaussian smoothing at the model's input resolution; 0 disables it.
    batch_size : int, default=32
        Images decoded and scored at a time (bounds memory).
    return_scores : bool, default=False
        Also return ``estimator.score_samples(X)``, computed in the same pass.

    Returns
    -------
    maps : ndarray of shape (n, H, W) or list of ndarray
        float32, higher = more anomalous. A list of ``(H_i, W_i)`` arrays when
        the images differ in size.
    scores : ndarray of shape (n,)
        Only with ``return_scores=True``: the image scores, as
        ``score_samples`` gives them (higher = more normal).

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import anomaly_maps, make_patchcore
    >>> rng = np.random.default_rng(0)
    >>> train = rng.random((6, 64, 64, 3))
    >>> pipe = make_patchcore(image_size=64, random_state=0).fit(train)
    >>> anomaly_maps(pipe, rng.random((2, 80, 96, 3))).shape
    (2, 80, 96)
    >>> maps, scores = anomaly_maps(pipe, rng.random((2, 64, 64, 3)), return_scores=True)
    >>> maps.shape, scores.shape
    ((2, 64, 64), (2,))
    """
    maps, scores = _maps_and_scores(estimator, X, sigma=sigma, batch_size=batch_size)
    if len({m.shape for m in maps}) == 1:
        maps = np.stack(maps)
    return (maps, scores) if return_scores else maps


def _maps_and_scores(estimator, X, *, sigma=4.0, batch_size=32):
    """Maps (a list) and ``score_samples`` of images, embedding each image once."""
    if sigma < 0:
        raise ValueError(f"Need sigma >= 0, got {sigma}.")
    maps, scores = [], []
    for shapes, batch_scores, patch_scores, model_shape in _patch_scores_by_batch(
            estimator, X, batch_size=batch_size):
        scores.append(batch_scores)
        maps.extend(upsample_patch_scores(patch_scores, shapes, model_shape=model_shape,
                                          sigma=sigma))
    return maps, np.concatenate(scores)


def _patch_scores_by_batch(estimator, X, *, batch_size=32):
    """Per batch of images, decoded one batch ahead and embedded once: their
    ``(height, width)``, ``score_samples``, patch-score grids and the
    resolution their maps are drawn at."""
    if not isinstance(estimator, Pipeline) or len(estimator.steps) < 2:
        raise ValueError(
            "anomaly_maps needs a Pipeline of a patch embedder and a detector, "
            f"got {type(estimator).__name__}."
        )
    head = estimator.steps[-1][1]
    if not hasattr(head, "score_patches"):
        raise ValueError(
            f"The pipeline's last step {type(head).__name__} has no score_patches; "
            "anomaly maps need a patch-level detector such as KNNDetector."
        )
    check_is_fitted(head)
    if batch_size < 1:
        raise ValueError(f"Need batch_size >= 1, got {batch_size}.")
    transformers = estimator[:-1]
    images = check_images(X)
    resize_to = _resizing_first_step_shape(transformers)

    def prepare(array):  # in the decoding thread, one batch ahead
        if resize_to is None:
            return array.shape[:2], array
        # What the first step would do first; it then finds each image at
        # its size and only transposes it back.
        return array.shape[:2], resize_image(array, resize_to).transpose(1, 2, 0)

    for _, items in _decoded_batches(images, batch_size, prepare):
        shapes = [shape for shape, _ in items]
        features = transformers.transform([array for _, array in items])
        if np.ndim(features) != 4:
            raise _NoMapsError(
                "anomaly_maps needs patch grids (n, h, w, d) from the pipeline's "
                f"transformers, got shape {np.shape(features)}."
            )
        if hasattr(head, "score_samples_and_patches"):
            batch_scores, patch_scores = head.score_samples_and_patches(features)
        else:
            batch_scores, patch_scores = head.score_samples(features), head.score_patches(features)
        if _is_image_level(patch_scores):
            raise _NoMapsError(
                f"{type(head).__name__} scores whole images (its patch grid is 1 x 1), "
                "so it draws no anomaly map; use score_samples, or a method with maps "
                "(skanomaly.available_methods(): maps=True)."
            )
        yield (shapes, batch_scores, patch_scores,
               _model_input_shape(transformers, tuple(patch_scores.shape[1:])))


def _as_list(maps):
    return list(maps) if isinstance(maps, np.ndarray) else maps


def anomaly_masks(estimator, X, *, threshold=None, maps=None, **kwargs):
    """Binary defect masks: pixels whose anomaly map exceeds a threshold.

    Parameters
    ----------
    estimator : fitted Pipeline
        As for :func:`anomaly_maps`.
    X : list of images or ndarray of shape (n, H, W[, C])
    threshold : float or None, default=None
        Map value above which a pixel is anomalous. None: the calibrated
        pixel threshold,
        ``skanomaly.calibration.pixel_threshold(estimator, sigma=sigma)``,
        which the maps of at most about ``contamination`` of normal images
        exceed anywhere: a normal image gets an empty mask (and no box)
        unless it is among those, and a defect's mask is what rises above
        the worst that normal images reach.
    maps : list of ndarray or None, default=None
        Maps already computed by :func:`anomaly_maps` for ``X``, to reuse.
    **kwargs
        Passed to :func:`anomaly_maps` (``sigma``, ``batch_size``).

    Returns
    -------
    masks : ndarray of shape (n, H, W) of bool, or list of them
        One per image, at its size (a list when sizes differ).

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import anomaly_masks, make_patchcore
    >>> rng = np.random.default_rng(0)
    >>> pipe = make_patchcore(image_size=64, random_state=0).fit(rng.random((12, 64, 64, 3)))
    >>> anomaly_masks(pipe, rng.random((2, 64, 64, 3))).dtype
    dtype('bool')
    """
    if threshold is None:
        from .calibration import pixel_threshold

        threshold = pixel_threshold(estimator, sigma=kwargs.get("sigma", 4.0))
    if maps is None:
        maps = anomaly_maps(estimator, X, **kwargs)
    masks = [np.asarray(m) > threshold for m in _as_list(maps)]
    return np.stack(masks) if len({m.shape for m in masks}) == 1 else masks


def anomaly_boxes(estimator, X, *, threshold=None, min_area=MIN_AREA, maps=None, **kwargs):
    """Bounding boxes of connected anomalous regions, with a score each.

    Regions are the 8-connected components of :func:`anomaly_masks`; a box's
    score is the largest map value inside its region.

    Parameters
    ----------
    estimator : fitted Pipeline
        As for :func:`anomaly_maps`.
    X : list of images or ndarray of shape (n, H, W[, C])
    threshold : float or None, default=None
        As in :func:`anomaly_masks`.
    min_area : int, default=16
        Regions with fewer pixels are dropped (speckle).
    maps : list of ndarray or None, default=None
        Maps already computed for ``X``, to reuse.
    **kwargs
        Passed to :func:`anomaly_maps`.

    Returns
    -------
    boxes : list of list of dict
        Per image, its regions sorted by decreasing score, each
        ``{"x0", "y0", "x1", "y1", "score", "area"}`` in pixels, with
        exclusive ``x1``/``y1`` (``image[y0:y1, x0:x1]`` is the box).

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import anomaly_boxes, make_patchcore
    >>> rng = np.random.default_rng(0)
    >>> pipe = make_patchcore(image_size=64, random_state=0).fit(rng.random((12, 64, 64, 3)))
    >>> len(anomaly_boxes(pipe, rng.random((2, 64, 64, 3))))
    2
    """
    from skanomaly_runtime._regions import region_boxes

    if maps is None:
        maps = anomaly_maps(estimator, X, **kwargs)
    maps = _as_list(maps)
    masks = _as_list(anomaly_masks(estimator, X, threshold=threshold, maps=maps))
    return [region_boxes(amap, mask, min_area) for amap, mask in zip(maps, masks)]
