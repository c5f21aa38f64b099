"""CellProfiler-compatible per-object measurements, computed for all labels at once.

Reproduces the definitions and column names of CellProfiler 4's
MeasureObjectSizeShape (with Zernike features), MeasureObjectIntensity, MeasureTexture
and MeasureObjectNeighbors (the *Adjacent*, *Expand until adjacent* and *Within a given distance*
methods) on a
2D label image, so that a table made here can sit beside years of CellProfiler output:
``AreaShape_*``, ``Intensity_<feature>_<channel>``, ``Location_<feature>_<channel>``,
``Texture_<feature>_<channel>_<scale>_<direction>_<levels>`` and
``Neighbors_<feature>_<Adjacent|Expanded|distance>``.

As in CellProfiler, integer images are first divided by their type's maximum (255
for uint8, 65535 for uint16), so intensities are in [0, 1]; non-finite pixels are
left out of every intensity and texture statistic. Everything is in pixels.

The tests compare every column with ``cp_measure`` (CellProfiler's measurements as a
library) on the shared data; ``docs/features.md`` lists the tolerances and the few
places where CellProfiler itself is followed rather than cp_measure.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from . import geometry
from .features import (
    _CHUNK_PIXELS,
    _MAX_HIST_BINS,
    _Centroids,
    _check_channels,
    _check_labels,
    _Chunk,
    _LabelHistogram,
    _order_statistics,
    _Runs,
    _Scan,
    _shape_features,
    _weighted_coordinate_sums,
)
from .progress import Progress, run

__all__ = [
    "ALL_NEIGHBOR_METHODS",
    "CP_GROUPS",
    "NEIGHBOR_METHODS",
    "cellprofiler_columns",
    "compute_cellprofiler_features",
    "iter_cellprofiler_features",
]

#: Measurement groups of the CellProfiler set (same names as the default set's).
CP_GROUPS = ("shape", "zernike", "intensity", "texture", "neighbors")

#: MeasureObjectSizeShape features (2D, without the "advanced" moments).
AREASHAPE_FEATURES = (
    "Area",
    "BoundingBoxArea",
    "BoundingBoxMaximum_X",
    "BoundingBoxMaximum_Y",
    "BoundingBoxMinimum_X",
    "BoundingBoxMinimum_Y",
    "Center_X",
    "Center_Y",
    "Compactness",
    "ConvexArea",
    "Eccentricity",
    "EquivalentDiameter",
    "EulerNumber",
    "Extent",
    "FormFactor",
    "MajorAxisLength",
    "MaxFeretDiameter",
    "MaximumRadius",
    "MeanRadius",
    "MedianRadius",
    "MinFeretDiameter",
    "MinorAxisLength",
    "Orientation",
    "Perimeter",
    "Solidity",
)

#: MeasureObjectIntensity features (``Intensity_<feature>_<channel>``).
INTENSITY_FEATURES = (
    "IntegratedIntensity",
    "MeanIntensity",
    "StdIntensity",
    "MinIntensity",
    "MaxIntensity",
    "IntegratedIntensityEdge",
    "MeanIntensityEdge",
    "StdIntensityEdge",
    "MinIntensityEdge",
    "MaxIntensityEdge",
    "MassDisplacement",
    "LowerQuartileIntensity",
    "MedianIntensity",
    "MADIntensity",
    "UpperQuartileIntensity",
)

#: Its location features (``Location_<feature>_<channel>``).
LOCATION_FEATURES = ("CenterMassIntensity_X", "CenterMassIntensity_Y", "MaxIntensity_X", "MaxIntensity_Y")

#: MeasureTexture's 13 Haralick features, in its order.
TEXTURE_FEATURES = (
    "AngularSecondMoment",
    "Contrast",
    "Correlation",
    "Variance",
    "InverseDifferenceMoment",
    "SumAverage",
    "SumVariance",
    "SumEntropy",
    "Entropy",
    "DifferenceVariance",
    "DifferenceEntropy",
    "InfoMeas1",
    "InfoMeas2",
)

#: MeasureObjectNeighbors features.
NEIGHBOR_FEATURES = (
    "NumberOfNeighbors",
    "PercentTouching",
    "FirstClosestObjectNumber",
    "FirstClosestDistance",
    "SecondClosestObjectNumber",
    "SecondClosestDistance",
    "AngleBetweenNeighbors",
)

#: Pixels per chunk of labels for texture (fewer, larger chunks: its per-chunk work is
#: a fixed number of numpy calls per direction).
_TEXTURE_CHUNK_PIXELS = 1 << 18
#: MeasureObjectNeighbors' methods: *Adjacent*, *Expand until adjacent* (CellProfiler's
#: default; a distance transform of the whole image, so not measured unless asked
#: for) and *Within a given distance*.
ALL_NEIGHBOR_METHODS = ("adjacent", "expanded", "within")
#: The methods measured by default.
NEIGHBOR_METHODS = ("adjacent", "within")
# (dy, dx) of MeasureTexture's directions 00 .. 03 (mahotas' 2D order)
_DIRECTIONS = ((0, 1), (1, 1), (1, 0), (1, -1))
#: Progress steps per stage (chunked stages advance within their share).
_SUB = 100
#: This package's position columns (``positions=True``).
POSITION_COLUMNS = ("centroid_y", "centroid_x", "bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x")
_INT_FEATURES = frozenset(
    {
        "label",
        "bbox_min_y",
        "bbox_min_x",
        "bbox_max_y",
        "bbox_max_x",
        "AreaShape_BoundingBoxMaximum_X",
        "AreaShape_BoundingBoxMaximum_Y",
        "AreaShape_BoundingBoxMinimum_X",
        "AreaShape_BoundingBoxMinimum_Y",
        "AreaShape_EulerNumber",
    }
)


def _normalise_groups(groups: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(groups, str):
        groups = (groups,)
    groups = tuple(groups)
    unknown = [g for g in groups if g not in CP_GROUPS]
    if unknown:
        raise ValueError(f"Unknown feature group(s) {unknown}; choose among {', '.join(CP_GROUPS)}.")
    return tuple(g for g in CP_GROUPS if g in groups)


def _check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    methods = (methods,) if isinstance(methods, str) else tuple(methods)
    wrong = [m for m in methods if m not in ALL_NEIGHBOR_METHODS]
    if wrong:
        raise ValueError(
            f"Unknown neighbour method(s) {wrong}; choose among {', '.join(ALL_NEIGHBOR_METHODS)}."
        )
    return tuple(m for m in ALL_NEIGHBOR_METHODS if m in methods)


def _check_params(texture_scale, texture_levels, neighbor_distance) -> tuple[int, int, int]:
    if not isinstance(texture_scale, (int, np.integer)) or texture_scale < 1:
        raise ValueError(f"texture_scale must be a positive number of pixels, got {texture_scale!r}.")
    if not isinstance(texture_levels, (int, np.integer)) or not 2 <= texture_levels <= 256:
        raise ValueError(
            f"texture_levels must be an integer from 2 to 256 (CellProfiler's range), got {texture_levels!r}."
        )
    if not isinstance(neighbor_distance, (int, np.integer)) or neighbor_distance < 1:
        raise ValueError(f"neighbor_distance must be a positive number of pixels, got {neighbor_distance!r}.")
    return int(texture_scale), int(texture_levels), int(neighbor_distance)


def cellprofiler_columns(
    channel_names: Sequence[str] | None = (),
    groups: Iterable[str] = CP_GROUPS,
    *,
    texture_scale: int = 3,
    texture_levels: int = 256,
    neighbor_distance: int = 5,
    neighbor_methods: Sequence[str] = NEIGHBOR_METHODS,
) -> list[str]:
    """Column names of a CellProfiler-compatible table, in order.

    ``label``, then ``AreaShape_*`` (shape), ``AreaShape_Zernike_<n>_<m>`` (zernike),
    per channel the ``Intensity_*`` and ``Location_*`` columns (intensity) and the
    ``Texture_*`` columns (texture), then ``Neighbors_*_Adjacent``,
    ``Neighbors_*_Expanded`` and ``Neighbors_*_<distance>`` for the
    ``neighbor_methods`` asked for (neighbors).
    """
    groups = _normalise_groups(groups)
    channels = [str(c) for c in (channel_names or ())]
    cols = ["label"]
    if "shape" in groups:
        cols += [f"AreaShape_{f}" for f in AREASHAPE_FEATURES]
    if "zernike" in groups:
        cols += [f"AreaShape_Zernike_{n}_{m}" for n, m in geometry.zernike_indexes(9)]
    if "intensity" in groups:
        for c in channels:
            cols += [f"Intensity_{f}_{c}" for f in INTENSITY_FEATURES]
            cols += [f"Location_{f}_{c}" for f in LOCATION_FEATURES]
    if "texture" in groups:
        for c in channels:
            cols += [
                f"Texture_{f}_{c}_{texture_scale}_{d:02d}_{texture_levels}"
                for d in range(len(_DIRECTIONS))
                for f in TEXTURE_FEATURES
            ]
    if "neighbors" in groups:
        for method in _check_methods(neighbor_methods):
            suffix = {"adjacent": "Adjacent", "expanded": "Expanded", "within": str(neighbor_distance)}[
                method
            ]
            cols += [f"Neighbors_{f}_{suffix}" for f in NEIGHBOR_FEATURES]
    return cols


def _scaled(raw: np.ndarray) -> np.ndarray:
    """Pixel values as CellProfiler loads them: integers over their type's maximum."""
    if raw.dtype.kind in "iu":
        return raw.astype(np.float64) / float(np.iinfo(raw.dtype).max)
    return raw.astype(np.float64)  # bool (0 or 1) and float as they are


