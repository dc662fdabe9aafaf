"""Bounded-memory fitting, chunked coresets, batched and distributed scoring."""

import pickle

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline, make_pipeline

from skanomaly import KNNDetector, PatchEmbedder, make_padim, make_patchcore
from skanomaly.coreset import kcenter_greedy
from skanomaly.datasets import make_synthetic
from skanomaly.model_selection import NormalOnlyKFold
from skanomaly.neighbors import ApproximateNeighbors, kneighbors
from skanomaly.streaming import StreamingPipeline

SIZE = 64


@pytest.fixture(scope="module")
def data():
    return make_synthetic(30, 8, image_size=SIZE, random_state=0)


class _CountingEmbedder(PatchEmbedder):
    """Records how many images each transform call embeds."""

    calls = []

    def transform(self, X):
        type(self).calls.append(len(X))
        return super().transform(X)


def test_streaming_fit_never_embeds_the_whole_training_set(data):
    _CountingEmbedder.calls = []
    head = KNNDetector(random_state=0, calibration_size=0.1, coreset_chunk_size=5 * 8 * 8)
    pipe = StreamingPipeline([("patchembedder", _CountingEmbedder(image_size=SIZE)),
                              ("knndetector", head)], batch_size=4)
    pipe.fit(data.images[:22])
    assert max(_CountingEmbedder.calls) <= 4
    # The protocol by hand: 22 images cut into the fewest near-equal chunks
    # of at most 5 (the coreset budget), 5 + 5 + 4 + 4 + 4, never a leftover
    # of 2; the head fitted on the first and partial_fit on the rest. In all
    # they hold out what one fit holds out of 22 (10%: 3), spread in
    # proportion (cumulative ceilings of 3 x 5/22, 10/22, ...: 1, 1, 0, 1, 0).
    embedder = PatchEmbedder(image_size=SIZE).fit(None)
    bounds = [0, 5, 10, 14, 18, 22]
    chunks = [embedder.transform(data.images[a:b]) for a, b in zip(bounds, bounds[1:])]
    by_hand = KNNDetector(random_state=0, calibration_size=0.1,
                          coreset_chunk_size=5 * 8 * 8)._fit(chunks[0], 1)
    for features, n_held_out in zip(chunks[1:], [1, 0, 1, 0]):
        by_hand._partial_fit(features, n_held_out)
    # The held-out images of every chunk are scored once the last has joined.
    by_hand._finish_fit()
    assert len(pipe[-1].calibration_scores_) == 3
    np.testing.assert_allclose(pipe[-1].memory_bank_, by_hand.memory_bank_, atol=1e-4)
    np.testing.assert_allclose(pipe[-1].calibration_scores_, by_hand.calibration_scores_,
                               rtol=1e-4)
    # Within one chunk, the plain scikit-learn Pipeline's model (which embeds
    # everything first; equal up to float rounding, as convolutions round
    # differently by batch size).
    one_chunk = StreamingPipeline([("patchembedder", PatchEmbedder(image_size=SIZE)),
                                   ("knndetector", KNNDetector(random_state=0))], batch_size=4)
    one_chunk.fit(data.images[:24])
    plain = make_pipeline(PatchEmbedder(image_size=SIZE), KNNDetector(random_state=0))
    plain.fit(data.images[:24])
    # Up to float rounding: greedy selection may break a near-tie the other
    # way, so a row or two of the bank can differ, no more.
    same = np.isclose(one_chunk[-1].memory_bank_, plain[-1].memory_bank_, atol=1e-4).all(axis=1)
    assert same.mean() >= 0.98, same.mean()
    test = data.images[24:]
    np.testing.assert_allclose(one_chunk.score_samples(test), plain.score_samples(test), rtol=1e-4)
    np.testing.assert_array_equal(one_chunk.predict(test), plain.predict(test))


