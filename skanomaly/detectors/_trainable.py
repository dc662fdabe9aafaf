"""Training loop, early stopping and persistence shared by the trainable heads.

A trainable head owns one ``torch.nn.Module`` (``module_``) built by
``_build_module`` from plain arguments kept in ``module_params_``; pickling
stores those arguments and the module's state dict as CPU numpy arrays, so a
head trained on a GPU loads on a CPU, and no live module, optimizer or device
tensor enters the pickle.
"""

import contextlib
import numbers
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval

from .._torch import _device_or_cpu, _resolve_device
from ..backbones import _as_numpy_state
from ._base import _BaseDetector, _smoothed_max, _torch_smoothed_max, _TorchGaussianBlur

# Images scored per forward pass when no gradient is needed.
_SCORE_BATCH = 32


def _standardise_channels(module, X, idx, chunk=32, prepare=None):
    """Set ``module.mean`` / ``module.scale`` to the per-channel mean and standard
    deviation of the grids ``X[idx]``, read in chunks (each passed through
    ``prepare`` first when given: what the module makes of its input)."""
    total = squares = None
    count = 0
    for start in range(0, len(idx), chunk):
        block = np.ascontiguousarray(X[idx[start:start + chunk]])
        if prepare is not None:
            block = prepare(block)
        block = block.reshape(-1, block.shape[-1]).astype(np.float64)
        if total is None:
            total = np.zeros(block.shape[-1])
            squares = np.zeros(block.shape[-1])
        total += block.sum(0)
        squares += (block**2).sum(0)
        count += len(block)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    module.mean.copy_(torch.from_numpy(mean.astype(np.float32)))
    module.scale.copy_(torch.from_numpy(np.maximum(std, 1e-6).astype(np.float32)))