# ----------------------------------------------------------------------------- shape
def _radii(
    labels: np.ndarray, runs: _Runs, bbox: tuple[np.ndarray, ...]
) -> Generator[int, None, tuple[np.ndarray, ...]]:
    """Maximum, mean and median distance of a label's pixels to the nearest pixel outside it.

    As CellProfiler: the distance transform of each label's mask in its bounding box
    padded with one zero pixel. Yields the number of labels done every ``geometry.EVERY``
    (a distance transform per label: one transform of the masks packed side by side
    is no faster, scipy's cost is per pixel). The maxima and medians are taken for
    all labels at once afterwards (``np.median`` label by label cost a third as much
    as the transforms).
    """
    from scipy.ndimage import distance_transform_edt

    min_y, min_x, max_y, max_x = bbox
    mean = np.zeros(runs.n)
    inside: list[np.ndarray] = []
    for k, (y0, x0, y1, x1, lab) in enumerate(
        zip(min_y.tolist(), min_x.tolist(), max_y.tolist(), max_x.tolist(), runs.ids.tolist(), strict=True)
    ):
        if k and k % geometry.EVERY == 0:
            yield k
        mask = np.zeros((y1 - y0 + 2, x1 - x0 + 2), dtype=bool)
        mask[1:-1, 1:-1] = labels[y0:y1, x0:x1] == lab
        dist = distance_transform_edt(mask)[mask]
        mean[k] = dist.mean()
        inside.append(dist)
    dist = np.concatenate(inside)
    # the distances are roots of integers (< 2**26): squaring and rounding gives them back
    d2 = np.rint(dist * dist).astype(np.int64)
    starts = np.cumsum(runs.counts) - runs.counts
    mx = np.sqrt(np.maximum.reduceat(d2, starts).astype(np.float64))
    return mx, mean, _median_of_squares(d2, runs.counts)


