"""Fit-and-score evaluation of a pipeline on a train/test split, with shared embeddings."""

import time

import numpy as np
from sklearn.metrics import roc_auc_score

from ._torch import _progress
from .images import check_images, load_image
from .maps import _is_image_level, _LazyMaps, _model_input_shape
from .calibration import pixel_threshold
from .metrics import _load_mask, _PixelTally, f1_max, image_operating_point
from .streaming import StreamingPipeline

__all__ = ["FeatureCache", "evaluate_pipeline"]

# Test images embedded and scored at a time by evaluate_pipeline.
_TEST_BATCH = 32


class FeatureCache:
    """Per-image memo of a transformer's output, keyed by its parameters.

    Methods that share an embedder configuration (PatchCore, SoftPatch and
    SPADE all use the default ``PatchEmbedder``) then embed each image once.
    Only path items are cached; arrays are embedded each time. Each row keeps
    the time it took to embed, and ``last_seconds`` is that cost summed over
    the rows of the latest call, cached or not, so timings stay fair to every
    method that shares the cache.

    Rows are kept on disk, one ``.npy`` file each in a temporary folder
    removed with the cache: PaDiM's stride-4 features are 1.6 MB an image, so
    several embedders over a few thousand images would not fit in memory,
    while reading a row back costs far less than embedding it.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import ImageEmbedder
    >>> from skanomaly.evaluation import FeatureCache
    >>> cache = FeatureCache()
    >>> images = np.random.default_rng(0).random((2, 32, 32, 3))
    >>> cache.transform(ImageEmbedder(image_size=32).fit(None), images).shape
    (2, 320)
    """

    def __init__(self):
        self._store = {}
        self._folder = None
        self.last_seconds = 0.0

    def _file(self):
        import tempfile
        from pathlib import Path

        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="skanomaly-features-")
        return Path(self._folder.name) / f"{sum(len(s) for s in self._store.values())}.npy"

    def transform(self, transformer, images):
        """``transformer.transform(images)`` of a fitted transformer, reusing cached rows."""
        images = check_images(images)
        key = repr(sorted(transformer.get_params().items()))
        store = self._store.setdefault(key, {})
        missing = [i for i, item in enumerate(images) if not isinstance(item, str) or item not in store]
        rows = {}
        if missing:
            start = time.perf_counter()
            features = transformer.transform([images[i] for i in missing])
            per_row = (time.perf_counter() - start) / len(missing)
            for i, row in zip(missing, features):
                rows[i] = (row, per_row)
                if isinstance(images[i], str):
                    path = self._file()
                    np.save(path, row)
                    store[images[i]] = (path, per_row)
        picked = [rows[i] if i in rows else _loaded(store[images[i]]) for i in range(len(images))]
        self.last_seconds = float(sum(seconds for _, seconds in picked))
        return np.stack([row for row, _ in picked])


def _loaded(entry):
    path, seconds = entry
    return np.load(path), seconds


def _image_shapes(images):
    from PIL import Image

    shapes = []
    for index, item in enumerate(images):
        if isinstance(item, str):
            with Image.open(item) as image:
                shapes.append(image.size[::-1])
        else:
            shapes.append(load_image(item, index).shape[:2])
    return shapes


def _pixel_metrics(masks, maps, patch_scores, threshold):
    """Pixel AUROC, AUPRO, the PRO curve and the operating point at
    ``threshold``, one map at a time into fixed bins: the smoothing and
    resizing that draw a map from its patch scores average them, so every
    map value lies within the patch scores' range."""
    tally = _PixelTally.uniform(patch_scores.min(), patch_scores.max(), threshold=threshold)
    for mask, amap in zip(masks, maps):
        tally.add(_load_mask(mask, amap.shape), amap)
    return {"pixel_auroc": tally.roc_auc(), "aupro": tally.aupro(),
            **tally.operating_point()}, tally.pro_curve()


