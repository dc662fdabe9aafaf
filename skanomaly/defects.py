"""Synthetic defects painted on normal images, with their masks.

A user with a new product has normal images only. Painting plausible defects
on held-out normal images gives a labelled validation set, so methods and
parameters can be ranked before a single real defect has been collected (see
:class:`skanomaly.model_selection.SyntheticDefectScorer`). Three kinds:

- ``"cutpaste"``: a rectangle of the image itself, flipped and with its
  brightness jittered, pasted somewhere it does not match (CutPaste, Li et
  al., 2021): a local texture or structure anomaly.
- ``"scratch"``: a thin curved stroke, darker than a bright surface or
  brighter than a dark one.
- ``"blob"``: an irregular stain of noisy colour (a smooth random shape, as
  DRAEM's Perlin-noise masks).

Sizes are relative to the image's shorter side, so the same settings fit any
resolution. A ``severity`` below 1 blends the painted defect with what it
covers (``clean + severity * (painted - clean)``): the same defect, fainter,
for products where full-strength defects are found by every method.
"""

import numbers

import numpy as np
from scipy.ndimage import binary_dilation, gaussian_filter
from sklearn.utils import Bunch, check_random_state

from .images import check_images, load_image

__all__ = ["DEFECT_KINDS", "make_synthetic_defects", "paint_defect"]

DEFECT_KINDS = ("cutpaste", "scratch", "blob")

# Defect sizes, as fractions of the image's shorter side.
_CUTPASTE_SIDE = (0.06, 0.2)
_SCRATCH_LENGTH = (0.15, 0.4)
_SCRATCH_WIDTH = (0.006, 0.018)
_BLOB_RADIUS = (0.03, 0.09)
# Candidate source rectangles tried per cut-paste; the one least like the
# target region is pasted, so a flat background does not hide the defect.
_CUTPASTE_TRIES = 8


def _is_grey(image):
    return float(np.ptp(image, axis=2).max()) < 1 / 255


def _cutpaste(image, rng):
    h, w = image.shape[:2]
    side = min(h, w)
    area = (rng.uniform(*_CUTPASTE_SIDE) * side) ** 2
    aspect = np.exp(rng.uniform(np.log(0.3), np.log(3.3)))
    ph = int(np.clip(np.sqrt(area * aspect), 2, h - 1))
    pw = int(np.clip(np.sqrt(area / aspect), 2, w - 1))
    ty, tx = rng.randint(0, h - ph + 1), rng.randint(0, w - pw + 1)
    target = image[ty:ty + ph, tx:tx + pw]
    best, best_gap = None, -1.0
    for _ in range(_CUTPASTE_TRIES):
        sy, sx = rng.randint(0, h - ph + 1), rng.randint(0, w - pw + 1)
        patch = image[sy:sy + ph, sx:sx + pw]
        if rng.rand() < 0.5:
            patch = patch[:, ::-1]
        if rng.rand() < 0.5:
            patch = patch[::-1]
        patch = np.clip(patch * rng.uniform(0.75, 1.25), 0, 1)
        gap = float(np.abs(patch - target).mean())
        if gap > best_gap:
            best, best_gap = patch, gap
    image[ty:ty + ph, tx:tx + pw] = best
    mask = np.zeros((h, w), dtype=bool)
    mask[ty:ty + ph, tx:tx + pw] = True
    return mask


def _scratch(image, rng):
    h, w = image.shape[:2]
    side = min(h, w)
    length = rng.uniform(*_SCRATCH_LENGTH) * side
    steps = max(8, int(length))
    y, x = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    angle, bend = rng.uniform(0, 2 * np.pi), rng.normal(0, 1.5 / steps)
    mask = np.zeros((h, w), dtype=bool)
    for _ in range(steps):
        mask[int(np.clip(y, 0, h - 1)), int(np.clip(x, 0, w - 1))] = True
        angle += bend
        y, x = y + np.sin(angle), x + np.cos(angle)
    radius = max(0, int(round(rng.uniform(*_SCRATCH_WIDTH) * side / 2)))
    if radius:
        yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
        mask = binary_dilation(mask, structure=yy ** 2 + xx ** 2 <= radius ** 2)
    local = float(image[mask].mean())
    tone = local * 0.25 if local > 0.5 else local + (1 - local) * 0.75
    noise = rng.normal(0, 0.03, size=(int(mask.sum()), 1 if _is_grey(image) else 3))
    image[mask] = np.clip(tone + noise, 0, 1)
    return mask


