"""Torch plumbing shared by embedders and trainable heads: device, threads, progress."""

import contextlib
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

from .images import load_image


def _resolve_device(device):
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"Unknown device {device!r}; use 'cpu', 'cuda' or 'auto'.") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for, but CUDA is not available here.")
    return resolved


def _device_or_cpu(device):
    """The requested device when usable here, else the CPU (loading a model
    trained on a GPU on a machine without one)."""
    try:
        return _resolve_device(device)
    except ValueError:
        return torch.device("cpu")


@contextlib.contextmanager
def _torch_threads(n_jobs):
    """Temporarily set torch's intra-op threads from a joblib-style n_jobs."""
    if n_jobs is None:
        yield
        return
    import joblib

    before = torch.get_num_threads()
    n_threads = n_jobs if n_jobs > 0 else max(1, joblib.cpu_count() + 1 + n_jobs)
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _progress(total, enabled, desc):
    """A tqdm bar over images (or a no-op) with an ``update(n)`` method."""
    if not enabled:
        yield lambda n: None
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=desc, unit="img") as bar:
        yield bar.update


def _decode(images, start):
    """Decoded RGB arrays of ``images``; ``start`` numbers them in errors."""
    return [load_image(item, index=start + offset) for offset, item in enumerate(images)]


def _resize(arrays, shape):
    """One (n, 3, H, W) float tensor of RGB arrays, each resized (antialiased
    bilinear) to ``shape``."""
    height, width = shape
    tensors = []
    for array in arrays:
        rgb = torch.from_numpy(array).permute(2, 0, 1)[None]
        if rgb.shape[-2:] != (height, width):
            rgb = F.interpolate(
                rgb, size=(height, width), mode="bilinear", align_corners=False, antialias=True,
            )
        tensors.append(rgb)
    return torch.cat(tensors)


def _load_resized(images, start, shape):
    """Decode images to one (n, 3, H, W) float tensor in [0, 1], each resized
    (antialiased bilinear) to ``shape``; ``start`` numbers them in errors."""
    return _resize(_decode(images, start), shape)


def _decoded_batches(images, batch_size):
    """``(start, arrays)`` for consecutive batches of ``images``, decoded.

    The next batch is decoded in a background thread while the caller works
    on this one (file decoding releases the GIL), so decoding is off the
    critical path. A decoding error is raised at the batch it belongs to.
    """
    if not len(images):
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_decode, images[:batch_size], 0)
        for start in range(0, len(images), batch_size):
            arrays = pending.result()
            following = start + batch_size
            if following < len(images):
                pending = pool.submit(_decode, images[following:following + batch_size], following)
            yield start, arrays


def _resized_batches(images, batch_size, shape):
    """``(start, batch)`` for consecutive batches of ``images``, as
    ``_load_resized``, decoded ahead as :func:`_decoded_batches`.

    Resizing stays on the calling thread: torch ops from two threads would
    each start a full team of intra-op threads.
    """
    for start, arrays in _decoded_batches(images, batch_size):
        yield start, _resize(arrays, shape)
