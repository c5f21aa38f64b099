"""Shape geometry of every label at once: convex hulls of pixel centres, Feret diameters,
minimum enclosing circles and Zernike moments.

These work on the row runs of a label image (see :mod:`.features`): for each label,
the leftmost and rightmost pixel of each of its rows are all a convex hull needs, and
any polynomial of the pixel coordinates sums over a run in closed form. So a Zernike
moment costs a few operations per run, not per pixel.

Definitions follow CellProfiler 4 (``centrosome``): hulls and circles are those of
the pixel centres, Zernike moments are taken in the label's minimum enclosing
circle with the polynomials of Boland et al. (1998), and the score of ``(n, m)`` is
``|sum over pixels of R_nm(r) exp(-i m theta)| / (pi radius^2)``.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from functools import lru_cache
from math import comb, factorial, sqrt

import numpy as np

__all__ = [
    "Hulls",
    "feret_diameters",
    "hulls_of_runs",
    "minimum_enclosing_circles",
    "zernike_indexes",
    "zernike_scores",
]


@dataclass(frozen=True)
class Hulls:
    """Convex hull vertices of the pixel centres of ``n`` labels.

    ``y`` and ``x`` hold every label's vertices in order around the hull (no
    repeats; one or two vertices for a point or a segment), label after label;
    ``start[k]`` is where label ``k``'s vertices begin and ``count[k]`` how many.
    """

    y: np.ndarray
    x: np.ndarray
    start: np.ndarray
    count: np.ndarray

    @property
    def n(self) -> int:
        return int(self.count.size)

    def padded(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vertices as ``(n, m)`` arrays (``m`` = most vertices), and a validity mask."""
        m = int(self.count.max()) if self.n else 0
        obj = np.repeat(np.arange(self.n), self.count)
        pos = np.arange(self.y.size) - np.repeat(self.start, self.count)
        py = np.zeros((self.n, m))
        px = np.zeros((self.n, m))
        ok = np.zeros((self.n, m), dtype=bool)
        py[obj, pos] = self.y
        px[obj, pos] = self.x
        ok[obj, pos] = True
        return py, px, ok


def _envelope(chain: np.ndarray, cy: np.ndarray, cx: np.ndarray) -> np.ndarray:
    """Keep the points of each chain (sorted by ``y``) on its lower convex envelope in ``x``.

    A point goes when it lies on or to the right of the chord of its two neighbours;
    repeated until none does (exact in integers).
    """
    keep_idx = np.arange(chain.size)
    while True:
        c, y, x = chain[keep_idx], cy[keep_idx], cx[keep_idx]
        inner = (c[:-2] == c[1:-1]) & (c[2:] == c[1:-1])
        yp, yi, yn = y[:-2], y[1:-1], y[2:]
        xp, xi, xn = x[:-2], x[1:-1], x[2:]
        drop = inner & ((xi - xp) * (yn - yp) >= (xn - xp) * (yi - yp))
        if not drop.any():
            return keep_idx
        keep = np.ones(keep_idx.size, dtype=bool)
        keep[1:-1] = ~drop
        keep_idx = keep_idx[keep]