def test_streaming_padim_matches_the_plain_fit(data):
    pipe = make_padim(image_size=SIZE, random_state=0).set_params(batch_size=5)
    assert isinstance(pipe, StreamingPipeline) and pipe._streams()
    pipe.fit(data.images[:24])
    plain = Pipeline(make_padim(image_size=SIZE, random_state=0).steps).fit(data.images[:24])
    np.testing.assert_allclose(pipe[-1].mean_, plain[-1].mean_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pipe[-1].precision_, plain[-1].precision_, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(pipe.score_samples(data.images[24:]),
                               plain.score_samples(data.images[24:]), rtol=1e-4)


def test_streaming_falls_back_for_heads_that_need_everything(data):
    from skanomaly import GaussianDetector, ImageEmbedder, make_dfm, make_fastflow

    flow = make_fastflow(image_size=SIZE, max_epochs=1, random_state=0)
    assert isinstance(flow, StreamingPipeline) and not flow._streams()
    dfm = make_dfm(image_size=SIZE)
    assert not dfm._streams() and not hasattr(dfm, "partial_fit")  # PCA needs all vectors
    vectors = StreamingPipeline([("e", ImageEmbedder(image_size=SIZE)),
                                 ("g", GaussianDetector(random_state=0))], batch_size=8)
    assert vectors._streams()  # one Gaussian on vectors: sums, fed 8 images at a time
    vectors.fit(data.images[:24])
    assert vectors[-1].mean_.shape == (320,)
    np.testing.assert_allclose(
        vectors[-1].mean_, vectors[0].transform(data.images[:24]).mean(0), rtol=1e-4, atol=1e-5)


def test_factories_return_streaming_pipelines_that_behave_like_pipelines(data, tmp_path):
    pipe = make_patchcore(image_size=SIZE, random_state=0)
    assert isinstance(pipe, Pipeline) and pipe._streams()
    assert [name for name, _ in pipe.steps] == ["patchembedder", "knndetector"]
    assert isinstance(clone(pipe), StreamingPipeline)
    search = GridSearchCV(pipe, {"knndetector__coreset_ratio": [0.05, 0.2]}, scoring="roc_auc",
                          cv=NormalOnlyKFold(n_splits=2))
    search.fit(data.images, data.target)
    assert search.best_params_["knndetector__coreset_ratio"] in (0.05, 0.2)
    fitted = search.best_estimator_
    joblib.dump(fitted, tmp_path / "m.joblib")
    loaded = joblib.load(tmp_path / "m.joblib")
    np.testing.assert_array_equal(loaded.score_samples(data.images[:5]),
                                  fitted.score_samples(data.images[:5]))


def test_batched_scoring_equals_one_batch(data):
    pipe = make_patchcore(image_size=SIZE, random_state=0).fit(data.images[:24])
    one = pipe.set_params(batch_size=100).decision_function(data.images)
    many = pipe.set_params(batch_size=3).decision_function(data.images)
    # Equal to float32 rounding, not bit for bit: oneDNN's convolutions may
    # block their sums differently with the batch's size and alignment (seen:
    # 5e-6 relative once in a CI run). A batching bug moves scores far more.
    np.testing.assert_allclose(one, many, rtol=1e-4)
    with pytest.raises(ValueError, match="batch_size"):
        pipe.set_params(batch_size=0).fit(data.images[:24])


def test_chunked_coreset_is_per_chunk_greedy():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 3, 3, 5)).astype(np.float32)
    head = KNNDetector(coreset_ratio=0.25, calibration_size=2, coreset_chunk_size=4 * 9,
                       calibration_in_bank=False, random_state=0).fit(X)
    # Reproduce: the same split, then greedy on each chunk of images in turn.
    rs = np.random.RandomState(0)
    order = rs.permutation(12)
    fit_idx = np.sort(order[2:])
    chunks = np.array_split(fit_idx, 3)  # 10 images, at most 4 per chunk
    expected = []
    for chunk in chunks:
        feats = X[chunk].reshape(-1, 5)
        keep = kcenter_greedy(feats, int(0.25 * len(feats)), random_state=rs)
        expected.append(feats[keep])
    np.testing.assert_array_equal(head.memory_bank_, np.concatenate(expected))
    single = KNNDetector(coreset_ratio=0.25, calibration_size=2, coreset_chunk_size=None,
                         random_state=0).fit(X)
    large = KNNDetector(coreset_ratio=0.25, calibration_size=2, coreset_chunk_size=10**6,
                        random_state=0).fit(X)
    np.testing.assert_array_equal(single.memory_bank_, large.memory_bank_)


