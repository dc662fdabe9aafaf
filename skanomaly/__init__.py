"""skanomaly: visual anomaly detection as scikit-learn estimators.

Learn what a good part looks like from normal images only, then score new
images, draw pixel-level anomaly maps and flag defects::

    from skanomaly import make_patchcore, anomaly_maps
    pipe = make_patchcore().fit(train_paths)
    pipe.predict(test_paths)          # +1 normal, -1 anomalous
    anomaly_maps(pipe, test_paths)    # (n, H, W), higher = more anomalous
"""

__version__ = "0.1.0"

from . import pipelines as _pipelines
from .detectors import (
    DistillationDetector,
    DRAEMDetector,
    DSRDetector,
    EfficientADDetector,
    FlowDetector,
    GANomalyDetector,
    GaussianDetector,
    KDEDetector,
    KNNDetector,
    SimpleNetDetector,
    StateSpaceDetector,
)
from .embedders import ImageEmbedder, PatchEmbedder
from .grouping import GroupedDetector
from .maps import anomaly_boxes, anomaly_maps, anomaly_masks
from .pipelines import *  # every registered factory: make_patchcore, ...
from .preprocessing import ImagePreprocessor
from .registry import available_methods, get_method

__all__ = [
    "DistillationDetector",
    "DRAEMDetector",
    "DSRDetector",
    "EfficientADDetector",
    "FlowDetector",
    "GANomalyDetector",
    "GaussianDetector",
    "GroupedDetector",
    "ImageEmbedder",
    "ImagePreprocessor",
    "KDEDetector",
    "KNNDetector",
    "PatchEmbedder",
    "SimpleNetDetector",
    "StateSpaceDetector",
    "anomaly_boxes",
    "anomaly_maps",
    "anomaly_masks",
    "available_methods",
    "get_method",
]
__all__ += _pipelines.__all__
