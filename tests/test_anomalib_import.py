"""anomalib PatchCore and PaDiM checkpoints in: read without anomalib and
without running code from the file, scored as anomalib's formulas score."""

import os
import pickle
import sys
import types

import joblib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from skanomaly.anomalib_import import load_anomalib_checkpoint
from skanomaly.datasets import make_synthetic

SIZE = 64
LAYERS = ["layer2", "layer3"]
PREFIX = "model.feature_extractor.feature_extractor."


@pytest.fixture(scope="module")
def data():
    return make_synthetic(12, 6, image_size=SIZE, random_state=0)


def _extractor():
    import timm

    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, features_only=True,
                             out_indices=(2, 3)).eval()


def _reference_embedding(extractor, images):
    """anomalib's PatchcoreModel embedding, written out here: Resize (bilinear,
    antialiased), ImageNet normalisation, 3x3 average pooling with zero padding,
    the deeper tap upsampled (bilinear) and concatenated."""
    pixels = np.stack(images).astype(np.float32)
    if np.stack(images).dtype == np.uint8:
        pixels /= 255  # as anomalib's image reader: RGB in [0, 1]
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        maps = [F.avg_pool2d(f, 3, 1, 1) for f in extractor((x - mean) / std)]
    deep = F.interpolate(maps[1], size=maps[0].shape[-2:], mode="bilinear")
    return torch.cat([maps[0], deep], 1).permute(0, 2, 3, 1).double()


def _reference_scores(embedding, bank, k=9):
    """PatchCore's re-weighted image score as anomalib computes it, in float64."""
    bank = bank.double()
    scores = []
    for grid in embedding.reshape(len(embedding), -1, embedding.shape[-1]):
        distances, nearest = torch.cdist(grid, bank).min(1)
        worst = distances.argmax()
        support = torch.cdist(bank[nearest[worst]][None], bank)[0].topk(k, largest=False).indices
        weights = 1 - torch.softmax(torch.linalg.vector_norm(grid[worst] - bank[support], dim=1), 0)[0]
        scores.append(float(weights * distances[worst]))
    return np.array(scores)


class _PrecisionType:
    """Stands for an anomalib class: pickled under a module that is absent
    when the checkpoint is read."""

    def __init__(self, value):
        self.value = value


def _save_checkpoint(path, extractor, bank, extra_steps=()):
    """A checkpoint laid out as anomalib 2.x's Engine writes one for Patchcore."""
    state = {PREFIX + k: v for k, v in extractor.state_dict().items()}
    state.update({"model.memory_bank": bank, "post_processor._image_threshold": torch.tensor(0.8)})
    steps = [{"class_path": "torchvision.transforms.v2.Resize",
              "init_args": {"size": [SIZE, SIZE], "interpolation": "bilinear", "antialias": True}},
             *extra_steps,
             {"class_path": "torchvision.transforms.v2.Normalize",
              "init_args": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}]
    ckpt = {
        "state_dict": state,
        "hyper_parameters": {"backbone": "resnet18", "layers": LAYERS, "pre_trained": False,
                             "coreset_sampling_ratio": 0.1, "num_neighbors": 9,
                             "precision": _PrecisionType("float32")},
        "anomalib_pre_processor_config": {"transform": {
            "class_path": "torchvision.transforms.v2.Compose",
            "init_args": {"transforms": steps}}},
    }
    fake = types.ModuleType("anomalib_absent_types")
    fake._PrecisionType = _PrecisionType
    _PrecisionType.__module__ = "anomalib_absent_types"
    sys.modules["anomalib_absent_types"] = fake
    try:
        torch.save(ckpt, path)
    finally:
        del sys.modules["anomalib_absent_types"]
        _PrecisionType.__module__ = __name__
    return path


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory):
    extractor = _extractor()
    train = _reference_embedding(extractor, list(data.images[:8]))
    bank = train.reshape(-1, train.shape[-1])[::7].float()
    path = _save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.ckpt", extractor, bank)
    return path, extractor, bank


PADIM_LAYERS = ["layer1", "layer2", "layer3"]


def _padim_extractor():
    import timm

    torch.manual_seed(1)
    return timm.create_model("resnet18", pretrained=False, features_only=True,
                             out_indices=(1, 2, 3)).eval()


