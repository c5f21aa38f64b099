"""Query strategies for active learning: which unannotated cells to ask the user about next.

Every strategy turns the classifier's predicted class probabilities ``proba``
(``n_cells x n_classes``, rows summing to 1) into one informativeness score per cell;
a higher score means a more useful cell to annotate. :func:`select` then picks the
best-scoring *unannotated* cells, optionally as a diverse batch.

Uncertainty sampling (Lewis & Gale 1994; Settles 2009, "Active Learning Literature
Survey", section 3.1):

- :func:`least_confidence`: ``1 - max_c p_c``;
- :func:`margin`: ``1 - (p_(1) - p_(2))``, the two largest probabilities;
- :func:`entropy`: ``-sum_c p_c log p_c / log(n_classes)``, in ``[0, 1]``.

Information density (Settles & Craven 2008): :func:`density_weighted` multiplies an
uncertainty score by the cell's mean similarity to its ``k`` nearest neighbours in
feature space, raised to ``beta``, so that outliers, uncertain but unrepresentative,
rank lower. The neighbours come from :class:`sklearn.neighbors.NearestNeighbors`, so
memory stays ``O(n_cells * k)``. Two variants are registered: ``"density"`` on an
entropy base and ``"margin_density"`` on a margin base (:func:`margin_density`).

Which one to use: on the CellCognition H2B expert table (``benchmarks/active_learning.py``,
a random forest, 10 seeds) plain :func:`margin` needs the fewest labels of all strategies
tried, about 0.45x those of random sampling to reach 95 % of the full-data accuracy; the
density-weighted variants need more there, because that table holds no outliers to
avoid. They are meant for tables where the most uncertain cells are often debris or
segmentation errors, which plain uncertainty sampling would keep proposing.

:data:`STRATEGIES` maps a name to a function with the uniform signature
``f(proba, X, rng) -> scores``; ``"random"`` (:func:`random_scores`) is the baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "STRATEGIES",
    "density_weighted",
    "entropy",
    "least_confidence",
    "margin",
    "margin_density",
    "random_scores",
    "select",
]

RngLike = np.random.Generator | int | None
Strategy = Callable[
    [NDArray[np.floating], NDArray[np.floating] | None, np.random.Generator], NDArray[np.float64]
]

_SUM_TOL = 1e-3


def _as_rng(rng: RngLike) -> np.random.Generator:
    """A Generator from a Generator, a seed, or ``None`` (seed 0, so runs are reproducible)."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(0 if rng is None else rng)


def _check_proba(proba: ArrayLike) -> NDArray[np.float64]:
    """Validate class probabilities and return them as a float64 2-D array."""
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(
            f"proba must be a 2-D array (n_cells, n_classes), got shape {p.shape}; "
            "pass the output of classifier.predict_proba(X)"
        )
    if p.shape[1] < 2:
        raise ValueError(
            f"proba has {p.shape[1]} class column(s); query strategies need at least 2 classes, "
            "so annotate cells of at least two classes before querying"
        )
    if not np.all(np.isfinite(p)):
        bad = int(np.count_nonzero(~np.all(np.isfinite(p), axis=1)))
        raise ValueError(
            f"proba contains NaN or infinite values in {bad} row(s); drop or impute the cells' "
            "features (NaN features give NaN predictions) before predicting"
        )
    if p.size and (p.min() < 0 or p.max() > 1 + _SUM_TOL):
        raise ValueError("proba values must lie in [0, 1]; pass probabilities, not decision scores")
    if p.shape[0]:
        sums = p.sum(axis=1)
        if np.max(np.abs(sums - 1.0)) > _SUM_TOL:
            raise ValueError(
                f"proba rows must sum to 1 (found sums from {sums.min():.4g} to {sums.max():.4g}); "
                "normalise with proba / proba.sum(axis=1, keepdims=True)"
            )
    return p


