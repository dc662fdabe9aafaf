"""MambaAD-style head: a state-space sequence model predicts each patch from its scans."""

import math
import numbers

import torch
import torch.nn.functional as F
from sklearn.utils._param_validation import Interval
from torch import nn

from ._base import _IMAGE_SCORE_SIGMA_CONSTRAINT
from ._trainable import _standardise_channels, _TrainableDetector

# S4D-Lin initialisation (Gu et al., 2022): the discretisation step of each
# channel is log-uniform in this range, so channels remember from about one
# patch (fast decay) to a thousand (a whole 32 x 32 scan).
_DT_RANGE = (1e-3, 1e-1)


def _snake_orders(h, w, device=None):
    """Row-wise and column-wise boustrophedon scans of an ``h x w`` grid.

    Each is a permutation of ``range(h * w)`` in which consecutive entries are
    neighbouring patches (no jump from one row's end to the next row's
    start), as MambaAD's snake scans. Torch ops, so that an exported graph
    holds them as constants.
    """
    grid = torch.arange(h * w, device=device).reshape(h, w)
    rows, cols = grid.clone(), grid.T.clone()
    rows[1::2] = rows[1::2].flip(-1)
    cols[1::2] = cols[1::2].flip(-1)
    return rows.reshape(-1), cols.reshape(-1)


class _DiagonalStateSpace(nn.Module):
    """A linear time-invariant state-space layer with a diagonal complex state
    (S4D), applied as a causal convolution computed with the FFT.

    ``strict=True`` drops the kernel's lag 0 and the skip term: the output at
    step t then depends on steps before t only.
    """

    def __init__(self, channels, state_size, strict):
        super().__init__()
        self.strict = strict
        log_dt = torch.rand(channels) * (math.log(_DT_RANGE[1]) - math.log(_DT_RANGE[0]))
        self.log_dt = nn.Parameter(log_dt + math.log(_DT_RANGE[0]))
        self.log_neg_real = nn.Parameter(torch.full((channels, state_size), math.log(0.5)))
        self.imag = nn.Parameter(math.pi * torch.arange(state_size).float().repeat(channels, 1))
        scale = 1 / math.sqrt(state_size)
        self.c = nn.Parameter(torch.randn(channels, state_size, 2) * scale)
        self.skip = nn.Parameter(torch.zeros(channels)) if not strict else None

    def kernel(self, length):
        dt = self.log_dt.exp()[:, None]
        a = torch.complex(-self.log_neg_real.exp(), self.imag)
        dta = a * dt
        # Zero-order hold with B = 1: x_t = exp(dt A) x_{t-1} + (exp(dt A) - 1) / A u_t.
        c = torch.view_as_complex(self.c) * (torch.exp(dta) - 1) / a
        # K_l = 2 Re(sum_n c_n exp(dt A_n)^l), in real arithmetic (torch's
        # complex exp is several times slower on a CPU).
        steps = torch.arange(length, device=dt.device, dtype=dt.dtype)
        decay = torch.exp(dta.real[..., None] * steps)  # (channels, state, length)
        angle = dta.imag[..., None] * steps
        wave = c.real[..., None] * torch.cos(angle) - c.imag[..., None] * torch.sin(angle)
        return 2 * (decay * wave).sum(1)

    def forward(self, u):
        """``u``: (batch, length, channels) -> same shape."""
        length = u.shape[1]
        k = self.kernel(length).T
        n_fft = 2 * length
        spectrum = torch.fft.rfft(u, n=n_fft, dim=1) * torch.fft.rfft(k, n=n_fft, dim=0)
        y = torch.fft.irfft(spectrum, n=n_fft, dim=1)[:, :length]
        if self.strict:
            return F.pad(y[:, :-1], (0, 0, 1, 0))  # y_t from u_0 .. u_{t-1}
        return y + self.skip * u


class _ScanBranch(nn.Module):
    """One scan direction: a strictly causal state-space layer, then causal
    layers on its output (which never saw the current patch)."""

    def __init__(self, hidden, state_size, n_layers):
        super().__init__()
        self.layers = nn.ModuleList(
            _DiagonalStateSpace(hidden, state_size, strict=(i == 0)) for i in range(n_layers)
        )
        self.mix = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(n_layers))
        # Normalised over channels at each step only: statistics over the
        # sequence would carry the current patch into its own prediction.
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(n_layers))

    def forward(self, u):
        x = None
        for i, (ssm, mix, norm) in enumerate(zip(self.layers, self.mix, self.norms)):
            y = mix(F.gelu(ssm(u if i == 0 else x)))
            x = norm(y if x is None else x + y)
        return x


class _StateSpaceNet(nn.Module):
    """Predicts every patch feature from the patches before it in four scans
    (row and column snakes, each forwards and backwards), never from itself."""

    def __init__(self, n_features, hidden, state_size, n_layers):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        self.embed = nn.Linear(n_features, hidden)
        self.branches = nn.ModuleList(_ScanBranch(hidden, state_size, n_layers) for _ in range(4))
        self.head = nn.Sequential(
            nn.Linear(4 * hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, n_features)
        )

    def standardise(self, x):
        """(N, d, h, w) grids -> (N, h * w, d) standardised patch sequences."""
        return ((x.flatten(2).transpose(1, 2) - self.mean) / self.scale).contiguous()

    def predict(self, target, h, w):
        rows, cols = _snake_orders(h, w, target.device)
        embedded = self.embed(target)
        contexts = []
        for branch, order in zip(self.branches, (rows, rows.flip(0), cols, cols.flip(0))):
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(len(order), device=order.device)
            contexts.append(branch(embedded[:, order])[:, inverse])
        return self.head(torch.cat(contexts, -1))

    def errors(self, x):
        """Per-patch mean squared prediction error, (N, h, w)."""
        h, w = x.shape[-2:]
        target = self.standardise(x)
        error = (self.predict(target, h, w) - target).pow(2).mean(-1)
        return error.reshape(len(x), h, w)


