"""Normalizing-flow head on patch grids: FastFlow and CFlow styles."""

import math
import numbers

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions
from torch import nn
from torch.nn import functional as F

from ._base import (
    _IMAGE_SCORE_SIGMA_CONSTRAINT,
    _smoothed_max,
    _torch_smoothed_max,
    _TorchGaussianBlur,
)
from ._trainable import _standardise_channels, _TrainableDetector


def positional_encoding(n_channels, height, width):
    """2D sinusoidal encoding of grid positions, shape ``(n_channels, height, width)``.

    Half the channels encode the row, half the column, each as sines and
    cosines of geometrically spaced frequencies (Vaswani et al., 2017), as
    CFlow conditions its flow. Positions are taken relative to the grid size
    so that the encoding does not depend on the resolution.
    """
    if n_channels % 4:
        raise ValueError(f"positional encoding needs a multiple of 4 channels, got {n_channels}.")
    quarter = n_channels // 4
    frequencies = torch.exp(-math.log(1e4) * torch.arange(quarter, dtype=torch.float32) / quarter)
    rows = (torch.arange(height, dtype=torch.float32) + 0.5) / height * 64
    cols = (torch.arange(width, dtype=torch.float32) + 0.5) / width * 64
    row_angles = rows[:, None] * frequencies[None]  # (h, q)
    col_angles = cols[:, None] * frequencies[None]  # (w, q)
    encoding = torch.empty(n_channels, height, width)
    encoding[:quarter] = torch.sin(row_angles).T[:, :, None]
    encoding[quarter:2 * quarter] = torch.cos(row_angles).T[:, :, None]
    encoding[2 * quarter:3 * quarter] = torch.sin(col_angles).T[:, None, :]
    encoding[3 * quarter:] = torch.cos(col_angles).T[:, None, :]
    return encoding


class _AffineCoupling(nn.Module):
    """Affine coupling: the second half of the channels is scaled and shifted by
    a conv net of the first half (and the condition); soft-clamped log-scales
    keep training stable; a fixed channel permutation follows."""

    def __init__(self, n_features, n_condition, hidden, kernel_size, clamp):
        super().__init__()
        self.split = n_features // 2
        n_out = n_features - self.split
        padding = kernel_size // 2
        self.net = nn.Sequential(
            nn.Conv2d(self.split + n_condition, hidden, kernel_size, padding=padding),
            nn.ReLU(),
            nn.Conv2d(hidden, 2 * n_out, kernel_size, padding=padding),
        )
        # Start as the identity map: zero scale and shift.
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.clamp = clamp
        self.register_buffer("permutation", torch.randperm(n_features))

    def forward(self, x, condition):
        x1, x2 = x[:, :self.split], x[:, self.split:]
        inputs = x1 if condition is None else torch.cat([x1, condition], 1)
        log_scale, shift = self.net(inputs).chunk(2, 1)
        log_scale = self.clamp * torch.tanh(log_scale / self.clamp)
        y = torch.cat([x1, x2 * torch.exp(log_scale) + shift], 1)
        return y[:, self.permutation], log_scale.sum(1)


class _PatchFlow(nn.Module):
    """Take its channels of the grid (pooled), standardise them, run the
    coupling blocks, return per-patch NLL on its own grid."""

    def __init__(self, n_features, n_blocks, hidden, kernel_size, n_condition, clamp,
                 channels=None, pool=1):
        super().__init__()
        self.n_features = n_features
        self.channels = None if channels is None else [int(c) for c in channels]
        self.pool = int(pool)
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        self.n_condition = n_condition
        # FastFlow alternates kxk and 1x1 subnets: context without doubling cost.
        self.blocks = nn.ModuleList(
            _AffineCoupling(n_features, n_condition, hidden, kernel_size if i % 2 == 0 else 1, clamp)
            for i in range(n_blocks)
        )

    def prepare(self, x):
        """The flow's input from full grids (n, d, h, w): its channels, averaged
        over ``pool`` x ``pool`` cells."""
        if self.channels is not None:
            x = x[:, self.channels]
        if self.pool > 1:
            x = F.avg_pool2d(x, self.pool, ceil_mode=True)
        return x

    def forward(self, x):
        """Per-patch NLL (n, h', w') of full grids (n, d, h, w)."""
        return self.nll(*self.latent(x))

    def nll(self, half_square, log_det):
        """The NLL under a standard Gaussian from what ``latent`` gives."""
        return half_square - log_det + 0.5 * self.n_features * math.log(2 * math.pi)

    def latent(self, x):
        """Half the squared norm of each patch's latent, and the coupling
        blocks' log-determinant there, each (n, h', w')."""
        x = self.prepare(x)
        z = (x - self.mean[:, None, None]) / self.scale[:, None, None]
        condition = None
        if self.n_condition:
            encoding = positional_encoding(self.n_condition, x.shape[2], x.shape[3])
            condition = encoding.to(x.device)[None].expand(x.shape[0], -1, -1, -1)
        log_det = torch.zeros(x.shape[0], x.shape[2], x.shape[3], device=x.device)
        for block in self.blocks:
            z, block_log_det = block(z, condition)
            log_det = log_det + block_log_det
        return 0.5 * (z**2).sum(1), log_det


