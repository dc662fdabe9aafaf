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
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .calibration import pixel_threshold
from .detectors._base import _TorchGaussianBlur
from .embedders import PatchEmbedder

__all__ = ["export_refusal", "to_onnx"]

# Version of the metadata layout that skanomaly_runtime reads.
_FORMAT = 1
_METADATA_KEY = "skanomaly"


class _Exported(nn.Module):
    """Normalise, embed, score, draw: the whole pipeline on resized images."""

    def __init__(self, embedder, head_graph, model_shape, sigma):
        super().__init__()
        self.embedder = embedder
        self.backbone = embedder.backbone_.model  # registered: its weights go in the graph
        self.head = head_graph
        self.model_shape = tuple(model_shape)
        self.blur = _TorchGaussianBlur(sigma) if sigma > 0 else None

    def forward(self, images):
        feats = self.embedder._embed(self.embedder.backbone_.normalize(images))
        patch, image = self.head(feats)
        maps = F.interpolate(patch[:, None], size=self.model_shape, mode="bilinear",
                             align_corners=False)[:, 0]
        if self.blur is not None:
            maps = self.blur(maps)
        return image, patch, maps


def _embedder_of(pipeline):
    if not isinstance(pipeline, Pipeline) or len(pipeline.steps) != 2:
        raise ValueError(
            "to_onnx exports a fitted Pipeline of a patch embedder and a head "
            f"(e.g. make_patchcore()), got {type(pipeline).__name__}"
            + (f" of {len(pipeline.steps)} steps." if isinstance(pipeline, Pipeline) else ".")
        )
    embedder, head = pipeline.steps[0][1], pipeline.steps[-1][1]
    reason = export_refusal(pipeline)
    if reason is not None:
        raise ValueError(f"{type(head).__name__} cannot be exported to ONNX: {reason}.")
    check_is_fitted(embedder, "backbone_")
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
    >>> from skanomaly import make_patchcore, make_fastflow
    >>> from skanomaly.export import export_refusal
    >>> export_refusal(make_patchcore()) is None
    True
    >>> export_refusal(make_fastflow())
    'its graph (FlowDetector) is not exportable yet'
    """
    if not isinstance(pipeline, Pipeline) or len(pipeline.steps) != 2:
        return "only a Pipeline of an embedder and a head is exportable"
    embedder, head = pipeline.steps[0][1], pipeline.steps[-1][1]
    if not isinstance(embedder, PatchEmbedder):
        return (f"the pipeline starts with {type(embedder).__name__}; only PatchEmbedder "
                "pipelines are exportable yet")
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
    module = _Exported(embedder, head._export_graph(), (height, width), sigma).eval()
    device = embedder._device_
    embedder.backbone_.model.to("cpu")
    embedder._device_ = torch.device("cpu")
    path = Path(path)
    try:
        module.cpu()
        example = torch.rand(1, 3, height, width)
        handle, tmp = tempfile.mkstemp(suffix=".onnx.part", dir=path.parent)
        os.close(handle)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as a plain open() would, not mkstemp's 0600
        try:
            with torch.no_grad():
                torch.onnx.export(
                    module, (example,), tmp, dynamo=False, opset_version=opset,
                    input_names=["images"], output_names=["image_scores", "patch_scores", "maps"],
                    dynamic_axes={name: {0: "n"} for name in
                                  ("images", "image_scores", "patch_scores", "maps")},
                )
            model = onnx.load(tmp)
            meta = _metadata(pipeline, embedder, head, sigma, __version__)
            entry = model.metadata_props.add()
            entry.key, entry.value = _METADATA_KEY, json.dumps(meta)
            onnx.save(model, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    finally:
        embedder.backbone_.model.to(device)
        embedder._device_ = device
    return path


def _markdown_table():
    """The documentation's table of which registry methods export, and why not."""
    from .registry import available_methods

    lines = ["| method | ONNX export |", "|---|---|"]
    for name, info in available_methods().items():
        reason = export_refusal(info.factory())
        lines.append(f"| `{name}` | {'yes' if reason is None else 'no: ' + reason} |")
    return "\n".join(lines) + "\n"


def _metadata(pipeline, embedder, head, sigma, version):
    meta = {
        "format": _FORMAT,
        "skanomaly_version": version,
        "head": type(head).__name__,
        "input_shape": [int(s) for s in embedder.image_shape_],
        "sigma": float(sigma),
        "offset": float(head.offset_),
        "contamination": float(head.contamination),
        "calibration_scores": [float(s) for s in np.asarray(head.calibration_scores_)],
        "pixel_threshold": None,
    }
    if getattr(head, "calibration_patch_scores_", None) is not None:
        meta["pixel_threshold"] = pixel_threshold(head)
    return meta
