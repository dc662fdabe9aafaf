"""Cross-validation for detectors that learn from normal samples only."""

import numbers

import numpy as np
from sklearn.model_selection import BaseCrossValidator, KFold
from sklearn.utils.validation import column_or_1d

__all__ = ["NormalOnlyKFold"]


class NormalOnlyKFold(BaseCrossValidator):
    """K-fold splits whose training folds hold normal samples only.

    The normal samples (label +1) are split into ``n_splits`` folds as by
    :class:`~sklearn.model_selection.KFold`. Each split trains on all normal
    folds but one, and tests on that held-out normal fold plus every anomaly
    (label -1). That is how a detector is meant to be used: learn from good
    parts, be judged on good and bad ones, so ``GridSearchCV(...,
    scoring="roc_auc", cv=NormalOnlyKFold())`` tunes it on held-out data.

    Parameters
    ----------
    n_splits : int, default=5
        Number of folds of the normal samples, at least 2.
    shuffle : bool, default=False
        Shuffle the normal samples before splitting.
    random_state : int, RandomState instance or None, default=None
        Used when ``shuffle`` is True.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.model_selection import NormalOnlyKFold
    >>> y = np.array([1, 1, 1, 1, -1, -1])
    >>> for train, test in NormalOnlyKFold(n_splits=2).split(np.zeros(6), y):
    ...     print(train, test)
    [2 3] [0 1 4 5]
    [0 1] [2 3 4 5]
    """

    def __init__(self, n_splits=5, *, shuffle=False, random_state=None):
        if not isinstance(n_splits, numbers.Integral) or n_splits < 2:
            raise ValueError(f"n_splits must be an integer >= 2, got {n_splits!r}.")
        self.n_splits = int(n_splits)
        self.shuffle = shuffle
        self.random_state = random_state

    def split(self, X, y, groups=None):
        """Generate (train, test) index arrays.

        Parameters
        ----------
        X : array-like or list of length n_samples
            Only its length is used.
        y : array-like of shape (n_samples,)
            +1 for normal, -1 for anomalous samples.
        groups : ignored

        Yields
        ------
        train : ndarray
            Indices of normal samples only.
        test : ndarray
            Held-out normal indices followed by all anomaly indices.
        """
        if y is None:
            raise ValueError("NormalOnlyKFold needs y (+1 normal, -1 anomaly).")
        y = column_or_1d(y)
        if len(y) != len(X):
            raise ValueError(f"X has {len(X)} samples but y has {len(y)}.")
        labels = set(np.unique(y).tolist())
        if not labels <= {1, -1}:
            raise ValueError(
                f"y must hold +1 (normal) and -1 (anomaly) only, got {sorted(labels)}."
            )
        normal = np.flatnonzero(y == 1)
        anomalous = np.flatnonzero(y == -1)
        if len(normal) < self.n_splits:
            raise ValueError(
                f"Cannot make {self.n_splits} folds from {len(normal)} normal samples."
            )
        folds = KFold(self.n_splits, shuffle=self.shuffle, random_state=self.random_state)
        for train, test in folds.split(normal):
            yield normal[train], np.concatenate([normal[test], anomalous])

    def get_n_splits(self, X=None, y=None, groups=None):
        """Number of splits, ``n_splits``."""
        return self.n_splits

    def _iter_test_indices(self, X=None, y=None, groups=None):  # pragma: no cover
        raise NotImplementedError("NormalOnlyKFold defines split directly.")
