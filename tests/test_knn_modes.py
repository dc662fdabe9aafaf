import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.utils.estimator_checks import parametrize_with_checks

from skanomaly import KNNDetector

# check_outliers_train asks predict to flag some *training* samples: SPADE's
# image kNN includes the sample itself and SoftPatch drops training outliers
# from the bank on purpose, so neither flags its own training rows.
_NOVELTY_ONLY = {
    "check_outliers_train": "novelty detector: training samples are not flagged",
}


@parametrize_with_checks(
    [KNNDetector(mode="spade", coreset_ratio=1.0), KNNDetector(train_patch_outlier_quantile=0.1),
     KNNDetector(metric="cosine", top_fraction=0.5, coreset_ratio=1.0)],
    expected_failed_checks=lambda est: _NOVELTY_ONLY,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_spade_scores_follow_the_paper():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3, 3, 5)).astype(np.float32)
    det = KNNDetector(mode="spade", coreset_ratio=1.0, n_neighbors=4, calibration_size=5,
                      calibration_in_bank=False, random_state=0).fit(X)
    test = rng.normal(size=(2, 3, 3, 5)).astype(np.float32)
    train = det.memory_bank_.reshape(25, 9, 5)
    pooled = train.mean(1)
    for i in range(2):
        d = cdist(test[i].reshape(-1, 5).mean(0, keepdims=True), pooled)[0]
        nearest = np.argsort(d)[:4]
        assert -det.score_samples(test[i:i + 1])[0] == pytest.approx(d[nearest].mean(), rel=1e-4)
        expected = cdist(test[i].reshape(-1, 5), train[nearest].reshape(-1, 5)).min(1)
        np.testing.assert_allclose(det.score_patches(test[i:i + 1]).ravel(), expected, rtol=1e-4)


def test_spade_refuses_a_coreset():
    with pytest.raises(ValueError, match="coreset_ratio=1.0"):
        KNNDetector(mode="spade").fit(np.zeros((5, 2, 2, 3), np.float32))


def test_softpatch_drops_the_planted_defect_patches():
    from sklearn.utils import check_random_state

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 4, 4, 6)).astype(np.float32) * 0.1
    params = dict(coreset_ratio=1.0, calibration_size=1, calibration_in_bank=False,
                  random_state=0)
    fit_idx, _ = KNNDetector(**params)._calibration_split(40, check_random_state(0))
    a, b = fit_idx[3], fit_idx[7]
    X[a, 1, 2] += 5.0  # defects slipped into two training images
    X[b, 0, 0] -= 5.0
    defects = np.stack([X[a, 1, 2], X[b, 0, 0]])
    plain = KNNDetector(**params).fit(X)
    soft = KNNDetector(train_patch_outlier_quantile=0.02, **params).fit(X)
    assert cdist(defects, plain.memory_bank_).min(1).max() == 0.0
    assert cdist(defects, soft.memory_bank_).min(1).min() > 1.0
    n_patches = 39 * 16
    assert abs(soft.n_filtered_patches_ - 0.02 * n_patches) <= 1
    assert len(soft.memory_bank_) == n_patches - soft.n_filtered_patches_
    # The same defect at test time: PatchCore memorised it, SoftPatch did not.
    test = X[[a]]
    assert -plain.score_samples(test)[0] < 0.5 < -soft.score_samples(test)[0]


def test_softpatch_localises_better_than_patchcore_with_defects_in_training():
    from sklearn.metrics import roc_auc_score

    from skanomaly import PatchEmbedder
    from skanomaly.datasets import make_synthetic

    data = make_synthetic(60, 36, image_size=64, random_state=0)
    feats = PatchEmbedder(image_size=64).fit(None).transform(data.images)
    train = np.r_[0:40, 60:66]  # 6 defective images slipped into 46
    test = np.r_[40:60, 66:96]
    cells = data.masks[test].reshape(len(test), 8, 8, 8, 8).max(axis=(2, 4)).ravel()
    patch_auroc = {}
    for q in (0.0, 0.01):
        det = KNNDetector(train_patch_outlier_quantile=q, random_state=0).fit(feats[train])
        patch_auroc[q] = roc_auc_score(cells, det.score_patches(feats[test]).ravel())
    assert patch_auroc[0.01] > patch_auroc[0.0] + 0.03, patch_auroc


def test_anomalydino_scores_follow_the_paper():
    """Patch: cosine distance to the nearest bank patch; image: mean of the
    highest floor(1% of patches) (at least one), checked against scipy."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 6, 6, 4)).astype(np.float32) + 1.0
    test = rng.normal(size=(3, 6, 6, 4)).astype(np.float32) + 1.0
    for fraction, n_top in ((0.01, 1), (0.1, 3), (1.0, 36)):
        det = KNNDetector(coreset_ratio=1.0, metric="cosine", top_fraction=fraction,
                          random_state=0).fit(X)
        bank = det.memory_bank_
        # The bank holds every training patch (calibration images joined it).
        assert len(bank) == 20 * 36
        for i in range(3):
            expected = cdist(test[i].reshape(-1, 4), X.reshape(-1, 4), "cosine").min(1)
            np.testing.assert_allclose(det.score_patches(test[i:i + 1]).ravel(), expected,
                                       rtol=1e-4, atol=1e-6)
            highest = np.sort(expected)[::-1][:n_top].mean()
            assert -det.score_samples(test[i:i + 1])[0] == pytest.approx(highest, rel=1e-4)
    # Cosine distance ignores each feature vector's length.
    np.testing.assert_allclose(det.score_samples(test * 3.0), det.score_samples(test), rtol=1e-5)


def test_top_fraction_survives_an_approximate_search():
    """With an approximate index the patches that can enter the top share are
    searched exactly, even when the share is more than 32 patches."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 8, 8, 6)).astype(np.float32)
    test = rng.normal(size=(4, 8, 8, 6)).astype(np.float32)
    kw = {"coreset_ratio": 1.0, "top_fraction": 0.75, "random_state": 0}
    exact = KNNDetector(algorithm="exact", **kw).fit(X)
    approximate = KNNDetector(algorithm="approximate", **kw).fit(X)
    np.testing.assert_allclose(approximate.score_samples(test), exact.score_samples(test), rtol=1e-5)


def test_cosine_and_top_fraction_are_patchcore_mode_options():
    X = np.random.default_rng(0).normal(size=(10, 2, 2, 3)).astype(np.float32)
    for params in ({"metric": "cosine"}, {"top_fraction": 0.1}):
        with pytest.raises(ValueError, match="PatchCore-mode options"):
            KNNDetector(mode="spade", coreset_ratio=1.0, **params).fit(X)
    for bad in ({"metric": "manhattan"}, {"top_fraction": 0.0}, {"top_fraction": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            KNNDetector(**bad).fit(X)
