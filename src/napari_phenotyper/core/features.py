"""Per-cell features from a 2D label image and optional intensity channels.

Everything is computed for all labels at once, without a per-object loop:

* one pass over the label image in row bands finds the runs of equal labels along
  rows (and, for the shape and neighbour groups, the border pixels' perimeter
  weights and the pairs of touching labels);
* the runs, sorted by label, give areas, moments, bounding boxes and Euler numbers
  in closed form, and convex hulls as the convex envelopes of every row's extreme
  pixels, pruned for all labels together in exact integer arithmetic;
* intensity and texture features stream over chunks of labels whose pixels are
  recovered in label order from the runs, so that every per-label statistic is an
  ``np.add.reduceat`` over contiguous pixels, order statistics come from per-label
  histograms (integer images) or a lexsort, and co-occurrence matrices from one
  ``np.bincount`` per offset.

Streaming keeps every temporary array small: on large images, fresh multi-megabyte
temporaries cost more in page faults than the arithmetic done on them.

Shape definitions follow :func:`skimage.measure.regionprops` exactly (same perimeter
estimator, orientation convention, convex image and Euler connectivity); intensity
statistics match numpy on each cell's pixels; the Haralick features match
:func:`skimage.feature.graycoprops` on a symmetric, normalised co-occurrence matrix
built from pairs of pixels that both belong to the cell.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping, Sequence
from itertools import pairwise
from math import sqrt

import numpy as np
import pandas as pd

from .progress import Progress, run

__all__ = [
    "DEFAULT_FEATURE_GROUPS",
    "FEATURE_GROUPS",
    "FEATURE_SETS",
    "INTENSITY_FEATURES",
    "NEIGHBOR_FEATURES",
    "RENAMED_COLUMNS",
    "SHAPE_FEATURES",
    "TEXTURE_FEATURES",
    "ZERNIKE_FEATURES",
    "compute_features",
    "feature_columns",
    "iter_features",
    "upgrade_column_names",
]

#: The feature groups, in the order their columns appear in the table.
FEATURE_GROUPS = ("shape", "zernike", "intensity", "texture", "neighbors")
#: The groups measured unless others are asked for (Zernike moments are opt-in).
DEFAULT_FEATURE_GROUPS = ("shape", "intensity", "texture", "neighbors")
#: The feature sets: this package's fast default, and CellProfiler 4's definitions
#: and column names (:mod:`napari_phenotyper.core.cellprofiler`).
FEATURE_SETS = ("default", "cellprofiler")

#: Shape columns (one each per cell). ``bbox_max_*`` are exclusive, as in regionprops.
SHAPE_FEATURES = (
    "centroid_y",
    "centroid_x",
    "bbox_min_y",
    "bbox_min_x",
    "bbox_max_y",
    "bbox_max_x",
    "area",
    "perimeter",
    "equivalent_diameter",
    "major_axis_length",
    "minor_axis_length",
    "eccentricity",
    "orientation",
    "solidity",
    "extent",
    "circularity",
    "euler_number",
)

#: Intensity features; the table has one column ``<feature>_<channel>`` per channel.
INTENSITY_FEATURES = (
    "mean_intensity",
    "std_intensity",
    "min_intensity",
    "max_intensity",
    "median_intensity",
    "q25_intensity",
    "q75_intensity",
    "integrated_intensity",
    "mass_displacement",
)

#: Texture features of the grey-level co-occurrence matrix; one column
#: ``<feature>_<channel>`` per channel. ``haralick_*`` are Haralick's (1973) f2, f5
#: (homogeneity = inverse difference moment), f3, f1 and f9; ``glcm_dissimilarity``
#: and ``glcm_energy`` (the square root of the angular second moment) are not his.
TEXTURE_FEATURES = (
    "haralick_contrast",
    "glcm_dissimilarity",
    "haralick_homogeneity",
    "glcm_energy",
    "haralick_correlation",
    "haralick_asm",
    "haralick_entropy",
)

#: Neighbour features.
NEIGHBOR_FEATURES = ("n_neighbors",)

#: Zernike moments of the cell's mask in its minimum enclosing circle, degree 0 to 9.
ZERNIKE_FEATURES = tuple(f"zernike_{n}_{m}" for n in range(10) for m in range(n % 2, n + 1, 2))

#: Column name prefixes of earlier versions and their present names (tables and
#: classifiers saved before a rename still apply; see :func:`upgrade_column_names`).
RENAMED_COLUMNS = {
    "haralick_dissimilarity_": "glcm_dissimilarity_",
    "haralick_energy_": "glcm_energy_",
}


def upgrade_column_names(names: Iterable[str]) -> list[str]:
    """Column names with the features renamed since they were saved given their present names.

    ``haralick_dissimilarity_<channel>`` and ``haralick_energy_<channel>`` (once
    named as Haralick features, which they are not) become
    ``glcm_dissimilarity_<channel>`` and ``glcm_energy_<channel>``; every other name
    is returned as it is.
    """
    out = []
    for name in names:
        name = str(name)
        for old, new in RENAMED_COLUMNS.items():
            if name.startswith(old):
                name = new + name[len(old) :]
                break
        out.append(name)
    return out


_INT_COLUMNS = frozenset(
    {"label", "bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x", "euler_number", "n_neighbors"}
)

#: Channel name given to a single intensity array.
DEFAULT_CHANNEL = "intensity"

# Work is streamed so that no temporary array is much larger than these.
#: Pixels per row band when scanning the label image.
_BAND_PIXELS = 1 << 21
#: Pixels per chunk of labels for the intensity and texture groups.
_CHUNK_PIXELS = 1 << 15
#: Largest (label x grey level) histogram held at once; beyond it, sort instead.
_MAX_HIST_BINS = 1 << 18

# skimage.measure.perimeter: weights of the codes of the 3x3 convolution
# [[10, 2, 10], [2, 1, 2], [10, 2, 10]] of the 4-connected border image.
_PERIMETER_WEIGHTS = np.zeros(50, dtype=np.float64)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIMETER_WEIGHTS[[21, 33]] = sqrt(2.0)
_PERIMETER_WEIGHTS[[13, 23]] = (1.0 + sqrt(2.0)) / 2.0
_PERIMETER_WEIGHTS.flags.writeable = False
_NEIGHBORS_8 = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
_NEIGHBOR_CODES = np.array([2 if dy == 0 or dx == 0 else 10 for dy, dx in _NEIGHBORS_8], dtype=np.uint8)


# --------------------------------------------------------------------------- columns
def _normalise_groups(groups: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(groups, str):
        groups = (groups,)
    groups = tuple(groups)
    unknown = [g for g in groups if g not in FEATURE_GROUPS]
    if unknown:
        raise ValueError(f"Unknown feature group(s) {unknown}; choose among {', '.join(FEATURE_GROUPS)}.")
    return tuple(g for g in FEATURE_GROUPS if g in groups)


def feature_columns(
    channel_names: Sequence[str] | None = (), groups: Iterable[str] = DEFAULT_FEATURE_GROUPS
) -> list[str]:
    """Column names of a feature table, in order.

    Parameters
    ----------
    channel_names : sequence of str, optional
        Intensity channel names, in the order they were given to
        :func:`iter_features` (a single array is called ``"intensity"``).
    groups : iterable of str, optional
        Feature groups among :data:`FEATURE_GROUPS` (default
        :data:`DEFAULT_FEATURE_GROUPS`). Columns always come in the canonical group
        order, whatever the order given here.

    Returns
    -------
    list of str
        ``label``, then shape columns, Zernike columns, ``<feature>_<channel>``
        intensity columns channel by channel, then texture columns channel by channel,
        then ``n_neighbors``. Intensity and texture columns need at least one channel.
    """
    groups = _normalise_groups(groups)
    channels = [str(c) for c in (channel_names or ())]
    cols = ["label"]
    if "shape" in groups:
        cols += SHAPE_FEATURES
    if "zernike" in groups:
        cols += ZERNIKE_FEATURES
    if "intensity" in groups:
        cols += [f"{f}_{c}" for c in channels for f in INTENSITY_FEATURES]
    if "texture" in groups:
        cols += [f"{f}_{c}" for c in channels for f in TEXTURE_FEATURES]
    if "neighbors" in groups:
        cols += NEIGHBOR_FEATURES
    return cols


def _column_dtype(name: str) -> type:
    return np.int64 if name in _INT_COLUMNS else np.float64


def _empty_table(columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({c: np.empty(0, dtype=_column_dtype(c)) for c in columns})


# -------------------------------------------------------------------------- validation
def _check_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(
            f"labels must be a 2D label image, got {labels.ndim}D with shape {labels.shape}; "
            "measure one plane at a time."
        )
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must have an integer dtype, got {labels.dtype}; label a binary mask "
            "with skimage.measure.label first, or cast integral ids with labels.astype(int)."
        )
    if labels.size and np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:
        raise ValueError(
            "labels must be non-negative (0 = background); relabel the image, e.g. with "
            "skimage.segmentation.relabel_sequential."
        )
    if labels.dtype == np.uint64 and labels.size and labels.max() > np.iinfo(np.int64).max:
        raise ValueError("label ids must fit in int64; relabel with skimage.segmentation.relabel_sequential.")
    return np.ascontiguousarray(labels)


def _check_channels(intensities, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    if intensities is None:
        return {}
    if isinstance(intensities, Mapping):
        items = list(intensities.items())
    else:
        items = [(DEFAULT_CHANNEL, intensities)]
    channels: dict[str, np.ndarray] = {}
    for name, img in items:
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"Intensity channel names must be non-empty strings, got {name!r}; "
                "pass a dict such as {'dapi': image}."
            )
        img = np.asarray(img)
        if img.shape != shape:
            raise ValueError(
                f"Intensity channel {name!r} has shape {img.shape} but the labels have shape "
                f"{shape}; pass one 2D image per channel, the same size as the labels "
                "(split a multichannel image into a dict of channels)."
            )
        if not (
            np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating) or img.dtype == bool
        ):
            raise ValueError(f"Intensity channel {name!r} has dtype {img.dtype}; pass a real-valued image.")
        channels[name] = img.astype(np.uint8) if img.dtype == bool else img
    return channels


def _check_spacing(spacing) -> tuple[float, float]:
    if spacing is None:
        return (1.0, 1.0)
    sp = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if sp.size == 1:
        sp = np.repeat(sp, 2)
    if sp.shape != (2,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(
            f"spacing must be one positive number or a (y, x) pair of positive numbers, got {spacing!r}."
        )
    return float(sp[0]), float(sp[1])


def _check_texture(distances, levels) -> tuple[tuple[int, ...], int]:
    try:
        dists = tuple(int(d) for d in np.atleast_1d(distances))
    except (TypeError, ValueError):
        dists = ()
    if (
        not dists
        or any(d < 1 for d in dists)
        or any(d != float(x) for d, x in zip(dists, np.atleast_1d(distances), strict=True))
    ):
        raise ValueError(
            f"texture_distances must be a non-empty sequence of positive integers, got {distances!r}."
        )
    if not isinstance(levels, (int, np.integer)) or not 2 <= levels <= 65536:
        raise ValueError(f"texture_levels must be an integer between 2 and 65536, got {levels!r}.")
    return dists, int(levels)


# ------------------------------------------------------------------------------- scan
def _padded_band(labels: np.ndarray, r0: int, r1: int, halo: int) -> np.ndarray:
    """Rows ``r0 - halo`` to ``r1 + halo`` of the labels, zero outside, one zero column each side."""
    h, w = labels.shape
    band = np.zeros((r1 - r0 + 2 * halo, w + 2), dtype=labels.dtype)
    a0, a1 = max(r0 - halo, 0), min(r1 + halo, h)
    band[a0 - r0 + halo : a1 - r0 + halo, 1:-1] = labels[a0:a1]
    return band


class _Band:
    """The changes between neighbouring pixels of one row band, found once.

    ``band`` comes from :func:`_padded_band` with ``halo=2`` and is read as one flat
    array of row stride ``W``: ``h[i]`` are the flat positions ``k`` with
    ``band[k] != band[k + 1]`` (the zero columns keep rows apart), ``v`` those with
    ``band[k] != band[k + W]``. Runs, border pixels and touching pairs all follow
    from these two lists, so the band is compared pixel by pixel only twice.
    """

    def __init__(self, band: np.ndarray):
        self.flat = band.ravel()
        self.stride = band.shape[1]
        self.lo = 2 * self.stride  # the central rows: flat [lo, hi)
        self.hi = (band.shape[0] - 2) * self.stride
        f = self.flat
        self.h = np.flatnonzero(f[1:] != f[:-1])
        self._border: np.ndarray | None = None
        self._ring = self.h[:0]

    def runs(self) -> tuple[np.ndarray, np.ndarray]:
        """Flat positions (in the band) of the first and last pixel of each run."""
        i0, i1 = np.searchsorted(self.h, (self.lo, self.hi))
        k = self.h[i0:i1]
        # a change's right pixel starts a segment that ends at the next change; a
        # row's last change leads into its zero column, so a non-zero segment never
        # spans two rows
        run = np.flatnonzero(self.flat[k + 1] != 0)
        return k[run] + 1, k[run + 1]

    def border(self) -> np.ndarray:
        """Sorted flat positions of the central rows' border pixels.

        A border pixel is non-zero and has a 4-neighbour with another label: one
        side of a horizontal or a vertical change.
        """
        if self._border is None:
            f, w = self.flat, self.stride
            v = np.flatnonzero(f[w:] != f[:-w])
            lo, hi = np.searchsorted(self.h, (self.lo - w - 1, self.hi + w))
            h = self.h[lo:hi]
            lo, hi = np.searchsorted(v, (self.lo - 2 * w, self.hi + w))
            v = v[lo:hi]
            # four sorted runs: a stable sort merges them
            cand = np.sort(np.concatenate([h, h + 1, v, v + w]), kind="stable")
            keep = np.empty(cand.size, dtype=bool)
            keep[:1] = True
            np.not_equal(cand[1:], cand[:-1], out=keep[1:])
            cand = cand[keep]
            cand = cand[f[cand] != 0]
            self._ring = cand  # border pixels of the central rows +- 1
            lo, hi = np.searchsorted(cand, (self.lo, self.hi))
            self._border = cand[lo:hi]
        return self._border

    def perimeter(self) -> tuple[np.ndarray, np.ndarray]:
        """Labels and perimeter weights of the central rows' border pixels.

        A pixel's weight comes from the code of the 3x3 convolution
        ``[[10, 2, 10], [2, 1, 2], [10, 2, 10]]`` of its own label's border pixels,
        exactly as ``skimage.measure.perimeter`` on that label's mask.
        """
        pb = self.border()
        f, w = self.flat, self.stride
        blab = np.zeros_like(f)  # the label at border pixels, 0 elsewhere
        blab[self._ring] = f[self._ring]
        lab = f.take(pb)
        code = np.ones(pb.size, dtype=np.uint8)
        for (dy, dx), weight in zip(_NEIGHBORS_8, _NEIGHBOR_CODES, strict=True):
            same = blab.take(pb + (dy * w + dx)) == lab
            code += same.view(np.uint8) * weight
        return lab, _PERIMETER_WEIGHTS.take(code)

    def touching(self) -> tuple[np.ndarray, np.ndarray]:
        """Pairs of different non-zero labels that are 8-neighbours.

        Looked for from the border pixels only, forwards (right and the row below):
        two touching labels always have a 4-adjacent pair of pixels, both border
        pixels, unless a diagonal pair's 4-neighbours are themselves of one of the
        two labels, which makes those a 4-adjacent pair. Each distinct pair of labels
        is therefore found (possibly several times).
        """
        pb = self.border()
        f, w = self.flat, self.stride
        a = f[pb]
        out_a, out_b = [], []
        for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):
            b = f[pb + (dy * w + dx)]
            m = b != a
            m &= b != 0
            out_a.append(a[m])
            out_b.append(b[m])
        return np.concatenate(out_a), np.concatenate(out_b)


class _Scan:
    """One pass over the label image in row bands.

    Collects the runs of equal non-zero labels along rows (flat index of the first
    and last pixel of each) and, on request, the border pixels' perimeter weights and
    the pairs of touching labels.
    """

    def __init__(self, labels: np.ndarray, *, perimeter: bool, touching: bool):
        h, w = labels.shape
        rows_per_band = max(1, _BAND_PIXELS // w)
        starts, ends = [], []
        p_lab, p_w, t_a, t_b = [], [], [], []
        for r0 in range(0, h, rows_per_band):
            r1 = min(h, r0 + rows_per_band)
            band = _Band(_padded_band(labels, r0, r1, halo=2))
            s, e = band.runs()
            # band position p = row_b * (w + 2) + col + 1 -> image (r0 + row_b - 2) * w + col
            shift = (r0 - 2) * w - 1
            starts.append(s - 2 * (s // band.stride) + shift)
            ends.append(e - 2 * (e // band.stride) + shift)
            if perimeter:
                lab, weight = band.perimeter()
                p_lab.append(lab)
                p_w.append(weight)
            if touching:
                a, b = band.touching()
                t_a.append(a)
                t_b.append(b)
        self.run_start = np.concatenate(starts)
        self.run_end = np.concatenate(ends)
        self.perimeter = (np.concatenate(p_lab), np.concatenate(p_w)) if perimeter else None
        self.touching = (np.concatenate(t_a), np.concatenate(t_b)) if touching else None


class _Runs:
    """Runs of the label image sorted by label, then raster order.

    Every per-label quantity is a ``np.add.reduceat`` over a label's runs, and the
    pixels of any range of labels are recovered in label order from the runs.
    """

    def __init__(self, labels: np.ndarray, run_start: np.ndarray, run_end: np.ndarray):
        self.shape = labels.shape
        w = labels.shape[1]
        lab = labels.ravel()[run_start]
        order = np.argsort(lab, kind="stable")
        lab = lab[order]
        self.start = run_start[order]  # flat index of the run's first pixel
        self.row = self.start // w
        self.c0 = self.start - self.row * w
        self.c1 = run_end[order] - self.row * w
        self.length = self.c1 - self.c0 + 1
        change = np.flatnonzero(lab[1:] != lab[:-1]) + 1
        self.first_run = np.concatenate([np.zeros(min(lab.size, 1), np.intp), change])
        self.n_runs = np.diff(np.append(self.first_run, lab.size))
        self.ids = lab[self.first_run].astype(np.int64)
        self.n = self.ids.size
        self.counts = self.sum(self.length)
        self.pix = np.cumsum(self.length) - self.length  # first pixel in label order
        self.n_pixels = int(self.counts.sum())
        self.label_pix = self.pix[self.first_run]
        self.run_rank = np.repeat(np.arange(self.n), self.n_runs)
        self._rank_lut: np.ndarray | None = None

    def sum(self, per_run: np.ndarray) -> np.ndarray:
        """Per-label sum of a per-run array."""
        return np.add.reduceat(per_run, self.first_run)

    def spread(self, per_label: np.ndarray) -> np.ndarray:
        """Per-label values repeated onto the runs."""
        return np.repeat(per_label, self.n_runs)

    def rank_of(self, values: np.ndarray) -> np.ndarray:
        """Index among the sorted ids of label values (all present)."""
        max_id = int(self.ids[-1])
        if max_id <= max(1 << 16, 4 * self.n):
            if self._rank_lut is None:
                self._rank_lut = np.zeros(max_id + 1, dtype=np.intp)
                self._rank_lut[self.ids] = np.arange(self.n)
            return self._rank_lut[values]
        return np.searchsorted(self.ids, values.astype(np.int64))

    def chunks(self, max_pixels: int, max_labels: int | None = None) -> list[tuple[int, int]]:
        """Consecutive ranges of labels with about ``max_pixels`` pixels each."""
        key = self.label_pix // max_pixels
        if max_labels is not None:
            key = key * (self.n + 1) + np.arange(self.n) // max_labels
        bounds = np.flatnonzero(np.diff(key)) + 1
        edges = [0, *bounds.tolist(), self.n]
        return list(pairwise(edges))

    def pixels(self, k0: int, k1: int) -> _Chunk:
        return _Chunk(self, k0, k1)


class _Chunk:
    """The pixels of labels ``k0 .. k1 - 1``, in label order."""

    def __init__(self, runs: _Runs, k0: int, k1: int):
        self.k0, self.k1 = k0, k1
        ra = runs.first_run[k0]
        rb = runs.first_run[k1] if k1 < runs.n else runs.length.size
        self.ra, self.rb = ra, rb
        p0 = runs.label_pix[k0]
        p1 = runs.label_pix[k1] if k1 < runs.n else runs.n_pixels
        lengths = runs.length[ra:rb]
        self.lengths = lengths
        self.flat = np.repeat(runs.start[ra:rb] - (runs.pix[ra:rb] - p0), lengths)
        self.flat += np.arange(p1 - p0)
        self.starts = runs.label_pix[k0:k1] - p0
        self.counts = runs.counts[k0:k1]
        self.n = k1 - k0
        self._runs = runs
        self._rows: np.ndarray | None = None
        self._cols: np.ndarray | None = None

    @property
    def rows(self) -> np.ndarray:
        if self._rows is None:
            self._rows = np.repeat(self._runs.row[self.ra : self.rb], self.lengths)
        return self._rows

    @property
    def cols(self) -> np.ndarray:
        if self._cols is None:
            self._cols = self.flat - self.rows * self._runs.shape[1]
        return self._cols

    def per_run(self, values: np.ndarray) -> np.ndarray:
        """Per-run values of this chunk's runs repeated onto its pixels."""
        return np.repeat(values[self.ra : self.rb], self.lengths)

    def local_rank(self) -> np.ndarray:
        return np.repeat(np.arange(self.n), self.counts)

    def sum(self, per_pixel: np.ndarray) -> np.ndarray:
        return np.add.reduceat(per_pixel, self.starts)

    def spread(self, per_label: np.ndarray) -> np.ndarray:
        return np.repeat(per_label, self.counts)


