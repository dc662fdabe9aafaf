"""Exact nearest neighbours as chunked matrix products.

Distances use ``||a||^2 - 2 a.b + ||b||^2`` so the work is one GEMM per
chunk; the chunk size bounds memory by the ``(chunk, m)`` distance block,
never by the number of queries.

On CPUs with native bfloat16 dot products (AVX512-BF16), the nearest
neighbour (``n_neighbors=1``) is found with a bfloat16 GEMM, about three
times faster than float32, and stays exact: the GEMM only narrows each
query's candidates to the rows whose rank is within a proven rounding
bound of the best, and the candidates' true distances pick the neighbour.
"""

import functools

import numpy as np
import torch

__all__ = ["ApproximateNeighbors", "kneighbors"]

# Bytes of the float32 distance block one chunk may hold: small enough to stay
# in cache between the GEMM that writes it and the argmin that reads it (the
# search is memory-bound otherwise), at least 64 rows for an efficient GEMM.
_BLOCK_BYTES = 16 * 2**20
_MIN_CHUNK = 64


def _rows_per_block(width, block_bytes=_BLOCK_BYTES, itemsize=4):
    """Rows of a ``(rows, width)`` block (float32 unless told) that fit in ``block_bytes``."""
    return max(_MIN_CHUNK, block_bytes // (itemsize * width))


def _as_tensor(X):
    """float32 tensor sharing memory with X where possible (read-only X is copied)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    if not X.flags.writeable:
        X = X.copy()
    return torch.from_numpy(X)


# bfloat16 keeps 8 significant bits: unit roundoff u = 2^-8. For the dot
# product of two rounded vectors, accumulated in float32 and rounded back to
# bfloat16 (what every CPU bfloat16 GEMM does):
#   |computed - q.r| <= (2u + u^2) sum|q_i r_i| + gamma_d sum|q~_i r~_i| + u |q~.r~|
#                    <= (3u + 3u^2 + gamma_d (1 + u)^2 + ...) |q| |r|,
# with gamma_d = d 2^-24 from the float32 sum (< 1e-4 for d < 1600). The
# constant below rounds that up with room to spare.
_BF16_DOT_ERROR = 3 * 2.0**-8 + 2.0**-11
_BF16_MAX_FEATURES = 1600
# The search's GEMM returns whole squared distances (see
# _augmented_for_distances), so its error has three parts. -2 q.r from
# rounded inputs: 2 (2u + u^2) |q| |r|, plus the float32 sum's gamma_d
# (1 + u)^2 |q| |r|, together below _BF16_DISTANCE_ERROR |q| |r|. The
# float32 parts (the norms, their bfloat16 hi + lo split, u^2, the centring,
# and the sum over the norm columns): below _F32_NORM_ERROR times
# (max |r|^2 + 2 |q|^2 + offset). The output's own rounding: u |value|.
_BF16_UNIT = 2.0**-8
_BF16_DISTANCE_ERROR = 4 * _BF16_UNIT + 2.0**-11
_F32_NORM_ERROR = 2.0**-12
# Candidates one query may have before it is ranked in float32 instead.
_MAX_CANDIDATES = 4096
# Consecutive columns per group of the candidate scan (_candidates).
_GROUP_COLUMNS = 64


@functools.cache
def _native_bfloat16():
    """Whether this CPU computes bfloat16 dot products natively (fast)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # older torch
        return False


def _pair_distances(queries, reference):
    """Row-wise ``||q_i - r_i||``: subtraction first, so no cancellation, and
    the same float32 value for a pair whatever else is searched with it."""
    return torch.linalg.vector_norm(queries - reference, dim=-1)


def _bfloat16_keys_up(values):
    """int16 keys of ``values`` (float64, >= 0) rounded up to bfloat16.

    Non-negative bfloat16 numbers order as their int16 bit patterns, so a
    comparison with these keys is a comparison with the values.
    """
    single = values.astype(np.float32)
    single = np.where(single < values, np.nextafter(single, np.float32(np.inf)), single)
    bits = single.view(np.uint32)
    keys = (bits >> 16) + ((bits & 0xFFFF) != 0)
    return np.minimum(keys, 0x7F80).astype(np.int16)  # 0x7F80: +inf


def _augmented_for_distances(q_centred, r_centred, r_sq, n_rows=None):
    """bfloat16 operands whose product is each pair's squared distance.

    ``[q, 1, 1, c_q] . [-2 r, hi(|r|^2), lo(|r|^2), 1] = c_q + |r|^2 - 2 q.r``,
    with ``|r|^2`` split in two bfloat16 parts so it keeps float32's
    precision, and ``c_q >= |q|^2 + offset`` rounded up: every computed value
    is then positive (the offset exceeds the error) and ranks as the squared
    distance. One GEMM leaves nothing to add before the row minimum and the
    candidate test, which read its bfloat16 output directly. The reference
    operand has ``n_rows`` rows (default: one per reference): those past the
    references are at 2^100 from every query, never a candidate. Returns the
    two operands and each query's error bound (module notes).
    """
    n, d = q_centred.shape
    width = d + 3 + (d + 3) % 2  # even: bfloat16 GEMMs take pairs
    q_sq = (q_centred * q_centred).sum(1).double()
    s_max = float(r_sq.max())
    bound = (_BF16_DISTANCE_ERROR * s_max**0.5) * q_sq.sqrt() + _F32_NORM_ERROR * (s_max + 2 * q_sq)
    offset = (4 * bound).clamp(min=1e-30)
    bound = bound * (1 + 2.0**-9)  # the offset's own share of the float32 sum
    queries = torch.zeros((n, width), dtype=torch.bfloat16)
    queries[:, :d] = q_centred
    queries[:, d:d + 2] = 1
    queries[:, d + 2] = torch.from_numpy(_bfloat16_keys_up((q_sq + offset).numpy())).view(
        torch.bfloat16)
    m = len(r_centred)
    reference = torch.zeros((m if n_rows is None else n_rows, width), dtype=torch.bfloat16)
    reference[:m, :d] = -2 * r_centred  # scaling by 2 commutes with rounding
    high = r_sq.bfloat16()
    reference[:m, d] = high
    reference[:m, d + 1] = r_sq - high.float()
    reference[m:, d] = 2.0**100
    reference[:, d + 2] = 1
    return queries, reference, bound.numpy()


def _candidates(grouped, group_min, limits):
    """(rows, cols) of the entries of an (n, m) key block at most their
    row's limit, rows ascending and columns ascending within a row.

    ``grouped`` is the block viewed as (n, m // g, g): column j in group
    j // g, and ``group_min`` each group's minimum (one vectorised pass). Only the few groups whose minimum is within the limit are looked
    at entry by entry, instead of scanning an (n, m) mask.
    """
    n, groups, width = grouped.shape
    rows, group = np.divmod(np.flatnonzero(group_min <= limits[:, None]), groups)
    inside, step = np.nonzero(grouped[rows, group] <= limits[rows, None])
    # Groups ascend within each row, so the columns do too.
    return rows[inside], group[inside] * width + step


def _nearest_bfloat16(q, r, block_bytes):
    """Exact nearest neighbour of each row of q among the rows of r.

    Rows are centred on the reference mean (distances do not change, the
    rounding bound shrinks with the norms) and a bfloat16 GEMM computes
    every squared distance to within a proven bound e (plus u of the value);
    every reference whose computed value could still be the row's true best
    is a candidate, and the candidate at the smallest true distance wins
    (lowest index on ties).
    """
    m = r.shape[0]
    mean = r.mean(0)
    centred = r - mean
    r_sq = (centred * centred).sum(1)
    # Whole groups of _GROUP_COLUMNS columns (see _candidates): the reference
    # is padded with rows that are never a candidate.
    groups = -(-m // _GROUP_COLUMNS)
    queries, reference, bound = _augmented_for_distances(q - mean, centred, r_sq,
                                                         groups * _GROUP_COLUMNS)
    # The bfloat16 block takes block_bytes: twice the float32 path's rows,
    # half the Python steps per query (about a sixth less time on a bottle
    # bank than at half the rows).
    chunk = _rows_per_block(len(reference), block_bytes, itemsize=2)
    rows_in_chunk = min(chunk, q.shape[0])
    # Buffers reused across chunks: fresh (chunk, m) blocks would cost page
    # faults comparable to the GEMM itself.
    product = torch.empty((rows_in_chunk, len(reference)), dtype=torch.bfloat16)
    keys = product.view(torch.int16)
    group_min_buffer = torch.empty((rows_in_chunk, groups), dtype=torch.int16)
    distances = np.empty(q.shape[0], dtype=np.float32)
    indices = np.empty(q.shape[0], dtype=np.int64)
    u = _BF16_UNIT
    for start in range(0, q.shape[0], chunk):
        stop = min(start + chunk, q.shape[0])
        n = stop - start
        torch.mm(queries[start:stop], reference.T, out=product[:n])
        grouped = keys[:n].view(n, groups, _GROUP_COLUMNS)
        # torch reduces short rows with vector instructions and threads,
        # numpy one row at a time.
        group_min = torch.amin(grouped, dim=2, out=group_min_buffer[:n]).numpy()
        lowest = (group_min.min(1).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        # A row j is a candidate unless v_j - e - 2u v_j > v_min + e + 2u v_min,
        # i.e. unless its value exceeds this threshold (values are positive).
        threshold = (lowest * (1 + 2 * u) + 2 * bound[start:stop]) / (1 - 2 * u)
        rows, cols = _candidates(grouped.numpy(), group_min,
                                 _bfloat16_keys_up(threshold * (1 + 2.0**-20)))
        keep = cols < m
        rows, cols = rows[keep], cols[keep]
        # Many near-equal rows (an uncompressed bank of flat background) can
        # make a query's candidates numerous; such queries take the float32
        # ranking instead, so time and memory stay bounded.
        crowded = np.bincount(rows, minlength=n) > _MAX_CANDIDATES
        if crowded.any():
            keep = ~crowded[rows]
            rows, cols = rows[keep], cols[keep]
            where = np.flatnonzero(crowded)
            d, i = _kneighbors_float32(q[start + where], r, 1, block_bytes)
            distances[start + where], indices[start + where] = d[:, 0], i[:, 0]
        if not len(rows):
            continue
        exact = np.empty(len(rows), dtype=np.float32)
        step = max(1, block_bytes // (8 * q.shape[1]))
        for at in range(0, len(rows), step):
            part = slice(at, at + step)
            exact[part] = _pair_distances(q[start + rows[part]], r[cols[part]]).numpy()
        # rows ascend; each row left has a candidate (its computed best).
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        best = np.minimum.reduceat(exact, starts)
        winners = np.flatnonzero(exact == np.repeat(best, np.diff(np.r_[starts, len(rows)])))
        first = winners[np.r_[True, rows[winners][1:] != rows[winners][:-1]]]
        distances[start + rows[starts]] = best
        indices[start + rows[starts]] = cols[first]
    return distances[:, None], indices[:, None]


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

    Notes
    -----
    With ``n_neighbors=1`` on a CPU with native bfloat16 dot products the
    ranking GEMM runs in bfloat16 and the result is still the exact nearest
    row (see the module notes); elsewhere the ranking is float32, centred on
    the reference mean. Returned distances are always computed directly,
    ``||q - r||`` in float32, so a query gets the same answer in any batch.

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
    if n_neighbors == 1 and _native_bfloat16() and r.shape[1] <= _BF16_MAX_FEATURES:
        with torch.inference_mode():
            return _nearest_bfloat16(q, r, block_bytes)
    with torch.inference_mode():
        return _kneighbors_float32(q, r, n_neighbors, block_bytes)


def _kneighbors_float32(q, r, n_neighbors=1, block_bytes=_BLOCK_BYTES):
    """kneighbors on float32 tensors through a float32 ranking GEMM."""
    q, r = torch.as_tensor(q), torch.as_tensor(r)
    m = r.shape[0]
    # Centring does not move distances but shrinks the norms whose
    # cancellation in ||r||^2 - 2 q.r limits the ranking's resolution.
    mean = r.mean(0)
    q_centred, r_centred = q - mean, r - mean
    r_sq = (r_centred * r_centred).sum(1)
    chunk = _rows_per_block(m, block_bytes)
    distances = np.empty((q.shape[0], n_neighbors), dtype=np.float32)
    indices = np.empty((q.shape[0], n_neighbors), dtype=np.int64)
    for start in range(0, q.shape[0], chunk):
        d2 = _ranking_distances(q_centred[start:start + chunk], r_centred, r_sq)
        if n_neighbors == 1:
            index = d2.argmin(dim=1, keepdim=True)
        else:
            index = torch.topk(d2, n_neighbors, dim=1, largest=False).indices
        # The GEMM finds the neighbours; their distances are recomputed
        # directly, which is exact (no cancellation) and independent of how
        # queries are batched, so a sample scores the same in any batch.
        exact = _pair_distances(q[start:start + len(d2), None, :], r[index])
        exact, order = exact.sort(dim=1)
        distances[start:start + len(d2)] = exact.numpy()
        indices[start:start + len(d2)] = torch.gather(index, 1, order).numpy()
    return distances, indices


# Inverted file: cells per reference row count (n_cells = _CELLS_PER_SQRT *
# sqrt(m)) balance the two costs of a query, comparing it with every cell
# centre (~ n_cells) and with the rows of its probed cells (~ m / n_cells).
_CELLS_PER_SQRT = 2
# k-means: Lloyd iterations, on at most this many sampled rows per cell.
_KMEANS_ITERATIONS = 10
_KMEANS_ROWS_PER_CELL = 64


def _kmeans(points, n_cells, generator):
    """Centres of a Lloyd k-means on ``points`` (torch float32), seeded rows."""
    centres = points[torch.randperm(len(points), generator=generator)[:n_cells]].clone()
    for _ in range(_KMEANS_ITERATIONS):
        _, label = _kneighbors_float32(points, centres, 1)
        label = torch.from_numpy(label[:, 0])
        counts = torch.bincount(label, minlength=n_cells).to(points.dtype)
        sums = torch.zeros_like(centres).index_add_(0, label, points)
        filled = counts > 0
        # An empty cell keeps its centre (a data row): it may fill later.
        centres[filled] = sums[filled] / counts[filled, None]
    return centres


class ApproximateNeighbors:
    """Approximate nearest-neighbour index: an inverted file over k-means cells.

    For memory banks too large for exact search at the needed speed. The
    reference rows are grouped into ``n_cells`` cells by a k-means (a few
    Lloyd iterations on a sample); a query is compared with every cell centre
    and then, exactly, with the rows of its ``n_probe`` nearest cells. The
    returned distances are true distances (to possibly not the nearest rows),
    so an approximation can only overestimate a distance. Plain torch matrix
    products: no compilation step, the first query is as fast as the next.

    Parameters
    ----------
    reference : array-like of shape (m, d)
        Points to search among.
    n_cells : int or "auto", default="auto"
        Number of k-means cells; ``"auto"`` takes ``2 * sqrt(m)``, which
        balances comparing a query with the centres and with the probed rows.
    n_probe : int, default=8
        Cells searched per query (more: better recall, slower).
    random_state : int, RandomState instance or None, default=None
        Seeds the k-means initialisation and sample.

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_cells, d)
        The cell centres.
    cell_sizes_ : ndarray of shape (n_cells,)
        Reference rows per cell.
    n_clustered_ : int
        Reference rows the cells were clustered on (rows given later to
        ``add`` are not counted).

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

    def __init__(self, reference, *, n_cells="auto", n_probe=8, random_state=None):
        from sklearn.utils import check_random_state

        reference = np.ascontiguousarray(reference, dtype=np.float32)
        if reference.ndim != 2 or len(reference) < 2:
            raise ValueError(
                f"reference must be 2D with at least 2 rows, got shape {reference.shape}."
            )
        m = len(reference)
        if n_cells == "auto":
            n_cells = round(_CELLS_PER_SQRT * np.sqrt(m))
        if not (isinstance(n_cells, (int, np.integer)) and 1 <= n_cells <= m):
            raise ValueError(f"n_cells must be 'auto' or an int in [1, {m}], got {n_cells!r}.")
        if not (isinstance(n_probe, (int, np.integer)) and n_probe >= 1):
            raise ValueError(f"n_probe must be a positive int, got {n_probe!r}.")
        seed = check_random_state(random_state).randint(np.iinfo(np.int32).max)
        generator = torch.Generator().manual_seed(int(seed))
        points = torch.from_numpy(reference)
        sample = points
        if m > _KMEANS_ROWS_PER_CELL * n_cells:
            sample = points[torch.randperm(m, generator=generator)[:_KMEANS_ROWS_PER_CELL * n_cells]]
        with torch.inference_mode():
            centres = _kmeans(sample, int(n_cells), generator)
            _, label = _kneighbors_float32(points, centres, 1)
        label = label[:, 0]
        sizes = np.bincount(label, minlength=len(centres))
        filled = sizes > 0
        self.cluster_centers_ = centres.numpy()[filled]
        self.n_probe = min(int(n_probe), len(self.cluster_centers_))
        self.n_clustered_ = m
        self._set_cells(sizes[filled])
        # Rows sorted by cell, so each cell is one contiguous block.
        self._order = np.argsort(label, kind="stable")
        self._sorted = reference[self._order]
        # Squared row norms of the ranking GEMM, once: every query reads them.
        self._sorted_sq = np.einsum("ij,ij->i", self._sorted, self._sorted)

    def _set_cells(self, sizes):
        self.cell_sizes_ = sizes
        self._offsets = np.r_[0, np.cumsum(sizes)]
        # Any query's probed cells hold at least this many rows.
        self._min_candidates = int(np.sort(sizes)[:self.n_probe].sum())

    def add(self, rows):
        """Add reference rows to the cells of their nearest centres, without
        clustering again.

        The added rows are numbered after the existing ones (``kneighbors``
        answers ``len(reference) + i`` for the i-th). Cells grow, so a query
        compares more rows; build a new index once the reference has grown
        well past the ``n_clustered_`` rows it was clustered on.

        Parameters
        ----------
        rows : array-like of shape (k, d)

        Returns
        -------
        self : ApproximateNeighbors

        Examples
        --------
        >>> import numpy as np
        >>> from skanomaly.neighbors import ApproximateNeighbors
        >>> ref = np.random.default_rng(0).normal(size=(500, 8)).astype(np.float32)
        >>> index = ApproximateNeighbors(ref[:400], random_state=0).add(ref[400:])
        >>> index.kneighbors(ref[[0, 450]], 1)[1][:, 0].tolist()
        [0, 450]
        """
        d = self._sorted.shape[1]
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != d:
            raise ValueError(f"rows must be 2D with {d} columns, got shape {rows.shape}.")
        with torch.inference_mode():
            _, cell = _kneighbors_float32(rows, self.cluster_centers_, 1)
        by_cell = np.argsort(cell[:, 0], kind="stable")
        n_old, old_offsets = len(self._sorted), self._offsets
        added = np.bincount(cell[:, 0], minlength=len(self.cluster_centers_))
        new_starts = np.r_[0, np.cumsum(added)]
        self._set_cells(self.cell_sizes_ + added)
        parts = [(self._sorted, rows[by_cell]), (self._order, n_old + by_cell),
                 (self._sorted_sq, np.einsum("ij,ij->i", rows, rows)[by_cell])]
        laid = [np.empty((self._offsets[-1],) + old.shape[1:], old.dtype) for old, _ in parts]
        # Cell by cell, its old rows then its new ones: block copies, each
        # array allocated once (a bank of 100,000s of rows is costly to copy).
        for c in np.flatnonzero(self.cell_sizes_):
            at, old_lo, old_hi = self._offsets[c], old_offsets[c], old_offsets[c + 1]
            mid = at + old_hi - old_lo
            for out, (old, new) in zip(laid, parts):
                out[at:mid] = old[old_lo:old_hi]
                out[mid:self._offsets[c + 1]] = new[new_starts[c]:new_starts[c + 1]]
        self._sorted, self._order, self._sorted_sq = laid
        return self

    def _share_rows(self):
        """The reference rows in the index's cell order, and from now on the
        index's answers as rows of that array: a caller that keeps it instead
        of its own copy holds the rows once."""
        self._order = np.arange(len(self._sorted))
        return self._sorted

    def kneighbors(self, queries, n_neighbors=1):
        """Distances and indices of (approximately) nearest reference rows.

        Parameters
        ----------
        queries : array-like of shape (n, d)
        n_neighbors : int, default=1
            At most the number of rows the ``n_probe`` smallest cells hold.

        Returns
        -------
        distances : ndarray of shape (n, n_neighbors), float32
            Exact distances to the returned rows, ascending.
        indices : ndarray of shape (n, n_neighbors), int64
        """
        d = self._sorted.shape[1]
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != d:
            raise ValueError(f"queries must be 2D with {d} columns, got {q.shape}.")
        if not 1 <= n_neighbors <= self._min_candidates:
            raise ValueError(
                f"n_neighbors must be in [1, {self._min_candidates}] (the rows of the "
                f"n_probe={self.n_probe} smallest cells), got {n_neighbors}."
            )
        with torch.inference_mode():
            qt, ref = torch.from_numpy(q), torch.from_numpy(self._sorted)
            ref_sq = torch.from_numpy(self._sorted_sq)
            _, probe = _kneighbors_float32(q, self.cluster_centers_, self.n_probe)
            # (query, cell) pairs grouped by cell: one matrix product per cell.
            cells = probe.ravel()
            pairs = np.argsort(cells, kind="stable")
            owner = torch.from_numpy(pairs // self.n_probe)
            bounds = np.searchsorted(cells[pairs], np.arange(len(self.cell_sizes_) + 1))
            best = torch.full((len(q), n_neighbors), float("inf"))
            best_idx = torch.zeros((len(q), n_neighbors), dtype=torch.int64)
            for cell in np.flatnonzero(np.diff(bounds)):
                who = owner[bounds[cell]:bounds[cell + 1]]
                lo, hi = int(self._offsets[cell]), int(self._offsets[cell + 1])
                rank = _ranking_distances(qt[who], ref[lo:hi], ref_sq[lo:hi])
                k = min(n_neighbors, hi - lo)
                value, where = rank.topk(k, dim=1, largest=False)
                value = torch.cat([best[who], value], 1)
                where = torch.cat([best_idx[who], where + lo], 1)
                value, pick = value.topk(n_neighbors, dim=1, largest=False)
                best[who], best_idx[who] = value, torch.gather(where, 1, pick)
            # As in kneighbors: exact distances, independent of batching.
            exact = _pair_distances(qt[:, None, :], ref[best_idx])
            exact, order = exact.sort(dim=1)
            found = torch.gather(best_idx, 1, order).numpy()
        return exact.numpy(), self._order[found]
