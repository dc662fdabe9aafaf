import numpy as np
import pytest
from PIL import Image

from skanomaly.datasets import load_folder, load_mvtec, make_synthetic
from skanomaly.metrics import pixel_roc_auc


def _write(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def test_load_mvtec_layout(tmp_path):
    for name in ("000.png", "001.png"):
        _write(tmp_path / "train" / "good" / name)
    _write(tmp_path / "test" / "good" / "000.png")
    _write(tmp_path / "test" / "crack" / "000.png")
    _write(tmp_path / "ground_truth" / "crack" / "000_mask.png", 255)
    train = load_mvtec(tmp_path)
    assert len(train.images) == 2 and train.target.tolist() == [1, 1]
    test = load_mvtec(tmp_path, split="test")
    assert test.target.tolist() == [-1, 1]
    assert test.defect_type == ["crack", "good"]
    assert test.masks[0].endswith("000_mask.png") and test.masks[1] is None


def test_load_mvtec_errors(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_mvtec(tmp_path, split="val")
    with pytest.raises(ValueError, match="No 'train' folder"):
        load_mvtec(tmp_path)
    _write(tmp_path / "test" / "crack" / "000.png")
    (tmp_path / "ground_truth" / "scratch").mkdir(parents=True)
    with pytest.raises(ValueError, match="has no mask"):
        load_mvtec(tmp_path, split="test")


def test_load_mvtec_without_ground_truth_is_image_level(tmp_path):
    # MVTec AD screw's shared copy: test/good and test/defect, no masks at all.
    _write(tmp_path / "test" / "good" / "000.png")
    _write(tmp_path / "test" / "defect" / "000.png")
    test = load_mvtec(tmp_path, split="test")
    assert test.target.tolist() == [-1, 1] and test.masks == [None, None]


def test_make_synthetic_masks_mark_changed_pixels():
    data = make_synthetic(3, 3, image_size=64, random_state=1)
    assert data.images.dtype == np.uint8 and data.masks.shape == (6, 64, 64)
    assert data.target.tolist() == [1, 1, 1, -1, -1, -1]
    assert not data.masks[:3].any() and all(m.sum() > 10 for m in data.masks[3:])
    again = make_synthetic(3, 3, image_size=64, random_state=1)
    np.testing.assert_array_equal(data.images, again.images)
    with pytest.raises(ValueError):
        make_synthetic(0, 0)


def test_pixel_roc_auc_against_sklearn(tmp_path):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    masks = rng.random((3, 6, 6)) > 0.7
    maps = rng.random((3, 6, 6)) + masks
    path = tmp_path / "m.png"
    Image.fromarray(masks[1].astype(np.uint8) * 255).save(path)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_roc_auc([masks[0], str(path), masks[2]], maps) == pytest.approx(expected)
    with pytest.raises(ValueError, match="does not match"):
        pixel_roc_auc([np.zeros((2, 2))], [np.zeros((3, 3))])


def test_load_folder_pairs_masks_by_stem(tmp_path):
    _write(tmp_path / "good" / "a.png")
    _write(tmp_path / "good" / "b.jpg")
    (tmp_path / "good" / "notes.txt").write_text("ignored")
    _write(tmp_path / "bad" / "x.png")
    _write(tmp_path / "bad" / "scratch" / "y.png")
    _write(tmp_path / "bad" / "scratch" / "z.png")
    _write(tmp_path / "masks" / "x_mask.png", 255)
    _write(tmp_path / "masks" / "scratch" / "y.png", 255)
    data = load_folder(tmp_path / "good", tmp_path / "bad", tmp_path / "masks")
    assert [p.split("/")[-1] for p in data.images] == ["a.png", "b.jpg", "x.png", "y.png", "z.png"]
    assert data.target.tolist() == [1, 1, -1, -1, -1]
    assert data.defect_type == ["good", "good", "anomalous", "scratch", "scratch"]
    assert data.masks[:2] == [None, None] and data.masks[4] is None
    assert data.masks[2].endswith("x_mask.png") and data.masks[3].endswith("scratch/y.png")
    only_good = load_folder(tmp_path / "good")
    assert only_good.target.tolist() == [1, 1]


def test_load_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No images"):
        load_folder(tmp_path / "empty")
    _write(tmp_path / "good" / "a.png")
    with pytest.raises(ValueError, match="No images"):
        load_folder(tmp_path / "good", tmp_path / "empty")