def _check_features(X: ArrayLike | None, n_cells: int, who: str) -> NDArray[np.floating]:
    """Validate a feature matrix against the number of cells in ``proba`` (float32 stays
    float32: no copy of a 100k-cell matrix)."""
    if X is None:
        raise ValueError(f"{who} needs the feature matrix X (n_cells, n_features); pass X=...")
    x = np.asarray(X)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"X must be a 2-D array (n_cells, n_features), got shape {x.shape}")
    if x.shape[0] != n_cells:
        raise ValueError(
            f"X has {x.shape[0]} rows but there are {n_cells} cells; X and proba/scores must "
            "describe the same cells in the same order"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError(
            "X contains NaN or infinite values; impute them (e.g. with the column median) before querying"
        )
    return x


def least_confidence(proba: ArrayLike) -> NDArray[np.float64]:
    """Least-confidence score ``1 - max_c p_c``.

    Parameters
    ----------
    proba : array-like of shape (n_cells, n_classes)
        Predicted class probabilities; rows sum to 1.

    Returns
    -------
    numpy.ndarray of shape (n_cells,)
        Scores in ``[0, 1 - 1/n_classes]``; higher is more informative.
    """
    p = _check_proba(proba)
    return 1.0 - p.max(axis=1)


def margin(proba: ArrayLike) -> NDArray[np.float64]:
    """Margin score ``1 - (p_(1) - p_(2))`` of the two most probable classes.

    Parameters
    ----------
    proba : array-like of shape (n_cells, n_classes)
        Predicted class probabilities; rows sum to 1.

    Returns
    -------
    numpy.ndarray of shape (n_cells,)
        Scores in ``[0, 1]``; 1 when the two best classes tie. Higher is more informative.
    """
    p = _check_proba(proba)
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    return 1.0 - (top2[:, 1] - top2[:, 0])


def entropy(proba: ArrayLike) -> NDArray[np.float64]:
    """Shannon entropy of the predicted distribution, normalised by ``log(n_classes)``.

    Parameters
    ----------
    proba : array-like of shape (n_cells, n_classes)
        Predicted class probabilities; rows sum to 1. ``0 log 0`` counts as 0.

    Returns
    -------
    numpy.ndarray of shape (n_cells,)
        Scores in ``[0, 1]``; 1 for a uniform prediction. Higher is more informative.
    """
    p = _check_proba(proba)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    h = -plogp.sum(axis=1) / np.log(p.shape[1])
    return np.clip(h, 0.0, 1.0)


_BASES: Mapping[str, Callable[[ArrayLike], NDArray[np.float64]]] = MappingProxyType(
    {"least_confidence": least_confidence, "margin": margin, "entropy": entropy}
)


def density_weighted(
    proba: ArrayLike,
    X: ArrayLike,
    base: Literal["least_confidence", "margin", "entropy"] = "entropy",
    beta: float = 1.0,
    k: int = 10,
    max_reference: int | None = 5_000,
    rng: RngLike = None,
) -> NDArray[np.float64]:
    """Information density: uncertainty times representativeness (Settles & Craven 2008).

    ``score_i = u_i * (mean_j sim(x_i, x_j)) ** beta`` over the ``k`` nearest neighbours
    ``j`` of cell ``i`` (itself excluded), with ``sim = 1 / (1 + euclidean distance)``
    so that similarities lie in ``(0, 1]``. Using ``k`` neighbours instead of all cells
    keeps memory at ``O(n_cells * k)``.

    Exact k-nearest-neighbour search costs ``O(n_cells**2)`` time in many dimensions
    (trees do not help on 20+ features), so above ``max_reference`` cells the neighbours
    are looked up among a random subset of ``max_reference`` reference cells instead:
    time ``O(n_cells * max_reference)``, about 2 s for 100 000 cells x 20 features on
    two cores. The neighbours are then sparser, so absolute similarities are lower, but
    the ordering of dense versus isolated cells, which is what the weighting uses, is kept.

    Parameters
    ----------
    proba : array-like of shape (n_cells, n_classes)
        Predicted class probabilities; rows sum to 1.
    X : array-like of shape (n_cells, n_features)
        Features of the same cells, already scaled (e.g. standardised).
    base : {"entropy", "least_confidence", "margin"}, default "entropy"
        The uncertainty score ``u``.
    beta : float, default 1.0
        Weight of the density term; 0 gives back the plain uncertainty.
    k : int, default 10
        Number of neighbours (clipped to ``n_cells - 1``).
    max_reference : int or None, default 5000
        Largest number of cells searched exhaustively for neighbours; ``None`` means exact
        search whatever the size.
    rng : numpy.random.Generator, int or None
        Picks the reference subset; ``None`` means seed 0 (reproducible).

    Returns
    -------
    numpy.ndarray of shape (n_cells,)
        Scores in ``[0, 1]``; higher is more informative.
    """
    from sklearn.neighbors import NearestNeighbors

    if base not in _BASES:
        raise ValueError(f"unknown base {base!r}; choose one of {sorted(_BASES)}")
    if not np.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    if int(k) < 1:
        raise ValueError(f"k must be >= 1 neighbours, got {k!r}")
    u = _BASES[base](proba)
    n = u.shape[0]
    x = _check_features(X, n, "density_weighted")
    if n <= 1 or beta == 0:
        return u
    if max_reference is not None and int(max_reference) < 2:
        raise ValueError(f"max_reference must be >= 2 or None, got {max_reference!r}")
    if max_reference is None or n <= int(max_reference):
        ref = np.arange(n)
    else:
        ref = np.sort(_as_rng(rng).choice(n, size=int(max_reference), replace=False))
    n_neighbors = min(int(k), ref.size - 1) + 1  # +1: a reference cell is its own nearest neighbour
    nn = NearestNeighbors(n_neighbors=n_neighbors, algorithm="brute").fit(x[ref])
    dist, _ = nn.kneighbors(x)
    # A reference cell drops its first (zero-distance: itself, or an exact duplicate at the
    # same distance) column; any other cell drops its farthest one, so all use k neighbours.
    is_ref = np.zeros(n, dtype=bool)
    is_ref[ref] = True
    dist = np.where(is_ref[:, None], dist[:, 1:], dist[:, :-1])
    density = (1.0 / (1.0 + dist)).mean(axis=1)
    return u * density**beta


def margin_density(
    proba: ArrayLike,
    X: ArrayLike,
    beta: float = 1.0,
    k: int = 10,
    rng: RngLike = None,
) -> NDArray[np.float64]:
    """Margin score weighted by local density: :func:`density_weighted` with ``base="margin"``.

    ``score_i = margin_i * (mean_j 1 / (1 + d(x_i, x_j))) ** beta`` over the ``k`` nearest
    neighbours ``j`` of cell ``i``. Among cells that are equally ambiguous between their
    two most probable classes, those in dense regions of feature space (many similar
    cells, so a label there informs many predictions) rank first and isolated cells
    (often debris or segmentation errors) last.

    Parameters
    ----------
    proba : array-like of shape (n_cells, n_classes)
        Predicted class probabilities; rows sum to 1.
    X : array-like of shape (n_cells, n_features)
        Features of the same cells, already scaled (e.g. standardised).
    beta : float, default 1.0
        Weight of the density term; 0 gives back :func:`margin`.
    k : int, default 10
        Number of neighbours (clipped to ``n_cells - 1``).
    rng : numpy.random.Generator, int or None
        Picks the reference subset above 5000 cells; ``None`` means seed 0.

    Returns
    -------
    numpy.ndarray of shape (n_cells,)
        Scores in ``[0, 1]``; higher is more informative.
    """
    return density_weighted(proba, X, base="margin", beta=beta, k=k, rng=rng)


def random_scores(n: int, rng: RngLike = None) -> NDArray[np.float64]:
    """Uniform random scores in ``[0, 1)``: the random-sampling baseline.

    Parameters
    ----------
    n : int
        Number of cells.
    rng : numpy.random.Generator, int or None
        Generator or seed; ``None`` means seed 0 (reproducible).

    Returns
    -------
    numpy.ndarray of shape (n,)
    """
    if int(n) < 0:
        raise ValueError(f"n must be >= 0, got {n!r}")
    return _as_rng(rng).random(int(n))


def _strategy_least_confidence(
    proba: ArrayLike, X: ArrayLike | None, rng: np.random.Generator
) -> NDArray[np.float64]:
    return least_confidence(proba)


def _strategy_margin(proba: ArrayLike, X: ArrayLike | None, rng: np.random.Generator) -> NDArray[np.float64]:
    return margin(proba)


def _strategy_entropy(proba: ArrayLike, X: ArrayLike | None, rng: np.random.Generator) -> NDArray[np.float64]:
    return entropy(proba)


def _strategy_density(proba: ArrayLike, X: ArrayLike | None, rng: np.random.Generator) -> NDArray[np.float64]:
    if X is None:
        raise ValueError(
            "the 'density' strategy needs the feature matrix X (n_cells, n_features); pass X=..."
        )
    return density_weighted(proba, X, rng=rng)


def _strategy_margin_density(
    proba: ArrayLike, X: ArrayLike | None, rng: np.random.Generator
) -> NDArray[np.float64]:
    if X is None:
        raise ValueError(
            "the 'margin_density' strategy needs the feature matrix X (n_cells, n_features); pass X=..."
        )
    return margin_density(proba, X, rng=rng)


def _strategy_random(proba: ArrayLike, X: ArrayLike | None, rng: np.random.Generator) -> NDArray[np.float64]:
    return random_scores(_check_proba(proba).shape[0], rng)


#: Name -> scoring function ``f(proba, X, rng) -> scores`` (higher = ask first).
#: ``X`` is only used by ``"density"`` and ``"margin_density"``; ``rng`` by ``"random"``
#: (and by the density strategies to subsample reference cells above 5000 cells).
STRATEGIES: Mapping[str, Strategy] = MappingProxyType(
    {
        "least_confidence": _strategy_least_confidence,
        "margin": _strategy_margin,
        "entropy": _strategy_entropy,
        "density": _strategy_density,
        "margin_density": _strategy_margin_density,
        "random": _strategy_random,
    }
)


def _candidate_indices(candidates: ArrayLike, n: int) -> NDArray[np.intp]:
    """Indices of the candidate cells from a boolean mask (or an index array)."""
    c = np.asarray(candidates)
    if c.dtype == bool:
        if c.shape != (n,):
            raise ValueError(
                f"candidates mask has shape {c.shape} but there are {n} cells; pass a boolean "
                "mask with one entry per cell, True for cells not yet annotated"
            )
        idx = np.flatnonzero(c)
    elif np.issubdtype(c.dtype, np.integer) and c.ndim == 1:
        idx = np.unique(c).astype(np.intp)
        if idx.size and (idx[0] < 0 or idx[-1] >= n):
            raise ValueError(f"candidate indices must lie in [0, {n}); got {idx[0]}..{idx[-1]}")
    else:
        raise ValueError(
            f"candidates must be a boolean mask of length {n} (True = unannotated), got dtype {c.dtype}"
        )
    if idx.size == 0:
        raise ValueError(
            "no candidate cells to query: every cell is already annotated (or the mask is all False); "
            "add images or remove annotations to continue"
        )
    return idx


def _rank(scores: NDArray[np.float64], idx: NDArray[np.intp], gen: np.random.Generator) -> NDArray[np.intp]:
    """Candidates sorted by score, descending; ties broken at random (reproducibly)."""
    tiebreak = gen.random(idx.size)
    order = np.lexsort((tiebreak, -scores[idx]))
    return idx[order]


def _first_distinct_rows(x: NDArray[np.floating], ranked: NDArray[np.intp]) -> NDArray[np.intp]:
    """Keep, in rank order, only the first cell of each group of identical feature rows."""
    rows = np.ascontiguousarray(x[ranked])
    rows[rows == 0] = 0.0  # -0.0 and 0.0 compare equal; make their bytes equal too
    view = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1])))
    _, first = np.unique(view.ravel(), return_index=True)
    return ranked[np.sort(first)]


