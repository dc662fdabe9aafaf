"""Exact nearest neighbours as chunked matrix products.

Distances use ``||a||^2 - 2 a.b + ||b||^2`` so the work is one GEMM per
chunk; the chunk size bounds memory by the ``(chunk, m)`` distance block,
never by the number of queries.
"""

import numpy as np
import torch

__all__ = ["kneighbors"]

# Bytes of the float32 distance block one chunk may hold.
_BLOCK_BYTES = 64 * 2**20


def _as_tensor(X):
    """float32 tensor sharing memory with X where possible (read-only X is copied)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    if not X.flags.writeable:
        X = X.copy()
    return torch.from_numpy(X)


def _squared_distances(queries, reference, reference_sq):
    d2 = torch.addmm(
        reference_sq[None, :], queries, reference.T, beta=1.0, alpha=-2.0
    )
    d2 += (queries * queries).sum(1, keepdim=True)
    return d2.clamp_(min=0.0)


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
    block_bytes : int, default=64 MiB
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
    chunk = max(1, block_bytes // (4 * m))
    distances = np.empty((q.shape[0], n_neighbors), dtype=np.float32)
    indices = np.empty((q.shape[0], n_neighbors), dtype=np.int64)
    with torch.inference_mode():
        for start in range(0, q.shape[0], chunk):
            d2 = _squared_distances(q[start:start + chunk], r, r_sq)
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
