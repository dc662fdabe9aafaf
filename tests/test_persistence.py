"""Saving and loading: skops files that build only skanomaly's and scikit-learn's types."""

import joblib
import numpy as np
import pytest

pytest.importorskip("skops")

import skops.io  # noqa: E402
from skanomaly import make_padim, make_patchcore  # noqa: E402
from skanomaly.cli import main  # noqa: E402
from skanomaly.persistence import load_model, save_model  # noqa: E402


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((10, 64, 64, 3))


@pytest.mark.parametrize("factory", [make_patchcore, make_padim])
def test_skops_and_joblib_files_give_identical_scores(factory, images, tmp_path):
    pipe = factory(image_size=64, random_state=0).fit(images[:8])
    expected = pipe.score_samples(images[8:])
    for name in ("m.skops", "m.joblib"):
        loaded = load_model(save_model(pipe, tmp_path / name))
        np.testing.assert_array_equal(loaded.score_samples(images[8:]), expected)
    assert skops.io.get_untrusted_types(file=tmp_path / "m.skops")  # skops format, not pickle
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.joblib", "m.skops"]


class _Payload:
    """Stands for any object a hostile file might hold."""


def test_skops_file_with_foreign_types_is_refused_before_building(tmp_path):
    skops.io.dump({"model": _Payload()}, tmp_path / "evil.skops")
    with pytest.raises(ValueError, match="not loaded: .*_Payload"):
        load_model(tmp_path / "evil.skops")


def test_damaged_or_missing_files_get_one_clear_error(tmp_path):
    (tmp_path / "bad.skops").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable skops model"):
        load_model(tmp_path / "bad.skops")
    (tmp_path / "bad.joblib").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="not a readable joblib model"):
        load_model(tmp_path / "bad.joblib")
    with pytest.raises(ValueError, match="No model file"):
        load_model(tmp_path / "missing.skops")


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(joblib, "dump", broken)
    with pytest.raises(OSError, match="disk full"):
        save_model({"a": 1}, tmp_path / "m.joblib")
    assert list(tmp_path.iterdir()) == []


def test_cli_fits_to_skops_and_predicts_from_it(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "good"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    model = tmp_path / "m.skops"
    assert main(["fit", "--train", str(folder), "-o", str(model), "--image-size", "64"]) == 0
    assert main(["predict", str(model), str(folder), "--out", str(tmp_path / "out")]) == 0
    assert len((tmp_path / "out" / "predictions.csv").read_text().splitlines()) == 9
