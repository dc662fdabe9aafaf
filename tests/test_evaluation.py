from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone

from skanomaly import ImageEmbedder, anomaly_maps, make_padim, make_patchcore
from skanomaly.calibration import pixel_threshold
from skanomaly.datasets import make_synthetic
from skanomaly.evaluation import FeatureCache, evaluate_pipeline
from skanomaly.metrics import pixel_aupro, pixel_operating_point, pixel_roc_auc


def test_feature_cache_embeds_each_path_once(tmp_path, monkeypatch):
    paths = []
    for i, image in enumerate(make_synthetic(3, 0, image_size=32, random_state=0).images):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image).save(paths[-1])
    embedder = ImageEmbedder(image_size=32).fit(None)
    calls = []
    original = type(embedder).transform
    monkeypatch.setattr(type(embedder), "transform",
                        lambda self, X: calls.append(len(X)) or original(self, X))
    cache = FeatureCache()
    first = cache.transform(embedder, paths[:2])
    both = cache.transform(embedder, paths[::-1])
    assert calls == [2, 1]
    np.testing.assert_array_equal(both[1:], first[::-1])
    np.testing.assert_allclose(both, original(embedder, paths[::-1]), rtol=1e-3, atol=1e-4)
    # Rows live on disk, not in memory, and go with the cache.
    folder = Path(cache._folder.name)
    assert len(list(folder.glob("*.npy"))) == 3
    del cache
    assert not folder.exists()


def test_evaluate_pipeline_reports_the_operating_point():
    data = make_synthetic(60, 12, image_size=48, random_state=0)
    test = slice(40, None)
    result = evaluate_pipeline(make_patchcore(image_size=48, random_state=0), data.images[:40],
                               data.images[test], data.target[test], list(data.masks[test]))
    decision = result["pipeline"].decision_function(data.images[test])
    good, bad = data.target[test] == 1, data.target[test] == -1
    assert result["false_alarm_rate"] == pytest.approx((decision[good] < 0).mean())
    assert result["recall"] == pytest.approx((decision[bad] < 0).mean())
    assert 0 <= result["pixel_f1"] <= result["best_pixel_f1"] <= 1
    assert 0 <= result["good_with_box"] <= 1 and 0 <= result["region_hit_rate"] <= 1


def test_evaluate_pipeline_reports_scores_and_maps():
    data = make_synthetic(24, 8, image_size=48, random_state=0)
    result = evaluate_pipeline(
        make_patchcore(image_size=48, random_state=0), data.images[:18], data.images[18:],
        data.target[18:], list(data.masks[18:]),
    )
    assert result["image_auroc"] >= 0.9 and result["pixel_auroc"] >= 0.85
    assert result["fit_s"] > 0 and result["ms_per_image"] > 0
    with pytest.raises(ValueError):
        evaluate_pipeline(make_patchcore(image_size=48), data.images[:18], [], [])


def test_evaluate_pipeline_fits_the_model_that_fit_gives():
    # Past the coreset budget fit streams in chunks (11 images of 6 x 6
    # patches, at most 4 per chunk: 4 + 4 + 3), and the figures must be
    # those of the model a user's pipe.fit(images) gives, not of one
    # head.fit on all the features (which would hold out and select
    # differently). Also with train_views, which fit applies.
    data = make_synthetic(11, 0, image_size=48, random_state=0)
    test = make_synthetic(4, 4, image_size=48, random_state=1)
    for views in (1, 4):
        pipe = make_patchcore(image_size=48, random_state=0)
        pipe.set_params(knndetector__coreset_chunk_size=4 * 6 * 6, train_views=views)
        expected = clone(pipe).fit(data.images)
        result = evaluate_pipeline(pipe, data.images, test.images, test.target, cache=FeatureCache())
        got = result["pipeline"][-1]
        np.testing.assert_allclose(got.memory_bank_, expected[-1].memory_bank_, atol=1e-4)
        np.testing.assert_allclose(got.calibration_scores_, expected[-1].calibration_scores_,
                                   rtol=1e-4)
    # One head.fit on all the features selects its coreset from other
    # chunks (of the 9 images it learns from, not of the 11 streamed): the
    # bank the figures would otherwise come from is not fit's.
    one_fit = make_patchcore(image_size=48, random_state=0)
    one_fit.set_params(knndetector__coreset_chunk_size=4 * 6 * 6)
    features = one_fit[:-1].fit(None).transform(data.images)
    streamed = evaluate_pipeline(clone(one_fit), data.images, test.images, test.target)
    head_bank, streamed_bank = one_fit[-1].fit(features).memory_bank_, streamed["pipeline"][-1].memory_bank_
    assert head_bank.shape != streamed_bank.shape or not np.allclose(head_bank, streamed_bank)


def test_evaluate_shows_one_bar_for_the_test_images(monkeypatch, capsys):
    monkeypatch.setattr("skanomaly.evaluation._TEST_BATCH", 2)
    data = make_synthetic(10, 4, image_size=32, random_state=0)
    pipe = make_patchcore(image_size=32, random_state=0, verbose=1)
    evaluate_pipeline(pipe, data.images[:8], data.images[8:], data.target[8:])
    err = capsys.readouterr().err
    # Three batches of test images, one bar for them; the embedder's own bar
    # shows once, for the training images.
    assert err.count("scoring test images:   0%") == 1
    assert err.count("PatchEmbedder:   0%") == 1


def test_evaluate_pipeline_pixel_metrics_are_the_exact_ones_streamed():
    # evaluate draws one map at a time into fixed bins; the figures must be
    # those of the exact functions over every map held at once, and the
    # returned maps those anomaly_maps draws.
    data = make_synthetic(24, 10, image_size=48, random_state=0)
    test_images, masks = data.images[18:], list(data.masks[18:])
    result = evaluate_pipeline(make_padim(image_size=48, random_state=0), data.images[:18],
                               test_images, data.target[18:], masks, return_maps=True)
    pipe = result["pipeline"]
    drawn = anomaly_maps(pipe, test_images)
    assert len(result["maps"]) == len(test_images)
    for i in (0, 5, -1):
        np.testing.assert_allclose(result["maps"][i], drawn[i], rtol=1e-5, atol=1e-6)
    assert result["pixel_auroc"] == pytest.approx(pixel_roc_auc(masks, drawn), abs=1e-4)
    assert result["aupro"] == pytest.approx(pixel_aupro(masks, drawn), abs=1e-4)
    exact = pixel_operating_point(masks, drawn, pixel_threshold(pipe))
    for key, value in exact.items():
        assert result[key] == pytest.approx(value, abs=1e-3, nan_ok=True), key
    fpr, pro = result["pro_curve"]
    assert fpr[0] == pro[0] == 0 and fpr[-1] == pytest.approx(1) and np.all(np.diff(fpr) >= 0)
