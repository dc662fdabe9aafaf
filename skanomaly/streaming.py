"""A Pipeline that streams images: bounded memory at any training-set size,
and batch work that joblib (and so dask) can spread over workers."""

import inspect
import numbers

import numpy as np
from joblib import Parallel, delayed
from sklearn.pipeline import Pipeline
from sklearn.utils._chunking import get_chunk_n_rows
from sklearn.utils._available_if import available_if
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from .images import check_images

__all__ = ["StreamingPipeline"]


def _transform(transformers, images):
    for _, step in transformers:
        images = step.transform(images)
    return images


def _call(pipeline, method, images):
    return getattr(Pipeline, method)(pipeline, images)


def _even_chunks(n_items, most):
    """The one chunking rule of training data: ``range(n_items)`` cut into the
    fewest near-equal runs of at most ``most`` items (None: one run).

    Near-equal rather than full runs plus a remainder: a streamed fit then
    gives the coreset the same chunks as the head's own ``fit`` on all the
    features, and no run is a small leftover.
    """
    if most is None or n_items <= most:
        return [np.arange(n_items)]
    return np.array_split(np.arange(n_items), -(-n_items // most))


def _coreset_chunk_images(coreset_chunk_size, patches_per_image):
    """Most images a memory bank's coreset chunk of ``coreset_chunk_size``
    patches holds (None: no limit); ``_even_chunks``' ``most`` for both the
    streamed fit and the head's own coreset chunks."""
    if coreset_chunk_size is None:
        return None
    return max(1, coreset_chunk_size // patches_per_image)


def _spread(total, sizes):
    """``total`` held-out samples spread over chunks of ``sizes`` in
    proportion (cumulative ceilings, so the first chunk holds out at least
    one), the first chunk keeping at least one sample to learn from."""
    edges = -(-np.cumsum(sizes) * total // sum(sizes))
    share = np.diff(np.r_[0, edges])
    share[0] = min(share[0], sizes[0] - 1)
    return [int(k) for k in share]


class StreamingPipeline(Pipeline):
    """A scikit-learn Pipeline that streams images through its steps.

    The factories (:func:`~skanomaly.make_patchcore` and the others) return
    this class; it is a :class:`~sklearn.pipeline.Pipeline` in every respect
    (steps, parameters, ``GridSearchCV``, joblib), with two differences:

    - **fit** streams when every transformer is a frozen skanomaly embedder
      (whose ``fit`` learns nothing from images) and the head has
      ``partial_fit`` (:class:`~skanomaly.KNNDetector`,
      :class:`~skanomaly.GaussianDetector` without PCA, i.e. PaDiM, or any
      third-party head with that method): the images are embedded a chunk at
      a time and the head is fitted on the first chunk and ``partial_fit``
      on each further one, so the features of the whole training set never
      sit in memory together. The images are cut into the fewest near-equal
      chunks of at most as many images as a memory bank's
      ``coreset_chunk_size`` patches hold (256 images of 32 x 32 patches by
      default: MVTec-sized sets are one chunk, and the model is the plain
      pipeline's, up to the float rounding of convolutions; 320 images are
      two chunks of 160), or of ``batch_size`` images for heads without
      that parameter. The images held out to calibrate the threshold are,
      in all, as many as the head's own ``fit`` would hold out of the whole
      set (PatchCore's 10%, at most 100), spread over the chunks. Otherwise
      ``fit`` is ``Pipeline.fit``.
      A head whose ``fit`` takes ``feature_groups`` (a
      :class:`~skanomaly.detectors.FlowDetector` with ``map_stage``, as in
      :func:`~skanomaly.make_cflow`) is given its
      :class:`~skanomaly.PatchEmbedder`'s ``feature_groups_``.
    - **partial_fit** adds new normal images to the fitted model the same
      way (see the head's ``partial_fit``).
    - **score_samples, decision_function, predict** run on batches of
      ``batch_size`` images, dispatched through :class:`joblib.Parallel`:
      memory stays bounded on large test sets, and under
      ``joblib.parallel_backend("dask")`` (or any joblib backend) the batches
      run on the cluster's workers. Embedding batches during a streaming fit
      are dispatched the same way.

    Parameters
    ----------
    steps : list of (str, estimator)
        As :class:`~sklearn.pipeline.Pipeline`.
    batch_size : int, default=64
        Images per scoring or embedding task.
    train_views : int in [1, 8], default=1
        Views of each training image that ``fit`` and ``partial_fit`` learn
        from (:func:`~skanomaly.augment.dihedral_copies`): 1, the images as
        given; 4, also their right-angle rotations; 8, also their mirror
        images. The few-shot recipe (1-8 normal images, as AnomalyDINO's
        rotated references); the views are decoded into memory, so it is
        meant for few images. Scoring never augments.
    n_jobs : int or None, default=None
        joblib workers for those tasks; None: one, unless a
        ``joblib.parallel_backend`` context says otherwise.
    memory, transform_input, verbose
        As :class:`~sklearn.pipeline.Pipeline`; with ``memory`` set, ``fit``
        does not stream.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import KNNDetector, PatchEmbedder
    >>> from skanomaly.streaming import StreamingPipeline
    >>> rng = np.random.default_rng(0)
    >>> pipe = StreamingPipeline([("patchembedder", PatchEmbedder(image_size=64)),
    ...                           ("knndetector", KNNDetector(random_state=0))], batch_size=4)
    >>> pipe.fit(rng.random((10, 64, 64, 3))).score_samples(rng.random((3, 64, 64, 3))).shape
    (3,)
    """

    _parameter_constraints = {
        **Pipeline._parameter_constraints,
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "n_jobs": [numbers.Integral, None],
        "train_views": [Interval(numbers.Integral, 1, 8, closed="both")],
    }

    def __init__(self, steps, *, batch_size=64, n_jobs=None, train_views=1, memory=None,
                 transform_input=None, verbose=False):
        super().__init__(steps, memory=memory, transform_input=transform_input, verbose=verbose)
        self.batch_size = batch_size
        self.n_jobs = n_jobs
        self.train_views = train_views

    def _training_images(self, X):
        """``X`` as a list of images, with ``train_views`` views of each."""
        if self.train_views == 1:
            return check_images(X)
        from .augment import dihedral_copies

        return dihedral_copies(X, self.train_views)

    def _streams(self):
        return self.memory is None and self._frozen_then_incremental()

    def _frozen_then_incremental(self):
        from .embedders import _BaseEmbedder

        return (
            len(self.steps) >= 2
            and all(isinstance(step, _BaseEmbedder) for _, step in self.steps[:-1])
            and hasattr(self._final_estimator, "partial_fit")
        )

    def fit(self, X, y=None, **params):
        """Fit the steps on normal images, streaming them when possible.

        Parameters
        ----------
        X : list of images or ndarray of shape (n, H, W[, C])
            Normal images.
        y : ignored
        **params : dict
            Passed to ``Pipeline.fit`` (disables streaming).

        Returns
        -------
        self : StreamingPipeline
        """
        self._validate_params()
        if not params and self._passes_feature_groups():
            images = self._training_images(X)
            embedder = self.steps[0][1].fit(None)  # frozen: validates, loads weights
            features = self._embedded(images)(np.arange(len(images)))
            self._final_estimator.fit(features, feature_groups=embedder.feature_groups_)
            return self
        if params or not self._streams():
            if self.train_views == 1:
                # As Pipeline: X reaches the steps untouched (frozen embedders
                # alone, as in ``pipe[:-1].fit(None)``, ignore it).
                return super().fit(X, y, **params)
            return super().fit(self._training_images(X),
                               None if y is None else np.repeat(y, self.train_views),
                               **params)
        images = self._training_images(X)
        for _, step in self.steps[:-1]:
            step.fit(None)  # frozen embedders: fit validates and loads weights
        self._feed(images, first="fit")
        return self

    @available_if(_frozen_then_incremental)
    def partial_fit(self, X, y=None):
        """Add normal images to the fitted pipeline (the first call fits it).

        The frozen embedders embed ``X`` a chunk at a time, as in ``fit``,
        and the head's ``partial_fit`` takes each chunk: new patches join a
        memory bank by the same coreset rule, a Gaussian's sums continue, and
        the threshold is recalibrated on a held-out share of the new images.
        For PaDiM, ``fit(A)`` then ``partial_fit(B)`` gives the model of
        ``fit(A + B)``; for PatchCore, a bank whose coreset was chosen in
        two chunks (as ``fit`` does past ``coreset_chunk_size``).

        Parameters
        ----------
        X : list of images or ndarray of shape (n, H, W[, C])
            New normal images.
        y : ignored

        Returns
        -------
        self : StreamingPipeline

        Examples
        --------
        >>> import numpy as np
        >>> from skanomaly import make_patchcore
        >>> rng = np.random.default_rng(0)
        >>> pipe = make_patchcore(image_size=64, random_state=0).fit(rng.random((8, 64, 64, 3)))
        >>> before = len(pipe[-1].memory_bank_)
        >>> len(pipe.partial_fit(rng.random((4, 64, 64, 3)))[-1].memory_bank_) > before
        True
        """
        self._validate_params()
        images = self._training_images(X)
        head = self._final_estimator
        fitted = hasattr(head, "offset_")
        for _, step in self.steps[:-1]:
            if fitted:
                check_is_fitted(step)
            else:
                step.fit(None)
        self._feed(images, first="fit" if not fitted else "partial_fit")
        return self

    def _passes_feature_groups(self):
        """Whether ``fit`` gives the head its embedder's channel groups: a
        frozen PatchEmbedder, then a head whose ``fit`` takes them."""
        from .embedders import PatchEmbedder

        return (self.memory is None and len(self.steps) == 2
                and isinstance(self.steps[0][1], PatchEmbedder)
                and "feature_groups" in inspect.signature(self._final_estimator.fit).parameters)

    def _head_fit_params(self):
        """What the head's ``fit`` takes from the fitted embedder before it
        (``feature_groups``), as keyword arguments; empty for other heads."""
        if not self._passes_feature_groups():
            return {}
        return {"feature_groups": self.steps[0][1].feature_groups_}

    def _embedded(self, images):
        """``features_of(chunk)``: the float32 features of ``images[chunk]``
        (a run of indices), embedded in ``batch_size`` tasks."""
        transformers = self.steps[:-1]

        def embedded(chunk):
            part = images[chunk[0]:chunk[-1] + 1]
            batches = [part[i:i + self.batch_size] for i in range(0, len(part), self.batch_size)]
            features = np.concatenate(Parallel(n_jobs=self.n_jobs)(
                delayed(_transform)(transformers, b) for b in batches))
            return features.astype(np.float32, copy=False)

        return embedded

    def _feed(self, images, first):
        """Embed ``images`` a chunk at a time into the head (``_into_head``)."""
        transformers = self.steps[:-1]
        most = self._images_per_chunk(lambda: np.shape(_transform(transformers, images[:1])))
        self._into_head(len(images), most, self._embedded(images), first)

    def _into_head(self, n_images, most, features_of, first):
        """The streamed fit's one loop: the features of each chunk of
        ``range(n_images)`` (``features_of(chunk)``) into the head, its
        ``first`` method (``fit`` or ``partial_fit``) on the first chunk and
        ``partial_fit`` on the rest.

        One chunk is the head's own ``fit`` (a cross-fitted calibration
        where the head has one). A streamed ``fit`` of several chunks holds
        out as many images in all as ``partial_fit`` would hold out of the
        whole set (the ``calibration_size`` rule, with its cap), spread over
        the chunks in proportion; their features are kept until the last
        chunk has joined the model, which then scores them: the threshold
        comes from the finished model, as for one ``fit``.
        ``partial_fit`` keeps the head's per-call rule.
        """
        # detectors import this module
        from .detectors._base import _BaseDetector

        head = self._final_estimator
        chunks = _even_chunks(n_images, most)
        held_out = [None] * len(chunks)
        if (first == "fit" and isinstance(head, _BaseDetector) and len(chunks) > 1
                and len(chunks[0]) > 1):
            head._validate_params()
            held_out = _spread(head._n_held_out(n_images), [len(c) for c in chunks])
        for i, (chunk, n_held_out) in enumerate(zip(chunks, held_out)):
            features = features_of(chunk)
            if n_held_out is None:
                getattr(head, first if i == 0 else "partial_fit")(features)
            elif i == 0:
                head._fit(features, n_held_out)
            else:
                head._partial_fit(features, n_held_out)
            # Freed before the next chunk is embedded: one chunk held at a time.
            del features
        if held_out[0] is not None:
            # The held-out images of every chunk, scored by the finished model.
            head._finish_fit()

    def _images_per_chunk(self, embedded_shape):
        """Most images per streamed chunk: as many as a memory bank's
        ``coreset_chunk_size`` patches hold, else as many as scikit-learn's
        ``working_memory`` (``sklearn.set_config``, 1024 MB by default)
        holds of their features (``embedded_shape()`` is the shape of
        embedded images), so that MVTec-sized training sets are one chunk,
        fitted (and cross-fitted) by the head's own ``fit``."""
        params = self._final_estimator.get_params()
        if "coreset_chunk_size" in params and params["coreset_chunk_size"] is None:
            return None
        grid = embedded_shape()
        if "coreset_chunk_size" in params:
            patches = int(np.prod(grid[1:-1])) if len(grid) == 4 else 1
            return _coreset_chunk_images(params["coreset_chunk_size"], patches)
        return get_chunk_n_rows(row_bytes=4 * int(np.prod(grid[1:])))

    def _fit_head_streamed(self, features):
        """Fit the head on embedded training ``features`` chunk by chunk, as
        ``fit`` streams them (used to evaluate on cached features)."""
        most = self._images_per_chunk(lambda: features.shape)
        self._into_head(len(features), most, lambda chunk: features[chunk[0]:chunk[-1] + 1], "fit")

    def _batched(self, method, X):
        images = check_images(X)
        batches = [images[i:i + self.batch_size] for i in range(0, len(images), self.batch_size)]
        parts = Parallel(n_jobs=self.n_jobs)(delayed(_call)(self, method, b) for b in batches)
        return np.concatenate(parts)

    def score_samples(self, X):
        """Normality score of each image (higher = more normal), in batches.

        Parameters
        ----------
        X : list of images or ndarray of shape (n, H, W[, C])

        Returns
        -------
        scores : ndarray of shape (n,)
        """
        return self._batched("score_samples", X)

    def decision_function(self, X):
        """``score_samples(X) - offset_`` of the head, in batches.

        Parameters
        ----------
        X : list of images or ndarray of shape (n, H, W[, C])

        Returns
        -------
        decision : ndarray of shape (n,)
        """
        return self._batched("decision_function", X)

    def predict(self, X):
        """+1 for normal images, -1 for anomalies, in batches.

        Parameters
        ----------
        X : list of images or ndarray of shape (n, H, W[, C])

        Returns
        -------
        labels : ndarray of shape (n,)
        """
        return self._batched("predict", X)
