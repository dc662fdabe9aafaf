"""A Pipeline that streams images: bounded memory at any training-set size,
and batch work that joblib (and so dask) can spread over workers."""

import numbers

import numpy as np
from joblib import Parallel, delayed
from sklearn.pipeline import Pipeline
from sklearn.utils._param_validation import Interval

from .images import check_images

__all__ = ["StreamingPipeline"]


def _transform(transformers, images):
    for _, step in transformers:
        images = step.transform(images)
    return images


def _call(pipeline, method, images):
    return getattr(Pipeline, method)(pipeline, images)


class _LazyFeatures:
    """Features of images, computed only for the rows asked for.

    ``features[idx]`` runs the frozen transformers on ``images[idx]``, in
    batches dispatched through joblib. Heads that read their training data
    chunk by chunk (``KNNDetector``) then never hold all of it.
    """

    ndim = 4
    dtype = np.dtype(np.float32)

    def __init__(self, transformers, images, batch_size):
        self._transformers = transformers
        self._images = images
        self._batch_size = batch_size
        first = _transform(transformers, images[:1])
        self.is_grid = getattr(first, "ndim", None) == 4
        self.shape = (len(images),) + np.shape(first)[1:]

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, idx):
        idx = np.atleast_1d(np.arange(self.shape[0])[idx])
        batches = [idx[i:i + self._batch_size] for i in range(0, len(idx), self._batch_size)]
        parts = Parallel()(
            delayed(_transform)(self._transformers, [self._images[i] for i in batch])
            for batch in batches
        )
        return np.concatenate(parts).astype(np.float32, copy=False)


class StreamingPipeline(Pipeline):
    """A scikit-learn Pipeline that streams images through its steps.

    The factories (:func:`~skanomaly.make_patchcore` and the others) return
    this class; it is a :class:`~sklearn.pipeline.Pipeline` in every respect
    (steps, parameters, ``GridSearchCV``, joblib), with two differences:

    - **fit** streams when every transformer is a frozen skanomaly embedder
      (whose ``fit`` learns nothing from images) that outputs patch grids,
      and the head can read its training data chunk by chunk
      (:class:`~skanomaly.KNNDetector` in PatchCore mode,
      :class:`~skanomaly.GaussianDetector` on grids, i.e. PaDiM): images are embedded a chunk at a time as the head
      asks for them, so the raw features of the whole training set never
      sit in memory together. The model is the plain pipeline's (up to the
      float rounding of convolutions, which varies with the batch
      composition). Otherwise ``fit`` is ``Pipeline.fit``.
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
    }

    def __init__(self, steps, *, batch_size=64, n_jobs=None, memory=None,
                 transform_input=None, verbose=False):
        super().__init__(steps, memory=memory, transform_input=transform_input, verbose=verbose)
        self.batch_size = batch_size
        self.n_jobs = n_jobs

    def _streams(self):
        from .embedders import _BaseEmbedder

        head = self._final_estimator
        return (
            self.memory is None
            and len(self.steps) >= 2
            and all(isinstance(step, _BaseEmbedder) for _, step in self.steps[:-1])
            and getattr(head, "_reads_in_chunks", lambda: False)()
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
        if params or not self._streams():
            return super().fit(X, y, **params)
        self._validate_params()
        images = check_images(X)
        for _, step in self.steps[:-1]:
            step.fit(None)  # frozen embedders: fit validates and loads weights
        features = _LazyFeatures(self.steps[:-1], images, self.batch_size)
        if not features.is_grid:  # vectors per image are small: plain fit
            return super().fit(X, y)
        self._final_estimator._fit_lazy(features)
        return self

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
