import numpy as np
import pytest
from scipy.spatial.distance import mahalanobis
from sklearn.decomposition import PCA
from sklearn.neighbors import KernelDensity
from sklearn.utils.estimator_checks import parametrize_with_checks

from skanomaly import GaussianDetector, KDEDetector


@parametrize_with_checks(
    [
        GaussianDetector(),
        GaussianDetector(n_components=0.9, score_type="nll"),
        GaussianDetector(n_components=2, score_type="reconstruction"),
        KDEDetector(),
        KDEDetector(whiten=False),
    ],
    # Whitened, the KDE's kernels are narrow enough that each training sample's
    # own kernel lifts it above every held-out one: as for KNNDetector, a
    # novelty detector flags none of its training samples.
    expected_failed_checks=lambda est: (
        {"check_outliers_train": "novelty detector: training samples are not flagged"}
        if isinstance(est, KDEDetector) and est.whiten else {}),
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _fit_part(det, X):
    """The samples the head's model holds: all of them when the calibration
    samples join it, else the calibration split's complement."""
    from sklearn.utils import check_random_state

    if getattr(det, "calibration_in_model", False) or det._cross_fits():
        return X  # cross-fitted: the final model learns from every sample
    fit_idx, _ = det._calibration_split(len(X), check_random_state(det.random_state))
    return X[fit_idx]


@pytest.mark.parametrize("calibration_in_model", [True, False])
@pytest.mark.parametrize("offset", [0.0, 1e3])  # far from 0: the moments must not cancel
@pytest.mark.parametrize("position_chunk", [None, 4])  # None: the default, one block here
def test_per_position_mahalanobis_matches_scipy(calibration_in_model, offset, position_chunk,
                                               monkeypatch):
    if position_chunk is not None:
        monkeypatch.setattr("skanomaly.detectors._gaussian._POSITION_CHUNK", position_chunk)
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(40, 2, 3, 4)) + offset).astype(np.float32)
    det = GaussianDetector(regularization=0.01, calibration_in_model=calibration_in_model,
                           random_state=0).fit(X)
    part = _fit_part(det, X).astype(np.float64)
    test = (rng.normal(size=(2, 2, 3, 4)) + offset).astype(np.float32)
    got = det.score_patches(test)
    for i, j in [(0, 0), (1, 1), (1, 2)]:
        feats = part[:, i, j]
        cov = np.cov(feats, rowvar=False) + 0.01 * np.eye(4)
        for k in range(2):
            expected = mahalanobis(test[k, i, j], feats.mean(0), np.linalg.inv(cov))
            assert got[k, i, j] == pytest.approx(expected, rel=1e-4)
    np.testing.assert_allclose(-det.score_samples(test), got.reshape(2, -1).max(1), rtol=1e-5)


@pytest.mark.parametrize("calibration_in_model", [True, False])
def test_dfm_scores_match_their_definitions(calibration_in_model):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(120, 6)) @ rng.normal(size=(6, 6))
    test = rng.normal(size=(5, 6))
    fre = GaussianDetector(n_components=3, score_type="reconstruction",
                           calibration_in_model=calibration_in_model, random_state=0).fit(X)
    pca = PCA(3, svd_solver="full").fit(_fit_part(fre, X))
    expected = ((test - pca.inverse_transform(pca.transform(test))) ** 2).sum(1)
    np.testing.assert_allclose(-fre.score_samples(test), expected, rtol=1e-6)
    nll = GaussianDetector(n_components=3, score_type="nll", regularization=0,
                           calibration_in_model=calibration_in_model, random_state=0).fit(X)
    z = pca.transform(test)
    var = np.var(pca.transform(_fit_part(nll, X)), axis=0, ddof=1)
    expected = 0.5 * ((z ** 2 / var).sum(1) + np.log(var).sum() + 3 * np.log(2 * np.pi))
    np.testing.assert_allclose(-nll.score_samples(test), expected, rtol=1e-5)


@pytest.mark.parametrize("whiten", [True, False])
@pytest.mark.parametrize("calibration_in_model", [True, False])
def test_kde_matches_sklearn_on_whitened_or_scaled_pca(whiten, calibration_in_model):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(100, 8)) * np.arange(1, 9)  # unequal variances
    det = KDEDetector(n_components=4, whiten=whiten, calibration_in_model=calibration_in_model,
                      random_state=0).fit(X)
    part = _fit_part(det, X)
    pca = PCA(4, whiten=whiten, svd_solver="full").fit(part)
    z = pca.transform(part)
    scale = 1.0 if whiten else np.linalg.norm(z, axis=1).max()
    kde = KernelDensity(bandwidth="scott").fit(z / scale)
    test = rng.normal(size=(4, 8))
    np.testing.assert_allclose(
        det.score_samples(test), kde.score_samples(pca.transform(test) / scale), rtol=1e-6
    )
    if whiten:  # unit variance per component: the kernel follows the data's covariance
        np.testing.assert_allclose(z.std(axis=0, ddof=1), 1.0, rtol=1e-6)


