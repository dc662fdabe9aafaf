"""DRAEM head: reconstructive and discriminative networks trained on painted anomalies."""

import numbers

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils._param_validation import Interval
from torch import nn

from ..backbones import _build_architecture, load_backbone
from ._synthetic import _Bottleneck, _evidence, _focal_loss, _paint_anomalies, _SegmentationNet
from ._base import _IMAGE_SCORE_SIGMA_CONSTRAINT
from ._trainable import _PixelHeadMixin, _TrainableDetector


class _DRAEM(nn.Module):
    """Frozen backbone taps -> reconstructive autoencoder -> segmentation of
    (features, reconstruction)."""

    def __init__(self, backbone, n_features, width):
        super().__init__()
        tap = _build_architecture(backbone)
        self.layers = tap.default_layers
        self._tap = tap  # extract() runs self.encoder through the tap's hooks
        self.encoder = tap.model
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        self.reconstruct = _Bottleneck(n_features, n_features, width)
        self.segment = _SegmentationNet(3 * n_features, width)

    def train(self, mode=True):
        super().train(mode)
        self.encoder.eval()  # frozen
        return self

    def raw_features(self, x):
        with torch.no_grad():
            feats = self._tap.extract(x, self.layers)
            grid = feats[0].shape[-2:]
            feats = torch.cat([F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
                               for f in feats], 1)
            # 3 x 3 neighbourhoods, as the patch embedders aggregate.
            return F.avg_pool2d(feats.contiguous(), 3, stride=1, padding=1)

    def features(self, x):
        return (self.raw_features(x) - self.mean[:, None, None]) / self.scale[:, None, None]

    def loss(self, x, clean, generator):
        """Training loss of pixels ``x`` whose features are ``clean``."""
        painted, masks = _paint_anomalies(x, generator)
        # Unpainted images are their clean selves: only the painted ones
        # need another pass through the backbone.
        painted_rows = masks.flatten(1).amax(1).nonzero()[:, 0]
        feats = clean.clone()
        if len(painted_rows):
            feats[painted_rows] = self.features(painted[painted_rows])
        target = F.adaptive_avg_pool2d(masks, feats.shape[-2:])[:, 0]
        rebuilt = self.reconstruct(feats)
        logits = self.segment(_evidence(feats, rebuilt))
        return (rebuilt - clean).pow(2).mean() + _focal_loss(logits, target)

    def forward(self, x):
        feats = self.features(x)
        return torch.sigmoid(self.segment(_evidence(feats, self.reconstruct(feats))))