# ----------------------------------------------------------------------------- shape
class _Centroids:
    """Centroids (pixels) and second central moments (spacing units) per label."""

    def __init__(self, runs: _Runs, spacing: tuple[float, float]):
        sy, sx = spacing
        length = runs.length.astype(np.float64)
        cnt = runs.counts.astype(np.float64)
        row = runs.row.astype(np.float64)
        mid = (runs.c0 + runs.c1) / 2.0  # a run's column sum is length * mid
        self.cy = runs.sum(length * row) / cnt
        self.cx = runs.sum(length * mid) / cnt
        # per-run offsets of the row and of the run's middle column from the centroid
        self.run_dy = row - runs.spread(self.cy)
        run_dx = mid - runs.spread(self.cx)
        self.mu_yy = runs.sum(length * self.run_dy**2) / cnt * sy * sy
        # sum over a run of (c - cx)^2 = L (mid - cx)^2 + L (L^2 - 1) / 12
        self.mu_xx = runs.sum(length * (run_dx**2 + (length**2 - 1) / 12.0)) / cnt * sx * sx
        self.mu_yx = runs.sum(length * self.run_dy * run_dx) / cnt * sy * sx


def _euler_number(runs: _Runs) -> np.ndarray:
    """Euler number with 8-connectivity (as regionprops) of every label.

    For a union of row runs it is the number of runs minus the number of pairs of
    runs in consecutive rows that touch, diagonals included.
    """
    h, w = runs.shape
    stride = w + 2
    base = (runs.run_rank * (h + 1) + runs.row) * stride
    start_key = base + runs.c0  # sorted: runs are ordered by label, row, column
    end_key = base + runs.c1
    below = base + stride  # same label, next row
    hi = np.searchsorted(start_key, below + runs.c1 + 1, side="right")  # start <= c1 + 1
    lo = np.searchsorted(end_key, below + runs.c0 - 1, side="left")  # end < c0 - 1
    touching = np.maximum(hi - lo, 0)
    return runs.n_runs - runs.sum(touching)


