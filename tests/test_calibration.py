import numpy as np
import pytest

from skanomaly import ImageEmbedder, KNNDetector, make_patchcore
from skanomaly.calibration import conformal_pvalues
from skanomaly.datasets import make_synthetic


@pytest.fixture(scope="module")
def synthetic_features():
    data = make_synthetic(600, 0, image_size=32, random_state=0)
    return ImageEmbedder(image_size=32, batch_size=64).fit(None).transform(data.images)


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
@pytest.mark.parametrize("calibration_in_bank", [False, True])
def test_false_alarm_rate_on_new_normals_matches_request(synthetic_features, alpha,
                                                         calibration_in_bank):
    feats = synthetic_features
    rates = []
    for seed in range(8):
        order = np.random.default_rng(seed).permutation(len(feats))
        train, new = feats[order[:300]], feats[order[300:]]
        det = KNNDetector(contamination=alpha, calibration_size=100, random_state=seed,
                          calibration_in_bank=calibration_in_bank).fit(train)
        flagged = det.predict(new) == -1
        p = conformal_pvalues(det, new)
        k = np.floor(alpha * 101)
        np.testing.assert_array_equal(flagged, p <= k / 101)
        rates.append(flagged.mean())
    # Guarantee: E[rate] = k / (n + 1) <= alpha. Spread: calibration (Beta) and
    # test (binomial) sampling, averaged over 8 splits.
    expected = np.floor(alpha * 101) / 101
    spread = np.sqrt(expected * (1 - expected) * (1 / 102 + 1 / 300) / 8)
    if calibration_in_bank:
        # The bank grew after the threshold was set: conservative, not exact.
        assert np.mean(rates) <= expected + 4 * spread, (np.mean(rates), expected)
    else:
        assert abs(np.mean(rates) - expected) <= 4 * spread, (np.mean(rates), expected)


def test_pvalues_are_uniform_ranks():
    det = KNNDetector(random_state=0, calibration_size=9).fit(
        np.random.default_rng(0).normal(size=(50, 3))
    )
    cal = det.calibration_scores_
    p = conformal_pvalues(det, np.zeros((1, 3)))
    assert 0 < p[0] <= 1
    # A score below every calibration score gets the smallest p-value, 1/(n+1).
    far = conformal_pvalues(det, np.full((1, 3), 50.0))
    assert far[0] == pytest.approx(1 / (len(cal) + 1))


def test_pvalues_through_a_pipeline():
    data = make_synthetic(30, 3, image_size=32, random_state=0)
    pipe = make_patchcore(image_size=32, random_state=0).fit(data.images[:30])
    p = conformal_pvalues(pipe, data.images[30:])
    assert p.shape == (3,) and np.all(p <= 1 / (len(pipe[-1].calibration_scores_) + 1) + 1e-12)


def test_pixel_threshold_bounds_the_share_of_normal_images_with_any_mask():
    from skanomaly import anomaly_maps
    from skanomaly.calibration import pixel_threshold

    # The threshold is on each normal image's largest map value: the share
    # of new normal images with any pixel above it (any mask, any box) is
    # about the rate. Checked as a mean over splits (a Beta-spread quantity).
    data = make_synthetic(120, 0, image_size=48, random_state=1)
    rates = {0.05: [], 0.2: []}
    for seed in range(4):
        order = np.random.default_rng(seed).permutation(120)
        pipe = make_patchcore(image_size=48, random_state=seed).fit(data.images[order[:60]])
        maxima = anomaly_maps(pipe, data.images[order[60:]]).reshape(60, -1).max(axis=1)
        for rate in rates:
            rates[rate].append((maxima > pixel_threshold(pipe, rate)).mean())
    for rate, observed in rates.items():
        assert np.mean(observed) <= 1.5 * rate + 0.02, (rate, observed)
    # Not vacuous: a looser rate flags more images.
    assert np.mean(rates[0.2]) > np.mean(rates[0.05])
    assert pixel_threshold(pipe) == pixel_threshold(pipe, pipe[-1].contamination)
    # A head alone has no map resolution: its raw grids' maxima, which no
    # smoothed map exceeds, give a threshold at least as strict.
    assert pixel_threshold(pipe[-1]) >= pixel_threshold(pipe)


