"""Torch-free inference of models written by :func:`skanomaly.export.to_onnx`.

Needs numpy, Pillow and onnxruntime (or OpenVINO) only: no torch, no
scikit-learn, no pickle. An exported model gives what the estimator it came
from gives, computed the same way (decoding, antialiased resize, one graph,
the last resize of the maps), so scores agree to float32 rounding.

Examples
--------
>>> import numpy as np, tempfile, os
>>> from skanomaly import make_patchcore
>>> from skanomaly.export import to_onnx
>>> import skanomaly_runtime
>>> rng = np.random.default_rng(0)
>>> pipe = make_patchcore(image_size=64, random_state=0).fit(rng.random((6, 64, 64, 3)))
>>> path = to_onnx(pipe, os.path.join(tempfile.mkdtemp(), "model.onnx"))
>>> model = skanomaly_runtime.load(path)
>>> test = rng.random((2, 80, 96, 3))
>>> bool(np.allclose(model.score_samples(test), pipe.score_samples(test), rtol=1e-4))
True
>>> model.anomaly_maps(test).shape
(2, 80, 96)
"""

import json
import os

import numpy as np

from ._calibration import conformal_pvalues_of
from ._regions import MIN_AREA, region_boxes
from ._resize import resize_image, resize_map
from .images import _decoded_batches, check_images

__all__ = ["ExportedModel", "load"]

__version__ = "0.1.0"

_BACKENDS = ("onnxruntime", "openvino")
# Where skanomaly.export puts its JSON, and the layouts this runtime reads.
_METADATA_KEY = "skanomaly"
_FORMATS = (1,)


def load(path, *, backend="onnxruntime", batch_size=8):
    """Load an exported model.

    Parameters
    ----------
    path : str or path-like
        An ``.onnx`` file from :func:`skanomaly.export.to_onnx`.
    backend : {"onnxruntime", "openvino"}, default="onnxruntime"
    batch_size : int, default=8

    Returns
    -------
    model : ExportedModel

    Examples
    --------
    See the module docstring.
    """
    return ExportedModel(path, backend=backend, batch_size=batch_size)


class ExportedModel:
    """An exported skanomaly pipeline: scores, labels, p-values and maps.

    Parameters
    ----------
    path : str or path-like
        An ``.onnx`` file from :func:`skanomaly.export.to_onnx` (or
        ``skanomaly export``).
    backend : {"onnxruntime", "openvino"}, default="onnxruntime"
        The inference engine; each must be installed to be used.
    batch_size : int, default=8
        Images run through the graph at a time (bounds memory).

    Attributes
    ----------
    metadata_ : dict
        What the export stored: input size, ``offset``, calibration scores,
        pixel threshold, blur, skanomaly version, head.
    offset_ : float
        The estimator's ``offset_``: ``decision_function = score_samples - offset_``.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from skanomaly import make_padim
    >>> from skanomaly.export import to_onnx
    >>> from skanomaly_runtime import ExportedModel
    >>> rng = np.random.default_rng(0)
    >>> pipe = make_padim(image_size=64, random_state=0).fit(rng.random((8, 64, 64, 3)))
    >>> model = ExportedModel(to_onnx(pipe, os.path.join(tempfile.mkdtemp(), "padim.onnx")))
    >>> test = rng.random((3, 64, 64, 3))
    >>> bool((model.predict(test) == pipe.predict(test)).all())
    True
    >>> len(model.anomaly_boxes(test))
    3
    """

    def __init__(self, path, *, backend="onnxruntime", batch_size=8):
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}.")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.path = os.fspath(path)
        self.backend = backend
        self.batch_size = int(batch_size)
        self.metadata_ = _read_metadata(self.path)
        self.offset_ = float(self.metadata_["offset"])
        self._input_shape = tuple(self.metadata_["input_shape"])
        self._run_graph = _session(self.path, backend)

    # -- scores ------------------------------------------------------------------
    def score_samples(self, X):
        """Normality score of each image, higher = more normal (as the estimator's).

        Parameters
        ----------
        X : list of images or ndarray of shape (n, H, W[, C])
            Paths, PIL images or arrays, as the estimator takes them.

        Returns
        -------
        scores : ndarray of shape (n,), float64
        """
        return self._scores_and_maps(X, maps=False)[0]

    def decision_function(self, X):
        """``score_samples(X) - offset_``: negative for anomalies.

        Parameters
        ----------
        X : list of images or ndarray of shape (n, H, W[, C])

        Returns
        -------
        decision : ndarray of shape (n,), float64
        """
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """+1 for normal images, -1 for anomalies.

        Parameters
        ----------
        X : list of images or ndarray of shape (n, H, W[, C])

        Returns
        -------
        labels : ndarray of shape (n,), int
        """
        return np.where(self.decision_function(X) >= 0, 1, -1)

    def conformal_pvalues(self, X=None, *, scores=None):
        """Conformal p-values under "it is normal" (as :func:`skanomaly.calibration.conformal_pvalues`).

        Pass images ``X``, or ``scores`` already computed by ``score_samples``.
        """
        if scores is None:
            scores = self.score_samples(X)
        return conformal_pvalues_of(self.metadata_["calibration_scores"], scores)

    # -- maps --------------------------------------------------------------------
    def anomaly_maps(self, X, *, return_scores=False):
        """Per-pixel anomaly maps at each image's size (as :func:`skanomaly.anomaly_maps`).

        Returns
        -------
        maps : ndarray of shape (n, H, W), or a list when sizes differ
        scores : ndarray of shape (n,)
            Only with ``return_scores=True``, from the same pass.
        """
        if not self.metadata_["maps"]:
            raise ValueError(
                f"{self.metadata_['head']} scores whole images, so it draws no anomaly "
                "map; use score_samples."
            )
        scores, maps = self._scores_and_maps(X, maps=True)
        if len({m.shape for m in maps}) == 1:
            maps = np.stack(maps)
        return (maps, scores) if return_scores else maps

    def anomaly_masks(self, X=None, *, threshold=None, maps=None):
        """Boolean masks ``map > threshold``; ``threshold`` defaults to the
        pixel threshold calibrated at fit (``skanomaly.calibration.pixel_threshold``)."""
        if threshold is None:
            threshold = self.metadata_.get("pixel_threshold")
            if threshold is None:
                raise ValueError("This model stores no pixel threshold; pass threshold=.")
        if maps is None:
            maps = self.anomaly_maps(X)
        if isinstance(maps, np.ndarray):
            return maps > threshold
        return [m > threshold for m in maps]

    def anomaly_boxes(self, X=None, *, threshold=None, min_area=MIN_AREA, maps=None):
        """Boxes of the 8-connected regions of the masks (as :func:`skanomaly.anomaly_boxes`).

        Returns
        -------
        boxes : list of list of dict
            Per image, ``{"x0", "y0", "x1", "y1", "score", "area"}`` sorted by
            decreasing score, exclusive ``x1``/``y1``.
        """
        if maps is None:
            maps = self.anomaly_maps(X)
        masks = self.anomaly_masks(threshold=threshold, maps=maps)
        return [region_boxes(amap, mask, min_area) for amap, mask in zip(maps, masks)]

    def _scores_and_maps(self, X, *, maps):
        images = check_images(X)
        scores, out = [], []
        def prepare(array):  # in the decoding thread: only the resized copy is kept
            return array.shape[:2], resize_image(array, self._input_shape)

        for _, items in _decoded_batches(images, self.batch_size, prepare):
            image_scores, _, model_maps = self._run_graph(np.stack([image for _, image in items]))
            scores.append(-np.asarray(image_scores, dtype=np.float64))
            if maps:
                out.extend(resize_map(m, shape) for m, (shape, _) in zip(model_maps, items))
        return np.concatenate(scores), out


