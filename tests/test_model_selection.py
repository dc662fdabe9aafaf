import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skanomaly.model_selection import NormalOnlyKFold


@settings(max_examples=50, deadline=None)
@given(
    n_normal=st.integers(3, 40),
    n_anomalous=st.integers(0, 20),
    n_splits=st.integers(2, 3),
    seed=st.integers(0, 100),
)
def test_folds_train_on_normals_and_test_on_the_rest(n_normal, n_anomalous, n_splits, seed):
    y = np.r_[np.ones(n_normal, int), -np.ones(n_anomalous, int)]
    y = np.random.default_rng(seed).permutation(y)
    cv = NormalOnlyKFold(n_splits, shuffle=True, random_state=seed)
    splits = list(cv.split(np.zeros(len(y)), y))
    assert len(splits) == cv.get_n_splits() == n_splits
    held_out = []
    for train, test in splits:
        assert (y[train] == 1).all()
        assert not set(train) & set(test)
        assert set(np.flatnonzero(y == -1)) <= set(test)
        held_out.extend(i for i in test if y[i] == 1)
    assert sorted(held_out) == np.flatnonzero(y == 1).tolist()


def test_errors():
    with pytest.raises(ValueError, match="n_splits"):
        NormalOnlyKFold(1)
    cv = NormalOnlyKFold(2)
    with pytest.raises(ValueError, match=r"\+1 \(normal\)"):
        list(cv.split(np.zeros(4), [0, 1, 0, 1]))
    with pytest.raises(ValueError, match="needs y"):
        list(cv.split(np.zeros(4), None))
    with pytest.raises(ValueError, match="2 folds from 1"):
        list(cv.split(np.zeros(3), [1, -1, -1]))