def _median_of_squares(d2: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``np.median`` of ``sqrt(d2)`` over consecutive groups of ``counts`` values each.

    The middle one or two values of each group are found in a histogram of the group's
    squared distances (small integers), or by sorting where that would be too big; an
    even group's median is then the mean of the two roots, as ``np.median`` takes it.
    """
    n = counts.size
    group = np.repeat(np.arange(n), counts)
    starts = np.cumsum(counts) - counts
    lo = (counts - 1) // 2  # ranks of the middle pair within the group
    hi = counts // 2
    top = int(d2.max()) + 1 if d2.size else 1
    if n * top <= (1 << 22):
        cum = np.cumsum(np.bincount(group * top + d2, minlength=n * top).reshape(n, top), axis=1)
        a = (cum <= lo[:, None]).sum(axis=1)
        b = (cum <= hi[:, None]).sum(axis=1)
    else:
        ordered = d2[np.lexsort((d2, group))]
        a, b = ordered[starts + lo], ordered[starts + hi]
    ra, rb = np.sqrt(a.astype(np.float64)), np.sqrt(b.astype(np.float64))
    return np.where(lo == hi, ra, (ra + rb) / 2.0)


def _areashape(
    labels: np.ndarray, runs: _Runs, scan: _Scan, cen: _Centroids, hulls
) -> Generator[int, None, dict[str, np.ndarray]]:
    base = _shape_features(runs, scan, cen, (1.0, 1.0))
    area = base["area"]
    perimeter = base["perimeter"]
    min_f, max_f = geometry.feret_diameters(hulls)
    bbox = (base["bbox_min_y"], base["bbox_min_x"], base["bbox_max_y"], base["bbox_max_x"])
    r_max, r_mean, r_med = yield from _radii(labels, runs, bbox)
    with np.errstate(invalid="ignore", divide="ignore"):
        form = 4.0 * np.pi * area / perimeter**2
    return {
        "Area": area,
        "BoundingBoxArea": (bbox[2] - bbox[0]) * (bbox[3] - bbox[1]).astype(np.float64),
        "BoundingBoxMaximum_X": bbox[3],
        "BoundingBoxMaximum_Y": bbox[2],
        "BoundingBoxMinimum_X": bbox[1],
        "BoundingBoxMinimum_Y": bbox[0],
        "Center_X": base["centroid_x"],
        "Center_Y": base["centroid_y"],
        "Compactness": perimeter**2 / np.maximum(4.0 * np.pi * area, 1.0),
        "ConvexArea": area / base["solidity"],
        "Eccentricity": base["eccentricity"],
        "EquivalentDiameter": base["equivalent_diameter"],
        "EulerNumber": base["euler_number"],
        "Extent": base["extent"],
        "FormFactor": form,
        "MajorAxisLength": base["major_axis_length"],
        "MaxFeretDiameter": max_f,
        "MaximumRadius": r_max,
        "MeanRadius": r_mean,
        "MedianRadius": r_med,
        "MinFeretDiameter": min_f,
        "MinorAxisLength": base["minor_axis_length"],
        "Orientation": np.degrees(base["orientation"]),
        "Perimeter": perimeter,
        "Solidity": base["solidity"],
    }


def _zernike(runs: _Runs, hulls) -> Generator[int, None, dict[str, np.ndarray]]:
    centres, radii = yield from geometry.iter_minimum_enclosing_circles(hulls)
    indexes, scores = geometry.zernike_scores(
        runs.run_rank, runs.row, runs.c0, runs.length, runs.first_run, centres, radii, hull=hulls
    )
    return {f"Zernike_{n}_{m}": scores[:, i] for i, (n, m) in enumerate(indexes)}


# ------------------------------------------------------------------------- intensity
def _edge_pixels(labels: np.ndarray) -> np.ndarray:
    """Flat mask of the label pixels with a 4-neighbour (inside the image) of another value.

    ``skimage.segmentation.find_boundaries(mode="inner")``, which CellProfiler uses.
    """
    diff = np.zeros(labels.shape, dtype=bool)
    v = labels[1:] != labels[:-1]
    diff[1:] |= v
    diff[:-1] |= v
    h = labels[:, 1:] != labels[:, :-1]
    diff[:, 1:] |= h
    diff[:, :-1] |= h
    diff &= labels != 0
    return diff.ravel()


def _cp_quantile(get, n: np.ndarray, q: float) -> np.ndarray:
    """CellProfiler's quantile: linear between sorted positions ``floor(n q)`` and the next."""
    pos = n * q
    lo = np.minimum(np.floor(pos).astype(np.intp), n - 1)
    hi = np.minimum(lo + 1, n - 1)
    f = pos - lo
    return get(lo) * (1.0 - f) + get(hi) * f


def _stats(chunk: _Chunk, v: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, ...]:
    """Count, sum, mean, std, min and max of the kept values of every label (0 where none)."""
    kept = np.where(keep, v, 0.0)
    cnt = chunk.sum(keep.astype(np.float64))
    total = chunk.sum(kept)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(cnt > 0, total / cnt, 0.0)
        dev = np.where(keep, v - chunk.spread(mean), 0.0)
        std = np.where(cnt > 0, np.sqrt(chunk.sum(dev * dev) / np.maximum(cnt, 1)), 0.0)
    lo = np.minimum.reduceat(np.where(keep, v, np.inf), chunk.starts)
    hi = np.maximum.reduceat(np.where(keep, v, -np.inf), chunk.starts)
    none = cnt == 0
    lo[none] = 0.0
    hi[none] = 0.0
    return cnt, total, mean, std, lo, hi


def _edge_stats(chunk: _Chunk, v: np.ndarray, edge: np.ndarray) -> tuple[np.ndarray, ...]:
    """Sum, mean, std, min and max of every label's edge pixels (0 where none)."""
    at = np.flatnonzero(edge)
    ev = v[at]
    rank = np.searchsorted(chunk.starts, at, side="right") - 1
    n = chunk.n
    cnt = np.bincount(rank, minlength=n).astype(np.float64)
    total = np.bincount(rank, ev, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(cnt > 0, total / cnt, 0.0)
        dev = ev - mean[rank]
        std = np.where(cnt > 0, np.sqrt(np.bincount(rank, dev * dev, minlength=n) / np.maximum(cnt, 1)), 0.0)
    lo = np.zeros(n)
    hi = np.zeros(n)
    present = np.flatnonzero(cnt > 0)
    if present.size:
        first = np.searchsorted(rank, present)
        lo[present] = np.minimum.reduceat(ev, first)
        hi[present] = np.maximum.reduceat(ev, first)
    return total, mean, std, lo, hi


def _intensity_chunk_int(
    chunk: _Chunk, raw: np.ndarray, edge_flat: np.ndarray, runs: _Runs, cen: _Centroids
) -> dict[str, np.ndarray] | None:
    """MeasureObjectIntensity of a small-integer image from per-label histograms, or None.

    Every pixel is finite: counts, sums, order statistics and the median absolute
    deviation come from histograms, the centres of mass from sums over the runs.
    """
    scale = 1.0 if raw.dtype.kind == "b" else float(np.iinfo(raw.dtype).max)
    vmin = int(raw.min())
    span = int(raw.max()) - vmin + 1
    n = chunk.n
    if chunk.n * 2 * span > _MAX_HIST_BINS:
        return None
    v_int = raw.astype(np.int32)
    h = _LabelHistogram(chunk, v_int, vmin, span)
    cnt = chunk.counts
    s1 = h.s1
    total = s1 / scale
    mean = s1 / cnt / scale
    std = h.std / scale
    q1 = _cp_quantile(h.get, cnt, 0.25)
    med = _cp_quantile(h.get, cnt, 0.5)
    q3 = _cp_quantile(h.get, cnt, 0.75)
    med2 = np.rint(2 * med).astype(np.int64)  # 2 x median is an integer
    dev2 = np.abs(2 * v_int.astype(np.int64) - chunk.spread(med2)).astype(np.int32)
    mad = _cp_quantile(_LabelHistogram(chunk, dev2, 0, 2 * span).get, cnt, 0.5)
    vmax_raw = h.get(cnt - 1)
    out: dict[str, np.ndarray] = {
        "IntegratedIntensity": total,
        "MeanIntensity": mean,
        "StdIntensity": std,
        "MinIntensity": h.get(np.zeros_like(cnt)) / scale,
        "MaxIntensity": vmax_raw / scale,
    }
    v = v_int / scale
    e_total, e_mean, e_std, e_min, e_max = _edge_stats(chunk, v, edge_flat.take(chunk.flat))
    out |= {
        "IntegratedIntensityEdge": e_total,
        "MeanIntensityEdge": e_mean,
        "StdIntensityEdge": e_std,
        "MinIntensityEdge": e_min,
        "MaxIntensityEdge": e_max,
        "LowerQuartileIntensity": q1 / scale,
        "MedianIntensity": med / scale,
        "UpperQuartileIntensity": q3 / scale,
        "MADIntensity": mad / 2.0 / scale,
    }
    # centres of mass from sums over the runs
    row_w, col_w = _weighted_coordinate_sums(chunk, v_int, max(-vmin, vmin + span - 1), runs)
    with np.errstate(invalid="ignore", divide="ignore"):
        wy = np.where(s1 != 0, row_w / s1, np.nan)
        wx = np.where(s1 != 0, col_w / s1, np.nan)
    cy, cx = cen.cy[chunk.k0 : chunk.k1], cen.cx[chunk.k0 : chunk.k1]
    out["MassDisplacement"] = np.hypot(wy - cy, wx - cx)
    # first (raster order) pixel at the maximum
    at_max = np.flatnonzero(v_int == chunk.spread(vmax_raw.astype(np.int32)))
    rank = np.searchsorted(chunk.starts, at_max, side="right") - 1
    first_max = at_max[np.searchsorted(rank, np.arange(n))]
    out["CenterMassIntensity_X"] = wx
    out["CenterMassIntensity_Y"] = wy
    out["MaxIntensity_X"] = chunk.cols[first_max].astype(np.float64)
    out["MaxIntensity_Y"] = chunk.rows[first_max].astype(np.float64)
    return out


def _intensity_chunk(
    chunk: _Chunk, image_flat: np.ndarray, edge_flat: np.ndarray, runs: _Runs, cen: _Centroids
) -> dict[str, np.ndarray]:
    raw = image_flat.take(chunk.flat)
    if raw.dtype.kind in "iub" and raw.dtype.itemsize <= 2:
        fast = _intensity_chunk_int(chunk, raw, edge_flat, runs, cen)
        if fast is not None:
            return fast
    v = _scaled(raw)
    finite = np.isfinite(v) if v.dtype.kind == "f" and raw.dtype.kind == "f" else np.ones(v.size, bool)
    cnt, total, mean, std, vmin, vmax = _stats(chunk, v, finite)
    n = cnt.astype(np.intp)
    out: dict[str, np.ndarray] = {
        "IntegratedIntensity": total,
        "MeanIntensity": mean,
        "StdIntensity": std,
        "MinIntensity": vmin,
        "MaxIntensity": vmax,
    }
    edge = edge_flat.take(chunk.flat) & finite
    _, e_total, e_mean, e_std, e_min, e_max = _stats(chunk, v, edge)
    out |= {
        "IntegratedIntensityEdge": e_total,
        "MeanIntensityEdge": e_mean,
        "StdIntensityEdge": e_std,
        "MinIntensityEdge": e_min,
        "MaxIntensityEdge": e_max,
    }
    # order statistics of the finite pixels (non-finite ones sort last)
    has = n > 0
    safe_n = np.maximum(n, 1)
    if raw.dtype.kind in "iub":
        scale = 1.0 if raw.dtype.kind == "b" else float(np.iinfo(raw.dtype).max)
        get_raw = _order_statistics(chunk, raw, raw.astype(np.float64))
        q1 = _cp_quantile(get_raw, safe_n, 0.25)
        med2 = np.rint(2 * _cp_quantile(get_raw, safe_n, 0.5)).astype(np.int64)  # 2 x median is an integer
        q3 = _cp_quantile(get_raw, safe_n, 0.75)
        dev2 = np.abs(2 * raw.astype(np.int64) - chunk.spread(med2))
        get_dev = _order_statistics(chunk, dev2, dev2.astype(np.float64))
        mad = _cp_quantile(get_dev, safe_n, 0.5) / 2.0
        q1, med, q3, mad = q1 / scale, med2 / 2.0 / scale, q3 / scale, mad / scale
    else:
        vv = np.where(finite, v, np.inf)
        order = np.lexsort((vv, chunk.local_rank()))
        sv = vv[order]

        def get(k: np.ndarray, sv: np.ndarray = sv) -> np.ndarray:
            return sv[chunk.starts + k]

        q1 = _cp_quantile(get, safe_n, 0.25)
        med = _cp_quantile(get, safe_n, 0.5)
        q3 = _cp_quantile(get, safe_n, 0.75)
        dev = np.where(finite, np.abs(v - chunk.spread(med)), np.inf)
        sd = dev[np.lexsort((dev, chunk.local_rank()))]
        mad = _cp_quantile(lambda k: sd[chunk.starts + k], safe_n, 0.5)
    for name, arr in (
        ("LowerQuartileIntensity", q1),
        ("MedianIntensity", med),
        ("UpperQuartileIntensity", q3),
        ("MADIntensity", mad),
    ):
        out[name] = np.where(has, arr, 0.0)
    # centre of mass of the finite pixels, plain and intensity-weighted
    rows = chunk.rows.astype(np.float64)
    cols = chunk.cols.astype(np.float64)
    w = np.where(finite, v, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = chunk.sum(np.where(finite, rows, 0.0)) / cnt
        cx = chunk.sum(np.where(finite, cols, 0.0)) / cnt
        wy = np.where(total != 0, chunk.sum(w * rows) / total, np.nan)
        wx = np.where(total != 0, chunk.sum(w * cols) / total, np.nan)
    out["MassDisplacement"] = np.where(has, np.hypot(wy - cy, wx - cx), 0.0)
    # first (raster order) pixel at the maximum
    at_max = finite & (v == chunk.spread(vmax))
    idx = np.where(at_max, np.arange(v.size), v.size)
    first = np.minimum.reduceat(idx, chunk.starts)
    first = np.minimum(first, v.size - 1)
    out["CenterMassIntensity_X"] = np.where(has, wx, 0.0)
    out["CenterMassIntensity_Y"] = np.where(has, wy, 0.0)
    out["MaxIntensity_X"] = np.where(has, cols[first], 0.0)
    out["MaxIntensity_Y"] = np.where(has, rows[first], 0.0)
    return out


# --------------------------------------------------------------------------- texture
def _grey_levels(image: np.ndarray, levels: int) -> np.ndarray:
    """MeasureTexture's grey levels: ``img_as_ubyte`` of the [0, 1] image, rescaled to ``levels``.

    Non-finite pixels become level 0, which co-occurrence counting ignores. Integer
    images go through a lookup table of the same arithmetic.
    """

    def levels_of(v: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            q = np.rint(np.clip(v * 255.0, 0.0, 255.0))
        q[~np.isfinite(q)] = 0
        q = q.astype(np.uint8)
        if levels != 256:
            q = (q.astype(np.float64) / 255.0 * (levels - 1)).astype(np.uint8)
        return q

    if image.dtype.kind in "ub" and image.dtype.itemsize <= 2:
        top = 1 if image.dtype.kind == "b" else int(np.iinfo(image.dtype).max)
        lut = levels_of(np.arange(top + 1, dtype=np.float64) / top)
        return lut[image.astype(np.intp) if image.dtype.kind == "b" else image]
    return levels_of(_scaled(image))


def _dense_entropy(p: np.ndarray) -> np.ndarray:
    """``-sum p log2 p`` along the last axis, zeros left out (mahotas' ``_entropy``)."""
    return -(p * np.log2(np.where(p > 0, p, 1.0))).sum(axis=-1)


def _haralick13(
    er: np.ndarray, i: np.ndarray, j: np.ndarray, cnt: np.ndarray, n: int, maxv: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """MeasureTexture's (mahotas') 13 features of ``n`` symmetric co-occurrence matrices.

    Each matrix is given by its non-zero entries on and above the diagonal,
    ``(er, i, j, cnt)`` with ``i <= j`` sorted by label ``er``; ``cnt`` is the entry of
    the symmetric matrix (pairs counted both ways). ``maxv`` is each label's matrix
    size (its largest grey level + 1), ``width`` a bound on it. Returns ``(13, n)``
    features and which labels had any pair.
    """
    mult = np.where(i == j, 1.0, 2.0)  # how many matrix entries each one stands for
    total = np.bincount(er, cnt * mult, minlength=n)
    has = total > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        p = cnt / total[er]
    wp = p * mult
    fi, fj = i.astype(np.float64), j.astype(np.float64)
    d = fi - fj
    d2 = d * d
    # sums over each label's matrix of symmetric functions of (p, i, j), in one pass
    stack = np.stack([wp * p, wp * d2, wp * fi * fj, wp / (1.0 + d2), wp * np.log2(p)])
    sums = np.zeros((stack.shape[0], n))
    present = np.flatnonzero(np.bincount(er, minlength=n))
    if present.size:
        sums[:, present] = np.add.reduceat(stack, np.searchsorted(er, present), axis=1)
    # marginal px (column sums; the matrices are symmetric, so py = px)
    off = i != j
    px = np.bincount(er * width + j, p, minlength=n * width)
    px += np.bincount(er[off] * width + i[off], p[off], minlength=n * width)
    px = px.reshape(n, width)
    py = px
    k = np.arange(width, dtype=np.float64)
    ux = px @ k
    uy = ux
    vx = px @ (k * k) - ux**2
    sx = sy = np.sqrt(np.clip(vx, 0, None))
    f = np.zeros((13, n))
    f[0] = sums[0]
    f[1] = sums[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        f[2] = np.where((sx == 0) | (sy == 0), 1.0, (sums[2] - ux * uy) / (sx * sy))
    f[3] = vx
    f[4] = sums[3]
    plus = np.bincount(er * (2 * width) + i + j, wp, minlength=n * 2 * width).reshape(n, 2 * width)
    tk = np.arange(2 * width, dtype=np.float64)
    f[5] = plus @ tk
    f[6] = plus @ (tk * tk) - f[5] ** 2
    f[7] = _dense_entropy(plus)
    f[8] = -sums[4]
    minus = np.bincount(er * width + (j - i), wp, minlength=n * width).reshape(n, width)
    m = np.maximum(maxv, 1).astype(np.float64)
    msum = minus.sum(axis=1)
    f[9] = (minus * minus).sum(axis=1) / m - (msum / m) ** 2  # var of P(|x - y|) over its maxv entries
    f[10] = _dense_entropy(minus)
    hx = _dense_entropy(px)
    hy = hx
    log_px = np.log2(np.where(px > 0, px, 1.0))
    # HXY1 = -sum_ij p_ij log2(px_i py_j) = -(sum_i py_i log2 px_i + sum_j px_j log2 py_j)
    hxy1 = -2.0 * (py * log_px).sum(axis=1)
    hxy2 = hx * py.sum(axis=1) + hy * px.sum(axis=1)  # entropy of px py^T
    big = np.maximum(hx, hy)
    with np.errstate(divide="ignore", invalid="ignore"):
        f[11] = np.where(big == 0, f[8] - hxy1, (f[8] - hxy1) / np.where(big == 0, 1.0, big))
    f[12] = np.sqrt(np.clip(1.0 - np.exp(-2.0 * (hxy2 - f[8])), 0.0, None))
    return f, has


def _ragged_arange(lengths: np.ndarray) -> np.ndarray:
    """``0 .. L-1`` for every ``L`` of ``lengths``, concatenated."""
    total = int(lengths.sum())
    return np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def _pixel_pairs(runs: _Runs, chunk: _Chunk, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of pixels of the same label at offset ``(dy, dx)``, ``dy >= 0``, from the row runs.

    Returns the two pixels' positions among the chunk's pixels (label order) and the
    pair's label index within the chunk. A run pairs with the runs of its label in row
    ``row + dy``; their overlap (shifted by ``dx``) gives the pairs, so no pixel of the
    image is looked at.
    """
    ra, rb = chunk.ra, chunk.rb
    h = runs.shape[0]
    rk = runs.run_rank[ra:rb].astype(np.int64)
    c0, c1 = runs.c0[ra:rb], runs.c1[ra:rb]
    pix = runs.pix[ra:rb] - runs.label_pix[chunk.k0]
    key = rk * (h + 1) + runs.row[ra:rb]  # sorted: runs go by label, row, column
    lo = np.searchsorted(key, key + dy, side="left")
    hi = np.searchsorted(key, key + dy, side="right")
    n_cand = hi - lo
    i1 = np.repeat(np.arange(key.size), n_cand)
    i2 = lo[i1] + _ragged_arange(n_cand)
    start = np.maximum(c0[i1], c0[i2] - dx)
    end = np.minimum(c1[i1], c1[i2] - dx)
    length = np.maximum(end - start + 1, 0)
    step = _ragged_arange(length)
    src = np.repeat(pix[i1] + (start - c0[i1]), length) + step
    dst = np.repeat(pix[i2] + (start + dx - c0[i2]), length) + step
    return src, dst, np.repeat(rk[i1] - chunk.k0, length)


def _texture_entries(
    q: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], chunk: _Chunk
) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], np.ndarray]:
    """Co-occurrence entries of a chunk's labels in each direction, and their matrix sizes.

    ``q`` are the grey levels of the chunk's pixels (label order), ``pairs`` the pixel
    pairs of each direction (:func:`_pixel_pairs`). Per direction ``(label index, i, j,
    count)`` of the non-zero entries with ``i <= j`` of each label's symmetric matrix
    (labels indexed over the whole image), as mahotas counts them: pairs of pixels of
    the label at the direction's offset, both of a non-zero grey level.
    """
    q = q.astype(np.int64)
    maxv = np.maximum.reduceat(q, chunk.starts) + 1
    # keys over each label's own range of levels keep the histogram small
    qlo = np.minimum.reduceat(np.where(q > 0, q, 1 << 20), chunk.starts)
    qlo = np.minimum(qlo, maxv - 1)
    width = int((maxv - qlo).max()) if maxv.size else 1
    n = chunk.n
    out = []
    dark = bool((q == 0).any())
    for src, dst, r in pairs:
        a, b = q[src], q[dst]
        if dark:  # level 0 pairs are not counted
            keep = (a > 0) & (b > 0)
            a, b, r = a[keep], b[keep], r[keep]
        # entries on and above the diagonal: an unordered pair {a, b} adds 1 to (a, b)
        # and (b, a) of the symmetric matrix, a pair {a, a} adds 2 to (a, a)
        base = qlo[r]
        key = np.minimum(a, b) - base
        key *= width
        key += r * (width * width)
        key += np.maximum(a, b) - base
        if n * width * width <= (1 << 24):
            counts = np.bincount(key, minlength=n * width * width)
            uk = np.flatnonzero(counts)
            cnt = counts[uk].astype(np.float64)
        else:
            uk, c = np.unique(key, return_counts=True)
            cnt = c.astype(np.float64)
        er = uk // (width * width)
        i = (uk // width) % width + qlo[er]
        j = uk % width + qlo[er]
        cnt[i == j] *= 2
        out.append((er + chunk.k0, i, j, cnt))
    return out, maxv


def _texture_features(parts: list, n: int, group: int = 2048) -> dict[str, np.ndarray]:
    """MeasureTexture's columns (``<feature>_<direction>``) from every chunk's entries."""
    maxv = np.concatenate([m for _, m in parts])
    width = int(maxv.max())
    feats = np.full((len(_DIRECTIONS), 13, n), np.nan)
    all_have = np.ones(n, dtype=bool)
    for d in range(len(_DIRECTIONS)):
        er, i, j, cnt = (np.concatenate([e[d][k] for e, _ in parts]) for k in range(4))
        bounds = np.searchsorted(er, np.arange(0, n + group, group))
        for g0 in range(0, n, group):
            g1 = min(n, g0 + group)
            s0, s1 = bounds[g0 // group], bounds[g0 // group + 1]
            f, has = _haralick13(er[s0:s1] - g0, i[s0:s1], j[s0:s1], cnt[s0:s1], g1 - g0, maxv[g0:g1], width)
            feats[d, :, g0:g1] = f
            all_have[g0:g1] &= has
    feats[:, :, ~all_have] = np.nan  # as MeasureTexture: no pairs in one direction, no texture
    return {
        f"{name}_{d:02d}": feats[d, fi]
        for d in range(len(_DIRECTIONS))
        for fi, name in enumerate(TEXTURE_FEATURES)
    }


# ------------------------------------------------------------------------ neighbours
def _outline_points(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, columns and labels of the outline pixels (an 8-neighbour differs, or on the image edge)."""
    diff = np.zeros(labels.shape, dtype=bool)
    for a, b in (
        ((slice(1, None), slice(None)), (slice(None, -1), slice(None))),
        ((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
        ((slice(1, None), slice(1, None)), (slice(None, -1), slice(None, -1))),
        ((slice(1, None), slice(None, -1)), (slice(None, -1), slice(1, None))),
    ):
        d = labels[a] != labels[b]
        diff[a] |= d
        diff[b] |= d
    diff[0, :] = diff[-1, :] = True
    diff[:, 0] = diff[:, -1] = True
    diff &= labels != 0
    rr, cc = np.nonzero(diff)
    return rr, cc, labels[rr, cc]


def _near_other_labels(rr: np.ndarray, cc: np.ndarray, rank: np.ndarray, n: int, cell: int) -> np.ndarray:
    """Indices of the points whose grid cell (side ``cell``) or its 8 neighbours hold another label."""
    gy, gx = rr // cell, cc // cell
    ncols = int(gx.max()) + 3
    cid = (gy + 1) * ncols + (gx + 1)
    own = np.unique(cid.astype(np.int64) * n + rank)  # (cell, label) present
    c_own, l_own = own // n, own % n
    spread = np.concatenate([c_own + dy * ncols + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    labs = np.tile(l_own, 9)
    seen = np.unique(spread * n + labs)  # labels present in each cell's neighbourhood
    cells, per_cell = np.unique(seen // n, return_counts=True)
    crowded = cells[per_cell > 1]
    return np.flatnonzero(np.isin(cid, crowded))


def _neighbors(
    labels: np.ndarray, runs: _Runs, cen: _Centroids, distance: int, methods: Sequence[str] = NEIGHBOR_METHODS
) -> dict[str, np.ndarray]:
    from scipy.spatial import cKDTree

    n = runs.n
    out: dict[str, np.ndarray] = {}
    # closest objects by centroid (the same for both methods)
    first_num = np.zeros(n, dtype=np.int64)
    second_num = np.zeros(n, dtype=np.int64)
    first_d = np.zeros(n)
    second_d = np.zeros(n)
    angle = np.zeros(n)
    if n > 1:
        centres = np.column_stack([cen.cy, cen.cx])
        kk = min(n, 3)
        dist, idx = cKDTree(centres).query(centres, k=kk)
        first = idx[:, 1]
        v1 = centres[first] - centres
        first_num = runs.ids[first]
        first_d = np.hypot(v1[:, 0], v1[:, 1])
        if n > 2:
            second = idx[:, 2]
            v2 = centres[second] - centres
            second_num = runs.ids[second]
            second_d = np.hypot(v2[:, 0], v2[:, 1])
            with np.errstate(invalid="ignore", divide="ignore"):
                cos = (v1 * v2).sum(axis=1) / np.sqrt((v1**2).sum(axis=1) * (v2**2).sum(axis=1))
            angle = np.degrees(np.arccos(cos))

    own_outline: list[tuple[np.ndarray, ...]] = []

    def outline_of(image: np.ndarray) -> tuple[np.ndarray, ...]:
        if image is labels and own_outline:  # Adjacent and Within share the objects' outline
            return own_outline[0]
        rr, cc, ll = _outline_points(image)
        rank = runs.rank_of(ll)
        h, w = image.shape
        padded = np.zeros((h + 2, w + 2), dtype=image.dtype)
        padded[1:-1, 1:-1] = image
        out = rr, cc, ll, rank, padded, np.bincount(rank, minlength=n).astype(np.float64)
        if image is labels:
            own_outline.append(out)
        return out

    def adjacent(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Neighbour counts, touching outline pixels and outline sizes of ``image``'s labels."""
        rr, cc, ll, rank, padded, perimeter = outline_of(image)
        # neighbours: another label 4-adjacent to the object; both pixels of such a
        # pair are outline pixels, so looking right and down from those suffices
        pa, pb = [], []
        for dy, dx in ((0, 1), (1, 0)):
            other = padded[rr + 1 + dy, cc + 1 + dx]
            m = (other != 0) & (other != ll)
            pa.append(rank[m])
            pb.append(runs.rank_of(other[m]))
        ra = np.concatenate(pa).astype(np.int64)
        rb = np.concatenate(pb).astype(np.int64)
        keys = np.unique(np.concatenate([ra * n + rb, rb * n + ra]))
        count = np.bincount(keys // n, minlength=n).astype(np.float64)
        # touching: outline pixels with another label among their 8 neighbours
        hit = np.zeros(rr.size, dtype=bool)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy or dx:
                    other = padded[rr + 1 + dy, cc + 1 + dx]
                    hit |= (other != 0) & (other != ll)
        return count, np.bincount(rank, hit.astype(np.float64), minlength=n), perimeter

    chosen = {"adjacent": ("Adjacent", 1), "expanded": ("Expanded", 1), "within": (str(distance), distance)}
    for suffix, radius in (chosen[m] for m in _check_methods(methods)):
        if n <= 1:
            count = np.zeros(n)
            touching = np.zeros(n)
            perimeter = np.ones(n)
        elif suffix == "Adjacent":
            count, touching, perimeter = adjacent(labels)
        elif suffix == "Expanded":
            # "Expand until adjacent": every background pixel takes the label of the
            # nearest object pixel; neighbours and touching are then the expanded
            # objects' adjacency (CellProfiler compares the expanded labels with
            # themselves). The closest objects stay measured on the objects' own centroids.
            from scipy.ndimage import distance_transform_edt

            iy, ix = distance_transform_edt(labels == 0, return_distances=False, return_indices=True)
            count, touching, perimeter = adjacent(labels[iy, ix])
        else:
            rr, cc, ll, rank, _padded, perimeter = outline_of(labels)
            # pixels of two labels at most `distance` apart are outline pixels of both;
            # only outline pixels in grid cells with another label nearby can be
            reach = radius + 0.5
            cand = _near_other_labels(rr, cc, rank, n, int(np.ceil(reach)))
            pts = np.column_stack([rr[cand], cc[cand]]).astype(np.float64)
            pairs = cKDTree(pts).query_pairs(reach + 1e-9, output_type="ndarray")
            a, b = cand[pairs[:, 0]], cand[pairs[:, 1]]
            other = ll[a] != ll[b]
            a, b = a[other], b[other]
            d2 = (rr[a] - rr[b]) ** 2 + (cc[a] - cc[b]) ** 2
            near = d2 <= radius * radius
            ra, rb = rank[a[near]].astype(np.int64), rank[b[near]].astype(np.int64)
            keys = np.unique(np.concatenate([ra * n + rb, rb * n + ra]))
            count = np.bincount(keys // n, minlength=n).astype(np.float64)
            # touching: outline pixels within distance + 1/2 of another label's pixel
            hit = np.zeros(rr.size, dtype=bool)
            hit[a] = True
            hit[b] = True
            touching = np.bincount(rank, hit.astype(np.float64), minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            percent = touching * 100.0 / perimeter
        out |= {
            f"NumberOfNeighbors_{suffix}": count,
            f"PercentTouching_{suffix}": percent,
            f"FirstClosestObjectNumber_{suffix}": first_num.astype(np.float64),
            f"FirstClosestDistance_{suffix}": first_d,
            f"SecondClosestObjectNumber_{suffix}": second_num.astype(np.float64),
            f"SecondClosestDistance_{suffix}": second_d,
            f"AngleBetweenNeighbors_{suffix}": angle,
        }
    return out


# ------------------------------------------------------------------------------- API
def iter_cellprofiler_features(
    labels: np.ndarray,
    intensities: np.ndarray | Mapping[str, np.ndarray] | None = None,
    *,
    groups: Iterable[str] = CP_GROUPS,
    texture_scale: int = 3,
    texture_levels: int = 256,
    neighbor_distance: int = 5,
    neighbor_methods: Sequence[str] = NEIGHBOR_METHODS,
    positions: bool = False,
) -> Generator[Progress, None, pd.DataFrame]:
    """Measure every labelled object as CellProfiler 4 does, yielding progress.

    Parameters
    ----------
    labels : (M, N) ndarray of int
        Label image; 0 is background, ids need not be contiguous.
    intensities : (M, N) ndarray or mapping of str to (M, N) ndarray, optional
        Intensity channels (a single array is called ``"intensity"``). Integer
        images are divided by their type's maximum, as CellProfiler loads them.
    groups : iterable of str, optional
        Among :data:`CP_GROUPS` (default: all): ``shape`` (MeasureObjectSizeShape),
        ``zernike`` (its Zernike features), ``intensity`` (MeasureObjectIntensity),
        ``texture`` (MeasureTexture) and ``neighbors`` (MeasureObjectNeighbors).
    texture_scale : int, optional
        MeasureTexture's scale, the pixel distance of co-occurring pairs (default 3).
    texture_levels : int, optional
        Its number of grey levels, 2 to 256 (default 256, CellProfiler 3 and 4's).
    neighbor_distance : int, optional
        The distance of the *Within a given distance* neighbour method (default 5).
    neighbor_methods : sequence of str, optional
        Among :data:`ALL_NEIGHBOR_METHODS`: ``"adjacent"``, ``"expanded"`` (*Expand
        until adjacent*, CellProfiler's default: the objects grown into the background
        until they meet, by a distance transform of the whole image) and ``"within"``
        (default: adjacent and within).
    positions : bool, optional
        Also give this package's position columns after ``label``
        (``centroid_y``, ``centroid_x``, ``bbox_min_y`` ... ``bbox_max_x``, the maxima
        exclusive), which the viewer uses to find a cell (default False).

    Yields
    ------
    Progress
        One record per group and channel.

    Returns
    -------
    pandas.DataFrame
        One row per label, sorted by label; columns as :func:`cellprofiler_columns`.
        ``FirstClosestObjectNumber`` and ``SecondClosestObjectNumber`` hold label ids.

    Raises
    ------
    ValueError
        For labels that are not a 2D non-negative integer image, an intensity image
        of another shape, or a parameter out of range.
    """
    labels = _check_labels(labels)
    channels = _check_channels(intensities, labels.shape)
    groups = _normalise_groups(groups)
    scale, levels, distance = _check_params(texture_scale, texture_levels, neighbor_distance)
    methods = _check_methods(neighbor_methods)
    columns = cellprofiler_columns(
        list(channels),
        groups,
        texture_scale=scale,
        texture_levels=levels,
        neighbor_distance=distance,
        neighbor_methods=methods,
    )
    if positions:
        columns[1:1] = list(POSITION_COLUMNS)
    do_int = "intensity" in groups and bool(channels)
    do_tex = "texture" in groups and bool(channels)
    n_steps = 1 + ("shape" in groups) + ("zernike" in groups) + ("neighbors" in groups)
    n_steps += len(channels) * (do_int + do_tex)
    step = 0
    yield Progress(step * _SUB, n_steps * _SUB, "Scanning labels")
    if labels.size == 0 or not labels.any():
        yield Progress(n_steps * _SUB, n_steps * _SUB, "No labels")
        return pd.DataFrame({c: np.zeros(0, dtype=_dtype(c)) for c in columns})
    scan = _Scan(labels, perimeter="shape" in groups, touching=False)
    runs = _Runs(labels, scan.run_start, scan.run_end)
    cen = _Centroids(runs, (1.0, 1.0))
    step += 1
    data: dict[str, np.ndarray] = {"label": runs.ids}
    if positions:
        last_run = np.append(runs.first_run[1:], runs.row.size) - 1
        data |= {
            "centroid_y": cen.cy,
            "centroid_x": cen.cx,
            "bbox_min_y": runs.row[runs.first_run],
            "bbox_min_x": np.minimum.reduceat(runs.c0, runs.first_run),
            "bbox_max_y": runs.row[last_run] + 1,
            "bbox_max_x": np.maximum.reduceat(runs.c1, runs.first_run) + 1,
        }
    hulls = None
    if "shape" in groups or "zernike" in groups:
        hulls = geometry.hulls_of_runs(runs.run_rank, runs.row, runs.c0, runs.c1, runs.n)

    def per_label(gen: Generator[int, None, dict[str, np.ndarray]], title: str):
        """Run a per-label loop, turning its counts into progress (and a chance to cancel)."""
        yield Progress(step * _SUB, n_steps * _SUB, title)
        while True:
            try:
                done = next(gen)
            except StopIteration as stop:
                return stop.value
            yield Progress(
                step * _SUB + done * _SUB // max(runs.n, 1),
                n_steps * _SUB,
                f"{title}: {done}/{runs.n} objects",
            )

    if "shape" in groups:
        shape = yield from per_label(_areashape(labels, runs, scan, cen, hulls), "AreaShape")
        data |= {f"AreaShape_{k}": v for k, v in shape.items()}
        step += 1
    if "zernike" in groups:
        zern = yield from per_label(_zernike(runs, hulls), "AreaShape: Zernike")
        data |= {f"AreaShape_{k}": v for k, v in zern.items()}
        step += 1
    chunks = runs.chunks(_CHUNK_PIXELS * 4)
    if do_int:
        edge = _edge_pixels(labels)
        for name, img in channels.items():
            flat = np.ascontiguousarray(img).ravel()
            pieces: list[dict[str, np.ndarray]] = []
            for i, (k0, k1) in enumerate(chunks):
                yield Progress(step * _SUB + i * _SUB // len(chunks), n_steps * _SUB, f"Intensity: {name}")
                pieces.append(_intensity_chunk(runs.pixels(k0, k1), flat, edge, runs, cen))
            for key in pieces[0]:
                prefix = "Location" if key in LOCATION_FEATURES else "Intensity"
                data[f"{prefix}_{key}_{name}"] = np.concatenate([p[key] for p in pieces])
            step += 1
    if do_tex:
        q_flats = {name: _grey_levels(np.asarray(img), levels).ravel() for name, img in channels.items()}
        entries: dict[str, list] = {name: [] for name in channels}
        tex_chunks = runs.chunks(_TEXTURE_CHUNK_PIXELS, max_labels=8)
        n_tex = len(channels)
        for i, (k0, k1) in enumerate(tex_chunks):
            yield Progress(
                step * _SUB + i * n_tex * _SUB // len(tex_chunks),
                n_steps * _SUB,
                f"Texture: {k0}/{runs.n} objects",
            )
            chunk = runs.pixels(k0, k1)
            pairs = [_pixel_pairs(runs, chunk, dy * scale, dx * scale) for dy, dx in _DIRECTIONS]
            for name, q_flat in q_flats.items():
                entries[name].append(_texture_entries(q_flat.take(chunk.flat), pairs, chunk))
        for name in channels:
            for key, values in _texture_features(entries[name], runs.n).items():
                feat, d = key.rsplit("_", 1)
                data[f"Texture_{feat}_{name}_{scale}_{d}_{levels}"] = values
            step += 1
    if "neighbors" in groups:
        yield Progress(step * _SUB, n_steps * _SUB, "Neighbors")
        data |= {f"Neighbors_{k}": v for k, v in _neighbors(labels, runs, cen, distance, methods).items()}
        step += 1
    yield Progress(n_steps * _SUB, n_steps * _SUB, f"Measured {runs.n} objects")
    return pd.DataFrame({c: np.asarray(data[c], dtype=_dtype(c)) for c in columns})


def _dtype(name: str) -> type:
    return np.int64 if name in _INT_FEATURES else np.float64


def compute_cellprofiler_features(
    labels: np.ndarray, intensities: np.ndarray | Mapping[str, np.ndarray] | None = None, **kwargs
) -> pd.DataFrame:
    """:func:`iter_cellprofiler_features` run to its end."""
    return run(iter_cellprofiler_features(labels, intensities, **kwargs))
