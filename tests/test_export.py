"""ONNX export and the torch-free runtime give the estimator's answers."""

import importlib.util
import json
import os
import subprocess
import sys

import joblib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

pytest.importorskip("onnxruntime")

import skanomaly_runtime  # noqa: E402
from conftest import mvtec_category  # noqa: E402
from skanomaly import anomaly_maps, make_patchcore  # noqa: E402
from skanomaly.cli import main  # noqa: E402
from skanomaly.datasets import load_mvtec, make_synthetic  # noqa: E402
from skanomaly.export import export_refusal, to_onnx  # noqa: E402
from skanomaly.registry import available_methods  # noqa: E402
from skanomaly_runtime._resize import resize_image, resize_map  # noqa: E402

NOT_EXPORTABLE = ("spade", "dfm", "dfkde", "mambaad")
RTOL = 1e-4


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic(16, 6, image_size=64, random_state=0)


@pytest.fixture(scope="module")
def exported(synthetic, tmp_path_factory):
    pipe = make_patchcore(image_size=64, random_state=0).fit(synthetic.images[:12])
    path = to_onnx(pipe, tmp_path_factory.mktemp("onnx") / "patchcore.onnx")
    return pipe, path


def _assert_same_answers(pipe, model, images):
    if not model.metadata_["maps"]:  # an image-level head
        np.testing.assert_allclose(model.score_samples(images), pipe.score_samples(images),
                                   rtol=RTOL)
        with pytest.raises(ValueError, match="scores whole images"):
            model.anomaly_maps(images)
        return
    maps, scores = anomaly_maps(pipe, images, return_scores=True)
    got_maps, got_scores = model.anomaly_maps(images, return_scores=True)
    np.testing.assert_allclose(got_scores, scores, rtol=RTOL)
    scale = float(np.max(np.abs(maps)))
    assert float(np.max(np.abs(np.asarray(got_maps) - maps))) <= RTOL * scale
    np.testing.assert_array_equal(model.predict(images), pipe.predict(images))
    # Masks agree except where a map lies within rounding of the threshold.
    threshold = model.metadata_["pixel_threshold"]
    differs = model.anomaly_masks(maps=got_maps) != (maps > threshold)
    assert np.all(np.abs(maps[differs] - threshold) <= RTOL * scale)


def test_every_registry_method_exports_or_says_why():
    for name, info in available_methods().items():
        reason = export_refusal(info.factory())
        if name not in NOT_EXPORTABLE:
            assert reason is None, name
        else:
            assert isinstance(reason, str) and reason, name
            with pytest.raises(ValueError, match="cannot be exported"):
                to_onnx(info.factory(), "never.onnx")
    assert not os.path.exists("never.onnx")


@pytest.mark.parametrize("name", [n for n in available_methods() if n not in NOT_EXPORTABLE])
def test_exported_model_gives_the_estimators_scores_maps_and_masks(name, synthetic, tmp_path):
    info = available_methods()[name]
    # One epoch: the export must reproduce whatever the head learned.
    pipe = info.factory(image_size=64, random_state=0, **({"max_epochs": 1} if info.trained else {}))
    pipe.fit(synthetic.images[:12])
    path = to_onnx(pipe, tmp_path / "m.onnx")
    # Other sizes than the model's: both resizes of the runtime are exercised.
    images = [np.asarray(Image.fromarray((im * 255).astype(np.uint8)).resize((80, 72))) / 255.0
              for im in synthetic.images[12:]]
    _assert_same_answers(pipe, skanomaly_runtime.load(path), images)
    if importlib.util.find_spec("openvino") is not None:  # the same file, OpenVINO's runtime
        _assert_same_answers(pipe, skanomaly_runtime.load(path, backend="openvino"), images)


