"""Torch plumbing shared by embedders and trainable heads: device, threads, progress."""

import contextlib
import contextvars

import numpy as np
import torch

from skanomaly_runtime._resize import resize_image
from skanomaly_runtime.images import _decoded_batches

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


# The bar open in this context, if any: work inside it (an embedder called
# batch by batch by a loop with its own bar) adds no bar of its own.
_OPEN_BAR = contextvars.ContextVar("skanomaly_open_bar", default=None)


@contextlib.contextmanager
def _progress(total, enabled, desc):
    """A tqdm bar over images (or a no-op) with an ``update(n)`` method; a
    no-op inside another one, which counts the same images."""
    if not enabled or _OPEN_BAR.get() is not None:
        yield lambda n: None
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=desc, unit="img") as bar:
        token = _OPEN_BAR.set(bar)
        try:
            yield bar.update
        finally:
            _OPEN_BAR.reset(token)


def _load_resized(images, start, shape):
    """Decode images to one (n, 3, H, W) float tensor in [0, 1], each resized
    to ``shape``; ``start`` numbers them in errors.

    The resize is antialiased bilinear with Pillow's filter, which torch's
    ``antialias=True`` reproduces to float rounding, in C without the GIL:
    the torch-free runtime resizes with the same function.
    """
    return torch.from_numpy(np.stack([
        resize_image(load_image(item, index=start + offset), shape)
        for offset, item in enumerate(images)
    ]))


def _resized_batches(images, batch_size, shape):
    """``(start, batch)`` for consecutive batches of ``images``, as
    ``_load_resized``; the next batch is decoded and resized in a background
    thread (:func:`~skanomaly_runtime.images._decoded_batches`) while the
    caller runs the network on this one.
    """
    for start, arrays in _decoded_batches(images, batch_size, lambda a: resize_image(a, shape)):
        yield start, torch.from_numpy(np.stack(arrays))