def _session(path, backend):
    """A function from an (n, 3, H, W) batch to the graph's three outputs."""
    if backend == "onnxruntime":
        try:
            import onnxruntime
        except ImportError:
            raise ImportError("backend='onnxruntime' needs: pip install onnxruntime") from None
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return lambda batch: session.run(None, {"images": batch})
    try:
        import openvino
    except ImportError:
        raise ImportError("backend='openvino' needs: pip install openvino") from None
    # OpenVINO's CPU plugin computes in bfloat16 where the CPU has it unless
    # told otherwise: scores then move by about 1% (seen on an AVX-512 BF16 Xeon).
    compiled = openvino.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    outputs = [compiled.output(name) for name in ("image_scores", "patch_scores", "maps")]

    def run(batch):
        result = compiled(batch)
        return [result[o] for o in outputs]

    return run


def _read_metadata(path):
    """The export's JSON metadata, read from the ONNX file's protobuf directly
    (no onnx package, and the same for every backend)."""
    if not os.path.isfile(path):
        raise ValueError(f"No model file {path!r}.")
    with open(path, "rb") as fh:
        data = memoryview(fh.read())  # slices without copies
    try:
        props = dict(_metadata_props(data))
    except (IndexError, ValueError, UnicodeDecodeError):
        props = {}
    if _METADATA_KEY not in props:
        raise ValueError(
            f"{path!r} is not a model exported by skanomaly (no skanomaly metadata); "
            "export one with skanomaly.export.to_onnx or 'skanomaly export'."
        )
    meta = json.loads(props[_METADATA_KEY])
    if meta.get("format") not in _FORMATS:
        raise ValueError(
            f"{path!r} was exported in format {meta.get('format')!r}; this runtime reads "
            f"{_FORMATS}: update skanomaly_runtime."
        )
    return meta


def _varint(data, pos):
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data):
    """(field number, wire type, value) of one protobuf message's fields."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated protobuf")
        yield number, wire, value


# ModelProto.metadata_props is field 14, a StringStringEntryProto (key 1, value 2).
_METADATA_FIELD = 14


def _metadata_props(data):
    for number, wire, value in _fields(data):
        if number == _METADATA_FIELD and wire == 2:
            entry = {n: v for n, w, v in _fields(value) if w == 2}
            yield bytes(entry.get(1, b"")).decode(), bytes(entry.get(2, b"")).decode()
