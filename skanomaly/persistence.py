"""Saving and loading fitted models: joblib, or skops files that run no code.

A joblib (pickle) file can run any code when it loads: load only files you
trust. A ``.skops`` file is read by :mod:`skops.io`, which builds only the
types it is told to trust; :func:`load_model` trusts skanomaly's own
classes and scikit-learn's estimators (beside the numpy arrays and plain
containers skops always reads) and nothing else, so a file holding anything
more is refused before any of it is built. The format follows the file's suffix.
"""

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["load_model", "save_model"]

_SAFE_SUFFIX = ".skops"


def save_model(model, path):
    """Write a fitted model to ``path``: skops for ``.skops``, joblib otherwise.

    The file is written next to ``path`` under a temporary name and moved
    into place, so an interrupted save leaves no half-written model.

    Parameters
    ----------
    model : estimator
        E.g. a fitted pipeline from :func:`~skanomaly.make_patchcore`.
    path : str or path-like
        ``*.skops`` (needs ``pip install skops``) or any other name (joblib).

    Returns
    -------
    path : pathlib.Path

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from skanomaly import KNNDetector
    >>> from skanomaly.persistence import load_model, save_model
    >>> X = np.random.default_rng(0).normal(size=(40, 3))
    >>> det = KNNDetector(random_state=0).fit(X)
    >>> path = save_model(det, os.path.join(tempfile.mkdtemp(), "det.skops"))
    >>> bool((load_model(path).score_samples(X) == det.score_samples(X)).all())
    True
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _written_in_one_go(path) as tmp:
        if path.suffix.lower() == _SAFE_SUFFIX:
            _skops().dump(model, tmp)
        else:
            import joblib

            joblib.dump(model, tmp)
    return path


def load_model(path):
    """Read a model written by :func:`save_model` (or ``joblib.dump``).

    Parameters
    ----------
    path : str or path-like
        A ``.skops`` file is loaded trusting only skanomaly's classes and
        scikit-learn's estimators; any other file is loaded with joblib,
        which runs code from it: only files you trust.

    Returns
    -------
    model : estimator

    Raises
    ------
    ValueError
        If the file is missing, unreadable, or (skops) holds other types;
        the message names them.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"No model file {os.fspath(path)!r}.")
    if path.suffix.lower() == _SAFE_SUFFIX:
        sio = _skops()
        try:
            untrusted = sio.get_untrusted_types(file=path)
        except Exception as exc:  # not a skops archive, or a damaged one
            raise ValueError(f"{os.fspath(path)!r} is not a readable skops model "
                             f"({type(exc).__name__}: {exc}).") from None
        refused = [name for name in untrusted if not _is_trusted_type(name)]
        if refused:
            raise ValueError(f"{os.fspath(path)!r} holds types that are neither skanomaly's "
                             f"nor scikit-learn estimators, not loaded: {', '.join(refused)}.")
        return sio.load(path, trusted=untrusted)
    import joblib

    try:
        return joblib.load(path)
    except Exception as exc:  # a truncated file, or not a pickle at all
        raise ValueError(f"{os.fspath(path)!r} is not a readable joblib model "
                         f"({type(exc).__name__}: {exc}).") from None


@contextlib.contextmanager
def _written_in_one_go(path):
    """A temporary name beside ``path`` to write to; moved onto ``path`` when
    the block succeeds, removed when it fails, so no half-written file is
    ever at ``path``."""
    handle, tmp = tempfile.mkstemp(suffix=".part", dir=Path(path).parent)
    os.close(handle)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as a plain open() would, not mkstemp's 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _is_trusted_type(name):
    """True for ``module.Class`` naming a class of skanomaly's own or a
    scikit-learn estimator (looked up by name in the installed packages)."""
    import importlib

    from sklearn.base import BaseEstimator

    module, _, attribute = name.rpartition(".")
    if module.split(".")[0] not in ("skanomaly", "sklearn"):
        return False
    try:
        cls = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError):
        return False
    if not isinstance(cls, type) or cls.__module__ != module:
        return False
    return module.split(".")[0] == "skanomaly" or issubclass(cls, BaseEstimator)


def _skops():
    try:
        import skops.io
    except ImportError:
        raise ImportError("Saving or loading .skops files needs: pip install skops") from None
    return skops.io
