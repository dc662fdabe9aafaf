"""Bounding boxes of the 8-connected regions of a mask, in numpy alone.

Regions are found on row runs: each row's runs of anomalous pixels, joined
by a union-find with the runs of the next row that touch them (overlap or
diagonal). A defect mask has a few runs per row, so the Python loop is over
runs, never over pixels.
"""

import numpy as np


def _row_runs(mask):
    """(row, start, stop) arrays of the True runs of a 2D bool mask, raster order."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    rows, starts = np.nonzero(edges == 1)
    _, stops = np.nonzero(edges == -1)
    return rows, starts, stops


# Smallest region (pixels) that gets a box, everywhere boxes are drawn.
MIN_AREA = 16


def region_boxes(amap, mask, min_area=MIN_AREA):
    """Boxes of the 8-connected regions of ``mask``, sorted by decreasing score.

    Parameters
    ----------
    amap : ndarray of shape (H, W)
        The anomaly map; a region's score is its largest value inside.
    mask : ndarray of shape (H, W), bool
    min_area : int, default=16
        Regions with fewer pixels are dropped.

    Returns
    -------
    boxes : list of dict
        ``{"x0", "y0", "x1", "y1", "score", "area"}`` with exclusive
        ``x1``/``y1``; equal scores keep the raster order of the regions'
        first pixels.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly_runtime._regions import region_boxes
    >>> mask = np.zeros((6, 6), bool); mask[1:3, 1:3] = True; mask[3, 3] = True
    >>> region_boxes(mask.astype(float), mask, min_area=1)
    [{'x0': 1, 'y0': 1, 'x1': 4, 'y1': 4, 'score': 1.0, 'area': 5}]
    """
    mask = np.asarray(mask, dtype=bool)
    rows, starts, stops = _row_runs(mask)
    n = len(rows)
    if n == 0:
        return []
    # Runs of the next row that touch run i (overlap or diagonal) form one
    # contiguous block of the raster-ordered runs: find it by bisection.
    width = mask.shape[1] + 2
    key_start, key_stop = rows * width + starts, rows * width + stops
    below = (rows + 1) * width
    lo = np.searchsorted(key_stop, below + starts, side="left")
    hi = np.searchsorted(key_start, below + stops, side="right")
    parent = np.arange(n)

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in np.flatnonzero(hi > lo):
        for j in range(lo[i], hi[i]):
            a, b = root(i), root(j)
            if a != b:
                parent[max(a, b)] = min(a, b)  # a set's root is its first run in raster order
    labels = np.array([root(i) for i in range(n)])
    # Each run's peak: maxima over [start, stop) of the flat map, by reduceat.
    flat = np.append(np.asarray(amap, dtype=np.float64).ravel(), 0.0)
    bounds = np.stack([rows * mask.shape[1] + starts, rows * mask.shape[1] + stops], 1).ravel()
    peaks = np.maximum.reduceat(flat, bounds)[::2]
    regions = []
    order = np.argsort(labels, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(labels[order])) + 1)
    for mine in groups:  # ascending labels: raster order of first runs
        area = int((stops[mine] - starts[mine]).sum())
        if area < min_area:
            continue
        regions.append({
            "x0": int(starts[mine].min()), "y0": int(rows[mine].min()),
            "x1": int(stops[mine].max()), "y1": int(rows[mine].max()) + 1,
            "score": float(peaks[mine].max()), "area": area,
        })
    return sorted(regions, key=lambda r: -r["score"])
