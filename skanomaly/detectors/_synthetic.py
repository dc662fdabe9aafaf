"""Synthetic anomalies for the heads that learn to segment them (DRAEM, DSR).

Both papers paint anomalies inside Perlin-noise masks; DRAEM fills them with
DTD textures, which cannot be downloaded here, so the fillings are generated:
smooth colour fields, stripes and a flipped other training image.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

# Perlin lattices have 2**k cells per side, k in [0, _PERLIN_OCTAVES) (DRAEM's
# scales), and the mask keeps noise above _PERLIN_THRESHOLD (DRAEM's 0.5).
_PERLIN_OCTAVES = 6
_PERLIN_THRESHOLD = 0.5
# Share of training images given an anomaly (the papers' one half).
_ANOMALY_PROBABILITY = 0.5
# Focusing parameter of the focal loss (DRAEM's and DSR's gamma).
_FOCAL_GAMMA = 2.0


def _fade(t):
    return t * t * t * (t * (t * 6 - 15) + 10)


def _perlin(height, width, cells, generator, device):
    """One Perlin noise field of ``cells = (rows, cols)`` lattice cells, values
    in about [-1, 1]."""
    rows, cols = cells
    angles = 2 * math.pi * torch.rand(rows + 1, cols + 1, generator=generator, device=device)
    grads = torch.stack([torch.cos(angles), torch.sin(angles)], -1)
    y = torch.arange(height, device=device, dtype=torch.float32) * rows / height
    x = torch.arange(width, device=device, dtype=torch.float32) * cols / width
    yi, xi = y.long(), x.long()
    yf, xf = (y - yi)[:, None], (x - xi)[None, :]

    def corner(dy, dx):
        g = grads[(yi + dy)[:, None], (xi + dx)[None, :]]
        return g[..., 0] * (yf - dy) + g[..., 1] * (xf - dx)

    u, v = _fade(yf), _fade(xf)
    top = corner(0, 0) * (1 - v) + corner(0, 1) * v
    bottom = corner(1, 0) * (1 - v) + corner(1, 1) * v
    return math.sqrt(2) * (top * (1 - u) + bottom * u)


def _perlin_masks(n, height, width, generator, device):
    """(n, 1, height, width) masks of 0 / 1: Perlin blobs on about half of the
    images (the others are left normal), at a random scale per image."""
    masks = torch.zeros(n, 1, height, width, device=device)
    anomalous = torch.rand(n, generator=generator, device=device) < _ANOMALY_PROBABILITY
    octaves = torch.randint(0, _PERLIN_OCTAVES, (n, 2), generator=generator, device=device)
    for i in range(n):
        if anomalous[i]:
            cells = (min(2 ** int(octaves[i, 0]), height), min(2 ** int(octaves[i, 1]), width))
            noise = _perlin(height, width, cells, generator, device)
            masks[i, 0] = (noise > _PERLIN_THRESHOLD).float()
    return masks


def _textures(n, height, width, generator, device, needed=None):
    """Smooth random colour fields at several scales, about unit variance per
    channel (as normalised photographs).

    Only the images where the bool tensor ``needed`` is true are drawn out
    (the others stay zero): the upsampling is most of a painted batch's
    cost, and the generator advances the same either way.
    """
    rows = torch.arange(n, device=device) if needed is None else needed.nonzero()[:, 0]
    out = torch.zeros(n, 3, height, width, device=device)
    for cells in (2, 4, 8, 16, 32):
        coarse = torch.randn(n, 3, cells, cells, generator=generator, device=device)
        if len(rows):
            out[rows] += F.interpolate(coarse[rows], size=(height, width), mode="bicubic",
                                       align_corners=False)
    return out / out.flatten(1).std(1)[:, None, None, None].clamp_min(1e-6)


def _stripes(n, height, width, generator, device):
    """Sinusoidal stripes of random frequency, angle and colour, unit variance."""
    y = torch.linspace(0, 1, height, device=device)[:, None]
    x = torch.linspace(0, 1, width, device=device)[None, :]
    angle = math.pi * torch.rand(n, 1, 1, generator=generator, device=device)
    freq = 2 + 30 * torch.rand(n, 1, 1, generator=generator, device=device)
    phase = 2 * math.pi * torch.rand(n, 1, 1, generator=generator, device=device)
    wave = torch.sin(2 * math.pi * freq * (x * torch.cos(angle) + y * torch.sin(angle)) + phase)
    colour = torch.randn(n, 3, 1, 1, generator=generator, device=device)
    colour = math.sqrt(3) * colour / colour.norm(dim=1, keepdim=True).clamp_min(1e-6)
    return math.sqrt(2) * wave[:, None] * colour


def _paint_anomalies(images, generator):
    """DRAEM's anomaly synthesis on a normalised batch (n, 3, H, W).

    Inside a Perlin mask, each image is blended with a filling (a colour
    field, stripes, or another image of the batch flipped), kept at the
    image's own brightness and contrast so the anomaly is not merely out of
    range: ``(1 - m) x + m ((1 - beta) filling + beta x)``, beta in [0, 0.8).
    Grey images get grey fillings.

    Returns the painted batch and the masks (n, 1, H, W).
    """
    n, _, height, width = images.shape
    device = images.device
    masks = _perlin_masks(n, height, width, generator, device)
    kind = torch.randint(0, 3, (n, 1, 1, 1), generator=generator, device=device)
    other = images.roll(1, 0).flip(-1, -2)
    other = (other - other.mean((1, 2, 3), keepdim=True)) / other.std((1, 2, 3), keepdim=True).clamp_min(1e-6)
    textured = (kind[:, 0, 0, 0] == 0) & (masks.flatten(1).amax(1) > 0)
    filling = torch.where(kind == 0, _textures(n, height, width, generator, device, textured),
                          torch.where(kind == 1, _stripes(n, height, width, generator, device), other))
    grey = (images.amax(1) - images.amin(1)).flatten(1).amax(1) < 1e-4
    filling = torch.where(grey[:, None, None, None], filling.mean(1, keepdim=True).expand_as(filling), filling)
    mean = images.mean((1, 2, 3), keepdim=True)
    std = images.std((1, 2, 3), keepdim=True)
    contrast = 0.5 + torch.rand(n, 1, 1, 1, generator=generator, device=device)
    shift = 0.5 * torch.randn(n, 1, 1, 1, generator=generator, device=device)
    filling = mean + shift + contrast * std * filling
    beta = 0.8 * torch.rand(n, 1, 1, 1, generator=generator, device=device)
    painted = (1 - masks) * images + masks * ((1 - beta) * filling + beta * images)
    return painted, masks


def _focal_loss(logits, target):
    """Binary focal loss (Lin et al., 2017) of logits against (soft) masks."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_true = p * target + (1 - p) * (1 - target)
    return (ce * (1 - p_true).pow(_FOCAL_GAMMA)).mean()