def _state_copy(module):
    """A detached copy of ``module``'s state dict."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _load_numpy_state(module, state):
    module.load_state_dict({key: torch.from_numpy(np.array(v)) for key, v in state.items()})


class _EpochBar:
    """A tqdm bar over epochs showing the losses, or nothing."""

    def __init__(self, total, enabled, desc):
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="epoch")

    def update(self, **losses):
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items() if v is not None})
            self._bar.update(1)

    def close(self):
        if self._bar is not None:
            self._bar.close()


def _train_stage(optimizer, idx, epochs, batch_size, order_rng, bar, batch_loss):
    """Plain epochs of a fit's preliminary stage (a teacher, a codebook):
    shuffle ``idx``, step ``optimizer`` on ``batch_loss(sorted chunk)`` for
    near-equal chunks of ``batch_size``; return each epoch's mean loss."""
    curve = []
    try:
        for _ in range(epochs):
            order = idx[order_rng.permutation(len(idx))]
            total = 0.0
            for chunk in np.array_split(order, -(-len(order) // batch_size)):
                loss = batch_loss(np.sort(chunk))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(chunk)
            curve.append(total / len(order))
            bar.update(loss=curve[-1])
    finally:
        bar.close()
    return curve


class _WeightAverage:
    """Exponential moving average of a module's weights over optimiser steps.

    ``half_life`` is in epochs of ``steps_per_epoch`` steps, so the averaging
    window does not depend on how many images or batches a data set has;
    None keeps no average (every method is then a no-op and the live weights
    are what is validated and kept). Integer buffers follow the live module.
    """

    def __init__(self, module, half_life, steps_per_epoch):
        self._state = None
        if half_life is None:
            return
        self._keep = 0.5 ** (1.0 / (half_life * steps_per_epoch))
        self._state = _state_copy(module)

    def update(self, module):
        if self._state is None:
            return
        with torch.no_grad():
            for key, value in module.state_dict().items():
                mean = self._state[key]
                if mean.is_floating_point():
                    mean.lerp_(value.detach(), 1.0 - self._keep)
                else:
                    mean.copy_(value)

    @contextlib.contextmanager
    def swapped_in(self, module):
        """Run the block with the averaged weights in ``module``."""
        if self._state is None:
            yield
            return
        live = _state_copy(module)
        module.load_state_dict(self._state)
        try:
            yield
        finally:
            module.load_state_dict(live)

    def load_into(self, module):
        if self._state is not None:
            module.load_state_dict(self._state)


class _TrainableDetector(_BaseDetector):
    """Base of heads whose model is trained by gradient descent.

    Subclasses implement

    - ``_module_params(X, fit_idx)``: dict of plain arguments for
      ``_build_module`` (may look at the training data, e.g. feature
      statistics given as lists of floats);
    - ``_build_module(**params)``: a fresh ``torch.nn.Module``;
    - optionally ``_init_module(module, X, train_idx)``: set data-dependent
      buffers (feature statistics, cached teacher outputs) of a new module;
    - ``_loss(module, batch, generator)``: scalar training loss of a batch
      tensor (N, ...) already on the device, module in train mode (or of
      what ``_training_batch`` gives, when overridden);
    - ``_module_scores(module, batch)``: patch anomaly scores (N, h, w) of a
      batch in eval mode, under ``torch.no_grad``.

    and may override ``_make_optimizer(module)``.
    """

    _parameter_constraints = {
        **_BaseDetector._parameter_constraints,
        "max_epochs": [Interval(numbers.Integral, 1, None, closed="left")],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "learning_rate": [Interval(numbers.Real, 0, None, closed="neither")],
        "validation_fraction": [Interval(numbers.Real, 0, 1, closed="left")],
        "n_iter_no_change": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "warm_start": ["boolean"],
        "device": [str],
        "verbose": ["verbose"],
    }

    # -- subclass hooks --------------------------------------------------------
    def _init_module(self, module, X, train_idx):
        pass

    def _make_optimizer(self, module):
        params = [p for p in module.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.learning_rate)

    def _batch_tensor(self, module, X, idx):
        """The rows ``X[idx]`` as ``_module_scores`` takes them, on the device."""
        return self._module_input(module, torch.from_numpy(np.ascontiguousarray(X[idx])).to(self._device_))

    def _module_input(self, module, grids):
        """What ``_module_scores`` takes for an (n, h, w, d) tensor of rows
        (channels first); also the exported graph's way in."""
        return grids.permute(0, 3, 1, 2)

    def _training_batch(self, module, X, idx):
        """What ``_loss`` receives for the rows ``X[idx]`` (training and
        validation); a head may add what it caches per row."""
        return self._batch_tensor(module, X, idx)

    # -- training --------------------------------------------------------------
    def fit(self, X, y=None):
        """Train on normal samples, stopping early on held-out ones, then calibrate.

        A ``calibration_size`` share of the samples is held out for the
        threshold and, of the rest, a ``validation_fraction`` share for early
        stopping; the model trains on the others.

        Parameters
        ----------
        X : array-like of shape (n_images, h, w, n_features)
            Normal samples.
        y : ignored

        Returns
        -------
        self : object
            Fitted detector.
        """
        if self.warm_start and hasattr(self, "module_"):
            n_features = np.shape(X)[-1] if np.ndim(X) >= 2 else None
            if n_features != self.n_features_in_:
                raise ValueError(
                    f"warm_start=True continues training a model of "
                    f"{self.n_features_in_} features, but X has {n_features}; "
                    "set warm_start=False to train a new model."
                )
        return super().fit(X, y)

    def _split_validation(self, fit_idx, rng):
        """Held-out images for early stopping (never the calibration ones)."""
        n_val = int(round(self.validation_fraction * len(fit_idx)))
        if self.n_iter_no_change is None or n_val < 1 or len(fit_idx) - n_val < 1:
            return fit_idx, fit_idx[:0]
        order = rng.permutation(len(fit_idx))
        return np.sort(fit_idx[order[n_val:]]), np.sort(fit_idx[order[:n_val]])

    def _mean_loss(self, module, X, idx, generator):
        module.eval()
        total = 0.0
        with torch.no_grad():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                total += float(self._loss(module, self._training_batch(module, X, chunk), generator)) * len(chunk)
        return total / len(idx)

    def _fit_normal(self, X, fit_idx, rng):
        self._device_ = _resolve_device(self.device)
        train_idx, val_idx = self._split_validation(fit_idx, rng)
        if len(train_idx) < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 training samples once "
                f"{len(val_idx)} are held out for early stopping and the "
                "calibration ones are set aside; give it more normal images or "
                "lower validation_fraction / calibration_size."
            )
        seed = int(rng.randint(np.iinfo(np.int32).max))
        warm = self.warm_start and hasattr(self, "module_")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if warm:
                module = self.module_.to(self._device_)
            else:
                self.module_params_ = self._module_params(X, train_idx)
                module = self._build_module(**self.module_params_).to(self._device_)
                self._init_module(module, X, train_idx)
        # Noise, masks and shuffles come from these generators only, so two
        # fits with the same random_state give the same model on a CPU.
        generator = torch.Generator(device=self._device_).manual_seed(seed)
        val_generator = torch.Generator(device=self._device_)
        optimizer = self._make_optimizer(module)
        order_rng = np.random.RandomState(seed)

        losses, val_losses = [], []
        best, best_state, stale = np.inf, None, 0
        # Near-equal batches: never a lone last sample, which batch norm
        # cannot train on.
        n_batches = -(-len(train_idx) // self.batch_size)
        # Heads with an ema_half_life parameter (FlowDetector) validate and
        # keep an average of their weights; the others their last ones.
        average = _WeightAverage(module, getattr(self, "ema_half_life", None), n_batches)
        bar = _EpochBar(self.max_epochs, self.verbose, type(self).__name__)
        try:
            for _ in range(self.max_epochs):
                module.train()
                order = train_idx[order_rng.permutation(len(train_idx))]
                total = 0.0
                for chunk in np.array_split(order, n_batches):
                    chunk = np.sort(chunk)
                    loss = self._loss(module, self._training_batch(module, X, chunk), generator)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"{type(self).__name__}: the training loss became "
                            f"{float(loss)}; lower learning_rate (now "
                            f"{self.learning_rate:g})."
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    average.update(module)
                    total += float(loss.detach()) * len(chunk)
                losses.append(total / len(order))
                val_loss = None
                if len(val_idx):
                    val_generator.manual_seed(seed + 1)  # the same noise every epoch
                    with average.swapped_in(module):
                        val_loss = self._mean_loss(module, X, val_idx, val_generator)
                        if val_loss < best:
                            best, best_state, stale = val_loss, _state_copy(module), 0
                        else:
                            stale += 1
                    val_losses.append(val_loss)
                bar.update(loss=losses[-1], val_loss=val_loss)
                if len(val_idx) and stale >= self.n_iter_no_change:
                    break
        finally:
            bar.close()
        if best_state is not None:
            module.load_state_dict(best_state)
        else:
            average.load_into(module)
        module.eval()
        self.module_ = module
        self.loss_curve_ = losses
        self.validation_loss_curve_ = val_losses
        self.n_iter_ = len(losses)
        if len(val_idx) and stale < self.n_iter_no_change:
            warnings.warn(
                f"{type(self).__name__} reached max_epochs={self.max_epochs} before "
                f"the validation loss stopped improving (its best epoch was "
                f"{len(val_losses) - stale} of {len(val_losses)}); raise max_epochs "
                "for a better model.",
                ConvergenceWarning,
                stacklevel=5,
            )

    # -- scoring ---------------------------------------------------------------
    def _patch_scores(self, X):
        module = self.module_
        module.eval()
        out = None
        with torch.no_grad():
            for start in range(0, X.shape[0], _SCORE_BATCH):
                idx = np.arange(start, min(start + _SCORE_BATCH, X.shape[0]))
                scores = self._module_scores(module, self._batch_tensor(module, X, idx))
                scores = scores.float().cpu().numpy()
                if out is None:
                    out = np.empty((X.shape[0],) + scores.shape[1:], dtype=np.float32)
                out[idx] = scores
        return out

    def _patch_and_image_scores(self, X):
        # Heads with an image_score_sigma parameter blur the map before the
        # maximum; the others take the largest raw patch score.
        patches = self._patch_scores(X)
        return patches, _smoothed_max(patches, getattr(self, "image_score_sigma", 0.0))

    # -- ONNX export (skanomaly.export) ------------------------------------------
    _not_exportable = None

    def _export_graph(self):
        return _TrainableGraph(self)

    # -- persistence -------------------------------------------------------------
    def __getstate__(self):
        state = dict(super().__getstate__())
        module = state.pop("module_", None)
        state.pop("_device_", None)
        if module is not None:
            state["_module_state"] = _as_numpy_state(module)
        return state

    def __setstate__(self, state):
        module_state = state.pop("_module_state", None)
        super().__setstate__(state)
        if module_state is not None:
            device = _device_or_cpu(self.device)
            module = self._build_module(**self.module_params_)
            _load_numpy_state(module, module_state)
            self.module_ = module.to(device).eval()
            self._device_ = device


class _PixelHeadMixin:
    """For heads that run their own network on normalised pixels (after
    ``ImagePreprocessor``) instead of taking frozen features: the input
    check, naming the factory that builds the right pipeline."""

    # Smallest image side the head's networks take.
    _min_image_side = 32
    # The factory a user should reach for, named in the error.
    _factory_name = None

    def _check_features(self, X, *, reset):
        if getattr(X, "ndim", None) != 4 or X.shape[-1] != 3:
            raise ValueError(
                f"{type(self).__name__} runs a network on images: give it "
                "normalised pixels of shape (n, height, width, 3) from "
                f"ImagePreprocessor (see {self._factory_name}), not features of "
                f"shape {np.shape(X)}."
            )
        X = super()._check_features(X, reset=reset)
        if min(X.shape[1:3]) < self._min_image_side:
            side = self._min_image_side
            raise ValueError(f"Images must be at least {side} x {side} pixels, got {X.shape[1:3]}.")
        return X


class _TrainableGraph(torch.nn.Module):
    """A trained head's scoring (``_patch_and_image_scores``) as one module
    an ONNX graph can hold: its network on the rows, then the image score."""

    def __init__(self, head):
        super().__init__()
        self.module = head.module_
        self._head = head  # plain attribute: its methods, not its state
        sigma = getattr(head, "image_score_sigma", 0.0)
        self.blur = _TorchGaussianBlur(sigma) if sigma else None

    def forward(self, grids):
        head, module = self._head, self.module
        patch = head._module_scores(module, head._module_input(module, grids)).float()
        return patch, _torch_smoothed_max(patch, self.blur)
