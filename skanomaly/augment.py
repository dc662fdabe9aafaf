"""Augmented normal images for few-shot memory banks.

With one to eight normal images a memory bank holds few views of each part;
AnomalyDINO (Damm et al., 2025) adds rotated copies of the references so a
part seen turned by a right angle is still matched. Right-angle rotations and
mirror flips move pixels without interpolation, so the copies are exact
images of the same part (the eight symmetries of the square).
"""

import numbers

import numpy as np

from .images import check_images, load_image

__all__ = ["dihedral_copies"]

_N_SYMMETRIES = 8


def dihedral_copies(X, n_copies=4):
    """The images with right-angle rotations (and mirror images) of each.

    Parameters
    ----------
    X : list of images or ndarray of shape (n, H, W[, C])
        Normal images, in any form :func:`~skanomaly.images.check_images`
        takes (paths are decoded).
    n_copies : int in [1, 8], default=4
        Views per image, in this order: as is, rotated by 90, 180 and 270
        degrees, then the same four of its mirror image. 1 returns the
        images unchanged; 4 is the rotations; 8 every symmetry of the square.

    Returns
    -------
    images : list of ndarray of shape (H, W, 3) or (W, H, 3), float32
        ``n_copies`` views of the first image, then of the second, and so
        on (``len(X) * n_copies`` images).

    Raises
    ------
    ValueError
        If ``n_copies`` is not an integer in [1, 8], or an image cannot be
        read (the message names it).

    Notes
    -----
    Fit a memory-bank pipeline on these for a few-shot bank
    (``make_anomalydino().fit(dihedral_copies(few))``). The threshold
    (``offset_``) is then set on held-out copies whose other views may sit in
    the bank, so it can flag more new normal images than ``contamination``
    asks; with so few images, treat it as a starting point.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.augment import dihedral_copies
    >>> image = np.arange(6, dtype=np.float32).reshape(2, 3) / 5
    >>> views = dihedral_copies([image], n_copies=4)
    >>> [v.shape for v in views]
    [(2, 3, 3), (3, 2, 3), (2, 3, 3), (3, 2, 3)]
    >>> bool(np.array_equal(views[2][..., 0], image[::-1, ::-1]))
    True
    """
    if (not isinstance(n_copies, numbers.Integral) or isinstance(n_copies, bool)
            or not 1 <= n_copies <= _N_SYMMETRIES):
        raise ValueError(f"n_copies must be an integer in [1, {_N_SYMMETRIES}], got {n_copies!r}.")
    out = []
    for i, item in enumerate(check_images(X)):
        image = load_image(item, i)
        for view in range(n_copies):
            flipped = image[:, ::-1] if view >= 4 else image
            out.append(np.ascontiguousarray(np.rot90(flipped, k=view % 4)))
    return out
