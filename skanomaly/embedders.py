"""Frozen-backbone feature transformers: images in, features out.

:class:`PatchEmbedder` turns each image into a grid of patch features
``(n, h, w, d)`` (PatchCore, PaDiM, SPADE pixel maps); :class:`ImageEmbedder`
into one pooled vector ``(n, d)`` (DFM, DFKDE, SPADE image scores). Both are
scikit-learn transformers: ``fit`` validates parameters and loads the weights,
``transform`` does the expensive work, in batches, under
``torch.inference_mode``.
"""

import numbers
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._torch import (
    _device_or_cpu,
    _progress,
    _resized_batches,
    _resolve_device,
    _torch_threads,
)
from .backbones import (
    _as_numpy_state,
    _build_architecture,
    _fold_batch_norms,
    _load_numpy_state,
    load_backbone,
)
from .images import check_images

__all__ = ["ImageEmbedder", "PatchEmbedder"]


def _image_shape(image_size):
    if isinstance(image_size, numbers.Integral):
        shape = (int(image_size), int(image_size))
    else:
        try:
            shape = tuple(int(s) for s in image_size)
        except TypeError:
            shape = ()
    if len(shape) != 2 or min(shape) < 16:
        raise ValueError(
            "image_size must be an int or an (height, width) pair, each >= 16; "
            f"got {image_size!r}."
        )
    return shape


class _BaseEmbedder(TransformerMixin, BaseEstimator):
    """Loading, batching, device and persistence shared by the embedders."""

    _parameter_constraints = {
        "backbone": [str],  # checked by load_backbone: registry or "timm/..."
        "layers": [list, tuple, None],
        "weights": "no_validation",
        "image_size": [Interval(numbers.Integral, 16, None, closed="left"), tuple, list],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "device": [str],
        "n_jobs": [numbers.Integral, None],
        "verbose": ["verbose"],
    }

    def fit(self, X=None, y=None):
        """Validate the parameters and load the backbone; no training happens.

        Parameters
        ----------
        X : ignored
            Accepted for Pipeline compatibility; images are not looked at.
        y : ignored

        Returns
        -------
        self : object
        """
        self._validate_params()
        image_shape = _image_shape(self.image_size)
        device = _resolve_device(self.device)
        backbone = load_backbone(self.backbone, self.weights)
        _fold_batch_norms(backbone)  # frozen: same features, a quarter less time
        layers = backbone.check_layers(
            self._default_layers(backbone) if self.layers is None else self.layers
        )
        n_features_out = self._n_features_out(backbone, layers)
        # Assign fitted state only once everything is valid.
        self.image_shape_ = image_shape
        self.backbone_ = backbone
        self.backbone_.model.to(device)
        self._device_ = device
        self.layers_ = layers
        self.n_features_out_ = n_features_out
        return self

    def _default_layers(self, backbone):
        return backbone.default_layers

    def _images_per_batch(self):
        # Tiling bounds memory by the batch of tiles: one large image at a time.
        return self.batch_size if getattr(self, "tile_size", None) is None else 1

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.requires_fit = True
        tags.non_deterministic = False
        return tags

    # Persistence: keep a CPU copy of the weights, never a device tensor or the
    # hooks of a live module, so a model fitted on a GPU loads on a CPU.
    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: never strip the live object
        backbone = state.pop("backbone_", None)
        state.pop("_device_", None)
        if backbone is not None and not isinstance(self.weights, Mapping):
            # The folded network's own state: it loads into an architecture
            # folded the same way (older files hold unfolded states).
            state["_backbone_state"] = _as_numpy_state(backbone.model)
            state["_backbone_folded"] = True
        elif backbone is not None:
            state["_backbone_in_weights"] = True  # the state dict is stored once, as a parameter
        return state

    def __setstate__(self, state):
        weights = state.pop("_backbone_state", None)
        folded = state.pop("_backbone_folded", False)
        if state.pop("_backbone_in_weights", False):
            weights = state["weights"]
        super().__setstate__(state)
        if weights is not None:
            backbone = _build_architecture(self.backbone)
            if folded:
                _fold_batch_norms(backbone)
                _load_numpy_state(backbone, weights)
            else:  # the weights as trained (a mapping), or an older file
                _load_numpy_state(backbone, weights)
                _fold_batch_norms(backbone)
            self.backbone_ = backbone
            self._device_ = _device_or_cpu(self.device)
            self.backbone_.model.to(self._device_)

    def transform(self, X):
        """Embed images.

        Parameters
        ----------
        X : list of images or ndarray of shape (n, H, W[, C])
            Paths, PIL images or arrays (see :mod:`skanomaly.images`); sizes
            may differ, each image is resized to ``image_size``.

        Returns
        -------
        features : ndarray of dtype float32
            See the class docstring for the shape.
        """
        check_is_fitted(self, "backbone_")
        images = check_images(X)
        out = None
        with _torch_threads(self.n_jobs), torch.inference_mode(), _progress(
            len(images), self.verbose, type(self).__name__
        ) as advance:
            for start, batch in _resized_batches(images, self._images_per_batch(), self.image_shape_):
                batch = batch.to(self._device_)
                feats = self._embed(self.backbone_.normalize(batch))
                feats = feats.float().cpu().numpy()
                if out is None:
                    out = np.empty((len(images),) + feats.shape[1:], dtype=np.float32)
                out[start:start + len(feats)] = feats
                advance(len(feats))
        return out


