"""Greedy k-center coreset selection (PatchCore's memory-bank subsampling).

Greedy k-center picks, at each step, the point farthest from every centre
chosen so far. Its covering radius ``max_i min_j ||x_i - c_j||`` is within a
factor 2 of the optimum; random subsets are far worse on the rare patches
that matter for anomaly detection.

The textbook loop costs one matrix-vector product over all N points per
centre, which is memory-bound. Here the same sequence is computed with most
of the work in matrix-matrix products: new centres are kept *pending*, each
point keeps an upper bound of its distance to the chosen centres (exact
with respect to the centres already applied), and only a short list of the
points with the largest bounds is checked against the pending centres. The
farthest point found there is the true argmax as long as its exact distance
is at least the largest bound outside the list; otherwise (or when the
pending block is full) all pending centres are applied to all points with one
GEMM and the list is rebuilt.

Where the CPU has native bfloat16 dot products, that GEMM first runs in
bfloat16 as a screen: a row whose estimate, minus a proven rounding bound,
is not below its current bound cannot move, and only the other rows get
float32 distances, so the bounds and the sequence are those of the float32
update.

From 32,768 points on, the points are also grouped into k-means cells, and
a pending centre is applied only to the cells it may reach: by the
triangle inequality it cannot bring any point of a cell closer when its
distance to the cell's centroid, less the cell's radius, is at least the
largest bound in the cell. Bounds shrink as centres accumulate, so most
(cell, centre) pairs are skipped (on a chunk of bottle's patches, 94% of
the distances; the selection ran 2.3x faster). The rows are processed in
cell order, which changes float32 rounding: between points whose distances
are equal to float32 precision, the pick may differ from the unpruned run's
(each pick is a farthest point to that precision).
"""

import numbers

import numpy as np
import torch
from sklearn.random_projection import johnson_lindenstrauss_min_dim
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array

from .neighbors import (
    _BF16_DOT_ERROR,
    _BF16_MAX_FEATURES,
    _as_tensor,
    _native_bfloat16,
    _rows_per_block,
    kneighbors,
)

__all__ = ["covering_radius", "kcenter_greedy"]


# Distortion allowed by projection_dim="auto": the Johnson-Lindenstrauss
# bound at this eps (anomalib's choice) keeps every pairwise distance of the
# patches within a factor (1 +- eps) with high probability.
_JL_EPS = 0.9


def _projected_dim(projection_dim, n_samples, n_features):
    """Dimension the selection runs in (``n_features``: no projection)."""
    if projection_dim == "auto":
        projection_dim = johnson_lindenstrauss_min_dim(n_samples, eps=_JL_EPS)
    if projection_dim is None:
        return n_features
    return min(int(projection_dim), n_features)


def _project(X, projection_dim, rng, covered=None):
    """``X`` and ``covered`` (None stays None), by one matrix, in the selection's space."""
    projection_dim = _projected_dim(projection_dim, X.shape[0], X.shape[1])
    if projection_dim >= X.shape[1]:
        return X, covered
    # Johnson-Lindenstrauss: Gaussian projection preserves distances up to a
    # small distortion, and all later work scales with the dimension.
    R = rng.standard_normal((X.shape[1], projection_dim)).astype(np.float32)
    R /= np.sqrt(projection_dim, dtype=np.float32)
    return X @ R, (None if covered is None else covered @ R)


def _nearest_float32(Z, sq, rows, C, c_sq, out=None):
    """Squared distance of ``Z[rows]`` to its nearest row of ``C`` (float32)."""
    d2 = torch.addmm(c_sq[None, :], Z[rows], C.T, beta=1.0, alpha=-2.0, out=out)
    # Adding the row's ||z||^2 after the minimum gives the same float32
    # value as adding it first (rounding is monotone), one pass fewer.
    nearest = d2.amin(1)
    nearest += sq[rows]
    return nearest


# Below this many pending centres the float32 GEMM is cheap and most rows
# move anyway, so the bfloat16 screen would not pay.
_SCREEN_MIN_CENTRES = 64


