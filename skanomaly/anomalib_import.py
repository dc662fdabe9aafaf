"""anomalib PatchCore and PaDiM checkpoints as skanomaly pipelines, without anomalib.

:func:`load_anomalib_checkpoint` reads a Lightning ``.ckpt`` that anomalib
2.x wrote for its ``Patchcore`` model (backbone name, layers, number of
neighbours, pre-processing, feature-extractor weights and memory bank) or
its ``Padim`` model (channel subset, per-position Gaussians, blur kernel) and
returns a fitted :class:`~skanomaly.streaming.StreamingPipeline` whose image
scores are anomalib's ``pred_score`` (before its min-max normalisation),
negated to scikit-learn's convention (higher = more normal). The file is
read without running code from it: the pickle inside is unpickled with every
class outside a short list of torch's tensor builders replaced by an inert
stand-in, so anomalib need not be installed, and a crafted file cannot run
anything. The threshold is set as every skanomaly head sets it, from normal
images the bank has not seen (``calibration_images``).
"""

import collections
import os
import pickle
import types

import numpy as np
import torch
import torch.nn.functional as F

from .detectors import GaussianDetector
from .detectors._base import _TorchGaussianBlur

__all__ = ["load_anomalib_checkpoint"]

# The only callables a checkpoint's pickle may reach: torch's tensor and
# parameter builders and plain containers. Everything else becomes _Inert.
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}
_PREFIX = "model.feature_extractor.feature_extractor."


class _Inert:
    """Stands for any class the checkpoint names: keeps its arguments and
    state as data, runs nothing."""

    _origin = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args = args
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<{self._origin} {self.args!r}>"


class _SafeUnpickler(pickle.Unpickler):
    _inert = {}

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        key = f"{module}.{name}"
        if key not in self._inert:
            self._inert[key] = type(name, (_Inert,), {"_origin": key})
        return self._inert[key]


_SAFE_PICKLE = types.SimpleNamespace(__name__="skanomaly_safe_pickle", Unpickler=_SafeUnpickler,
                                     load=lambda f, **kw: _SafeUnpickler(f, **kw).load())


def _read_checkpoint(path):
    """The checkpoint's dict, its foreign objects inert; ValueError when it
    is not a PatchCore or PaDiM checkpoint of anomalib 2.x."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path!r} does not exist.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False,
                                pickle_module=_SAFE_PICKLE)
    except Exception as exc:  # not a torch file, truncated, another format
        raise ValueError(f"{path!r} is not a readable Lightning checkpoint "
                         f"({type(exc).__name__}: {exc}).") from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    hyper = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not isinstance(hyper, dict) or _model_kind(state) is None:
        raise ValueError(
            f"{path!r} is not an anomalib PatchCore or PaDiM checkpoint (it needs a state_dict "
            "with model.memory_bank, or with model.idx, model.gaussian.mean and "
            "model.gaussian.inv_covariance, and the model's hyper_parameters)."
        )
    odd = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if odd:  # a tensor stored by a builder this reader does not let through
        raise ValueError(f"{path!r}: state_dict entries {odd[:3]} are not plain tensors; "
                         "this reader takes the tensors torch.save writes.")
    return checkpoint


def _model_kind(state):
    """``"patchcore"``, ``"padim"`` or None, from the state_dict's keys."""
    if "model.memory_bank" in state:
        return "patchcore"
    if {"model.idx", "model.gaussian.mean", "model.gaussian.inv_covariance"} <= state.keys():
        return "padim"
    return None


def _preprocessing(checkpoint, path):
    """``(image_size, mean, std)`` from anomalib's pre-processor record."""
    config = checkpoint.get("anomalib_pre_processor_config") or {}
    steps = (config.get("transform") or {}).get("init_args", {}).get("transforms", [])
    size, mean, std = (256, 256), None, None
    for step in steps:
        kind = step.get("class_path", "").rsplit(".", 1)[-1]
        args = step.get("init_args", {})
        if kind == "Resize":
            size = tuple(args["size"]) if isinstance(args["size"], (list, tuple)) else (args["size"],) * 2
        elif kind == "Normalize":
            mean, std = tuple(args["mean"]), tuple(args["std"])
        else:
            raise ValueError(
                f"{path!r}: anomalib's pre-processing has a {kind} step; only Resize and "
                "Normalize are read (a center crop, for one, changes what the model sees)."
            )
    return size, mean, std


