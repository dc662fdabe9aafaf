"""Reading and validating images (see :mod:`skanomaly_runtime.images`).

The decoding rules live in the torch-free runtime, so that an exported model
reads an image exactly as the estimator it came from did.
"""

from skanomaly_runtime.images import check_images, load_image

__all__ = ["check_images", "load_image"]
