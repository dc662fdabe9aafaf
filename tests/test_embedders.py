import pickle

import numpy as np
import pytest
from sklearn.base import clone

from skanomaly import ImageEmbedder, PatchEmbedder


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((5, 64, 64, 3)).astype(np.float32)


def test_patch_embedder_shape_and_dtype(images):
    out = PatchEmbedder(image_size=64).fit_transform(images)
    assert out.shape == (5, 8, 8, 152) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.std() > 0


def test_patch_grid_follows_image_size_and_layers(images):
    emb = PatchEmbedder(image_size=(64, 96), layers=("blocks.1", "blocks.2"))
    out = emb.fit_transform(images)
    assert out.shape == (5, 16, 24, 24 + 40)
    assert emb.get_feature_names_out().shape == (64,)


def test_n_features_reduction(images):
    emb = PatchEmbedder(image_size=64, n_features=50).fit(images)
    assert emb.transform(images).shape == (5, 8, 8, 50)
    with pytest.raises(ValueError, match="exceeds"):
        PatchEmbedder(image_size=64, n_features=500).fit(images)


def test_feature_groups_say_which_channels_each_layer_gave(images):
    emb = PatchEmbedder(image_size=64, layers=("blocks.1", "blocks.2")).fit()
    assert emb.feature_groups_ == (24, 40)
    # The groups are consecutive runs: the first layer's channels come first.
    single = PatchEmbedder(image_size=64, layers=("blocks.1",), aggregation_size=1).fit()
    both = PatchEmbedder(image_size=64, layers=("blocks.1", "blocks.2"), aggregation_size=1).fit()
    np.testing.assert_allclose(both.transform(images)[..., :24], single.transform(images), atol=1e-5)
    kept = PatchEmbedder(image_size=64, n_features=30, reduction="random", random_state=0).fit()
    assert kept.feature_groups_ == (int((kept.feature_indices_ < 40).sum()),
                                    int((kept.feature_indices_ >= 40).sum()))
    assert sum(kept.feature_groups_) == 30
    # Channels averaged across layers belong to no one layer.
    assert PatchEmbedder(image_size=64, n_features=50).fit().feature_groups_ is None


def test_batches_and_threads_do_not_change_features(images):
    a = PatchEmbedder(image_size=64, batch_size=1).fit_transform(images)
    b = PatchEmbedder(image_size=64, batch_size=4, n_jobs=1).fit_transform(images)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_mixed_sizes_and_inputs_are_resized(images, tmp_path):
    from PIL import Image

    path = tmp_path / "x.png"
    Image.fromarray((images[0] * 255).astype(np.uint8)).save(path)
    mixed = [str(path), (images[1] * 255).astype(np.uint8)[:40], images[2][..., 0]]
    out = PatchEmbedder(image_size=64).fit(None).transform(mixed)
    assert out.shape == (3, 8, 8, 152)


def test_image_embedder_pools_deepest_stage(images):
    emb = ImageEmbedder(image_size=64)
    out = emb.fit_transform(images)
    assert out.shape == (5, 320) and out.dtype == np.float32
    two = ImageEmbedder(image_size=64, layers=["blocks.2", "blocks.6"]).fit_transform(images)
    assert two.shape == (5, 360)
    np.testing.assert_allclose(two[:, 40:], out, rtol=1e-4, atol=1e-5)


def test_image_embedder_grid_keeps_each_cell_in_place():
    """Cell by cell, row-major: the grid cells average to the global vector."""
    images = np.random.default_rng(1).random((3, 128, 128, 3)).astype(np.float32)
    flat = ImageEmbedder(image_size=128, layers=(8, 32)).fit_transform(images)
    emb = ImageEmbedder(image_size=128, layers=(8, 32), grid_size=2).fit(None)
    grid = emb.transform(images)
    assert grid.shape == (3, 4 * 360) and emb.n_features_out_ == 4 * 360
    cells = grid.reshape(3, 2, 2, 360)
    # Lite0 at 128 px: stride 8 is 16 x 16 and stride 32 is 4 x 4, both split evenly.
    np.testing.assert_allclose(cells.mean(axis=(1, 2)), flat, rtol=1e-4, atol=1e-5)
    # The top cells at stride 8 (receptive field 67 px) do not see the last rows.
    changed = images.copy()
    changed[:, 104:, :] = 0.0
    moved = emb.transform(changed).reshape(3, 2, 2, 360)
    assert not np.allclose(moved[:, 1], cells[:, 1])
    np.testing.assert_allclose(moved[:, 0, :, :40], cells[:, 0, :, :40], rtol=1e-4, atol=1e-5)
    kept = ImageEmbedder(image_size=128, layers=(8, 32), grid_size=2, keep_grid=True).fit(None)
    assert kept.n_features_out_ == 360 and len(kept.get_feature_names_out()) == 360
    np.testing.assert_array_equal(kept.transform(images), cells)
    with pytest.raises(ValueError, match="grid_size"):
        ImageEmbedder(grid_size=0).fit(None)
    with pytest.raises(ValueError, match="keep_grid"):
        ImageEmbedder(keep_grid="yes").fit(None)