def load_anomalib_checkpoint(path, calibration_images, *, contamination=0.05, batch_size=16,
                             random_state=None):
    """A fitted skanomaly pipeline from an anomalib 2.x PatchCore or PaDiM checkpoint.

    anomalib need not be installed, and no code from the file runs (see
    the module notes). The first step is
    ``PatchEmbedder("timm/<backbone>", layers=...)`` with the checkpoint's
    feature-extractor weights, image size and normalisation; the second
    holds the fitted model:

    - **PatchCore**: a :class:`~skanomaly.KNNDetector` with anomalib's memory
      bank as ``memory_bank_`` and its ``n_neighbors``; ``score_samples`` is
      minus anomalib's raw image score (the nearest-bank-patch distance
      re-weighted as PatchCore's equation 7).
    - **PaDiM**: a :class:`~skanomaly.GaussianDetector` with anomalib's
      per-position means and inverse covariances, on anomalib's channel
      subset (the embedder's ``feature_indices_``, in anomalib's order) of
      the taps resized to the finest by repetition (``upsampling="nearest"``);
      ``score_samples`` is minus anomalib's image score, the maximum of the
      Mahalanobis map upsampled to the image and blurred with anomalib's
      own kernel.

    So ``roc_auc_score`` and rankings are anomalib's; the threshold,
    p-values and pixel threshold come from ``calibration_images``, as for
    any skanomaly head. Anomaly maps are skanomaly's (:func:`~skanomaly.anomaly_maps`
    on the same patch scores).

    Parameters
    ----------
    path : str or path-like
        The ``.ckpt`` file (e.g. ``results/Patchcore/<data>/v0/weights/lightning/model.ckpt``).
    calibration_images : list of images
        Normal images that were not in the model's training set (say, 20 to
        100 held-out good parts): their scores set ``offset_``.
    contamination : float in (0, 0.5], default=0.05
        The false-alarm rate on normal images the threshold aims at.
    batch_size : int, default=16
        Images per backbone batch.
    random_state : int or None, default=None
        Passed to the head (it draws nothing when scoring).

    Returns
    -------
    pipeline : StreamingPipeline
        Fitted; ``joblib`` and ``skanomaly.persistence`` save it as any other.
        ``pipeline.steps[-1][1].anomalib_image_threshold_`` keeps anomalib's
        own adaptive threshold (raw scale) for reference.

    Raises
    ------
    ValueError
        For a file that is not an anomalib PatchCore or PaDiM checkpoint, a
        pre-processing step other than Resize and Normalize, weights that do
        not fit the named backbone, statistics that do not fit its taps, or
        no calibration images.
    FileNotFoundError
        When ``path`` does not exist.

    Examples
    --------
    >>> from skanomaly.anomalib_import import load_anomalib_checkpoint
    >>> load_anomalib_checkpoint("missing.ckpt", [])
    Traceback (most recent call last):
    ...
    FileNotFoundError: Checkpoint 'missing.ckpt' does not exist.
    """
    from .embedders import PatchEmbedder
    from .images import check_images
    from .streaming import StreamingPipeline

    checkpoint = _read_checkpoint(path)
    if len(calibration_images) == 0:
        raise ValueError("The threshold needs calibration images (normal images that were not "
                         "in the model's training set); got none.")
    calibration_images = check_images(calibration_images)
    hyper, state = checkpoint["hyper_parameters"], checkpoint["state_dict"]
    backbone = hyper.get("backbone")
    layers = list(hyper.get("layers") or [])
    if not isinstance(backbone, str) or not layers:
        raise ValueError(f"{os.fspath(path)!r}: its hyper_parameters name no backbone and layers.")
    size, mean, std = _preprocessing(checkpoint, path)
    weights = _backbone_weights(backbone, state, path)
    kind = _model_kind(state)
    common = dict(weights=weights, layers=layers, image_size=size, batch_size=batch_size)
    if kind == "padim":
        embedder = PatchEmbedder(f"timm/{backbone}", aggregation_size=1, upsampling="nearest",
                                 **common).fit(None)
        indices = state["model.idx"].long().numpy()
        total = embedder.n_features_out_
        if (indices.ndim != 1 or len(indices) == 0 or indices.min() < 0 or indices.max() >= total
                or len(np.unique(indices)) != len(indices)):
            raise ValueError(f"{os.fspath(path)!r}: model.idx does not pick distinct channels "
                             f"among the {total} of {backbone!r}'s taps {layers}.")
        # anomalib's channel subset, in its order (its statistics follow it).
        embedder.set_params(n_features=len(indices), reduction="random")
        embedder.feature_indices_, embedder.n_features_out_ = indices, len(indices)
    else:
        embedder = PatchEmbedder(f"timm/{backbone}", **common).fit(None)
    spec = embedder.backbone_
    if mean is not None and (not np.allclose(spec.mean, mean) or not np.allclose(spec.std, std)):
        raise ValueError(
            f"{os.fspath(path)!r} normalises with mean {mean} and std {std}; timm's "
            f"{backbone!r} expects {tuple(spec.mean)} / {tuple(spec.std)}, which skanomaly uses."
        )
    grids = embedder.transform(calibration_images)
    if kind == "padim":
        head = _padim_head(state, grids, size, path, contamination=contamination,
                           random_state=random_state)
        step = "gaussiandetector"
    else:
        from .detectors import KNNDetector

        bank = state["model.memory_bank"].float().numpy()
        head = KNNDetector._from_memory_bank(
            bank, grids, n_neighbors=int(hyper.get("num_neighbors", 9)),
            contamination=contamination, random_state=random_state,
        )
        step = "knndetector"
    threshold = state.get("post_processor._image_threshold")
    head.anomalib_image_threshold_ = float(threshold) if threshold is not None else float("nan")
    return StreamingPipeline([("patchembedder", embedder), (step, head)], batch_size=batch_size)


