"""Anomaly detector heads: scikit-learn outlier estimators on features."""

from ._base import conformal_offset
from ._distillation import DistillationDetector
from ._draem import DRAEMDetector
from ._dsr import DSRDetector
from ._efficientad import EfficientADDetector
from ._flow import FlowDetector
from ._ganomaly import GANomalyDetector
from ._gaussian import GaussianDetector
from ._kde import KDEDetector
from ._knn import KNNDetector
from ._simplenet import SimpleNetDetector
from ._state_space import StateSpaceDetector

__all__ = [
    "DistillationDetector",
    "DRAEMDetector",
    "DSRDetector",
    "EfficientADDetector",
    "FlowDetector",
    "GANomalyDetector",
    "GaussianDetector",
    "KDEDetector",
    "KNNDetector",
    "SimpleNetDetector",
    "StateSpaceDetector",
    "conformal_offset",
]
