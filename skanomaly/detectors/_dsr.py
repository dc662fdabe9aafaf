"""DSR head: anomalies made in a learned quantised code space, segmented."""

import numbers

import numpy as np
import torch
from sklearn.utils._param_validation import Interval
from torch import nn

from ._synthetic import _Bottleneck, _evidence, _focal_loss, _perlin_masks, _SegmentationNet
from ._base import _IMAGE_SCORE_SIGMA_CONSTRAINT
from ._trainable import _EpochBar, _standardise_channels, _train_stage, _TrainableDetector

# Weight of the encoder's commitment to its codes (van den Oord et al., 2017).
_COMMITMENT = 0.25
# A code is replaced by one of its nearest codes of rank 1 .. this share of
# the codebook: near-in-distribution anomalies, as DSR samples them.
_REPLACEMENT_RANKS = 0.25


class _DSR(nn.Module):
    def __init__(self, n_features, width, n_codes, code_size):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        # Stage 1: the quantised latent space, trained first, then frozen.
        self.encoder = nn.Sequential(nn.Conv2d(n_features, width, 1), nn.ReLU(inplace=True),
                                     nn.Conv2d(width, code_size, 3, padding=1))
        self.codebook = nn.Parameter(torch.randn(n_codes, code_size))
        self.general_decoder = nn.Sequential(nn.Conv2d(code_size, width, 3, padding=1),
                                             nn.ReLU(inplace=True), nn.Conv2d(width, n_features, 1))
        # Stage 2: back to normal codes, decoded, then compared.
        self.restriction = _Bottleneck(code_size, code_size, width)
        self.object_decoder = nn.Sequential(nn.Conv2d(code_size, width, 3, padding=1),
                                            nn.ReLU(inplace=True), nn.Conv2d(width, n_features, 1))
        self.detector = _SegmentationNet(3 * n_features, width)

    def stage_one(self):
        return [*self.encoder.parameters(), self.codebook, *self.general_decoder.parameters()]

    def train(self, mode=True):
        super().train(mode)
        self.encoder.eval()
        self.general_decoder.eval()
        return self

    def standardise(self, x):
        return (x - self.mean[:, None, None]) / self.scale[:, None, None]

    def quantise(self, e):
        """Nearest code of each cell: (codes (n, d, h, w), indices (n, h, w))."""
        flat = e.permute(0, 2, 3, 1).reshape(-1, e.shape[1])
        distance = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.T
                    + self.codebook.pow(2).sum(1)[None])
        idx = distance.argmin(1)
        codes = self.codebook[idx].reshape(e.shape[0], e.shape[2], e.shape[3], -1).permute(0, 3, 1, 2)
        return codes, idx.reshape(e.shape[0], e.shape[2], e.shape[3])

    def vq_loss(self, z):
        e = self.encoder(z)
        codes, _ = self.quantise(e)
        straight = e + (codes - e).detach()
        return ((self.general_decoder(straight) - z).pow(2).mean()
                + (codes - e.detach()).pow(2).mean() + _COMMITMENT * (e - codes.detach()).pow(2).mean())

    def loss(self, z, generator):
        with torch.no_grad():
            codes, idx = self.quantise(self.encoder(z))
            n, _, h, w = codes.shape
            masks = _perlin_masks(n, h, w, generator, z.device)[:, 0]
            # Replacement: a random near neighbour of each cell's code.
            ranked = torch.cdist(self.codebook, self.codebook).argsort(1)
            top = max(1, int(_REPLACEMENT_RANKS * len(self.codebook)))
            rank = torch.randint(1, top + 1, idx.shape, generator=generator, device=z.device)
            fake = self.codebook[ranked[idx, rank.clamp_max(len(self.codebook) - 1)]].permute(0, 3, 1, 2)
            altered = torch.where(masks[:, None] > 0, fake, codes)
            # The features themselves, moved by what the swap changes in
            # their decoding: a codebook learned on normal features only
            # quantises a real defect to normal codes, so the detector's
            # general view must be the features, not their decoding.
            general = z + self.general_decoder(altered) - self.general_decoder(codes)
        restored = self.restriction(altered)
        specific = self.object_decoder(restored)
        logits = self.detector(_evidence(general, specific))
        return ((restored - codes).pow(2).mean() + (specific - z).pow(2).mean()
                + _focal_loss(logits, masks))

    def forward(self, z):
        codes, _ = self.quantise(self.encoder(z))
        specific = self.object_decoder(self.restriction(codes))
        return torch.sigmoid(self.detector(_evidence(z, specific)))


