"""Synthetic nuclei fields of any size, rendered tile by tile with known objects.

A field is a jittered grid of elliptic nuclei (random size, elongation, angle and
brightness, a few grid places left empty) on a slowly varying background with Gaussian
noise. Every pixel depends only on the seed and its position, never on which region is
asked for, so a 20,000 x 20,000 image can be written chunk by chunk with bounded memory,
and any region's ground-truth labels come with it. Used by the large-image benchmark and
the block-wise tests; nuclei are separated by at least ``gap`` pixels, so that a classical
threshold finds each one whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["NucleiField"]


@dataclass(frozen=True)
class NucleiField:
    """A seeded synthetic nuclei image of ``shape`` pixels (uint16), and its true labels.

    Parameters
    ----------
    shape : (int, int)
        Height and width in pixels.
    seed : int
        Everything random (positions, shapes, noise) follows from it.
    spacing : int
        Grid step between nuclei centres (pixels).
    radius : (float, float)
        Range of the ellipses' semi-axes (pixels).
    jitter : float
        Largest shift of a centre from its grid place (pixels).
    empty : float
        Fraction of grid places left without a nucleus.
    noise : float
        Standard deviation of the pixel noise (grey levels).
    tile : int
        Noise is drawn per ``tile x tile`` square (a region of any size gives the same pixels).
    offset : (float, float)
        Shift of the whole grid (pixels), e.g. to put nuclei exactly on block borders.
    """

    shape: tuple[int, int]
    seed: int = 0
    spacing: int = 34
    radius: tuple[float, float] = (7.0, 12.0)
    jitter: float = 3.0
    empty: float = 0.1
    noise: float = 12.0
    tile: int = 1024
    offset: tuple[float, float] = (0.0, 0.0)

    @property
    def grid(self) -> tuple[int, int]:
        """Rows and columns of grid places."""
        return (math.ceil(self.shape[0] / self.spacing) + 1, math.ceil(self.shape[1] / self.spacing) + 1)

    @property
    def diameter(self) -> float:
        """Typical nucleus diameter (pixels)."""
        return float(sum(self.radius))

    def _objects(self, r0: int, r1: int, c0: int, c1: int) -> dict[str, np.ndarray]:
        """The nuclei of grid rows ``r0:r1`` and columns ``c0:c1`` (each place seeded by its index)."""
        rows, cols = np.mgrid[r0:r1, c0:c1]
        rows, cols = rows.ravel(), cols.ravel()
        ncols = self.grid[1]
        ids = (rows * ncols + cols).astype(np.int64)
        # one counter-based draw per place: identical whichever region asks for it
        u = np.empty((ids.size, 7))
        for k in range(7):
            u[:, k] = _hash_uniform(ids * 7 + k, self.seed)
        a = self.radius[0] + (self.radius[1] - self.radius[0]) * u[:, 0]
        b = a * (0.6 + 0.4 * u[:, 1])
        return {
            "id": ids + 1,
            "present": u[:, 6] >= self.empty,
            "cy": rows * self.spacing + self.offset[0] + self.jitter * (2 * u[:, 2] - 1),
            "cx": cols * self.spacing + self.offset[1] + self.jitter * (2 * u[:, 3] - 1),
            "a": a,
            "b": b,
            "theta": math.pi * u[:, 4],
            "bright": 900.0 + 1500.0 * u[:, 5],
        }

    def render(self, y0: int, y1: int, x0: int, x1: int, *, labels: bool = False) -> np.ndarray:
        """Pixels (``uint16``) or true labels (``uint32``, ids stable over regions) of a region."""
        y0, x0 = max(0, y0), max(0, x0)
        y1, x1 = min(self.shape[0], y1), min(self.shape[1], x1)
        h, w = y1 - y0, x1 - x0
        reach = self.radius[1] + self.jitter + 2
        s = self.spacing
        r0 = max(0, math.floor((y0 - reach - self.offset[0]) / s))
        r1 = min(self.grid[0], math.ceil((y1 + reach - self.offset[0]) / s) + 1)
        c0 = max(0, math.floor((x0 - reach - self.offset[1]) / s))
        c1 = min(self.grid[1], math.ceil((x1 + reach - self.offset[1]) / s) + 1)
        obj = self._objects(r0, r1, c0, c1)
        out = np.zeros((h, w), np.uint32 if labels else np.float32)
        for i in np.flatnonzero(obj["present"]):
            cy, cx, a = obj["cy"][i], obj["cx"][i], obj["a"][i]
            # image coordinates throughout: a pixel's value never depends on the region asked for
            ya, yb = max(y0, math.floor(cy - a - 1)), min(y1, math.ceil(cy + a + 2))
            xa, xb = max(x0, math.floor(cx - a - 1)), min(x1, math.ceil(cx + a + 2))
            if ya >= yb or xa >= xb:
                continue
            yy, xx = np.ogrid[ya:yb, xa:xb]
            dy, dx = yy - cy, xx - cx
            ct, st = math.cos(obj["theta"][i]), math.sin(obj["theta"][i])
            u = (dy * ct + dx * st) / a
            v = (-dy * st + dx * ct) / obj["b"][i]
            r2 = u * u + v * v
            inside = r2 <= 1.0
            win = out[ya - y0 : yb - y0, xa - x0 : xb - x0]
            if labels:
                win[inside] = obj["id"][i]
            else:  # brighter centre, a little chromatin texture, a sharp rim
                tex = 1.0 + 0.08 * np.sin(0.9 * yy + 1.7 * obj["theta"][i]) * np.cos(0.7 * xx)
                prof = obj["bright"][i] * (1.0 - 0.35 * r2) * tex
                win += np.where(inside, prof, 0.0).astype(np.float32)
        if labels:
            return out
        yy, xx = np.ogrid[y0:y1, x0:x1]
        out += (200.0 + 60.0 * np.sin(yy / 3000.0) * np.cos(xx / 3700.0)).astype(np.float32)
        out += self._noise(y0, y1, x0, x1)
        return np.clip(out, 0, 65535).astype(np.uint16)

    def _noise(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        t = self.tile
        out = np.empty((y1 - y0, x1 - x0), np.float32)
        for ty in range(y0 // t, (y1 - 1) // t + 1):
            for tx in range(x0 // t, (x1 - 1) // t + 1):
                rng = np.random.default_rng((self.seed, ty, tx))
                tile = rng.standard_normal((t, t), dtype=np.float32) * np.float32(self.noise)
                ya, yb = max(y0, ty * t), min(y1, (ty + 1) * t)
                xa, xb = max(x0, tx * t), min(x1, (tx + 1) * t)
                out[ya - y0 : yb - y0, xa - x0 : xb - x0] = tile[
                    ya - ty * t : yb - ty * t, xa - tx * t : xb - tx * t
                ]
        return out


def _hash_uniform(keys: np.ndarray, seed: int) -> np.ndarray:
    """Uniform numbers in [0, 1) from integer keys (splitmix64): the same key, the same number."""
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)