class _BFloat16Screen:
    """A bfloat16 copy of the points that rules rows out of an update.

    Rows are centred (distances do not change, the rounding bound shrinks
    with the norms). For a row z and centre c the bfloat16 estimate of
    ``||z - c||^2`` is within ``2 e |z| |c|`` of the true value (``e``:
    :data:`~skanomaly.neighbors._BF16_DOT_ERROR`), and the float32 formula
    the update uses is within ``gamma (|z| + |c|)^2`` of it; a row whose
    estimate minus both bounds is not below its current bound cannot
    change, so only the other rows get float32 distances. The result is
    the float32 update's, value for value.
    """

    def __init__(self, Z, sq):
        centred = Z - Z.mean(0)
        self.low = centred.bfloat16()
        self.sq = (centred * centred).sum(1)
        norm, norm32 = self.sq.sqrt(), sq.sqrt()
        # Any centre is a row, so the largest norms bound |c|; the margin of
        # each row is then fixed for the whole selection.
        c_norm, c_norm32 = float(norm.max()), float(norm32.max())
        gamma = (Z.shape[1] + 4) * 2.0**-24  # float32 rounding over d terms
        self.margin = (2 * _BF16_DOT_ERROR * c_norm) * norm + gamma * (
            (norm32 + c_norm32) ** 2 + (norm + c_norm) ** 2)

    def candidates(self, rows, centres, min_d, product, block):
        """Indices (into ``rows``) of the rows the centres may bring closer."""
        torch.mm(self.low[rows], self.low[centres].T, out=product)
        block.copy_(product)
        torch.add(self.sq[centres][None, :], block, alpha=-2.0, out=block)
        estimate = block.amin(1)
        estimate += self.sq[rows]
        estimate -= self.margin[rows]
        return torch.nonzero(estimate < min_d[rows]).flatten()


def _apply_centres(Z, sq, centres, min_d, screen=None, cells=None):
    """min_d <- min(min_d, squared distance to the given centres), in place.

    With a :class:`_BFloat16Screen`, only the rows it cannot rule out get
    float32 distances (the same values as without it). With :class:`_Cells`,
    each cell of rows gets only the centres that may come closer to one of
    its rows than its current bound (the same values again).
    """
    if cells is None:
        _apply_to_rows(Z, sq, centres, min_d, screen, 0, Z.shape[0])
        return
    centres = np.asarray(centres)
    for cell, needed in cells.needed_centres(Z[centres].double(), min_d):
        _apply_to_rows(Z, sq, centres[needed].tolist(), min_d, screen,
                       int(cells.offsets[cell]), int(cells.offsets[cell + 1]))


def _apply_to_rows(Z, sq, centres, min_d, screen, first_row, end_row):
    """:func:`_apply_centres` on the rows ``first_row:end_row``."""
    C = Z[centres]
    c_sq = sq[centres]
    n = end_row - first_row
    chunk = min(_rows_per_block(len(centres)), n)
    if screen is not None and len(centres) < _SCREEN_MIN_CENTRES:
        screen = None
    # Cache-sized blocks, reused: a GEMM writes each and the row minimum
    # reads it while it is still in cache.
    block = torch.empty((chunk, len(centres)))
    product = None if screen is None else torch.empty((chunk, len(centres)), dtype=torch.bfloat16)
    for start in range(first_row, end_row, chunk):
        stop = min(start + chunk, end_row)
        if screen is None:
            rows = slice(start, stop)
            nearest = _nearest_float32(Z, sq, rows, C, c_sq, out=block[: stop - start])
        else:
            rows = start + screen.candidates(slice(start, stop), centres, min_d,
                                             product[: stop - start], block[: stop - start])
            if not len(rows):
                continue
            nearest = _nearest_float32(Z, sq, rows, C, c_sq)
        min_d[rows] = torch.minimum(min_d[rows], nearest)


# Selections from at least this many rows group them into k-means cells
# (cells.needed_centres); below it one pass over all rows is as cheap.
_CELLS_FROM_ROWS = 32_768
# Cells per square root of the rows: on a 188-image chunk of bottle's
# patches (192,512 rows, 19,251 centres), cells of this size leave about 6%
# of the (row, centre) distances to compute (4% with 4x more cells, at 4x
# the per-cell overhead).
_PRUNING_CELLS_PER_SQRT = 0.5