def _padim_head(state, grids, image_shape, path, **params):
    """An :class:`_AnomalibPadimDetector` holding the checkpoint's Gaussians,
    calibrated on ``grids``."""
    mean = state["model.gaussian.mean"].double().numpy()  # (d, positions)
    inverse = state["model.gaussian.inv_covariance"].double().numpy()  # (positions, d, d)
    _, h, w, d = grids.shape
    if mean.shape != (d, h * w) or inverse.shape != (h * w, d, d):
        raise ValueError(
            f"{os.fspath(path)!r}: its Gaussians are {tuple(mean.shape)} means and "
            f"{tuple(inverse.shape)} inverse covariances, but its taps give {h} x {w} grids "
            f"of {d} features at its image size {tuple(image_shape)}."
        )
    kernel = state.get("model.anomaly_map_generator.blur.kernel")
    if kernel is None:  # anomalib's default: sigma 4, a 33 x 33 window
        kernel = _gaussian_kernel(4.0)
    head = _AnomalibPadimDetector(regularization=0.0, calibration_in_model=False, **params)
    head._validate_params()
    head.mean_ = np.ascontiguousarray(mean.T.reshape(h, w, d), dtype=np.float32)
    head.precision_ = np.ascontiguousarray(inverse.reshape(h, w, d, d), dtype=np.float32)
    _, logdet = np.linalg.slogdet(inverse)
    head._logdet = -logdet  # of the covariance, for score_type="nll"
    head.pca_ = None
    head._grid_shape = (h, w)
    head.image_shape_ = tuple(int(v) for v in image_shape)
    head.blur_kernel_ = np.asarray(kernel, dtype=np.float32).reshape(kernel.shape[-2:])
    X = head._check_features(grids, reset=True)
    head._calibrate(X, np.arange(X.shape[0]), None)
    return head