def test_pickle_round_trip_gives_identical_features(images):
    emb = PatchEmbedder(image_size=64).fit(images)
    restored = pickle.loads(pickle.dumps(emb))
    np.testing.assert_array_equal(restored.transform(images), emb.transform(images))
    assert clone(emb).get_params() == emb.get_params()


def test_bad_parameters_fail_in_fit_and_leave_no_state():
    for params, err in [
        ({"backbone": "nope"}, ValueError),
        ({"image_size": 8}, ValueError),
        ({"image_size": (64, 64, 3)}, ValueError),
        ({"aggregation_size": 2}, ValueError),
        ({"device": "tpu:0"}, ValueError),
        ({"layers": ["nope"]}, ValueError),
        ({"batch_size": 0}, ValueError),
        ({"layers": (8, 16), "upsampling_tap": 2}, ValueError),
    ]:
        emb = PatchEmbedder(**params)
        with pytest.raises(err):
            emb.fit(None)
        assert not hasattr(emb, "backbone_") and not hasattr(emb, "image_shape_"), params


def test_transform_before_fit_and_bad_images(images):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        PatchEmbedder().transform(images)
    emb = PatchEmbedder(image_size=64).fit(None)
    with pytest.raises(ValueError, match="image 1"):
        emb.transform([images[0], np.full((8, 8), np.nan)])


def test_cuda_request_without_cuda_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="CUDA is not available"):
        PatchEmbedder(device="cuda").fit(None)


def test_count_include_pad_damps_border_patches_only(images):
    zeros_padded = PatchEmbedder(image_size=64, layers=("blocks.2",)).fit_transform(images)
    real_only = PatchEmbedder(image_size=64, layers=("blocks.2",),
                              count_include_pad=False).fit_transform(images)
    interior = (slice(None), slice(1, -1), slice(1, -1))
    np.testing.assert_allclose(zeros_padded[interior], real_only[interior], rtol=1e-4, atol=1e-5)
    # A corner window holds 4 of 9 real cells: zero padding scales it by 4/9.
    np.testing.assert_allclose(zeros_padded[:, 0, 0], real_only[:, 0, 0] * 4 / 9,
                               rtol=1e-4, atol=1e-5)


def test_nearest_upsampling_repeats_each_coarse_cell(images):
    """Taps at strides 8 and 16: with ``"nearest"`` each
    stride-16 cell fills a 2 x 2 block of the stride-8 grid unchanged; the
    stride-8 tap itself is the same either way."""
    params = dict(image_size=64, layers=("blocks.2", "blocks.4"), aggregation_size=1)
    nearest = PatchEmbedder(upsampling="nearest", **params).fit_transform(images)
    bilinear = PatchEmbedder(**params).fit_transform(images)
    fine = PatchEmbedder(image_size=64, layers=("blocks.2",), aggregation_size=1).fit_transform(images)
    d = fine.shape[-1]
    np.testing.assert_allclose(nearest[..., :d], fine, rtol=1e-5, atol=1e-6)
    coarse = nearest[..., d:]
    np.testing.assert_array_equal(coarse[:, 0::2, 0::2], coarse[:, 1::2, 1::2])
    assert not np.allclose(bilinear[..., d:], coarse)


def test_upsampling_tap_keeps_the_coarser_taps_as_that_tap_grid_gives_them(images):
    """Strides 4, 8, 16 resized onto the stride-8 grid and repeated: 2 x 2
    averages give back, bit for bit, what an embedder of strides 8 and 16
    gives; the stride-4 tap is its own either way."""
    import torch

    fine = PatchEmbedder(image_size=64, layers=(4, 8, 16), upsampling_tap=1).fit_transform(images)
    direct = PatchEmbedder(image_size=64, layers=(4, 8, 16)).fit_transform(images)
    coarse = PatchEmbedder(image_size=64, layers=(8, 16)).fit_transform(images)
    stride4 = PatchEmbedder(image_size=64, layers=(4,)).fit_transform(images)
    d = stride4.shape[-1]
    assert fine.shape == direct.shape == (5, 16, 16, d + coarse.shape[-1])
    np.testing.assert_array_equal(fine[..., :d], stride4)
    pooled = torch.nn.functional.avg_pool2d(torch.from_numpy(fine[..., d:]).permute(0, 3, 1, 2), 2)
    np.testing.assert_array_equal(pooled.permute(0, 2, 3, 1).numpy(), coarse)
    np.testing.assert_array_equal(fine[:, 0::2, 0::2, d:], fine[:, 1::2, 1::2, d:])
    assert not np.allclose(direct[..., d:], fine[..., d:])
    with pytest.raises(ValueError, match="upsampling_tap=3 names no tap"):
        PatchEmbedder(layers=(4, 8, 16), upsampling_tap=3).fit()


