import csv
import json
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
from PIL import Image

from skanomaly import make_patchcore
from skanomaly.cli import main
from skanomaly.datasets import load_mvtec, make_synthetic


@pytest.fixture(scope="module")
def mvtec_like(tmp_path_factory):
    """A small folder in MVTec AD layout, made from the synthetic dataset."""
    root = tmp_path_factory.mktemp("category")
    data = make_synthetic(30, 9, image_size=48, random_state=0)
    for i in range(39):
        kind = data.defect_type[i]
        folder = root / ("train" if i < 22 else "test") / kind
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.images[i]).save(folder / f"{i:03d}.png")
        if kind != "good":
            (root / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
            Image.fromarray(data.masks[i].astype(np.uint8) * 255).save(
                root / "ground_truth" / kind / f"{i:03d}_mask.png"
            )
    return root


def test_evaluate_writes_one_row_per_method(mvtec_like, tmp_path, capsys):
    out = tmp_path / "res"
    code = main(["evaluate", str(mvtec_like), "--methods", "patchcore,dfkde",
                 "--image-size", "48", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "image AUROC" in printed and "AUPRO" in printed and "patchcore" in printed
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    assert [r["method"] for r in rows] == ["patchcore", "dfkde"]
    assert float(rows[0]["image_auroc"]) >= 0.9 and 0 < float(rows[0]["aupro"]) <= 1
    assert rows[1]["aupro"] == "nan"  # an image-level method: no maps
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["results"][0]["fit_s"] > 0 and saved["results"][0]["peak_rss_mb"] > 0
    # One report compares both: a section each, a PRO curve for the one with maps.
    page = out.with_suffix(".html").read_text()
    assert page.count('<section class="method">') == 2
    assert "<h2>patchcore</h2>" in page and "<h2>dfkde</h2>" in page
    assert "ROC and PRO curves" in page


def test_evaluate_on_synthetic_defects_needs_normal_images_only(mvtec_like, tmp_path):
    good = mvtec_like / "train" / "good"  # a plain folder of good parts
    out = tmp_path / "syn"
    assert main(["evaluate", str(good), "--synthetic", "--methods", "patchcore,dfm",
                 "--image-size", "48", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    assert [r["method"] for r in rows] == ["patchcore", "dfm"]
    # 22 normals: 18 to fit on, 4 held out and 4 painted copies of them.
    assert float(rows[0]["image_auroc"]) > 0.5 and 0 < float(rows[0]["pixel_auroc"]) <= 1
    assert main(["evaluate", str(good), "--synthetic", "--model", "m.joblib",
                 "--out", str(out)]) == 1


def test_evaluate_a_saved_model(mvtec_like, tmp_path, capsys):
    pipe = make_patchcore(image_size=48, random_state=0).fit(load_mvtec(mvtec_like).images)
    joblib.dump(pipe, tmp_path / "m.joblib")
    assert main(["evaluate", str(mvtec_like), "--model", str(tmp_path / "m.joblib"),
                 "--out", str(tmp_path / "r")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert rows[0]["method"] == "m.joblib" and float(rows[0]["fit_s"]) == 0.0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluate", "/nonexistent/dir"], "No 'test' folder"),
        (["evaluate", "{root}", "--methods", "nope"], "Unknown method"),
    ],
)
def test_user_errors_exit_1_with_one_line(mvtec_like, argv, message):
    argv = [a.format(root=mvtec_like) for a in argv]
    result = subprocess.run([sys.executable, "-m", "skanomaly", *argv],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "evaluate" in capsys.readouterr().out


def test_fit_then_predict_writes_every_output(mvtec_like, tmp_path):
    model = tmp_path / "models" / "pc.joblib"
    assert main(["fit", "--train", str(mvtec_like), "--image-size", "48",
                 "-o", str(model)]) == 0
    assert model.is_file() and not model.with_name("pc.joblib.tmp").exists()
    out = tmp_path / "found"
    test_dir = mvtec_like / "test"
    assert main(["predict", str(model), str(test_dir), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    test = load_mvtec(mvtec_like, "test")
    assert sorted(r["image"] for r in rows) == sorted(test.images)
    labels = {r["image"]: int(r["label"]) for r in rows}
    assert all(0 < float(r["p_value"]) <= 1 for r in rows)
    # One embedding pass gives the scores and p-values the public API gives.
    from skanomaly.calibration import conformal_pvalues

    pipe = joblib.load(model)
    images = [r["image"] for r in rows]
    np.testing.assert_allclose([float(r["score"]) for r in rows], pipe.score_samples(images),
                               rtol=1e-4)
    np.testing.assert_allclose([float(r["p_value"]) for r in rows],
                               conformal_pvalues(pipe, images))
    flagged = [labels[p] == -1 for p, t in zip(test.images, test.target) if t == -1]
    assert np.mean(flagged) >= 0.8
    assert len(list((out / "masks").glob("*_mask.png"))) == len(rows)
    overlays = sorted((out / "overlays").glob("*_overlay.png"))
    assert len(overlays) == len(rows)
    assert np.asarray(Image.open(overlays[0])).shape == (48, 48, 3)
    boxes = json.loads((out / "boxes.json").read_text())
    assert len(boxes["images"]) == len(rows) and boxes["pixel_threshold"] > 0
    assert any(entry["boxes"] for entry in boxes["images"])


def test_predict_streams_and_survives_bad_files(mvtec_like, tmp_path, monkeypatch, capsys):
    import skanomaly_runtime._output as output

    pipe = make_patchcore(image_size=48, random_state=0).fit(load_mvtec(mvtec_like, "train").images)
    joblib.dump(pipe, tmp_path / "pc.joblib")
    good = sorted(str(p) for p in (mvtec_like / "test").rglob("*.png"))[:5]
    folder = tmp_path / "line"
    folder.mkdir()
    for i, path in enumerate(good):
        (folder / f"{i}_ok.png").write_bytes(open(path, "rb").read())
    (folder / "2_truncated.png").write_bytes(open(good[0], "rb").read()[:200])
    (folder / "4_text.png").write_text("not an image")
    batches = []
    scorer = output.predict_to_folder

    def spy(paths, out, scores_and_maps, *args, **kwargs):
        def counted(images):
            batches.append(len(images))
            return scores_and_maps(images)
        return scorer(paths, out, counted, *args, batch_size=3, **kwargs)

    monkeypatch.setattr(output, "predict_to_folder", spy)
    out = tmp_path / "found"
    assert main(["predict", str(tmp_path / "pc.joblib"), str(folder), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "2_truncated.png" in captured.err and "4_text.png" in captured.err
    assert "5 images" in captured.out and "2 could not be read" in captured.out
    # Never more than a batch of images in memory: 7 files, batches of 3.
    assert max(batches) <= 3 and sum(batches) == 5
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 7
    bad = {r["image"]: r for r in rows if r["error"]}
    assert sorted(Path(p).name for p in bad) == ["2_truncated.png", "4_text.png"]
    assert all(r["score"] == "" and r["label"] == "" for r in bad.values())
    scored = [r for r in rows if not r["error"]]
    np.testing.assert_allclose([float(r["score"]) for r in scored],
                               pipe.score_samples([r["image"] for r in scored]), rtol=1e-4)
    assert len(list((out / "masks").glob("*_mask.png"))) == 5
    assert len(json.loads((out / "boxes.json").read_text())["images"]) == 5
    assert not list(out.rglob("*.partial"))


def test_image_level_model_predicts_without_maps(mvtec_like, tmp_path):
    model = tmp_path / "dfkde.joblib"
    assert main(["fit", "--method", "dfkde", "--train", str(mvtec_like / "train" / "good"),
                 "--image-size", "48", "-o", str(model)]) == 0
    out = tmp_path / "dfkde_out"
    one = sorted((mvtec_like / "test" / "good").glob("*.png"))[0]
    assert main(["predict", str(model), str(one), "--out", str(out)]) == 0
    assert len(list(csv.DictReader(open(out / "predictions.csv")))) == 1
    assert not (out / "masks").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fit", "--train", "/nonexistent", "-o", "m.joblib"], "does not exist"),
        (["fit", "--method", "nope", "--train", ".", "-o", "m.joblib"], "Unknown method"),
        (["predict", "/nonexistent.joblib", ".", "--out", "x"], "No model file"),
    ],
)
def test_fit_predict_user_errors(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