class FlowDetector(_TrainableDetector):
    """Normalizing flow on patch features (FastFlow, CFlow); score = patch NLL.

    A stack of affine coupling blocks (Dinh et al., 2017) maps the normal
    patch features of a frozen backbone to a standard Gaussian. A patch's
    anomaly score is its negative log-likelihood under the flow; an image's
    the largest of its patches' (after an optional blur,
    ``image_score_sigma``). With ``kernel_size=3`` the coupling nets are
    convolutions over the patch grid alternating 3x3 and 1x1 kernels
    (FastFlow, Yu et al., 2021); with ``kernel_size=1`` and
    ``positional_encoding`` channels each patch is modelled on its own,
    conditioned on a sinusoidal encoding of its grid position (CFlow,
    Gudovskiy et al., 2022). Features are standardised per channel first.

    Training uses Adam on the mean per-dimension NLL; a ``validation_fraction``
    of the normal images stops it when their NLL stops improving
    (``n_iter_no_change`` epochs) and the best weights are kept.

    Parameters
    ----------
    n_blocks : int, default=8
        Coupling blocks.
    hidden_ratio : float, default=1.0
        Hidden channels of each coupling net, as a multiple of the feature
        dimension.
    kernel_size : int, default=3
        Kernel of the even-numbered coupling nets (odd ones use 1x1); 1 makes
        a per-patch flow.
    positional_encoding : int, default=0
        Channels of the positional condition (a multiple of 4); 0 for none.
    clamp : float, default=2.0
        Log-scales are soft-clamped to (-clamp, clamp).
    image_score_sigma : float, default=0.0
        The image score is the largest patch NLL after a Gaussian blur of
        this many grid cells (0: the largest raw patch NLL).
        ``score_patches`` is not blurred. :func:`~skanomaly.make_cflow`
        sets it (panel figures in doc/benchmarks.md); FastFlow keeps 0.
    map_stage : int or None, default=None
        None: the flow's patch NLL is the map (``score_patches``). An index
        into ``fit``'s ``feature_groups`` (the channels of each backbone
        stage, fine to coarse; 0 is the finest): a second flow, with the same
        settings, models that stage's channels alone, and the map is one
        minus the mean of the two flows' patch likelihoods per dimension
        (``exp(-NLL / d)``), while the image score stays the first flow's.
        A coarse stage upsampled to the fine grid smears a joint flow's map
        over its 16-pixel cells; :func:`~skanomaly.make_fastflow` and
        :func:`~skanomaly.make_cflow` set 0 (panel figures in doc/benchmarks.md).
    joint_stages : tuple of int or None, default=None
        The stages (indices into ``fit``'s ``feature_groups``) the joint
        flow, which gives the image score, models; None: every channel.
    joint_pool : int, default=1
        The joint flow models the grid averaged over ``joint_pool`` x
        ``joint_pool`` cells (a stride-8 grid from a stride-4 one): the
        image score is the largest NLL on that coarser grid (blurred by
        ``image_score_sigma`` of its cells), and its map is resized back to
        the grid bilinearly. With ``PatchEmbedder(layers=(4, 8, 16),
        upsampling_tap=1)`` (pooling then gives back the stride-8 grid
        exactly), ``joint_stages=(1, 2)``, ``joint_pool=2`` and
        ``map_stage=0`` make a FastFlow with a flow per stage, as
        anomalib's: the image flow sees strides 8 and 16 on the stride-8
        grid, and the map adds a flow of the stride-4 stage at its own
        resolution. :func:`~skanomaly.make_fastflow` does not: over two
        seeds it drew KolektorSDD's map no better (doc/benchmarks.md).
    map_score : {"nll", "latent"}, default="nll"
        What this flow's share of the map is made of: each patch's negative
        log-likelihood, or (``"latent"``) half the squared norm of its
        latent alone, without the coupling blocks' log-determinant, as
        anomalib's FastFlow draws its maps. With ``map_stage`` the share is
        taken per dimension and averaged as a likelihood with the stage
        flow's, which stays its NLL. The image score is the NLL either way.
        :func:`~skanomaly.make_fastflow` sets ``"latent"``: pixel AUROC
        bottle / tire / KolektorSDD (seeds 0, 1) 0.987 / 0.967 / 0.879,
        0.876 against 0.987 / 0.979 / 0.866, 0.859 with ``"nll"``, and
        0.983 / 0.767 / 0.878, 0.881 with both flows' latents (doc/benchmarks.md).
    loss : {"nll", "logsigmoid"}, default="nll"
        Training loss of each patch, from its NLL per dimension ``u`` (of
        the standardised channels, so the loss does not depend on the
        backbone's feature scale): ``"nll"`` is ``u`` itself (FastFlow's);
        ``"logsigmoid"`` is CFlow's ``-log sigmoid(-u)``, which flattens out
        on patches the flow already fits well. Scores are NLL either way.
    ema_half_life : float or None, default=None
        None validates and keeps the weights as the last optimiser step left
        them. A number keeps an exponential moving average of the weights
        over the steps, with this half-life in epochs (so the window does
        not depend on how many images a data set has); early stopping
        validates the average, and the best average is the model. On
        :func:`~skanomaly.make_cflow`'s tire fits a half-life of one epoch
        scored lower than the last weights (doc/benchmarks.md), so it is off.
    max_epochs : int, default=30
        Passes over the training images.
    batch_size : int, default=16
        Images (whole patch grids) per step.
    learning_rate : float, default=1e-3
        Adam's step size.
    validation_fraction : float in [0, 1), default=0.1
        Share of the non-calibration images held out for early stopping;
        0 trains for ``max_epochs``.
    n_iter_no_change : int or None, default=5
        Epochs without a better validation loss before stopping; None
        disables early stopping.
    warm_start : bool, default=False
        Continue training the current flow on the next ``fit``.
    contamination : float in (0, 0.5], default=0.05
        Target false-alarm rate of ``predict`` on new normal images.
    calibration_size : float in (0, 1) or int, default=0.1
        Share (or number) of images held out to calibrate ``offset_``.
    random_state : int, RandomState instance or None, default=None
        Seeds splits, initialisation, permutations and batch order;
        training is deterministic on a CPU with a fixed seed.
    device : str, default="cpu"
        Torch device for training and scoring.
    verbose : int, default=0
        A progress bar over epochs with the losses when > 0.

    Attributes
    ----------
    module_ : torch.nn.Module
        The trained flow (saved as a state dict when pickled).
    module_params_ : dict
        Arguments the flow was built with.
    loss_curve_ : list of float
        Mean training loss of each epoch (per patch, as ``loss`` defines it).
    validation_loss_curve_ : list of float
        Mean validation loss of each epoch (empty without early stopping).
    n_iter_ : int
        Epochs run.
    offset_ : float
        Threshold on ``score_samples``.
    calibration_scores_ : ndarray
        Sorted ``score_samples`` of the held-out normal images.
    calibration_patch_scores_ : ndarray
        Sorted patch scores of the held-out normal images.
    n_features_in_ : int
        Feature dimension seen in ``fit``.
    map_channels_ : (int, int) or None
        First and past-the-last channel the map's flow models
        (``map_stage``); None without.
    map_flow_ : FlowDetector or None
        That flow, or None: its ``score_patches`` on the stage's channels,
        as a likelihood per dimension, is the stage's share of the map; it
        has no threshold of its own (the pixel threshold comes from this
        detector's ``calibration_patch_scores_``).
    joint_channels_ : list of int or None
        The channels the joint flow models (``joint_stages``); None: all.

    See Also
    --------
    skanomaly.make_fastflow, skanomaly.make_cflow : Pipelines with a backbone.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.detectors import FlowDetector
    >>> rng = np.random.default_rng(0)
    >>> grids = rng.normal(size=(12, 4, 4, 8)).astype(np.float32)
    >>> flow = FlowDetector(max_epochs=2, random_state=0).fit(grids)
    >>> flow.score_patches(grids[:2]).shape
    (2, 4, 4)
    >>> flow.predict(grids[:2] + 10.0)
    array([-1, -1])
    """

    _parameter_constraints = {
        **_TrainableDetector._parameter_constraints,
        "n_blocks": [Interval(numbers.Integral, 1, None, closed="left")],
        "hidden_ratio": [Interval(numbers.Real, 0, None, closed="neither")],
        "kernel_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "positional_encoding": [Interval(numbers.Integral, 0, None, closed="left")],
        "clamp": [Interval(numbers.Real, 0, None, closed="neither")],
        "image_score_sigma": _IMAGE_SCORE_SIGMA_CONSTRAINT,
        "map_stage": [Interval(numbers.Integral, 0, None, closed="left"), None],
        "joint_stages": ["array-like", None],
        "joint_pool": [Interval(numbers.Integral, 1, None, closed="left")],
        "map_score": [StrOptions({"nll", "latent"})],
        "loss": [StrOptions({"nll", "logsigmoid"})],
        "ema_half_life": [Interval(numbers.Real, 0, None, closed="neither"), None],
    }

    def __init__(
        self,
        *,
        n_blocks=8,
        hidden_ratio=1.0,
        kernel_size=3,
        positional_encoding=0,
        clamp=2.0,
        image_score_sigma=0.0,
        map_stage=None,
        joint_stages=None,
        joint_pool=1,
        map_score="nll",
        loss="nll",
        ema_half_life=None,
        max_epochs=30,
        batch_size=16,
        learning_rate=1e-3,
        validation_fraction=0.1,
        n_iter_no_change=5,
        warm_start=False,
        contamination=0.05,
        calibration_size=0.1,
        random_state=None,
        device="cpu",
        verbose=0,
    ):
        self.n_blocks = n_blocks
        self.hidden_ratio = hidden_ratio
        self.kernel_size = kernel_size
        self.positional_encoding = positional_encoding
        self.clamp = clamp
        self.image_score_sigma = image_score_sigma
        self.map_stage = map_stage
        self.joint_stages = joint_stages
        self.joint_pool = joint_pool
        self.map_score = map_score
        self.loss = loss
        self.ema_half_life = ema_half_life
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.warm_start = warm_start
        self.contamination = contamination
        self.calibration_size = calibration_size
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    def fit(self, X, y=None, *, feature_groups=None):
        """Train the flow (and the map's, with ``map_stage``), then calibrate.

        Parameters
        ----------
        X : array-like of shape (n_images, h, w, n_features)
            Patch grids of normal images.
        y : ignored
        feature_groups : sequence of int or None, default=None
            How many consecutive channels of ``X`` each backbone stage
            gave (:attr:`PatchEmbedder.feature_groups_
            <skanomaly.PatchEmbedder>`); needed with ``map_stage`` or
            ``joint_stages`` only. A
            :class:`~skanomaly.streaming.StreamingPipeline`, which the
            factories return, passes its embedder's.

        Returns
        -------
        self : object
            Fitted detector.
        """
        self._validate_params()
        channels = self._map_channels(X, feature_groups)
        joint = self._joint_channels(X, feature_groups)
        before = dict(self.__dict__)
        try:
            self.map_channels_, self.joint_channels_ = channels, joint
            return super().fit(X, y)
        except BaseException:
            # Nothing half-written: e.g. the map's flow failing after the
            # joint one trained leaves the detector as it was.
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    def _stage_channels(self, X, feature_groups, param):
        """Each stage's (start, stop) channels, checked against ``X``, for the
        parameter named ``param`` that needs them."""
        if feature_groups is None:
            raise ValueError(
                f"{param} needs the channels of each backbone stage: fit through a "
                "StreamingPipeline (e.g. make_cflow()), which passes its PatchEmbedder's, "
                "or call fit(X, feature_groups=embedder.feature_groups_).")
        groups = [int(n) for n in feature_groups]
        n_features = np.shape(X)[-1] if np.ndim(X) == 4 else None
        if min(groups, default=0) < 1 or sum(groups) != n_features:
            raise ValueError(
                f"feature_groups={tuple(groups)} must be positive channel counts summing to "
                f"the {n_features} features of X (shape {np.shape(X)}).")
        bounds = np.cumsum([0] + groups)
        return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))

    def _map_channels(self, X, feature_groups):
        """The (start, stop) channels ``map_stage`` names, checked against ``X``."""
        if self.map_stage is None:
            return None
        stages = self._stage_channels(X, feature_groups, f"map_stage={self.map_stage}")
        if self.map_stage >= len(stages):
            raise ValueError(f"map_stage={self.map_stage} names no stage: X has "
                             f"{len(stages)} (feature_groups={tuple(feature_groups)}).")
        return stages[self.map_stage]

    def _joint_channels(self, X, feature_groups):
        """The channels of the stages ``joint_stages`` names, in order."""
        if self.joint_stages is None:
            return None
        wanted = np.asarray(self.joint_stages).ravel().tolist()
        param = f"joint_stages={tuple(wanted)}"
        stages = self._stage_channels(X, feature_groups, param)
        if (not wanted or len(set(wanted)) < len(wanted)
                or not all(isinstance(i, numbers.Integral) and 0 <= i < len(stages)
                           for i in wanted)):
            raise ValueError(f"{param} must name distinct stages among the {len(stages)} "
                             f"of X (0 to {len(stages) - 1}; feature_groups="
                             f"{tuple(feature_groups)}).")
        return [c for i in sorted(int(i) for i in wanted) for c in range(*stages[i])]

    def _fit_normal(self, X, fit_idx, rng):
        previous = getattr(self, "map_flow_", None) if self.warm_start else None
        super()._fit_normal(X, fit_idx, rng)
        self.map_flow_ = None
        if getattr(self, "map_channels_", None) is None:
            return
        n_stage = self.map_channels_[1] - self.map_channels_[0]
        # Same settings, its own draws from the fit's random stream; with
        # warm_start, the map's flow continues as the joint one does.
        flow = type(self)(**{**self.get_params(), "map_stage": None, "joint_stages": None,
                             "joint_pool": 1, "map_score": "nll"})
        if previous is not None and previous.n_features_in_ == n_stage:
            flow.module_, flow.module_params_ = previous.module_, previous.module_params_
        flow.map_channels_, flow.joint_channels_, flow.n_features_in_ = None, None, n_stage
        flow._fit_normal(self._map_features(X), fit_idx, rng)
        self.map_flow_ = flow

    def _map_features(self, X):
        start, stop = self.map_channels_
        return X[..., start:stop]

    def _patch_and_image_scores(self, X):
        # The joint flow's scores on its own grid (coarser with joint_pool).
        scores = self._patch_scores(X)
        image = _smoothed_max(scores[:, 0], self.image_score_sigma)
        stage = None
        if getattr(self, "map_flow_", None) is not None:
            stage = self.map_flow_._patch_scores(self._map_features(X))
        return self._drawn_map(scores, stage, X.shape[1:3]), image

    def _drawn_map(self, scores, stage, grid_shape):
        """The map on the grid from the joint flow's ``_module_scores`` and,
        with ``map_stage``, the stage flow's (numpy, or torch in the ONNX
        graph): the joint share resized to the grid, averaged as a
        likelihood with the stage's NLL."""
        joint = _resized(self._map_part(scores), grid_shape)
        if stage is None:
            return joint
        start, stop = self.map_channels_
        return _combined_map(joint, self._joint_dimension(), stage[:, 0], stop - start)

    def _map_part(self, scores):
        """The map's share of ``_module_scores``: the NLL or the latent's."""
        return scores[:, 1] if getattr(self, "map_score", "nll") == "latent" else scores[:, 0]

    def _joint_dimension(self):
        return self.module_params_["n_features"]

    def _export_graph(self):
        return _FlowGraph(self)

    def _module_params(self, X, train_idx):
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}.")
        if self.positional_encoding % 4:
            raise ValueError(
                f"positional_encoding must be a multiple of 4, got {self.positional_encoding}."
            )
        channels = getattr(self, "joint_channels_", None)
        n_features = X.shape[-1] if channels is None else len(channels)
        if n_features < 2:
            raise ValueError(
                f"FlowDetector needs at least 2 features (got n_features = {n_features}): "
                "a coupling block transforms one part of them given the other."
            )
        return {
            "n_features": n_features,
            "n_blocks": self.n_blocks,
            "hidden": max(1, int(round(self.hidden_ratio * n_features))),
            "kernel_size": self.kernel_size,
            "n_condition": self.positional_encoding,
            "clamp": float(self.clamp),
            "channels": channels,
            "pool": self.joint_pool,
        }

    def _build_module(self, **params):
        return _PatchFlow(**params)

    def _init_module(self, module, X, train_idx):
        def prepare(block):
            grids = module.prepare(torch.from_numpy(block).permute(0, 3, 1, 2))
            return grids.permute(0, 2, 3, 1).numpy()

        _standardise_channels(module, X, train_idx, prepare=prepare)

    def _make_optimizer(self, module):
        return torch.optim.Adam(module.parameters(), lr=self.learning_rate, weight_decay=1e-5)

    def _loss(self, module, batch, generator):
        nll = module(batch) / module.n_features
        if self.loss == "logsigmoid":
            # CFlow's -log sigmoid(log-likelihood per dimension): the
            # gradient of a patch is weighted by sigmoid(its NLL), so patches
            # the flow already fits well stop pulling the fit towards them.
            return torch.nn.functional.softplus(nll).mean()
        return nll.mean()

    def _module_scores(self, module, batch):
        # (n, 2, h, w): the NLL (the image score's) and half the latent's
        # squared norm (map_score="latent"), from one pass.
        half_square, log_det = module.latent(batch)
        return torch.stack([module.nll(half_square, log_det), half_square], 1)