class _Cells:
    """The rows of ``Z`` grouped into k-means cells, to skip whole cells.

    A centre ``y`` cannot lower the bound ``min_d`` of any row ``x`` of a
    cell with centroid ``g`` and radius ``R`` (largest ``||x - g||``) when
    ``||y - g|| - R`` is at least the largest ``sqrt(min_d)`` in the cell
    (triangle inequality), with room for the float32 rounding of the
    update's distances: such (cell, centre) pairs are skipped and every
    other pair computed as before, so the bounds and the sequence are
    unchanged. As centres accumulate, bounds shrink and most pairs are
    skipped. ``order`` sorts the rows by cell (each cell is one run).
    """

    def __init__(self, Z):
        from .neighbors import ApproximateNeighbors

        n_cells = max(2, round(_PRUNING_CELLS_PER_SQRT * np.sqrt(Z.shape[0])))
        # The inverted file's k-means cells, its rows laid out by cell. A
        # fixed seed: the cells change the work done, never the result, and
        # the caller's random stream stays as without them.
        index = ApproximateNeighbors(Z.numpy(), n_cells=n_cells, random_state=0)
        self.order = index._order
        self.offsets = index._offsets
        self.rows = torch.from_numpy(index._sorted)  # the rows in cell order
        centroids = torch.from_numpy(index.cluster_centers_)
        radius, row_norm = torch.zeros(len(centroids)), torch.zeros(len(centroids))
        for cell in range(len(centroids)):
            rows = self.rows[self.offsets[cell]:self.offsets[cell + 1]]
            radius[cell] = (rows - centroids[cell]).norm(dim=1).max()
            row_norm[cell] = rows.norm(dim=1).max()
        # Computed in float32: a relative slack far above its rounding keeps
        # both at least their true values.
        self.radius = radius.double() * (1 + 1e-4)
        self.row_norm = row_norm.double() * (1 + 1e-4)
        self.centroids = centroids.double()
        self.gamma = (Z.shape[1] + 4) * 2.0**-24  # float32 rounding over d terms

    def needed_centres(self, C, min_d):
        """``(cell, positions in C)`` of every cell some centre may reach."""
        bound = torch.from_numpy(np.maximum.reduceat(min_d.numpy(), self.offsets[:-1])).double()
        lower = (torch.cdist(self.centroids, C) - self.radius[:, None]).clamp_min(0)
        # The update's float32 distance is within gamma (|x| + |y|)^2 of the
        # true one: a pair is skipped only if even that cannot go below.
        slack = self.gamma * (self.row_norm[:, None] + C.norm(dim=1)[None, :]) ** 2
        reach = lower * lower - slack < bound[:, None]
        for i in torch.nonzero(reach.any(1)).flatten().tolist():
            yield i, torch.nonzero(reach[i]).flatten().numpy()


