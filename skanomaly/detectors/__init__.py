"""Anomaly detector heads: scikit-learn outlier estimators on features."""

from ._base import conformal_offset
from ._gaussian import GaussianDetector
from ._kde import KDEDetector
from ._knn import KNNDetector

__all__ = ["GaussianDetector", "KDEDetector", "KNNDetector", "conformal_offset"]
