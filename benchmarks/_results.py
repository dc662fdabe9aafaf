"""Shared by the benchmark scripts: where and how results are written."""

import json
from pathlib import Path


def save_json(obj, path):
    """Write ``obj`` as indented JSON to ``path``, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))

# The shared panel (../shared/data) and the methods without a training loop.
SETS = ("mvtec_bottle", "mvtec3d_tire", "mvtec_screw", "kolektorsdd")
FAST = ("patchcore", "softpatch", "padim", "spade", "dfm", "dfkde")
