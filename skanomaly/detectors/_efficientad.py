"""EfficientAD head: a distilled patch-description network, a student and an autoencoder."""

import numbers

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils._param_validation import Interval
from torch import nn

from ..backbones import _build_architecture, load_backbone
from ._synthetic import _textures
from ._trainable import _EpochBar, _PixelHeadMixin, _TrainableDetector, _train_stage

# The student learns the teacher only where it is worst: squared errors above
# this quantile of the batch's (the paper's hard-feature loss).
_HARD_QUANTILE = 0.999
# Maps are put on one scale by these quantiles of held-out normal maps: 0.9
# goes to 0 and 0.995 to 0.1 (the paper's normalisation).
_MAP_QUANTILES = (0.9, 0.995)
# Latent channels of the autoencoder's bottleneck (the paper's 64).
_LATENT_SIZE = 64
_DROPOUT = 0.2


def _pdn(n_out, width):
    """Patch description network at stride 8: four convolutions and two
    poolings (receptive field 50 px), the paper's small PDN made cheaper for a
    CPU (a stride-2 first convolution, stride 8 instead of 4)."""
    return nn.Sequential(
        nn.Conv2d(3, width, 4, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.AvgPool2d(2, 2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(inplace=True),
        nn.AvgPool2d(2, 2),
        nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(4 * width, n_out, 3, padding=1),
    )


class _AutoEncoder(nn.Module):
    """Image -> 64-dimensional code -> the teacher's feature grid."""

    def __init__(self, n_out, width):
        super().__init__()
        chans = [3, width, width, 2 * width, 2 * width, 2 * width]
        self.encode = nn.Sequential(*[
            layer for n_in, n_next in zip(chans, chans[1:])
            for layer in (nn.Conv2d(n_in, n_next, 4, stride=2, padding=1), nn.ReLU(inplace=True))
        ])
        self.code = nn.Conv2d(2 * width, _LATENT_SIZE, 1)
        self.decode = nn.ModuleList(
            nn.Conv2d(_LATENT_SIZE if i == 0 else 2 * width, 2 * width, 3, padding=1)
            for i in range(4)
        )
        self.out = nn.Conv2d(2 * width, n_out, 3, padding=1)

    def forward(self, x, grid, generator=None):
        code = self.code(F.adaptive_avg_pool2d(self.encode(x), 1))
        h = code
        for i, conv in enumerate(self.decode):
            size = (max(1, grid[0] >> (3 - i)), max(1, grid[1] >> (3 - i)))
            h = F.interpolate(h, size=size, mode="bilinear", align_corners=False)
            h = F.relu(conv(h))
            if self.training:
                # Dropout from the fit's generator, so a seed fixes the model.
                keep = torch.rand(h.shape, generator=generator, device=h.device) >= _DROPOUT
                h = h * keep / (1 - _DROPOUT)
        return self.out(F.interpolate(h, size=grid, mode="bilinear", align_corners=False))


class _EfficientAD(nn.Module):
    def __init__(self, n_features, width):
        super().__init__()
        self.n_features = n_features
        self.teacher = _pdn(n_features, width)
        self.student = _pdn(2 * n_features, width)
        self.autoencoder = _AutoEncoder(n_features, width)
        self.register_buffer("teacher_mean", torch.zeros(n_features))
        self.register_buffer("teacher_std", torch.ones(n_features))
        # (st low, st high, ae low, ae high), set from held-out maps after training.
        self.register_buffer("map_quantiles", torch.tensor([0.0, 1.0, 0.0, 1.0]))

    def train(self, mode=True):
        super().train(mode)
        self.teacher.eval()  # distilled before training, then frozen
        return self

    def teacher_features(self, x):
        with torch.no_grad():
            t = self.teacher(x)
        return (t - self.teacher_mean[:, None, None]) / self.teacher_std[:, None, None]

    def outputs(self, x, generator=None):
        t = self.teacher_features(x)
        s = self.student(x)
        a = self.autoencoder(x, t.shape[-2:], generator)
        return t, s[:, : self.n_features], s[:, self.n_features:], a

    def loss(self, x, generator):
        t, s_teacher, s_ae, a = self.outputs(x, generator)
        distance = (t - s_teacher).pow(2)
        if self.training:
            # torch.quantile takes at most 2**24 values: subsample big batches.
            step = -(-distance.numel() // 2**24)
            hard = torch.quantile(distance.flatten()[::step], _HARD_QUANTILE)
            student = distance[distance >= hard].mean()
            penalty_images = _textures(len(x), x.shape[2], x.shape[3], generator, x.device)
            penalty = self.student(penalty_images)[:, : self.n_features].pow(2).mean()
        else:
            student, penalty = distance.mean(), 0.0
        autoencoder = (t - a).pow(2).mean()
        student_ae = (a.detach() - s_ae).pow(2).mean()
        return student + penalty + autoencoder + student_ae

    def raw_maps(self, x):
        t, s_teacher, s_ae, a = self.outputs(x)
        return (t - s_teacher).pow(2).mean(1), (a - s_ae).pow(2).mean(1)

    def forward(self, x):
        st, ae = self.raw_maps(x)
        q = self.map_quantiles
        # Each map: its held-out 0.9 quantile -> 0, 0.995 quantile -> 0.1.
        st = 0.1 * (st - q[0]) / (q[1] - q[0]).clamp_min(1e-12)
        ae = 0.1 * (ae - q[2]) / (q[3] - q[2]).clamp_min(1e-12)
        return 0.5 * st + 0.5 * ae


class EfficientADDetector(_PixelHeadMixin, _TrainableDetector):
    """EfficientAD (Batzner et al., 2024): student-teacher plus autoencoder.

    A small patch description network (PDN, the teacher) describes every
    8 x 8 patch; a student PDN learns to reproduce it on normal images, and
    an autoencoder learns to rebuild the teacher's features through a
    64-dimensional bottleneck, with the student learning the autoencoder's
    output as well. The student-teacher difference finds local defects; the
    student-autoencoder difference finds logical ones (a part missing or out
    of place), since the autoencoder can only rebuild the normal layout.
    The two maps are put on one scale by quantiles (0.9 and 0.995) of
    held-out normal maps and averaged; an image's score is the largest
    value of its map.

    The paper's teacher is distilled on ImageNet from a WideResNet-101,
    which cannot be downloaded here. This one is distilled, before the
    student trains, from ``backbone``'s frozen stride-8 and stride-16
    features (as :class:`~skanomaly.embedders.PatchEmbedder` taps them) on
    the training images, flipped and colour-jittered, and on generated
    textures; so it describes this product's patches rather than
    ImageNet's. Also in place of ImageNet, the student's penalty (keeping
    it from imitating the teacher off the normal images) uses generated
    smooth random textures. The PDNs work at stride 8 with half the
    paper's channels so that an epoch takes seconds on a CPU.

    It takes normalised pixels from
    :class:`~skanomaly.preprocessing.ImagePreprocessor` with the same
    ``backbone``; :func:`~skanomaly.make_efficientad` builds the pipeline.

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
        Registered backbone whose features the teacher is distilled from.
    weights : "default", path or None, default="default"
        That backbone's weights, see :func:`skanomaly.backbones.load_backbone`.
    width : int, default=32
        Channels of the PDNs' first convolution (then 2x and 4x).
    teacher_epochs : int, default=20
        Passes over the training images to distil the teacher.
    max_epochs : int, default=30
        Passes over the training images for the student and autoencoder.
    batch_size : int, default=8
        Images per step.
    learning_rate : float, default=1e-3
        Adam's step size (weight decay 1e-5, as the paper).
    validation_fraction : float in [0, 1), default=0.1
        Share of the non-calibration images held out for early stopping and
        for the map quantiles (when 0, the training images give them).
    n_iter_no_change : int or None, default=5
        Epochs without a better validation loss before stopping; None
        disables early stopping.
    warm_start : bool, default=False
        Continue training the current student and autoencoder on the next
        ``fit`` (the teacher is kept).
    contamination : float in (0, 0.5], default=0.05
        Target false-alarm rate of ``predict`` on new normal images.
    calibration_size : float in (0, 1) or int, default=0.1
        Share (or number) of images held out to calibrate ``offset_``.
    random_state : int, RandomState instance or None, default=None
        Seeds splits, initialisation, augmentation, textures and batch order.
    device : str, default="cpu"
        Torch device for training and scoring.
    verbose : int, default=0
        Progress bars over the teacher's and the student's epochs when > 0.

    Attributes
    ----------
    module_ : torch.nn.Module
        Teacher, student and autoencoder (saved as a state dict when pickled;
        the backbone is not kept).
    module_params_ : dict
        Arguments the networks were built with.
    teacher_loss_curve_ : list of float
        Mean distillation loss of each teacher epoch.
    loss_curve_, validation_loss_curve_ : list of float
        Mean loss of each student epoch on training and validation images.
    n_iter_ : int
        Student epochs run.
    offset_ : float
        Threshold on ``score_samples``.
    calibration_scores_, calibration_patch_scores_ : ndarray
        Sorted scores of the held-out normal images.
    n_features_in_ : int
        Always 3 (RGB).

    See Also
    --------
    skanomaly.make_efficientad : Pipeline with the preprocessing.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.detectors import EfficientADDetector
    >>> from skanomaly.preprocessing import ImagePreprocessor
    >>> rng = np.random.default_rng(0)
    >>> pixels = ImagePreprocessor(image_size=64).fit_transform(rng.random((10, 64, 64, 3)))
    >>> head = EfficientADDetector(width=8, teacher_epochs=1, max_epochs=1,
    ...                            validation_fraction=0, random_state=0).fit(pixels)
    >>> head.score_patches(pixels[:2]).shape
    (2, 8, 8)
    """

    _factory_name = "make_efficientad"

    _parameter_constraints = {
        **_TrainableDetector._parameter_constraints,
        "backbone": [str],
        "weights": "no_validation",
        "width": [Interval(numbers.Integral, 1, None, closed="left")],
        "teacher_epochs": [Interval(numbers.Integral, 1, None, closed="left")],
    }

    def __init__(
        self,
        backbone="efficientnet_lite0",
        *,
        weights="default",
        width=32,
        teacher_epochs=20,
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
        self.teacher_epochs = teacher_epochs
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
        # Channel counts only: the weights are read once, in _init_module.
        backbone = _build_architecture(self.backbone)
        n_features = sum(backbone.channels[name] for name in backbone.default_layers)
        return {"n_features": int(n_features), "width": self.width}

    def _build_module(self, **params):
        return _EfficientAD(**params)

    def _targets(self, backbone, images, grid):
        feats = backbone.extract(images, backbone.default_layers)
        feats = [F.interpolate(f, size=grid, mode="bilinear", align_corners=False) for f in feats]
        return torch.cat(feats, 1)

    def _init_module(self, module, X, train_idx):
        """Distil the teacher from the backbone's features, then freeze it."""
        backbone = load_backbone(self.backbone, self.weights)
        backbone.model.to(self._device_)
        seed = int(torch.randint(np.iinfo(np.int32).max, ()))
        generator = torch.Generator(device=self._device_).manual_seed(seed)
        order_rng = np.random.RandomState(seed)
        grid = module.teacher(torch.zeros(1, 3, *X.shape[1:3], device=self._device_)).shape[-2:]
        # Target statistics, so every channel weighs the same in the loss.
        stats = [self._targets(backbone, self._batch_tensor(
            module, X, idx), grid) for idx in np.array_split(train_idx[:64], 8) if len(idx)]
        stats = torch.cat(stats).transpose(0, 1).flatten(1)
        mean, std = stats.mean(1)[:, None, None], stats.std(1).clamp_min(1e-6)[:, None, None]
        teacher = module.teacher.train()
        for p in teacher.parameters():
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(teacher.parameters(), lr=self.learning_rate, weight_decay=1e-5)

        def distillation_loss(chunk):
            images = self._augment(self._batch_tensor(module, X, chunk), generator)
            textures = _textures(len(images), images.shape[2], images.shape[3],
                                 generator, images.device)
            batch = torch.cat([images, textures])
            with torch.no_grad():
                target = (self._targets(backbone, batch, grid) - mean) / std
            return (teacher(batch) - target).pow(2).mean()

        bar = _EpochBar(self.teacher_epochs, self.verbose, "EfficientAD teacher")
        self.teacher_loss_curve_ = _train_stage(optimizer, train_idx, self.teacher_epochs,
                                                self.batch_size, order_rng, bar, distillation_loss)
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        # The student learns the teacher's channels standardised on normal images.
        with torch.no_grad():
            outs = torch.cat([teacher(self._batch_tensor(module, X, idx))
                              for idx in np.array_split(train_idx, -(-len(train_idx) // 32))])
        outs = outs.transpose(0, 1).flatten(1)
        module.teacher_mean.copy_(outs.mean(1))
        module.teacher_std.copy_(outs.std(1).clamp_min(1e-6))

    @staticmethod
    def _augment(images, generator):
        """Random flips and brightness / contrast jitter of a normalised batch."""
        n = len(images)
        flip = torch.rand(n, generator=generator, device=images.device) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        flip = torch.rand(n, generator=generator, device=images.device) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-2), images)
        gain = 1 + 0.2 * (torch.rand(n, 1, 1, 1, generator=generator, device=images.device) - 0.5)
        shift = 0.2 * (torch.rand(n, 1, 1, 1, generator=generator, device=images.device) - 0.5)
        return images * gain + shift

    def _make_optimizer(self, module):
        params = [*module.student.parameters(), *module.autoencoder.parameters()]
        return torch.optim.Adam(params, lr=self.learning_rate, weight_decay=1e-5)

    def _split_validation(self, fit_idx, rng):
        train_idx, val_idx = super()._split_validation(fit_idx, rng)
        self._quantile_idx = val_idx if len(val_idx) else train_idx
        return train_idx, val_idx

    def _fit_normal(self, X, fit_idx, rng):
        super()._fit_normal(X, fit_idx, rng)
        module = self.module_
        idx = self._quantile_idx
        del self._quantile_idx
        with torch.no_grad():
            maps = [module.raw_maps(self._batch_tensor(module, X, idx[i:i + 32]))
                    for i in range(0, len(idx), 32)]
        st = torch.cat([m[0] for m in maps]).flatten()
        ae = torch.cat([m[1] for m in maps]).flatten()
        q = torch.tensor(_MAP_QUANTILES, dtype=st.dtype, device=st.device)
        module.map_quantiles.copy_(torch.cat([torch.quantile(st, q), torch.quantile(ae, q)]))

    def _loss(self, module, batch, generator):
        return module.loss(batch, generator)

    def _module_scores(self, module, batch):
        return module(batch)