def kcenter_greedy(
    X,
    n_centers,
    *,
    projection_dim="auto",
    block_size=512,
    n_candidates=2048,
    initial_center=None,
    covered=None,
    random_state=None,
):
    """Indices of a greedy k-center coreset of the rows of ``X``.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Points to cover.
    n_centers : int
        How many rows to select, in ``[1, n_samples]``.
    projection_dim : "auto", int or None, default="auto"
        Select on a Gaussian random projection to this many dimensions when
        ``X`` is wider (as PatchCore does); None selects in the original
        space. ``"auto"``: the Johnson-Lindenstrauss dimension that keeps
        the distances between ``n_samples`` points within a factor 1 +- 0.9
        (about 300 for 200,000 patches), so narrow features such as
        EfficientNet-Lite0's 152 are not projected and wide ones (ResNet's
        1,536) are.
    block_size : int, default=512
        Pending centres applied to all points at once (one GEMM).
    n_candidates : int, default=2048
        Length of the list of largest-bound points checked between GEMMs
        (each new centre costs one pass over the list; a list too short
        for a block ends it early).
    initial_center : int or None, default=None
        Row of the first centre; None draws it from ``random_state``.
    covered : array-like of shape (n_covered, n_features) or None, default=None
        Centres chosen before (e.g. the memory bank built from earlier
        images): the greedy continues from them, so the first row chosen is
        the one farthest from ``covered`` and no row close to it is chosen
        twice. Selecting ``X`` in chunks this way gives the sequence the
        plain greedy loop would give on all chunks with the earlier chunks'
        selections fixed. Excludes ``initial_center``.
    random_state : int, RandomState instance or None, default=None
        Seeds the first centre and the projection.

    Returns
    -------
    indices : ndarray of shape (n_centers,), int64
        Selected rows, in selection order (the same order as the plain greedy
        loop, up to ties between distances equal to float32 precision).

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.coreset import kcenter_greedy
    >>> X = np.array([[0.0], [0.1], [5.0], [10.0]])
    >>> kcenter_greedy(X, 3, random_state=0).tolist()
    [0, 3, 2]

    Continuing from centres already chosen: the row farthest from them first.

    >>> kcenter_greedy(X, 2, covered=[[0.0], [10.0]]).tolist()
    [2, 1]
    """
    X = check_array(X, dtype=np.float32, order="C")
    n_samples = X.shape[0]
    if (
        not isinstance(n_centers, numbers.Integral)
        or isinstance(n_centers, bool)
        or not 1 <= n_centers <= n_samples
    ):
        raise ValueError(
            f"n_centers must be an integer in [1, {n_samples}], got {n_centers!r}."
        )
    for name, value in (("block_size", block_size), ("n_candidates", n_candidates)):
        if not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    rng = check_random_state(random_state)
    first = int(rng.randint(n_samples))
    if covered is not None:
        if initial_center is not None:
            raise ValueError("Give initial_center or covered, not both: with covered "
                             "the first centre is the row farthest from it.")
        covered = check_array(covered, dtype=np.float32, order="C", input_name="covered")
        if covered.shape[1] != X.shape[1]:
            raise ValueError(f"covered has {covered.shape[1]} features, X has {X.shape[1]}.")
    if initial_center is not None:
        if not isinstance(initial_center, numbers.Integral) or not 0 <= initial_center < n_samples:
            raise ValueError(
                f"initial_center must be a row index in [0, {n_samples}), got {initial_center!r}."
            )
        first = int(initial_center)
    Z, covered = _project(X, projection_dim, rng, covered)
    Z = _as_tensor(Z)
    cells = None
    if n_samples >= _CELLS_FROM_ROWS:
        cells = _Cells(Z)
        # Work in cell order; indices are mapped back at the end.
        Z = cells.rows
        first = int(np.argsort(cells.order)[first])
    sq = (Z * Z).sum(1)
    screen = (_BFloat16Screen(Z, sq)
              if _native_bfloat16() and Z.shape[1] <= _BF16_MAX_FEATURES else None)
    chosen = [] if covered is not None else [first]
    pending = list(chosen)
    n_cand = min(n_candidates, n_samples)
    with torch.inference_mode():
        if covered is None:
            min_d = torch.full((n_samples,), float("inf"))
        else:
            # One nearest-neighbour search (bfloat16-ranked where the CPU has
            # it, distances exact): the squared distance to the covered rows.
            min_d = torch.from_numpy(kneighbors(Z, covered, 1)[0][:, 0]) ** 2
        while True:
            if pending:
                _apply_centres(Z, sq, pending, min_d, screen, cells)
                min_d[pending] = -1.0  # chosen points are never chosen again
            pending = []
            if len(chosen) == n_centers:
                break
            if n_cand < n_samples:
                top, cand = torch.topk(min_d, n_cand + 1)
                bound_out, cand = float(top[-1]), cand[:-1]
                tight = top[:-1].clone()
            else:
                cand = torch.arange(n_samples)
                tight, bound_out = min_d.clone(), -float("inf")
            Zc, sqc = Z[cand], sq[cand]
            while len(chosen) < n_centers and len(pending) < block_size:
                j = int(torch.argmax(tight))
                # Points outside the list are at most bound_out away from the
                # centres; below that the list cannot prove the argmax.
                if float(tight[j]) < bound_out:
                    break
                centre = int(cand[j])
                chosen.append(centre)
                pending.append(centre)
                d2 = torch.addmv(sqc + sq[centre], Zc, Z[centre], alpha=-2.0)
                torch.minimum(tight, d2, out=tight)
                tight[j] = -1.0
    chosen = np.asarray(chosen, dtype=np.int64)
    return chosen if cells is None else cells.order[chosen]


def covering_radius(X, centers):
    """Largest distance from a row of ``X`` to its nearest selected row.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
    centers : array-like of int
        Row indices of the selected points.

    Returns
    -------
    radius : float

    Examples
    --------
    >>> from skanomaly.coreset import covering_radius
    >>> covering_radius([[0.0], [1.0], [4.0]], [0, 2])
    1.0
    """
    X = check_array(X, dtype=np.float32)
    distances, _ = kneighbors(X, X[np.asarray(centers)], 1)
    return float(distances.max())
