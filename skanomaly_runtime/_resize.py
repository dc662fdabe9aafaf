"""The two resizes of the estimator's path, in numpy and Pillow, as torch
computes them.

The estimator resizes images with ``F.interpolate(mode="bilinear",
antialias=True)``, which is Pillow's bilinear filter: Pillow's resize of
each channel as a 32-bit float image gives the same pixels to float
rounding, in C, and without holding the GIL. Maps are resized with plain
bilinear interpolation (``align_corners=False``): two taps per output pixel
along each axis, gathered in numpy.
"""

import functools

import numpy as np
from PIL import Image


def resize_image(rgb, shape):
    """(H, W, 3) float32 image -> (3, h, w) at ``shape``, antialiased as the estimator."""
    height, width = shape
    if rgb.shape[:2] == (height, width):
        return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)
    out = np.empty((3, height, width), dtype=np.float32)
    for channel in range(3):
        plane = Image.fromarray(np.ascontiguousarray(rgb[..., channel], dtype=np.float32), mode="F")
        out[channel] = np.asarray(plane.resize((width, height), Image.Resampling.BILINEAR))
    return out


@functools.lru_cache(maxsize=64)
def _bilinear_taps(in_size, out_size):
    """Each output position's two source indices and the second one's weight
    (torch's bilinear resize, align_corners=False); read-only, shared."""
    scale = in_size / out_size
    source = np.maximum(scale * (np.arange(out_size) + 0.5) - 0.5, 0.0)
    low = source.astype(np.int64)
    frac = np.clip(source - low, 0.0, 1.0).astype(np.float32)
    high = np.minimum(low + 1, in_size - 1)
    for array in (low, high, frac):
        array.flags.writeable = False
    return low, high, frac


def resize_map(amap, shape):
    """(h, w) float32 map -> ``shape`` by plain bilinear interpolation."""
    amap = np.asarray(amap, dtype=np.float32)
    if amap.shape == tuple(shape):
        return amap
    low, high, frac = _bilinear_taps(amap.shape[0], shape[0])
    rows = amap[low] * (1 - frac)[:, None] + amap[high] * frac[:, None]
    low, high, frac = _bilinear_taps(amap.shape[1], shape[1])
    return rows[:, low] * (1 - frac) + rows[:, high] * frac
