"""Active-learning query strategies: exact scores, candidate handling, diversity, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_phenotyper.core.classify.query import (
    STRATEGIES,
    density_weighted,
    entropy,
    least_confidence,
    margin,
    margin_density,
    random_scores,
    select,
)

P2 = np.array([[0.5, 0.5], [0.9, 0.1], [1.0, 0.0], [0.1, 0.9]])
P3 = np.array([[0.5, 0.3, 0.2], [0.4, 0.4, 0.2], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0], [0.6, 0.2, 0.2]])


def test_least_confidence_exact():
    np.testing.assert_allclose(least_confidence(P2), [0.5, 0.1, 0.0, 0.1], atol=1e-12)
    np.testing.assert_allclose(least_confidence(P3), [0.5, 0.6, 2 / 3, 0.5, 0.4], atol=1e-12)


def test_margin_exact_with_ties():
    np.testing.assert_allclose(margin(P2), [1.0, 0.2, 0.0, 0.2], atol=1e-12)
    # a tie between the two best classes is maximally uncertain, whatever the third
    np.testing.assert_allclose(margin(P3), [0.8, 1.0, 1.0, 1.0, 0.6], atol=1e-12)


def test_entropy_exact_normalised():
    h09 = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1)) / np.log(2)
    np.testing.assert_allclose(entropy(P2), [1.0, h09, 0.0, h09], atol=1e-12)
    h532 = -(0.5 * np.log(0.5) + 0.3 * np.log(0.3) + 0.2 * np.log(0.2)) / np.log(3)
    h442 = -(2 * 0.4 * np.log(0.4) + 0.2 * np.log(0.2)) / np.log(3)
    h622 = -(0.6 * np.log(0.6) + 2 * 0.2 * np.log(0.2)) / np.log(3)
    np.testing.assert_allclose(entropy(P3), [h532, h442, 1.0, np.log(2) / np.log(3), h622], atol=1e-12)
    assert np.all((entropy(P3) >= 0) & (entropy(P3) <= 1))


def test_density_weighted_exact():
    proba = np.full((3, 2), 0.5)  # entropy 1 everywhere: the score is the density alone
    X = np.array([[0.0], [1.0], [3.0]])  # nearest-neighbour distances 1, 1, 2
    np.testing.assert_allclose(density_weighted(proba, X, k=1), [0.5, 0.5, 1 / 3])
    np.testing.assert_allclose(density_weighted(proba, X, k=1, beta=2.0), [0.25, 0.25, 1 / 9])
    np.testing.assert_allclose(density_weighted(proba, X, k=1, beta=0.0), [1.0, 1.0, 1.0])
    # k=2 averages both neighbours: cell 0 has d=1,3; cell 1 d=1,2; cell 2 d=2,3
    np.testing.assert_allclose(
        density_weighted(proba, X, k=2), [(1 / 2 + 1 / 4) / 2, (1 / 2 + 1 / 3) / 2, (1 / 3 + 1 / 4) / 2]
    )
    # other bases multiply in the same way
    p = np.array([[0.9, 0.1], [0.5, 0.5], [0.5, 0.5]])
    np.testing.assert_allclose(density_weighted(p, X, base="least_confidence", k=1), [0.05, 0.25, 1 / 6])


def test_margin_density_exact():
    X = np.array([[0.0], [1.0], [3.0]])  # k=1 densities 1/2, 1/2, 1/3
    p = np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4]])  # margins 0.2, 1.0, 0.8
    np.testing.assert_allclose(margin_density(p, X, k=1), [0.1, 0.5, 0.8 / 3], atol=1e-12)
    np.testing.assert_allclose(margin_density(p, X, k=1, beta=2.0), [0.05, 0.25, 0.8 / 9], atol=1e-12)
    np.testing.assert_allclose(margin_density(p, X, k=1, beta=0.0), margin(p), atol=1e-12)
    # three classes: the margin ignores the third class, unlike the entropy base of "density"
    p3 = np.array([[0.4, 0.4, 0.2], [0.5, 0.3, 0.2], [0.7, 0.3, 0.0]])  # margins 1.0, 0.8, 0.6
    np.testing.assert_allclose(margin_density(p3, X, k=1), [0.5, 0.4, 0.2], atol=1e-12)
    np.testing.assert_allclose(
        margin_density(p3, X, k=1), density_weighted(p3, X, base="margin", k=1), atol=1e-12
    )
    np.testing.assert_allclose(
        STRATEGIES["margin_density"](p3, X, np.random.default_rng(0)),
        density_weighted(p3, X, base="margin"),
        atol=1e-12,
    )


def test_margin_density_ranks_an_ambiguous_outlier_last():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 0.1, (40, 2)), [[8.0, 8.0]]])
    proba = np.tile([0.6, 0.4], (41, 1))
    proba[-1] = [0.5, 0.5]  # the outlier is the most ambiguous cell: margin asks it first
    cand = np.ones(41, dtype=bool)
    assert select("margin", cand, proba=proba)[0] == 40
    assert select("margin_density", cand, proba=proba, X=X)[0] != 40
    assert np.argmin(margin_density(proba, X)) == 40


def test_density_prefers_dense_over_outlier():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 0.1, (50, 2)), [[10.0, 10.0]]])
    proba = np.full((51, 3), 1 / 3)
    s = density_weighted(proba, X)
    assert s[-1] < s[:-1].min()


def test_random_scores_seeded():
    a = random_scores(10, np.random.default_rng(3))
    b = random_scores(10, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (10,) and np.all((a >= 0) & (a < 1))
    np.testing.assert_array_equal(random_scores(5, 7), random_scores(5, 7))


def test_strategies_uniform_signature():
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(3), 40)
    X = rng.standard_normal((40, 4))
    assert set(STRATEGIES) == {"least_confidence", "margin", "entropy", "density", "margin_density", "random"}
    for name, f in STRATEGIES.items():
        s = f(proba, X, np.random.default_rng(1))
        assert s.shape == (40,), name
        assert np.all(np.isfinite(s)), name
    np.testing.assert_allclose(STRATEGIES["entropy"](proba, None, rng), entropy(proba))


def test_select_top_k_skips_annotated():
    scores = np.array([0.9, 0.8, 0.7, 0.95, 0.1])
    cand = np.array([True, True, True, False, True])
    np.testing.assert_array_equal(select(scores, cand, k=2), [0, 1])
    np.testing.assert_array_equal(select(scores, cand, k=1), [0])
    # k larger than the candidates: all of them, best first
    np.testing.assert_array_equal(select(scores, cand, k=10), [0, 1, 2, 4])


def test_select_never_returns_annotated_cells():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 5))
    proba = rng.dirichlet(np.ones(4), 300)
    for trial in range(5):
        cand = rng.random(300) < 0.3
        for name in STRATEGIES:
            for diverse in (False, True):
                idx = select(name, cand, k=8, X=X, proba=proba, diverse=diverse, rng=trial)
                assert cand[idx].all(), (name, diverse)
                assert len(set(idx.tolist())) == len(idx)


def test_select_ties_and_seed_determinism():
    scores = np.zeros(20)
    cand = np.ones(20, dtype=bool)
    a = select(scores, cand, k=5, rng=np.random.default_rng(42))
    b = select(scores, cand, k=5, rng=np.random.default_rng(42))
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == 5
    np.testing.assert_array_equal(select(scores, cand, k=5), select(scores, cand, k=5))  # None = seed 0


def test_select_diverse_skips_duplicates_of_a_repeated_row():
    rng = np.random.default_rng(0)
    # 30 copies of one row with the best scores, then 40 distinct rows
    X = np.vstack([np.tile([[5.0, 5.0, 5.0]], (30, 1)), rng.standard_normal((40, 3))])
    scores = np.concatenate([np.full(30, 0.99), np.linspace(0.9, 0.1, 40)])
    cand = np.ones(70, dtype=bool)
    plain = select(scores, cand, k=5, X=X)
    assert np.all(plain < 30)  # without diversity: five copies of the same cell
    batch = select(scores, cand, k=5, X=X, diverse=True, rng=1)
    assert len(batch) == 5
    rows = {tuple(r) for r in X[batch]}
    assert len(rows) == 5
    assert np.sum(batch < 30) == 1
    assert batch[0] < 30  # the best-scoring cell leads the batch
    np.testing.assert_array_equal(batch, select(scores, cand, k=5, X=X, diverse=True, rng=1))
    # fewer distinct rows than k: one cell per distinct row, no duplicates
    X2 = np.repeat(np.eye(3), 4, axis=0)
    few = select(np.arange(12.0), np.ones(12, dtype=bool), k=5, X=X2, diverse=True)
    assert len(few) == 3 and len({tuple(r) for r in X2[few]}) == 3


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: entropy(np.array([[0.5, np.nan], [0.5, 0.5]])), "NaN"),
        (lambda: margin(np.array([0.5, 0.5])), "2-D"),
        (lambda: margin(np.array([[1.0], [1.0]])), "at least 2 classes"),
        (lambda: least_confidence(np.array([[0.5, 0.6]])), "sum to 1"),
        (lambda: density_weighted(np.full((3, 2), 0.5), np.zeros((4, 2))), "4 rows but there are 3 cells"),
        (lambda: density_weighted(np.full((3, 2), 0.5), None), "pass X"),
        (
            lambda: select("margin_density", np.ones(3, dtype=bool), proba=np.full((3, 2), 0.5)),
            "'margin_density'",
        ),
        (lambda: density_weighted(np.full((3, 2), 0.5), np.zeros((3, 2)), base="gini"), "unknown base"),
        (lambda: select(np.ones(3), np.zeros(3, dtype=bool)), "no candidate cells"),
        (lambda: select(np.ones(3), np.ones(4, dtype=bool)), "one entry per cell"),
        (lambda: select(np.array([0.1, np.nan, 0.2]), np.ones(3, dtype=bool)), "NaN"),
        (lambda: select(np.ones(3), np.ones(3, dtype=bool), k=0), "k must be >= 1"),
        (lambda: select("bald", np.ones(3, dtype=bool), proba=np.full((3, 2), 0.5)), "unknown strategy"),
        (lambda: select("entropy", np.ones(3, dtype=bool)), "needs proba"),
        (lambda: select(np.ones(3), np.ones(3, dtype=bool), k=2, diverse=True), "needs the feature matrix"),
    ],
)
def test_invalid_inputs_raise_helpful_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_density_weighted_100k_cells_is_fast():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((100_000, 20))
    proba = rng.dirichlet(np.ones(5), 100_000)
    t0 = time.perf_counter()
    s = density_weighted(proba, X)
    elapsed = time.perf_counter() - t0
    assert s.shape == (100_000,) and np.all(np.isfinite(s))
    # ~2 s on two idle cores; generous bound so a loaded CI machine does not flake
    assert elapsed < 10.0, f"density_weighted took {elapsed:.1f} s for 100k cells"
