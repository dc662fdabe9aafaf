"""Factories returning ready pipelines with each method's published defaults."""

from sklearn.pipeline import make_pipeline

from .detectors import GaussianDetector, KDEDetector, KNNDetector
from .embedders import ImageEmbedder, PatchEmbedder

__all__ = [
    "make_dfkde",
    "make_dfm",
    "make_padim",
    "make_patchcore",
    "make_softpatch",
    "make_spade",
]

# EfficientNet-Lite0 stages at strides 4, 8 and 16: PaDiM's three taps.
_PADIM_LAYERS = {
    "efficientnet_lite0": ("blocks.1", "blocks.2", "blocks.4"),
    "mobilenet_v2": ("features.3", "features.6", "features.13"),
}


# Covariance regularisation added to each position's covariance. The
# paper's 0.01 I suits ResNet features; EfficientNet-Lite0's linear-bottleneck
# features are larger in scale, and with 0.01 near-singular covariances make
# the maps noise (tire pixel AUROC 0.53; bottle 0.980). Measured with
# EfficientNet-Lite0 at 256 px (image / pixel AUROC):
#   bottle: 0.01 -> 0.995 / 0.980, 1 -> 0.999 / 0.985, 10 -> 0.999 / 0.986
#   tire:   0.01 -> 0.803 / 0.529, 1 -> 0.831 / 0.923, 10 -> 0.818 / 0.968
_PADIM_REGULARIZATION = {"efficientnet_lite0": 10.0}


def _common(device, batch_size, n_jobs, verbose):
    return {"device": device, "batch_size": batch_size, "n_jobs": n_jobs, "verbose": verbose}


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
        PatchEmbedder(backbone, image_size=image_size, **_common(device, batch_size, n_jobs, verbose)),
        KNNDetector(
            coreset_ratio=coreset_ratio, n_neighbors=n_neighbors,
            contamination=contamination, random_state=random_state,
        ),
    )


def make_padim(
    backbone="efficientnet_lite0",
    *,
    n_features=100,
    image_size=256,
    regularization=None,
    contamination=0.05,
    device="cpu",
    batch_size=16,
    n_jobs=None,
    random_state=None,
    verbose=0,
):
    """PaDiM (Defard et al., 2021): one Gaussian per patch position.

    ``PatchEmbedder`` taps three stages (strides 4, 8 and 16), without local
    averaging, keeps a random subset of ``n_features`` channels (the paper's
    Rd), and ``GaussianDetector`` fits a Gaussian per grid position with
    covariance ``S + regularization * I``; patch scores are Mahalanobis
    distances.

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
        Registered backbone (resnets tap layer1-3).
    n_features : int, default=100
        Random channel subset size.
    image_size : int or (int, int), default=256
    regularization : float or None, default=None
        Added to each covariance's diagonal. None: the paper's 0.01 for
        ResNets, 10 for EfficientNet-Lite0, whose features are larger in
        scale (with 0.01 its tire maps are noise: pixel AUROC 0.53 vs 0.97).
    contamination : float in (0, 0.5], default=0.05
    device, batch_size, n_jobs, verbose
        As in :class:`~skanomaly.PatchEmbedder`.
    random_state : int, RandomState instance or None, default=None
        Seeds the channel subset and the calibration split.

    Returns
    -------
    pipeline : Pipeline
        Steps ``"patchembedder"`` and ``"gaussiandetector"``.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import make_padim
    >>> rng = np.random.default_rng(0)
    >>> pipe = make_padim(image_size=64, random_state=0).fit(rng.random((8, 64, 64, 3)))
    >>> pipe[-1].precision_.shape
    (16, 16, 100, 100)
    """
    layers = _PADIM_LAYERS.get(backbone, ("layer1", "layer2", "layer3"))
    if regularization is None:
        regularization = _PADIM_REGULARIZATION.get(backbone, 0.01)
    return make_pipeline(
        PatchEmbedder(
            backbone, layers=layers, image_size=image_size, n_features=n_features,
            reduction="random", aggregation_size=1, random_state=random_state,
            **_common(device, batch_size, n_jobs, verbose),
        ),
        GaussianDetector(
            regularization=regularization, contamination=contamination,
            random_state=random_state,
        ),
    )


def make_spade(
    backbone="efficientnet_lite0",
    *,
    n_neighbors=50,
    image_size=256,
    contamination=0.05,
    device="cpu",
    batch_size=16,
    n_jobs=None,
    random_state=None,
    verbose=0,
):
    """SPADE (Cohen & Hoshen, 2020): kNN over images, then over their patches.

    The image score is the mean distance of the image's pooled patch feature
    to its ``n_neighbors`` nearest training images; each patch is scored by
    its distance to the nearest patch of those images.

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
    n_neighbors : int, default=50
        Nearest training images (the paper's K).
    image_size : int or (int, int), default=256
    contamination : float in (0, 0.5], default=0.05
    device, batch_size, n_jobs, verbose
        As in :class:`~skanomaly.PatchEmbedder`.
    random_state : int, RandomState instance or None, default=None
        Seeds the calibration split.

    Returns
    -------
    pipeline : Pipeline
        Steps ``"patchembedder"`` and ``"knndetector"`` (``mode="spade"``).

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import make_spade
    >>> rng = np.random.default_rng(0)
    >>> pipe = make_spade(image_size=64, random_state=0).fit(rng.random((8, 64, 64, 3)))
    >>> pipe.score_samples(rng.random((2, 64, 64, 3))).shape
    (2,)
    """
    return make_pipeline(
        PatchEmbedder(backbone, image_size=image_size, **_common(device, batch_size, n_jobs, verbose)),
        KNNDetector(
            coreset_ratio=1.0, n_neighbors=n_neighbors, mode="spade",
            contamination=contamination, random_state=random_state,
        ),
    )


