"""skanomaly: visual anomaly detection as scikit-learn estimators.

Learn what a good part looks like from normal images only, then score new
images, draw pixel-level anomaly maps and flag defects::

    from skanomaly import make_patchcore, anomaly_maps
    pipe = make_patchcore().fit(train_paths)
    pipe.predict(test_paths)          # +1 normal, -1 anomalous
    anomaly_maps(pipe, test_paths)    # (n, H, W), higher = more anomalous
"""

__version__ = "0.1.0"

from .detectors import (
    DistillationDetector,
    FlowDetector,
    GaussianDetector,
    KDEDetector,
    KNNDetector,
    SimpleNetDetector,
)
from .embedders import ImageEmbedder, PatchEmbedder
from .maps import anomaly_boxes, anomaly_maps, anomaly_masks
from .pipelines import (
    make_cflow,
    make_dfkde,
    make_dfm,
    make_fastflow,
    make_padim,
    make_patchcore,
    make_reverse_distillation,
    make_simplenet,
    make_softpatch,
    make_spade,
    make_stfpm,
)
from .preprocessing import ImagePreprocessor

__all__ = [
    "DistillationDetector",
    "FlowDetector",
    "GaussianDetector",
    "ImageEmbedder",
    "ImagePreprocessor",
    "KDEDetector",
    "KNNDetector",
    "PatchEmbedder",
    "SimpleNetDetector",
    "anomaly_boxes",
    "anomaly_maps",
    "anomaly_masks",
    "make_cflow",
    "make_dfkde",
    "make_dfm",
    "make_fastflow",
    "make_padim",
    "make_patchcore",
    "make_reverse_distillation",
    "make_simplenet",
    "make_softpatch",
    "make_spade",
    "make_stfpm",
]
