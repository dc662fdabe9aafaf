"""Datasets: the MVTec AD folder layout, and a procedural one that needs no download."""

import os
from pathlib import Path

import numpy as np
from skanomaly_runtime.images import IMAGE_EXTENSIONS
from sklearn.utils import Bunch, check_random_state

__all__ = ["load_folder", "load_mvtec", "make_synthetic"]

def _image_files(folder):
    return sorted(
        p for p in Path(folder).iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def load_mvtec(root, split="train"):
    """Load one category laid out as MVTec AD.

    The layout is ``root/train/good/*``, ``root/test/<defect type>/*`` (with
    ``good`` among the types) and ``root/ground_truth/<defect type>/<stem>_mask.png``.
    A ``root/validation/good`` folder (MVTec 3D-AD) is the ``"validation"``
    split.

    Parameters
    ----------
    root : str or path-like
        The category folder.
    split : {"train", "test", "validation"}, default="train"

    Returns
    -------
    data : Bunch
        ``images``: list of str paths; ``target``: ndarray of +1 (normal) /
        -1 (anomalous); ``masks``: list of mask paths, None for normal images;
        ``defect_type``: list of str (``"good"`` for normal images).
        A category without a ``ground_truth`` folder (image-level labels
        only, as the shared copy of MVTec AD screw) gives None masks
        throughout.

    Raises
    ------
    ValueError
        If the split folder is missing or empty, or the category has a
        ``ground_truth`` folder and a defect image has no mask in it.

    Examples
    --------
    >>> from skanomaly.datasets import load_mvtec
    >>> test = load_mvtec("../shared/data/mvtec_bottle", split="test")  # doctest: +SKIP
    >>> len(test.images), int((test.target == -1).sum())  # doctest: +SKIP
    (83, 63)
    """
    if split not in ("train", "test", "validation"):
        raise ValueError(f"split must be 'train', 'test' or 'validation', got {split!r}.")
    root = Path(root)
    folder = root / split
    if not folder.is_dir():
        raise ValueError(f"No {split!r} folder in {os.fspath(root)!r} (expected {folder}).")
    has_masks = (root / "ground_truth").is_dir()
    images, target, masks, types = [], [], [], []
    for type_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        defect = type_dir.name
        for path in _image_files(type_dir):
            images.append(os.fspath(path))
            types.append(defect)
            if defect == "good":
                target.append(1)
                masks.append(None)
                continue
            target.append(-1)
            if not has_masks:
                masks.append(None)
                continue
            mask = root / "ground_truth" / defect / f"{path.stem}_mask.png"
            if not mask.is_file():
                raise ValueError(f"Defect image {path} has no mask at {mask}.")
            masks.append(os.fspath(mask))
    if not images:
        raise ValueError(f"No images under {folder}.")
    return Bunch(
        images=images,
        target=np.asarray(target, dtype=np.int64),
        masks=masks,
        defect_type=types,
    )


def _find_mask(mask_dir, stem):
    for suffix in ("", "_mask"):
        for ext in IMAGE_EXTENSIONS:
            for candidate in (mask_dir / f"{stem}{suffix}{ext}", mask_dir / f"{stem}{suffix}{ext.upper()}"):
                if candidate.is_file():
                    return os.fspath(candidate)
    return None


def load_folder(normal_dir, anomalous_dir=None, mask_dir=None):
    """Load a user's own images: a folder of good parts, optionally bad ones and masks.

    Parameters
    ----------
    normal_dir : str or path-like
        Images of normal parts (files directly in the folder).
    anomalous_dir : str, path-like or None, default=None
        Images of defective parts: files directly in it (defect type
        ``"anomalous"``) and/or sub-folders named by defect type.
    mask_dir : str, path-like or None, default=None
        Masks of the defective images, paired by file stem: the mask of
        ``scratch/017.png`` is ``017.png`` or ``017_mask.<ext>`` in
        ``mask_dir`` (or in ``mask_dir/scratch``). Masks are optional; an
        image without one gets None.

    Returns
    -------
    data : Bunch
        ``images`` (str paths, normal first), ``target`` (+1 / -1), ``masks``
        (path or None), ``defect_type`` (``"good"`` for normal images).

    Raises
    ------
    ValueError
        If a folder is missing or holds no images.

    Examples
    --------
    >>> from skanomaly.datasets import load_folder
    >>> data = load_folder("parts/good", "parts/bad", "parts/masks")  # doctest: +SKIP
    """
    def images_in(folder, what):
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"{what} folder {os.fspath(folder)!r} does not exist.")
        return folder, _image_files(folder)

    folder, normal = images_in(normal_dir, "Normal")
    if not normal:
        raise ValueError(f"No images in {os.fspath(folder)!r} (extensions {IMAGE_EXTENSIONS}).")
    images = [os.fspath(p) for p in normal]
    types = ["good"] * len(normal)
    masks = [None] * len(normal)
    if anomalous_dir is not None:
        folder, loose = images_in(anomalous_dir, "Anomalous")
        groups = [("anomalous", loose, None)] + [
            (sub.name, _image_files(sub), sub.name)
            for sub in sorted(p for p in folder.iterdir() if p.is_dir())
        ]
        if not any(files for _, files, _ in groups):
            raise ValueError(f"No images in {os.fspath(folder)!r} or its sub-folders.")
        mask_root = None if mask_dir is None else images_in(mask_dir, "Mask")[0]
        for kind, files, sub in groups:
            for path in files:
                images.append(os.fspath(path))
                types.append(kind)
                mask = None
                if mask_root is not None:
                    mask = _find_mask(mask_root, path.stem)
                    if mask is None and sub is not None and (mask_root / sub).is_dir():
                        mask = _find_mask(mask_root / sub, path.stem)
                masks.append(mask)
    target = np.where(np.asarray(types) == "good", 1, -1).astype(np.int64)
    return Bunch(images=images, target=target, masks=masks, defect_type=types)


