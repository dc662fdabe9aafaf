"""Reading and validating images given in any of the forms users have them.

Needs numpy and Pillow only: the torch-free runtime decodes with it too, and
:mod:`skanomaly.images` re-exports it. Every entry point of skanomaly that
takes images goes through :func:`check_images` (cheap, no decoding) and
:func:`load_image` (decodes one item), so that the rules below hold
everywhere:

- an item is a path (``str`` or :class:`os.PathLike`), a :class:`PIL.Image.Image`,
  or an ``(H, W)`` / ``(H, W, C)`` array with C in {1, 3, 4};
- arrays are ``uint8`` (0-255), ``uint16`` (0-65535), ``bool`` or floating
  point in [0, 1];
- grey becomes RGB, alpha is dropped, 16-bit is scaled to [0, 1];
- a bad item raises :class:`ValueError` that names its position (and path).
"""

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

__all__ = ["IMAGE_EXTENSIONS", "check_images", "image_files", "load_image"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def check_images(X):
    """Return the images of ``X`` as a list of items, without decoding them.

    Parameters
    ----------
    X : list of (path, PIL image or array) or ndarray of shape (n, H, W[, C])
        The images. A single ``(n, H, W[, C])`` array is split along its first
        axis. A bare string or path is refused, because it is ambiguous
        (one image or a folder); wrap it in a list.

    Returns
    -------
    images : list
        One item per image, in order; decode with :func:`load_image`.

    Raises
    ------
    ValueError
        If ``X`` is empty, a single path, or not a sequence of images.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly_runtime.images import check_images
    >>> len(check_images(np.zeros((4, 32, 32, 3), dtype=np.uint8)))
    4
    """
    if isinstance(X, (str, bytes, os.PathLike)):
        raise ValueError(
            f"Expected a list of images, got the single path {X!r}; "
            "pass [path] for one image."
        )
    if isinstance(X, np.ndarray):
        if X.ndim not in (3, 4):
            raise ValueError(
                "An array of images must have shape (n, H, W) or (n, H, W, C); "
                f"got an array of shape {X.shape}."
            )
        images = list(X)
    else:
        try:
            images = list(X)
        except TypeError:
            raise ValueError(
                f"Expected a list of images, got {type(X).__name__}."
            ) from None
    if len(images) == 0:
        raise ValueError("Expected at least one image, got an empty list.")
    return images


def _describe(item, index):
    if isinstance(item, (str, os.PathLike)):
        return f"image {index} ({os.fspath(item)!r})"
    return f"image {index}"


def _array_from_pil(image):
    if image.mode in _ALPHA_MODES:
        image = image.convert("RGBA").convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image).astype(np.uint16)
    if image.mode == "I":
        array = np.asarray(image)
        # PIL opens 16-bit PNGs as 32-bit "I"; keep their 16-bit scale.
        return array.astype(np.uint16) if array.max(initial=0) < 65536 else array
    if image.mode == "F":
        return np.asarray(image, dtype=np.float32)
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    return np.asarray(image)


def _read_path(path, what):
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise ValueError(f"Cannot read {what}: no such file.")
    try:
        with Image.open(path) as image:
            image.load()
            return _array_from_pil(image)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"Cannot read {what}: {exc}") from None


def load_image(image, index=0):
    """Decode one image into an RGB float32 array with values in [0, 1].

    Parameters
    ----------
    image : str, path-like, PIL.Image.Image or ndarray
        The image. Arrays may be ``(H, W)`` or ``(H, W, C)`` with C in
        {1, 3, 4}, of dtype ``uint8``, ``uint16``, ``bool`` or float in [0, 1].
    index : int, default=0
        Position of the image in its list, used in error messages only.

    Returns
    -------
    rgb : ndarray of shape (H, W, 3), dtype float32
        The image, grey replicated to three channels and alpha dropped.

    Raises
    ------
    ValueError
        If the item cannot be read or is not a valid image; the message names
        the item's position and, for files, its path.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly_runtime.images import load_image
    >>> grey16 = np.full((8, 6), 65535, dtype=np.uint16)
    >>> rgb = load_image(grey16)
    >>> rgb.shape, rgb.dtype, float(rgb.max())
    ((8, 6, 3), dtype('float32'), 1.0)
    """
    from PIL import Image

    what = _describe(image, index)
    if isinstance(image, (str, os.PathLike)):
        array = _read_path(Path(image), what)
    elif isinstance(image, Image.Image):
        array = _array_from_pil(image)
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise ValueError(
            f"Cannot read {what}: expected a path, a PIL image or an array, "
            f"got {type(image).__name__}."
        )
    return _to_rgb_float(array, what)


def _to_rgb_float(array, what):
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(
            f"Cannot read {what}: expected shape (H, W) or (H, W, C) with C in "
            f"1, 3 or 4, got {array.shape}."
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"Cannot read {what}: it has no pixels ({array.shape}).")
    if array.dtype == np.uint8:
        out = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        out = array.astype(np.float32) / 65535.0
    elif array.dtype == np.bool_:
        out = array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.floating):
        out = array.astype(np.float32)
        if not np.all(np.isfinite(out)):
            raise ValueError(f"Cannot read {what}: it contains NaN or infinity.")
        lo, hi = float(out.min()), float(out.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"Cannot read {what}: float images must lie in [0, 1], got values "
                f"in [{lo:g}, {hi:g}]; divide by 255 (8-bit) or 65535 (16-bit)."
            )
    else:
        raise ValueError(
            f"Cannot read {what}: unsupported dtype {array.dtype}; use uint8, "
            "uint16, bool or float in [0, 1]."
        )
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    return np.ascontiguousarray(out)


def image_files(items):
    """The image files named by ``items``: files as given, folders searched
    recursively (sorted, extensions :data:`IMAGE_EXTENSIONS`).

    Parameters
    ----------
    items : sequence of str or path-like
        Files and folders.

    Returns
    -------
    paths : list of str

    Raises
    ------
    ValueError
        For an item that does not exist, or a folder without images.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from skanomaly_runtime.images import image_files
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> (folder / "a.png").touch(); (folder / "notes.txt").touch()
    >>> [pathlib.Path(p).name for p in image_files([folder])]
    ['a.png']
    """
    paths = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise ValueError(f"No images in folder {os.fspath(item)!r}.")
            paths.extend(str(p) for p in found)
        elif path.is_file():
            paths.append(str(path))
        else:
            raise ValueError(f"No such file or folder: {os.fspath(item)!r}.")
    return paths


def _decoded_batches(images, batch_size, prepare=None):
    """``(start, items)`` for consecutive batches of ``images``: each image
    decoded by :func:`load_image`, then passed through ``prepare`` if given.

    The next batch is decoded (and prepared) in a background thread while
    the caller works on this one: Pillow decodes and resizes without the
    GIL, so that work leaves the critical path. A decoding error is raised
    at the batch it belongs to.
    """
    def work(part, start):
        arrays = (load_image(item, index=start + i) for i, item in enumerate(part))
        return [array if prepare is None else prepare(array) for array in arrays]

    if not len(images):
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(work, images[:batch_size], 0)
        for start in range(0, len(images), batch_size):
            items = pending.result()
            following = start + batch_size
            if following < len(images):
                pending = pool.submit(work, images[following:following + batch_size], following)
            yield start, items
