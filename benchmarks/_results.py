"""Shared by the benchmark scripts: where and how results are written."""

import json
from pathlib import Path


def save_json(obj, path):
    """Write ``obj`` as indented JSON to ``path``, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))
