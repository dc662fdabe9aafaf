import subprocess
import sys
from pathlib import Path

import pytest

from skanomaly import available_methods

DOC = Path(__file__).resolve().parent.parent / "doc"


def test_sphinx_site_builds_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         str(DOC), str(tmp_path)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    api = (tmp_path / "api.html").read_text()
    for name in ("KNNDetector", "make_padim", "pixel_aupro", "conformal_pvalues"):
        assert name in api
    index = (tmp_path / "index.html").read_text()
    assert "Choosing a method" in index
    # Both method tables are generated from the registry: every method is in them.
    for info in available_methods().values():
        assert f'id="skanomaly.{info.factory.__name__}"' in api
        assert f"{info.factory.__name__}()" in index


def test_readme_points_to_the_registry():
    readme = (DOC.parent / "README.md").read_text()
    assert "available_methods()" in readme
