"""GANomaly head: encoder-decoder-encoder generator against a discriminator."""

import numbers

import torch
import torch.nn.functional as F
from sklearn.utils._param_validation import Interval
from torch import nn
from torch.func import functional_call

from ._trainable import _PixelHeadMixin, _TrainableDetector

# The paper's loss weights: adversarial (feature matching), contextual (L1
# reconstruction), encoder (latent distance).
_ADVERSARIAL_WEIGHT = 1.0
_CONTEXTUAL_WEIGHT = 50.0
_ENCODER_WEIGHT = 1.0
# The paper re-initialises the discriminator when its loss collapses below this.
_DISCRIMINATOR_RESET = 1e-5


def _encoder(image_size, n_channels, width, n_out):
    """DCGAN encoder: stride-2 4x4 convolutions down to 4 x 4, then a 4 x 4
    convolution to ``n_out`` channels (a 1 x 1 output)."""
    layers = [nn.Conv2d(n_channels, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
    size, channels = image_size // 2, width
    while size > 4:
        layers += [nn.Conv2d(channels, 2 * channels, 4, 2, 1, bias=False),
                   nn.BatchNorm2d(2 * channels), nn.LeakyReLU(0.2, inplace=True)]
        size, channels = size // 2, 2 * channels
    return nn.Sequential(*layers), nn.Conv2d(channels, n_out, 4, 1, 0, bias=False)


def _decoder(image_size, n_channels, width, n_latent):
    """DCGAN decoder, the encoder's mirror: latent -> 4 x 4 -> ... -> image."""
    channels = width * (image_size // 8)
    layers = [nn.ConvTranspose2d(n_latent, channels, 4, 1, 0, bias=False),
              nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
    size = 4
    while size < image_size // 2:
        layers += [nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1, bias=False),
                   nn.BatchNorm2d(channels // 2), nn.ReLU(inplace=True)]
        size, channels = 2 * size, channels // 2
    layers.append(nn.ConvTranspose2d(channels, n_channels, 4, 2, 1, bias=False))
    return nn.Sequential(*layers)


def _dcgan_init(module):
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class _GANomaly(nn.Module):
    def __init__(self, image_size, width, latent_size):
        super().__init__()
        body, head = _encoder(image_size, 3, width, latent_size)
        self.encoder = nn.Sequential(body, head)
        self.decoder = _decoder(image_size, 3, width, latent_size)
        body, head = _encoder(image_size, 3, width, latent_size)
        self.reencoder = nn.Sequential(body, head)
        self.disc_features, self.disc_head = _encoder(image_size, 3, width, 1)
        _dcgan_init(self)

    def reset_discriminator(self):
        _dcgan_init(self.disc_features)
        _dcgan_init(self.disc_head)

    def forward(self, x):
        latent = self.encoder(x)
        fake = self.decoder(latent)
        return fake, latent, self.reencoder(fake)

    def scores(self, x):
        """Per image, the mean squared distance of the two latent codes."""
        _, latent, relatent = self(x)
        return (latent - relatent).pow(2).flatten(1).mean(1)

    def loss(self, x):
        fake, latent, relatent = self(x)
        contextual = (x - fake).abs().mean()
        encoder = (latent - relatent).pow(2).mean()
        if not self.training:
            # Held-out images: how well normal images are rebuilt and
            # re-encoded, the part of the objective that scores them.
            return _CONTEXTUAL_WEIGHT * contextual + _ENCODER_WEIGHT * encoder
        # The generator matches the discriminator's features of real images
        # through a frozen copy of its weights, so that term trains the
        # generator only; the discriminator's own loss sees a detached fake.
        frozen = {k: v.detach() for k, v in self.disc_features.named_parameters()}
        real_features = functional_call(self.disc_features, frozen, (x,))
        fake_features = functional_call(self.disc_features, frozen, (fake,))
        adversarial = (real_features.mean(0) - fake_features.mean(0)).pow(2).mean()
        generator = (_ADVERSARIAL_WEIGHT * adversarial + _CONTEXTUAL_WEIGHT * contextual
                     + _ENCODER_WEIGHT * encoder)
        real_logit = self.disc_head(self.disc_features(x)).flatten()
        fake_logit = self.disc_head(self.disc_features(fake.detach())).flatten()
        discriminator = 0.5 * (
            F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit))
            + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))
        )
        if float(discriminator) < _DISCRIMINATOR_RESET:
            self.reset_discriminator()
        return generator + discriminator


class GANomalyDetector(_PixelHeadMixin, _TrainableDetector):
    """GANomaly (Akcay et al., 2018): image-level score from a latent distance.

    The generator encodes an image to a latent code, decodes it back to an
    image and encodes the reconstruction again; trained on normal images
    only (L1 reconstruction, the two codes' distance, and a discriminator
    whose features the reconstructions must match), it rebuilds and
    re-encodes normal images consistently. An image's anomaly score is the
    mean squared distance between its two latent codes. The networks are
    DCGAN encoders and decoders trained from scratch (no pretrained weights),
    so the head scores whole images: ``score_patches`` is a 1 x 1 grid, and
    there are no pixel maps.

    It takes normalised pixels from
    :class:`~skanomaly.preprocessing.ImagePreprocessor` with a square,
    power-of-two ``image_size`` of at least 16; :func:`~skanomaly.make_ganomaly`
    builds that pipeline.

    Parameters
    ----------
    width : int, default=32
        Channels of the first convolution; each stride-2 stage doubles them
        (the paper's 64 costs four times the compute on a CPU).
    latent_size : int, default=100
        Dimension of the latent code, as the paper.
    max_epochs : int, default=15
        Passes over the training images (the paper's 15).
    batch_size : int, default=16
        Images per step.
    learning_rate : float, default=2e-4
        Adam's step size (betas (0.5, 0.999), as DCGAN and the paper).
    validation_fraction : float in [0, 1), default=0.0
        Share of the non-calibration images held out for early stopping on
        their reconstruction and latent losses (only with
        ``n_iter_no_change``).
    n_iter_no_change : int or None, default=None
        Epochs without a better validation loss before stopping; None (the
        default) trains ``max_epochs``, as the paper. Unlike the other
        trainable heads', GANomaly's held-out loss is no guide: with batch
        norm in eval mode it rises from the first epoch while the
        adversarial training still improves the scores (bottle, 64 px:
        stopping after 5 epochs without improvement gives image AUROC 0.56,
        15 epochs 0.85-0.89 over three seeds).
    warm_start : bool, default=False
        Continue training the current networks on the next ``fit``.
    contamination : float in (0, 0.5], default=0.05
        Target false-alarm rate of ``predict`` on new normal images.
    calibration_size : float in (0, 1) or int, default=0.1
        Share (or number) of images held out to calibrate ``offset_``.
    random_state : int, RandomState instance or None, default=None
        Seeds splits, initialisation and batch order.
    device : str, default="cpu"
        Torch device for training and scoring.
    verbose : int, default=0
        A progress bar over epochs with the losses when > 0.

    Attributes
    ----------
    module_ : torch.nn.Module
        Generator and discriminator (saved as a state dict when pickled).
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
    skanomaly.make_ganomaly : Pipeline with the preprocessing.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.detectors import GANomalyDetector
    >>> from skanomaly.preprocessing import ImagePreprocessor
    >>> rng = np.random.default_rng(0)
    >>> pixels = ImagePreprocessor(image_size=32).fit_transform(rng.random((10, 32, 32, 3)))
    >>> head = GANomalyDetector(width=8, latent_size=16, max_epochs=2, random_state=0)
    >>> head.fit(pixels).score_samples(pixels[:2]).shape
    (2,)
    """

    _factory_name = "make_ganomaly"
    _min_image_side = 16

    _parameter_constraints = {
        **_TrainableDetector._parameter_constraints,
        "width": [Interval(numbers.Integral, 1, None, closed="left")],
        "latent_size": [Interval(numbers.Integral, 1, None, closed="left")],
    }

    def __init__(
        self,
        *,
        width=32,
        latent_size=100,
        max_epochs=15,
        batch_size=16,
        learning_rate=2e-4,
        validation_fraction=0.0,
        n_iter_no_change=None,
        warm_start=False,
        contamination=0.05,
        calibration_size=0.1,
        random_state=None,
        device="cpu",
        verbose=0,
    ):
        self.width = width
        self.latent_size = latent_size
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

    def _check_features(self, X, *, reset):
        X = super()._check_features(X, reset=reset)
        h, w = X.shape[1:3]
        if h != w or h & (h - 1):
            raise ValueError(
                f"{type(self).__name__} needs square images whose side is a "
                f"power of two of at least 16 (its DCGAN stages halve it down "
                f"to 4), got {h} x {w}; set ImagePreprocessor(image_size=...)."
            )
        return X

    def _module_params(self, X, train_idx):
        return {"image_size": int(X.shape[1]), "width": self.width,
                "latent_size": self.latent_size}

    def _build_module(self, **params):
        return _GANomaly(**params)

    def _make_optimizer(self, module):
        # One optimiser for both players: each loss term only reaches its
        # own network's weights (see _GANomaly.loss).
        return torch.optim.Adam(module.parameters(), lr=self.learning_rate, betas=(0.5, 0.999))

    def _loss(self, module, batch, generator):
        return module.loss(batch)

    def _module_scores(self, module, batch):
        return module.scores(batch)[:, None, None]
