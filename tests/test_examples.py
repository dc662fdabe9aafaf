import runpy
import subprocess
import sys
from pathlib import Path

import pytest

# The gallery's plot_*.py run when the documentation builds (tests/test_docs.py).
EXAMPLES = sorted(p for p in (Path(__file__).resolve().parent.parent / "examples").glob("*.py")
                  if not p.name.startswith("plot_"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(path)])
    runpy.run_path(str(path), run_name="__main__")
    assert "AUROC" in capsys.readouterr().out


def test_demo_command_prints_the_table_and_writes_a_report(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "skanomaly", "demo", "--image-size", "64", "--out", str(tmp_path)],
        capture_output=True, text=True, check=True,
    )
    assert "image AUROC" in result.stdout and "pixel AUROC" in result.stdout
    page = (tmp_path / "report.html").read_text()
    assert page.count("<figure>") == 8 and "data:image/png;base64," in page
    auroc = float(result.stdout.split("image AUROC")[1].split()[0])
    assert auroc >= 0.9


def test_cli_user_errors_are_one_line_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "skanomaly", "demo", "--data", str(tmp_path / "nope")],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert "error:" in result.stderr and "Traceback" not in result.stderr