class DRAEMDetector(_PixelHeadMixin, _TrainableDetector):
    """DRAEM (Zavrtanik et al., 2021): learn to rebuild and to segment painted anomalies.

    During training, about half of the images get an anomaly painted inside
    a Perlin-noise mask (as the paper: the mask's noise above 0.5 at a random
    lattice scale, the region blended with a filling at a random opacity).
    A reconstructive network learns to rebuild the clean image from the
    painted one, and a discriminative network, seeing the painted image
    beside its reconstruction and their (saturated) squared difference, learns to
    segment the mask (focal loss). At
    test time the discriminative network's output is the anomaly map; an
    image's score is its largest value after a blur of
    ``image_score_sigma`` cells (the paper takes the maximum of a
    mean-filtered mask).

    What differs from the paper, so that it trains in CPU minutes with
    offline weights: both networks work on ``backbone``'s frozen stride 8 and
    16 features (3 x 3 neighbourhoods, at stride 8) rather than on pixels,
    so the reconstruction is of features and the map has one value per
    8 x 8 pixels; the reconstructive network is a small autoencoder with no
    skip connections and the discriminative one a two-level U-Net. The
    paper's anomaly source, the DTD textures, cannot be downloaded here:
    fillings are generated (smooth colour fields, stripes, or another
    training image flipped), kept at the image's brightness and contrast,
    grey for grey images. The paper's discriminative network sees the
    image and its reconstruction only; the squared difference is added
    because it does not depend on what the painted anomalies look like
    (bottle, seed 0: pixel AUROC 0.937 without it, 0.972 with it). The
    clean images' features are computed once and kept for the fit (float16,
    about 0.3 MB per 256 px image), and only painted images go through the
    backbone again, which halves the training time.

    It takes normalised pixels from
    :class:`~skanomaly.preprocessing.ImagePreprocessor` with the same
    ``backbone``; :func:`~skanomaly.make_draem` builds the pipeline. The
    frozen backbone is part of the fitted model (and of its pickle).

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
        Registered backbone whose frozen features the networks work on.
    weights : "default", path or None, default="default"
        That backbone's weights, see :func:`skanomaly.backbones.load_backbone`.
    width : int, default=64
        Channels of the networks' first level (the second has twice as many).
    image_score_sigma : float >= 0, default=1.0
        Gaussian blur (in cells) of the map before its maximum is taken as
        the image score; 0 takes the largest cell.
    max_epochs : int, default=30
        Passes over the training images.
    batch_size : int, default=8
        Images per step.
    learning_rate : float, default=1e-3
        Adam's step size.
    validation_fraction : float in [0, 1), default=0.1
        Share of the non-calibration images held out for early stopping (on
        the same painted anomalies every epoch).
    n_iter_no_change : int or None, default=5
        Epochs without a better validation loss before stopping; None
        disables early stopping.
    warm_start : bool, default=False
        Continue training the current networks on the next ``fit``.
    contamination : float in (0, 0.5], default=0.05
        Target false-alarm rate of ``predict`` on new normal images.
    calibration_size : float in (0, 1) or int, default=0.1
        Share (or number) of images held out to calibrate ``offset_``.
    random_state : int, RandomState instance or None, default=None
        Seeds splits, initialisation, painted anomalies and batch order.
    device : str, default="cpu"
        Torch device for training and scoring.
    verbose : int, default=0
        Progress bar over epochs when > 0.

    Attributes
    ----------
    module_ : torch.nn.Module
        Frozen backbone, reconstructive and discriminative networks (saved as
        a state dict when pickled).
    module_params_ : dict
        Arguments the networks were built with.
    loss_curve_, validation_loss_curve_ : list of float
        Mean loss of each epoch on training and validation images.
    n_iter_ : int
        Epochs run.
    offset_ : float
        Threshold on ``score_samples``.
    calibration_scores_, calibration_patch_scores_ : ndarray
        Sorted scores of the held-out normal images.
    n_features_in_ : int
        Always 3 (RGB).

    See Also
    --------
    skanomaly.make_draem : Pipeline with the preprocessing.
    DSRDetector : Anomalies painted in a learned code space instead of pixels.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.detectors import DRAEMDetector
    >>> from skanomaly.preprocessing import ImagePreprocessor
    >>> rng = np.random.default_rng(0)
    >>> pixels = ImagePreprocessor(image_size=64).fit_transform(rng.random((10, 64, 64, 3)))
    >>> head = DRAEMDetector(width=8, max_epochs=1, validation_fraction=0,
    ...                      random_state=0).fit(pixels)
    >>> head.score_patches(pixels[:2]).shape
    (2, 8, 8)
    """

    _factory_name = "make_draem"

    _parameter_constraints = {
        **_TrainableDetector._parameter_constraints,
        "backbone": [str],
        "weights": "no_validation",
        "width": [Interval(numbers.Integral, 1, None, closed="left")],
        "image_score_sigma": _IMAGE_SCORE_SIGMA_CONSTRAINT,
    }

    def __init__(
        self,
        backbone="efficientnet_lite0",
        *,
        weights="default",
        width=64,
        image_score_sigma=1.0,
        max_epochs=30,
        batch_size=8,
        learning_rate=1e-3,
        validation_fraction=0.1,
        n_iter_no_change=5,
        warm_start=False,
        contamination=0.05,
        calibration_size=0.1,
        random_state=None,
        device="cpu",
        verbose=0,
    ):
        self.backbone = backbone
        self.weights = weights
        self.width = width
        self.image_score_sigma = image_score_sigma
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.warm_start = warm_start
        self.contamination = contamination
        self.calibration_size = calibration_size
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    def _module_params(self, X, train_idx):
        tap = _build_architecture(self.backbone)
        n_features = sum(tap.channels[name] for name in tap.default_layers)
        return {"backbone": self.backbone, "n_features": int(n_features), "width": self.width}

    def _build_module(self, **params):
        return _DRAEM(**params)

    def _init_module(self, module, X, train_idx):
        """Load the backbone's weights; standardise its features on the training images."""
        module.encoder.load_state_dict(load_backbone(self.backbone, self.weights).model.state_dict())
        total, squares, count = 0.0, 0.0, 0
        for idx in np.array_split(train_idx, -(-len(train_idx) // 32)):
            feats = module.raw_features(self._batch_tensor(module, X, idx)).double()
            total = total + feats.sum((0, 2, 3))
            squares = squares + feats.pow(2).sum((0, 2, 3))
            count += feats.shape[0] * feats.shape[2] * feats.shape[3]
        mean = total / count
        module.mean.copy_(mean.float())
        module.scale.copy_((squares / count - mean**2).clamp_min(0).sqrt().clamp_min(1e-6).float())

    def _fit_normal(self, X, fit_idx, rng):
        # The frozen backbone's features of each unpainted training image,
        # computed at its first epoch and kept (float16) for the fit only.
        self._clean_features = {}
        try:
            super()._fit_normal(X, fit_idx, rng)
        finally:
            del self._clean_features

    def _training_batch(self, module, X, idx):
        pixels = self._batch_tensor(module, X, idx)
        missing = [i for i, row in enumerate(idx) if row not in self._clean_features]
        if missing:
            with torch.no_grad():
                feats = module.features(pixels[missing]).half()
            for i, f in zip(missing, feats):
                self._clean_features[idx[i]] = f
        clean = torch.stack([self._clean_features[row] for row in idx]).float()
        return pixels, clean

    def _loss(self, module, batch, generator):
        pixels, clean = batch
        return module.loss(pixels, clean, generator)

    def _module_scores(self, module, batch):
        return module(batch)
