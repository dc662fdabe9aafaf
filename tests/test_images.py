import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from skanomaly.images import check_images, load_image


def test_paths_pil_and_arrays_agree(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(9, 7, 3), dtype=np.uint8)
    path = tmp_path / "a.png"
    Image.fromarray(rgb).save(path)
    expected = rgb.astype(np.float32) / 255
    for item in (str(path), path, Image.fromarray(rgb), rgb, expected):
        out = load_image(item)
        assert out.dtype == np.float32 and out.shape == (9, 7, 3)
        np.testing.assert_allclose(out, expected, atol=1e-6)


def test_grey_rgba_and_16_bit(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = load_image(grey)
    assert out.shape == (3, 4, 3)
    np.testing.assert_allclose(out[..., 0], out[..., 2])
    rgba = np.dstack([np.full((3, 4, 3), 255, np.uint8), np.zeros((3, 4), np.uint8)])
    np.testing.assert_allclose(load_image(rgba), 1.0)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert load_image(tmp_path / "rgba.png").shape == (3, 4, 3)
    deep = np.full((5, 6), 32768, dtype=np.uint16)
    np.testing.assert_allclose(load_image(deep), 32768 / 65535, rtol=1e-6)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    np.testing.assert_allclose(load_image(tmp_path / "deep.png"), 32768 / 65535, rtol=1e-6)
    assert load_image(np.ones((2, 2, 1), dtype=bool)).shape == (2, 2, 3)


def test_check_images_splits_arrays_and_keeps_mixed_sizes():
    assert len(check_images(np.zeros((3, 8, 8), np.uint8))) == 3
    mixed = [np.zeros((8, 8, 3), np.uint8), np.zeros((5, 9), np.uint8)]
    assert [load_image(x).shape for x in check_images(mixed)] == [(8, 8, 3), (5, 9, 3)]


@pytest.mark.parametrize(
    "X, match",
    [
        ([], "empty"),
        ("one.png", "single path"),
        (np.zeros((4, 4)), r"\(n, H, W\)"),
        (5, "Expected a list"),
    ],
)
def test_check_images_errors(X, match):
    with pytest.raises(ValueError, match=match):
        check_images(X)


def test_bad_items_are_named(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    cases = [
        (str(tmp_path / "missing.png"), "missing.png"),
        (str(junk), "junk.png"),
        (np.full((4, 4), np.nan), "NaN"),
        (np.full((4, 4), 2.0), r"\[0, 1\]"),
        (np.zeros((4, 4, 2)), "shape"),
        (np.zeros((4, 4), dtype=np.int64), "dtype"),
        (np.zeros((0, 4)), "no pixels"),
        (object(), "expected a path"),
    ]
    for item, match in cases:
        with pytest.raises(ValueError, match=match) as info:
            load_image(item, index=7)
        assert "image 7" in str(info.value)


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    channels=st.sampled_from([None, 1, 3, 4]),
    dtype=st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, bool]),
    seed=st.integers(0, 2**16),
)
def test_any_valid_array_becomes_rgb_in_unit_range(h, w, channels, dtype, seed):
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels is None else (h, w, channels)
    if dtype is bool:
        array = rng.random(shape) > 0.5
    elif np.issubdtype(dtype, np.integer):
        array = rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)
    else:
        array = rng.random(shape).astype(dtype)
    out = load_image(array)
    assert out.shape == (h, w, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
