"""Factories returning ready pipelines with each method's published defaults."""

from sklearn.pipeline import make_pipeline

from .detectors import KNNDetector
from .embedders import PatchEmbedder

__all__ = ["make_patchcore"]


def make_patchcore(
    backbone="efficientnet_lite0",
    *,
    coreset_ratio=0.1,
    n_neighbors=9,
    image_size=256,
    contamination=0.05,
    device="cpu",
    batch_size=16,
    n_jobs=None,
    random_state=None,
    verbose=0,
):
    """PatchCore (Roth et al., 2022) as a two-step scikit-learn Pipeline.

    ``make_pipeline(PatchEmbedder(...), KNNDetector(...))``: locally aware
    patch features from a frozen backbone at strides 8 and 16, a greedy
    k-center memory bank of ``coreset_ratio`` of them, nearest-neighbour patch
    distances and the paper's re-weighted image score. The step names are
    ``"patchembedder"`` and ``"knndetector"``, so grid searches address
    ``"knndetector__coreset_ratio"``.

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
        Registered backbone; its weights load offline.
    coreset_ratio : float in (0, 1], default=0.1
        Share of training patches kept in the memory bank.
    n_neighbors : int, default=9
        Neighbourhood of the image-score re-weighting.
    image_size : int or (int, int), default=256
        Input resolution of the backbone.
    contamination : float in (0, 0.5], default=0.05
        Target false-alarm rate of ``predict`` on new normal images.
    device : str, default="cpu"
        Torch device of the backbone.
    batch_size : int, default=16
        Images per forward pass.
    n_jobs : int or None, default=None
        Torch CPU threads.
    random_state : int, RandomState instance or None, default=None
        Seeds the calibration split and the coreset.
    verbose : int, default=0
        Progress bars when > 0.

    Returns
    -------
    pipeline : sklearn.pipeline.Pipeline

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import make_patchcore
    >>> rng = np.random.default_rng(0)
    >>> pipe = make_patchcore(image_size=64, random_state=0).fit(rng.random((8, 64, 64, 3)))
    >>> pipe.score_samples(rng.random((3, 64, 64, 3))).shape
    (3,)
    """
    return make_pipeline(
        PatchEmbedder(
            backbone, image_size=image_size, device=device, batch_size=batch_size,
            n_jobs=n_jobs, verbose=verbose,
        ),
        KNNDetector(
            coreset_ratio=coreset_ratio, n_neighbors=n_neighbors,
            contamination=contamination, random_state=random_state,
        ),
    )