def test_flow_with_a_pooled_joint_flow_exports(synthetic, tmp_path):
    """FastFlow with a flow per stage: the joint flow pooled to the stride-8
    grid and resized back, the stride-4 flow at its own grid."""
    from skanomaly import make_fastflow

    pipe = make_fastflow(image_size=64, max_epochs=1, random_state=0).set_params(
        patchembedder__layers=(4, 8, 16), patchembedder__upsampling_tap=1,
        flowdetector__joint_stages=(1, 2), flowdetector__joint_pool=2)
    pipe.fit(synthetic.images[:12])
    model = skanomaly_runtime.load(to_onnx(pipe, tmp_path / "m.onnx"))
    _assert_same_answers(pipe, model, synthetic.images[12:])


def test_metadata_carries_threshold_and_calibration(exported):
    pipe, path = exported
    model = skanomaly_runtime.load(path)
    head = pipe[-1]
    assert model.offset_ == pytest.approx(head.offset_)
    assert model.metadata_["input_shape"] == [64, 64]
    test = np.random.default_rng(1).random((3, 64, 64, 3))
    from skanomaly.calibration import conformal_pvalues

    np.testing.assert_allclose(model.conformal_pvalues(test), conformal_pvalues(pipe, test),
                               rtol=0, atol=1e-12)


def test_openvino_backend_gives_the_same_scores(exported, synthetic):
    pytest.importorskip("openvino")
    pipe, path = exported
    model = skanomaly_runtime.load(path, backend="openvino")
    _assert_same_answers(pipe, model, synthetic.images[12:])


@pytest.mark.parametrize("shape, size", [((37, 53), (64, 64)), ((200, 120), (64, 48)),
                                         ((64, 64), (64, 64)), ((5, 300), (32, 32)),
                                         ((900, 700), (256, 256)), ((1, 40), (8, 8)),
                                         ((300, 31), (64, 32))])