def test_approximate_search_matches_exact_on_most_queries(data):
    rng = np.random.default_rng(0)
    # Clustered, as patch features are (parts, background, texture).
    modes = 3 * rng.normal(size=(20, 16))
    ref = (modes[rng.integers(20, size=3000)] + rng.normal(size=(3000, 16))).astype(np.float32)
    queries = (modes[rng.integers(20, size=400)] + rng.normal(size=(400, 16))).astype(np.float32)
    index = ApproximateNeighbors(ref, random_state=0)
    assert len(index.cluster_centers_) == round(2 * np.sqrt(3000)) and index.cell_sizes_.sum() == 3000
    dist, idx = index.kneighbors(queries, 3)
    exact_dist, exact_idx = kneighbors(queries, ref, 3)
    assert (idx[:, 0] == exact_idx[:, 0]).mean() >= 0.9
    # Distances are exact distances to the returned rows, never below the truth.
    np.testing.assert_allclose(dist, np.linalg.norm(queries[:, None] - ref[idx], axis=2), rtol=1e-5)
    assert (dist[:, 0] >= exact_dist[:, 0] - 1e-5).all()
    assert (np.diff(dist, axis=1) >= 0).all() and (idx[:, :1] != idx[:, 1:]).all()
    # Probing every cell is an exact search.
    full = ApproximateNeighbors(ref, n_cells=30, n_probe=30, random_state=0)
    full_dist, full_idx = full.kneighbors(queries, 3)
    np.testing.assert_array_equal(full_idx, exact_idx)
    np.testing.assert_allclose(full_dist, exact_dist, rtol=1e-6)
    with pytest.raises(ValueError, match="n_neighbors"):
        index.kneighbors(queries, len(ref) + 1)
    with pytest.raises(ValueError, match="columns"):
        index.kneighbors(queries[:, :3], 1)
    for bad in ({"n_cells": 0}, {"n_cells": 3001}, {"n_cells": 2.5}, {"n_probe": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ApproximateNeighbors(ref, **bad)
    with pytest.raises(ValueError, match="at least 2 rows"):
        ApproximateNeighbors(ref[:1])
    # The pipeline option: same decisions as exact search here, and it pickles.
    exact = make_patchcore(image_size=SIZE, random_state=0).fit(data.images[:24])
    approx = make_patchcore(image_size=SIZE, random_state=0, algorithm="approximate")
    approx.fit(data.images[:24])
    assert approx[-1].index_ is not None and exact[-1].index_ is None
    np.testing.assert_allclose(approx.score_samples(data.images[24:]),
                               exact.score_samples(data.images[24:]), rtol=0.05)
    loaded = pickle.loads(pickle.dumps(approx))
    np.testing.assert_array_equal(loaded.score_samples(data.images[24:]),
                                  approx.score_samples(data.images[24:]))
    with pytest.raises(ValueError, match="algorithm='exact'"):
        KNNDetector(mode="spade", coreset_ratio=1.0, algorithm="approximate").fit(
            rng.normal(size=(6, 2, 2, 3)))


def test_auto_search_turns_approximate_past_a_bank_size(monkeypatch):
    from skanomaly.detectors import _knn

    X = np.random.default_rng(0).normal(size=(20, 4, 4, 8)).astype(np.float32)
    small = KNNDetector(coreset_ratio=1.0, calibration_size=4, random_state=0).fit(X)
    assert small.algorithm == "auto" and small.index_ is None  # 256 rows: exact
    monkeypatch.setattr(_knn, "_APPROXIMATE_FROM_ROWS", 100)
    large = KNNDetector(coreset_ratio=1.0, calibration_size=4, random_state=0).fit(X)
    assert isinstance(large.index_, ApproximateNeighbors)
    assert len(large.index_.cell_sizes_) >= 2 and large.index_.cell_sizes_.sum() == 320
    # Exact on each image's top patches: the maximum, hence the image score, is kept.
    np.testing.assert_allclose(large.score_samples(X[:3] + 1.0), small.score_samples(X[:3] + 1.0),
                               rtol=1e-6)
    spade = KNNDetector(mode="spade", coreset_ratio=1.0, calibration_size=4).fit(X)
    assert spade.index_ is None


def test_dask_cluster_scores_equal_local_scores(data):
    distributed = pytest.importorskip("distributed")
    # One torch thread, as on the workers (dask pins them to one): convolutions
    # round differently with other thread counts.
    pipe = make_patchcore(image_size=SIZE, random_state=0, n_jobs=1).set_params(batch_size=4)
    local_fit = clone(pipe).fit(data.images[:24])
    local = local_fit.score_samples(data.images)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster), joblib.parallel_backend("dask"):
        remote = local_fit.score_samples(data.images)
        remote_fit = clone(pipe).fit(data.images[:24])  # embedding batches on the workers
    np.testing.assert_array_equal(remote, local)
    np.testing.assert_array_equal(remote_fit[-1].memory_bank_, local_fit[-1].memory_bank_)


def test_an_approximate_index_shares_the_bank_in_memory_and_in_files(tmp_path):
    import joblib

    X = np.random.default_rng(1).normal(size=(40, 8, 8, 16)).astype(np.float32)
    det = KNNDetector(coreset_ratio=0.5, algorithm="approximate", random_state=0).fit(X)
    test = X[:4] + 0.5
    expected = det.score_samples(test)
    assert det.index_._sorted is det.memory_bank_
    path = tmp_path / "model.joblib"
    joblib.dump(det, path)
    # One copy of the bank in the file (plus centres and small arrays); a
    # second copy would make it more than twice the bank.
    assert path.stat().st_size < 1.5 * det.memory_bank_.nbytes
    assert det.index_._sorted is det.memory_bank_  # dumping leaves the model whole
    for loaded in (joblib.load(path), pickle.loads(pickle.dumps(det))):
        assert loaded.index_._sorted is loaded.memory_bank_
        np.testing.assert_array_equal(loaded.score_samples(test), expected)
    # Nearest rows are rows of memory_bank_ itself.
    d, i = det.index_.kneighbors(det.memory_bank_[:5], 1)
    np.testing.assert_array_equal(i[:, 0], np.arange(5))


@pytest.mark.usefixtures("few_calibration_images")
def test_train_views_fit_the_dihedral_copies_of_few_images(data):
    from skanomaly import make_anomalydino
    from skanomaly.augment import dihedral_copies

    few = data.images[:3]
    pipe = make_anomalydino(image_size=SIZE, train_views=4, random_state=0).fit(few)
    by_hand = make_anomalydino(image_size=SIZE, random_state=0).fit(dihedral_copies(few))
    np.testing.assert_array_equal(pipe[-1].memory_bank_, by_hand[-1].memory_bank_)
    assert len(pipe[-1].memory_bank_) == 12 * 8 * 8  # every view's patches
    assert clone(pipe).train_views == 4
    # Scoring never augments: one score per image.
    assert pipe.score_samples(data.images[30:33]).shape == (3,)
    with pytest.raises(ValueError, match="train_views"):
        pipe.set_params(train_views=9).fit(few)


def test_a_slice_of_frozen_embedders_fits_without_images(data):
    """``pipe[:-1].fit(None)`` loads the embedders as Pipeline's fit does
    (their fit ignores X); the head is untouched."""
    pipe = make_patchcore(image_size=SIZE, random_state=0).set_params(train_views=4)
    embedders = pipe[:-1].fit(None)
    assert embedders.transform(data.images[:2]).shape[0] == 2
    assert not hasattr(pipe[-1], "offset_")


def test_an_index_files_new_rows_in_its_cells():
    ref = np.random.default_rng(0).normal(size=(600, 8)).astype(np.float32)
    index = ApproximateNeighbors(ref[:400], random_state=0)
    centres = index.cluster_centers_.copy()
    assert index.add(ref[400:]) is index
    np.testing.assert_array_equal(index.cluster_centers_, centres)  # no new k-means
    assert index.n_clustered_ == 400 and index.cell_sizes_.sum() == 600
    # Every row, old or new, lies in its nearest centre's cell, which is probed.
    distances, found = index.kneighbors(ref, 1)
    np.testing.assert_array_equal(found[:, 0], np.arange(600))
    np.testing.assert_array_equal(distances, 0.0)
    queries = ref[::7] + 0.3
    exact = kneighbors(queries, ref, 3)[1]
    assert (index.kneighbors(queries, 3)[1][:, 0] == exact[:, 0]).mean() > 0.9
    with pytest.raises(ValueError, match="8 columns"):
        index.add(ref[:2, :5])


def test_a_growing_bank_is_clustered_again_only_past_twice_its_size():
    rng = np.random.default_rng(2)
    first = rng.normal(size=(30, 4, 4, 8)).astype(np.float32)
    more = rng.normal(size=(30, 4, 4, 8)).astype(np.float32)
    params = dict(coreset_ratio=1.0, calibration_size=4, random_state=0)
    det = KNNDetector(algorithm="approximate", **params).fit(first)
    # The 4 calibration images join the cells built on the other 26.
    assert det.index_.n_clustered_ == 26 * 16 and len(det.memory_bank_) == 30 * 16
    assert det.index_._sorted is det.memory_bank_
    det.partial_fit(more)  # 26 more images: past 2x the 26 clustered, so a new index
    assert det.index_.n_clustered_ == 56 * 16 and len(det.memory_bank_) == 60 * 16
    assert det.index_._sorted is det.memory_bank_
    exact = KNNDetector(algorithm="exact", **params).fit(first).partial_fit(more)
    # Same rows in another order; 16 patches per image are all searched exactly.
    np.testing.assert_array_equal(np.sort(det.memory_bank_, axis=0),
                                  np.sort(exact.memory_bank_, axis=0))
    test = rng.normal(size=(5, 4, 4, 8)).astype(np.float32)
    np.testing.assert_allclose(det.score_samples(test), exact.score_samples(test), rtol=1e-6)


def test_a_streamed_fit_holds_out_what_one_fit_would(data, monkeypatch):
    from skanomaly.detectors import _knn

    images = data.images[:24]

    def streamed(head, batch_size=4):
        return StreamingPipeline([("patchembedder", PatchEmbedder(image_size=SIZE)),
                                  ("head", head)], batch_size=batch_size)

    # Six chunks of 4 images; per chunk the 10% rule would hold out 6 in all.
    monkeypatch.setattr(_knn.KNNDetector, "_calibration_cap", 2)
    pipe = streamed(KNNDetector(coreset_chunk_size=4 * 8 * 8, random_state=0)).fit(images)
    assert len(pipe[-1].calibration_scores_) == 2  # ceil(2.4) = 3, capped at 2
    pipe = streamed(KNNDetector(coreset_chunk_size=4 * 8 * 8, calibration_size=5,
                                random_state=0)).fit(images)
    assert len(pipe[-1].calibration_scores_) == 5  # not 5 per chunk
    padim = make_padim(image_size=SIZE, random_state=0).set_params(batch_size=4).fit(images)
    # Chunked by working memory, not batch_size: one chunk, cross-fitted.
    assert len(padim[-1].calibration_scores_) == 24
    # Too many to hold out: the error one fit gives, and nothing fitted.
    head = KNNDetector(coreset_chunk_size=4 * 8 * 8, calibration_size=24)
    with pytest.raises(ValueError, match="calibration_size=24 leaves no sample"):
        streamed(head).fit(images)
    assert not hasattr(head, "offset_")


def test_a_streamed_fit_warns_of_too_few_calibration_images_only_at_the_end(data):
    import warnings

    images = data.images[:24]

    def warned(calibration_size):
        head = KNNDetector(coreset_chunk_size=4 * 8 * 8, contamination=0.2,
                           calibration_size=calibration_size, random_state=0)
        pipe = StreamingPipeline([("patchembedder", PatchEmbedder(image_size=SIZE)),
                                  ("knndetector", head)], batch_size=4)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe.fit(images)
        return [str(w.message) for w in caught if "cannot guarantee" in str(w.message)]

    # 8 held out in 6 chunks: each chunk alone has too few for a 0.2 rate
    # (it needs 4), all 8 together are enough; no warning.
    assert warned(8) == []
    # 2 in all are too few: one warning, for the model's final threshold.
    assert len(warned(2)) == 1 and warned(2)[0].startswith("2 calibration samples")