def _texture(size, rng):
    """A woven-looking periodic texture with a little per-image jitter."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    phase = rng.uniform(0, 0.02, size=2)
    weave = 0.5 + 0.25 * np.sin(2 * np.pi * 12 * (xx + phase[0])) * np.sin(
        2 * np.pi * 12 * (yy + phase[1])
    )
    base = np.stack([0.55 * weave + 0.2, 0.45 * weave + 0.25, 0.3 * weave + 0.2], axis=2)
    base += rng.normal(0, 0.02, size=base.shape).astype(np.float32)
    return base


def _defect(image, kind, rng):
    size = image.shape[0]
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(0.25, 0.75, size=2) * size
    if kind == "scratch":
        angle = rng.uniform(0, np.pi)
        half = rng.uniform(0.15, 0.3) * size
        dist_line = np.abs((yy - cy) * np.cos(angle) - (xx - cx) * np.sin(angle))
        along = np.abs((yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle))
        mask = (dist_line <= max(1.0, size / 64)) & (along <= half)
        image[mask] = [0.95, 0.95, 0.9]
    elif kind == "hole":
        radius = rng.uniform(0.05, 0.09) * size
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
        image[mask] = [0.05, 0.04, 0.03]
    else:  # stain
        radius = rng.uniform(0.07, 0.12) * size
        r2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / radius ** 2
        mask = r2 <= 1.0
        alpha = np.clip(1.2 - r2, 0, 1)[..., None] * mask[..., None]
        image[:] = image * (1 - alpha) + alpha * np.array([0.1, 0.35, 0.6])
    return mask


def make_synthetic(n_normal=40, n_anomalous=20, *, image_size=128, random_state=None):
    """A procedural inspection dataset: a woven texture with drawn defects.

    Normal images share one periodic texture (small random shifts and noise);
    anomalous ones carry a scratch, a hole or a stain, with its pixel mask.
    Needs no download, so it runs the demo and the tests anywhere.

    Parameters
    ----------
    n_normal : int, default=40
        Number of defect-free images (listed first).
    n_anomalous : int, default=20
        Number of images with one defect each.
    image_size : int, default=128
        Side of the square RGB images.
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    data : Bunch
        ``images``: uint8 ndarray (n, image_size, image_size, 3);
        ``target``: +1 / -1; ``masks``: bool ndarray (n, image_size, image_size);
        ``defect_type``: list of str among "good", "scratch", "hole", "stain".

    Examples
    --------
    >>> from skanomaly.datasets import make_synthetic
    >>> data = make_synthetic(4, 2, image_size=32, random_state=0)
    >>> data.images.shape, data.target.tolist()
    ((6, 32, 32, 3), [1, 1, 1, 1, -1, -1])
    """
    if n_normal < 0 or n_anomalous < 0 or n_normal + n_anomalous == 0:
        raise ValueError("Need n_normal >= 0, n_anomalous >= 0 and at least one image.")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}.")
    rng = check_random_state(random_state)
    n = n_normal + n_anomalous
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    masks = np.zeros((n, image_size, image_size), dtype=bool)
    kinds = ["good"] * n_normal
    for i in range(n):
        image = _texture(image_size, rng)
        if i >= n_normal:
            kind = ("scratch", "hole", "stain")[(i - n_normal) % 3]
            masks[i] = _defect(image, kind, rng)
            kinds.append(kind)
        images[i] = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    target = np.r_[np.ones(n_normal, dtype=np.int64), -np.ones(n_anomalous, dtype=np.int64)]
    return Bunch(images=images, target=target, masks=masks, defect_type=kinds)