def _padim_reference_embedding(extractor, images, idx):
    """anomalib's PadimModel embedding, written out here: the taps as they
    are, the deeper ones resized to the first by repetition (nearest), the
    channels ``idx`` in their order."""
    pixels = np.stack(images).astype(np.float32)
    if np.stack(images).dtype == np.uint8:
        pixels /= 255
    pixels = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    x = F.interpolate(pixels, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        maps = extractor((x - mean) / std)
    size = maps[0].shape[-2:]
    embedding = torch.cat([maps[0]] + [F.interpolate(m, size=size, mode="nearest") for m in maps[1:]], 1)
    return embedding[:, idx].double()  # (n, d, h, w)


def _padim_reference_scores(embedding, mean, inverse, sigma=4):
    """anomalib's PaDiM image score in float64: Mahalanobis distances, the map
    upsampled (bilinear) to the image, a Gaussian blur (sigma 4 px, 33 px
    window, reflected borders), its maximum."""
    n, d, h, w = embedding.shape
    delta = embedding.reshape(n, d, h * w) - mean[None]
    d2 = torch.einsum("ndp,pde,nep->np", delta, inverse, delta)
    distance = d2.clamp(min=0).sqrt().reshape(n, 1, h, w)
    up = F.interpolate(distance, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    x = np.arange(33) - 16.0
    line = np.exp(-x ** 2 / (2 * sigma ** 2))
    kernel = torch.from_numpy(np.outer(line, line) / np.outer(line, line).sum())[None, None]
    blurred = F.conv2d(F.pad(up, (16, 16, 16, 16), mode="reflect"), kernel)
    return blurred.amax(dim=(1, 2, 3)).numpy()


def _save_padim_checkpoint(path, extractor, idx, mean, inverse, **overrides):
    """A checkpoint laid out as anomalib 2.x's Engine writes one for Padim
    (without the blur kernel buffer: the reader then builds anomalib's own)."""
    state = {PREFIX + k: v for k, v in extractor.state_dict().items()}
    state.update({"model.idx": idx, "model.gaussian.mean": mean.float(),
                  "model.gaussian.inv_covariance": inverse.float(),
                  "post_processor._image_threshold": torch.tensor(3.0)})
    state.update(overrides)
    steps = [{"class_path": "torchvision.transforms.v2.Resize", "init_args": {"size": [SIZE, SIZE]}},
             {"class_path": "torchvision.transforms.v2.Normalize",
              "init_args": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}]
    torch.save({"state_dict": state,
                "hyper_parameters": {"backbone": "resnet18", "layers": PADIM_LAYERS,
                                     "pre_trained": False, "n_features": None},
                "anomalib_pre_processor_config": {"transform": {"init_args": {"transforms": steps}}}},
               path)
    return path


@pytest.fixture(scope="module")
def padim_checkpoint(data, tmp_path_factory):
    extractor = _padim_extractor()
    idx = torch.randperm(64 + 128 + 256, generator=torch.Generator().manual_seed(0))[:40]
    train = _padim_reference_embedding(extractor, list(data.images[:8]), idx)
    n, d, h, w = train.shape
    feats = train.reshape(n, d, h * w).permute(2, 0, 1)  # (positions, n, d)
    mean = feats.mean(1)
    centred = feats - mean[:, None]
    cov = centred.transpose(1, 2) @ centred / (n - 1) + 0.01 * torch.eye(d, dtype=torch.float64)
    inverse = torch.linalg.inv(cov)
    path = _save_padim_checkpoint(tmp_path_factory.mktemp("padim") / "model.ckpt", extractor, idx,
                                  mean.T.contiguous(), inverse)
    return path, extractor, idx, mean.T.contiguous(), inverse


def test_padim_scores_are_anomalibs_formula_on_anomalibs_features(padim_checkpoint, data):
    path, extractor, idx, mean, inverse = padim_checkpoint
    pipe = load_anomalib_checkpoint(path, list(data.images[8:12]), random_state=0)
    test = list(data.images[12:])
    expected = _padim_reference_scores(_padim_reference_embedding(extractor, test, idx),
                                       mean.float().double(), inverse.float().double())
    np.testing.assert_allclose(-pipe.score_samples(test), expected, rtol=1e-4)
    head = pipe[-1]
    assert head.anomalib_image_threshold_ == pytest.approx(3.0)
    assert head.mean_.shape == (SIZE // 4, SIZE // 4, 40) and np.isfinite(head.offset_)
    np.testing.assert_array_equal(pipe[0].feature_indices_, idx.numpy())  # anomalib's order
    assert not hasattr(head, "partial_fit")  # anomalib keeps no sums to continue from
    labels = pipe.predict(test)
    assert set(np.unique(labels)) <= {-1, 1}


def test_an_imported_padim_saves_exports_and_maps(padim_checkpoint, data, tmp_path):
    from skanomaly import anomaly_maps
    from skanomaly.persistence import load_model, save_model

    path, *_ = padim_checkpoint
    pipe = load_anomalib_checkpoint(path, list(data.images[8:12]), random_state=0)
    test = list(data.images[12:])
    save_model(pipe, tmp_path / "m.skops")
    np.testing.assert_array_equal(load_model(tmp_path / "m.skops").score_samples(test),
                                  pipe.score_samples(test))
    assert anomaly_maps(pipe, test).shape == (len(test), SIZE, SIZE)
    onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    del onnxruntime
    import skanomaly_runtime
    from skanomaly.export import to_onnx

    to_onnx(pipe, tmp_path / "m.onnx")
    exported = skanomaly_runtime.load(tmp_path / "m.onnx")
    np.testing.assert_allclose(exported.score_samples(test), pipe.score_samples(test), rtol=1e-4)


@pytest.mark.parametrize("override, match", [
    ({"model.idx": torch.tensor([0, 0, 1])}, "model.idx does not pick distinct channels"),
    ({"model.idx": torch.tensor([5000])}, "model.idx does not pick distinct channels"),
    ({"model.gaussian.mean": torch.zeros(40, 7)}, "its taps give 16 x 16 grids of 40 features"),
])
def test_padim_statistics_that_do_not_fit_are_refused(padim_checkpoint, data, tmp_path,
                                                      override, match):
    _, extractor, idx, mean, inverse = padim_checkpoint
    path = _save_padim_checkpoint(tmp_path / "bad.ckpt", extractor, idx, mean, inverse, **override)
    with pytest.raises(ValueError, match=match) as info:
        load_anomalib_checkpoint(path, list(data.images[:2]))
    assert "bad.ckpt" in str(info.value)


def test_scores_are_anomalibs_formula_on_anomalibs_features(checkpoint, data):
    path, extractor, bank = checkpoint
    pipe = load_anomalib_checkpoint(path, list(data.images[8:12]), random_state=0)
    test = list(data.images[12:])
    expected = _reference_scores(_reference_embedding(extractor, test), bank)
    np.testing.assert_allclose(-pipe.score_samples(test), expected, rtol=1e-4)
    head = pipe[-1]
    np.testing.assert_array_equal(head.memory_bank_, bank.numpy())  # the bank as anomalib chose it
    assert head.n_neighbors == 9 and head.anomalib_image_threshold_ == pytest.approx(0.8)
    assert len(head.calibration_scores_) == 4 and np.isfinite(head.offset_)
    assert list(pipe[0].layers_) == LAYERS and pipe[0].image_shape_ == (SIZE, SIZE)


def test_the_imported_pipeline_saves_and_refits_with_its_weights(checkpoint, data, tmp_path):
    from sklearn.base import clone

    path, _, _ = checkpoint
    pipe = load_anomalib_checkpoint(path, list(data.images[8:12]), random_state=0)
    test = list(data.images[12:])
    joblib.dump(pipe, tmp_path / "m.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "m.joblib").score_samples(test),
                                  pipe.score_samples(test))
    # The weights are a parameter: a clone's embedder gives the same features.
    embedder = clone(pipe[0]).fit(None)
    np.testing.assert_array_equal(embedder.transform(test), pipe[0].transform(test))


def test_the_command_line_makes_a_model_file_every_command_reads(checkpoint, data, tmp_path,
                                                                 capsys):
    from PIL import Image

    from skanomaly.cli import main

    path, _, _ = checkpoint
    for kind, images in (("good", data.images[8:12]), ("new", data.images[12:14])):
        (tmp_path / kind).mkdir()
        for i, image in enumerate(images):
            Image.fromarray(np.asarray(image)).save(tmp_path / kind / f"{i}.png")
    model = tmp_path / "m.skops"
    assert main(["from-anomalib", str(path), "--calibration", str(tmp_path / "good"),
                 "-o", str(model)]) == 0
    assert "PatchCore, bank" in capsys.readouterr().out  # a .skops file holds the weights
    assert main(["predict", str(model), str(tmp_path / "new"), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "predictions.csv").read_text().count("\n") == 3
    assert main(["from-anomalib", str(tmp_path / "none.ckpt"), "--calibration",
                 str(tmp_path / "good"), "-o", str(model)]) == 1
    assert "none.ckpt" in capsys.readouterr().err


def test_no_code_from_the_file_runs(tmp_path, data):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.memory_bank": torch.zeros(2, 2)},
                "hyper_parameters": {"backbone": Payload(), "layers": ["layer2"]}}, path)
    with pytest.raises(ValueError, match="name no backbone"):
        load_anomalib_checkpoint(path, list(data.images[:2]))
    assert not marker.exists()


@pytest.mark.parametrize("content, match", [
    (b"not a checkpoint", "not a readable Lightning checkpoint"),
    ({"state_dict": {"weight": torch.zeros(1)}}, "not an anomalib PatchCore or PaDiM checkpoint"),
    ({"state_dict": {"model.memory_bank": torch.zeros(2, 2), "extra": _PrecisionType(1)},
      "hyper_parameters": {}}, "not plain tensors"),
])
def test_other_files_are_refused_by_name(tmp_path, data, content, match):
    path = tmp_path / "other.ckpt"
    if isinstance(content, dict):
        torch.save(content, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        load_anomalib_checkpoint(path, list(data.images[:2]))
    assert "other.ckpt" in str(info.value)


def test_unsupported_preprocessing_and_missing_calibration(checkpoint, data, tmp_path):
    path, extractor, bank = checkpoint
    with pytest.raises(ValueError, match="calibration images"):
        load_anomalib_checkpoint(path, np.zeros((0, SIZE, SIZE, 3)))
    crop = {"class_path": "torchvision.transforms.v2.CenterCrop", "init_args": {"size": [56, 56]}}
    cropped = _save_checkpoint(tmp_path / "crop.ckpt", extractor, bank, [crop])
    with pytest.raises(ValueError, match="CenterCrop step"):
        load_anomalib_checkpoint(cropped, list(data.images[:2]))
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        load_anomalib_checkpoint(tmp_path / "nowhere.ckpt", list(data.images[:2]))


@pytest.mark.parametrize("name, layers", [("Patchcore", LAYERS), ("Padim", PADIM_LAYERS)])
def test_real_anomalib_checkpoint(tmp_path, data, name, layers):
    """With anomalib installed (optional; CI has it not): a checkpoint its
    Engine wrote, scored as its own forward scores, to its float32 rounding
    (its distances come from ||a||^2 - 2ab + ||b||^2)."""
    pytest.importorskip("anomalib", reason="anomalib is not installed (optional)")
    import warnings

    import anomalib.models
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from PIL import Image

    for kind in ("good", "bad"):
        (tmp_path / "data" / kind).mkdir(parents=True)
    paths = {"good": [], "bad": []}
    for i, (image, target) in enumerate(zip(data.images, data.target)):
        kind = "good" if target == 1 else "bad"
        paths[kind].append(str(tmp_path / "data" / kind / f"{i:03d}.png"))
        Image.fromarray((image * 255).round().astype(np.uint8)).save(paths[kind][-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        datamodule = Folder(name="syn", root=tmp_path / "data", normal_dir="good",
                            abnormal_dir="bad", train_batch_size=8, eval_batch_size=8, num_workers=0)
        model_class = getattr(anomalib.models, name)
        model = model_class(backbone="resnet18", pre_trained=False, layers=layers)
        engine = Engine(max_epochs=1, accelerator="cpu", default_root_dir=tmp_path / "run", logger=False)
        engine.fit(model=model, datamodule=datamodule)
    ckpt = engine.trainer.checkpoint_callback.best_model_path
    test = paths["good"][6:] + paths["bad"]
    pipe = load_anomalib_checkpoint(ckpt, paths["good"][:6])
    loaded = model_class.load_from_checkpoint(ckpt, map_location="cpu").eval()
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), np.float32) / 255)
                     .permute(2, 0, 1) for p in test])
    with torch.no_grad():
        theirs = loaded.model(loaded.pre_processor.transform(x)).pred_score.numpy().ravel()
    np.testing.assert_allclose(-pipe.score_samples(test), theirs, rtol=5e-3)
