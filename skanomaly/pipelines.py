"""Factories returning ready pipelines with each method's published defaults."""

from .detectors import (
    DistillationDetector,
    DRAEMDetector,
    DSRDetector,
    EfficientADDetector,
    FlowDetector,
    GANomalyDetector,
    GaussianDetector,
    KDEDetector,
    KNNDetector,
    SimpleNetDetector,
    StateSpaceDetector,
)
from .embedders import ImageEmbedder, PatchEmbedder
from .preprocessing import ImagePreprocessor
from .registry import _REGISTRY, _register
from .streaming import StreamingPipeline

# PaDiM's taps: the stages at strides 4, 8 and 16 (ResNet layer1-3), on any backbone.
_PADIM_STRIDES = (4, 8, 16)


def _pipeline(*steps):
    """``make_pipeline`` naming (lower-case class names), as a StreamingPipeline."""
    return StreamingPipeline([(type(step).__name__.lower(), step) for step in steps])


def _common(device, batch_size, n_jobs, verbose):
    return {"device": device, "batch_size": batch_size, "n_jobs": n_jobs, "verbose": verbose}


@_register(
    'patchcore',
    family='memory bank',
    maps=True,
    trained=False,
    reference='Roth et al., 2022',
    pipeline='`PatchEmbedder` + `KNNDetector` (coreset 10%)',
    good_for='the default: best image and pixel accuracy',
)
def make_patchcore(
    backbone="efficientnet_lite0",
    *,
    coreset_ratio=0.1,
    n_neighbors=9,
    image_size=256,
    algorithm="auto",
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
    ``"knndetector__coreset_ratio"``. The pipeline is a
    :class:`~skanomaly.streaming.StreamingPipeline`: ``fit`` embeds the
    training images a chunk at a time as the coreset needs them, so memory
    stays bounded however many images there are.

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
    algorithm : {"auto", "exact", "approximate"}, default="auto"
        Nearest-neighbour search of the memory bank (``"auto"``: exact up to
        40,000 bank rows, approximate beyond), see
        :class:`~skanomaly.KNNDetector`.
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
    pipeline : StreamingPipeline

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import make_patchcore
    >>> rng = np.random.default_rng(0)
    >>> pipe = make_patchcore(image_size=64, random_state=0).fit(rng.random((8, 64, 64, 3)))
    >>> pipe.score_samples(rng.random((3, 64, 64, 3))).shape
    (3,)
    """
    return _pipeline(
        PatchEmbedder(backbone, image_size=image_size, **_common(device, batch_size, n_jobs, verbose)),
        KNNDetector(
            coreset_ratio=coreset_ratio, n_neighbors=n_neighbors, algorithm=algorithm,
            contamination=contamination, random_state=random_state,
        ),
    )



@_register(
    "anomalydino",
    family="memory bank",
    maps=True,
    trained=False,
    reference="Damm et al., 2025",
    pipeline='`PatchEmbedder` + `KNNDetector(metric="cosine", top_fraction=0.01)`',
    good_for="few normal images (1-8, with `dihedral_copies`); any backbone, e.g. your DINOv2",
)
def make_anomalydino(
    backbone="efficientnet_lite0",
    *,
    coreset_ratio=1.0,
    top_fraction=0.01,
    image_size=256,
    algorithm="auto",
    train_views=1,
    contamination=0.05,
    device="cpu",
    batch_size=16,
    n_jobs=None,
    random_state=None,
    verbose=0,
):
    """AnomalyDINO (Damm et al., 2025): cosine patch kNN, mean of the top 1%.

    ``make_pipeline(PatchEmbedder(...), KNNDetector(metric="cosine",
    top_fraction=0.01))``: each patch scores its cosine distance to the
    nearest normal patch, and an image the mean of its highest 1% of patch
    scores (steadier than the maximum when one patch is off). The paper runs
    on DINOv2 patch tokens; here any registered backbone or your own weights
    (``"timm/vit_small_patch14_dinov2"`` with a local file, see
    :mod:`skanomaly.backbones`); the default is the offline EfficientNet-Lite0
    with PatchCore's locally aware features. For a few normal images, set
    ``train_views=4``: the bank then holds each image in its four right-angle
    rotations (the paper's rotated few-shot references; the same as fitting
    on :func:`~skanomaly.augment.dihedral_copies` of them).

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
    coreset_ratio : float in (0, 1], default=1.0
        Share of training patches kept in the memory bank: all, as the
        paper (a few-shot bank is small; past 40,000 patches the search is
        approximate, see ``algorithm``).
    top_fraction : float in (0, 1], default=0.01
        Share of an image's highest patch scores averaged into its score.
    image_size : int or (int, int), default=256
    algorithm : {"auto", "exact", "approximate"}, default="auto"
        Memory-bank search, see :class:`~skanomaly.KNNDetector`.
    train_views : int in [1, 8], default=1
        Views of each training image in the bank (see
        :class:`~skanomaly.streaming.StreamingPipeline`); 4 for few-shot.
    contamination : float in (0, 0.5], default=0.05
    device : str, default="cpu"
    batch_size : int, default=16
    n_jobs : int or None, default=None
    random_state : int, RandomState instance or None, default=None
    verbose : int, default=0

    Returns
    -------
    pipeline : StreamingPipeline
        Steps ``"patchembedder"`` and ``"knndetector"``.

    Examples
    --------
    Four normal images, each in its four right-angle rotations:

    >>> import numpy as np
    >>> from skanomaly import make_anomalydino
    >>> rng = np.random.default_rng(0)
    >>> few = rng.random((4, 64, 64, 3))
    >>> pipe = make_anomalydino(image_size=64, train_views=4, random_state=0).fit(few)
    >>> pipe[-1].memory_bank_.shape  # 16 views of 8 x 8 patches
    (1024, 152)
    """
    pipe = _pipeline(
        PatchEmbedder(backbone, image_size=image_size, **_common(device, batch_size, n_jobs, verbose)),
        KNNDetector(
            coreset_ratio=coreset_ratio, n_neighbors=1, metric="cosine",
            top_fraction=top_fraction, algorithm=algorithm, contamination=contamination,
            random_state=random_state,
        ),
    )
    return pipe.set_params(train_views=train_views)

@_register(
    'padim',
    family='Gaussian',
    maps=True,
    trained=False,
    reference='Defard et al., 2021',
    pipeline='3-stage `PatchEmbedder` (random 100 channels) + per-position `GaussianDetector`',
    good_for='aligned parts; fast scoring',
)
def make_padim(
    backbone="efficientnet_lite0",
    *,
    n_features=100,
    image_size=256,
    regularization=0.1,
    regularization_scale="global",
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
    covariance ``S + regularization * v * I``; patch scores are Mahalanobis
    distances. The threshold is set on held-out training images, which then
    join the statistics (``GaussianDetector(calibration_in_model=True)``).

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
        Any backbone; PaDiM taps its stages at strides 4, 8 and 16 (ResNet
        layer1-3).
    n_features : int, default=100
        Random channel subset size.
    image_size : int or (int, int), default=256
    regularization : float, default=0.1
        Added to each covariance's diagonal, in units of ``v`` (see
        ``regularization_scale``).
    regularization_scale : {"global", "position", "absolute"}, default="global"
        ``v``: the mean feature variance over all positions, so that the
        regularization means the same on any backbone's features;
        ``"absolute"`` is v = 1, the paper's ``0.01 I`` for ResNet-18 being
        ``regularization=0.01``. The default was chosen on the four-set
        panel by its mean and worst set (``benchmarks/bench_accuracy.py``;
        numbers in doc/benchmarks.md): absolute 0.01 leaves EfficientNet's
        covariances near-singular (tire pixel AUROC 0.53), 1.0 relative
        over-smooths unaligned parts (screw image AUROC 0.74).

    The image score is the largest patch score after a Gaussian blur of one
    grid cell (``image_score_sigma=1``: the 4 px of the anomaly maps' blur
    at stride 4), as anomalib's PaDiM takes the maximum of its blurred map:
    a defect must raise neighbouring patches, not one noisy patch.
    contamination : float in (0, 0.5], default=0.05
    device, batch_size, n_jobs, verbose
        As in :class:`~skanomaly.PatchEmbedder`.
    random_state : int, RandomState instance or None, default=None
        Seeds the channel subset and the calibration split.

    Returns
    -------
    pipeline : StreamingPipeline
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
    return _pipeline(
        PatchEmbedder(
            backbone, layers=_PADIM_STRIDES, image_size=image_size, n_features=n_features,
            reduction="random", aggregation_size=1, random_state=random_state,
            **_common(device, batch_size, n_jobs, verbose),
        ),
        GaussianDetector(
            regularization=regularization, regularization_scale=regularization_scale,
            image_score_sigma=1.0, contamination=contamination, random_state=random_state,
        ),
    )


@_register(
    'spade',
    family='memory bank',
    maps=True,
    trained=False,
    reference='Cohen & Hoshen, 2020',
    pipeline='`PatchEmbedder` + `KNNDetector(mode="spade")`',
    good_for='small training sets; no coreset',
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
    pipeline : StreamingPipeline
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
    return _pipeline(
        PatchEmbedder(backbone, image_size=image_size, **_common(device, batch_size, n_jobs, verbose)),
        KNNDetector(
            coreset_ratio=1.0, n_neighbors=n_neighbors, mode="spade",
            contamination=contamination, random_state=random_state,
        ),
    )


@_register(
    'softpatch',
    family='memory bank',
    maps=True,
    trained=False,
    reference='Jiang et al., 2022',
    pipeline='as PatchCore, plus bank filtering',
    good_for='training sets that may hold a few bad parts',
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
    pipeline : StreamingPipeline
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
    return _pipeline(
        PatchEmbedder(backbone, image_size=image_size, **_common(device, batch_size, n_jobs, verbose)),
        KNNDetector(
            coreset_ratio=coreset_ratio, n_neighbors=n_neighbors,
            train_patch_outlier_quantile=train_patch_outlier_quantile,
            contamination=contamination, random_state=random_state,
        ),
    )


# DFM's features, chosen on the four-set panel (benchmarks/bench_accuracy.py):
# strides 16 + 32 pooled on a 4 x 4 grid, reconstruction error, raised the mean
# image AUROC from 0.813 (stride 32, global pooling, likelihood) to 0.855.
_DFM_STRIDES = (16, 32)
_DFM_GRID = 4


@_register(
    'dfm',
    family='Gaussian',
    maps=True,
    trained=False,
    reference='Ahuja et al., 2019',
    pipeline="`ImageEmbedder(grid_size=4, keep_grid=True)` (strides 16 + 32 pooled on a 4 x 4 grid) + `GaussianDetector` PCA reconstruction error (97% variance), each cell's share of it as a 4 x 4 map",
    good_for='fast screening, coarse maps',
)
def make_dfm(
    backbone="efficientnet_lite0",
    *,
    n_components=0.97,
    score_type="reconstruction",
    layers=_DFM_STRIDES,
    grid_size=_DFM_GRID,
    image_size=256,
    contamination=0.05,
    device="cpu",
    batch_size=16,
    n_jobs=None,
    random_state=None,
    verbose=0,
):
    """DFM (Ahuja et al., 2019): a PCA subspace of pooled image features.

    The features of strides 16 and 32 are average-pooled over a 4 x 4 grid of
    image cells (so the vector keeps where each part of the image is, as
    anomalib pools its DFM features), PCA keeps ``n_components`` of their
    variance, and an image's score is how badly that subspace reconstructs
    its vector (or its Gaussian likelihood in the subspace). The embedder
    keeps the cells as a grid, so each cell's share of the reconstruction
    error is a patch score: ``anomaly_maps`` draws DFM's coarse 4 x 4 map.
    The threshold is set on held-out training images, which then join the
    PCA (``GaussianDetector(calibration_in_model=True)``), so the subspace
    is learnt from every normal image.

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
    n_components : int or float in (0, 1), default=0.97
        PCA components, or the share of variance to keep.
    score_type : {"reconstruction", "nll", "mahalanobis"}, default="reconstruction"
        The PCA feature-reconstruction error, or the Gaussian negative
        log-likelihood (or Mahalanobis distance) in the PCA subspace.
    layers : tuple of int or str, default=(16, 32)
        Backbone strides (or module names) pooled, see
        :class:`~skanomaly.ImageEmbedder`.
    grid_size : int, default=4
        Side of the pooling grid; 1 pools globally (the paper's vector).
    image_size : int or (int, int), default=256
    contamination : float in (0, 0.5], default=0.05
    device, batch_size, n_jobs, verbose
        As in :class:`~skanomaly.ImageEmbedder`.
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    pipeline : StreamingPipeline
        Steps ``"imageembedder"`` and ``"gaussiandetector"``.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import anomaly_maps, make_dfm
    >>> rng = np.random.default_rng(0)
    >>> pipe = make_dfm(image_size=64, random_state=0).fit(rng.random((12, 64, 64, 3)))
    >>> pipe.predict(rng.random((2, 64, 64, 3))).shape
    (2,)
    >>> anomaly_maps(pipe, rng.random((2, 64, 64, 3))).shape
    (2, 64, 64)
    """
    return _pipeline(
        ImageEmbedder(backbone, layers=layers, grid_size=grid_size, keep_grid=True,
                      image_size=image_size, **_common(device, batch_size, n_jobs, verbose)),
        GaussianDetector(
            n_components=n_components, score_type=score_type,
            contamination=contamination, random_state=random_state,
        ),
    )


@_register(
    'dfkde',
    family='kernel density',
    maps=False,
    trained=False,
    reference="anomalib's DFKDE",
    pipeline='`ImageEmbedder` + `KDEDetector` (16 PCA components)',
    good_for='image-level, tiny models',
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
    pipeline : StreamingPipeline
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
    return _pipeline(
        ImageEmbedder(backbone, image_size=image_size, **_common(device, batch_size, n_jobs, verbose)),
        KDEDetector(
            n_components=n_components, bandwidth=bandwidth,
            contamination=contamination, random_state=random_state,
        ),
    )


def _training(max_epochs, batch_size, learning_rate, device, random_state, verbose, contamination):
    params = {"device": device, "random_state": random_state, "verbose": verbose,
              "contamination": contamination}
    params.update({k: v for k, v in (("max_epochs", max_epochs), ("batch_size", batch_size),
                                      ("learning_rate", learning_rate)) if v is not None})
    return params


@_register(
    'fastflow',
    family='normalizing flow',
    maps=True,
    trained=True,
    reference='Yu et al., 2021',
    pipeline='`PatchEmbedder` + `FlowDetector(kernel_size=3, map_stage=0, map_score="latent")` (3x3 / 1x1 coupling convs)',
    good_for='trained density model; small model, fast scoring',
)
def make_fastflow(
    backbone="efficientnet_lite0",
    *,
    n_blocks=8,
    map_stage=0,
    image_size=256,
    max_epochs=None,
    batch_size=None,
    learning_rate=None,
    contamination=0.05,
    device="cpu",
    n_jobs=None,
    random_state=None,
    verbose=0,
):
    """FastFlow (Yu et al., 2021): a 2D normalizing flow on frozen patch features.

    ``make_pipeline(PatchEmbedder(...), FlowDetector(kernel_size=3,
    map_stage=0, map_score="latent"))``: the coupling nets convolve over the
    patch grid (3x3 and 1x1 alternately); an image's score is its largest
    patch negative log-likelihood under the flow; the anomaly map is drawn
    from the flow's latents and adds a second such flow's on the finest
    stage alone, as for :func:`make_cflow`.

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
    n_blocks : int, default=8
        Coupling blocks of the flow.
    map_stage : int or None, default=0
        The anomaly map (``score_patches``) adds a second flow's on this
        backbone stage alone (0: the finest tapped, stride 8), as FastFlow
        has one flow per stage: one minus the mean of the two flows' patch
        likelihoods per dimension, the joint flow's from its latent
        (``FlowDetector(map_score="latent")``, as anomalib's FastFlow), the
        stage's from its NLL. The image score stays the joint flow's NLL.
        None: the joint flow's map alone, which the coarse stage smears.
        Pixel AUROC bottle / tire / KolektorSDD, seed 0 (KolektorSDD seeds
        0, 1), the same fits: joint NLL alone 0.964 / 0.951 / 0.865; both
        NLLs averaged 0.987 / 0.979 / 0.866, 0.859; joint latent with stage
        NLL (the default) 0.987 / 0.967 / 0.879, 0.876
        (``benchmarks/bench_flow_maps.py --methods fastflow``; doc/benchmarks.md).
    image_size : int or (int, int), default=256
    max_epochs, batch_size, learning_rate : int, int, float or None
        Training settings of :class:`~skanomaly.detectors.FlowDetector`;
        None keeps its defaults.
    contamination : float in (0, 0.5], default=0.05
    device : str, default="cpu"
        Torch device of the backbone and the flow.
    n_jobs : int or None, default=None
        Torch CPU threads of the embedder.
    random_state : int, RandomState instance or None, default=None
        Seeds the splits and the training (deterministic on a CPU).
    verbose : int, default=0
        Progress bars (images, then epochs with the loss) when > 0.

    Returns
    -------
    pipeline : StreamingPipeline
        Steps ``"patchembedder"`` and ``"flowdetector"``.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import make_fastflow
    >>> rng = np.random.default_rng(0)
    >>> pipe = make_fastflow(image_size=64, max_epochs=2, random_state=0)
    >>> pipe.fit(rng.random((8, 64, 64, 3))).score_samples(rng.random((2, 64, 64, 3))).shape
    (2,)
    """
    return _pipeline(
        PatchEmbedder(backbone, image_size=image_size, n_jobs=n_jobs, device=device, verbose=verbose),
        FlowDetector(
            n_blocks=n_blocks, kernel_size=3, map_stage=map_stage, map_score="latent",
            **_training(max_epochs, batch_size, learning_rate, device, random_state, verbose,
                        contamination),
        ),
    )


@_register(
    'cflow',
    family='normalizing flow',
    maps=True,
    trained=True,
    reference='Gudovskiy et al., 2022',
    pipeline='`PatchEmbedder` + `FlowDetector(kernel_size=1, positional_encoding=128)`',
    good_for='per-patch flow conditioned on position',
)
def make_cflow(
    backbone="efficientnet_lite0",
    *,
    n_blocks=8,
    positional_encoding=128,
    hidden_ratio=3.0,
    image_score_sigma=1.0,
    map_stage=0,
    image_size=256,
    max_epochs=None,
    batch_size=1,
    learning_rate=None,
    contamination=0.05,
    device="cpu",
    n_jobs=None,
    random_state=None,
    verbose=0,
):
    """CFlow (Gudovskiy et al., 2022): a per-patch flow conditioned on position.

    ``make_pipeline(PatchEmbedder(), FlowDetector(kernel_size=1,
    positional_encoding=128, hidden_ratio=3, batch_size=1,
    image_score_sigma=1, map_stage=0))``: each patch feature is modelled on
    its own (1x1 coupling nets), conditioned on a sinusoidal encoding of its
    grid position; an image's score is the largest of a blurred map of the
    patches' negative log-likelihoods, and the anomaly map averages, as
    likelihoods per dimension, those of the flow and of a second such flow
    on the finest stage's features alone. The patches are PatchCore's
    3x3-averaged ones; CFlow's unpooled features scored no higher on tire and
    lower on the panel's mean and worst set (doc/benchmarks.md).

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
    n_blocks : int, default=8
        Coupling blocks of the flow.
    positional_encoding : int, default=128
        Channels of the positional condition (a multiple of 4).
    hidden_ratio : float, default=3.0
        Hidden channels of each coupling net, as a multiple of the feature
        dimension. CFlow's coupling nets are twice as wide as their input
        (half the features plus the condition: 2 x (76 + 128) = 408 for
        Lite0's 152 features, 2.7x); a flow as wide as the features
        underfits (panel figures in doc/benchmarks.md).
    image_score_sigma : float, default=1.0
        The image score is the largest patch NLL after a Gaussian blur of
        this many grid cells (stride 8). Chosen on the panel by the rule
        PaDiM's and the student-teacher heads' were (the best worst set
        among means within 0.003 of the best): image AUROC mean / worst set
        0.870 / 0.786 raw, 0.877 / 0.799 at one cell, 0.874 / 0.797 at two
        (seed 0, ``benchmarks/bench_score_sigma.py --methods cflow``). A
        defect raises neighbouring patches; one noisy patch's NLL does not
        carry the image.
    map_stage : int or None, default=0
        The anomaly map (``score_patches``, :func:`~skanomaly.anomaly_maps`)
        adds a second flow's, on this backbone stage alone (0: the finest
        tapped, stride 8), as CFlow has one flow per stage: one minus the
        mean of the two flows' patch likelihoods per dimension, as CFlow
        adds its per-stage likelihoods. The image score stays the joint
        flow's. None: the joint flow's map alone, which the coarse stage
        smears. Pixel AUROC bottle / tire / KolektorSDD (mean), seed 0,
        the same fits: joint alone 0.967 / 0.948 / 0.852 (0.923), stage 0
        alone 0.989 / 0.984 / 0.844 (0.939), the NLLs per dimension summed
        (the previous map) 0.969 / 0.977 / 0.858 (0.935), the likelihoods
        averaged 0.991 / 0.978 / 0.859 (0.943), chosen by the rule
        ``image_score_sigma`` was (the best worst set among means within
        0.003 of the best; ``benchmarks/bench_flow_maps.py --methods
        cflow``). About a fifth more fit time (tire: 113 s on 541).
    image_size : int or (int, int), default=256
    max_epochs, learning_rate : int, float or None
        Training settings of :class:`~skanomaly.detectors.FlowDetector`;
        None keeps its defaults.
    batch_size : int, default=1
        Images per optimiser step. Every patch is a sample of a per-patch
        flow, so one image already holds ~1,000 of them (CFlow trains on
        batches of 64 patches); more steps per epoch is what the flow
        needs to converge in its epochs.
    contamination : float in (0, 0.5], default=0.05
    device : str, default="cpu"
    n_jobs : int or None, default=None
    random_state : int, RandomState instance or None, default=None
    verbose : int, default=0

    Returns
    -------
    pipeline : StreamingPipeline
        Steps ``"patchembedder"`` and ``"flowdetector"``.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import make_cflow
    >>> rng = np.random.default_rng(0)
    >>> pipe = make_cflow(image_size=64, max_epochs=2, random_state=0)
    >>> pipe.fit(rng.random((8, 64, 64, 3)))[-1].module_params_["n_condition"]
    128
    """
    return _pipeline(
        PatchEmbedder(backbone, image_size=image_size, n_jobs=n_jobs, device=device, verbose=verbose),
        FlowDetector(
            n_blocks=n_blocks, kernel_size=1, positional_encoding=positional_encoding,
            hidden_ratio=hidden_ratio, image_score_sigma=image_score_sigma, map_stage=map_stage,
            **_training(max_epochs, batch_size, learning_rate, device, random_state, verbose,
                        contamination),
        ),
    )


@_register(
    'simplenet',
    family='discriminator',
    maps=True,
    trained=True,
    reference='Liu et al., 2023',
    pipeline='`PatchEmbedder` + `SimpleNetDetector`',
    good_for='discriminator against noisy features; small head',
)
def make_simplenet(
    backbone="efficientnet_lite0",
    *,
    noise_std=None,
    image_size=256,
    max_epochs=None,
    batch_size=None,
    learning_rate=None,
    contamination=0.05,
    device="cpu",
    n_jobs=None,
    random_state=None,
    verbose=0,
):
    """SimpleNet (Liu et al., 2023): adapter and discriminator on patch features.

    ``make_pipeline(PatchEmbedder(...), SimpleNetDetector(...))``: normal
    patch features, adapted by a linear layer, against the same plus
    Gaussian noise; a patch's score is minus the discriminator's output.

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
    noise_std : float or None, default=None
        Noise that makes the synthetic anomalies; None keeps the head's
        default.
    image_size : int or (int, int), default=256
    max_epochs, batch_size, learning_rate : int, int, float or None
        Training settings of :class:`~skanomaly.detectors.SimpleNetDetector`;
        None keeps its defaults.
    contamination : float in (0, 0.5], default=0.05
    device : str, default="cpu"
    n_jobs : int or None, default=None
    random_state : int, RandomState instance or None, default=None
    verbose : int, default=0

    Returns
    -------
    pipeline : StreamingPipeline
        Steps ``"patchembedder"`` and ``"simplenetdetector"``.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import make_simplenet
    >>> rng = np.random.default_rng(0)
    >>> pipe = make_simplenet(image_size=64, max_epochs=2, random_state=0)
    >>> pipe.fit(rng.random((8, 64, 64, 3))).predict(rng.random((2, 64, 64, 3))).shape
    (2,)
    """
    extra = {} if noise_std is None else {"noise_std": noise_std}
    return _pipeline(
        PatchEmbedder(backbone, image_size=image_size, n_jobs=n_jobs, device=device, verbose=verbose),
        SimpleNetDetector(
            **extra,
            **_training(max_epochs, batch_size, learning_rate, device, random_state, verbose,
                        contamination),
        ),
    )


@_register(
    'mambaad',
    family='reconstruction',
    maps=True,
    trained=True,
    reference='He et al., 2024 (MambaAD-style)',
    pipeline='`PatchEmbedder` + `StateSpaceDetector`',
    good_for='sequence model over the patch grid; each patch predicted from its surroundings',
)
def make_mambaad(
    backbone="efficientnet_lite0",
    *,
    image_size=256,
    max_epochs=None,
    batch_size=None,
    learning_rate=None,
    contamination=0.05,
    device="cpu",
    n_jobs=None,
    random_state=None,
    verbose=0,
):
    """MambaAD-style (He et al., 2024): state-space scans predict each patch.

    ``make_pipeline(PatchEmbedder(...), StateSpaceDetector(...))``: the
    frozen patch grid is scanned in four directions by diagonal state-space
    layers that predict each patch feature from the patches around it (never
    from itself); the prediction error is the patch score.

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
    image_size : int or (int, int), default=256
    max_epochs, batch_size, learning_rate : int, int, float or None
        Training settings of :class:`~skanomaly.detectors.StateSpaceDetector`;
        None keeps its defaults.
    contamination : float in (0, 0.5], default=0.05
    device : str, default="cpu"
    n_jobs : int or None, default=None
    random_state : int, RandomState instance or None, default=None
    verbose : int, default=0

    Returns
    -------
    pipeline : StreamingPipeline
        Steps ``"patchembedder"`` and ``"statespacedetector"``.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import make_mambaad
    >>> rng = np.random.default_rng(0)
    >>> pipe = make_mambaad(image_size=64, max_epochs=2, random_state=0)
    >>> pipe.fit(rng.random((8, 64, 64, 3))).predict(rng.random((2, 64, 64, 3))).shape
    (2,)
    """
    return _pipeline(
        PatchEmbedder(backbone, image_size=image_size, n_jobs=n_jobs, device=device, verbose=verbose),
        StateSpaceDetector(
            **_training(max_epochs, batch_size, learning_rate, device, random_state, verbose,
                        contamination),
        ),
    )


@_register(
    'ganomaly',
    family='reconstruction',
    maps=False,
    trained=True,
    reference='Akcay et al., 2018',
    pipeline='`ImagePreprocessor` (64 px) + `GANomalyDetector`',
    good_for='image-level; networks trained from scratch, no pretrained weights',
)
def make_ganomaly(
    backbone="efficientnet_lite0",
    *,
    image_size=64,
    max_epochs=None,
    batch_size=None,
    learning_rate=None,
    contamination=0.05,
    device="cpu",
    random_state=None,
    verbose=0,
):
    """GANomaly (Akcay et al., 2018): latent distance of an encoder-decoder-encoder.

    ``make_pipeline(ImagePreprocessor(image_size=64),
    GANomalyDetector(...))``: a generator trained adversarially on normal
    images rebuilds each image and encodes it twice; the distance of the two
    codes is the image score (no pixel maps).

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
        Only sets the input's normalisation (its weights' mean and standard
        deviation): the networks are trained from scratch.
    image_size : int, default=64
        Side of the square input, a power of two. The networks are trained
        from scratch, so they need no backbone's resolution; the paper's
        DCGAN works at 32-64 px, and on bottle 128 px trained 4x slower for
        no better score (0.58 after 40 epochs, seed 0, against 0.89 at 64 px
        after 15).
    max_epochs, batch_size, learning_rate : int, int, float or None
        Training settings of :class:`~skanomaly.detectors.GANomalyDetector`;
        None keeps its defaults.
    contamination : float in (0, 0.5], default=0.05
    device : str, default="cpu"
    random_state : int, RandomState instance or None, default=None
    verbose : int, default=0

    Returns
    -------
    pipeline : StreamingPipeline
        Steps ``"imagepreprocessor"`` and ``"ganomalydetector"``.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import make_ganomaly
    >>> rng = np.random.default_rng(0)
    >>> pipe = make_ganomaly(image_size=32, max_epochs=1, random_state=0)
    >>> pipe.fit(rng.random((8, 40, 40, 3))).score_samples(rng.random((2, 40, 40, 3))).shape
    (2,)
    """
    return _pipeline(
        ImagePreprocessor(backbone, image_size=image_size, verbose=verbose),
        GANomalyDetector(
            **_training(max_epochs, batch_size, learning_rate, device, random_state, verbose,
                        contamination),
        ),
    )


@_register(
    'efficientad',
    family='distillation',
    maps=True,
    trained=True,
    reference='Batzner et al., 2024',
    pipeline='`ImagePreprocessor` + `EfficientADDetector` (teacher distilled from the backbone)',
    good_for='local and logical defects (student-teacher plus autoencoder); a small, fast network',
)
def make_efficientad(
    backbone="efficientnet_lite0",
    *,
    image_size=256,
    max_epochs=None,
    batch_size=None,
    learning_rate=None,
    contamination=0.05,
    device="cpu",
    random_state=None,
    verbose=0,
):
    """EfficientAD (Batzner et al., 2024): student-teacher plus autoencoder on a PDN.

    ``make_pipeline(ImagePreprocessor(...), EfficientADDetector(...))``: a
    small patch description network is distilled from ``backbone``'s
    features, then a student and an autoencoder learn it on normal images;
    the map averages their quantile-normalised differences.

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
        Source of the teacher's features (used in ``fit`` only: the fitted
        pipeline runs the small networks alone).
    image_size : int or (int, int), default=256
    max_epochs, batch_size, learning_rate : int, int, float or None
        Training settings of :class:`~skanomaly.detectors.EfficientADDetector`;
        None keeps its defaults.
    contamination : float in (0, 0.5], default=0.05
    device : str, default="cpu"
    random_state : int, RandomState instance or None, default=None
    verbose : int, default=0

    Returns
    -------
    pipeline : StreamingPipeline
        Steps ``"imagepreprocessor"`` and ``"efficientaddetector"``.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import make_efficientad
    >>> rng = np.random.default_rng(0)
    >>> pipe = make_efficientad(image_size=64, max_epochs=1, random_state=0)
    >>> pipe.set_params(efficientaddetector__teacher_epochs=1)  # doctest: +ELLIPSIS
    StreamingPipeline(...)
    >>> pipe.fit(rng.random((8, 64, 64, 3))).score_samples(rng.random((2, 64, 64, 3))).shape
    (2,)
    """
    return _pipeline(
        ImagePreprocessor(backbone, image_size=image_size, verbose=verbose),
        EfficientADDetector(
            backbone,
            **_training(max_epochs, batch_size, learning_rate, device, random_state, verbose,
                        contamination),
        ),
    )


@_register(
    'draem',
    family='reconstruction',
    maps=True,
    trained=True,
    reference='Zavrtanik et al., 2021',
    pipeline='`ImagePreprocessor` + `DRAEMDetector` (painted anomalies, frozen backbone)',
    good_for='learns what a defect looks like from painted ones; sharp maps of surface defects',
)
def make_draem(
    backbone="efficientnet_lite0",
    *,
    image_size=256,
    max_epochs=None,
    batch_size=None,
    learning_rate=None,
    contamination=0.05,
    device="cpu",
    random_state=None,
    verbose=0,
):
    """DRAEM (Zavrtanik et al., 2021): rebuild and segment painted anomalies.

    ``make_pipeline(ImagePreprocessor(...), DRAEMDetector(...))``: anomalies
    are painted on the training images inside Perlin-noise masks; a
    reconstructive network learns to remove them from ``backbone``'s frozen
    features and a discriminative network to segment them; its output is
    the anomaly map.

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
        Frozen feature extractor the networks work on (part of the fitted model).
    image_size : int or (int, int), default=256
    max_epochs, batch_size, learning_rate : int, int, float or None
        Training settings of :class:`~skanomaly.detectors.DRAEMDetector`;
        None keeps its defaults.
    contamination : float in (0, 0.5], default=0.05
    device : str, default="cpu"
    random_state : int, RandomState instance or None, default=None
    verbose : int, default=0

    Returns
    -------
    pipeline : StreamingPipeline
        Steps ``"imagepreprocessor"`` and ``"draemdetector"``.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import make_draem
    >>> rng = np.random.default_rng(0)
    >>> pipe = make_draem(image_size=64, max_epochs=1, random_state=0)
    >>> pipe.fit(rng.random((8, 64, 64, 3))).score_samples(rng.random((2, 64, 64, 3))).shape
    (2,)
    """
    return _pipeline(
        ImagePreprocessor(backbone, image_size=image_size, verbose=verbose),
        DRAEMDetector(
            backbone,
            **_training(max_epochs, batch_size, learning_rate, device, random_state, verbose,
                        contamination),
        ),
    )


@_register(
    'dsr',
    family='reconstruction',
    maps=True,
    trained=True,
    reference='Zavrtanik et al., 2022',
    pipeline='`PatchEmbedder` + `DSRDetector` (quantised codes, anomalies made in code space)',
    good_for='near-in-distribution defects; no hand-made anomaly source',
)
def make_dsr(
    backbone="efficientnet_lite0",
    *,
    image_size=256,
    max_epochs=None,
    batch_size=None,
    learning_rate=None,
    contamination=0.05,
    device="cpu",
    n_jobs=None,
    random_state=None,
    verbose=0,
):
    """DSR (Zavrtanik et al., 2022): dual subspace re-projection on quantised patch features.

    ``make_pipeline(PatchEmbedder(...), DSRDetector(...))``: a quantised
    model of the frozen patch features is learned, anomalies are made by
    swapping codes inside Perlin masks, and a network learns to segment
    them from a general and an object-specific decoding.

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
    image_size : int or (int, int), default=256
    max_epochs, batch_size, learning_rate : int, int, float or None
        Training settings of :class:`~skanomaly.detectors.DSRDetector`;
        None keeps its defaults.
    contamination : float in (0, 0.5], default=0.05
    device : str, default="cpu"
    n_jobs : int or None, default=None
    random_state : int, RandomState instance or None, default=None
    verbose : int, default=0

    Returns
    -------
    pipeline : StreamingPipeline
        Steps ``"patchembedder"`` and ``"dsrdetector"``.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import make_dsr
    >>> rng = np.random.default_rng(0)
    >>> pipe = make_dsr(image_size=64, max_epochs=1, random_state=0)
    >>> pipe.set_params(dsrdetector__vq_epochs=1)  # doctest: +ELLIPSIS
    StreamingPipeline(...)
    >>> pipe.fit(rng.random((8, 64, 64, 3))).score_samples(rng.random((2, 64, 64, 3))).shape
    (2,)
    """
    return _pipeline(
        PatchEmbedder(backbone, image_size=image_size, n_jobs=n_jobs, device=device, verbose=verbose),
        DSRDetector(
            **_training(max_epochs, batch_size, learning_rate, device, random_state, verbose,
                        contamination),
        ),
    )


# Image score blur per student-teacher method, chosen on the panel by its mean
# and worst set (benchmarks/bench_score_sigma.py, seed 0): Reverse
# Distillation's mean image AUROC is level from no blur to 2 cells
# (0.807-0.811) and its worst set rises 0.599 -> 0.654 at 2 cells; STFPM is
# best without blur (mean 0.790, worst 0.600; 0.761 / 0.581 at 2 cells).
_DISTILLATION_SCORE_SIGMA = {"stfpm": 0.0, "reverse_distillation": 2.0}


def _make_distillation(method, backbone, image_size, max_epochs, batch_size, learning_rate,
                       contamination, device, random_state, verbose):
    return _pipeline(
        ImagePreprocessor(backbone, image_size=image_size, verbose=verbose),
        DistillationDetector(
            backbone, method=method, image_score_sigma=_DISTILLATION_SCORE_SIGMA[method],
            **_training(max_epochs, batch_size, learning_rate, device, random_state, verbose,
                        contamination),
        ),
    )


@_register(
    'stfpm',
    family='distillation',
    maps=True,
    trained=True,
    reference='Wang et al., 2021',
    pipeline='`ImagePreprocessor` + `DistillationDetector(method="stfpm")`',
    good_for='student-teacher; fine (stride-4) maps',
)
def make_stfpm(
    backbone="efficientnet_lite0",
    *,
    image_size=256,
    max_epochs=None,
    batch_size=None,
    learning_rate=None,
    contamination=0.05,
    device="cpu",
    random_state=None,
    verbose=0,
):
    """STFPM (Wang et al., 2021): a student network mimics the frozen teacher.

    ``make_pipeline(ImagePreprocessor(...), DistillationDetector(method="stfpm"))``.
    The head trains a randomly initialised copy of the backbone on the
    images themselves, which is why an image preprocessor, not a feature
    embedder, comes first (see :class:`~skanomaly.detectors.DistillationDetector`).

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
        Teacher, and the student's architecture.
    image_size : int or (int, int), default=256
    max_epochs, batch_size, learning_rate : int, int, float or None
        Training settings of the head; None keeps its defaults.
    contamination : float in (0, 0.5], default=0.05
    device : str, default="cpu"
    random_state : int, RandomState instance or None, default=None
    verbose : int, default=0

    Returns
    -------
    pipeline : StreamingPipeline
        Steps ``"imagepreprocessor"`` and ``"distillationdetector"``.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import anomaly_maps, make_stfpm
    >>> rng = np.random.default_rng(0)
    >>> pipe = make_stfpm(image_size=64, max_epochs=1, random_state=0)
    >>> anomaly_maps(pipe.fit(rng.random((8, 64, 64, 3))), rng.random((2, 48, 48, 3))).shape
    (2, 48, 48)
    """
    return _make_distillation("stfpm", backbone, image_size, max_epochs, batch_size,
                              learning_rate, contamination, device, random_state, verbose)


@_register(
    'reverse_distillation',
    family='distillation',
    maps=True,
    trained=True,
    reference='Deng & Li, 2022',
    pipeline='`ImagePreprocessor` + `DistillationDetector(method="reverse_distillation")`',
    good_for='decoder student through a bottleneck; fine maps',
)
def make_reverse_distillation(
    backbone="efficientnet_lite0",
    *,
    image_size=256,
    max_epochs=None,
    batch_size=None,
    learning_rate=None,
    contamination=0.05,
    device="cpu",
    random_state=None,
    verbose=0,
):
    """Reverse Distillation (Deng & Li, 2022): a decoder rebuilds the teacher.

    ``make_pipeline(ImagePreprocessor(...),
    DistillationDetector(method="reverse_distillation"))``: the teacher's
    stages are squeezed through a one-class bottleneck and a decoder
    rebuilds them; the map is the stages' ``1 - cos`` summed.

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
        Teacher encoder.
    image_size : int or (int, int), default=256
    max_epochs, batch_size, learning_rate : int, int, float or None
        Training settings of the head; None keeps its defaults.
    contamination : float in (0, 0.5], default=0.05
    device : str, default="cpu"
    random_state : int, RandomState instance or None, default=None
    verbose : int, default=0

    Returns
    -------
    pipeline : StreamingPipeline
        Steps ``"imagepreprocessor"`` and ``"distillationdetector"``.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import make_reverse_distillation
    >>> rng = np.random.default_rng(0)
    >>> pipe = make_reverse_distillation(image_size=64, max_epochs=1, random_state=0)
    >>> pipe.fit(rng.random((8, 64, 64, 3))).score_samples(rng.random((2, 64, 64, 3))).shape
    (2,)
    """
    return _make_distillation("reverse_distillation", backbone, image_size, max_epochs,
                              batch_size, learning_rate, contamination, device, random_state,
                              verbose)


# Every registered factory, in the registry's order.
__all__ = [info.factory.__name__ for info in _REGISTRY.values()]