def _combined_map(joint, n_joint, stage, n_stage):
    """The map of a FlowDetector with ``map_stage``: one minus the mean of the
    two flows' patch likelihoods per dimension, ``exp(-NLL / d)``, so that
    the stage weighs as much as all the channels together (as anomalib's
    FastFlow and CFlow average their per-stage maps in likelihood space)."""
    exp = torch.exp if isinstance(joint, torch.Tensor) else np.exp
    return 1 - (exp(-joint / n_joint) + exp(-stage / n_stage)) / 2


def _resized(patch, shape):
    """Patch scores (n, h, w), numpy or torch, resized bilinearly to ``shape``."""
    if tuple(patch.shape[1:3]) == tuple(shape):
        return patch
    grids = torch.as_tensor(patch)[:, None]
    resized = F.interpolate(grids, size=tuple(shape), mode="bilinear", align_corners=False)[:, 0]
    return resized if isinstance(patch, torch.Tensor) else resized.numpy()


class _FlowGraph(torch.nn.Module):
    """A FlowDetector's scoring as one module an ONNX graph can hold: the
    image score from the joint flow, the map from it (resized to the grid)
    and, with ``map_stage``, the stage's flow."""

    def __init__(self, head):
        super().__init__()
        self.module = head.module_
        map_flow = getattr(head, "map_flow_", None)
        self.map_flow = None if map_flow is None else map_flow.module_
        self._head = head  # plain attribute: its methods, not its state
        sigma = head.image_score_sigma
        self.blur = _TorchGaussianBlur(sigma) if sigma else None

    def _scores(self, module, grids):
        head = self._head
        return head._module_scores(module, head._module_input(module, grids)).float()

    def forward(self, grids):
        head = self._head
        scores = self._scores(self.module, grids)
        image = _torch_smoothed_max(scores[:, 0], self.blur)
        stage = None
        if self.map_flow is not None:
            stage = self._scores(self.map_flow, head._map_features(grids))
        return head._drawn_map(scores, stage, grids.shape[1:3]), image
