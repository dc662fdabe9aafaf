import numpy as np
import pytest
from scipy.spatial.distance import cdist

from skanomaly.neighbors import kneighbors


@pytest.mark.parametrize("k", [1, 4])
def test_matches_brute_force(k):
    rng = np.random.default_rng(0)
    q, r = rng.normal(size=(300, 9)), rng.normal(size=(50, 9))
    # A tiny block forces many chunks.
    dist, idx = kneighbors(q, r, k, block_bytes=1000)
    full = cdist(q, r)
    expected = np.sort(full, axis=1)[:, :k]
    np.testing.assert_allclose(dist, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.take_along_axis(full, idx, 1), expected, rtol=1e-4, atol=1e-4)


def test_errors():
    with pytest.raises(ValueError, match="equal widths"):
        kneighbors(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="n_neighbors"):
        kneighbors(np.zeros((2, 3)), np.zeros((2, 3)), 3)
