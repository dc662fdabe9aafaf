"""The documentation: the site builds with every page and the gallery, and
the README's commands, code and generated tables are what the code and the
committed results give."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from skanomaly import available_methods
from skanomaly.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "doc"
README = (ROOT / "README.md").read_text()
sys.path.insert(0, str(ROOT / "benchmarks"))
from _results import README_BLOCKS, readme_block  # noqa: E402


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("sphinx")
    pytest.importorskip("pydata_sphinx_theme")
    pytest.importorskip("sphinx_gallery")
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOC), str(out)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    return out


def test_the_site_has_a_page_per_public_name_and_the_registry_tables(site):
    for name in ("KNNDetector", "GaussianDetector", "PatchEmbedder", "calibration.calibrate",
                 "metrics.pixel_aupro", "serve.make_server"):
        assert (site / "generated" / f"skanomaly.{name}.html").exists(), name
    choosing = (site / "user_guide" / "choosing_a_method.html").read_text()
    for info in available_methods().values():
        name = info.factory.__name__
        assert (site / "generated" / f"skanomaly.{name}.html").exists(), name
        assert f"{name}()" in choosing
    for page in ("getting_started", "thresholds", "many_products", "large_images",
                 "big_folders_and_clusters", "app_and_reports", "deployment",
                 "coming_from_anomalib", "persistence", "your_own_data", "few_images"):
        assert (site / "user_guide" / f"{page}.html").exists(), page


def test_the_gallery_draws_a_figure_per_example(site):
    examples = sorted((ROOT / "examples").glob("plot_*.py"))
    assert len(examples) >= 6
    for example in examples:
        page = (site / "auto_examples" / f"{example.stem}.html").read_text()
        assert f"sphx_glr_{example.stem}_001.png" in page, example.name


def test_benchmark_tables_are_generated_from_the_committed_results(site):
    import json

    rows = json.loads((ROOT / "benchmarks/results/operating_point.json").read_text())["rows"]
    page = (site / "user_guide" / "thresholds.html").read_text()
    # A figure of every row is on the page, as the results file has it.
    for row in rows:
        assert f"<td><p>{row['set']}</p></td>" in page
        assert f"{row['oracle_recall']:.2f}" in page
    memory = json.loads((ROOT / "benchmarks/results/evaluate_memory.json").read_text())
    assert f"{memory['results'][0]['peak_rss_mb']:.0f}" in (site / "benchmarks.html").read_text()


def test_the_readme_is_a_landing_page_with_generated_tables():
    assert len(README.splitlines()) <= 200
    for name, make in README_BLOCKS.items():
        assert readme_block(README, name) == make(), (
            f"the README's {name} table is not what the code gives: run python benchmarks/_results.py")


def test_every_command_the_readme_shows_exists_with_its_options():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    shown = re.findall(r"^skanomaly (\w[\w-]*)(.*?)(?:#|$)", README, flags=re.M)
    shown += re.findall(r"`skanomaly (\w[\w-]*)([^`]*)`", README)
    assert len(shown) >= 5
    for command, rest in shown:
        assert command in commands, command
        options = {o for action in commands[command]._actions for o in action.option_strings}
        for flag in re.findall(r"(--[\w-]+)", rest):
            assert flag in options, f"skanomaly {command} has no {flag}"


def test_the_readme_quick_start_runs(tmp_path, monkeypatch):
    import functools
    import warnings

    import skanomaly
    from skanomaly.datasets import make_synthetic

    # Every line as written, on small images: the factory at 64 px.
    monkeypatch.setattr(skanomaly, "make_patchcore",
                        functools.partial(skanomaly.make_patchcore, image_size=64))

    code = re.search(r"From Python:\n\n```python\n(.*?)```", README, re.S).group(1)
    data = make_synthetic(26, 8, image_size=48, random_state=0)
    good, bad = list(data.images[:26]), list(data.images[26:])
    monkeypatch.chdir(tmp_path)
    namespace = {"good_paths": good[:16], "new_paths": good[16:18] + bad[:2],
                 "more_good_paths": good[18:20], "recent_good": good[20:26], "recent_bad": bad[2:5],
                 "all_paths": good + bad, "all_targets": np.r_[np.ones(26), -np.ones(8)]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # few calibration images in a fold
        exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "model.joblib").exists()
    assert set(namespace["pipe"].predict(bad).tolist()) <= {-1, 1}