def test_numpy_resizes_are_torchs(shape, size):
    rgb = np.random.default_rng(0).random(shape + (3,), dtype=np.float32)
    expected = F.interpolate(torch.from_numpy(rgb).permute(2, 0, 1)[None], size=size,
                             mode="bilinear", align_corners=False, antialias=True)[0].numpy()
    np.testing.assert_allclose(resize_image(rgb, size), expected, atol=1e-5)
    amap = rgb[..., 0]
    expected = F.interpolate(torch.from_numpy(amap)[None, None], size=size, mode="bilinear",
                             align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(resize_map(amap, size), expected, atol=1e-5)


def test_runtime_runs_without_torch_sklearn_or_scipy(exported, tmp_path):
    _, path = exported
    Image.fromarray(np.full((50, 70, 3), 128, np.uint8)).save(tmp_path / "a.png")
    code = (
        "import sys\n"
        "for name in ('torch', 'sklearn', 'scipy', 'skanomaly'):\n"
        "    sys.modules[name] = None  # any import of them fails\n"
        "import skanomaly_runtime\n"
        f"m = skanomaly_runtime.load({str(path)!r})\n"
        f"print(m.anomaly_maps([{str(tmp_path / 'a.png')!r}]).shape)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1, 50, 70)"


def test_runtime_refuses_files_that_are_no_export(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\x00\x01not a model")
    with pytest.raises(ValueError, match="not a model exported by skanomaly"):
        skanomaly_runtime.load(tmp_path / "junk.onnx")
    with pytest.raises(ValueError, match="No model file"):
        skanomaly_runtime.load(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="backend"):
        skanomaly_runtime.ExportedModel(tmp_path / "junk.onnx", backend="tensorrt")


def test_failed_export_leaves_no_file(exported, tmp_path, monkeypatch):
    pipe, _ = exported
    import skanomaly.export as export

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "_metadata", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        to_onnx(pipe, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_cli_exports_and_predicts_from_onnx(exported, synthetic, tmp_path, capsys):
    pipe, _ = exported
    joblib.dump(pipe, tmp_path / "m.joblib")
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(synthetic.images[12:16]):
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"{i}.png")
    assert main(["export", str(tmp_path / "m.joblib"), "-o", str(tmp_path / "m.onnx")]) == 0
    assert main(["predict", str(tmp_path / "m.onnx"), str(folder), "--out", str(tmp_path / "a")]) == 0
    assert main(["predict", str(tmp_path / "m.joblib"), str(folder), "--out", str(tmp_path / "b")]) == 0
    from skanomaly_runtime.__main__ import main as runtime_main

    assert runtime_main([str(tmp_path / "m.onnx"), str(folder), "--out", str(tmp_path / "c")]) == 0
    rows = {k: (tmp_path / k / "predictions.csv").read_text().splitlines() for k in "abc"}
    assert len(rows["a"]) == 5
    for a, b, c in zip(rows["a"][1:], rows["b"][1:], rows["c"][1:]):
        (_, score, p, label, error), other, third = a.split(","), b.split(","), c.split(",")
        assert float(score) == pytest.approx(float(other[1]), rel=RTOL)
        assert (label, p) == (other[3], other[2]) == (third[3], third[2])
        assert error == other[4] == third[4] == ""
    boxes = json.loads((tmp_path / "a" / "boxes.json").read_text())
    assert len(boxes["images"]) == 4
    # The torch-free command draws the same boxes from the same maps.
    assert json.loads((tmp_path / "c" / "boxes.json").read_text()) == boxes
    assert len(list((tmp_path / "c" / "masks").iterdir())) == 4


def test_cli_names_a_file_that_is_no_model(tmp_path, capsys):
    (tmp_path / "bad.joblib").write_bytes(b"truncated")
    assert main(["export", str(tmp_path / "bad.joblib"), "-o", str(tmp_path / "m.onnx")]) == 1
    assert "not a readable joblib model" in capsys.readouterr().err
    joblib.dump({"not": "a model"}, tmp_path / "dict.joblib")
    assert main(["predict", str(tmp_path / "dict.joblib"), str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "not a fitted skanomaly pipeline" in capsys.readouterr().err


def test_bottle_exports_with_the_estimators_scores(tmp_path):
    root = mvtec_category("mvtec_bottle")
    train, test = load_mvtec(root, split="train"), load_mvtec(root, split="test")
    pipe = make_patchcore(random_state=0).fit(train.images[:30])
    model = skanomaly_runtime.load(to_onnx(pipe, tmp_path / "bottle.onnx"))
    _assert_same_answers(pipe, model, test.images[::8])


def _scipy_boxes(amap, mask, min_area):
    """The reference: scipy's labelling, 8-connected."""
    from scipy import ndimage

    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
    regions = []
    for index, found in enumerate(ndimage.find_objects(labels), start=1):
        inside = labels[found] == index
        if inside.sum() >= min_area:
            rows, cols = found
            regions.append({"x0": cols.start, "y0": rows.start, "x1": cols.stop, "y1": rows.stop,
                            "score": float(amap[found][inside].max()), "area": int(inside.sum())})
    return sorted(regions, key=lambda r: -r["score"])


@pytest.mark.parametrize("seed", range(6))
def test_numpy_region_boxes_are_scipys(seed):
    from skanomaly_runtime._regions import region_boxes

    rng = np.random.default_rng(seed)
    amap = rng.random((40, 57)).astype(np.float32)
    # Blobs, diagonal chains and speckle: a smoothed noise field thresholded.
    from scipy.ndimage import gaussian_filter

    mask = gaussian_filter(rng.random((40, 57)), 1.5 * (seed % 3)) > 0.5 + 0.02 * (seed % 3)
    mask[5, 5:9] = False
    mask[np.arange(10, 20), np.arange(10, 20)] = True  # a diagonal line: corners connect
    for min_area in (1, 16):
        assert region_boxes(amap, mask, min_area) == _scipy_boxes(amap, mask, min_area)
    assert region_boxes(amap, np.zeros_like(mask)) == []
