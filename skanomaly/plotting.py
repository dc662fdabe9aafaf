"""Pictures of results: heatmap overlays (numpy only) and matplotlib plots.

:func:`overlay_heatmap` needs nothing beyond numpy and scipy, so the command
line and the demo report use it. The ``plot_*`` functions need matplotlib
(``pip install skanomaly[plot]``) and draw on a given or new axes.
"""

import numpy as np

from .images import load_image

__all__ = [
    "overlay_heatmap",
    "plot_overlay",
    "plot_pro_curve",
    "plot_roc",
    "plot_score_histogram",
    "plot_worst",
]


def _png_data_url(rgb):
    """An (H, W, 3) uint8 array as a ``data:image/png;base64,...`` URL, for
    pages that must open without their image files (report, app)."""
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def overlay_heatmap(image, anomaly_map, mask=None, *, vmin=None, vmax=None, alpha=0.6):
    """An image with its anomaly map blended over it, and a mask outline.

    Parameters
    ----------
    image : path, PIL image or array
        The image, as accepted everywhere in skanomaly.
    anomaly_map : ndarray of shape (H, W)
        Higher = more anomalous; drawn from transparent (``vmin``) through red
        to opaque yellow (``vmax``).
    mask : ndarray of shape (H, W) of bool or None, default=None
        Outlined in green (e.g. from :func:`skanomaly.anomaly_masks`).
    vmin, vmax : float or None, default=None
        Map values at the ends of the colour scale; the map's own range when
        None. Give the same values to several images to compare them.
    alpha : float, default=0.6
        Opacity of the heatmap at ``vmax``.

    Returns
    -------
    rgb : ndarray of shape (H, W, 3), uint8

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.plotting import overlay_heatmap
    >>> amap = np.zeros((8, 8)); amap[2:5, 2:5] = 1.0
    >>> overlay_heatmap(np.zeros((8, 8, 3)), amap, amap > 0.5).shape
    (8, 8, 3)
    """
    from scipy import ndimage

    rgb = load_image(image)
    amap = np.asarray(anomaly_map, dtype=np.float32)
    if amap.shape != rgb.shape[:2]:
        raise ValueError(f"Map of shape {amap.shape} does not match image {rgb.shape[:2]}.")
    vmin = float(amap.min()) if vmin is None else vmin
    vmax = float(amap.max()) if vmax is None else vmax
    heat = np.clip((amap - vmin) / max(vmax - vmin, 1e-12), 0, 1)[..., None]
    colour = np.concatenate([np.ones_like(heat), heat, np.zeros_like(heat)], axis=2)
    blended = rgb * (1 - alpha * heat) + colour * (alpha * heat)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        outline = mask & ~ndimage.binary_erosion(mask, iterations=max(1, mask.shape[0] // 256))
        blended[outline] = (0.0, 1.0, 0.0)
    return (np.clip(blended, 0, 1) * 255 + 0.5).astype(np.uint8)


def _axes(ax):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots()[1]


def plot_overlay(image, anomaly_map, mask=None, *, ax=None, title=None, **kwargs):
    """Show :func:`overlay_heatmap` on matplotlib axes; returns the axes."""
    ax = _axes(ax)
    ax.imshow(overlay_heatmap(image, anomaly_map, mask, **kwargs))
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def plot_roc(y_true, y_score, *, ax=None, label=None):
    """ROC curve of anomaly detection (labels +1 / -1, scores higher = normal)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    ax = _axes(ax)
    y_true = np.asarray(y_true)
    fpr, tpr, _ = roc_curve(y_true == -1, -np.asarray(y_score))
    auc = roc_auc_score(y_true, y_score)
    ax.plot(fpr, tpr, label=f"{label or 'AUROC'} {auc:.3f}")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.5)
    ax.set_xlabel("false-positive rate (normal images flagged)")
    ax.set_ylabel("true-positive rate (defects found)")
    ax.legend(loc="lower right")
    return ax


def plot_score_histogram(y_true, y_score, threshold=None, *, ax=None, bins=30):
    """Histograms of normal and anomalous scores, with the decision threshold."""
    ax = _axes(ax)
    y_true, y_score = np.asarray(y_true), np.asarray(y_score)
    edges = np.histogram_bin_edges(y_score, bins=bins)
    ax.hist(y_score[y_true == 1], bins=edges, alpha=0.6, label="normal")
    ax.hist(y_score[y_true == -1], bins=edges, alpha=0.6, label="anomalous")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label="threshold")
    ax.set_xlabel("score (higher = more normal)")
    ax.set_ylabel("images")
    ax.legend()
    return ax


def plot_pro_curve(masks, maps, *, max_fpr=0.3, ax=None, label=None):
    """Per-region-overlap curve up to ``max_fpr``, labelled with its AUPRO."""
    from .metrics import pixel_aupro, pro_curve

    ax = _axes(ax)
    fpr, pro = pro_curve(masks, maps)
    keep = fpr <= max_fpr
    aupro = pixel_aupro(masks, maps, max_fpr=max_fpr)
    ax.plot(fpr[keep], pro[keep], label=f"{label or 'AUPRO'} {aupro:.3f}")
    ax.set_xlim(0, max_fpr)
    ax.set_ylim(0, 1)
    ax.set_xlabel("false-positive rate (normal pixels)")
    ax.set_ylabel("per-region overlap")
    ax.legend(loc="lower right")
    return ax


def plot_worst(images, scores, maps, masks=None, *, n=8, ncols=4, fig=None):
    """A grid of the ``n`` lowest-scoring (most anomalous) images with overlays.

    Parameters
    ----------
    images : list of images
    scores : array-like of shape (n_images,)
        Higher = more normal (``score_samples`` / ``decision_function``).
    maps : list of ndarray
        Anomaly maps of the images.
    masks : list of (ndarray or None) or None, default=None
        Masks to outline (true or predicted).
    n, ncols : int
        How many images, in how many columns.
    fig : matplotlib Figure or None

    Returns
    -------
    fig : matplotlib Figure
    """
    import matplotlib.pyplot as plt

    order = np.argsort(np.asarray(scores))[:n]
    nrows = max(1, -(-len(order) // ncols))
    fig = fig or plt.figure(figsize=(3 * ncols, 3 * nrows))
    vmax = max(float(np.max(maps[i])) for i in order)
    for k, i in enumerate(order):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        mask = None if masks is None or masks[i] is None else np.asarray(masks[i]) > 0
        plot_overlay(images[i], maps[i], mask, ax=ax, title=f"score {scores[i]:.3f}",
                     vmin=0.0, vmax=vmax)
    return fig
