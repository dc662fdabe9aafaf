"""Anomaly-detection metrics on image scores and pixel maps."""

import numpy as np
from sklearn.metrics import roc_auc_score

__all__ = ["pixel_roc_auc"]


def _load_mask(mask, shape):
    if mask is None:
        return np.zeros(shape, dtype=bool)
    if isinstance(mask, np.ndarray):
        array = mask
    else:
        from PIL import Image

        with Image.open(mask) as image:
            array = np.asarray(image.convert("L"))
    if array.ndim == 3:
        array = array[..., 0]
    if array.shape != tuple(shape):
        raise ValueError(
            f"Mask of shape {array.shape} does not match its map of shape {tuple(shape)}."
        )
    return array > (0 if array.dtype == np.bool_ else array.max(initial=0) / 2)


def pixel_roc_auc(masks, maps):
    """Area under the ROC curve of all pixels of all images pooled together.

    Parameters
    ----------
    masks : list of (path, ndarray or None)
        Ground-truth masks, non-zero = anomalous; None = all normal (a good image).
    maps : ndarray of shape (n, H, W) or list of (H_i, W_i) arrays
        Anomaly maps, higher = more anomalous, each the size of its mask.

    Returns
    -------
    auroc : float

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.metrics import pixel_roc_auc
    >>> mask = np.zeros((4, 4), bool); mask[0, 0] = True
    >>> pixel_roc_auc([mask, None], [mask.astype(float), np.zeros((4, 4))])
    1.0
    """
    if len(masks) != len(maps):
        raise ValueError(f"Got {len(masks)} masks for {len(maps)} maps.")
    truth = np.concatenate([_load_mask(k, np.shape(m)).ravel() for k, m in zip(masks, maps)])
    scores = np.concatenate([np.asarray(m, dtype=np.float32).ravel() for m in maps])
    return float(roc_auc_score(truth, scores))
