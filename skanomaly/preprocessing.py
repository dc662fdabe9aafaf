"""Images to normalised pixel arrays, for heads that run a network on pixels."""

import numbers

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from ._torch import _progress, _resized_batches
from .backbones import _spec
from .embedders import _image_shape
from .images import check_images

__all__ = ["ImagePreprocessor"]


class ImagePreprocessor(TransformerMixin, BaseEstimator):
    """Decode, resize and normalise images as a backbone's weights expect.

    The first step of pipelines whose head trains a network on the pixels
    themselves (STFPM, Reverse Distillation, see
    :class:`~skanomaly.detectors.DistillationDetector`): such a head cannot
    work from frozen features, because its student network must see the
    images. Reading images stays a transformer's job, so the head only ever
    receives arrays and the pipeline accepts paths, PIL images and arrays
    like every other.

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
        Registered backbone whose normalisation (mean and standard deviation
        per channel) to apply; no weights are loaded.
    image_size : int or (int, int), default=256
        Every image is resized (antialiased bilinear) to this (height, width).
    verbose : int, default=0
        A progress bar over images when > 0.

    Attributes
    ----------
    image_shape_ : (int, int)
        The (height, width) every image is resized to.
    mean_, std_ : ndarray of shape (3,)
        The normalisation applied to RGB values in [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.preprocessing import ImagePreprocessor
    >>> images = np.full((2, 40, 50, 3), 255, dtype=np.uint8)
    >>> pixels = ImagePreprocessor(image_size=32).fit_transform(images)
    >>> pixels.shape, round(float(pixels.max()), 4)
    ((2, 32, 32, 3), 1.0)
    """

    _parameter_constraints = {
        "backbone": [str],  # checked by load_backbone: registry or "timm/..."
        "image_size": [Interval(numbers.Integral, 16, None, closed="left"), tuple, list],
        "verbose": ["verbose"],
    }

    def __init__(self, backbone="efficientnet_lite0", *, image_size=256, verbose=0):
        self.backbone = backbone
        self.image_size = image_size
        self.verbose = verbose

    def fit(self, X=None, y=None):
        """Validate the parameters; images are not looked at.

        Parameters
        ----------
        X : ignored
        y : ignored

        Returns
        -------
        self : object
        """
        self._validate_params()
        spec = _spec(self.backbone)
        self.image_shape_ = _image_shape(self.image_size)
        self.mean_ = np.asarray(spec.mean, dtype=np.float32)
        self.std_ = np.asarray(spec.std, dtype=np.float32)
        return self

    def transform(self, X):
        """Normalised pixels of each image.

        Parameters
        ----------
        X : list of images or ndarray of shape (n, H, W[, C])
            Paths, PIL images or arrays; sizes may differ.

        Returns
        -------
        pixels : ndarray of shape (n, height, width, 3), float32
        """
        check_is_fitted(self, "image_shape_")
        images = check_images(X)
        out = np.empty((len(images), *self.image_shape_, 3), dtype=np.float32)
        with _progress(len(images), self.verbose, type(self).__name__) as advance:
            for start, batch in _resized_batches(images, 32, self.image_shape_):
                out[start:start + len(batch)] = batch.permute(0, 2, 3, 1).numpy()
                advance(len(batch))
        out -= self.mean_
        out /= self.std_
        return out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.requires_fit = True
        return tags