def evaluate_pipeline(pipeline, train_images, test_images, test_target, test_masks=None,
                      *, cache=None, fit=True, return_maps=False):
    """Fit ``pipeline`` on normal images and measure it on labelled test images.

    Parameters
    ----------
    pipeline : Pipeline
        Transformers then a detector head; fitted here unless ``fit=False``.
        A :class:`~skanomaly.streaming.StreamingPipeline` (what the
        factories return) is fitted as its own ``fit`` would fit it: its
        ``train_views`` of each image, and the head fitted chunk by chunk
        when ``fit`` streams, so the result is the model a user gets.
    train_images : list of images or None
        Normal images (ignored when ``fit=False``).
    test_images : list of images
    test_target : array-like of +1 / -1
    test_masks : list of (path, array or None) or None, default=None
        Ground-truth masks; the pixel AUROC is computed when given (not all
        None) and the head draws maps (a patch grid larger than 1 x 1).
    cache : FeatureCache or None, default=None
        Shares embeddings between pipelines with the same transformers.
    fit : bool, default=True
        False measures an already fitted pipeline (e.g. loaded with joblib).
    return_maps : bool, default=False
        Also return the test images' ``decision_function`` values
        (``scores``), their anomaly maps (``maps``: a sequence whose
        ``maps[i]`` is drawn from the kept patch scores when indexed, so
        memory holds one map at a time; None for image-level methods) and,
        with masks, the PRO curve (``pro_curve``: false-positive rates and
        overlaps), e.g. for :func:`skanomaly.report.summarize_result`.

    Returns
    -------
    result : dict
        ``image_auroc``, ``f1_max``, ``pixel_auroc`` and ``aupro`` (NaN when
        not computed), ``fit_s``
        (embedding, as measured when first computed if cached, plus head
        fit), ``ms_per_image``
        (embedding plus scoring of the test images) and the fitted
        ``pipeline``; the operating point at the model's own thresholds,
        :func:`~skanomaly.metrics.image_operating_point`'s keys
        (``false_alarm_rate``, ``recall``, ``oracle_recall``) and, with
        masks, :func:`~skanomaly.metrics.pixel_operating_point`'s
        (``pixel_f1``, ``best_pixel_f1``, ``good_with_box``,
        ``boxes_per_good``, ``region_hit_rate``); with ``return_maps``,
        ``scores``, ``maps`` and ``pro_curve``.

    Notes
    -----
    Memory does not grow with the test set beyond its scores and patch
    grids: the test images are embedded 32 at a time, and the pixel metrics
    take one map at a time into 65,536 equal bins over the range of the
    patch scores (every map value lies in it). Pixel scores closer than
    1/65,536 of that range share a threshold; the exact functions of
    :mod:`skanomaly.metrics` hold every pixel at once.

    Examples
    --------
    >>> from skanomaly import make_dfm
    >>> from skanomaly.datasets import make_synthetic
    >>> from skanomaly.evaluation import evaluate_pipeline
    >>> d = make_synthetic(24, 6, image_size=32, random_state=0)
    >>> r = evaluate_pipeline(make_dfm(image_size=32, random_state=0), d.images[:18],
    ...                       d.images[18:], d.target[18:])
    >>> round(r["image_auroc"], 2) >= 0.5
    True
    """
    transformers, head = pipeline[:-1], pipeline[-1]
    test_images = check_images(test_images)
    if test_masks is not None and all(mask is None for mask in test_masks):
        test_masks = None  # image-level labels only
    if fit:
        # Frozen embedders learn nothing from images: fit only loads the weights.
        transformers.fit(None)

    def embed(images):
        if cache is None:
            start = time.perf_counter()
            features = transformers.transform(images)
            return features, time.perf_counter() - start
        features = cache.transform(transformers, images)
        return features, cache.last_seconds

    embed_train_s = head_fit_s = 0.0
    if fit:
        streaming = isinstance(pipeline, StreamingPipeline)
        if streaming:
            train_images = pipeline._training_images(train_images)  # its train_views
        train_features, embed_train_s = embed(train_images)
        start = time.perf_counter()
        if streaming and pipeline._streams():
            # The model pipeline.fit(train_images) would give: the same chunks.
            pipeline._fit_head_streamed(train_features)
        else:
            head.fit(train_features, **(pipeline._head_fit_params() if streaming else {}))
        head_fit_s = time.perf_counter() - start
    # The test images a batch at a time: memory holds their scores and patch
    # grids, never every image's features.
    embed_test_s = score_s = 0.0
    decision, patch_parts, want_maps = [], [], None
    verbose = any(getattr(step, "verbose", 0) for _, step in transformers.steps)
    with _progress(len(test_images), verbose, "scoring test images") as update:
        for batch_start in range(0, len(test_images), _TEST_BATCH):
            batch = test_images[batch_start:batch_start + _TEST_BATCH]
            features, seconds = embed(batch)
            update(len(batch))
            embed_test_s += seconds
            if want_maps is None:
                want_maps = (test_masks is not None or return_maps) and np.ndim(features) == 4
            start = time.perf_counter()
            if want_maps:
                scores, patch_scores = head.score_samples_and_patches(features)
                decision.append(scores - head.offset_)
                patch_parts.append(patch_scores)
            else:
                decision.append(head.decision_function(features))
            score_s += time.perf_counter() - start
            del features
    decision = np.concatenate(decision)
    patch_scores = np.concatenate(patch_parts) if want_maps else None
    result = {
        "image_auroc": float(roc_auc_score(test_target, decision)),
        "f1_max": f1_max(test_target, decision)[0],
        "pixel_auroc": float("nan"),
        "aupro": float("nan"),
        "fit_s": embed_train_s + head_fit_s,
        "ms_per_image": 1000 * (embed_test_s + score_s) / len(test_images),
        "pipeline": pipeline,
    }
    if want_maps and _is_image_level(patch_scores):
        want_maps = False  # an image-level head (GANomaly): no map to measure
    # The operating point: what the model's own thresholds do.
    result.update(image_operating_point(test_target, decision, head.contamination))
    if want_maps:
        # Drawn one at a time: a test set's maps at full size would not fit.
        maps = _LazyMaps(patch_scores, _image_shapes(test_images),
                         model_shape=_model_input_shape(transformers))
        if test_masks is not None:
            metrics, curve = _pixel_metrics(test_masks, maps, patch_scores, pixel_threshold(pipeline))
            result.update(metrics)
            if return_maps:
                result["pro_curve"] = curve
    if return_maps:
        result["scores"] = np.asarray(decision, dtype=np.float64)
        result["maps"] = maps if want_maps else None
    return result