@pytest.mark.parametrize("alpha", [0.05, 0.2])
@pytest.mark.parametrize("head", ["knn", "gaussian", "kde"])
def test_cross_fitted_threshold_holds_on_new_normals(synthetic_features, alpha, head):
    from skanomaly import GaussianDetector, KDEDetector

    make = {"knn": lambda s: KNNDetector(contamination=alpha, random_state=s),
            "gaussian": lambda s: GaussianDetector(contamination=alpha, random_state=s),
            "kde": lambda s: KDEDetector(n_components=8, contamination=alpha, random_state=s)}[head]
    feats = synthetic_features[:, :16]
    rates = []
    for seed in range(6):
        order = np.random.default_rng(seed).permutation(len(feats))
        det = make(seed).fit(feats[order[:300]])
        # Every training sample (at most the head's cap) calibrates.
        assert len(det.calibration_scores_) == min(300, det._calibration_cap or 300)
        rates.append((det.predict(feats[order[300:]]) == -1).mean())
    # Conservative by construction (fold models learnt from fewer samples
    # than the final one), but not far off: within the sampling spread
    # above, and not a threshold nothing reaches below.
    n = len(det.calibration_scores_)
    expected = np.floor(alpha * (n + 1)) / (n + 1)
    spread = np.sqrt(expected * (1 - expected) * (1 / n + 1 / 300) / 6)
    assert np.mean(rates) <= expected + 4 * spread, (np.mean(rates), expected)
    assert np.mean(rates) >= expected / 3, (np.mean(rates), expected)


def test_gaussian_cross_fit_is_exactly_leave_one_out():
    from skanomaly import GaussianDetector

    rng = np.random.default_rng(0)
    X = rng.normal(size=(15, 2, 3, 4)).astype(np.float32)
    for score_type in ("mahalanobis", "nll"):
        params = dict(score_type=score_type, regularization=0.1, image_score_sigma=0.5)
        det = GaussianDetector(**params).fit(X)
        by_hand = []
        for i in range(len(X)):
            others = GaussianDetector(**params).fit(np.delete(X, i, axis=0))
            by_hand.append(others.score_samples(X[i:i + 1])[0])
        np.testing.assert_allclose(det.calibration_scores_, np.sort(by_hand), rtol=1e-4)
        # The final model learnt from every sample.
        np.testing.assert_allclose(det.mean_, X.mean(0), rtol=1e-5, atol=1e-6)


def test_knn_cross_fit_scores_each_image_against_a_bank_without_it():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 3, 3, 5)).astype(np.float32)
    det = KNNDetector(coreset_ratio=1.0, n_neighbors=1).fit(X)
    assert len(det.memory_bank_) == 30 * 9  # every image in the final bank
    # Each calibration score is no closer than the image's nearest patches
    # among the *other* images: never an in-sample 0.
    flat = X.reshape(30, 9, 5)
    nearest_other = []
    for i in range(30):
        others = np.delete(flat, i, axis=0).reshape(-1, 5)
        d = np.sqrt(((flat[i][:, None] - others[None]) ** 2).sum(-1)).min(1)
        nearest_other.append(d.max())
    assert np.all(-det.calibration_scores_ >= np.min(nearest_other) - 1e-5)
    assert np.sort(-det.calibration_scores_)[0] > 0


def test_a_streamed_fit_scores_held_out_images_with_the_finished_model():
    rng = np.random.default_rng(2)
    chunks = [rng.normal(size=(10, 2, 2, 3)).astype(np.float32) for _ in range(3)]
    det = KNNDetector(coreset_ratio=1.0, n_neighbors=1, calibration_in_bank=False,
                      random_state=0)
    det._fit(chunks[0], 2)
    det._partial_fit(chunks[1], 2)
    det._partial_fit(chunks[2], 2)
    det._finish_fit()
    bank = {row.tobytes() for row in det.memory_bank_}
    held = np.concatenate([c[[not all(p.tobytes() in bank for p in img.reshape(-1, 3))
                               for img in c]] for c in chunks])
    assert len(held) == 6
    # Scored by the model of all 24 other images, not by the model as it
    # was when their chunk arrived.
    np.testing.assert_allclose(det.calibration_scores_, np.sort(det.score_samples(held)))


def test_large_sets_build_the_bank_fold_by_fold():
    from skanomaly.detectors._knn import _soft_patch_mask

    rng = np.random.default_rng(3)
    X = rng.normal(size=(160, 3, 3, 4)).astype(np.float32)
    det = KNNDetector(coreset_ratio=0.5, train_patch_outlier_quantile=0.1, random_state=0).fit(X)
    # SoftPatch's filter ran once over all 160 images, not per fold.
    dropped = int((~_soft_patch_mask(X, 0.1)).sum())
    assert det.n_filtered_patches_ == dropped
    # Five folds of 32 images, each its own coreset of half its kept patches.
    kept = 160 * 9 - dropped
    assert abs(len(det.memory_bank_) - kept // 2) <= 5
    assert len(det.calibration_scores_) == 100  # the memory bank's cap
    assert np.all(det.calibration_scores_ < 0)  # scored against banks without them
