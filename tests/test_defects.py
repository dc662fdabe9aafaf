import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV, KFold

from skanomaly import make_padim, make_patchcore
from skanomaly.datasets import make_synthetic
from skanomaly.defects import DEFECT_KINDS, make_synthetic_defects, paint_defect
from skanomaly.model_selection import SyntheticDefectScorer


@pytest.fixture(scope="module")
def normal():
    return make_synthetic(16, 0, image_size=64, random_state=0).images


@pytest.fixture(scope="module")
def fitted(normal):
    return make_patchcore(image_size=64, random_state=0).fit(normal[:10])


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_each_kind_changes_pixels_inside_its_mask_only(normal, kind):
    for seed in range(5):
        bad, mask = paint_defect(normal[seed], kind, random_state=seed)
        changed = (bad != normal[seed]).any(axis=2)
        assert mask.any() and mask.mean() < 0.2
        assert not (changed & ~mask).any()
        assert changed[mask].mean() > 0.5


def test_defects_are_reproducible_and_keep_grey_images_grey():
    grey = np.random.default_rng(1).integers(60, 200, (3, 80, 120), dtype=np.uint8)
    first = make_synthetic_defects(grey, random_state=3)
    second = make_synthetic_defects(list(grey), random_state=3)
    for a, b in zip(first.images, second.images):
        np.testing.assert_array_equal(a, b)
    assert first.defect_type == ["cutpaste", "scratch", "blob"]
    assert all(image.shape == (80, 120, 3) for image in first.images)
    assert all((image == image[..., :1]).all() for image in first.images)
    assert first.target.tolist() == [-1, -1, -1]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="Unknown defect kind"):
        make_synthetic_defects(np.zeros((2, 32, 32, 3)), kinds=["dent"])
    with pytest.raises(ValueError, match="Image 1 is 8 x 8"):
        make_synthetic_defects([np.zeros((32, 32)), np.zeros((8, 8))])
    with pytest.raises(ValueError, match="1"):
        make_synthetic_defects([np.zeros((32, 32)), "/nonexistent/part.png"])


def test_scorer_tells_a_detector_from_a_blind_one(normal, fitted):
    scorer = SyntheticDefectScorer(random_state=0)
    score = scorer(fitted, normal[10:])
    assert score > 0.8
    assert scorer(fitted, normal[10:]) == score  # the same defects each call

    class Blind:
        def decision_function(self, X):
            return np.zeros(len(X))

    assert scorer(Blind(), normal[10:]) == 0.5
    pixel = SyntheticDefectScorer(metric="pixel_auroc")(fitted, normal[10:])
    assert pixel > 0.8


def test_scorer_uses_y_when_given(normal, fitted):
    images, target, masks = SyntheticDefectScorer().validation_set(
        normal[10:14], [1, -1, 1, 1])
    # Three normal images, each painted at the three default severities.
    assert target.tolist() == [1, -1, 1, 1] + [-1] * 9
    assert len(images) == 13 and masks[:4] == [None] * 4 and masks[4].dtype == bool


def test_scorer_errors(normal, fitted):
    with pytest.raises(ValueError, match="metric"):
        SyntheticDefectScorer(metric="f1")(fitted, normal[10:])
    with pytest.raises(ValueError, match="random_state must be an int"):
        SyntheticDefectScorer(random_state=None)(fitted, normal[10:])
    with pytest.raises(ValueError, match="at least one normal"):
        SyntheticDefectScorer()(fitted, normal[10:12], [-1, -1])


def test_grid_search_on_normal_images_only(normal):
    search = GridSearchCV(
        make_padim(image_size=64, random_state=0),
        {"gaussiandetector__regularization": [0.01, 1.0]},
        scoring=SyntheticDefectScorer(random_state=0), cv=KFold(2), error_score="raise",
    ).fit(normal)
    scores = search.cv_results_["mean_test_score"]
    assert np.isfinite(scores).all() and scores.max() > 0.7
    assert search.best_estimator_.predict(normal[:2]).shape == (2,)


def test_a_fainter_defect_is_the_same_defect_with_a_share_of_its_change(normal):
    clean = normal[3].astype(float)
    full, mask = paint_defect(normal[3], "blob", random_state=4)
    quarter, same_mask = paint_defect(normal[3], "blob", severity=0.25, random_state=4)
    np.testing.assert_array_equal(mask, same_mask)
    assert not (quarter != normal[3]).any(axis=2)[~mask].any()
    # A quarter of the change, to the uint8 rounding of the two images.
    np.testing.assert_allclose(quarter - clean, 0.25 * (full - clean), atol=1.0)
    assert np.abs(quarter - clean)[mask].mean() < 0.5 * np.abs(full - clean)[mask].mean()


def test_several_severities_paint_each_image_once_per_severity(normal):
    ladder = make_synthetic_defects(normal[:2], severity=(0.5, 1.0), random_state=2)
    single = make_synthetic_defects(normal[:2], random_state=2)
    assert len(ladder.images) == 4 and ladder.severity.tolist() == [0.5, 1.0, 0.5, 1.0]
    assert ladder.defect_type == ["cutpaste", "cutpaste", "scratch", "scratch"]
    for i in range(2):  # the full-strength copy is the default one
        np.testing.assert_array_equal(ladder.images[2 * i + 1], single.images[i])
        np.testing.assert_array_equal(ladder.masks[2 * i], single.masks[i])


@pytest.mark.parametrize("severity", [0, 1.5, -0.2, float("nan"), (), ("0.5",), True])
def test_a_bad_severity_is_named(normal, severity):
    with pytest.raises(ValueError, match="severity must be a float in"):
        make_synthetic_defects(normal[:1], severity=severity)
    with pytest.raises(ValueError, match="severity must be a float in"):
        SyntheticDefectScorer(severities=severity)(object(), normal[:1])


def test_the_ladder_score_is_the_mean_of_each_severity_score(normal, fitted):
    def score(severities):
        return SyntheticDefectScorer(severities=severities, random_state=1)(fitted, normal[10:])

    assert score((0.25, 1.0)) == pytest.approx((score((0.25,)) + score((1.0,))) / 2)
    assert score((0.25,)) <= score((1.0,))  # fainter defects are harder to find
