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


def test_pixel_threshold_bounds_false_alarms_on_normal_maps():
    from skanomaly import anomaly_maps
    from skanomaly.calibration import pixel_threshold

    # Pixel false alarms cluster by image (one off image lights up whole), so
    # the rate is checked as a mean over calibration splits.
    data = make_synthetic(100, 0, image_size=48, random_state=1)
    rates = {0.05: [], 0.1: []}
    for seed in range(4):
        order = np.random.default_rng(seed).permutation(100)
        pipe = make_patchcore(image_size=48, random_state=seed).set_params(
            knndetector__calibration_size=20
        ).fit(data.images[order[:60]])
        maps = anomaly_maps(pipe, data.images[order[60:]])
        for rate in rates:
            rates[rate].append((maps > pixel_threshold(pipe, rate)).mean())
    for rate, observed in rates.items():
        assert np.mean(observed) <= 1.5 * rate, (rate, observed)
    assert pixel_threshold(pipe) == pixel_threshold(pipe, pipe[-1].contamination)
    assert pixel_threshold(pipe, 0.01) >= pixel_threshold(pipe, 0.1)
    with pytest.raises(ValueError, match="false_alarm_rate"):
        pixel_threshold(pipe, 1.5)