def hulls_of_runs(rank: np.ndarray, row: np.ndarray, c0: np.ndarray, c1: np.ndarray, n: int) -> Hulls:
    """Convex hulls of the pixel centres of ``n`` labels from their row runs.

    Parameters
    ----------
    rank, row, c0, c1 : (R,) ndarray of int
        Per run: the label's index (0 .. n-1), its row and first and last column;
        sorted by label, then row, then column.
    n : int
        Number of labels (every one has at least one run).
    """
    new = np.ones(row.size, dtype=bool)
    new[1:] = (rank[1:] != rank[:-1]) | (row[1:] != row[:-1])
    g_first = np.flatnonzero(new)
    g_last = np.append(g_first[1:], row.size) - 1
    g_obj = rank[g_first].astype(np.int64)
    g_row = row[g_first].astype(np.int64)
    xl = c0[g_first].astype(np.int64)
    xr = c1[g_last].astype(np.int64)
    # left chain keeps x minima, the right chain (negated x) too
    left = _envelope(g_obj, g_row, xl)
    right = _envelope(g_obj, g_row, -xr)
    # around the hull: down the left chain, up the right chain
    ly, lx, lo = g_row[left], xl[left], g_obj[left]
    ry, rx, ro = g_row[right][::-1], xr[right][::-1], g_obj[right][::-1]
    obj = np.concatenate([lo, ro])
    seq = np.concatenate([np.arange(lo.size), lo.size + np.arange(ro.size)])
    order = np.lexsort((seq, obj))
    obj = obj[order]
    vy = np.concatenate([ly, ry])[order]
    vx = np.concatenate([lx, rx])[order]
    # drop a vertex equal to the one before it, or (for a label's last) to its first
    first_of = np.searchsorted(obj, np.arange(n))
    prev = np.roll(np.arange(obj.size), 1)
    prev[first_of] = -1
    dup = np.zeros(obj.size, dtype=bool)
    has_prev = prev >= 0
    dup[has_prev] = (vy[has_prev] == vy[prev[has_prev]]) & (vx[has_prev] == vx[prev[has_prev]])
    last_of = np.append(first_of[1:], obj.size) - 1
    wrap = (last_of > first_of) & (vy[last_of] == vy[first_of]) & (vx[last_of] == vx[first_of])
    dup[last_of[wrap]] = True
    keep = ~dup
    obj, vy, vx = obj[keep], vy[keep], vx[keep]
    count = np.bincount(obj, minlength=n)
    start = np.cumsum(count) - count
    return Hulls(vy.astype(np.float64), vx.astype(np.float64), start, count)