class PatchEmbedder(_BaseEmbedder):
    """Grid of locally aggregated patch features from a frozen backbone.

    The features of PatchCore (Roth et al., 2022): two intermediate stages
    (strides 8 and 16 by default) are averaged over 3x3 neighbourhoods, the
    coarser one is upsampled to the finer grid, and they are concatenated, so
    each grid cell describes an image patch with some context.

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
        Registered backbone name (:func:`skanomaly.backbones.list_backbones`),
        or any timm / torchvision model as ``"timm/<name>"`` /
        ``"torchvision/<name>"`` (see :mod:`skanomaly.backbones`).
    layers : tuple of str or int, or None, default=None
        Module names to tap, or strides (``(4, 8, 16)``: the last module at
        each); None takes the backbone's default (strides 8 and 16;
        ``("blocks.2", "blocks.4")`` for EfficientNet-Lite0).
    weights : "default", path, mapping or None, default="default"
        Where the weights come from, see :func:`skanomaly.backbones.load_backbone`.
    image_size : int or (int, int), default=256
        Every image is resized to this (height, width) before the backbone.
    n_features : int or None, default=None
        If set, reduce the concatenated channels to this many, as
        ``reduction`` says.
    reduction : {"mean", "random"}, default="mean"
        ``"mean"``: average groups of neighbouring channels (PatchCore's
        adaptive pooling). ``"random"``: keep a random subset of the channels,
        drawn once in ``fit`` (PaDiM's "Rd").
    random_state : int, RandomState instance or None, default=None
        Draws the channel subset when ``reduction="random"``.
    aggregation_size : int, default=3
        Side of the local average window; 1 disables aggregation.
    count_include_pad : bool, default=True
        Whether the window average counts the zero padding beyond the
        feature map's border (as PatchCore and anomalib pool), so border
        patches are damped towards zero; False averages the real neighbours
        only. Chosen on the four-set panel (``benchmarks/bench_accuracy.py``):
        True raised PatchCore's image AUROC on its worst set and its mean.
    upsampling : {"bilinear", "nearest"}, default="bilinear"
        How the coarser taps are resized to the finest tap's grid before
        they are concatenated. ``"nearest"`` repeats each coarse cell, as
        anomalib's PaDiM does (an imported PaDiM model needs it).
    upsampling_tap : int, default=0
        The tap (index into ``layers_``, fine to coarse) whose grid the
        coarser taps are resized to (``upsampling``); each cell is then
        repeated onto the finest tap's grid. 0 resizes straight to the
        finest grid. With strides 4, 8 and 16 and 1, a head that averages
        2 x 2 cells back to the stride-8 grid (``FlowDetector(joint_pool=2)``)
        sees the stride-8 and stride-16 stages exactly as an embedder
        tapping those two gives them.
    tile_size : int or None, default=None
        Embed each resized image tile by tile: square tiles of this many
        pixels (a multiple of the patch stride, at most the image's
        shorter side), overlapping by ``tile_overlap``; each patch of the
        grid is taken from the tile whose centre is nearest, so tile borders
        (where the backbone sees zero padding) never reach the output. The
        grid is the untiled one's shape, so a large ``image_size`` keeps
        small defects while the backbone's memory stays that of one batch of
        tiles. None: the whole image at once.
    tile_overlap : float in [0, 1), default=0.25
        Share of ``tile_size`` by which neighbouring tiles overlap (rounded
        down to the patch stride).
    batch_size : int, default=16
        Images (tiles, when tiling) per forward pass.
    device : str, default="cpu"
        ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
    n_jobs : int or None, default=None
        Torch CPU threads during ``transform`` (None: torch's default;
        -1: all cores).
    verbose : int, default=0
        Show a progress bar over images when > 0.

    Attributes
    ----------
    backbone_ : Backbone
        The loaded, frozen network, each batch norm folded into the
        convolution before it (same features to float rounding, less time).
    layers_ : tuple of str
        The tapped modules, fine to coarse.
    image_shape_ : (int, int)
        The (height, width) every image is resized to.
    n_features_out_ : int
        Feature dimension ``d`` of the output.
    feature_indices_ : ndarray of int or None
        The kept channels when ``reduction="random"``.
    feature_groups_ : tuple of int or None
        How many of the output channels come from each tapped layer, in
        order (they are consecutive); None when ``reduction="mean"`` mixes
        layers. A head that models one stage on its own (``make_cflow``'s
        map) takes it as ``fit(..., feature_groups=...)``; a
        :class:`~skanomaly.streaming.StreamingPipeline` passes it.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import PatchEmbedder
    >>> images = np.random.default_rng(0).random((2, 64, 64, 3))
    >>> embedder = PatchEmbedder(image_size=64).fit()
    >>> embedder.transform(images).shape
    (2, 8, 8, 152)
    >>> embedder.feature_groups_
    (40, 112)
    """

    _parameter_constraints = {
        **_BaseEmbedder._parameter_constraints,
        "n_features": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "aggregation_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "reduction": [StrOptions({"mean", "random"})],
        "count_include_pad": ["boolean"],
        "upsampling": [StrOptions({"bilinear", "nearest"})],
        "upsampling_tap": [Interval(numbers.Integral, 0, None, closed="left")],
        "random_state": ["random_state"],
        "tile_size": [Interval(numbers.Integral, 16, None, closed="left"), None],
        "tile_overlap": [Interval(numbers.Real, 0, 1, closed="left")],
    }

    def __init__(
        self,
        backbone="efficientnet_lite0",
        *,
        layers=None,
        weights="default",
        image_size=256,
        n_features=None,
        reduction="mean",
        aggregation_size=3,
        count_include_pad=True,
        upsampling="bilinear",
        upsampling_tap=0,
        random_state=None,
        tile_size=None,
        tile_overlap=0.25,
        batch_size=16,
        device="cpu",
        n_jobs=None,
        verbose=0,
    ):
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.image_size = image_size
        self.n_features = n_features
        self.reduction = reduction
        self.aggregation_size = aggregation_size
        self.count_include_pad = count_include_pad
        self.upsampling = upsampling
        self.upsampling_tap = upsampling_tap
        self.random_state = random_state
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.batch_size = batch_size
        self.device = device
        self.n_jobs = n_jobs
        self.verbose = verbose

    def _n_features_out(self, backbone, layers):
        if self.aggregation_size % 2 == 0:
            raise ValueError(
                "aggregation_size must be odd (a centred window), "
                f"got {self.aggregation_size}."
            )
        if self.upsampling_tap >= len(layers):
            raise ValueError(f"upsampling_tap={self.upsampling_tap} names no tap: the embedder "
                             f"taps {len(layers)} layers {tuple(layers)}.")
        total = sum(backbone.channels[name] for name in layers)
        if self.n_features is not None and self.n_features > total:
            raise ValueError(
                f"n_features={self.n_features} exceeds the {total} channels of "
                f"layers {layers}."
            )
        return total if self.n_features is None else self.n_features

    def fit(self, X=None, y=None):
        """Validate the parameters, load the backbone, draw the channel subset.

        Parameters
        ----------
        X : ignored
            Accepted for Pipeline compatibility; images are not looked at.
        y : ignored

        Returns
        -------
        self : object
        """
        super().fit(X, y)
        self._check_tiles()
        self.feature_indices_ = None
        widths = [self.backbone_.channels[name] for name in self.layers_]
        total = sum(widths)
        self.feature_groups_ = tuple(widths) if self.n_features is None else None
        if self.reduction == "random" and self.n_features is not None:
            rng = check_random_state(self.random_state)
            self.feature_indices_ = np.sort(rng.choice(total, self.n_features, replace=False))
            # A sorted subset keeps each layer's channels together.
            self.feature_groups_ = tuple(int(n) for n in np.bincount(
                np.searchsorted(np.cumsum(widths), self.feature_indices_, side="right"),
                minlength=len(widths)))
        return self

    def _check_tiles(self):
        if self.tile_size is None:
            return
        stride = self.backbone_.stages[self.layers_[0]]
        height, width = self.image_shape_
        if self.tile_size % stride or height % stride or width % stride:
            raise ValueError(
                f"tile_size={self.tile_size} and image_size {height} x {width} must be "
                f"multiples of the patch stride {stride} (layer {self.layers_[0]!r}).")
        if self.tile_size > min(height, width):
            raise ValueError(
                f"tile_size={self.tile_size} exceeds the image's shorter side "
                f"({min(height, width)} px of image_size {height} x {width}).")

    def _tile_layout(self, length):
        """Tile starts (px) along an axis of ``length`` px and, per output cell,
        the tile it comes from (the one whose centre is nearest)."""
        stride = self.backbone_.stages[self.layers_[0]]
        size = self.tile_size
        overlap = int(self.tile_overlap * size) // stride * stride
        step = max(size - overlap, stride)
        starts = list(range(0, length - size + 1, step))
        if starts[-1] != length - size:
            starts.append(length - size)
        centres = (np.asarray(starts) + size / 2) / stride
        cells = np.arange(length // stride) + 0.5
        owner = np.abs(cells[:, None] - centres[None]).argmin(axis=1)
        return np.asarray(starts) // stride, owner

    def _embed_tiled(self, batch):
        """``_embed`` of each image of ``batch`` assembled from its tiles."""
        height, width = batch.shape[-2:]
        size, patch = self.tile_size, self.backbone_.stages[self.layers_[0]]
        rows, row_owner = self._tile_layout(height)
        cols, col_owner = self._tile_layout(width)
        origins = [(r, c) for r in rows for c in cols]
        out = []
        for image in batch:
            tiles = torch.stack([image[:, r * patch:r * patch + size, c * patch:c * patch + size]
                                 for r, c in origins])
            grids = torch.cat([self._embed(tiles[i:i + self.batch_size])
                               for i in range(0, len(tiles), self.batch_size)])
            grids = grids.reshape(len(rows), len(cols), *grids.shape[1:])
            y = np.arange(height // patch)
            x = np.arange(width // patch)
            local_y = torch.as_tensor(y - rows[row_owner])
            local_x = torch.as_tensor(x - cols[col_owner])
            ty, tx = torch.as_tensor(row_owner), torch.as_tensor(col_owner)
            out.append(grids[ty[:, None], tx[None, :], local_y[:, None], local_x[None, :]])
        return torch.stack(out)

    def _embed(self, batch):
        if self.tile_size is not None and batch.shape[-2:] != (self.tile_size, self.tile_size):
            return self._embed_tiled(batch)
        maps = self.backbone_.extract(batch, self.layers_)
        size = maps[0].shape[-2:]
        pad = self.aggregation_size // 2
        parts = []
        for i, fmap in enumerate(maps):
            if self.aggregation_size > 1:
                fmap = F.avg_pool2d(
                    fmap, self.aggregation_size, stride=1, padding=pad,
                    count_include_pad=self.count_include_pad,
                )
            target = maps[self.upsampling_tap].shape[-2:] if i >= self.upsampling_tap else size
            if fmap.shape[-2:] != target:
                if self.upsampling == "nearest":
                    fmap = F.interpolate(fmap, size=target, mode="nearest")
                else:
                    fmap = F.interpolate(fmap, size=target, mode="bilinear", align_corners=False)
            if fmap.shape[-2:] != size:
                fmap = F.interpolate(fmap, size=size, mode="nearest")
            parts.append(fmap)
        feats = torch.cat(parts, dim=1).permute(0, 2, 3, 1)
        if self.feature_indices_ is not None:
            index = torch.as_tensor(self.feature_indices_, device=feats.device)
            feats = feats.index_select(-1, index)
        elif self.n_features is not None and self.n_features != feats.shape[-1]:
            n, h, w, d = feats.shape
            feats = F.adaptive_avg_pool1d(feats.reshape(n * h * w, 1, d), self.n_features)
            feats = feats.reshape(n, h, w, self.n_features)
        return feats

    def get_feature_names_out(self, input_features=None):
        """Names of the feature axis: ``patchembedder0`` to ``patchembedder{d-1}``."""
        check_is_fitted(self, "n_features_out_")
        return np.asarray(
            [f"patchembedder{i}" for i in range(self.n_features_out_)], dtype=object
        )


class ImageEmbedder(_BaseEmbedder):
    """One pooled feature vector per image from a frozen backbone.

    Each tapped stage is average-pooled over the whole image (or, with
    ``grid_size``, over each cell of a coarse grid) and the results are
    concatenated: the input of image-level density models (DFM, DFKDE) and
    of SPADE's image-level kNN.

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
        Registered backbone name.
    layers : tuple of str or int, or None, default=None
        Modules to pool, or strides (as in :class:`PatchEmbedder`); None
        takes the backbone's deepest stage (stride 32).
    weights : "default", path, mapping or None, default="default"
        Where the weights come from, see :func:`skanomaly.backbones.load_backbone`.
    image_size : int or (int, int), default=256
        Every image is resized to this before the backbone.
    grid_size : int, default=1
        Pool each stage over a ``grid_size x grid_size`` grid of image
        cells instead of the whole image, and concatenate the cells (cell by
        cell, row-major), so the vector keeps where each part of the image
        is: ``grid_size**2`` times the channels. 1: global average pooling.
    keep_grid : bool, default=False
        Return the cells as a ``(n, grid_size, grid_size, d)`` grid instead
        of flattening them (the same numbers: the vector is this grid
        flattened row-major), so a head can score each cell and draw a
        coarse anomaly map (DFM's).
    batch_size : int, default=16
        Images per forward pass.
    device : str, default="cpu"
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    n_jobs : int or None, default=None
        Torch CPU threads during ``transform``.
    verbose : int, default=0
        Show a progress bar over images when > 0.

    Attributes
    ----------
    backbone_ : Backbone
        The loaded, frozen network, each batch norm folded into the
        convolution before it (same features to float rounding, less time).
    layers_ : tuple of str
        The pooled modules, fine to coarse.
    image_shape_ : (int, int)
        The (height, width) every image is resized to.
    n_features_out_ : int
        Length ``d`` of each vector (of each cell's vector with ``keep_grid``).

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import ImageEmbedder
    >>> images = np.random.default_rng(0).random((3, 64, 64, 3))
    >>> ImageEmbedder(image_size=64).fit_transform(images).shape
    (3, 320)
    >>> ImageEmbedder(image_size=64, grid_size=2).fit_transform(images).shape
    (3, 1280)
    >>> ImageEmbedder(image_size=64, grid_size=2, keep_grid=True).fit_transform(images).shape
    (3, 2, 2, 320)
    """

    _parameter_constraints = {
        **_BaseEmbedder._parameter_constraints,
        "grid_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "keep_grid": ["boolean"],
    }

    def __init__(
        self,
        backbone="efficientnet_lite0",
        *,
        layers=None,
        weights="default",
        image_size=256,
        grid_size=1,
        keep_grid=False,
        batch_size=16,
        device="cpu",
        n_jobs=None,
        verbose=0,
    ):
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.image_size = image_size
        self.grid_size = grid_size
        self.keep_grid = keep_grid
        self.batch_size = batch_size
        self.device = device
        self.n_jobs = n_jobs
        self.verbose = verbose

    def _default_layers(self, backbone):
        return (max(backbone.stages, key=backbone.stages.get),)

    def _n_features_out(self, backbone, layers):
        cells = 1 if self.keep_grid else self.grid_size ** 2
        return cells * sum(backbone.channels[name] for name in layers)

    def _embed(self, batch):
        maps = self.backbone_.extract(batch, self.layers_)
        if self.grid_size == 1 and not self.keep_grid:
            return torch.cat([fmap.mean(dim=(2, 3)) for fmap in maps], dim=1)
        cells = [F.adaptive_avg_pool2d(fmap, self.grid_size) for fmap in maps]
        # (n, g, g, channels): each cell's channels side by side.
        grid = torch.cat(cells, dim=1).permute(0, 2, 3, 1)
        return grid if self.keep_grid else grid.flatten(1)

    def get_feature_names_out(self, input_features=None):
        """Names of the feature axis: ``imageembedder0`` to ``imageembedder{d-1}`` (the cell axis with ``keep_grid``)."""
        check_is_fitted(self, "n_features_out_")
        return np.asarray(
            [f"imageembedder{i}" for i in range(self.n_features_out_)], dtype=object
        )