def _convex_areas(runs: _Runs) -> np.ndarray:
    """Pixel count of ``skimage.morphology.convex_hull_image`` of every label.

    skimage takes the convex hull of the pixels' edge midpoints (centre +- 0.5 along
    each axis) and keeps the pixel centres inside or on it. In doubled coordinates
    all those points are integers; per half-row ``y`` only the leftmost and the
    rightmost point matter. The hull's left boundary is the convex envelope of the
    left points seen as a function of ``y`` (the right boundary likewise, negated),
    found for all labels at once by repeatedly dropping every point that lies on or
    inside the chord of its two neighbours (a run of such points lies on or inside
    the chord of the run's ends, so dropping them together is safe). Pixels per row
    then follow from exact integer arithmetic.
    """
    n = runs.n
    rank, row = runs.run_rank, runs.row
    # the extreme pixels of every (label, row)
    new = np.ones(row.size, dtype=bool)
    new[1:] = (rank[1:] != rank[:-1]) | (row[1:] != row[:-1])
    g_first = np.flatnonzero(new)
    g_last = np.append(g_first[1:], row.size) - 1
    g_obj = rank[g_first]
    g_row = row[g_first]
    xl = 2 * runs.c0[g_first]
    xr = 2 * runs.c1[g_last]
    # per row and side: the edge midpoint at y = 2r and those at y = 2r -+ 1; two
    # consecutive rows share the one between them (the extreme of the two). That
    # shared point lies on or inside the chord of its rows' middle points unless the
    # rows' extremes differ by two pixels or more: the loop below would drop it
    # first, so it is left out from the start.
    g = g_obj.size
    cont = np.zeros(g, dtype=bool)  # the next group is the same label's next row
    cont[:-1] = (g_obj[1:] == g_obj[:-1]) & (g_row[1:] == g_row[:-1] + 1)
    top = np.ones(g, dtype=bool)
    top[1:] = ~cont[:-1]
    ys = (2 * g_row[:, None] + np.array([-1, 0, 1])).ravel()
    objs = np.repeat(g_obj, 3)
    chains = []
    for x in (xl, -xr):  # negated on the right: both chains keep minima
        nxt = np.append(x[1:], 0)
        below = np.where(cont, np.minimum(x, nxt), x)
        keep = np.stack([top, np.ones(g, dtype=bool), ~cont | (np.abs(nxt - x) >= 4)], axis=1).ravel()
        pts = np.stack([x, x - 1, below], axis=1).ravel()
        chains.append((objs[keep], ys[keep], pts[keep]))
    (obj_l, y_l, x_l), (obj_r, y_r, x_r) = chains
    chain = np.concatenate([obj_l, obj_r + n])
    cy = np.concatenate([y_l, y_r])
    cx = np.concatenate([x_l, x_r])
    while True:
        inner = (chain[:-2] == chain[1:-1]) & (chain[2:] == chain[1:-1])
        yp, yi, yn = cy[:-2], cy[1:-1], cy[2:]
        xp, xi, xn = cx[:-2], cx[1:-1], cx[2:]
        drop = inner & ((xi - xp) * (yn - yp) >= (xn - xp) * (yi - yp))
        if not drop.any():
            break
        keep = np.ones(chain.size, dtype=bool)
        keep[1:-1] = ~drop
        chain, cy, cx = chain[keep], cy[keep], cx[keep]
    # chain edges; edge (p, q) owns the image rows r with y_p <= 2r < y_q
    e_ok = chain[1:] == chain[:-1]
    e_chain = chain[:-1][e_ok]
    y1, y2 = cy[:-1][e_ok], cy[1:][e_ok]
    x1, x2 = cx[:-1][e_ok], cx[1:][e_ok]
    r_lo = -((-y1) // 2)
    n_r = -((-y2) // 2) - r_lo
    e = np.repeat(np.arange(e_chain.size), n_r)
    r = np.arange(e.size) - np.repeat(np.cumsum(n_r) - n_r, n_r) + r_lo[e]
    den = y2[e] - y1[e]
    num = x1[e] * den + (x2[e] - x1[e]) * (2 * r - y1[e])  # boundary x = num / den
    first = -((-num) // (2 * den))  # ceil(x / 2): first pixel column (negated on the right)
    s = np.bincount(e_chain[e], first, minlength=2 * n).astype(np.int64)
    last_run = np.append(runs.first_run[1:], row.size) - 1
    n_rows = row[last_run] - row[runs.first_run] + 1
    return n_rows - s[:n] - s[n:]


def _shape_features(
    runs: _Runs, scan: _Scan, cen: _Centroids, spacing: tuple[float, float]
) -> dict[str, np.ndarray]:
    sy, sx = spacing
    pixel_area = sy * sx
    cnt = runs.counts.astype(np.float64)
    area = cnt * pixel_area
    # inertia tensor as in regionprops: [[a, b], [b, c]]
    a, b, c = cen.mu_xx, -cen.mu_yx, cen.mu_yy
    half_tr = (a + c) / 2
    root = np.hypot((a - c) / 2, b)
    l1 = np.clip(half_tr + root, 0, None)
    l2 = np.clip(half_tr - root, 0, None)
    with np.errstate(invalid="ignore", divide="ignore"):
        ecc = np.where(l1 == 0, 0.0, np.sqrt(np.clip(1 - l2 / l1, 0, None)))
    orientation = np.where(
        a - c == 0,
        np.where(b < 0, np.pi / 4, -np.pi / 4),
        0.5 * np.arctan2(-2 * b, c - a),
    )
    # bounding box (exclusive maxima)
    last_run = np.append(runs.first_run[1:], runs.row.size) - 1
    min_y = runs.row[runs.first_run]
    max_y = runs.row[last_run] + 1
    min_x = np.minimum.reduceat(runs.c0, runs.first_run)
    max_x = np.maximum.reduceat(runs.c1, runs.first_run) + 1
    bbox_area = (max_y - min_y) * (max_x - min_x) * pixel_area
    assert scan.perimeter is not None
    p_lab, p_w = scan.perimeter
    perimeter = np.bincount(runs.rank_of(p_lab), p_w, minlength=runs.n) * sy
    convex = _convex_areas(runs)
    with np.errstate(invalid="ignore", divide="ignore"):
        circularity = np.where(perimeter > 0, 4 * np.pi * area / perimeter**2, np.nan)
    return {
        "centroid_y": cen.cy * sy,
        "centroid_x": cen.cx * sx,
        "bbox_min_y": min_y,
        "bbox_min_x": min_x,
        "bbox_max_y": max_y,
        "bbox_max_x": max_x,
        "area": area,
        "perimeter": perimeter,
        "equivalent_diameter": np.sqrt(4 * area / np.pi),
        "major_axis_length": 4 * np.sqrt(l1),
        "minor_axis_length": 4 * np.sqrt(l2),
        "eccentricity": ecc,
        "orientation": orientation,
        "solidity": area / (convex * pixel_area),
        "extent": area / bbox_area,
        "circularity": circularity,
        "euler_number": _euler_number(runs),
    }


# ------------------------------------------------------------------------- intensity
def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """numpy's linear quantile interpolation (same rounding)."""
    diff = b - a
    out = a + diff * t
    hi = t >= 0.5
    out[hi] = (b - diff * (1 - t))[hi]
    return out


def _order_statistics(chunk: _Chunk, raw: np.ndarray, values: np.ndarray):
    """Return ``get(k)``: the k-th smallest value of every label of the chunk.

    ``raw`` are the chunk's pixel values in their own dtype, ``values`` the same as
    float64; ``k`` holds one position per label.
    """
    if raw.dtype.kind in "iub":
        v_int = raw.astype(np.int64)
        vmin = int(v_int.min())
        span = int(v_int.max()) - vmin + 1
        if chunk.n * span <= _MAX_HIST_BINS:
            # Per-label histograms: the flattened (label, value) histogram is the
            # sorted order of the chunk's pixels, so a sorted position maps to its
            # value by a searchsorted in the cumulative counts.
            v_int -= vmin
            v_int += chunk.spread(np.arange(chunk.n) * span)
            cum = np.cumsum(np.bincount(v_int, minlength=chunk.n * span))
            first_key = np.arange(chunk.n) * span - vmin

            def from_histogram(k: np.ndarray) -> np.ndarray:
                key = np.searchsorted(cum, chunk.starts + k, side="right")
                return (key - first_key).astype(np.float64)

            return from_histogram
        order = np.lexsort((v_int, chunk.local_rank()))
    else:
        order = np.lexsort((values, chunk.local_rank()))
    sorted_values = values[order]

    def from_sorted(k: np.ndarray) -> np.ndarray:
        return sorted_values[chunk.starts + k]

    return from_sorted


class _LabelHistogram:
    """Per-label histograms of a chunk's small-integer values ``vmin .. vmin + width - 1``.

    Exact sums ``s1`` and sums of squares ``s2`` (int64), the standard deviation from
    ``n S2 - S1^2`` in Python integers (no cancellation, whatever the mean), and the
    k-th smallest value of every label (:meth:`get`).
    """

    def __init__(self, chunk: _Chunk, v_int: np.ndarray, vmin: int, width: int):
        n = chunk.n
        # int32: small temporaries, page faults cost more than arithmetic
        key = chunk.spread(np.arange(n, dtype=np.int32) * np.int32(width) - np.int32(vmin))
        key += v_int  # any integer dtype of at most 16 bits (or int32)
        hist = np.bincount(key, minlength=n * width)
        values = np.arange(width, dtype=np.int64) + vmin
        h2 = hist.reshape(n, width)
        self.s1 = h2 @ values  # exact: at most 2^19 pixels of at most 2^16
        self.s2 = h2 @ (values * values)
        cnt = chunk.counts
        numer = cnt.astype(object) * self.s2.astype(object) - self.s1.astype(object) ** 2
        self.std = np.sqrt(numer.astype(np.float64)) / cnt
        self._cum = np.cumsum(hist)
        self._first_key = np.arange(n) * width - vmin
        self._starts = chunk.starts

    def get(self, k: np.ndarray) -> np.ndarray:
        """The ``k[i]``-th smallest value of label ``i`` (as float)."""
        return (np.searchsorted(self._cum, self._starts + k, side="right") - self._first_key).astype(
            np.float64
        )


def _weighted_coordinate_sums(
    chunk: _Chunk, v_int: np.ndarray, vmax: int, runs: _Runs
) -> tuple[np.ndarray, np.ndarray]:
    """``sum v row`` and ``sum v col`` of every label (exact int64); ``|v| <= vmax``.

    ``sum v row`` from the runs' sums. ``sum v col = sum v flat - width * sum v row``
    with the pixels' flat indices the chunk already holds, when no sum can overflow;
    otherwise ``sum_runs [c0 S_run + sum_t t v_t]``. No per-pixel coordinates needed.
    """
    offsets = np.cumsum(chunk.lengths) - chunk.lengths
    run_sum = np.add.reduceat(v_int, offsets, dtype=np.int64)
    first = runs.first_run[chunk.k0 : chunk.k1] - chunk.ra
    row_w = np.add.reduceat(runs.row[chunk.ra : chunk.rb] * run_sum, first)
    h, w = runs.shape
    if vmax * h * w * int(chunk.counts.max()) < 1 << 62:
        return row_w, chunk.sum(v_int * chunk.flat) - w * row_w
    idx_sum = np.add.reduceat(v_int * np.arange(v_int.size), offsets) - offsets * run_sum
    col_w = np.add.reduceat(runs.c0[chunk.ra : chunk.rb] * run_sum + idx_sum, first)
    return row_w, col_w


def _intensity_chunk_hist(
    chunk: _Chunk, raw: np.ndarray, cen: _Centroids, spacing: tuple[float, float], runs: _Runs
) -> dict[str, np.ndarray] | None:
    """Intensity features of a small-integer image from per-label histograms, or None.

    Sums, the variance and order statistics come from one ``(label, value)``
    histogram (:class:`_LabelHistogram`); the intensity-weighted centroid from per-run
    sums. None when the histogram would be too large.
    """
    vmin = int(raw.min())
    span = int(raw.max()) - vmin + 1
    if chunk.n * span > _MAX_HIST_BINS:
        return None
    v_int = raw if raw.dtype.itemsize < 4 else raw.astype(np.int32)
    h = _LabelHistogram(chunk, v_int, vmin, span)
    cnt = chunk.counts
    total = h.s1.astype(np.float64)
    out = {
        "mean_intensity": total / cnt,
        "std_intensity": h.std,
        "min_intensity": h.get(np.zeros_like(cnt)),
        "max_intensity": h.get(cnt - 1),
    }
    for name, q in (("median", 0.5), ("q25", 0.25), ("q75", 0.75)):
        pos = q * (cnt - 1)
        lo = np.floor(pos).astype(np.intp)
        hi = np.minimum(lo + 1, cnt - 1)
        out[f"{name}_intensity"] = _lerp(h.get(lo), h.get(hi), pos - lo)
    out["integrated_intensity"] = total
    # intensity-weighted centroid minus the plain one
    sy, sx = spacing
    row_w, col_w = _weighted_coordinate_sums(chunk, v_int, max(-vmin, vmin + span - 1), runs)
    with np.errstate(invalid="ignore", divide="ignore"):
        wy = (row_w / total - cen.cy[chunk.k0 : chunk.k1]) * sy
        wx = (col_w / total - cen.cx[chunk.k0 : chunk.k1]) * sx
    out["mass_displacement"] = np.hypot(wy, wx)
    return out


def _intensity_chunk(
    chunk: _Chunk, image_flat: np.ndarray, cen: _Centroids, spacing: tuple[float, float], runs: _Runs
) -> dict[str, np.ndarray]:
    sy, sx = spacing
    k0, k1 = chunk.k0, chunk.k1
    raw = image_flat.take(chunk.flat)
    if raw.dtype.kind in "iub" and raw.dtype.itemsize <= 2:
        fast = _intensity_chunk_hist(chunk, raw, cen, spacing, runs)
        if fast is not None:
            return fast
    v = raw.astype(np.float64)
    cnt = chunk.counts.astype(np.float64)
    total = chunk.sum(v)
    mean = total / cnt
    dev = v - chunk.spread(mean)
    dev *= dev
    std = np.sqrt(chunk.sum(dev) / cnt)
    get = _order_statistics(chunk, raw, v)
    n = chunk.counts
    out = {
        "mean_intensity": mean,
        "std_intensity": std,
        "min_intensity": get(np.zeros_like(n)),
        "max_intensity": get(n - 1),
    }
    for name, q in (("median", 0.5), ("q25", 0.25), ("q75", 0.75)):
        pos = q * (n - 1)
        lo = np.floor(pos).astype(np.intp)
        hi = np.minimum(lo + 1, n - 1)
        out[f"{name}_intensity"] = _lerp(get(lo), get(hi), pos - lo)
    out["integrated_intensity"] = total
    # intensity-weighted offsets from the centroid
    dy = chunk.per_run(cen.run_dy)
    dy *= v
    dx = chunk.cols - chunk.spread(cen.cx[k0:k1])
    dx *= v
    with np.errstate(invalid="ignore", divide="ignore"):
        wy = chunk.sum(dy) / total * sy
        wx = chunk.sum(dx) / total * sx
    out["mass_displacement"] = np.hypot(wy, wx)
    if raw.dtype.kind == "f":
        has_nan = chunk.sum(np.isnan(v).astype(np.intp)) > 0
        if has_nan.any():  # as numpy: a NaN pixel makes every statistic NaN
            for arr in out.values():
                arr[has_nan] = np.nan
    return out


# --------------------------------------------------------------------------- texture
class _Quantiser:
    """Grey levels ``0 .. levels - 1`` on an image's global (finite) range.

    ``floor((v - min) / (max - min) * levels)`` clipped to ``levels - 1``, computed as
    written: exactly in integers for integer images (``(v - min) * levels // (max - min)``),
    and dividing before scaling for float images. Pre-dividing (``v * (levels / range)``)
    put values on a bin edge one level low: 49 of 0..98 at 32 levels is level 16, not 15.
    Integer images with a small range go through a lookup table.
    """

    def __init__(self, image: np.ndarray, levels: int, value_range: tuple[float, float] | None = None):
        self.levels = levels
        if value_range is not None:  # the range of the whole image this one is a block of
            lo, hi = value_range
            if image.dtype.kind != "f":
                lo, hi = int(lo), int(hi)
        elif image.dtype.kind == "f":
            finite = image[np.isfinite(image)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        else:
            lo, hi = (int(image.min()), int(image.max())) if image.size else (0, 0)
        self.lo, self.span = lo, hi - lo
        # integer arithmetic stays exact while (v - min) * levels fits in int64
        self.exact = image.dtype.kind in "iub" and lo > -(2**62) and hi < 2**62 and self.span * levels < 2**62
        self.lut: np.ndarray | None = None
        if image.dtype.kind in "iub" and lo >= 0 and hi < (1 << 16):
            self.lut = self._compute(np.arange(int(hi) + 1))[0].astype(np.int32)

    def _compute(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        finite = np.isfinite(raw) if raw.dtype.kind == "f" else None
        if self.span <= 0:
            q = np.zeros(raw.shape, np.int64)
        elif self.exact:
            q = raw.astype(np.int64) - int(self.lo)
            q *= self.levels
            q //= int(self.span)
        else:
            v = raw.astype(np.float64)
            v -= self.lo
            v /= self.span
            v *= self.levels
            if finite is not None:
                v[~finite] = 0
            q = np.floor(v, out=v).astype(np.int64)
        np.clip(q, 0, self.levels - 1, out=q)
        return q, finite

    def __call__(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Grey levels and, for float images, which values were finite."""
        if self.lut is not None:
            return self.lut[raw], None
        return self._compute(raw)


def _texture_offsets(distances: Sequence[int]) -> list[tuple[int, int]]:
    """(dy, dx) for 0, 45, 90 and 135 degrees at each distance (as graycomatrix at d=1)."""
    return [off for d in distances for off in ((0, d), (d, d), (d, 0), (d, -d))]


def _haralick(
    rank: np.ndarray, a: np.ndarray, b: np.ndarray, n: int, levels: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Haralick features of ``n`` labels from pixel pairs ``(a, b)`` of label ``rank``.

    The co-occurrence matrix of each label is made symmetric (pairs counted both
    ways) and normalised, as ``graycomatrix(symmetric=True, normed=True)``. Returns
    the features and which labels had at least one pair.
    """
    L = levels
    keys = rank * (L * L)
    if n * L * L <= _MAX_HIST_BINS:
        keys += a * L
        keys += b
        one_way = np.bincount(keys, minlength=n * L * L).reshape(n, L, L)
        sym = (one_way + one_way.transpose(0, 2, 1)).ravel()  # pairs counted both ways
        uk = np.flatnonzero(sym)
        cnt = sym[uk].astype(np.float64)
    else:
        keys = np.concatenate([keys + a * L + b, keys + b * L + a])
        uk, c = np.unique(keys, return_counts=True)
        cnt = c.astype(np.float64)
    # one entry per non-zero (label, i, j) of the co-occurrence matrices
    er = uk // (L * L)
    i = ((uk // L) % L).astype(np.float64)
    j = (uk % L).astype(np.float64)
    npairs = np.bincount(er, cnt, minlength=n)
    has = npairs > 0

    def per_label(w: np.ndarray) -> np.ndarray:
        return np.bincount(er, w, minlength=n)

    with np.errstate(invalid="ignore", divide="ignore"):
        p = cnt / npairs[er]
        diff = i - j
        asm = per_label(p * p)
        mi, mj = per_label(p * i), per_label(p * j)
        di, dj = i - mi[er], j - mj[er]
        std_i = np.sqrt(per_label(p * di * di))
        std_j = np.sqrt(per_label(p * dj * dj))
        cov = per_label(p * di * dj)
        flat = (std_i < 1e-15) | (std_j < 1e-15)  # as graycoprops
        corr = np.where(flat, 1.0, cov / np.where(flat, 1.0, std_i * std_j))
        feats = {
            "haralick_contrast": per_label(p * diff * diff),
            "glcm_dissimilarity": per_label(p * np.abs(diff)),
            "haralick_homogeneity": per_label(p / (1.0 + diff * diff)),
            "glcm_energy": np.sqrt(asm),
            "haralick_correlation": corr,
            "haralick_asm": asm,
            "haralick_entropy": per_label(-p * np.log(p)),
        }
    return feats, has


def _texture_chunk(
    chunk: _Chunk,
    labels_flat: np.ndarray,
    image_flat: np.ndarray,
    quantise: _Quantiser,
    offsets: Sequence[tuple[int, int]],
    shape: tuple[int, int],
) -> dict[str, np.ndarray]:
    """Haralick features of a chunk's labels, averaged over the offsets with pairs."""
    h, w = shape
    q, finite = quantise(image_flat.take(chunk.flat))
    rank = chunk.local_rank()
    acc = {f: np.zeros(chunk.n) for f in TEXTURE_FEATURES}
    n_valid = np.zeros(chunk.n)
    lab = None
    for dy, dx in offsets:  # dy >= 0, dx > 0 when dy == 0
        if (dy, dx) == (0, 1):
            # right-hand neighbours with the same label are the next pixel of the run
            ok = np.ones(chunk.flat.size, dtype=bool)
            ok[np.cumsum(chunk.lengths) - 1] = False
            if finite is not None:
                ok[:-1] &= finite[1:]
                ok &= finite
            src = np.flatnonzero(ok)
            a, b, r = q[src], q[src + 1], rank[src]
        else:
            if lab is None:
                lab = labels_flat.take(chunk.flat)
            ok = chunk.rows < h - dy
            if dx > 0:
                ok &= chunk.cols < w - dx
            elif dx < 0:
                ok &= chunk.cols >= -dx
            if finite is not None:
                ok &= finite
            src = np.flatnonzero(ok)
            nb = chunk.flat[src]
            nb += dy * w + dx
            same = labels_flat[nb] == lab[src]
            src, nb = src[same], nb[same]
            b, fb = quantise(image_flat[nb])
            a, r = q[src], rank[src]
            if fb is not None:
                a, b, r = a[fb], b[fb], r[fb]
        feats, has = _haralick(r, a, b, chunk.n, quantise.levels)
        for f in TEXTURE_FEATURES:
            acc[f] += np.where(has, feats[f], 0.0)
        n_valid += has
    with np.errstate(invalid="ignore", divide="ignore"):
        return {f: np.where(n_valid > 0, acc[f] / n_valid, np.nan) for f in TEXTURE_FEATURES}


# ---------------------------------------------------------------------------- zernike
def _zernike_features(runs: _Runs) -> Generator[int, None, dict[str, np.ndarray]]:
    """Zernike moments of every label's mask in its minimum enclosing circle (all pixels).

    Yields the number of labels whose circle is found, every ``geometry.EVERY``.
    """
    from . import geometry

    hulls = geometry.hulls_of_runs(runs.run_rank, runs.row, runs.c0, runs.c1, runs.n)
    centres, radii = yield from geometry.iter_minimum_enclosing_circles(hulls)
    indexes, scores = geometry.zernike_scores(
        runs.run_rank, runs.row, runs.c0, runs.length, runs.first_run, centres, radii
    )
    return {f"zernike_{n}_{m}": scores[:, i] for i, (n, m) in enumerate(indexes)}


# ---------------------------------------------------------------------------- neighbours
def _n_neighbors(runs: _Runs, scan: _Scan) -> np.ndarray:
    """Number of distinct other labels in every label's 8-neighbourhood."""
    assert scan.touching is not None
    a, b = scan.touching
    if a.size == 0:
        return np.zeros(runs.n, dtype=np.int64)
    ra, rb = runs.rank_of(a).astype(np.int64), runs.rank_of(b).astype(np.int64)
    keys = np.unique(np.concatenate([ra * runs.n + rb, rb * runs.n + ra]))
    return np.bincount(keys // runs.n, minlength=runs.n).astype(np.int64)


# ------------------------------------------------------------------------------ API
#: Progress steps per stage; chunked stages advance within their share.
_STAGE = 100


def iter_features(
    labels: np.ndarray,
    intensities: np.ndarray | Mapping[str, np.ndarray] | None = None,
    *,
    groups: Iterable[str] = DEFAULT_FEATURE_GROUPS,
    texture_distances: Sequence[int] = (1,),
    texture_levels: int = 32,
    spacing: float | Sequence[float] | None = None,
    texture_range: Mapping[str, tuple[float, float]] | None = None,
) -> Generator[Progress, None, pd.DataFrame]:
    """Measure every labelled object, yielding progress.

    Parameters
    ----------
    labels : (M, N) ndarray of int
        Label image; 0 is background, ids need not be contiguous.
    intensities : (M, N) ndarray or mapping of str to (M, N) ndarray, optional
        Intensity channels. A single array is called ``"intensity"``; a mapping's
        order is the column order.
    groups : iterable of str, optional
        Feature groups among :data:`FEATURE_GROUPS` (default
        :data:`DEFAULT_FEATURE_GROUPS`: all but ``zernike``). ``intensity`` and
        ``texture`` need at least one channel.
    texture_distances : sequence of int, optional
        Co-occurrence distances in pixels. Offsets at 0, 45, 90 and 135 degrees are
        ``(0, d), (d, d), (d, 0), (d, -d)`` (for ``d = 1`` the same as
        :func:`skimage.feature.graycomatrix`); features are averaged over all
        distances and angles that have at least one pixel pair in the cell.
    texture_levels : int, optional
        Number of grey levels; each channel is quantised on its global (finite)
        range as ``floor((v - min) / (max - min) * levels)``, clipped to
        ``levels - 1``.
    spacing : float or (float, float), optional
        Pixel size (y, x). Centroids, areas, lengths and mass displacement are then
        in physical units, as with regionprops' ``spacing`` (the bounding box stays
        in pixels). The shape group needs an isotropic spacing (``perimeter``).
    texture_range : mapping of str to (float, float), optional
        Channel name -> ``(min, max)`` to quantise that channel on instead of its own
        range: for a block of a larger image, the whole image's range, so that the
        texture features are those of the whole image.

    Yields
    ------
    Progress
        Records for the scan of the labels, the shape group, and every channel's
        intensity and texture (several per channel on large images).

    Returns
    -------
    pandas.DataFrame
        One row per label present, sorted by label; columns as
        :func:`feature_columns` (``label``, the bounding box, ``euler_number`` and
        ``n_neighbors`` as int64, the rest float64). An image without labels gives
        an empty table with the same columns and dtypes.

    Raises
    ------
    ValueError
        If the labels are not a 2D non-negative integer image, an intensity image
        does not have the labels' shape, or a parameter is out of range.

    Notes
    -----
    Shape features match :func:`skimage.measure.regionprops`: ``perimeter`` is its
    4-neighbourhood ``perimeter``, ``orientation`` its angle convention (radians,
    between the row axis and the major axis), ``solidity`` is area over the area of
    ``convex_image``, ``euler_number`` uses 8-connectivity, ``bbox_max_*`` are
    exclusive. ``circularity`` is ``4 pi area / perimeter**2`` (NaN for zero
    perimeter, i.e. single pixels). ``zernike_<n>_<m>`` is
    ``|sum over the cell's pixels of R_nm(r) exp(i m theta)| / (pi radius^2)`` in the
    cell's minimum enclosing circle (CellProfiler's Zernike features; NaN for one
    pixel), in pixels whatever the spacing. Intensity statistics match numpy on the cell's
    pixels (std with ``ddof=0``, linear quantiles; a NaN pixel makes them NaN);
    ``mass_displacement`` is the distance between the intensity-weighted and the
    plain centroid. Haralick features use a symmetric, normalised co-occurrence
    matrix of the pairs whose two pixels both belong to the cell (non-finite pixels
    are left out), with the formulas of :func:`skimage.feature.graycoprops`
    (``entropy`` in nats); cells without any pair get NaN. ``n_neighbors`` counts
    the distinct other labels touching the cell (8-connectivity).
    """
    labels = _check_labels(labels)
    channels = _check_channels(intensities, labels.shape)
    groups = _normalise_groups(groups)
    spacing_yx = _check_spacing(spacing)
    distances, levels = _check_texture(texture_distances, texture_levels)
    if "shape" in groups and spacing_yx[0] != spacing_yx[1]:
        raise ValueError(
            f"perimeter needs an isotropic spacing, got {spacing_yx}; resample the image to "
            "square pixels or leave 'shape' out of groups."
        )
    columns = feature_columns(list(channels), groups)
    do_shape = "shape" in groups
    do_zernike = "zernike" in groups
    do_int = "intensity" in groups and bool(channels)
    do_tex = "texture" in groups and bool(channels)
    do_nb = "neighbors" in groups
    n_stages = 1 + do_shape + do_zernike + len(channels) * (do_int + do_tex)
    total = n_stages * _STAGE
    step = 0
    yield Progress(step, total, "Scanning labels")
    if labels.size == 0 or not labels.any():
        yield Progress(total, total, "No labels")
        return _empty_table(columns)
    scan = _Scan(labels, perimeter=do_shape, touching=do_nb)
    runs = _Runs(labels, scan.run_start, scan.run_end)
    del scan.run_start, scan.run_end
    step += _STAGE
    data: dict[str, np.ndarray] = {"label": runs.ids}
    cen = _Centroids(runs, spacing_yx)
    if do_shape:
        yield Progress(step, total, "Shape")
        data.update(_shape_features(runs, scan, cen, spacing_yx))
        step += _STAGE
    if do_zernike:
        yield Progress(step, total, "Zernike moments")
        gen = _zernike_features(runs)
        while True:
            try:
                done = next(gen)
            except StopIteration as stop:
                data.update(stop.value)
                break
            yield Progress(step + done * _STAGE // runs.n, total, f"Zernike moments: {done}/{runs.n} objects")
        step += _STAGE
    channel_arrays = {name: np.ascontiguousarray(img) for name, img in channels.items()}

    def chunked(title, chunks, measure):
        nonlocal step
        parts: dict[str, list[np.ndarray]] = {}
        for i, (k0, k1) in enumerate(chunks):
            if i:
                yield Progress(step + i * _STAGE // len(chunks), total, f"{title}: {k0}/{runs.n} objects")
            for key, val in measure(runs.pixels(k0, k1)).items():
                parts.setdefault(key, []).append(val)
        step += _STAGE
        return {key: np.concatenate(vals) for key, vals in parts.items()}

    if do_int:
        float_chunks = runs.chunks(_CHUNK_PIXELS)
        # small-integer images go through per-label histograms: larger chunks, fewer calls
        # (8-bit: up to 256 grey levels per label, 16-bit: the histogram's width is
        # the chunk's range, assumed up to 4096 and checked per chunk)
        hist_chunks = {
            1: runs.chunks(_CHUNK_PIXELS * 16, max(1, _MAX_HIST_BINS // 256)),
            2: runs.chunks(_CHUNK_PIXELS * 4, max(1, _MAX_HIST_BINS // 4096)),
        }
        for name, img in channel_arrays.items():
            yield Progress(step, total, f"Intensity: {name}")
            flat = img.ravel()
            small_int = img.dtype.kind in "iub" and img.dtype.itemsize <= 2
            feats = yield from chunked(
                f"Intensity: {name}",
                hist_chunks[img.dtype.itemsize] if small_int else float_chunks,
                lambda ch, flat=flat: _intensity_chunk(ch, flat, cen, spacing_yx, runs),
            )
            data.update({f"{k}_{name}": val for k, val in feats.items()})
    if do_tex:
        offsets = _texture_offsets(distances)
        max_labels = max(1, _MAX_HIST_BINS // (levels * levels))
        chunks = runs.chunks(_CHUNK_PIXELS, max_labels if levels <= 64 else None)
        labels_flat = labels.ravel()
        for name, img in channel_arrays.items():
            yield Progress(step, total, f"Texture: {name}")
            flat = img.ravel()
            quantise = _Quantiser(img, levels, (texture_range or {}).get(name))
            feats = yield from chunked(
                f"Texture: {name}",
                chunks,
                lambda ch, flat=flat, quantise=quantise: _texture_chunk(
                    ch, labels_flat, flat, quantise, offsets, labels.shape
                ),
            )
            data.update({f"{k}_{name}": val for k, val in feats.items()})
    if do_nb:
        data["n_neighbors"] = _n_neighbors(runs, scan)
    yield Progress(total, total, f"Measured {runs.n} objects")
    return pd.DataFrame({c: np.asarray(data[c], dtype=_column_dtype(c)) for c in columns})


def compute_features(
    labels: np.ndarray,
    intensities: np.ndarray | Mapping[str, np.ndarray] | None = None,
    **kwargs,
) -> pd.DataFrame:
    """Measure every labelled object synchronously.

    Parameters
    ----------
    labels : (M, N) ndarray of int
        Label image (0 = background).
    intensities : (M, N) ndarray or mapping of str to (M, N) ndarray, optional
        Intensity channels.
    **kwargs
        Keyword arguments of :func:`iter_features`.

    Returns
    -------
    pandas.DataFrame
        See :func:`iter_features`; for 3-D ``(Z, Y, X)`` labels, the 3-D features of
        :func:`~napari_phenotyper.core.features3d.iter_features_3d`.
    """
    if np.ndim(labels) == 3:  # a volume: the 3-D features (core/features3d.py)
        from .features3d import compute_features_3d

        return compute_features_3d(labels, intensities, **kwargs)
    return run(iter_features(labels, intensities, **kwargs))
