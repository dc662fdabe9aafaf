"""Export a fitted pipeline to one ONNX graph for torch-free inference.

The graph takes RGB images in ``[0, 1]`` at the model's input size, shape
``(n, 3, H, W)`` float32, and gives three outputs: ``image_scores`` (n,),
higher = more anomalous (minus ``score_samples``); ``patch_scores``
(n, h, w), the head's ``score_patches``; ``maps`` (n, H, W), the patch
scores upsampled and blurred at the input size as
:func:`~skanomaly.anomaly_maps` does before its last resize. Everything else
a prediction needs (input size, threshold, calibration scores for p-values,
pixel threshold, blur) is stored as JSON in the model's metadata, so the
file loads without running code. :mod:`skanomaly_runtime` reads it with
numpy, Pillow and onnxruntime (or OpenVINO) only.
"""

import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skanomaly_runtime import _FORMATS, _METADATA_KEY
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .calibration import _pixel_threshold_of
from .detectors._base import _TorchGaussianBlur
from .embedders import PatchEmbedder
from .persistence import _written_in_one_go
from .preprocessing import ImagePreprocessor

__all__ = ["export_refusal", "to_onnx"]

# The metadata layout written: the newest one skanomaly_runtime reads.
_FORMAT = _FORMATS[-1]


class _Exported(nn.Module):
    """Normalise, embed, score, draw: the whole pipeline on resized images."""

    def __init__(self, embedder, head_graph, model_shape, sigma):
        super().__init__()
        self.embedder = embedder
        if isinstance(embedder, PatchEmbedder):
            self.backbone = embedder.backbone_.model  # registered: its weights go in the graph
        else:
            self.register_buffer("mean", torch.from_numpy(embedder.mean_).view(1, 3, 1, 1))
            self.register_buffer("std", torch.from_numpy(embedder.std_).view(1, 3, 1, 1))
        self.head = head_graph
        self.model_shape = tuple(model_shape)
        self.blur = _TorchGaussianBlur(sigma) if sigma > 0 else None

    def forward(self, images):
        if isinstance(self.embedder, PatchEmbedder):
            feats = self.embedder._embed(self.embedder.backbone_.normalize(images))
        else:  # ImagePreprocessor: normalised pixels, channels last
            feats = ((images - self.mean) / self.std).permute(0, 2, 3, 1)
        patch, image = self.head(feats)
        maps = F.interpolate(patch[:, None], size=self.model_shape, mode="bilinear",
                             align_corners=False)[:, 0]
        if self.blur is not None:
            maps = self.blur(maps)
        return image, patch, maps


def _embedder_of(pipeline):
    reason = export_refusal(pipeline)
    if reason is not None:
        what = pipeline.steps[-1][1] if isinstance(pipeline, Pipeline) else pipeline
        raise ValueError(f"{type(what).__name__} cannot be exported to ONNX: {reason}.")
    embedder, head = pipeline.steps[0][1], pipeline.steps[-1][1]
    check_is_fitted(embedder)
    check_is_fitted(head)
    return embedder, head


def export_refusal(pipeline):
    """Why ``pipeline`` cannot be exported, or None when it can (fitted or not).

    Parameters
    ----------
    pipeline : Pipeline
        E.g. a factory's output; it need not be fitted.

    Returns
    -------
    reason : str or None

    Examples
    --------
    >>> from skanomaly import make_patchcore, make_spade
    >>> from skanomaly.export import export_refusal
    >>> export_refusal(make_patchcore()) is None
    True
    >>> export_refusal(make_spade())
    "mode='spade' searches a different support set per image"
    """
    if not isinstance(pipeline, Pipeline) or len(pipeline.steps) != 2:
        steps = f" of {len(pipeline.steps)} steps" if isinstance(pipeline, Pipeline) else ""
        return (f"only a Pipeline of an embedder and a head is exportable (e.g. "
                f"make_patchcore()), got a {type(pipeline).__name__}{steps}")
    embedder, head = pipeline.steps[0][1], pipeline.steps[-1][1]
    if not isinstance(embedder, (PatchEmbedder, ImagePreprocessor)):
        return (f"the pipeline starts with {type(embedder).__name__}; only PatchEmbedder "
                "and ImagePreprocessor pipelines are exportable yet")
    if getattr(embedder, "tile_size", None) is not None:
        return "its PatchEmbedder embeds tile by tile (tile_size), which is not exported yet"
    if not hasattr(head, "_export_graph"):
        return f"its graph ({type(head).__name__}) is not exportable yet"
    return head._not_exportable


