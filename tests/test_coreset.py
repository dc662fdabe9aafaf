import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skanomaly.coreset import covering_radius, kcenter_greedy


def _plain_greedy(X, n_centers, first):
    """Textbook greedy k-center: one full distance update per centre."""
    chosen = [first]
    min_d = ((X - X[first]) ** 2).sum(1)
    for _ in range(n_centers - 1):
        nxt = int(np.argmax(min_d))
        chosen.append(nxt)
        min_d = np.minimum(min_d, ((X - X[nxt]) ** 2).sum(1))
    return chosen


@pytest.mark.parametrize("block_size, n_candidates", [(1, 1), (7, 16), (512, 8192), (64, 3)])
def test_same_sequence_as_plain_greedy(block_size, n_candidates):
    X = np.random.default_rng(1).normal(size=(600, 6)).astype(np.float32)
    got = kcenter_greedy(
        X, 80, projection_dim=None, block_size=block_size,
        n_candidates=n_candidates, random_state=3,
    )
    assert got.tolist() == _plain_greedy(X.astype(np.float64), 80, int(got[0]))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 60), k=st.integers(1, 60), seed=st.integers(0, 1000))
def test_indices_are_distinct_valid_and_deterministic(n, k, seed):
    k = min(k, n)
    X = np.random.default_rng(seed).normal(size=(n, 3))
    got = kcenter_greedy(X, k, random_state=seed, block_size=4, n_candidates=5)
    assert len(set(got.tolist())) == k and got.min() >= 0 and got.max() < n
    np.testing.assert_array_equal(got, kcenter_greedy(X, k, random_state=seed, block_size=4, n_candidates=5))


def test_duplicates_never_repeat_an_index():
    X = np.repeat(np.eye(3), 5, axis=0)
    got = kcenter_greedy(X, 10, random_state=0)
    assert len(set(got.tolist())) == 10


def test_projected_selection_covers_almost_as_well_and_beats_random():
    rng = np.random.default_rng(0)
    # A bulk of normal patches and a few rare ones, as in anomaly banks.
    X = np.concatenate([rng.normal(size=(3000, 32)), rng.normal(6, 0.3, size=(4, 32))])
    exact = covering_radius(X, kcenter_greedy(X, 150, projection_dim=None, random_state=0))
    projected = covering_radius(X, kcenter_greedy(X, 150, projection_dim=16, random_state=0))
    random = [covering_radius(X, rng.choice(len(X), 150, replace=False)) for _ in range(5)]
    assert projected <= 1.15 * exact
    assert np.median(random) > 2 * projected


def test_auto_projection_follows_the_johnson_lindenstrauss_dimension():
    from sklearn.random_projection import johnson_lindenstrauss_min_dim

    rng = np.random.default_rng(0)
    narrow = rng.normal(size=(1000, 16))  # JL dimension of 1000 points: ~170 > 16
    np.testing.assert_array_equal(
        kcenter_greedy(narrow, 50, random_state=0),
        kcenter_greedy(narrow, 50, projection_dim=None, random_state=0))
    wide = rng.normal(size=(200, 400))
    dim = johnson_lindenstrauss_min_dim(200, eps=0.9)
    assert dim < 400
    auto = kcenter_greedy(wide, 20, random_state=0)
    np.testing.assert_array_equal(auto, kcenter_greedy(wide, 20, projection_dim=dim, random_state=0))
    assert not np.array_equal(auto, kcenter_greedy(wide, 20, projection_dim=None, random_state=0))


@pytest.mark.parametrize("k", [0, 11, 2.5, True])
def test_bad_n_centers(k):
    with pytest.raises(ValueError, match="n_centers"):
        kcenter_greedy(np.zeros((10, 2)), k)


def test_nan_is_refused():
    with pytest.raises(ValueError):
        kcenter_greedy(np.full((4, 2), np.nan), 2)


def test_initial_center_starts_the_sequence():
    X = np.random.default_rng(2).normal(size=(300, 5)).astype(np.float32)
    got = kcenter_greedy(X, 40, projection_dim=None, initial_center=17)
    assert got[0] == 17
    assert got.tolist() == _plain_greedy(X.astype(np.float64), 40, 17)
    for bad in (-1, 300, 2.0):
        with pytest.raises(ValueError, match="initial_center"):
            kcenter_greedy(X, 4, initial_center=bad)


def test_covered_continues_the_plain_greedy_from_those_centres():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(400, 5)).astype(np.float32)
    covered = rng.normal(size=(30, 5)).astype(np.float32)
    got = kcenter_greedy(X, 50, projection_dim=None, covered=covered,
                         block_size=8, n_candidates=20)
    X64 = X.astype(np.float64)
    min_d = ((X64[:, None, :] - covered[None].astype(np.float64)) ** 2).sum(-1).min(1)
    expected = []
    for _ in range(50):
        nxt = int(np.argmax(min_d))
        expected.append(nxt)
        min_d = np.minimum(min_d, ((X64 - X64[nxt]) ** 2).sum(1))
    assert got.tolist() == expected


@pytest.mark.parametrize("n_features", [3, 400])  # 400: projected, with covered alike
def test_covered_rows_are_not_chosen_again(n_features):
    # Half of X duplicates the covered centres: those rows are covered already.
    rng = np.random.default_rng(5)
    covered = rng.normal(size=(20, n_features))
    fresh = rng.normal(8, 1, size=(20, n_features))
    got = kcenter_greedy(np.concatenate([covered, fresh]), 20, covered=covered)
    assert sorted(got.tolist()) == list(range(20, 40))


