"""Synthetic cells shared by the widget tests: two kinds on a grid, with known classes."""

from __future__ import annotations

import numpy as np


def grid_cells(rows: int, cols: int, step: int = 30, seed: int = 0):
    """``rows x cols`` cells: 'big' (radius 10-11, dim) and 'small' (radius 5-6, bright),
    alternating like a chessboard. Returns ``(image, labels, kinds)``, kinds = {label: kind}."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: rows * step, : cols * step]
    labels = np.zeros(yy.shape, np.int32)
    image = np.zeros(yy.shape, np.float32)
    kinds = {}
    lab = 0
    for r in range(rows):
        for c in range(cols):
            lab += 1
            big = (r + c) % 2 == 0
            rad = (10 if big else 5) + rng.integers(0, 2)
            cy, cx = r * step + step // 2, c * step + step // 2
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= rad * rad
            labels[disk] = lab
            image[disk] = (60 if big else 200) + rng.normal(0, 5, disk.sum())
            kinds[lab] = "big" if big else "small"
    return image, labels, kinds