def make_softpatch(
    backbone="efficientnet_lite0",
    *,
    train_patch_outlier_quantile=0.01,
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
    """SoftPatch (Jiang et al., 2022): PatchCore for training sets with bad images.

    As :func:`make_patchcore`, but before the coreset the most outlying
    training patches (compared with the same grid position in the other
    training images) are dropped, so defects slipped into the training set
    do not enter the memory bank.

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
    train_patch_outlier_quantile : float in [0, 1), default=0.01
        Share of training patches dropped. On bottle with 10% defective
        training images, 0.01 drops 99% of the defect patches.
    coreset_ratio : float in (0, 1], default=0.1
    n_neighbors : int, default=9
    image_size : int or (int, int), default=256
    contamination : float in (0, 0.5], default=0.05
    device, batch_size, n_jobs, verbose
        As in :class:`~skanomaly.PatchEmbedder`.
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    pipeline : Pipeline
        Steps ``"patchembedder"`` and ``"knndetector"``.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import make_softpatch
    >>> rng = np.random.default_rng(0)
    >>> pipe = make_softpatch(image_size=64, random_state=0).fit(rng.random((8, 64, 64, 3)))
    >>> pipe[-1].n_filtered_patches_ > 0
    True
    """
    return make_pipeline(
        PatchEmbedder(backbone, image_size=image_size, **_common(device, batch_size, n_jobs, verbose)),
        KNNDetector(
            coreset_ratio=coreset_ratio, n_neighbors=n_neighbors,
            train_patch_outlier_quantile=train_patch_outlier_quantile,
            contamination=contamination, random_state=random_state,
        ),
    )


def make_dfm(
    backbone="efficientnet_lite0",
    *,
    n_components=0.97,
    score_type="nll",
    image_size=256,
    contamination=0.05,
    device="cpu",
    batch_size=16,
    n_jobs=None,
    random_state=None,
    verbose=0,
):
    """DFM (Ahuja et al., 2019): a Gaussian on PCA-reduced pooled image features.

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
    n_components : int or float in (0, 1), default=0.97
        PCA components, or the share of variance to keep.
    score_type : {"nll", "reconstruction", "mahalanobis"}, default="nll"
        Gaussian negative log-likelihood, or the PCA feature-reconstruction
        error.
    image_size : int or (int, int), default=256
    contamination : float in (0, 0.5], default=0.05
    device, batch_size, n_jobs, verbose
        As in :class:`~skanomaly.ImageEmbedder`.
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    pipeline : Pipeline
        Steps ``"imageembedder"`` and ``"gaussiandetector"``.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import make_dfm
    >>> rng = np.random.default_rng(0)
    >>> pipe = make_dfm(image_size=64, random_state=0).fit(rng.random((12, 64, 64, 3)))
    >>> pipe.predict(rng.random((2, 64, 64, 3))).shape
    (2,)
    """
    return make_pipeline(
        ImageEmbedder(backbone, image_size=image_size, **_common(device, batch_size, n_jobs, verbose)),
        GaussianDetector(
            n_components=n_components, score_type=score_type,
            contamination=contamination, random_state=random_state,
        ),
    )


def make_dfkde(
    backbone="efficientnet_lite0",
    *,
    n_components=16,
    bandwidth="scott",
    image_size=256,
    contamination=0.05,
    device="cpu",
    batch_size=16,
    n_jobs=None,
    random_state=None,
    verbose=0,
):
    """DFKDE (anomalib's deep-feature KDE): PCA to 16 components, scaled, Gaussian KDE.

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
    n_components : int, default=16
    bandwidth : float or {"scott", "silverman"}, default="scott"
    image_size : int or (int, int), default=256
    contamination : float in (0, 0.5], default=0.05
    device, batch_size, n_jobs, verbose
        As in :class:`~skanomaly.ImageEmbedder`.
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    pipeline : Pipeline
        Steps ``"imageembedder"`` and ``"kdedetector"``.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import make_dfkde
    >>> rng = np.random.default_rng(0)
    >>> pipe = make_dfkde(image_size=64, random_state=0).fit(rng.random((12, 64, 64, 3)))
    >>> pipe.score_samples(rng.random((2, 64, 64, 3))).dtype
    dtype('float64')
    """
    return make_pipeline(
        ImageEmbedder(backbone, image_size=image_size, **_common(device, batch_size, n_jobs, verbose)),
        KDEDetector(
            n_components=n_components, bandwidth=bandwidth,
            contamination=contamination, random_state=random_state,
        ),
    )