def to_onnx(pipeline, path, *, sigma=4.0, opset=17):
    """Write a fitted pipeline as one ONNX graph with its metadata.

    Parameters
    ----------
    pipeline : Pipeline
        A fitted :class:`~skanomaly.PatchEmbedder` + head pipeline, e.g. from
        :func:`~skanomaly.make_patchcore` or :func:`~skanomaly.make_padim`.
        Heads that cannot be exported raise a ``ValueError`` saying why.
    path : str or path-like
        The ``.onnx`` file to write. It is written to a temporary file first
        and moved into place, so a failed export leaves no partial file.
    sigma : float, default=4.0
        Blur of the maps, in pixels at the model's input size, as
        ``anomaly_maps(..., sigma=)``; 0 disables it.
    opset : int, default=17
        ONNX operator set.

    Returns
    -------
    path : pathlib.Path
        The written file.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from skanomaly import make_patchcore
    >>> from skanomaly.export import to_onnx
    >>> pipe = make_patchcore(image_size=64, random_state=0).fit(
    ...     np.random.default_rng(0).random((6, 64, 64, 3)))
    >>> path = to_onnx(pipe, os.path.join(tempfile.mkdtemp(), "model.onnx"))
    >>> path.suffix
    '.onnx'
    """
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}.")
    embedder, head = _embedder_of(pipeline)
    import onnx

    from . import __version__

    height, width = embedder.image_shape_
    # Traced on the CPU whatever device the model runs on.
    devices = [(step, step._device_) for step in (embedder, head) if hasattr(step, "_device_")]
    for step, _ in devices:
        _move(step, torch.device("cpu"))
    path = Path(path)
    try:
        module = _Exported(embedder, head._export_graph(), (height, width), sigma).eval()
        example = torch.rand(1, 3, height, width)
        with torch.no_grad():
            has_maps = tuple(module(example)[1].shape[1:]) != (1, 1)  # as anomaly_maps decides
        with _written_in_one_go(path) as tmp, torch.no_grad(), warnings.catch_warnings():
            # The tracer flags constants (the input size, the bank's norms)
            # that are constant by design; the export is checked against
            # the estimator in the tests, so the warning tells a user nothing.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                module, (example,), tmp, dynamo=False, opset_version=opset,
                input_names=["images"], output_names=["image_scores", "patch_scores", "maps"],
                dynamic_axes={name: {0: "n"} for name in
                              ("images", "image_scores", "patch_scores", "maps")},
            )
            model = onnx.load(tmp)
            entry = model.metadata_props.add()
            entry.key = _METADATA_KEY
            entry.value = json.dumps(_metadata(embedder, head, sigma, has_maps, __version__))
            onnx.save(model, tmp)
    finally:
        for step, device in devices:
            _move(step, device)
    return path


def _move(step, device):
    """Put a fitted step's torch state on ``device``."""
    for name in ("backbone_", "module_"):
        part = getattr(step, name, None)
        if part is not None:
            (part.model if name == "backbone_" else part).to(device)
    step._device_ = device


def _markdown_table():
    """The documentation's table of which registry methods export, and why not."""
    from .registry import available_methods

    lines = ["| method | ONNX export |", "|---|---|"]
    for name, info in available_methods().items():
        reason = export_refusal(info.factory())
        lines.append(f"| `{name}` | {'yes' if reason is None else 'no: ' + reason} |")
    return "\n".join(lines) + "\n"


def _metadata(embedder, head, sigma, has_maps, version):
    return {
        "format": _FORMAT,
        "skanomaly_version": version,
        "head": type(head).__name__,
        "input_shape": [int(s) for s in embedder.image_shape_],
        "sigma": float(sigma),
        "offset": float(head.offset_),
        "contamination": float(head.contamination),
        "calibration_scores": [float(s) for s in np.asarray(head.calibration_scores_)],
        "maps": bool(has_maps),
        # None for heads that score whole images: they draw no map to threshold.
        "pixel_threshold": (_pixel_threshold_of(head, None, tuple(embedder.image_shape_), sigma)
                            if has_maps else None),
    }