def test_bad_covered():
    X = np.zeros((10, 2))
    with pytest.raises(ValueError, match="covered has 3 features"):
        kcenter_greedy(X, 2, covered=np.zeros((4, 3)))
    with pytest.raises(ValueError, match="initial_center or covered"):
        kcenter_greedy(X, 2, covered=np.zeros((4, 2)), initial_center=0)


def _feature_like(n, d, seed):
    """Non-negative, offset rows as a CNN's pooled features: norms far above
    the distances between neighbours, where bfloat16 rounding matters."""
    rng = np.random.default_rng(seed)
    centres = rng.gamma(2.0, 1.0, size=(20, d))
    return (centres[rng.integers(20, size=n)] + rng.normal(0, 0.3, size=(n, d))).astype(np.float32)


def test_bfloat16_screen_never_rules_out_a_row_that_moves():
    import torch

    from skanomaly.coreset import _BFloat16Screen, _nearest_float32

    Z = torch.from_numpy(_feature_like(3000, 24, 0))
    sq = (Z * Z).sum(1)
    screen = _BFloat16Screen(Z, sq)
    centres = list(range(0, 3000, 37))
    exact = _nearest_float32(Z, sq, slice(None), Z[centres], sq[centres])
    # Bounds just above and below each row's true distance, and far above.
    for min_d in (exact * 1.001, exact * 0.999, exact + 1e-3, torch.full_like(exact, 1e9)):
        product = torch.empty((3000, len(centres)), dtype=torch.bfloat16)
        kept = screen.candidates(slice(None), centres, min_d, product, torch.empty(product.shape))
        moves = torch.nonzero(exact < min_d).flatten()
        assert set(moves.tolist()) <= set(kept.tolist())
    # It rules out something: rows already much closer than any new centre.
    kept = screen.candidates(slice(None), centres, exact * 0.5, product, torch.empty(product.shape))
    assert len(kept) < 3000


def test_bfloat16_screen_gives_the_float32_sequence(monkeypatch):
    from skanomaly import coreset

    X = _feature_like(6000, 32, 1)
    runs = {}
    for native in (False, True):
        # Forced on: bfloat16 GEMMs run (slowly) on any CPU, so the screen is
        # checked here whatever this machine has.
        monkeypatch.setattr(coreset, "_native_bfloat16", lambda native=native: native)
        runs[native] = kcenter_greedy(X, 900, random_state=0, block_size=128, n_candidates=256)
    # Value for value the float32 update's, so the very same sequence (the
    # float64 textbook loop may break this data's near-ties otherwise).
    np.testing.assert_array_equal(runs[True], runs[False])


@pytest.fixture
def cells_from_100_rows(monkeypatch):
    """Cell pruning on from 100 rows (by default from 32,768), so that small
    data exercise it; returns the (rows x centres) work it leaves."""
    from skanomaly import coreset

    monkeypatch.setattr(coreset, "_CELLS_FROM_ROWS", 100)
    work = []
    apply_to_rows = coreset._apply_to_rows

    def counted(Z, sq, centres, min_d, screen, first_row, end_row):
        work.append(len(centres) * (end_row - first_row))
        return apply_to_rows(Z, sq, centres, min_d, screen, first_row, end_row)

    monkeypatch.setattr(coreset, "_apply_to_rows", counted)
    return work


@pytest.mark.parametrize("block_size, n_candidates", [(1, 1), (7, 16), (512, 8192)])
def test_cell_pruning_keeps_the_plain_greedy_sequence(cells_from_100_rows, block_size,
                                                      n_candidates):
    X = np.random.default_rng(1).normal(size=(600, 6)).astype(np.float32)
    got = kcenter_greedy(X, 80, projection_dim=None, block_size=block_size,
                         n_candidates=n_candidates, random_state=3)
    assert got.tolist() == _plain_greedy(X.astype(np.float64), 80, int(got[0]))
    X = np.random.default_rng(2).normal(size=(300, 5)).astype(np.float32)
    assert kcenter_greedy(X, 40, projection_dim=None, initial_center=17).tolist() == \
        _plain_greedy(X.astype(np.float64), 40, 17)
    test_covered_continues_the_plain_greedy_from_those_centres()  # with cells now


def test_cell_pruning_skips_most_distances_and_each_pick_is_farthest(cells_from_100_rows):
    X = _feature_like(6000, 16, 3)
    got = kcenter_greedy(X, 1500, random_state=0, block_size=64, n_candidates=256)
    assert len(set(got.tolist())) == 1500
    # Far fewer (row, centre) distances than one pass of every row per centre.
    assert sum(cells_from_100_rows) < 0.5 * 6000 * 1500
    # Each pick is a farthest row from the earlier picks, up to float32
    # rounding between near-equal distances (float64 check on some steps).
    X64 = X.astype(np.float64)
    min_d = ((X64 - X64[got[0]]) ** 2).sum(1)
    for step in range(1, 1500):
        if step % 97 == 0:
            assert min_d[got[step]] >= min_d.max() * (1 - 1e-5)
        min_d = np.minimum(min_d, ((X64 - X64[got[step]]) ** 2).sum(1))
