"""Trainable heads (flows, SimpleNet, distillation, reconstruction, DRAEM, DSR) on tiny data."""

import importlib.util
import pickle
import subprocess
import sys
import textwrap
import warnings

import joblib
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

from skanomaly import (
    anomaly_maps,
    make_cflow,
    make_draem,
    make_dsr,
    make_efficientad,
    make_fastflow,
    make_ganomaly,
    make_mambaad,
    make_reverse_distillation,
    make_simplenet,
    make_stfpm,
)
from skanomaly.detectors import (
    DistillationDetector,
    DRAEMDetector,
    DSRDetector,
    EfficientADDetector,
    FlowDetector,
    GANomalyDetector,
    SimpleNetDetector,
    StateSpaceDetector,
)
from skanomaly.detectors._flow import positional_encoding
from skanomaly.persistence import load_model, save_model
from skanomaly.preprocessing import ImagePreprocessor


def _grids(n=16, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    base = np.linspace(-1, 1, 8, dtype=np.float32)
    grids = base + 0.3 * rng.normal(size=(n, 4, 4, 8)).astype(np.float32)
    return grids + np.float32(shift)


@pytest.fixture(scope="module")
def pixels():
    rng = np.random.default_rng(0)
    images = rng.random((10, 32, 32, 3)) * 0.2 + 0.4
    return ImagePreprocessor(image_size=32).fit_transform(images)


def _quiet(estimator, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return estimator.fit(X)


GRID_HEADS = {
    "fastflow": lambda **kw: FlowDetector(**{"max_epochs": 3, **kw}),
    "cflow": lambda **kw: FlowDetector(kernel_size=1, positional_encoding=8, image_score_sigma=1.0,
                                       **{"max_epochs": 3, **kw}),
    "simplenet": lambda **kw: SimpleNetDetector(hidden_size=32, **{"max_epochs": 3, **kw}),
    "mambaad": lambda **kw: StateSpaceDetector(hidden_size=16, **{"max_epochs": 3, **kw}),
    "dsr": lambda **kw: DSRDetector(n_codes=16, code_size=8, width=8,
                                    **{"vq_epochs": 2, "max_epochs": 3, **kw}),
}
IMAGE_HEADS = {
    "stfpm": lambda **kw: DistillationDetector(method="stfpm", **{"max_epochs": 2, **kw}),
    "rd": lambda **kw: DistillationDetector(
        method="reverse_distillation", width=8, **{"max_epochs": 2, **kw}
    ),
    "ganomaly": lambda **kw: GANomalyDetector(width=8, latent_size=16, **{"max_epochs": 2, **kw}),
    "efficientad": lambda **kw: EfficientADDetector(
        width=4, **{"teacher_epochs": 2, "max_epochs": 2, **kw}
    ),
    "draem": lambda **kw: DRAEMDetector(width=8, **{"max_epochs": 2, **kw}),
}


def _head_and_data(name, pixels, **kwargs):
    if name in GRID_HEADS:
        return GRID_HEADS[name](**kwargs), _grids()
    return IMAGE_HEADS[name](**kwargs), pixels


ALL = [*GRID_HEADS, *IMAGE_HEADS]


@pytest.mark.parametrize("name", ALL)
def test_shapes_and_contract(name, pixels):
    head, X = _head_and_data(name, pixels, random_state=0)
    _quiet(head, X)
    scores = head.score_samples(X[:3])
    patches = head.score_patches(X[:3])
    assert scores.shape == (3,) and scores.dtype == np.float64
    assert patches.dtype == np.float32 and patches.ndim == 3 and len(patches) == 3
    # The image score is the worst patch (of the lightly blurred map, for the
    # heads with an image_score_sigma).
    sigma = head.get_params().get("image_score_sigma", 0.0)
    expected = gaussian_filter(patches.astype(np.float64), (0, sigma, sigma), mode="nearest")
    np.testing.assert_allclose(-scores, expected.reshape(3, -1).max(1), rtol=1e-6)
    assert set(np.unique(head.predict(X))) <= {-1, 1}
    np.testing.assert_allclose(head.decision_function(X[:3]), scores - head.offset_)
    assert head.n_iter_ == len(head.loss_curve_) >= 1
    assert isinstance(head.module_, torch.nn.Module)


@pytest.mark.parametrize("name", ALL)
def test_deterministic_with_a_seed(name, pixels):
    first, X = _head_and_data(name, pixels, random_state=3)
    second, _ = _head_and_data(name, pixels, random_state=3)
    other, _ = _head_and_data(name, pixels, random_state=4)
    a = _quiet(first, X).score_samples(X)
    b = _quiet(second, X).score_samples(X)
    c = _quiet(other, X).score_samples(X)
    np.testing.assert_array_equal(a, b)
    assert first.loss_curve_ == second.loss_curve_
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("name", ALL)
def test_joblib_round_trip_stores_state_dicts(name, pixels, tmp_path):
    head, X = _head_and_data(name, pixels, random_state=0)
    _quiet(head, X)
    state = head.__getstate__()
    assert "module_" not in state and "_module_state" in state
    assert all(isinstance(v, np.ndarray) for v in state["_module_state"].values())
    assert hasattr(head, "module_"), "pickling must not strip the live estimator"
    path = tmp_path / "head.joblib"
    joblib.dump(head, path)
    loaded = joblib.load(path)
    np.testing.assert_array_equal(loaded.score_samples(X), head.score_samples(X))
    np.testing.assert_array_equal(loaded.score_patches(X[:2]), head.score_patches(X[:2]))
    if importlib.util.find_spec("skops") is not None:  # the file that runs no code
        loaded = load_model(save_model(head, tmp_path / "head.skops"))
        np.testing.assert_array_equal(loaded.score_samples(X), head.score_samples(X))


def test_round_trip_in_a_fresh_process(tmp_path, pixels):
    head = _quiet(IMAGE_HEADS["stfpm"](random_state=0), pixels)
    joblib.dump(head, tmp_path / "m.joblib")
    np.save(tmp_path / "x.npy", pixels)
    np.save(tmp_path / "expected.npy", head.score_samples(pixels))
    # Same torch thread count as here: convolutions round differently with
    # another (and a test before this one may have changed it).
    code = textwrap.dedent(f"""
        import joblib, numpy as np, torch
        torch.set_num_threads({torch.get_num_threads()})
        head = joblib.load({str(tmp_path / 'm.joblib')!r})
        got = head.score_samples(np.load({str(tmp_path / 'x.npy')!r}))
        np.testing.assert_array_equal(got, np.load({str(tmp_path / 'expected.npy')!r}))
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", ALL)
def test_training_loss_goes_down(name, pixels):
    head, X = _head_and_data(name, pixels, random_state=0, max_epochs=6, validation_fraction=0)
    _quiet(head, X)
    assert head.loss_curve_[-1] < head.loss_curve_[0]
    assert head.validation_loss_curve_ == []


def test_flow_learns_the_normal_density():
    flow = _quiet(FlowDetector(max_epochs=40, random_state=0, validation_fraction=0), _grids(32))
    normal = flow.score_samples(_grids(8, seed=1))
    shifted = flow.score_samples(_grids(8, seed=1, shift=1.5))
    assert normal.min() > shifted.max()
    # A patch's score is its negative log-likelihood: after training, the mean
    # NLL per dimension of normal data is below a standard Gaussian's (1.42).
    assert flow.loss_curve_[-1] < 1.4


def test_logsigmoid_loss_trains_a_flow_that_separates_and_reports_its_own_loss():
    params = dict(max_epochs=40, random_state=0, validation_fraction=0)
    flow = _quiet(FlowDetector(loss="logsigmoid", **params), _grids(32))
    normal = flow.score_samples(_grids(8, seed=1))
    shifted = flow.score_samples(_grids(8, seed=1, shift=1.5))
    assert normal.min() > shifted.max()
    # softplus(u) of a patch's NLL per dimension u: positive, and above the
    # NLL loss of the same epoch (softplus(u) > u for every u).
    plain = _quiet(FlowDetector(**params), _grids(32))
    assert min(flow.loss_curve_) > 0
    assert flow.loss_curve_[0] > plain.loss_curve_[0]
    assert not np.allclose(flow.score_samples(_grids(8, seed=1)), plain.score_samples(_grids(8, seed=1)))


def test_map_stage_adds_that_stage_alone_to_the_map():
    X = _grids(16)
    joint = _quiet(FlowDetector(max_epochs=3, random_state=0), X)
    mapped = FlowDetector(max_epochs=3, random_state=0, map_stage=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mapped.fit(X, feature_groups=(3, 5))
    assert mapped.map_channels_ == (3, 8) and mapped.map_flow_.n_iter_ >= 1
    # The image score is the joint flow's, trained as without a map flow.
    np.testing.assert_array_equal(mapped.score_samples(X), joint.score_samples(X))
    # The map: one minus the mean of the two flows' likelihoods per dimension.
    stage = mapped.map_flow_.score_patches(X[..., 3:])
    expected = 1 - (np.exp(-joint.score_patches(X) / 8) + np.exp(-stage / 5)) / 2
    np.testing.assert_allclose(mapped.score_patches(X), expected, rtol=1e-5, atol=1e-6)
    # A change outside the stage's channels leaves its share as it was and
    # moves the map through the joint flow's share.
    moved = X.copy()
    moved[..., :3] += 2.0
    np.testing.assert_array_equal(mapped.map_flow_.score_patches(moved[..., 3:]), stage)
    assert not np.allclose(mapped.score_patches(moved), mapped.score_patches(X))
    # Pixel thresholds are calibrated on the map's own patch scores.
    assert np.isin(mapped.calibration_patch_scores_, mapped.score_patches(X)).all()


def test_latent_map_leaves_out_the_log_determinant():
    """map_score="latent": half the squared norm of the latent; the NLL map
    differs from it by minus the blocks' log-determinant (here from
    autograd's Jacobian of one patch's flow) and a constant."""
    import math

    X = _grids(16)
    params = dict(kernel_size=1, max_epochs=3, random_state=0)
    latent = _quiet(FlowDetector(map_score="latent", **params), X)
    nll = _quiet(FlowDetector(**params), X)
    np.testing.assert_array_equal(latent.score_samples(X), nll.score_samples(X))
    module = latent.module_

    def flow(v):  # one standardised patch through the coupling blocks
        z = v[None, :, None, None]
        for block in module.blocks:
            z, _ = block(z, None)
        return z[0, :, 0, 0]

    patch = X[:1, 1:2, 2:3]
    with torch.no_grad():
        v = (torch.from_numpy(patch[0, 0, 0]) - module.mean) / module.scale
        z = flow(v)
    np.testing.assert_allclose(latent.score_patches(patch)[0, 0, 0], 0.5 * float(z @ z), rtol=1e-5)
    log_det = float(torch.linalg.slogdet(torch.autograd.functional.jacobian(flow, v))[1])
    np.testing.assert_allclose(nll.score_patches(patch)[0, 0, 0]
                               - latent.score_patches(patch)[0, 0, 0],
                               -log_det + 4 * math.log(2 * math.pi), rtol=1e-4, atol=1e-4)
    # With a map stage, the joint flow's latent share is averaged as a
    # likelihood with the stage flow's NLL.
    mapped = FlowDetector(map_score="latent", map_stage=1, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mapped.fit(X, feature_groups=(3, 5))
    stage = mapped.map_flow_.score_patches(X[..., 3:])
    assert mapped.map_flow_.map_score == "nll"
    expected = 1 - (np.exp(-latent.score_patches(X) / 8) + np.exp(-stage / 5)) / 2
    np.testing.assert_allclose(mapped.score_patches(X), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("map_stage, groups, match", [
    (0, None, "feature_groups"),
    (0, (3, 4), "summing to the 8 features"),
    (0, (0, 8), "positive"),
    (2, (3, 5), "map_stage=2 names no stage"),
    (-1, (3, 5), "map_stage"),
])
def test_map_stage_without_the_right_groups_is_refused(map_stage, groups, match):
    flow = FlowDetector(max_epochs=1, map_stage=map_stage)
    with pytest.raises(ValueError, match=match):
        flow.fit(_grids(), feature_groups=groups)
    assert not hasattr(flow, "module_") and not hasattr(flow, "map_flow_")


def test_map_flow_continues_with_warm_start_and_a_failed_fit_leaves_nothing(monkeypatch):
    X = _grids(16)
    flow = FlowDetector(max_epochs=2, random_state=0, map_stage=0, warm_start=True,
                        validation_fraction=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flow.fit(X, feature_groups=(3, 5))
        first = flow.map_flow_.loss_curve_
        flow.fit(X, feature_groups=(3, 5))
    assert flow.map_flow_.loss_curve_[0] < first[0]  # continued, not restarted

    fresh = FlowDetector(max_epochs=2, random_state=0, map_stage=0)
    real_fit_normal = FlowDetector._fit_normal

    def fail_on_the_map_flow(self, X, fit_idx, rng):
        if X.shape[-1] == 3:
            raise FloatingPointError("the map's flow diverged")
        return real_fit_normal(self, X, fit_idx, rng)

    monkeypatch.setattr(FlowDetector, "_fit_normal", fail_on_the_map_flow)
    with pytest.raises(FloatingPointError, match="map's flow"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fresh.fit(X, feature_groups=(3, 5))
    assert not any(name.endswith("_") and not name.startswith("_") for name in vars(fresh))


def _bilinear(patch, shape):
    grids = torch.from_numpy(patch)[:, None]
    return torch.nn.functional.interpolate(grids, size=shape, mode="bilinear",
                                           align_corners=False)[:, 0].numpy()


def test_joint_flow_on_chosen_stages_of_a_pooled_grid():
    rng = np.random.default_rng(0)
    # A 6 x 7 grid: the last pooled column averages one column only.
    X = np.linspace(-1, 1, 8, dtype=np.float32) + rng.normal(size=(16, 6, 7, 8)).astype(np.float32)
    params = dict(max_epochs=3, random_state=0)
    pooled = FlowDetector(joint_stages=(2, 1), joint_pool=2, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pooled.fit(X, feature_groups=(3, 2, 3))
    assert pooled.joint_channels_ == [3, 4, 5, 6, 7] and pooled.n_features_in_ == 8
    # The same flow as one trained on those channels averaged over 2 x 2 cells.
    coarse = np.stack([np.stack([X[:, i:i + 2, j:j + 2, 3:].mean((1, 2)) for j in range(0, 7, 2)],
                                1) for i in range(0, 6, 2)], 1)
    assert coarse.shape == (16, 3, 4, 5)
    plain = _quiet(FlowDetector(**params), coarse)
    np.testing.assert_allclose(pooled.score_samples(X), plain.score_samples(coarse), rtol=1e-4)
    # Its map is that flow's, resized to the grid; the image score is the
    # largest coarse patch's.
    np.testing.assert_allclose(pooled.score_patches(X), _bilinear(plain.score_patches(coarse),
                               (6, 7)), rtol=1e-4, atol=1e-5)
    # With a map stage, the map averages the resized joint likelihood with
    # the stage flow's at the grid's own resolution.
    mapped = FlowDetector(joint_stages=(1, 2), joint_pool=2, map_stage=0, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mapped.fit(X, feature_groups=(3, 2, 3))
    np.testing.assert_array_equal(mapped.score_samples(X), pooled.score_samples(X))
    stage = mapped.map_flow_.score_patches(X[..., :3])
    assert stage.shape == (16, 6, 7)
    expected = 1 - (np.exp(-pooled.score_patches(X) / 5) + np.exp(-stage / 3)) / 2
    np.testing.assert_allclose(mapped.score_patches(X), expected, rtol=1e-5, atol=1e-6)
    # Channels outside the joint stages do not move the image score.
    moved = X.copy()
    moved[..., :3] += 5.0
    np.testing.assert_array_equal(mapped.score_samples(moved), mapped.score_samples(X))


@pytest.mark.parametrize("stages, groups, match", [
    ((1,), None, "joint_stages=\\(1,\\) needs the channels"),
    ((3,), (3, 5), "distinct stages among the 2"),
    ((0, 0), (3, 5), "distinct stages"),
    ((), (3, 5), "distinct stages"),
    ((0.5,), (3, 5), "distinct stages"),
])
def test_joint_stages_that_name_no_stages_are_refused(stages, groups, match):
    flow = FlowDetector(max_epochs=1, joint_stages=stages)
    with pytest.raises(ValueError, match=match):
        flow.fit(_grids(), feature_groups=groups)
    assert not hasattr(flow, "module_") and not hasattr(flow, "joint_channels_")


def _stride4_fastflow(**params):
    """FastFlow with a flow per stage as anomalib has: the joint one on strides
    8 and 16 (pooled to the stride-8 grid), the map's on stride 4."""
    return make_fastflow(**params).set_params(
        patchembedder__layers=(4, 8, 16), patchembedder__upsampling_tap=1,
        flowdetector__joint_stages=(1, 2), flowdetector__joint_pool=2)


@pytest.mark.parametrize("factory, groups, joint_channels, pooled", [
    (make_cflow, (40, 112), None, False),
    (make_fastflow, (40, 112), None, False),
    (_stride4_fastflow, (24, 40, 112), list(range(24, 176)), True),
], ids=["cflow", "fastflow", "fastflow_stride4"])
def test_flow_pipelines_hand_the_embedder_groups_to_the_head(factory, groups, joint_channels,
                                                             pooled, tmp_path):
    from sklearn.pipeline import make_pipeline

    from skanomaly import PatchEmbedder
    from skanomaly.evaluation import evaluate_pipeline

    rng = np.random.default_rng(0)
    train, test = rng.random((8, 64, 64, 3)), rng.random((2, 64, 64, 3))
    pipe = _quiet(factory(image_size=64, max_epochs=1, random_state=0), train)
    head = pipe[-1]
    stage = (0, groups[0])
    assert pipe[0].feature_groups_ == groups and head.map_channels_ == stage
    assert head.joint_channels_ == joint_channels
    features = pipe[0].transform(test)
    # The joint flow's NLL (the image score's) and half its latent's squared
    # norm, per patch of its own grid: FastFlow's map is drawn from the latter.
    scores = head._patch_scores(features)
    assert scores.shape[1:] == (2,) + tuple(np.array(features.shape[1:3]) // (2 if pooled else 1))
    joint = scores[:, 1 if head.map_score == "latent" else 0]
    n_joint = sum(groups) - (groups[0] if pooled else 0)
    likelihoods = (np.exp(-_bilinear(joint, features.shape[1:3]) / n_joint)
                   + np.exp(-head.map_flow_.score_patches(features[..., slice(*stage)])
                            / groups[0]))
    np.testing.assert_allclose(head.score_patches(features), 1 - likelihoods / 2,
                               rtol=1e-5, atol=1e-6)
    if pooled:
        # The image score is the joint flow's on strides 8 and 16, the very
        # flow make_fastflow trains without a map stage (on those two taps;
        # to float rounding, as the convolutions' memory layout may differ).
        alone = _quiet(make_fastflow(image_size=64, max_epochs=1, random_state=0, map_stage=None),
                       train)
        assert alone[0].feature_groups_ == groups[1:]
        np.testing.assert_allclose(alone.score_samples(test), pipe.score_samples(test), rtol=1e-6)
    # Scored and drawn the same after a safe save and load.
    saved = load_model(save_model(pipe, tmp_path / "flow.skops"))
    np.testing.assert_array_equal(saved.score_samples(test), pipe.score_samples(test))
    np.testing.assert_array_equal(anomaly_maps(saved, test), anomaly_maps(pipe, test))
    # evaluate_pipeline fits the head as pipe.fit does.
    result = evaluate_pipeline(factory(image_size=64, max_epochs=1, random_state=0),
                               list(train), list(test), np.array([1, -1]))
    assert result["pipeline"][-1].map_channels_ == stage
    # A plain Pipeline does not know the groups: a clear error, unless given.
    plain = make_pipeline(PatchEmbedder(image_size=64), FlowDetector(max_epochs=1, map_stage=0))
    with pytest.raises(ValueError, match="feature_groups"):
        plain.fit(train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain.fit(train, flowdetector__feature_groups=(40, 112))
    assert plain[-1].map_channels_ == (0, 40)


def test_simplenet_flags_shifted_patches():
    head = _quiet(SimpleNetDetector(max_epochs=40, learning_rate=2e-3, hidden_size=64, batch_size=4,
                                    random_state=0, validation_fraction=0), _grids(32))
    test = _grids(4, seed=2)
    test[:, 1, 2] += 3.0
    patches = head.score_patches(test)
    assert (patches.reshape(4, -1).argmax(1) == 1 * 4 + 2).all()


def test_positional_encoding_distinguishes_positions():
    enc = positional_encoding(16, 4, 6)
    assert enc.shape == (16, 4, 6)
    flat = enc.reshape(16, -1).T
    assert len(np.unique(flat.numpy().round(5), axis=0)) == 24
    with pytest.raises(ValueError, match="multiple of 4"):
        positional_encoding(6, 2, 2)


def test_early_stopping_keeps_the_best_epoch():
    # Few images and many epochs: the validation loss stops improving.
    flow = FlowDetector(max_epochs=200, n_iter_no_change=3, learning_rate=1e-2, random_state=0,
                        validation_fraction=0.3)
    _quiet(flow, _grids(12))
    assert flow.n_iter_ < 200
    curve = flow.validation_loss_curve_
    assert len(curve) == flow.n_iter_
    assert int(np.argmin(curve)) == flow.n_iter_ - 1 - 3


def test_weight_average_is_what_is_validated_and_kept():
    X = _grids(20)

    def fit(**kwargs):
        params = {"max_epochs": 4, "learning_rate": 1e-2, "random_state": 0, **kwargs}
        return _quiet(FlowDetector(**params), X)

    def distance(a, b):
        a, b = a.module_.state_dict(), b.module_.state_dict()
        return max(float((a[k] - b[k]).abs().max()) for k in a)

    start = fit(learning_rate=1e-12, validation_fraction=0)
    live = fit(validation_fraction=0)
    assert distance(live, start) > 1e-2
    # An average over a very long half-life stays at the starting weights,
    # one over a very short one follows the live weights.
    assert distance(fit(validation_fraction=0, ema_half_life=1e6), start) < 1e-5
    assert distance(fit(validation_fraction=0, ema_half_life=1e-4), live) < 1e-5
    # Early stopping validates the averaged weights, not the live ones.
    moving = fit(validation_fraction=0.3, n_iter_no_change=10)
    frozen = fit(validation_fraction=0.3, n_iter_no_change=10, ema_half_life=1e6)
    assert np.ptp(moving.validation_loss_curve_) > 1e-2
    assert np.ptp(frozen.validation_loss_curve_) < 1e-5
    assert fit(ema_half_life=1.0).score_samples(X).tolist() == fit(ema_half_life=1.0).score_samples(X).tolist()


def test_convergence_warning_when_still_improving():
    with pytest.warns(ConvergenceWarning, match="max_epochs=2"):
        FlowDetector(max_epochs=2, random_state=0, calibration_size=2).fit(_grids(30))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        FlowDetector(max_epochs=2, n_iter_no_change=None, calibration_size=2).fit(_grids(30))


def test_warm_start_continues_training():
    X = _grids(20)
    cold = _quiet(FlowDetector(max_epochs=4, random_state=0, validation_fraction=0), X)
    warm = _quiet(FlowDetector(max_epochs=2, random_state=0, validation_fraction=0, warm_start=True), X)
    first = warm.loss_curve_
    _quiet(warm, X)
    assert warm.loss_curve_[0] < first[0]
    assert warm.loss_curve_[-1] == pytest.approx(cold.loss_curve_[-1], rel=0.2)
    before = warm.score_samples(X)
    with pytest.raises(ValueError, match="warm_start"):
        warm.fit(np.zeros((20, 4, 4, 6), dtype=np.float32))
    np.testing.assert_array_equal(warm.score_samples(X), before)


def test_progress_bar_shows_the_loss(capsys):
    _quiet(FlowDetector(max_epochs=2, verbose=1, random_state=0), _grids())
    err = capsys.readouterr().err
    assert "FlowDetector" in err and "loss=" in err


def test_non_finite_loss_is_a_clear_error(monkeypatch):
    def nan_loss(self, module, batch, generator):
        return module(batch).mean() * float("nan")

    monkeypatch.setattr(FlowDetector, "_loss", nan_loss)
    flow = FlowDetector(max_epochs=2, random_state=0)
    with pytest.raises(FloatingPointError, match="learning_rate"):
        flow.fit(_grids())
    assert not hasattr(flow, "module_") and not hasattr(flow, "offset_")


@pytest.mark.parametrize(
    "head, X, match",
    [
        (FlowDetector(kernel_size=2), _grids(), "odd"),
        (FlowDetector(positional_encoding=6), _grids(), "multiple of 4"),
        (FlowDetector(), np.zeros((6, 2, 2, 1), dtype=np.float32), "at least 2 features"),
        (FlowDetector(learning_rate=-1.0), _grids(), "learning_rate"),
        (FlowDetector(image_score_sigma=-0.5), _grids(), "image_score_sigma"),
        (FlowDetector(ema_half_life=0), _grids(), "ema_half_life"),
        (SimpleNetDetector(noise_std=0), _grids(), "noise_std"),
        (StateSpaceDetector(state_size=0), _grids(), "state_size"),
        (StateSpaceDetector(image_score_sigma=-1), _grids(), "image_score_sigma"),
        (DistillationDetector(), np.zeros((6, 20), dtype=np.float32), "ImagePreprocessor"),
        (DistillationDetector(), np.zeros((6, 8, 8, 152), dtype=np.float32), "ImagePreprocessor"),
        (DistillationDetector(), np.zeros((6, 16, 16, 3), dtype=np.float32), "at least 32"),
        (DistillationDetector(layers=("nope",)), np.zeros((6, 32, 32, 3), dtype=np.float32), "nope"),
        (DistillationDetector(method="distil"), np.zeros((6, 32, 32, 3), dtype=np.float32), "method"),
        (FlowDetector(device="tpu"), _grids(), "device"),
        (GANomalyDetector(), np.zeros((6, 8, 8, 152), dtype=np.float32), "ImagePreprocessor"),
        (EfficientADDetector(), np.zeros((6, 8, 8, 152), dtype=np.float32), "ImagePreprocessor"),
        (EfficientADDetector(), np.zeros((6, 16, 16, 3), dtype=np.float32), "at least 32"),
        (EfficientADDetector(teacher_epochs=0), np.zeros((6, 32, 32, 3), dtype=np.float32),
         "teacher_epochs"),
        (GANomalyDetector(), np.zeros((6, 48, 48, 3), dtype=np.float32), "power of two"),
        (GANomalyDetector(), np.zeros((6, 32, 64, 3), dtype=np.float32), "square"),
        (GANomalyDetector(), np.zeros((6, 8, 8, 3), dtype=np.float32), "at least 16"),
        (GANomalyDetector(latent_size=0), np.zeros((6, 32, 32, 3), dtype=np.float32), "latent_size"),
        (DRAEMDetector(), np.zeros((6, 8, 8, 152), dtype=np.float32), "ImagePreprocessor"),
        (DRAEMDetector(), np.zeros((6, 16, 16, 3), dtype=np.float32), "at least 32"),
        (DRAEMDetector(image_score_sigma=-1), np.zeros((6, 32, 32, 3), dtype=np.float32),
         "image_score_sigma"),
        (DSRDetector(n_codes=1), _grids(), "n_codes"),
        (DSRDetector(vq_epochs=0), _grids(), "vq_epochs"),
    ],
)
def test_bad_input_and_parameters(head, X, match):
    with pytest.raises(ValueError, match=match):
        head.fit(X)
    assert not hasattr(head, "module_")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_a_gpu_is_refused():
    with pytest.raises(ValueError, match="CUDA is not available"):
        FlowDetector(device="cuda").fit(_grids())


def test_scoring_wrong_feature_count_is_refused():
    flow = _quiet(FlowDetector(max_epochs=1, random_state=0), _grids())
    with pytest.raises(ValueError, match="8 features"):
        flow.score_samples(np.zeros((2, 4, 4, 5), dtype=np.float32))


def test_teacher_stays_frozen(pixels):
    head = _quiet(IMAGE_HEADS["stfpm"](random_state=0), pixels)
    fresh = _quiet(IMAGE_HEADS["stfpm"](random_state=0, max_epochs=1), pixels)
    for (name, a), (_, b) in zip(head.module_.teacher.state_dict().items(),
                                 fresh.module_.teacher.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    assert not any(p.requires_grad for p in head.module_.teacher.parameters())
    # The student did train.
    assert any(not torch.equal(a, b) for a, b in zip(head.module_.student.state_dict().values(),
                                                     fresh.module_.student.state_dict().values()))


@pytest.mark.parametrize(
    "factory, step",
    [
        (make_fastflow, "flowdetector"),
        (make_cflow, "flowdetector"),
        (make_simplenet, "simplenetdetector"),
        (make_mambaad, "statespacedetector"),
        (make_efficientad, "efficientaddetector"),
        (make_draem, "draemdetector"),
        (make_dsr, "dsrdetector"),
        (make_stfpm, "distillationdetector"),
        (make_reverse_distillation, "distillationdetector"),
    ],
    ids=lambda x: getattr(x, "__name__", x),
)
def test_factories_make_pipelines_with_maps(factory, step, tmp_path):
    rng = np.random.default_rng(0)
    pipe = factory(image_size=64, max_epochs=1, random_state=0)
    assert pipe.steps[-1][0] == step
    _quiet(pipe, rng.random((8, 64, 64, 3)))
    test = rng.random((2, 48, 56, 3))
    maps = anomaly_maps(pipe, test)
    assert maps.shape == (2, 48, 56)
    joblib.dump(pipe, tmp_path / "p.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "p.joblib").score_samples(test),
                                  pipe.score_samples(test))


def test_image_preprocessor_normalises_like_the_backbone():
    images = np.zeros((1, 20, 20, 3), dtype=np.uint8)
    pre = ImagePreprocessor("resnet18", image_size=(16, 24)).fit()
    out = pre.transform(images)
    assert out.shape == (1, 16, 24, 3)
    np.testing.assert_allclose(out[0, 0, 0], -np.array([0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225],
                               rtol=1e-5)
    with pytest.raises(ValueError, match="image_size"):
        ImagePreprocessor(image_size=8).fit()
    with pytest.raises(ValueError, match="single path"):
        pre.transform("a.png")
    pickle.loads(pickle.dumps(pre))


# Trained networks score in batches whose float32 rounding depends on the
# batch size (about 1e-7 relative), so scoring a subset is not bit-identical.
_SUBSET = {"check_methods_subset_invariance": "float32 rounding differs with the batch size"}


@parametrize_with_checks(
    [FlowDetector(max_epochs=2, random_state=0),
     SimpleNetDetector(max_epochs=2, hidden_size=16, random_state=0),
     StateSpaceDetector(max_epochs=2, hidden_size=8, state_size=4, random_state=0),
     DSRDetector(n_codes=64, code_size=4, width=4, vq_epochs=1, max_epochs=2, random_state=0)],
    expected_failed_checks=lambda estimator: _SUBSET,
)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


@pytest.fixture(scope="module")
def synthetic():
    from skanomaly.datasets import make_synthetic

    return make_synthetic(36, 12, image_size=64, random_state=0)


@pytest.mark.parametrize(
    "factory, params",
    [(make_fastflow, {}), (make_cflow, {}),
     # 27 small images make 3 steps per epoch at the default batch size; the
     # discriminator needs more steps than that.
     (make_simplenet, {"batch_size": 2, "max_epochs": 20}),
     (make_stfpm, {}), (make_reverse_distillation, {}), (make_mambaad, {}),
     (make_efficientad, {}),
     # DRAEM likewise; 10 epochs separate at every seed 0-5 (pixel AUROC 0.81-0.96).
     (make_draem, {"batch_size": 2})],
    ids=lambda x: getattr(x, "__name__", None),
)
def test_factories_separate_synthetic_defects(factory, params, synthetic):
    from sklearn.metrics import roc_auc_score

    params = {"max_epochs": 10, **params}
    pipe = _quiet(factory(image_size=64, random_state=0, **params), synthetic.images[:30])
    test, y = synthetic.images[30:], synthetic.target[30:]
    assert roc_auc_score(y, pipe.decision_function(test)) >= 0.85
    maps = anomaly_maps(pipe, test)
    assert roc_auc_score(synthetic.masks[30:].ravel(), maps.ravel()) >= 0.8


def test_distillation_image_score_needs_neighbouring_patches_to_agree(pixels, monkeypatch):
    head = _quiet(IMAGE_HEADS["rd"](random_state=0, image_score_sigma=1.0), pixels)
    spike = np.zeros((1, 16, 16), np.float32)
    spike[0, 8, 8] = 1.0  # one noisy patch
    blob = np.zeros((1, 16, 16), np.float32)
    blob[0, 7:10, 7:10] = 0.8  # a small defect, lower but spread over 3 x 3 patches
    monkeypatch.setattr(head, "_patch_scores", lambda X: np.concatenate([spike, blob])[: len(X)])
    blurred = -head.score_samples(pixels[:2])
    assert blurred[1] > blurred[0]
    head.set_params(image_score_sigma=0)
    np.testing.assert_allclose(-head.score_samples(pixels[:2]), [1.0, 0.8], rtol=1e-6)


def test_state_space_prediction_of_a_patch_never_sees_that_patch():
    # The blind spot that keeps the model from copying its input: changing
    # one patch moves every prediction but its own.
    head = _quiet(GRID_HEADS["mambaad"](random_state=0), _grids())
    module = head.module_
    grids = torch.from_numpy(_grids(n=2, seed=1)).permute(0, 3, 1, 2)
    changed = grids.clone()
    changed[:, :, 1, 2] += 10.0
    with torch.no_grad():
        before = module.predict(module.standardise(grids), 4, 4)
        after = module.predict(module.standardise(changed), 4, 4)
    moved = (before - after).abs().amax(-1).reshape(2, 4, 4)
    assert moved[:, 1, 2].max() < 1e-4
    others = np.delete(moved.numpy().reshape(2, -1), 1 * 4 + 2, axis=1)
    assert others.min() > 1e-3


def test_state_space_flags_a_patch_its_surroundings_do_not_predict():
    grids = _grids(n=24)
    head = _quiet(StateSpaceDetector(hidden_size=16, max_epochs=30, validation_fraction=0,
                                     random_state=0), grids)
    test = _grids(n=4, seed=5)
    test[2:, 1, 1] += 3.0
    patches = head.score_patches(test)
    assert patches[2:, 1, 1].min() > patches[:2].max()


def test_ganomaly_factory_scores_images_and_refuses_maps(tmp_path):
    rng = np.random.default_rng(0)
    pipe = _quiet(make_ganomaly(image_size=32, max_epochs=1, random_state=0),
                  rng.random((8, 40, 40, 3)))
    test = rng.random((2, 40, 40, 3))
    assert pipe[-1].score_patches(pipe[0].transform(test)).shape == (2, 1, 1)
    with pytest.raises(ValueError, match="scores whole images"):
        anomaly_maps(pipe, test)
    joblib.dump(pipe, tmp_path / "p.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "p.joblib").score_samples(test),
                                  pipe.score_samples(test))


def test_ganomaly_ranks_images_unlike_the_training_ones_higher(synthetic):
    from sklearn.metrics import roc_auc_score

    pipe = _quiet(make_ganomaly(image_size=32, max_epochs=30, batch_size=8, random_state=0),
                  synthetic.images[:30])
    test, y = synthetic.images[30:], synthetic.target[30:]
    assert roc_auc_score(y, pipe.decision_function(test)) >= 0.85
    # Evaluation measures no pixel metrics for a head without maps.
    from skanomaly.evaluation import evaluate_pipeline

    result = evaluate_pipeline(pipe, None, test, y, test_masks=list(synthetic.masks[30:]), fit=False)
    assert result["image_auroc"] >= 0.85 and np.isnan(result["pixel_auroc"])


def test_ganomaly_generator_term_never_trains_the_discriminator(pixels, monkeypatch):
    # The feature-matching term goes through a frozen copy of the
    # discriminator: with the discriminator's own loss zeroed, a training
    # step's loss gives its weights a zero gradient, and the generator's a
    # non-zero one.
    from skanomaly.detectors import _ganomaly

    head = _quiet(IMAGE_HEADS["ganomaly"](random_state=0, max_epochs=1), pixels)
    monkeypatch.setattr(_ganomaly.F, "binary_cross_entropy_with_logits",
                        lambda logit, target: (0 * logit).sum())
    monkeypatch.setattr(_ganomaly, "_DISCRIMINATOR_RESET", -1.0)
    module = head.module_.train()
    x = torch.from_numpy(np.ascontiguousarray(pixels[:4])).permute(0, 3, 1, 2)
    module.zero_grad()
    module.loss(x).backward()
    assert all(p.grad is None or not p.grad.any() for p in module.disc_features.parameters())
    assert any(p.grad is not None and p.grad.any() for p in module.decoder.parameters())


def test_efficientad_teacher_is_distilled_then_frozen(pixels):
    head = _quiet(IMAGE_HEADS["efficientad"](random_state=0, teacher_epochs=4), pixels)
    # Distillation learned something: the loss fell.
    assert head.teacher_loss_curve_[-1] < head.teacher_loss_curve_[0]
    teacher = {k: v.clone() for k, v in head.module_.teacher.state_dict().items()}
    head.set_params(warm_start=True, max_epochs=2)
    _quiet(head, pixels)  # the student and autoencoder train on; the teacher does not
    for name, value in head.module_.teacher.state_dict().items():
        torch.testing.assert_close(value, teacher[name], msg=name)
    assert not any(p.requires_grad for p in head.module_.teacher.parameters())


def test_perlin_masks_mark_about_half_the_images():
    from skanomaly.detectors._synthetic import _perlin_masks

    generator = torch.Generator().manual_seed(0)
    masks = _perlin_masks(200, 32, 32, generator, "cpu")
    assert masks.shape == (200, 1, 32, 32)
    assert set(torch.unique(masks).tolist()) <= {0.0, 1.0}
    marked = (masks.flatten(1).amax(1) > 0).float().mean()
    assert 0.3 < marked < 0.6  # half are drawn; some draws leave no noise above 0.5
    again = _perlin_masks(200, 32, 32, torch.Generator().manual_seed(0), "cpu")
    assert torch.equal(masks, again)


def test_painted_anomalies_stay_inside_their_masks_and_grey_stays_grey():
    from skanomaly.detectors._synthetic import _paint_anomalies

    generator = torch.Generator().manual_seed(1)
    colour = torch.randn(16, 3, 32, 32)
    painted, masks = _paint_anomalies(colour, generator)
    outside = masks.expand_as(colour) == 0
    assert torch.equal(painted[outside], colour[outside])
    assert (painted != colour).any()
    grey = torch.randn(16, 1, 32, 32).expand(16, 3, 32, 32)
    painted, masks = _paint_anomalies(grey, generator)
    assert masks.any()
    assert torch.equal(painted[:, 0], painted[:, 1]) and torch.equal(painted[:, 1], painted[:, 2])


def test_textures_drawn_only_where_needed_match_the_full_draw():
    from skanomaly.detectors._synthetic import _textures

    needed = torch.tensor([True, False, True, False, False])
    full = _textures(5, 24, 24, torch.Generator().manual_seed(3), "cpu")
    some = _textures(5, 24, 24, torch.Generator().manual_seed(3), "cpu", needed)
    torch.testing.assert_close(some[needed], full[needed])
    assert torch.equal(some[~needed], torch.zeros_like(some[~needed]))
    # The generator advances the same, so what is drawn next is unchanged.
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    _textures(5, 24, 24, g1, "cpu")
    _textures(5, 24, 24, g2, "cpu", needed)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


def test_draem_cached_clean_features_are_the_backbone_features_and_leave_no_trace(pixels):
    head = _quiet(IMAGE_HEADS["draem"](random_state=0, max_epochs=1), pixels)
    assert not hasattr(head, "_clean_features")  # kept for the fit only
    module = head.module_
    head._clean_features = {}
    idx = np.array([0, 2])
    first, clean = head._training_batch(module, pixels, idx)
    again, cached = head._training_batch(module, pixels, idx)  # from the cache
    with torch.no_grad():
        expected = module.features(first)
    torch.testing.assert_close(clean, expected, rtol=2e-3, atol=2e-3)
    assert torch.equal(cached, clean) and torch.equal(again, first)
    assert sorted(head._clean_features) == [0, 2]


def test_draem_keeps_the_backbone_frozen_and_learns_its_networks(pixels):
    from skanomaly.backbones import load_backbone

    head = _quiet(IMAGE_HEADS["draem"](random_state=0, max_epochs=3), pixels)
    loaded = load_backbone("efficientnet_lite0").model.state_dict()
    for name, value in head.module_.encoder.state_dict().items():
        torch.testing.assert_close(value, loaded[name], msg=name)
    assert not any(p.requires_grad for p in head.module_.encoder.parameters())
    assert head.loss_curve_[-1] < head.loss_curve_[0]


def test_dsr_quantised_model_is_fitted_first_then_frozen():
    head = _quiet(GRID_HEADS["dsr"](random_state=0, vq_epochs=4), _grids())
    assert head.vq_loss_curve_[-1] < head.vq_loss_curve_[0]
    module = head.module_
    frozen = {k: v.clone() for k, v in module.state_dict().items()
              if k.startswith(("encoder", "codebook", "general_decoder"))}
    head.set_params(warm_start=True, max_epochs=2)
    _quiet(head, _grids())
    for name, value in head.module_.state_dict().items():
        if name in frozen:
            torch.testing.assert_close(value, frozen[name], msg=name)
    # Every cell is replaced by its nearest code.
    z = head._batch_tensor(module, _grids(), np.arange(2))
    with torch.no_grad():
        e = module.encoder(z)
        codes, idx = module.quantise(e)
    flat = e.permute(0, 2, 3, 1).reshape(-1, e.shape[1])
    expected = torch.cdist(flat, module.codebook).argmin(1)
    assert torch.equal(idx.flatten(), expected)


def test_dsr_factory_separates_synthetic_defects(synthetic):
    # Image level only: on these 64 px images DSR's grid is 8 x 8 cells and
    # its maps are weak (pixel AUROC 0.42-0.63 at seeds 0-2, against 0.954 on
    # bottle at 256 px), so they are not held to the 0.8 of the other heads.
    # 20 epochs: at 10, one seed in five (0) was still at 0.625.
    from sklearn.metrics import roc_auc_score

    pipe = _quiet(make_dsr(image_size=64, max_epochs=20, random_state=0), synthetic.images[:30])
    test, y = synthetic.images[30:], synthetic.target[30:]
    assert roc_auc_score(y, pipe.decision_function(test)) >= 0.85