def test_decoding_ahead_gives_the_same_batches_and_names_a_bad_file(tmp_path, images):
    from PIL import Image

    from skanomaly._torch import _load_resized, _resized_batches

    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray((image * 255).astype(np.uint8)).save(paths[-1])
    batches = list(_resized_batches(paths, 2, (32, 48)))
    assert [start for start, _ in batches] == [0, 2, 4]
    np.testing.assert_array_equal(_cat_numpy([b for _, b in batches]),
                                  _load_resized(paths, 0, (32, 48)).numpy())
    # A broken file in a later batch (decoded in the background) is reported
    # at that batch, by its position and path; earlier batches were delivered.
    (tmp_path / "3.png").write_bytes(b"not an image")
    delivered = []
    with pytest.raises(ValueError, match=r"image 3.*3\.png"):
        for start, _ in _resized_batches(paths, 2, (32, 48)):
            delivered.append(start)
    assert delivered == [0]
    emb = PatchEmbedder(image_size=64, batch_size=2).fit(None)
    with pytest.raises(ValueError, match="image 3"):
        emb.transform(paths)


def _cat_numpy(tensors):
    import torch

    return torch.cat(tensors).numpy()


def test_tiled_grid_takes_each_cell_from_its_nearest_tile():
    rng = np.random.default_rng(0)
    images = rng.random((2, 128, 192, 3)).astype(np.float32)
    tiled = PatchEmbedder(image_size=(128, 192), tile_size=64).fit(None)
    grid = tiled.transform(images)
    assert grid.shape == (2, 16, 24, 152)  # the untiled grid's shape
    # 64 px tiles overlapping by 16 px: starts 0, 48 (rows 0-6 -> tile 0) ...
    plain = PatchEmbedder(image_size=64).fit(None)
    rows, row_owner = tiled._tile_layout(128)
    cols, col_owner = tiled._tile_layout(192)
    for y, x in [(0, 0), (7, 13), (15, 23), (9, 4)]:
        r, c = rows[row_owner[y]], cols[col_owner[x]]
        crop = images[:, 8 * r:8 * r + 64, 8 * c:8 * c + 64]
        np.testing.assert_allclose(grid[:, y, x], plain.transform(crop)[:, y - r, x - c],
                                   rtol=1e-4, atol=1e-5)
    # One tile of the whole image is the plain embedding (to float rounding:
    # tiles go through the backbone one image at a time, and with several
    # threads the convolutions may sum in another order).
    whole = PatchEmbedder(image_size=64, tile_size=64).fit_transform(images[:, :64, :64])
    np.testing.assert_allclose(whole, plain.transform(images[:, :64, :64]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("params, message", [
    (dict(image_size=128, tile_size=60), "multiples of the patch stride 8"),
    (dict(image_size=(64, 128), tile_size=96), "exceeds the image's shorter side"),
])
def test_bad_tiles_are_refused_at_fit(params, message):
    with pytest.raises(ValueError, match=message):
        PatchEmbedder(**params).fit(None)


def test_tiled_pipelines_refuse_export():
    from skanomaly import make_patchcore
    from skanomaly.export import export_refusal

    pipe = make_patchcore(image_size=128).set_params(patchembedder__tile_size=64)
    assert "tile by tile" in export_refusal(pipe)


def test_frozen_backbones_fold_their_batch_norms_and_keep_their_features(images):
    import torch

    from skanomaly.backbones import _as_numpy_state, _fold_batch_norms, load_backbone

    backbone = load_backbone("efficientnet_lite0")
    x = torch.from_numpy(images[:2]).permute(0, 3, 1, 2).contiguous()
    layers = ("blocks.2", "blocks.4")
    with torch.inference_mode():
        before = backbone.extract(x, layers)
        assert _fold_batch_norms(backbone)
        after = backbone.extract(x, layers)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.model.modules())
    for a, b in zip(after, before):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4 * float(b.abs().max()))
    # A file written before folding (the unfolded state, no flag) still loads.
    embedder = PatchEmbedder(image_size=64).fit()
    state = embedder.__getstate__()
    assert state.pop("_backbone_folded")
    state["_backbone_state"] = _as_numpy_state(load_backbone("efficientnet_lite0").model)
    old = PatchEmbedder.__new__(PatchEmbedder)
    old.__setstate__(state)
    np.testing.assert_allclose(old.transform(images), embedder.transform(images), rtol=1e-4, atol=1e-4)