def _evidence(seen, rebuilt):
    """What the discriminative networks see: both grids and their squared
    residual ``r``, a cue that does not depend on what the synthetic anomalies
    look like, so it carries to real ones. It enters saturated, ``r / (1 + r)``
    (features are standardised, so 1 is a normal patch's scale): a real
    defect's residual lies far beyond the painted ones, and raw, a network
    that never saw such values extrapolated them to "normal" (synthetic
    defects, 6 seeds: 2 inverted raw, none saturated). DRAEM, seed 0, image /
    pixel AUROC without the residual, raw, saturated: bottle 0.985 / 0.937,
    0.990 / 0.957, 0.992 / 0.972; kolektorsdd raw 0.632 / 0.847, saturated
    0.728 / 0.870."""
    r = (seen - rebuilt).pow(2)
    return torch.cat([seen, rebuilt, r / (1 + r)], 1)


def _conv_block(n_in, n_out):
    return nn.Sequential(
        nn.Conv2d(n_in, n_out, 3, padding=1), nn.BatchNorm2d(n_out), nn.ReLU(inplace=True),
        nn.Conv2d(n_out, n_out, 3, padding=1), nn.BatchNorm2d(n_out), nn.ReLU(inplace=True),
    )


class _SegmentationNet(nn.Module):
    """The discriminative sub-network: a two-level U-Net on a feature grid,
    one anomaly logit per cell."""

    def __init__(self, n_in, width):
        super().__init__()
        self.down = _conv_block(n_in, width)
        self.bottom = _conv_block(width, 2 * width)
        self.up = _conv_block(3 * width, width)
        self.out = nn.Conv2d(width, 1, 1)

    def forward(self, x):
        skip = self.down(x)
        deep = self.bottom(F.max_pool2d(skip, 2, ceil_mode=True))
        deep = F.interpolate(deep, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(self.up(torch.cat([skip, deep], 1)))[:, 0]


class _Bottleneck(nn.Module):
    """A conv autoencoder on a feature grid, down to a quarter of its side and
    back, with no skip connection (so it cannot copy an anomaly through)."""

    def __init__(self, n_in, n_out, width):
        super().__init__()
        self.encode = nn.Sequential(
            nn.Conv2d(n_in, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
        )
        self.decode1 = nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, padding=1),
                                     nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True))
        self.decode2 = nn.Sequential(nn.Conv2d(2 * width, width, 3, padding=1),
                                     nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.out = nn.Conv2d(width, n_out, 3, padding=1)

    def forward(self, x):
        size = x.shape[-2:]
        h = self.encode(x)
        h = self.decode1(F.interpolate(h, size=((size[0] + 1) // 2, (size[1] + 1) // 2),
                                       mode="bilinear", align_corners=False))
        h = self.decode2(F.interpolate(h, size=size, mode="bilinear", align_corners=False))
        return self.out(h)
