"""Minimum enclosing circles: the vectorised rounds against Welzl's algorithm, one point set at a time.

``geometry._mec`` (Welzl's incremental algorithm, the implementation before the
vectorised one and still its fallback) is the reference: the smallest enclosing circle
is unique, so both must find the same one, to rounding.
"""

from __future__ import annotations

from contextlib import suppress

import numpy as np
import pytest
from scipy.spatial import ConvexHull, QhullError
from skimage.io import imread

from napari_phenotyper.core import geometry
from napari_phenotyper.core.features import _Runs, _Scan
from napari_phenotyper.core.geometry import Hulls, minimum_enclosing_circles


def _hulls(point_sets: list[np.ndarray]) -> Hulls:
    """Point sets (``(k, 2)`` rows and columns) as a :class:`Hulls`, label after label."""
    count = np.array([len(p) for p in point_sets])
    pts = np.concatenate(point_sets).astype(np.float64)
    return Hulls(pts[:, 0].copy(), pts[:, 1].copy(), np.cumsum(count) - count, count)


def _welzl(hulls: Hulls) -> tuple[np.ndarray, np.ndarray]:
    out = np.array(
        [
            geometry._mec(hulls.y[s : s + c].tolist(), hulls.x[s : s + c].tolist())
            for s, c in zip(hulls.start.tolist(), hulls.count.tolist(), strict=True)
        ]
    )
    return out[:, :2], out[:, 2]


def _assert_same_circles(hulls: Hulls) -> None:
    centres, radii = minimum_enclosing_circles(hulls)
    ref_c, ref_r = _welzl(hulls)
    scale = np.maximum(ref_r, 1.0)
    np.testing.assert_array_less(np.abs(radii - ref_r) / scale, 1e-9)
    np.testing.assert_array_less(np.abs(centres - ref_c).max(axis=1) / scale, 1e-9)
    # and every point is inside its circle
    obj = np.repeat(np.arange(hulls.n), hulls.count)
    d2 = (hulls.y - centres[obj, 0]) ** 2 + (hulls.x - centres[obj, 1]) ** 2
    assert (d2 <= radii[obj] ** 2 * (1 + 1e-9) + 1e-9).all()


def test_degenerate_point_sets():
    """One point, two, three (acute, obtuse, right), collinear points, repeated points, a
    square and a regular octagon (four and eight points on the circle)."""
    sets = [
        np.array([[3, 4]]),
        np.array([[0, 0], [4, 3]]),
        np.array([[2, 2], [2, 2]]),
        np.array([[0, 0], [0, 6], [5, 3]]),  # acute: the circumcircle
        np.array([[0, 0], [0, 10], [1, 5]]),  # obtuse: the longest side's circle
        np.array([[0, 0], [0, 4], [3, 0]]),  # right: both
        np.array([[0, 0], [1, 1], [2, 2], [5, 5]]),
        np.array([[0, 0], [0, 1], [0, 2], [0, 3], [0, 7]]),
        np.array([[1, 1], [1, 1], [4, 5], [4, 5], [1, 1]]),
        np.array([[0, 0], [0, 4], [4, 4], [4, 0]]),
        np.array([[0, 1], [0, 2], [1, 3], [2, 3], [3, 2], [3, 1], [2, 0], [1, 0]]),
        np.array([[10, 10], [10, 10], [10, 10]]),
    ]
    _assert_same_circles(_hulls(sets))
    centres, radii = minimum_enclosing_circles(_hulls(sets[:2]))
    np.testing.assert_array_equal(centres, [[3, 4], [2, 1.5]])
    np.testing.assert_array_equal(radii, [0, 2.5])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_convex_hulls(seed):
    """Convex hulls of random integer points, as of pixel centres: from 1 to 60 vertices,
    small and large, thin and round."""
    rng = np.random.default_rng(seed)
    sets = []
    for _ in range(400):
        k = int(rng.integers(1, 80))
        spread = rng.choice([2, 10, 300])
        pts = np.unique(rng.integers(0, spread, (k, 2)) * [1, int(rng.integers(1, 4))], axis=0)
        if len(pts) >= 3:
            with suppress(QhullError):  # collinear: the points as they are
                pts = pts[ConvexHull(pts).vertices]
        sets.append(rng.permutation(pts))
    _assert_same_circles(_hulls(sets))


def test_points_on_a_circle():
    """Many points on one circle (rounded and exact), where any three of them define it."""
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    ring = np.column_stack([50 + 30 * np.cos(t), 50 + 30 * np.sin(t)])
    _assert_same_circles(_hulls([ring, np.round(ring), ring[::7], ring[:3]]))


def test_real_labels_and_blocks(shared_data, monkeypatch):
    """The hulls of the Coelho nuclei, in several blocks of labels (as progress is reported)."""
    labels = imread(shared_data / "coelho2009_nuclei" / "labels" / "ic100" / "dna-3.png").astype(np.int32)
    scan = _Scan(labels, perimeter=False, touching=False)
    runs = _Runs(labels, scan.run_start, scan.run_end)
    hulls = geometry.hulls_of_runs(runs.run_rank, runs.row, runs.c0, runs.c1, runs.n)
    monkeypatch.setattr(geometry, "EVERY", 7)
    _assert_same_circles(hulls)


def test_unfinished_labels_fall_back_to_welzl(monkeypatch):
    """Labels the vectorised rounds leave unfinished go through Welzl's algorithm."""
    rng = np.random.default_rng(3)
    sets = [rng.integers(0, 100, (30, 2)) for _ in range(20)]
    monkeypatch.setattr(geometry, "_MAX_ROUNDS", 0)
    _assert_same_circles(_hulls(sets))