class DSRDetector(_TrainableDetector):
    """DSR (Zavrtanik et al., 2022): dual subspace re-projection on quantised features.

    First a vector-quantised model of the patch features is trained on the
    normal images (an encoder, a codebook and a general decoder that
    rebuilds the features from their codes) and frozen. Then anomalies are
    made in that code space: inside Perlin-noise masks on about half of the
    images, each cell's code is replaced by one of its near neighbours in
    the codebook (anomalies close to the normal ones, as the paper samples
    them). A subspace-restriction network learns to map the altered codes
    back to the normal ones, an object-specific decoder rebuilds the normal
    features from them, and an anomaly detection network, seeing a general
    view (which keeps the anomaly) beside the object-specific one (which
    removes it), learns to segment the mask (focal loss). Its output is the
    anomaly map; an image's score is the map's largest value after a blur
    of ``image_score_sigma`` cells.

    The general view is the features themselves, moved during training by
    what the code swap changes in the general decoder's output: the paper
    decodes the quantised codes, but a codebook learned on the product's
    normal features alone quantises a real defect to normal codes, so its
    decoding loses where the defect is (bottle, seed 0: pixel AUROC 0.761
    from the decoding, 0.855 from the features). The detection network
    also sees the saturated squared residual between the general and the
    object-specific views, as :class:`DRAEMDetector` does: a real defect
    is rebuilt as normal by the object-specific decoder, so its residual
    marks it however unlike the code swaps it looks (bottle, seed 0: image /
    pixel AUROC 0.963 / 0.855 without it, 0.999 / 0.954 with it).

    What differs from the paper, so that it trains in CPU minutes: the
    paper's VQ model is trained on ImageNet images with two codebook levels;
    this one is trained here, on the product's own frozen patch features
    (:class:`~skanomaly.embedders.PatchEmbedder` grids), with one codebook
    at the grid's stride, and the decoders rebuild features, not pixels, so
    there is no upsampling module: the map has one value per grid cell.

    Parameters
    ----------
    n_codes : int, default=256
        Codebook size.
    code_size : int, default=64
        Dimension of a code.
    width : int, default=64
        Channels of the networks.
    vq_epochs : int, default=20
        Passes over the training images to fit the quantised model.
    image_score_sigma : float >= 0, default=1.0
        Gaussian blur (in cells) of the map before its maximum is taken as
        the image score; 0 takes the largest cell.
    max_epochs : int, default=50
        Passes over the training images for the second stage.
    batch_size : int, default=16
        Images per step.
    learning_rate : float, default=1e-3
        Adam's step size (both stages).
    validation_fraction : float in [0, 1), default=0.1
        Share of the non-calibration images held out for early stopping (on
        the same altered codes every epoch).
    n_iter_no_change : int or None, default=5
        Epochs without a better validation loss before stopping; None
        disables early stopping.
    warm_start : bool, default=False
        Continue training the second stage on the next ``fit`` (the
        quantised model is kept).
    contamination : float in (0, 0.5], default=0.05
        Target false-alarm rate of ``predict`` on new normal images.
    calibration_size : float in (0, 1) or int, default=0.1
        Share (or number) of images held out to calibrate ``offset_``.
    random_state : int, RandomState instance or None, default=None
        Seeds splits, initialisation, codebook start, anomalies and batch
        order.
    device : str, default="cpu"
        Torch device for training and scoring.
    verbose : int, default=0
        Progress bars over both stages' epochs when > 0.

    Attributes
    ----------
    module_ : torch.nn.Module
        The quantised model and the second-stage networks (saved as a state
        dict when pickled).
    module_params_ : dict
        Arguments the networks were built with.
    vq_loss_curve_ : list of float
        Mean loss of each epoch of the quantised model.
    loss_curve_, validation_loss_curve_ : list of float
        Mean second-stage loss of each epoch on training and validation images.
    n_iter_ : int
        Second-stage epochs run.
    offset_ : float
        Threshold on ``score_samples``.
    calibration_scores_, calibration_patch_scores_ : ndarray
        Sorted scores of the held-out normal images.
    n_features_in_ : int
        Number of features per patch.

    See Also
    --------
    skanomaly.make_dsr : Pipeline with the patch embedder.
    DRAEMDetector : Anomalies painted on pixels instead.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.detectors import DSRDetector
    >>> grids = np.random.default_rng(0).normal(size=(12, 8, 8, 16)).astype(np.float32)
    >>> head = DSRDetector(n_codes=16, code_size=8, width=8, vq_epochs=1, max_epochs=1,
    ...                    validation_fraction=0, random_state=0).fit(grids)
    >>> head.score_patches(grids[:2]).shape
    (2, 8, 8)
    """

    _parameter_constraints = {
        **_TrainableDetector._parameter_constraints,
        "n_codes": [Interval(numbers.Integral, 2, None, closed="left")],
        "code_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "width": [Interval(numbers.Integral, 1, None, closed="left")],
        "vq_epochs": [Interval(numbers.Integral, 1, None, closed="left")],
        "image_score_sigma": _IMAGE_SCORE_SIGMA_CONSTRAINT,
    }

    def __init__(
        self,
        *,
        n_codes=256,
        code_size=64,
        width=64,
        vq_epochs=20,
        image_score_sigma=1.0,
        max_epochs=50,
        batch_size=16,
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
        self.n_codes = n_codes
        self.code_size = code_size
        self.width = width
        self.vq_epochs = vq_epochs
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
        return {"n_features": int(X.shape[-1]), "width": self.width,
                "n_codes": self.n_codes, "code_size": self.code_size}

    def _build_module(self, **params):
        return _DSR(**params)

    def _module_input(self, module, grids):
        return module.standardise(super()._module_input(module, grids))

    def _init_module(self, module, X, train_idx):
        """Standardise the features, then fit the quantised model and freeze it."""
        _standardise_channels(module, X, train_idx)
        seed = int(torch.randint(np.iinfo(np.int32).max, ()))
        order_rng = np.random.RandomState(seed)
        with torch.no_grad():
            # Codes start at encoded training cells, so none starts unused.
            start = self._batch_tensor(module, X, train_idx[: self.batch_size])
            e = module.encoder(start).permute(0, 2, 3, 1).reshape(-1, self.code_size)
            pick = torch.from_numpy(order_rng.choice(len(e), self.n_codes, replace=len(e) < self.n_codes))
            module.codebook.copy_(e[pick.to(e.device)])
        params = module.stage_one()
        optimizer = torch.optim.Adam(params, lr=self.learning_rate)
        module.encoder.train()
        module.general_decoder.train()
        bar = _EpochBar(self.vq_epochs, self.verbose, "DSR quantised model")
        self.vq_loss_curve_ = _train_stage(
            optimizer, train_idx, self.vq_epochs, self.batch_size, order_rng, bar,
            lambda chunk: module.vq_loss(self._batch_tensor(module, X, chunk)))
        for p in params:
            p.requires_grad_(False)

    def _make_optimizer(self, module):
        params = [*module.restriction.parameters(), *module.object_decoder.parameters(),
                  *module.detector.parameters()]
        return torch.optim.Adam(params, lr=self.learning_rate)

    def _loss(self, module, batch, generator):
        return module.loss(batch, generator)

    def _module_scores(self, module, batch):
        return module(batch)
