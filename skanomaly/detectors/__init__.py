"""Anomaly detector heads: scikit-learn outlier estimators on features."""

from ._base import conformal_offset
from ._knn import KNNDetector

__all__ = ["KNNDetector", "conformal_offset"]
