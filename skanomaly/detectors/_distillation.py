"""Knowledge-distillation heads: STFPM and Reverse Distillation."""

import numbers

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils._param_validation import Interval, StrOptions
from torch import nn

from ..backbones import _build_architecture, load_backbone
from ._base import _IMAGE_SCORE_SIGMA_CONSTRAINT
from ._trainable import _PixelHeadMixin, _TrainableDetector


def _conv_bn_relu(n_in, n_out, stride=1):
    return nn.Sequential(
        nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(n_out),
        nn.ReLU(inplace=True),
    )


def _up_block(n_in, n_out):
    return nn.Sequential(
        nn.ConvTranspose2d(n_in, n_out, 2, stride=2, bias=False),
        nn.BatchNorm2d(n_out),
        nn.ReLU(inplace=True),
        _conv_bn_relu(n_out, n_out),
    )


class _ReverseStudent(nn.Module):
    """RD's one-class bottleneck (multi-scale fusion, one stride-2 stage) and
    the decoder that rebuilds the teacher's stages from it, coarse to fine."""

    def __init__(self, channels, strides, width):
        super().__init__()
        coarsest = strides[-1]
        # Fuse: bring every tapped stage to the coarsest tap's grid.
        self.fuse = nn.ModuleList()
        for n_channels, stride in zip(channels, strides):
            steps, n_in = [], n_channels
            factor = coarsest // stride
            while factor > 1:
                steps.append(_conv_bn_relu(n_in, width, stride=2))
                n_in, factor = width, factor // 2
            steps.append(_conv_bn_relu(n_in, width))
            self.fuse.append(nn.Sequential(*steps))
        bottleneck = width * len(channels)
        self.encode = nn.Sequential(
            _conv_bn_relu(width * len(channels), bottleneck, stride=2),
            _conv_bn_relu(bottleneck, bottleneck),
        )
        # Decode: one upsampling block per tap, coarsest first.
        self.up = nn.ModuleList()
        self.heads = nn.ModuleList()
        n_in = bottleneck
        hidden = [max(width, n) for n in channels]
        for level in reversed(range(len(channels))):
            factor = 2 if level == len(channels) - 1 else strides[level + 1] // strides[level]
            blocks, n_prev = [], n_in
            while factor > 1:
                blocks.append(_up_block(n_prev, hidden[level]))
                n_prev, factor = hidden[level], factor // 2
            self.up.append(nn.Sequential(*blocks))
            self.heads.append(nn.Conv2d(hidden[level], channels[level], 1))
            n_in = hidden[level]

    def forward(self, teacher_features):
        fused = torch.cat([f(t) for f, t in zip(self.fuse, teacher_features)], 1)
        x = self.encode(fused)
        outputs = []
        for up, head in zip(self.up, self.heads):
            x = up(x)
            outputs.append(head(x))
        return outputs[::-1]  # fine to coarse, as the teacher's


# The teacher's stages at strides 4, 8 and 16 (ResNet layer1-3), as in STFPM
# and Reverse Distillation, on any backbone.
_DEFAULT_STRIDES = (4, 8, 16)


