import numpy as np
import pytest
from scipy.spatial.distance import cdist
from scipy.special import softmax
from sklearn.utils.estimator_checks import parametrize_with_checks

from skanomaly import KNNDetector
from skanomaly.detectors import conformal_offset


# check_outliers_train asks that predict flags some *training* samples. A
# novelty detector whose bank covers its training set well (large
# coreset_ratio) rightly flags none, so the checks run at the defaults.
@parametrize_with_checks([KNNDetector(), KNNDetector(n_neighbors=1)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _grids(n, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 4, 5, 6)) + shift).astype(np.float32)


def test_patch_scores_are_nearest_bank_distances():
    X = _grids(10)
    det = KNNDetector(coreset_ratio=0.5, random_state=0).fit(X)
    test = _grids(3, seed=1)
    expected = cdist(test.reshape(-1, 6), det.memory_bank_).min(1).reshape(3, 4, 5)
    np.testing.assert_allclose(det.score_patches(test), expected, rtol=1e-4, atol=1e-4)


def test_image_score_is_reweighted_worst_patch():
    X = _grids(12)
    det = KNNDetector(coreset_ratio=0.3, n_neighbors=4, random_state=0).fit(X)
    test = _grids(2, seed=5)
    bank = det.memory_bank_.astype(np.float64)
    expected = []
    for grid in test.reshape(2, -1, 6).astype(np.float64):
        d = cdist(grid, bank)
        p = d.min(1).argmax()
        m = d[p].argmin()
        support = np.argsort(cdist(bank[m:m + 1], bank)[0])[:4]
        w = 1 - softmax(cdist(grid[p:p + 1], bank[support])[0])[0]
        expected.append(w * d[p, m])
    np.testing.assert_allclose(-det.score_samples(test), expected, rtol=1e-4)
    plain = KNNDetector(coreset_ratio=0.3, n_neighbors=1, random_state=0).fit(X)
    np.testing.assert_allclose(
        -plain.score_samples(test), plain.score_patches(test).reshape(2, -1).max(1), rtol=1e-6
    )


def test_one_pass_scores_equal_the_separate_methods():
    det = KNNDetector(random_state=0).fit(_grids(12))
    test = _grids(3, seed=4)
    scores, patches = det.score_samples_and_patches(test)
    np.testing.assert_array_equal(scores, det.score_samples(test))
    np.testing.assert_array_equal(patches, det.score_patches(test))
    with pytest.raises(ValueError, match="4D"):
        det.score_samples_and_patches(np.zeros((2, 6)))


def test_threshold_comes_from_images_outside_the_bank():
    X = _grids(20)
    det = KNNDetector(coreset_ratio=1.0, calibration_size=5, calibration_in_bank=False,
                      random_state=0).fit(X)
    bank_rows = {row.tobytes() for row in det.memory_bank_}
    patches = X.reshape(20, -1, 6)
    in_bank = [all(p.tobytes() in bank_rows for p in img) for img in patches]
    assert sum(in_bank) == 15
    held_out = X[~np.array(in_bank)]
    np.testing.assert_allclose(np.sort(det.score_samples(held_out)), det.calibration_scores_)
    assert det.offset_ == conformal_offset(det.calibration_scores_, det.contamination)
    assert det.offset_ < 0  # in-sample scores would be exactly 0


@pytest.mark.parametrize("mode", ["patchcore", "spade"])
def test_calibration_images_join_the_bank_after_setting_the_threshold(mode):
    X, new = _grids(20), _grids(6, seed=9)
    params = dict(coreset_ratio=1.0, calibration_size=5, mode=mode, n_neighbors=3, random_state=0)
    before = KNNDetector(calibration_in_bank=False, **params).fit(X)
    after = KNNDetector(**params).fit(X)
    assert len(after.memory_bank_) == len(before.memory_bank_) * 20 // 15
    bank_rows = {row.tobytes() for row in after.memory_bank_}
    assert all(row.tobytes() in bank_rows for row in X.reshape(-1, 6))
    # The threshold is the one set before the bank grew ...
    np.testing.assert_array_equal(after.calibration_scores_, before.calibration_scores_)
    assert after.offset_ == before.offset_ < 0
    # ... and stays conservative: patch distances to the bank (PatchCore) and
    # to the nearest training images (SPADE's image score) can only shrink.
    if mode == "patchcore":
        assert (after.score_patches(new) <= before.score_patches(new) + 1e-6).all()
    else:
        assert (after.score_samples(new) >= before.score_samples(new) - 1e-9).all()
        assert len(after.image_features_) == 20


