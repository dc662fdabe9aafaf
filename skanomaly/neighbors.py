"""Exact nearest neighbours as chunked matrix products.

Distances use ``||a||^2 - 2 a.b + ||b||^2`` so the work is one GEMM per
chunk; the chunk size bounds memory by the ``(chunk, m)`` distance block,
never by the number of queries.
"""

import numpy as np
import torch

__all__ = ["ApproximateNeighbors", "kneighbors"]

# Bytes of the float32 distance block one chunk may hold: small enough to stay
# in cache between the GEMM that writes it and the argmin that reads it (the
# search is memory-bound otherwise), at least 64 rows for an efficient GEMM.
_BLOCK_BYTES = 16 * 2**20
_MIN_CHUNK = 64


def _as_tensor(X):
    """float32 tensor sharing memory with X where possible (read-only X is copied)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    if not X.flags.writeable:
        X = X.copy()
    return torch.from_numpy(X)


def _ranking_distances(queries, reference, reference_sq):
    """``||r||^2 - 2 q.r``: each row ranks the references as the squared
    distance does (it lacks only the row's constant ``||q||^2``)."""
    return torch.addmm(reference_sq[None, :], queries, reference.T, beta=1.0, alpha=-2.0)


def kneighbors(queries, reference, n_neighbors=1, *, block_bytes=_BLOCK_BYTES):
    """Euclidean distances and indices of each query's nearest reference rows.

    Parameters
    ----------
    queries : array-like of shape (n, d)
        Points to look up.
    reference : array-like of shape (m, d)
        Points to search among.
    n_neighbors : int, default=1
        How many neighbours per query; at most ``m``.
    block_bytes : int, default=16 MiB
        Memory the per-chunk distance block may take.

    Returns
    -------
    distances : ndarray of shape (n, n_neighbors), float32
        Sorted ascending.
    indices : ndarray of shape (n, n_neighbors), int64
        Rows of ``reference``.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.neighbors import kneighbors
    >>> dist, idx = kneighbors([[0.0, 0.0]], [[3.0, 4.0], [1.0, 0.0]])
    >>> dist.tolist(), idx.tolist()
    ([[1.0]], [[1]])
    """
    q = _as_tensor(queries)
    r = _as_tensor(reference)
    if q.ndim != 2 or r.ndim != 2 or q.shape[1] != r.shape[1]:
        raise ValueError(
            f"queries and reference must be 2D with equal widths, got {tuple(q.shape)} "
            f"and {tuple(r.shape)}."
        )
    m = r.shape[0]
    if not 1 <= n_neighbors <= m:
        raise ValueError(f"n_neighbors must be in [1, {m}], got {n_neighbors}.")
    r_sq = (r * r).sum(1)
    chunk = max(_MIN_CHUNK, block_bytes // (4 * m))
    distances = np.empty((q.shape[0], n_neighbors), dtype=np.float32)
    indices = np.empty((q.shape[0], n_neighbors), dtype=np.int64)
    with torch.inference_mode():
        for start in range(0, q.shape[0], chunk):
            d2 = _ranking_distances(q[start:start + chunk], r, r_sq)
            if n_neighbors == 1:
                index = d2.argmin(dim=1, keepdim=True)
            else:
                index = torch.topk(d2, n_neighbors, dim=1, largest=False).indices
            # The GEMM finds the neighbours; their distances are recomputed
            # directly, which is exact (no cancellation) and independent of how
            # queries are batched, so a sample scores the same in any batch.
            diff = q[start:start + len(d2), None, :] - r[index]
            exact = torch.linalg.vector_norm(diff, dim=2)
            exact, order = exact.sort(dim=1)
            distances[start:start + len(d2)] = exact.numpy()
            indices[start:start + len(d2)] = torch.gather(index, 1, order).numpy()
    return distances, indices


class ApproximateNeighbors:
    """Approximate nearest-neighbour index (NN-descent graph, via pynndescent).

    For memory banks too large for exact search at the needed speed: the
    graph proposes ``n_candidates`` neighbours per query, whose distances are
    then computed exactly, so returned distances are true distances (to
    possibly not the nearest rows). Building costs a few seconds per 100k
    rows plus, once per process, numba's compilation (~30 s); it pays off
    for banks of hundreds of thousands of rows.

    Parameters
    ----------
    reference : array-like of shape (m, d)
        Points to search among.
    n_candidates : int, default=10
        Neighbours asked of the graph per query (more: better recall, slower).
    random_state : int or None, default=None
        Seeds the graph construction.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.neighbors import ApproximateNeighbors
    >>> ref = np.random.default_rng(0).normal(size=(500, 8)).astype(np.float32)
    >>> index = ApproximateNeighbors(ref, random_state=0)
    >>> dist, idx = index.kneighbors(ref[:3], 1)
    >>> idx[:, 0].tolist()
    [0, 1, 2]
    """

    def __init__(self, reference, *, n_candidates=10, random_state=None):
        from pynndescent import NNDescent

        self.reference = np.ascontiguousarray(reference, dtype=np.float32)
        if self.reference.ndim != 2 or len(self.reference) < 2:
            raise ValueError(
                f"reference must be 2D with at least 2 rows, got shape {self.reference.shape}."
            )
        self.n_candidates = min(int(n_candidates), len(self.reference))
        self._index = NNDescent(
            self.reference, metric="euclidean",
            n_neighbors=min(30, len(self.reference) - 1),
            random_state=random_state, low_memory=True, n_jobs=1,
        )
        self._index.prepare()

    def kneighbors(self, queries, n_neighbors=1):
        """Distances and indices of (approximately) nearest reference rows.

        Parameters
        ----------
        queries : array-like of shape (n, d)
        n_neighbors : int, default=1
            At most ``n_candidates``.

        Returns
        -------
        distances : ndarray of shape (n, n_neighbors), float32
            Exact distances to the returned rows, ascending.
        indices : ndarray of shape (n, n_neighbors), int64
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.reference.shape[1]:
            raise ValueError(
                f"queries must be 2D with {self.reference.shape[1]} columns, got {q.shape}."
            )
        if not 1 <= n_neighbors <= self.n_candidates:
            raise ValueError(f"n_neighbors must be in [1, {self.n_candidates}], got {n_neighbors}.")
        candidates, _ = self._index.query(q, k=self.n_candidates)
        candidates = candidates.astype(np.int64)
        # As in kneighbors: exact distances, independent of batching.
        with torch.inference_mode():
            diff = torch.from_numpy(q)[:, None, :] - torch.from_numpy(self.reference)[candidates]
            exact = torch.linalg.vector_norm(diff, dim=2)
            exact, order = exact.sort(dim=1)
        order = order.numpy()[:, :n_neighbors]
        return exact.numpy()[:, :n_neighbors], np.take_along_axis(candidates, order, 1)
