import numpy as np
import torch
import pytest
from scipy.spatial.distance import cdist

import skanomaly.neighbors as neighbors
from skanomaly.neighbors import kneighbors


@pytest.fixture(params=["float32", "bfloat16"])
def gemm(request, monkeypatch):
    """Run a test through each ranking GEMM (bfloat16 only where native)."""
    if request.param == "bfloat16":
        if not neighbors._native_bfloat16():
            pytest.skip("this CPU has no native bfloat16 dot products")
    else:
        monkeypatch.setattr(neighbors, "_native_bfloat16", lambda: False)
    return request.param


@pytest.mark.parametrize("k", [1, 4])
def test_matches_brute_force(k, gemm):
    rng = np.random.default_rng(0)
    q, r = rng.normal(size=(300, 9)), rng.normal(size=(50, 9))
    # A tiny block forces many chunks.
    dist, idx = kneighbors(q, r, k, block_bytes=1000)
    full = cdist(q, r)
    expected = np.sort(full, axis=1)[:, :k]
    np.testing.assert_allclose(dist, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.take_along_axis(full, idx, 1), expected, rtol=1e-4, atol=1e-4)


def test_near_ties_found_exactly(gemm):
    # Far from the origin, with each reference next to a twin 1e-3 away:
    # bfloat16 (8 significant bits) cannot tell twins apart, the answer must.
    rng = np.random.default_rng(1)
    base = rng.normal(size=(400, 64)) + 50.0
    twins = base + rng.normal(scale=1e-3, size=base.shape)
    reference = np.concatenate([base, twins]).astype(np.float32)
    queries = (base[:200] + rng.normal(scale=0.05, size=(200, 64))).astype(np.float32)
    full = cdist(queries.astype(np.float64), reference.astype(np.float64))
    dist, idx = kneighbors(queries, reference, 1, block_bytes=4096)
    best = full.min(axis=1)
    chosen = full[np.arange(len(queries)), idx[:, 0]]
    # The bfloat16 path proves its candidates hold the nearest row; the
    # float32 ranking resolves squared distances to ~1e-7 of the centred
    # norms only (here ~1e-5), so it may pick a twin that close.
    np.testing.assert_allclose(chosen, best, rtol=0, atol=1e-6 if gemm == "bfloat16" else 1e-4)
    np.testing.assert_allclose(dist[:, 0], chosen, rtol=1e-5)
    assert np.isin(idx[:, 0] % 400, np.arange(200)).all()


def test_same_answer_in_any_batch(gemm):
    rng = np.random.default_rng(2)
    q = rng.normal(size=(700, 20)).astype(np.float32)
    r = rng.normal(size=(3000, 20)).astype(np.float32)
    dist_all, idx_all = kneighbors(q, r, 1)
    for i in (0, 321, 699):
        dist_one, idx_one = kneighbors(q[i:i + 1], r, 1)
        assert dist_one[0, 0] == dist_all[i, 0]
        assert idx_one[0, 0] == idx_all[i, 0]


def test_paths_agree():
    if not neighbors._native_bfloat16():
        pytest.skip("this CPU has no native bfloat16 dot products")
    rng = np.random.default_rng(3)
    q = rng.normal(size=(500, 152)).astype(np.float32) * 10
    r = rng.normal(size=(4000, 152)).astype(np.float32) * 10
    fast = kneighbors(q, r, 1)
    slow = neighbors._kneighbors_float32(q, r)
    np.testing.assert_array_equal(fast[1], slow[1])
    np.testing.assert_array_equal(fast[0], slow[0])


def test_errors():
    with pytest.raises(ValueError, match="equal widths"):
        kneighbors(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="n_neighbors"):
        kneighbors(np.zeros((2, 3)), np.zeros((2, 3)), 3)


def test_crowded_candidates_fall_back(monkeypatch):
    # A bank of identical rows (flat background, no coreset): every row is a
    # candidate of every query; the search must stay exact and bounded.
    if not neighbors._native_bfloat16():
        pytest.skip("this CPU has no native bfloat16 dot products")
    monkeypatch.setattr(neighbors, "_MAX_CANDIDATES", 50)
    calls = []
    original = neighbors._kneighbors_float32
    monkeypatch.setattr(neighbors, "_kneighbors_float32",
                        lambda *a, **k: calls.append(len(a[0])) or original(*a, **k))
    rng = np.random.default_rng(4)
    reference = np.concatenate([np.ones((300, 8)), rng.normal(size=(40, 8)) * 5])
    queries = np.concatenate([np.ones((5, 8)) + 1e-3, rng.normal(size=(20, 8)) * 5])
    dist, idx = kneighbors(queries, reference, 1, block_bytes=4096)
    full = cdist(queries, reference)
    np.testing.assert_allclose(dist[:, 0], full.min(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(full[np.arange(len(queries)), idx[:, 0]], full.min(axis=1),
                               rtol=1e-5, atol=1e-6)
    assert sum(calls) == 5  # only the crowded queries took the float32 ranking


@pytest.mark.parametrize("scale, shift", [(1.0, 0.0), (10.0, 50.0), (1e-3, 1.0), (300.0, -2e3)])
def test_bfloat16_distances_within_their_bound(scale, shift):
    # The search's GEMM returns c_q + |r|^2 - 2 q.r; the candidate rule rests
    # on |computed - exact| <= bound + 2u |computed| and on every value
    # being positive, checked here against float64 at several scales.
    rng = np.random.default_rng(5)
    r = torch.from_numpy((rng.normal(size=(300, 48)) * scale + shift).astype(np.float32))
    q = torch.from_numpy(np.concatenate([
        r[:20].numpy(),  # queries on bank rows: zero distances
        (rng.normal(size=(40, 48)) * scale * 3 + shift).astype(np.float32),
    ]))
    mean = r.mean(0)
    centred = r - mean
    queries, reference, bound = neighbors._augmented_for_distances(
        q - mean, centred, (centred * centred).sum(1))
    computed = (queries @ reference.T).double().numpy()
    q_centred = (q - mean).double().numpy()
    # c_q stands for |q|^2 + offset: the product is c_q - |q|^2 + |q - r|^2.
    constant = queries[:, 48 + 2].double().numpy() - (q_centred**2).sum(1)
    exact = constant[:, None] + cdist(q_centred, centred.double().numpy()) ** 2
    assert (computed > 0).all()
    u = neighbors._BF16_UNIT
    assert (np.abs(computed - exact) <= bound[:, None] + 2 * u * computed).all()


def test_queries_on_bank_rows(gemm):
    # Training patches scored against a bank that holds them: distance 0, and
    # the lowest index among duplicated rows.
    rng = np.random.default_rng(6)
    r = rng.normal(size=(200, 16)).astype(np.float32) * 4 + 7
    r = np.concatenate([r, r[:50]])
    dist, idx = kneighbors(r[:80], r, 1, block_bytes=2048)
    np.testing.assert_array_equal(dist[:, 0], 0.0)
    np.testing.assert_array_equal(idx[:, 0], np.arange(80))
