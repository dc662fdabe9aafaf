"""The two resizes of the estimator's path, in numpy, as torch computes them.

The estimator resizes images with ``F.interpolate(mode="bilinear",
antialias=True)`` (Pillow's filter) and maps with plain bilinear
interpolation (``align_corners=False``). Both are separable: one weight
matrix per axis, so an image is two matrix products.
"""

import numpy as np


def _antialiased_weights(in_size, out_size):
    """(out_size, in_size) weights of torch's antialiased bilinear resize."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        taps = np.clip(1.0 - np.abs((np.arange(lo, hi) - center + 0.5) * invscale), 0.0, None)
        total = taps.sum()
        weights[i, lo:hi] = taps / total if total else taps
    return weights.astype(np.float32)


def _bilinear_weights(in_size, out_size):
    """(out_size, in_size) weights of torch's bilinear resize, align_corners=False."""
    scale = in_size / out_size
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        source = max(scale * (i + 0.5) - 0.5, 0.0)
        lo = int(source)
        frac = min(max(source - lo, 0.0), 1.0)
        hi = lo + 1 if lo < in_size - 1 else lo
        weights[i, lo] += 1.0 - frac
        weights[i, hi] += frac
    return weights.astype(np.float32)


def resize_image(rgb, shape):
    """(H, W, 3) float32 image -> (3, h, w) at ``shape``, antialiased as the estimator."""
    height, width = shape
    channels_first = np.ascontiguousarray(rgb.transpose(2, 0, 1))
    if rgb.shape[:2] == (height, width):
        return channels_first
    rows = _antialiased_weights(rgb.shape[0], height)
    cols = _antialiased_weights(rgb.shape[1], width)
    return np.ascontiguousarray((rows @ channels_first) @ cols.T, dtype=np.float32)


def resize_map(amap, shape):
    """(h, w) float32 map -> ``shape`` by plain bilinear interpolation."""
    if amap.shape == tuple(shape):
        return amap.astype(np.float32, copy=False)
    rows = _bilinear_weights(amap.shape[0], shape[0])
    cols = _bilinear_weights(amap.shape[1], shape[1])
    return np.ascontiguousarray((rows @ amap) @ cols.T, dtype=np.float32)
