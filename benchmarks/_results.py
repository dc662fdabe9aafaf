"""Shared by the benchmark scripts: the panel, the methods, where results go."""

import json
import sys
from pathlib import Path


def save_json(obj, path):
    """Write ``obj`` as indented JSON to ``path``, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))

# The shared panel: ../shared/data beside the repository, and its sets.
PANEL_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
SETS = ("mvtec_bottle", "mvtec3d_tire", "mvtec_screw", "kolektorsdd")


def factories(trained=None):
    """Registered method names -> factories (``trained=False``: no training loop)."""
    from skanomaly import available_methods

    return {name: info.factory for name, info in available_methods(trained=trained).items()}


def panel_sets(data, sets):
    """``(name, root)`` of each named set under ``data`` that exists (MVTec
    layout); the others are reported on stderr and skipped."""
    for name in sets.split(","):
        root = Path(data) / name
        if not (root / "train").is_dir():
            print(f"skipping {root}: not found", file=sys.stderr)
            continue
        yield name, root
