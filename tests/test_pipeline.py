import subprocess
import sys
import textwrap

import joblib
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from skanomaly import KNNDetector, PatchEmbedder, anomaly_maps, make_patchcore
from skanomaly.datasets import make_synthetic
from skanomaly.model_selection import NormalOnlyKFold

SIZE = 64


@pytest.fixture(scope="module")
def data():
    return make_synthetic(30, 12, image_size=SIZE, random_state=0)


@pytest.fixture(scope="module")
def fitted(data):
    return make_patchcore(image_size=SIZE, random_state=0).fit(data.images[:24])


def test_factory_is_the_documented_pipeline():
    pipe = make_patchcore()
    assert isinstance(pipe, Pipeline)
    assert [name for name, _ in pipe.steps] == ["patchembedder", "knndetector"]
    assert isinstance(pipe[0], PatchEmbedder) and isinstance(pipe[1], KNNDetector)
    assert pipe.get_params()["knndetector__coreset_ratio"] == 0.1
    assert pipe.get_params()["knndetector__n_neighbors"] == 9


def test_scores_separate_defects_on_synthetic_data(data, fitted):
    test, y = data.images[24:], data.target[24:]
    scores = fitted.score_samples(test)
    assert scores.dtype == np.float64 and scores.shape == (18,)
    assert roc_auc_score(y, fitted.decision_function(test)) >= 0.95
    labels = fitted.predict(test)
    assert set(labels.tolist()) <= {-1, 1}
    assert (labels[y == -1] == -1).mean() >= 0.8


def test_anomaly_maps_localise_defects(data, fitted):
    test = data.images[24:]
    maps = anomaly_maps(fitted, test)
    assert maps.shape == (18, SIZE, SIZE) and maps.dtype == np.float32
    masks = data.masks[24:]
    assert roc_auc_score(masks.ravel(), maps.ravel()) >= 0.9


def test_one_pass_gives_the_scores_of_score_samples(data, fitted):
    test = data.images[24:]
    maps, scores = anomaly_maps(fitted, test, batch_size=5, return_scores=True)
    # Same batches as above: convolutions round differently with other batch shapes.
    np.testing.assert_array_equal(maps, anomaly_maps(fitted, test, batch_size=5))
    np.testing.assert_allclose(scores, fitted.score_samples(test), rtol=1e-5)  # other batches: see test_streaming
    assert scores.shape == (18,)


def test_anomaly_maps_match_each_input_size(data, fitted):
    big = np.kron(data.images[-1], np.ones((2, 3, 1), dtype=np.uint8))  # 128 x 192
    maps = anomaly_maps(fitted, [data.images[0], big], batch_size=1)
    assert isinstance(maps, list) and [m.shape for m in maps] == [(SIZE, SIZE), (128, 192)]
    assert maps[1].max() > maps[0].max()


def test_maps_of_pipelines_that_begin_with_a_users_step(data, fitted):
    # anomaly_maps resizes ahead for our own first steps only; a pipeline that
    # begins with a step of the user's gets the decoded images as they are,
    # and here (a pass-through step) the same maps and scores.
    from sklearn.preprocessing import FunctionTransformer

    big = np.kron(data.images[-1], np.ones((2, 3, 1), dtype=np.uint8))  # 128 x 192
    images = [data.images[0], big, data.images[30]]
    wrapped = Pipeline([("pass", FunctionTransformer(lambda X: X))] + fitted.steps)
    maps, scores = anomaly_maps(wrapped, images, batch_size=2, return_scores=True)
    expected_maps, expected_scores = anomaly_maps(fitted, images, batch_size=2, return_scores=True)
    assert [m.shape for m in maps] == [(SIZE, SIZE), (128, 192), (SIZE, SIZE)]
    for got, expected in zip(maps, expected_maps):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5)


def test_anomaly_maps_errors(fitted):
    with pytest.raises(ValueError, match="Pipeline"):
        anomaly_maps(fitted[-1], np.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match="image 0"):
        anomaly_maps(fitted, [np.full((8, 8), np.nan)])


def test_joblib_round_trip_in_a_fresh_process(data, fitted, tmp_path):
    path = tmp_path / "model.joblib"
    joblib.dump(fitted, path)
    np.save(tmp_path / "test.npy", data.images[24:])
    # Same torch thread count as here: convolutions round differently with another.
    code = textwrap.dedent(f"""
        import joblib, numpy as np, torch
        torch.set_num_threads({torch.get_num_threads()})
        pipe = joblib.load({str(path)!r})
        np.save({str(tmp_path / "scores.npy")!r}, pipe.score_samples(np.load({str(tmp_path / "test.npy")!r})))
    """)
    subprocess.run([sys.executable, "-c", code], check=True)
    np.testing.assert_array_equal(
        np.load(tmp_path / "scores.npy"), fitted.score_samples(data.images[24:])
    )


def test_grid_search_over_coreset_ratio(data):
    search = GridSearchCV(
        make_patchcore(image_size=SIZE, random_state=0),
        {"knndetector__coreset_ratio": [0.01, 0.1]},
        scoring="roc_auc",
        cv=NormalOnlyKFold(n_splits=3),
    )
    search.fit(list(data.images), data.target)
    assert search.best_params_["knndetector__coreset_ratio"] in (0.01, 0.1)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert search.best_score_ >= 0.9


def test_masks_and_boxes_find_the_drawn_defects(data, fitted):
    from skanomaly import anomaly_boxes, anomaly_masks
    from skanomaly.calibration import pixel_threshold

    test = data.images[24:]
    maps = anomaly_maps(fitted, test)
    masks = anomaly_masks(fitted, test, maps=maps)
    np.testing.assert_array_equal(masks, maps > pixel_threshold(fitted))
    truth = data.masks[24:]
    bad = data.target[24:] == -1
    # Most flagged pixels of defective images lie on or next to a defect.
    assert masks[bad].sum() > 0
    hits = [(m & np.pad(t, 4)[4:-4, 4:-4]).sum() > 0 for m, t in zip(masks[bad], truth[bad])]
    assert np.mean(hits) >= 0.8
    boxes = anomaly_boxes(fitted, test, maps=maps)
    assert len(boxes) == len(test)
    for image_boxes, amap, mask in zip(boxes, maps, masks):
        scores = [b["score"] for b in image_boxes]
        assert scores == sorted(scores, reverse=True)
        for b in image_boxes:
            region = mask[b["y0"]:b["y1"], b["x0"]:b["x1"]]
            assert region.sum() >= b["area"] >= 16
            assert b["score"] == pytest.approx(amap[b["y0"]:b["y1"], b["x0"]:b["x1"]][region].max())
    assert all(len(b) > 0 for b, is_bad in zip(boxes, bad) if is_bad)
    none = anomaly_boxes(fitted, test, maps=maps, threshold=np.inf)
    assert all(b == [] for b in none)