class StateSpaceDetector(_TrainableDetector):
    """MambaAD-style head: a state-space model predicts each patch from its scans.

    MambaAD (He et al., 2024) reconstructs frozen patch features with
    state-space (Mamba) blocks that scan the patch grid in several directions;
    reconstruction error marks anomalies. Here the grid of standardised
    patch features is read as four sequences (row-wise and column-wise snake
    scans, each forwards and backwards), each through a stack of diagonal
    state-space layers (S4D, Gu et al., 2022) whose first layer is strictly
    causal: the prediction of a patch comes from the patches before it in
    the four scans (which together surround it), never from the patch
    itself. So the network cannot learn to copy its input, the shortcut
    that makes plain reconstruction models reproduce defects too; it must
    learn what normal surroundings imply. A patch's anomaly score is its
    mean squared prediction error; an image's the largest patch score after
    a light blur (``image_score_sigma``).

    What differs from the paper: the state-space layers are linear time
    invariant (S4D) rather than input-selective (Mamba), so each scan is one
    FFT convolution in plain torch (``mamba-ssm`` needs CUDA kernels), and
    the model predicts each patch from its context instead of
    reconstructing it through a bottleneck. On vectors ``(n, d)`` (a 1 x 1
    grid) there is no context, and the score is the standardised squared
    distance to a learned constant.

    Parameters
    ----------
    hidden_size : int, default=64
        Channels of the state-space layers.
    state_size : int, default=16
        Complex state dimensions per channel.
    n_layers : int, default=2
        State-space layers per scan direction.
    image_score_sigma : float, default=2.0
        The image score is the largest patch score after a Gaussian blur of
        this many grid cells (0: the largest raw patch score);
        ``score_patches`` is not blurred. Chosen on the panel
        (``benchmarks/bench_score_sigma.py --methods mambaad``, seed 0) by
        the worst set with a mean within 0.003 of the best: image AUROC mean
        / worst 0.789 / 0.620 raw, 0.802 / 0.664 at 1 cell, 0.799 / 0.700 at
        2, 0.769 / 0.669 at 4.
    max_epochs : int, default=50
        Passes over the training images.
    batch_size : int, default=8
        Images per step.
    learning_rate : float, default=1e-3
        Adam's step size.
    validation_fraction : float in [0, 1), default=0.1
        Share of the non-calibration images held out for early stopping.
    n_iter_no_change : int or None, default=5
        Epochs without a better validation loss before stopping; None
        disables early stopping.
    warm_start : bool, default=False
        Continue training the current network on the next ``fit``.
    contamination : float in (0, 0.5], default=0.05
        Target false-alarm rate of ``predict`` on new normal images.
    calibration_size : float in (0, 1) or int, default=0.1
        Share (or number) of images held out to calibrate ``offset_``.
    random_state : int, RandomState instance or None, default=None
        Seeds splits, initialisation and batch order.
    device : str, default="cpu"
        Torch device for training and scoring.
    verbose : int, default=0
        A progress bar over epochs with the losses when > 0.

    Attributes
    ----------
    module_ : torch.nn.Module
        The network (saved as a state dict when pickled).
    module_params_ : dict
        Arguments the network was built with.
    loss_curve_, validation_loss_curve_ : list of float
        Mean prediction error of each epoch on training and validation images.
    n_iter_ : int
        Epochs run.
    offset_ : float
        Threshold on ``score_samples``.
    calibration_scores_, calibration_patch_scores_ : ndarray
        Sorted scores of the held-out normal images.
    n_features_in_ : int
        Feature dimension seen in ``fit``.

    See Also
    --------
    skanomaly.make_mambaad : Pipeline with a backbone.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.detectors import StateSpaceDetector
    >>> rng = np.random.default_rng(0)
    >>> grids = rng.normal(size=(12, 6, 6, 8)).astype(np.float32)
    >>> head = StateSpaceDetector(hidden_size=16, max_epochs=2, validation_fraction=0,
    ...                           random_state=0)
    >>> head.fit(grids).score_patches(grids[:2]).shape
    (2, 6, 6)
    """

    _parameter_constraints = {
        **_TrainableDetector._parameter_constraints,
        "hidden_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "state_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "n_layers": [Interval(numbers.Integral, 1, None, closed="left")],
        "image_score_sigma": _IMAGE_SCORE_SIGMA_CONSTRAINT,
    }

    def __init__(
        self,
        *,
        hidden_size=64,
        state_size=16,
        n_layers=2,
        image_score_sigma=2.0,
        max_epochs=50,
        batch_size=8,
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
        self.hidden_size = hidden_size
        self.state_size = state_size
        self.n_layers = n_layers
        self.image_score_sigma = image_score_sigma
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

    def _module_params(self, X, train_idx):
        return {"n_features": X.shape[-1], "hidden": self.hidden_size,
                "state_size": self.state_size, "n_layers": self.n_layers}

    def _build_module(self, **params):
        return _StateSpaceNet(**params)

    def _init_module(self, module, X, train_idx):
        _standardise_channels(module, X, train_idx)

    def _loss(self, module, batch, generator):
        return module.errors(batch).mean()

    # ONNX (legacy exporter, opset 17) has no complex-number operators.
    _not_exportable = "its state-space scan computes in complex numbers, which ONNX cannot hold"

    def _module_scores(self, module, batch):
        return module.errors(batch)