def test_density_heads_refuse_what_they_cannot_model():
    grids = np.random.default_rng(0).normal(size=(10, 2, 2, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="one vector per image"):
        KDEDetector().fit(grids)
    with pytest.raises(ValueError, match="needs n_components"):
        GaussianDetector(score_type="reconstruction").fit(np.zeros((10, 3)) + np.arange(10)[:, None])
    with pytest.raises(ValueError, match="needs n_components"):
        GaussianDetector(score_type="reconstruction").fit(grids)
    det = KDEDetector(random_state=0).fit(np.random.default_rng(0).normal(size=(20, 3)))
    with pytest.raises(ValueError, match="score_patches needs 4D"):
        det.score_patches(np.zeros((2, 3)))


def test_dfm_on_grids_scores_each_cell_and_the_image_as_on_vectors():
    rng = np.random.default_rng(3)
    mixing = rng.normal(size=(24, 24))
    X = (rng.normal(size=(150, 24)) @ mixing).astype(np.float32)
    test = (rng.normal(size=(6, 24)) @ mixing).astype(np.float32)
    test[0, 19:22] += 25.0  # a defect in the last cell of a 2 x 2 grid of 6 features
    grids, test_grids = X.reshape(150, 2, 2, 6), test.reshape(6, 2, 2, 6)
    for score_type in ("reconstruction", "nll"):
        flat = GaussianDetector(n_components=5, score_type=score_type, random_state=0).fit(X)
        grid = GaussianDetector(n_components=5, score_type=score_type, random_state=0).fit(grids)
        # One PCA of the whole grid: the image scores are the vectors' own.
        np.testing.assert_allclose(grid.score_samples(test_grids), flat.score_samples(test),
                                   rtol=1e-5)
        scores, cells = grid.score_samples_and_patches(test_grids)
        np.testing.assert_array_equal(scores, grid.score_samples(test_grids))
        if score_type == "nll":  # no per-cell share: a one-cell map
            assert cells.shape == (6, 1, 1)
            continue
        # Each cell's share of the reconstruction error, summing to the image's.
        assert cells.shape == (6, 2, 2)
        np.testing.assert_allclose(cells.reshape(6, -1).sum(1), -scores, rtol=1e-5)
        pca = grid.pca_
        residual = (test - pca.inverse_transform(pca.transform(test))) ** 2
        np.testing.assert_allclose(cells.reshape(6, 4), residual.reshape(6, 4, 6).sum(2),
                                   rtol=1e-4)
        assert np.unravel_index(cells[0].argmax(), (2, 2)) == (1, 1)
    with pytest.raises(ValueError, match="fitted on 2 x 2 grids"):
        grid.score_samples(test.reshape(6, 1, 4, 6))


def test_kde_caps_fractional_calibration_but_gaussian_does_not():
    X = np.random.default_rng(0).normal(size=(1500, 4))
    assert len(KDEDetector(random_state=0).fit(X).calibration_scores_) == 100
    assert len(KDEDetector(calibration_size=0.1, random_state=0).fit(X).calibration_scores_) == 100
    # Cross-fitted, every sample scores; held out, 10% of them.
    assert len(GaussianDetector(random_state=0).fit(X).calibration_scores_) == 1500
    assert len(GaussianDetector(calibration_size=0.1, random_state=0)
               .fit(X).calibration_scores_) == 150


@pytest.mark.parametrize("n_components", [None, 3])
def test_calibration_samples_join_the_model_after_setting_the_threshold(n_components):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(60, 2, 2, 3)).astype(np.float32)
    params = dict(n_components=n_components, calibration_size=0.1, random_state=0)
    if n_components is not None:
        params["score_type"] = "reconstruction"
    joined = GaussianDetector(**params).fit(X)
    held_out = GaussianDetector(calibration_in_model=False, **params).fit(X)
    # The threshold comes from samples the model had not seen, either way ...
    np.testing.assert_array_equal(joined.calibration_scores_, held_out.calibration_scores_)
    assert joined.offset_ == held_out.offset_
    # ... and the model then holds every sample: the mean is the whole set's.
    if n_components is None:
        np.testing.assert_allclose(joined.mean_, X.mean(0), rtol=1e-5, atol=1e-6)
        assert not np.allclose(held_out.mean_, X.mean(0), rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_allclose(joined.pca_.mean_, X.reshape(60, -1).mean(0), atol=1e-6)
    assert not hasattr(joined, "_sums")


def test_kde_calibration_samples_join_the_density_after_the_threshold():
    X = np.random.default_rng(6).normal(size=(80, 5))
    params = dict(n_components=3, calibration_size=0.1, random_state=0)
    joined = KDEDetector(**params).fit(X)
    held_out = KDEDetector(calibration_in_model=False, **params).fit(X)
    np.testing.assert_array_equal(joined.calibration_scores_, held_out.calibration_scores_)
    assert joined.offset_ == held_out.offset_
    assert joined.kde_.tree_.data.shape[0] == 80 and held_out.kde_.tree_.data.shape[0] == 72


def test_integer_n_components_on_grids_is_capped_by_the_whole_grid_width():
    X = np.random.default_rng(7).normal(size=(40, 2, 2, 3)).astype(np.float32)
    det = GaussianDetector(n_components=10, score_type="reconstruction", random_state=0).fit(X)
    assert det.pca_.n_components_ == 10  # of 2 x 2 x 3 = 12, not capped at 3
    assert GaussianDetector(n_components=50, random_state=0).fit(X).pca_.n_components_ == 12
