"""The one table of methods: name, factory, what it is and what it outputs.

Every factory in :mod:`skanomaly.pipelines` registers itself here with
``@_register(...)``; the package's exports, the command line (``--method``,
``--methods`` and ``all``, and their help), the benchmarks and the
documentation's method tables all read this table, so a new method appears
everywhere by being registered once.
"""

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["MethodInfo", "available_methods", "get_method"]


@dataclass(frozen=True)
class MethodInfo:
    """One registered method.

    Attributes
    ----------
    name : str
        The name the command line and :func:`get_method` take, e.g.
        ``"patchcore"``.
    factory : callable
        Returns the ready pipeline, e.g. :func:`skanomaly.make_patchcore`.
    family : str
        Kind of head: ``"memory bank"``, ``"Gaussian"``, ``"kernel density"``,
        ``"normalizing flow"``, ``"discriminator"`` or ``"distillation"``.
    maps : bool
        Whether it draws pixel-level anomaly maps (else image scores only).
    trained : bool
        Whether fitting runs a training loop (epochs, early stopping); the
        others fit in one pass over the features.
    reference : str
        The paper the method follows.
    pipeline : str
        Its steps, in a few words (Markdown).
    good_for : str
        When to choose it.
    """

    name: str
    factory: Callable
    family: str
    maps: bool
    trained: bool
    reference: str
    pipeline: str
    good_for: str


_REGISTRY = {}


def _register(name, **info):
    """Decorator of a factory: enters it in the table under ``name``."""

    def register(factory):
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is registered twice")
        _REGISTRY[name] = MethodInfo(name=name, factory=factory, **info)
        return factory

    return register


def available_methods(*, trained=None):
    """The registered methods, in the order the documentation lists them.

    Parameters
    ----------
    trained : bool or None, default=None
        True: only the methods with a training loop; False: only the others
        (one pass over the features, fast to fit); None: all.

    Returns
    -------
    methods : dict of str to MethodInfo

    Examples
    --------
    >>> from skanomaly import available_methods
    >>> list(available_methods())[:2]
    ['patchcore', 'anomalydino']
    >>> available_methods()["patchcore"].factory.__name__
    'make_patchcore'
    >>> "stfpm" in available_methods(trained=False)
    False
    """
    from . import pipelines  # noqa: F401  (importing it registers the factories)

    return {name: info for name, info in _REGISTRY.items()
            if trained is None or info.trained == trained}


def get_method(name):
    """The registered method called ``name``.

    Parameters
    ----------
    name : str

    Returns
    -------
    info : MethodInfo

    Raises
    ------
    ValueError
        If no method has that name; the message lists the names.

    Examples
    --------
    >>> from skanomaly import get_method
    >>> pipe = get_method("padim").factory(image_size=64)
    >>> [name for name, _ in pipe.steps]
    ['patchembedder', 'gaussiandetector']
    """
    methods = available_methods()
    if name not in methods:
        raise ValueError(f"Unknown method {name!r}; choose from {', '.join(methods)}.")
    return methods[name]


def _markdown_table():
    """The documentation's "choosing a method" table, from the registry."""
    lines = ["| factory | pipeline | maps | trained | good for |", "|---|---|---|---|---|"]
    for info in available_methods().values():
        lines.append(f"| `{info.factory.__name__}()` | {info.pipeline} | "
                     f"{'yes' if info.maps else 'no'} | {'yes' if info.trained else 'no'} | "
                     f"{info.good_for} ({info.reference}) |")
    return "\n".join(lines) + "\n"
