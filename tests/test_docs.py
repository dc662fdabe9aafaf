import subprocess
import sys
from pathlib import Path

import pytest

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
    assert "Choosing a method" in (tmp_path / "index.html").read_text()