class _Distillation(nn.Module):
    """Frozen teacher plus trainable student; the teacher stays in eval mode."""

    def __init__(self, backbone, layers, method, width):
        super().__init__()
        teacher = _build_architecture(backbone)
        self.layers = tuple(layers)
        self.method = method
        self._teacher = teacher  # Backbone wrapper (hooks); its model is registered below
        self.teacher = teacher.model
        if method == "stfpm":
            student = _build_architecture(backbone)
            for parameter in student.model.parameters():
                parameter.requires_grad_(True)
            self._student = student
            self.student = student.model
        else:
            self.student = _ReverseStudent(
                [teacher.channels[name] for name in self.layers],
                [teacher.stages[name] for name in self.layers],
                width,
            )

    def train(self, mode=True):
        super().train(mode)
        self.teacher.eval()  # frozen: its batch-norm statistics must not move
        return self

    def teacher_features(self, images):
        with torch.no_grad():
            return [f.detach() for f in self._teacher.extract(images, self.layers)]

    def student_features(self, images, teacher_features):
        if self.method == "stfpm":
            return self._student.extract(images, self.layers)
        return self.student(teacher_features)

    def distances(self, images, teacher_features=None):
        """Per-position ``1 - cos`` between teacher and student, one map per tap."""
        if teacher_features is None:
            teacher_features = self.teacher_features(images)
        student_features = self.student_features(images, teacher_features)
        return [
            1 - F.cosine_similarity(t, s, dim=1)
            for t, s in zip(teacher_features, student_features)
        ]

    def anomaly_map(self, images):
        maps = self.distances(images)
        size = maps[0].shape[-2:]
        combined = None
        for layer_map in maps:
            layer_map = F.interpolate(layer_map[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
            if combined is None:
                combined = layer_map
            elif self.method == "stfpm":
                combined = combined * layer_map  # STFPM multiplies the stages' maps
            else:
                combined = combined + layer_map  # RD adds them
        return combined


class DistillationDetector(_PixelHeadMixin, _TrainableDetector):
    """Student-teacher heads on images: STFPM and Reverse Distillation.

    The teacher is a frozen ImageNet backbone. A student learns, on normal
    images only, to reproduce the teacher's features at several stages;
    where it fails (defects it never saw) the per-position distance
    ``1 - cos(teacher, student)`` is large.

    - ``method="stfpm"`` (Wang et al., 2021): the student has the teacher's
      architecture, randomly initialised, and sees the same image; the
      anomaly map is the product of the stages' distance maps.
    - ``method="reverse_distillation"`` (Deng & Li, 2022): the student is a
      decoder that rebuilds the teacher's stages, coarse to fine, from a
      one-class bottleneck (the teacher's stages fused and squeezed to a
      coarser grid), so anomalous detail does not pass through; the map is
      the sum of the stages' distance maps.

    Why a head on pixels: the student must run on the image itself, so this
    head takes normalised images, not frozen features. It is still one step
    of a Pipeline, after :class:`~skanomaly.preprocessing.ImagePreprocessor`
    with the same ``backbone``, which reads and resizes images;
    :func:`~skanomaly.make_stfpm` and
    :func:`~skanomaly.make_reverse_distillation` build that pipeline. The
    patch grid of ``score_patches`` is the finest tapped stage's (stride 4:
    64 x 64 for 256 px images); an image's score is its largest patch score
    (optionally after a light blur, ``image_score_sigma``).
    Teacher features of the training images are computed once and kept
    during ``fit``.

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
        Registered backbone used as teacher (and, for STFPM, the student's
        architecture).
    method : {"stfpm", "reverse_distillation"}, default="stfpm"
    weights : "default", path or None, default="default"
        Teacher weights, see :func:`skanomaly.backbones.load_backbone`.
    layers : tuple of str or None, default=None
        Teacher stages to distil; None: the strides 4, 8 and 16 stages.
    width : int, default=64
        Channels of the reverse-distillation bottleneck's fusion branches
        (the decoder's are at least that); unused by STFPM.
    image_score_sigma : float, default=0.0
        The image score is the largest patch score after a Gaussian blur of
        this many grid cells (0: the largest raw patch score; 1: the 4 px
        blur of :func:`~skanomaly.anomaly_maps` at the stride-4 grid, as
        anomalib scores Reverse Distillation). ``score_patches`` is not
        blurred. :func:`~skanomaly.make_reverse_distillation` sets 2 (on
        the panel, ``benchmarks/bench_score_sigma.py``, seed 0, its mean
        image AUROC is level from 0 to 2 cells, 0.807-0.811, and its worst
        set, KolektorSDD, rises from 0.599 to 0.654 at 2);
        :func:`~skanomaly.make_stfpm` keeps 0 (best on every set that is
        not saturated).
    max_epochs : int, default=50
        Passes over the training images.
    batch_size : int, default=8
        Images per step.
    learning_rate : float, default=5e-3
        Adam's step size (Adam with betas (0.5, 0.999), as RD).
    validation_fraction : float in [0, 1), default=0.1
        Share of the non-calibration images held out for early stopping.
    n_iter_no_change : int or None, default=5
        Epochs without a better validation loss before stopping; None
        disables early stopping.
    warm_start : bool, default=False
        Continue training the current student on the next ``fit``.
    contamination : float in (0, 0.5], default=0.05
        Target false-alarm rate of ``predict`` on new normal images.
    calibration_size : float in (0, 1) or int, default=0.1
        Share (or number) of images held out to calibrate ``offset_``.
    random_state : int, RandomState instance or None, default=None
        Seeds splits, the student's initialisation and batch order.
    device : str, default="cpu"
        Torch device for training and scoring.
    verbose : int, default=0
        A progress bar over epochs with the losses when > 0.

    Attributes
    ----------
    module_ : torch.nn.Module
        Teacher and student (saved as a state dict when pickled, teacher
        included, so loading needs no weights file).
    module_params_ : dict
        Arguments the networks were built with.
    loss_curve_, validation_loss_curve_ : list of float
        Mean loss (``1 - cos``, summed over stages) of each epoch.
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
    skanomaly.make_stfpm, skanomaly.make_reverse_distillation : Pipelines.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.detectors import DistillationDetector
    >>> from skanomaly.preprocessing import ImagePreprocessor
    >>> rng = np.random.default_rng(0)
    >>> pixels = ImagePreprocessor(image_size=64).fit_transform(rng.random((10, 64, 64, 3)))
    >>> head = DistillationDetector(method="reverse_distillation", max_epochs=1,
    ...                             validation_fraction=0, random_state=0).fit(pixels)
    >>> head.score_patches(pixels[:2]).shape
    (2, 16, 16)
    """

    _factory_name = "make_stfpm"

    _parameter_constraints = {
        **_TrainableDetector._parameter_constraints,
        "backbone": [str],  # checked by load_backbone: registry or "timm/..."
        "method": [StrOptions({"stfpm", "reverse_distillation"})],
        "weights": "no_validation",
        "layers": [list, tuple, None],
        "width": [Interval(numbers.Integral, 1, None, closed="left")],
        "image_score_sigma": _IMAGE_SCORE_SIGMA_CONSTRAINT,
    }

    def __init__(
        self,
        backbone="efficientnet_lite0",
        *,
        method="stfpm",
        weights="default",
        layers=None,
        width=64,
        image_score_sigma=0.0,
        max_epochs=50,
        batch_size=8,
        learning_rate=5e-3,
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
        self.method = method
        self.weights = weights
        self.layers = layers
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
        teacher = _build_architecture(self.backbone)
        layers = teacher.check_layers(_DEFAULT_STRIDES if self.layers is None else self.layers)
        return {"backbone": self.backbone, "layers": layers, "method": self.method,
                "width": self.width}

    def _build_module(self, **params):
        return _Distillation(**params)

    def _init_module(self, module, X, train_idx):
        weights = load_backbone(self.backbone, self.weights).model.state_dict()
        module.teacher.load_state_dict(weights)

    def _make_optimizer(self, module):
        params = [p for p in module.student.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.learning_rate, betas=(0.5, 0.999))

    def _fit_normal(self, X, fit_idx, rng):
        # Teacher outputs never change: compute each training image's once.
        self._teacher_cache = {}
        try:
            super()._fit_normal(X, fit_idx, rng)
        finally:
            del self._teacher_cache

    def _module_input(self, module, grids):
        # (images, the teacher's features when cached during the fit)
        return super()._module_input(module, grids), None

    def _batch_tensor(self, module, X, idx):
        images, _ = super()._batch_tensor(module, X, idx)
        cache = getattr(self, "_teacher_cache", None)
        if cache is None:
            return images, None
        missing = [i for i in idx if i not in cache]
        if missing:
            positions = np.searchsorted(idx, missing)
            feats = module.teacher_features(images[positions])
            for row, i in enumerate(missing):
                cache[i] = [f[row:row + 1] for f in feats]
        teacher = [torch.cat([cache[i][k] for i in idx]) for k in range(len(cache[idx[0]]))]
        return images, teacher

    def _loss(self, module, batch, generator):
        images, teacher = batch
        return sum(d.mean() for d in module.distances(images, teacher))

    def _module_scores(self, module, batch):
        images, _ = batch
        return module.anomaly_map(images)