def select(
    scores: ArrayLike | str,
    candidates: ArrayLike,
    k: int = 1,
    *,
    X: ArrayLike | None = None,
    diverse: bool = False,
    rng: RngLike = None,
    proba: ArrayLike | None = None,
    pool_factor: int = 10,
) -> NDArray[np.intp]:
    """Indices of the ``k`` best unannotated cells to annotate next.

    Parameters
    ----------
    scores : array-like of shape (n_cells,) or str
        Informativeness scores (higher = ask first), or the name of a strategy in
        :data:`STRATEGIES`, which is then computed from ``proba`` (and ``X``).
    candidates : array-like of bool, shape (n_cells,)
        True for cells that may be queried, i.e. not yet annotated. Annotated cells are
        never returned. An integer index array is accepted too.
    k : int, default 1
        Batch size.
    X : array-like of shape (n_cells, n_features), optional
        Scaled features; needed for ``diverse=True`` and for the density strategies.
    diverse : bool, default False
        If True, return a batch without near-duplicates: the ``pool_factor * k`` best
        candidates (identical feature rows counted once) are clustered into ``k`` groups
        with k-means and the best-scoring cell of each group is returned.
    rng : numpy.random.Generator, int or None
        Randomness for tie-breaking, k-means and the ``"random"`` strategy; ``None``
        means seed 0, so results are reproducible.
    proba : array-like of shape (n_cells, n_classes), optional
        Predicted probabilities, required when ``scores`` is a strategy name.
    pool_factor : int, default 10
        Size of the pre-selection for ``diverse=True``, as a multiple of ``k``.

    Returns
    -------
    numpy.ndarray of int, shape (min(k, n_candidates),)
        Cell indices, best score first. With ``diverse=True`` fewer than ``k`` cells are
        returned only when the candidates have fewer than ``k`` distinct feature rows.

    Raises
    ------
    ValueError
        On mismatched shapes, NaN scores, an unknown strategy, ``k < 1`` or no candidates.
    """
    gen = _as_rng(rng)
    if isinstance(scores, str):
        if scores not in STRATEGIES:
            raise ValueError(f"unknown strategy {scores!r}; choose one of {sorted(STRATEGIES)}")
        if proba is None:
            raise ValueError(f"strategy {scores!r} needs proba=classifier.predict_proba(X)")
        x_arg = None if X is None else np.asarray(X, dtype=np.float64)
        s = np.asarray(STRATEGIES[scores](np.asarray(proba), x_arg, gen), dtype=np.float64)
    else:
        s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D (one per cell), got shape {s.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN; check the probabilities and features they were computed from")
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k!r}")
    k = int(k)
    n = s.shape[0]
    idx = _candidate_indices(candidates, n)
    ranked = _rank(s, idx, gen)
    if not diverse:
        return ranked[:k]

    x = _check_features(X, n, "select(diverse=True)")
    if k == 1:
        return ranked[:1]
    want = max(int(pool_factor), 1) * k
    # dedupe a growing prefix, not all the ranked cells (100k rows cost 230 ms): the first
    # occurrences within a prefix are the first occurrences overall
    span = 4 * want
    while True:
        distinct = _first_distinct_rows(x, ranked[:span])
        if distinct.size >= want or span >= ranked.size:
            break
        span *= 4
    pool = distinct[:want]
    if pool.size <= k:
        return pool
    from sklearn.cluster import KMeans

    seed = int(gen.integers(2**31 - 1))
    labels = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(x[pool])
    # pool is in rank order, so the first member of each cluster is its best-scoring cell.
    _, first = np.unique(labels, return_index=True)
    return pool[np.sort(first)]
