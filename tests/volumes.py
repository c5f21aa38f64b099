"""Synthetic 3-D test volumes: bright balls with anisotropic voxels and their truth."""

import numpy as np

R = 8  # ball radius in in-plane pixels


def balls(spacing=(2.0, 1.0, 1.0), centres=((20, 20, 20), (20, 20, 52), (20, 48, 30)), touching=True, seed=0):
    """Bright balls (physical radius R) in a (Z, Y, X) volume sampled with ``spacing``.

    ``centres`` are physical (z, y, x) positions in in-plane pixels; with ``touching`` two
    more balls overlap slightly (their centres 1.8 R apart). Returns image and truth.
    """
    sp = np.asarray(spacing, float)
    extent = np.array([40.0, 72.0, 80.0])
    shape = tuple(int(n) for n in np.ceil(extent / sp))
    allc = list(centres) + ([(20, 48, 56), (20, 48, 56 + 1.8 * R)] if touching else [])
    grid = np.indices(shape).astype(float) * sp[:, None, None, None]
    truth = np.zeros(shape, np.int32)
    best = np.full(shape, np.inf)
    for k, c in enumerate(allc, start=1):
        d2 = sum((grid[i] - c[i]) ** 2 for i in range(3))
        inside = (d2 <= R * R) & (d2 < best)
        truth[inside] = k
        best = np.where(inside, d2, best)
    rng = np.random.default_rng(seed)
    img = rng.normal(100, 5, shape) + 400 * (truth > 0)
    img += np.linspace(0, 60, shape[2])[None, None, :]  # uneven illumination
    return img.astype(np.float32), truth