def _blob(image, rng):
    h, w = image.shape[:2]
    side = min(h, w)
    radius = rng.uniform(*_BLOB_RADIUS) * side
    ry, rx = radius * np.exp(rng.uniform(-0.4, 0.4, size=2))
    cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    y0, y1 = max(0, int(cy - 2 * ry)), min(h, int(cy + 2 * ry) + 1)
    x0, x1 = max(0, int(cx - 2 * rx)), min(w, int(cx + 2 * rx) + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    noise = gaussian_filter(rng.normal(size=yy.shape), sigma=max(1.0, radius / 3))
    noise /= noise.std() + 1e-12
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 + 0.35 * noise < 1
    if not inside.any():
        inside[inside.shape[0] // 2, inside.shape[1] // 2] = True
    region = image[y0:y1, x0:x1]
    grey = _is_grey(image)
    colour = rng.uniform(0, 1, size=3)
    if grey:  # a colour stain on a grey product would be found by colour alone
        colour[:] = colour.mean()
    if abs(float(colour.mean()) - float(region[inside].mean())) < 0.25:
        colour = 1 - colour  # a stain must stand out from what it covers
    noise = rng.normal(0, 0.06, size=region.shape[:2] + (1 if grey else 3,))
    texture = colour + noise
    alpha = rng.uniform(0.6, 1.0)
    region[inside] = np.clip((1 - alpha) * region[inside] + alpha * texture[inside], 0, 1)
    mask = np.zeros((h, w), dtype=bool)
    mask[y0:y1, x0:x1] = inside
    return mask


_PAINTERS = {"cutpaste": _cutpaste, "scratch": _scratch, "blob": _blob}


def paint_defect(image, kind="cutpaste", *, severity=1.0, random_state=None):
    """Paint one synthetic defect on a copy of an image.

    Parameters
    ----------
    image : str, path-like, PIL image or ndarray
        Any image :func:`skanomaly.images.load_image` reads.
    kind : {"cutpaste", "scratch", "blob"}, default="cutpaste"
        See the module notes.
    severity : float in (0, 1], default=1.0
        Share of the painted change kept: 1 paints the defect at full
        strength, 0.25 a quarter of its difference from the clean pixels.
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    defective : ndarray of shape (H, W, 3), uint8
        The image with the defect.
    mask : ndarray of shape (H, W), bool
        The painted pixels.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.defects import paint_defect
    >>> good = np.full((64, 64, 3), 128, dtype=np.uint8)
    >>> bad, mask = paint_defect(good, "blob", random_state=0)
    >>> bad.shape, bool(mask.any()), bool((bad[mask] != 128).any())
    ((64, 64, 3), True, True)
    """
    _check_kinds([kind])
    (severity,) = _check_severities(severity)
    clean, painted, mask = _paint(image, 0, kind, check_random_state(random_state))
    return _blend(clean, painted, severity), mask


def _check_kinds(kinds):
    unknown = [k for k in kinds if k not in _PAINTERS]
    if unknown or not kinds:
        raise ValueError(
            f"Unknown defect kind(s) {unknown}; choose from {list(DEFECT_KINDS)}."
        )


def _check_severities(severity):
    """``severity`` (a float or a sequence of them) as a tuple, each in (0, 1]."""
    values = (severity,) if isinstance(severity, numbers.Real) else tuple(severity)
    bad = [v for v in values
           if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 < v <= 1]
    if bad or not values:
        raise ValueError(
            f"severity must be a float in (0, 1] or a non-empty sequence of them; "
            f"got {bad[0] if bad else severity!r}."
        )
    return tuple(float(v) for v in values)


def _paint(item, index, kind, rng):
    """The image (float RGB in [0, 1]), a copy with a defect, and its mask."""
    clean = load_image(item, index)
    if min(clean.shape[:2]) < 16:
        raise ValueError(
            f"Image {index} is {clean.shape[0]} x {clean.shape[1]} pixels; synthetic "
            "defects need at least 16 x 16."
        )
    painted = clean.copy()
    mask = _PAINTERS[kind](painted, rng)
    return clean, painted, mask


def _blend(clean, painted, severity):
    """uint8 image keeping ``severity`` of the painted change."""
    image = painted if severity == 1 else clean + severity * (painted - clean)
    return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)


def make_synthetic_defects(images, *, kinds=DEFECT_KINDS, severity=1.0, random_state=None):
    """One synthetic defect on each of some normal images.

    Parameters
    ----------
    images : list of images or ndarray of shape (n, H, W[, C])
        Normal images (paths, arrays or PIL images), typically held out of
        training.
    kinds : sequence of str, default=("cutpaste", "scratch", "blob")
        Defect kinds, used in turn.
    severity : float in (0, 1] or sequence of them, default=1.0
        Share of each painted change kept (see :func:`paint_defect`). With a
        sequence, each image's defect appears once per severity, the same
        shape in the same place, consecutively.
    random_state : int, RandomState instance or None, default=None
        An int gives the same defects on every call: what comparing models
        on them needs.

    Returns
    -------
    data : Bunch
        ``images``: list of (H, W, 3) uint8 arrays, the defective copies in
        input order; ``masks``: list of (H, W) bool arrays; ``defect_type``:
        list of str; ``severity``: ndarray of float; ``target``: ndarray of -1.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.defects import make_synthetic_defects
    >>> good = np.random.default_rng(0).integers(0, 255, (3, 48, 48, 3), dtype=np.uint8)
    >>> bad = make_synthetic_defects(good, random_state=0)
    >>> bad.defect_type, [m.shape for m in bad.masks]
    (['cutpaste', 'scratch', 'blob'], [(48, 48), (48, 48), (48, 48)])
    """
    items = check_images(images)
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    _check_kinds(kinds)
    severities = _check_severities(severity)
    rng = check_random_state(random_state)
    out, masks, types, levels = [], [], [], []
    for index, item in enumerate(items):
        kind = kinds[index % len(kinds)]
        clean, painted, mask = _paint(item, index, kind, rng)
        for level in severities:
            out.append(_blend(clean, painted, level))
            masks.append(mask)
            types.append(kind)
            levels.append(level)
    return Bunch(images=out, masks=masks, defect_type=types,
                 severity=np.asarray(levels), target=-np.ones(len(out), dtype=np.int64))