def test_fractional_calibration_is_capped_for_memory_banks():
    # 10% of 1,500 samples would be 150 held out; a memory bank holds out
    # at most 100 (their scoring costs bank-size time each), an int is obeyed.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1500, 3))
    det = KNNDetector(coreset_ratio=1.0, n_neighbors=1, calibration_size=0.1,
                      calibration_in_bank=False, random_state=0).fit(X)
    assert len(det.calibration_scores_) == 100
    assert len(det.memory_bank_) == 1400
    # Cross-fitted: every sample in the bank, at most 100 of them scored.
    det = KNNDetector(coreset_ratio=1.0, n_neighbors=1, random_state=0).fit(X)
    assert len(det.calibration_scores_) == 100
    assert len(det.memory_bank_) == 1500
    det = KNNDetector(coreset_ratio=1.0, n_neighbors=1, calibration_size=150, random_state=0).fit(X)
    assert len(det.calibration_scores_) == 150
    det = KNNDetector(coreset_ratio=1.0, n_neighbors=1, calibration_size=0.05, random_state=0).fit(X)
    assert len(det.calibration_scores_) == 75


def test_predict_flags_shifted_images_and_keeps_contract():
    det = KNNDetector(random_state=0).fit(_grids(30))
    normal, shifted = _grids(5, seed=9), _grids(5, seed=9, shift=4.0)
    assert det.predict(shifted).tolist() == [-1] * 5
    scores = det.score_samples(np.concatenate([normal, shifted]))
    assert scores.dtype == np.float64 and scores[:5].min() > scores[5:].max()
    np.testing.assert_allclose(det.decision_function(normal), det.score_samples(normal) - det.offset_)


def test_conformal_offset_rank_and_small_sample_warning():
    scores = np.arange(1.0, 20.0)  # 19 scores: k = floor(0.1 * 20) = 2
    assert conformal_offset(scores, 0.1) == 2.0
    with pytest.warns(UserWarning, match="cannot guarantee"):
        assert conformal_offset(scores[:5], 0.1) == 1.0


def test_no_fit_predict_for_a_novelty_detector():
    det = KNNDetector()
    assert det.novelty and not hasattr(det, "fit_predict")
    with pytest.raises(AttributeError, match="novelty detector"):
        det.fit_predict(np.zeros((5, 2)))


def test_input_errors():
    det = KNNDetector(random_state=0).fit(_grids(6))
    with pytest.raises(ValueError, match="score_patches needs 4D"):
        det.score_patches(np.zeros((3, 6)))
    with pytest.raises(ValueError, match="X has 5 features"):
        det.score_samples(np.zeros((2, 4, 5, 5), np.float32))
    with pytest.raises(ValueError, match="1 sample"):
        KNNDetector().fit(_grids(1))
    with pytest.raises(ValueError, match="no sample to learn from"):
        KNNDetector(calibration_size=6).fit(_grids(6))
    with pytest.raises(ValueError):
        KNNDetector().fit(np.zeros((4, 3, 3)))
    bad = _grids(4)
    bad[1, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        KNNDetector().fit(bad)


def test_grid_fit_accepts_and_ignores_y():
    X = _grids(8)
    a = KNNDetector(random_state=0).fit(X, np.ones(8)).score_samples(X)
    b = KNNDetector(random_state=0).fit(X).score_samples(X)
    np.testing.assert_array_equal(a, b)