def feret_diameters(hulls: Hulls) -> tuple[np.ndarray, np.ndarray]:
    """Minimum and maximum Feret (caliper) diameters of every hull.

    The maximum is the largest distance between two vertices; the minimum the
    smallest, over the hull's edges, of the largest distance of a vertex to the
    edge's line (0 for a point or a segment), as CellProfiler's ``feret_diameter``.
    """
    py, px, ok = hulls.padded()
    n, m = py.shape
    max_d = np.zeros(n)
    min_d = np.zeros(n)
    if n == 0 or m == 0:
        return min_d, max_d
    # bounded memory: labels in blocks
    block = max(1, (1 << 21) // max(1, m * m))
    for b0 in range(0, n, block):
        sl = slice(b0, b0 + block)
        y, x, v = py[sl], px[sl], ok[sl]
        dy = y[:, :, None] - y[:, None, :]
        dx = x[:, :, None] - x[:, None, :]
        d2 = dy * dy + dx * dx
        pair = v[:, :, None] & v[:, None, :]
        max_d[sl] = np.sqrt(np.where(pair, d2, 0).max(axis=(1, 2)))
        # edges i -> i + 1 (wrapping within the label's vertices)
        cnt = hulls.count[sl]
        nxt = (np.arange(m)[None, :] + 1) % np.maximum(cnt, 1)[:, None]
        ey = np.take_along_axis(y, nxt, 1) - y
        ex = np.take_along_axis(x, nxt, 1) - x
        length = np.hypot(ey, ex)
        edge_ok = v & (length > 0) & (cnt >= 3)[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            # distance of vertex j to the line of edge i
            cross = np.abs(
                ey[:, :, None] * (x[:, None, :] - x[:, :, None])
                - ex[:, :, None] * (y[:, None, :] - y[:, :, None])
            )
            dist = cross / np.where(length > 0, length, 1.0)[:, :, None]
        width = np.where(v[:, None, :], dist, 0).max(axis=2)
        width = np.where(edge_ok, width, np.inf).min(axis=1)
        min_d[sl] = np.where(np.isfinite(width), width, 0.0)
    return min_d, max_d


#: Relative (and absolute, in squared pixels) slack of "the point is in the circle".
_FIT_TOL = 1e-9


def _fits(d2: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """Squared distances ``d2`` within circles of squared radii ``r2``, with :data:`_FIT_TOL` of slack."""
    return d2 <= r2 * (1 + _FIT_TOL) + _FIT_TOL


def _mec(ys: list[float], xs: list[float]) -> tuple[float, float, float]:
    """Smallest circle around the points (Welzl's incremental algorithm, squared radii).

    The reference :func:`_mec_block` is tested against, and its fallback.
    """
    n = len(ys)
    tol = _FIT_TOL

    def fits(cy: float, cx: float, r2: float, y: float, x: float) -> bool:
        dy, dx = y - cy, x - cx
        return dy * dy + dx * dx <= r2 * (1 + tol) + tol

    cy, cx, r2 = ys[0], xs[0], 0.0
    for i in range(1, n):
        yi, xi = ys[i], xs[i]
        if fits(cy, cx, r2, yi, xi):
            continue
        cy, cx, r2 = yi, xi, 0.0
        for j in range(i):
            yj, xj = ys[j], xs[j]
            if fits(cy, cx, r2, yj, xj):
                continue
            cy, cx = (yi + yj) / 2.0, (xi + xj) / 2.0
            r2 = (yi - cy) ** 2 + (xi - cx) ** 2
            for k in range(j):
                yk, xk = ys[k], xs[k]
                if fits(cy, cx, r2, yk, xk):
                    continue
                d = 2.0 * (yi * (xj - xk) + yj * (xk - xi) + yk * (xi - xj))
                if d == 0:
                    continue
                a2, b2, c2 = yi * yi + xi * xi, yj * yj + xj * xj, yk * yk + xk * xk
                cy = (a2 * (xj - xk) + b2 * (xk - xi) + c2 * (xi - xj)) / d
                cx = (a2 * (yk - yj) + b2 * (yi - yk) + c2 * (yj - yi)) / d
                r2 = (yi - cy) ** 2 + (xi - cx) ** 2
    return cy, cx, sqrt(r2)


#: Labels between two progress reports of a per-label loop.
EVERY = 2000


#: The smallest circle around four points is that of two or three of them: the six
#: pairs, then the four triples, of the points' slots.
_PAIRS = np.array([(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)])
_TRIPLES = np.array([(0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3)])

#: Rounds of :func:`_mec_block` before a label is left to :func:`_mec` (a handful do).
_MAX_ROUNDS = 64


def _mec_block(
    py: np.ndarray, px: np.ndarray, ok: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Smallest enclosing circles of many point sets at once (squared radii).

    ``py``, ``px`` and ``ok`` are :meth:`Hulls.padded`'s ``(b, m)`` arrays. Each label
    keeps a support of up to three points (repeats for fewer) and its circle; in each
    round, labels with a point outside their circle add the farthest one and take the
    smallest of the circles of two or three of the four points that holds all four.
    The circle of a support is the smallest around it, so adding a point outside grows
    it strictly: no support comes back, and a label ends, in a few rounds, with a
    circle around all its points that is the smallest around some of them, hence
    around all (Elzinga and Hearn's support-set algorithm). Returns the centre rows and
    columns, squared radii and the labels still unfinished after :data:`_MAX_ROUNDS`.
    """
    b, m = py.shape
    every = np.arange(b)
    # a long chord to start from: the point farthest from the first, and the farthest from it
    d2 = np.where(ok, (py - py[:, :1]) ** 2 + (px - px[:, :1]) ** 2, -1.0)
    a = d2.argmax(axis=1)
    ay, ax = py[every, a], px[every, a]
    d2 = np.where(ok, (py - ay[:, None]) ** 2 + (px - ax[:, None]) ** 2, -1.0)
    c = d2.argmax(axis=1)
    support = np.column_stack([a, c, c])
    cy = (ay + py[every, c]) / 2.0
    cx = (ax + px[every, c]) / 2.0
    r2 = (ay - cy) ** 2 + (ax - cx) ** 2
    active = every
    for _ in range(_MAX_ROUNDS):
        dy = py[active] - cy[active, None]
        dx = px[active] - cx[active, None]
        d2 = np.where(ok[active], dy * dy + dx * dx, -1.0)
        far = d2.argmax(axis=1)
        outside = ~_fits(d2[np.arange(active.size), far], r2[active])
        active, far = active[outside], far[outside]
        if active.size == 0:
            break
        slots = np.column_stack([support[active], far])  # (a, 4) point indices
        y = py[active[:, None], slots]
        x = px[active[:, None], slots]
        # circles on the pairs (diameters) and triples (circumcircles; none if collinear)
        i, j = _PAIRS[:, 0], _PAIRS[:, 1]
        pair_y = (y[:, i] + y[:, j]) / 2.0
        pair_x = (x[:, i] + x[:, j]) / 2.0
        pair_r2 = (y[:, i] - pair_y) ** 2 + (x[:, i] - pair_x) ** 2
        yi, yj, yk = (y[:, _TRIPLES[:, t]] for t in range(3))
        xi, xj, xk = (x[:, _TRIPLES[:, t]] for t in range(3))
        d = 2.0 * (yi * (xj - xk) + yj * (xk - xi) + yk * (xi - xj))
        a2, b2, c2 = yi * yi + xi * xi, yj * yj + xj * xj, yk * yk + xk * xk
        safe = np.where(d == 0, 1.0, d)
        tri_y = (a2 * (xj - xk) + b2 * (xk - xi) + c2 * (xi - xj)) / safe
        tri_x = (a2 * (yk - yj) + b2 * (yi - yk) + c2 * (yj - yi)) / safe
        tri_r2 = np.where(d == 0, np.inf, (yi - tri_y) ** 2 + (xi - tri_x) ** 2)
        cand_y = np.concatenate([pair_y, tri_y], axis=1)  # (a, 10)
        cand_x = np.concatenate([pair_x, tri_x], axis=1)
        cand_r2 = np.concatenate([pair_r2, tri_r2], axis=1)
        dist2 = (y[:, None, :] - cand_y[:, :, None]) ** 2 + (x[:, None, :] - cand_x[:, :, None]) ** 2
        holds = _fits(dist2, cand_r2[:, :, None]).all(axis=2) & np.isfinite(cand_r2)
        best = np.where(holds, cand_r2, np.inf).argmin(axis=1)
        rows = np.arange(active.size)
        cy[active] = cand_y[rows, best]
        cx[active] = cand_x[rows, best]
        r2[active] = cand_r2[rows, best]
        # the chosen circle's points, as slots of the four (a pair repeats its second)
        members = np.concatenate([_PAIRS[:, [0, 1, 1]], _TRIPLES])[best]
        support[active] = np.take_along_axis(slots, members, axis=1)
    else:
        dy = py[active] - cy[active, None]
        dx = px[active] - cx[active, None]
        d2 = np.where(ok[active], dy * dy + dx * dx, -1.0)
        active = active[~_fits(d2, r2[active, None]).all(axis=1)]
    return cy, cx, r2, active


def iter_minimum_enclosing_circles(hulls: Hulls) -> Generator[int, None, tuple[np.ndarray, np.ndarray]]:
    """:func:`minimum_enclosing_circles`, yielding the number of labels done every :data:`EVERY`.

    The labels go :data:`EVERY` at a time through the vectorised :func:`_mec_block`;
    any it leaves unfinished (none seen so far) through Welzl's :func:`_mec`.
    """
    centres = np.zeros((hulls.n, 2))
    radii = np.zeros(hulls.n)
    for k0 in range(0, hulls.n, EVERY):
        if k0:
            yield k0
        k1 = min(hulls.n, k0 + EVERY)
        v0 = int(hulls.start[k0])
        v1 = int(hulls.start[k1 - 1] + hulls.count[k1 - 1])
        part = Hulls(hulls.y[v0:v1], hulls.x[v0:v1], hulls.start[k0:k1] - v0, hulls.count[k0:k1])
        cy, cx, r2, left = _mec_block(*part.padded())
        centres[k0:k1, 0] = cy
        centres[k0:k1, 1] = cx
        radii[k0:k1] = np.sqrt(r2)
        for k in (left + k0).tolist():
            s, c = int(hulls.start[k]), int(hulls.count[k])
            centres[k, 0], centres[k, 1], radii[k] = _mec(
                hulls.y[s : s + c].tolist(), hulls.x[s : s + c].tolist()
            )
    return centres, radii


def minimum_enclosing_circles(hulls: Hulls) -> tuple[np.ndarray, np.ndarray]:
    """Centre ``(n, 2)`` (row, column) and radius ``(n,)`` of every hull's smallest enclosing circle."""
    gen = iter_minimum_enclosing_circles(hulls)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def zernike_indexes(n_max: int = 9) -> list[tuple[int, int]]:
    """``(n, m)`` with ``0 <= m <= n <= n_max`` and ``n - m`` even, by ``n`` then ``m`` (30 for 9)."""
    return [(n, m) for n in range(n_max + 1) for m in range(n % 2, n + 1, 2)]


def _zernike_monomials(indexes: list[tuple[int, int]], deg: int) -> np.ndarray:
    """Coefficients ``C[k, p, q]`` of ``R_nm(r) (v + i u)^m / r^m`` in ``u^p v^q``.

    ``(v, u)`` = (row, column) offsets from the circle's centre over its radius, as
    CellProfiler's ``z = y + i x``; ``R_nm(r) / r^m`` is a polynomial in ``r^2 = u^2 + v^2``.
    """
    size = deg + 1
    out = np.zeros((len(indexes), size, size), dtype=np.complex128)
    # powers of r^2 = u^2 + v^2 and of (v + i u), as (p, q) coefficient grids
    r2 = np.zeros((size, size), dtype=np.complex128)
    r2[2, 0] = r2[0, 2] = 1
    z = np.zeros((size, size), dtype=np.complex128)
    z[0, 1] = 1  # v
    z[1, 0] = 1j  # i u

    def mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        res = np.zeros((size, size), dtype=np.complex128)
        for p, q in zip(*np.nonzero(a), strict=True):
            res[p:, q:] += a[p, q] * b[: size - p, : size - q]
        return res

    one = np.zeros((size, size), dtype=np.complex128)
    one[0, 0] = 1
    r2_pow = [one]
    z_pow = [one]
    for _ in range(deg):
        r2_pow.append(mul(r2_pow[-1], r2))
        z_pow.append(mul(z_pow[-1], z))
    for k, (n, m) in enumerate(indexes):
        radial = np.zeros((size, size), dtype=np.complex128)
        for s in range((n - m) // 2 + 1):
            coef = (
                (-1) ** s
                * factorial(n - s)
                / (factorial(s) * factorial((n + m) // 2 - s) * factorial((n - m) // 2 - s))
            )
            radial += coef * r2_pow[(n - m) // 2 - s]
        out[k] = mul(radial, z_pow[m])
    return out


@lru_cache(maxsize=4)
def _zernike_coefficients(n_max: int) -> np.ndarray:
    """:func:`_zernike_monomials` of :func:`zernike_indexes` up to ``n_max``, computed once
    (read-only; building them took a fifth of an image's Zernike scores)."""
    coef = _zernike_monomials(zernike_indexes(n_max), n_max)
    coef.flags.writeable = False
    return coef


def _power_sum_table(max_len: int, deg: int) -> np.ndarray:
    """``T[L, k] = sum_{t=0}^{L-1} t^k`` for ``L <= max_len``, ``k <= deg``."""
    t = np.arange(max_len, dtype=np.float64)
    powers = t[:, None] ** np.arange(deg + 1)[None, :]
    table = np.zeros((max_len + 1, deg + 1))
    np.cumsum(powers, axis=0, out=table[1:])
    return table


def zernike_scores(
    rank: np.ndarray,
    row: np.ndarray,
    c0: np.ndarray,
    length: np.ndarray,
    first_run: np.ndarray,
    centres: np.ndarray,
    radii: np.ndarray,
    n_max: int = 9,
    hull: Hulls | None = None,
) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Zernike scores of every label in its enclosing circle, from its row runs.

    Returns the ``(n, m)`` indexes and an ``(n_labels, len(indexes))`` array of
    ``|sum over the label's pixels of R_nm(r) exp(i m theta)| / (pi radius^2)``, with
    ``theta`` measured as CellProfiler does (``z = row + i column``). A label whose
    circle has radius 0 (one pixel) gets NaN. Each run contributes the closed-form
    sums ``sum_t (d + t)^p`` of its columns, so the cost is per run, not per pixel.
    Given the labels' ``hull``, pixels on the circle whose floating-point ``r^2``
    exceeds 1 are left out, as CellProfiler does.
    """
    indexes = zernike_indexes(n_max)
    n = radii.size
    deg = n_max
    coef = _zernike_coefficients(n_max)  # (K, p, q)
    with np.errstate(invalid="ignore", divide="ignore"):
        inv_r = np.where(radii > 0, 1.0 / radii, np.nan)
    r_run = inv_r[rank]
    v = (row - centres[rank, 0]) * r_run  # row offset of the run, in radii
    d = c0 - centres[rank, 1]  # first column's offset, in pixels
    table = _power_sum_table(int(length.max()) if length.size else 1, deg)
    tl = table[length]  # (R, deg + 1): sum_t t^k over the run
    # S[p] = sum over the run of ((d + t) / radius)^p
    s = np.empty((deg + 1, rank.size))
    d_pow = np.ones((deg + 1, rank.size))
    for j in range(1, deg + 1):
        d_pow[j] = d_pow[j - 1] * d
    scale = np.ones(rank.size)
    for p in range(deg + 1):
        acc = np.zeros(rank.size)
        for k in range(p + 1):
            acc += comb(p, k) * d_pow[p - k] * tl[:, k]
        s[p] = acc * scale
        scale = scale * r_run
    v_pow = np.ones((deg + 1, rank.size))
    for q in range(1, deg + 1):
        v_pow[q] = v_pow[q - 1] * v
    moments = np.zeros((deg + 1, deg + 1, n))
    for p in range(deg + 1):
        for q in range(deg + 1 - p):
            moments[p, q] = np.add.reduceat(s[p] * v_pow[q], first_run)
    z = np.einsum("kpq,pqn->nk", coef, moments.astype(np.complex128))
    if hull is not None:
        # CellProfiler leaves out pixels whose r^2, computed in floating point, exceeds
        # 1: only pixels on the circle can, and those are hull vertices.
        obj = np.repeat(np.arange(hull.n), hull.count)
        with np.errstate(invalid="ignore"):
            ym = (hull.y - centres[obj, 0]) / radii[obj]
            xm = (hull.x - centres[obj, 1]) / radii[obj]
            out = xm * xm + ym * ym > 1
        if out.any():
            o, u, w = obj[out], xm[out], ym[out]
            up = u[None, :] ** np.arange(deg + 1)[:, None]
            wp = w[None, :] ** np.arange(deg + 1)[:, None]
            vals = np.einsum("kpq,pj,qj->jk", coef, up, wp)  # (dropped pixels, K)
            np.subtract.at(z, o, vals)
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = np.abs(z) / (np.pi * radii * radii)[:, None]
    scores[radii <= 0] = np.nan
    return indexes, scores
