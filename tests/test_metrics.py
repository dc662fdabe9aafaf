import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import f1_score, roc_auc_score

from skanomaly.metrics import (
    f1_max,
    image_roc_auc,
    per_defect_type,
    _PixelTally,
    pixel_aupro,
    pixel_operating_point,
    pixel_roc_auc,
)


def test_aupro_hand_computed_cases():
    # One region of 2 px, 2 normal px. Curve: (0,0) (0,.5) (.5,.5) (.5,1) (1,1).
    mask = np.array([[1, 1], [0, 0]], bool)
    amap = np.array([[0.9, 0.5], [0.7, 0.1]])
    assert pixel_aupro([mask], [amap], max_fpr=1.0) == pytest.approx(0.75)
    assert pixel_aupro([mask], [amap], max_fpr=0.3) == pytest.approx(0.5)
    # Regions count equally whatever their size: 3 px region and 1 px region.
    mask = np.array([[1, 1, 1, 0, 1, 0]], bool)
    amap = np.array([[0.9, 0.8, 0.2, 0.3, 0.95, 0.1]])
    assert pixel_aupro([mask], [amap], max_fpr=1.0) == pytest.approx(11 / 12)
    # 8-connectivity: the diagonal pixels form one region of 3 (4-conn: 3/4).
    mask = np.array([[1, 0, 0], [0, 1, 1]], bool)
    amap = np.array([[0.9, 0.5, 0.4], [0.3, 0.8, 0.1]])
    assert pixel_aupro([mask], [amap], max_fpr=1.0) == pytest.approx(2 / 3)


def _masks(seed, n=3, size=12):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    for m in masks[: n - 1]:
        y, x = rng.integers(0, size - 4, 2)
        m[y:y + rng.integers(1, 4), x:x + rng.integers(1, 4)] = True
    return masks  # the last image is a good one


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_pixel_metrics_are_invariant_to_monotone_transforms(seed):
    masks = _masks(seed)
    maps = np.random.default_rng(seed).random(masks.shape) + masks * 0.3
    for transform in (lambda m: 3 * m - 2, np.exp, lambda m: m ** 3):
        assert pixel_roc_auc(masks, transform(maps)) == pytest.approx(pixel_roc_auc(masks, maps))
        assert pixel_aupro(masks, transform(maps)) == pytest.approx(pixel_aupro(masks, maps))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_perfect_maps_score_one(seed):
    masks = _masks(seed)
    assert pixel_aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    assert pixel_roc_auc(masks, masks.astype(float)) == 1.0
    assert pixel_aupro(list(masks[:-1]) + [None], masks.astype(float)) == pytest.approx(1.0)


def test_random_maps_score_chance():
    rng = np.random.default_rng(0)
    masks = rng.random((20, 64, 64)) > 0.9
    maps = rng.random(masks.shape)
    assert pixel_roc_auc(masks, maps) == pytest.approx(0.5, abs=0.01)
    # Random maps: PRO = FPR, so the normalised area up to 0.3 is 0.15.
    assert pixel_aupro(masks, maps) == pytest.approx(0.15, abs=0.01)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(4, 40))
def test_image_metrics_match_sklearn(seed, n):
    rng = np.random.default_rng(seed)
    y = np.r_[1, -1, rng.choice([1, -1], n - 2)]
    score = rng.normal(size=n) + (y == 1)
    assert image_roc_auc(y, score) == pytest.approx(roc_auc_score(y, score))
    assert image_roc_auc(y, np.tanh(score)) == pytest.approx(image_roc_auc(y, score))
    f1, threshold = f1_max(y, score)
    assert f1 == pytest.approx(f1_score(y == -1, score <= threshold))
    for t in np.unique(score):
        assert f1_score(y == -1, score <= t) <= f1 + 1e-12


def test_per_defect_type_breakdown():
    y = np.array([1, 1, 1, -1, -1, -1])
    score = np.array([0.9, 0.8, 0.7, 0.75, 0.1, 0.2])
    out = per_defect_type(y, score, ["good"] * 3 + ["crack", "hole", "hole"])
    assert out == {"crack": pytest.approx(roc_auc_score([1, 1, 1, -1], score[:4])), "hole": 1.0}


def test_metric_errors():
    with pytest.raises(ValueError, match="both normal"):
        image_roc_auc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"\+1"):
        image_roc_auc([0, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="does not match"):
        pixel_roc_auc([np.zeros((2, 2))], [np.zeros((3, 3))])
    with pytest.raises(ValueError, match="anomalous region"):
        pixel_aupro([None], [np.zeros((3, 3))])
    with pytest.raises(ValueError, match="finite"):
        pixel_aupro([np.ones((2, 2))], [np.full((2, 2), np.nan)])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), levels=st.sampled_from([4, 50, None]))
def test_pixel_auroc_and_best_f1_match_brute_force(seed, levels):
    # Ties (few distinct levels) are where binned curves go wrong.
    masks = _masks(seed)
    maps = np.random.default_rng(seed).random(masks.shape) + masks * 0.2
    if levels:
        maps = np.round(maps * levels) / levels
    truth, scores = masks.ravel(), maps.ravel()
    assert pixel_roc_auc(masks, maps) == pytest.approx(roc_auc_score(truth, scores))
    # F1 of "score >= t" at every distinct t, by brute force.
    flagged = scores[None, :] >= np.unique(scores)[:, None]
    tp = (flagged & truth).sum(axis=1)
    best = np.max(2 * tp / (flagged.sum(axis=1) + truth.sum()))
    point = pixel_operating_point(masks, maps, 0.7)
    assert point["best_pixel_f1"] == pytest.approx(best)
    assert point["pixel_f1"] == pytest.approx(f1_score(truth, scores > 0.7))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_streamed_bins_give_the_exact_pixel_metrics(seed):
    # evaluate_pipeline's tally: one map at a time into 2**16 equal bins.
    masks = _masks(seed, n=6, size=40)
    maps = np.random.default_rng(seed).random(masks.shape).astype(np.float32) + masks * 0.3
    tally = _PixelTally.uniform(maps.min(), maps.max(), threshold=0.8)
    for mask, amap in zip(masks, maps):
        tally.add(mask, amap)
    assert tally.roc_auc() == pytest.approx(pixel_roc_auc(masks, maps), abs=1e-4)
    assert tally.aupro() == pytest.approx(pixel_aupro(masks, maps), abs=1e-4)
    exact = pixel_operating_point(masks, maps, 0.8)
    for key, value in tally.operating_point().items():
        assert value == pytest.approx(exact[key], abs=1e-3, nan_ok=True), key