def _gaussian_kernel(sigma):
    """anomalib's ``GaussianBlur2d`` kernel: ``2 * int(4 sigma + 0.5) + 1`` wide,
    sums to 1; the outer product of our maps' blur kernel with itself."""
    line = _TorchGaussianBlur(sigma).kernel.double().numpy()
    return np.outer(line, line)


class _BlurredMapMaximum(torch.nn.Module):
    """anomalib PaDiM's image score from the patch map (n, h, w): upsampled
    (bilinear) to the image, blurred by the kernel with reflected borders,
    its maximum."""

    def __init__(self, kernel, image_shape):
        super().__init__()
        self.register_buffer("kernel", torch.as_tensor(np.asarray(kernel, np.float32))[None, None])
        self.image_shape = tuple(image_shape)

    def forward(self, patch):
        x = F.interpolate(patch[:, None], size=self.image_shape, mode="bilinear",
                          align_corners=False)
        kh, kw = self.kernel.shape[-2:]
        x = F.pad(x, ((kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2), mode="reflect")
        return F.conv2d(x, self.kernel).amax(dim=(1, 2, 3))


class _AnomalibPadimDetector(GaussianDetector):
    """A :class:`~skanomaly.GaussianDetector` holding an anomalib PaDiM
    model's Gaussians, scoring images as anomalib does (see
    :class:`_BlurredMapMaximum`). Fitting it again fits a skanomaly PaDiM
    head with that image score."""

    def _can_partial_fit(self):
        return False  # anomalib keeps no sums to continue from

    def _patch_and_image_scores(self, X):
        patch, _ = super()._patch_and_image_scores(X)
        with torch.inference_mode():
            image = self._image_score(torch.from_numpy(np.ascontiguousarray(patch)))
        return patch, image.numpy().astype(np.float64)

    @property
    def _image_score(self):
        return _BlurredMapMaximum(self.blur_kernel_, self.image_shape_)

    def _export_graph(self):
        return _ImportedPadimGraph(super()._export_graph(), self._image_score)


class _ImportedPadimGraph(torch.nn.Module):
    def __init__(self, gaussian, image_score):
        super().__init__()
        self.gaussian = gaussian
        self.image_score = image_score

    def forward(self, grids):
        patch, _ = self.gaussian(grids)
        return patch, self.image_score(patch)


def _backbone_weights(backbone, state, path):
    """A complete state dict for timm's ``backbone``: the checkpoint's
    feature-extractor tensors, and the architecture's own initial values for
    the modules a ``features_only`` extractor drops (the classifier, stages
    after the last tap), which the taps never use."""
    from .backbones import _build_architecture

    taken = {k[len(_PREFIX):]: v.float() for k, v in state.items() if k.startswith(_PREFIX)}
    if not taken:
        raise ValueError(f"{os.fspath(path)!r} holds no feature-extractor weights ({_PREFIX}*).")
    model = _build_architecture(f"timm/{backbone}").model
    full = model.state_dict()
    unexpected = sorted(set(taken) - set(full))
    present = {key.split(".", 1)[0] for key in taken}
    # A top-level module the extractor kept must come whole from the file.
    missing = sorted(k for k in full if k not in taken and k.split(".", 1)[0] in present)
    if unexpected or missing:
        raise ValueError(
            f"The weights in {os.fspath(path)!r} do not fit timm's {backbone!r}: "
            f"unexpected {unexpected[:5]}, missing {missing[:5]}."
        )
    for key, value in taken.items():
        if value.shape != full[key].shape:
            raise ValueError(f"The weights in {os.fspath(path)!r} do not fit timm's "
                             f"{backbone!r}: {key} is {tuple(value.shape)}, "
                             f"expected {tuple(full[key].shape)}.")
    full.update(taken)
    # numpy arrays: a skops file stores them (it refuses torch tensors).
    return {key: value.detach().numpy().copy() for key, value in full.items()}
