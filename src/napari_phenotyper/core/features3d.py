"""Per-cell features of a 3-D label image: shape, intensity, texture and neighbours.

The 3-D counterpart of :mod:`.features` for (Z, Y, X) volumes with a voxel size
``spacing = (z, y, x)`` (any unit; the default ``(1, 1, 1)``):

* **Shape.** ``volume`` (voxels times the voxel volume); ``surface_area`` of the
  marching-cubes mesh (:func:`skimage.measure.marching_cubes` with the spacing,
  :func:`skimage.measure.mesh_surface_area`) of the cell's mask smoothed by a Gaussian
  of :data:`SURFACE_SMOOTHING` voxels, at level 0.5 (the binary mask's staircase is 9-16 %
  too large); ``sphericity`` ``pi^(1/3) (6 V)^(2/3) / A`` with ``V`` the volume the mesh
  encloses (so at most 1, and 1 for a ball; small cells of a few voxels across are
  smoothed towards balls); ``equivalent_diameter`` of the ball of the
  same volume; ``major_``, ``intermediate_`` and ``minor_axis_length``, the full axes
  of the ellipsoid with the same second moments (``sqrt(20 lambda)`` for each eigenvalue
  ``lambda`` of the covariance of the voxel coordinates, i.e. regionprops'
  ``axis_major_length`` and ``axis_minor_length`` in 3-D); ``solidity`` (voxels over
  those of the convex hull image, as regionprops' ``solidity``) and ``extent``
  (voxels over those of the bounding box).
  ``centroid_*`` and ``bbox_*`` are voxel indices (so that a viewer can go to the cell;
  ``bbox_max_*`` exclusive); every other length, area and volume is in the units of
  ``spacing``.
* **Intensity**, per channel: the same statistics and names as in 2-D
  (:data:`.features.INTENSITY_FEATURES`: mean, std, min, max, median, quartiles, sum,
  and the mass displacement, here in units of ``spacing``).
* **Texture**, per channel: the 2-D Haralick features (:data:`.features.TEXTURE_FEATURES`)
  from co-occurrence matrices over the 13 directions of the 3-D lattice at each distance
  (pairs whose two voxels are both in the cell and finite; symmetric and normalised;
  the features averaged over the offsets with at least one pair). Grey levels are
  ``floor((v - min) / (max - min) * levels)`` on the channel's finite range.
* **Neighbours**: ``n_neighbors``, the distinct other labels touching the cell
  (26-connectivity, the 3-D counterpart of 2-D's 8-connectivity).

Everything but the surface and the convex hull is computed for all cells at once from
the voxels sorted by label; those two are one small marching cubes / convex hull per
cell, inside its bounding box.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping, Sequence
from itertools import product

import numpy as np
import pandas as pd

from .features import INTENSITY_FEATURES, NEIGHBOR_FEATURES, TEXTURE_FEATURES, _haralick, _Quantiser
from .progress import Progress, run

__all__ = [
    "FEATURE_GROUPS_3D",
    "SHAPE_FEATURES_3D",
    "SURFACE_SMOOTHING",
    "compute_features_3d",
    "feature_columns_3d",
    "iter_features_3d",
    "texture_offsets_3d",
]

#: The feature groups of a 3-D table, in column order.
FEATURE_GROUPS_3D = ("shape", "intensity", "texture", "neighbors")

#: Shape columns of a 3-D table.
SHAPE_FEATURES_3D = (
    "centroid_z",
    "centroid_y",
    "centroid_x",
    "bbox_min_z",
    "bbox_min_y",
    "bbox_min_x",
    "bbox_max_z",
    "bbox_max_y",
    "bbox_max_x",
    "volume",
    "surface_area",
    "sphericity",
    "equivalent_diameter",
    "major_axis_length",
    "intermediate_axis_length",
    "minor_axis_length",
    "solidity",
    "extent",
)

_INT_COLUMNS = frozenset(
    (
        "label",
        "bbox_min_z",
        "bbox_min_y",
        "bbox_min_x",
        "bbox_max_z",
        "bbox_max_y",
        "bbox_max_x",
        "n_neighbors",
    )
)


def _normalise_groups(groups: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(groups, str):
        groups = (groups,)
    groups = tuple(groups)
    if "zernike" in groups:
        raise ValueError("Zernike moments are 2-D only; leave 'zernike' out of the groups for 3-D labels.")
    unknown = [g for g in groups if g not in FEATURE_GROUPS_3D]
    if unknown:
        raise ValueError(f"Unknown feature group(s) {unknown}; choose among {', '.join(FEATURE_GROUPS_3D)}.")
    return tuple(g for g in FEATURE_GROUPS_3D if g in groups)


def feature_columns_3d(
    channel_names: Sequence[str] | None = (), groups: Iterable[str] = FEATURE_GROUPS_3D
) -> list[str]:
    """Column names of a 3-D feature table, in order (``label`` first)."""
    groups = _normalise_groups(groups)
    channels = [str(c) for c in (channel_names or ())]
    cols = ["label"]
    if "shape" in groups:
        cols += SHAPE_FEATURES_3D
    if "intensity" in groups:
        cols += [f"{f}_{c}" for c in channels for f in INTENSITY_FEATURES]
    if "texture" in groups:
        cols += [f"{f}_{c}" for c in channels for f in TEXTURE_FEATURES]
    if "neighbors" in groups:
        cols += NEIGHBOR_FEATURES
    return cols


def _dtype(name: str) -> type:
    return np.int64 if name in _INT_COLUMNS else np.float64


# --------------------------------------------------------------------------- validation
def _check_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(
            f"labels must be a 3-D (Z, Y, X) label image, got {labels.ndim}-D with shape {labels.shape}."
        )
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must have an integer dtype, got {labels.dtype}.")
    if labels.size and np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:
        raise ValueError("labels must be non-negative (0 = background).")
    return np.ascontiguousarray(labels)


def _check_spacing(spacing) -> np.ndarray:
    if spacing is None:
        return np.ones(3)
    sp = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if sp.size == 1:
        sp = np.repeat(sp, 3)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(
            f"spacing must be one positive number or (z, y, x) positive numbers, got {spacing!r}."
        )
    return sp


def _check_channels(intensities, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    if intensities is None:
        return {}
    items = list(intensities.items()) if isinstance(intensities, Mapping) else [("intensity", intensities)]
    out: dict[str, np.ndarray] = {}
    for name, img in items:
        if not isinstance(name, str) or not name:
            raise ValueError(f"Intensity channel names must be non-empty strings, got {name!r}.")
        img = np.asarray(img)
        if img.shape != shape:
            raise ValueError(
                f"Intensity channel {name!r} has shape {img.shape} but the labels have shape {shape}."
            )
        if img.dtype.kind not in "iufb":
            raise ValueError(f"Intensity channel {name!r} has dtype {img.dtype}; pass a real-valued image.")
        out[name] = img.astype(np.uint8) if img.dtype == bool else img
    return out


# --------------------------------------------------------------------------- voxels
class _Voxels:
    """The foreground voxels sorted by label: flat indices, the label ranks and segments."""

    def __init__(self, labels: np.ndarray):
        flat = labels.ravel()
        idx = np.flatnonzero(flat)
        lab = flat[idx]
        order = np.argsort(lab, kind="stable")
        self.idx = idx[order]
        lab = lab[order]
        self.ids, self.starts, self.counts = np.unique(lab, return_index=True, return_counts=True)
        self.n = len(self.ids)
        self.rank = np.repeat(np.arange(self.n), self.counts)
        self.shape = labels.shape
        self.coords = np.unravel_index(self.idx, labels.shape)  # z, y, x

    def sum(self, values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values, self.starts) if self.n else np.zeros(0)

    def rank_of(self, ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.ids, ids)


def _bboxes(vox: _Voxels) -> tuple[np.ndarray, np.ndarray]:
    lo = np.stack([np.minimum.reduceat(c, vox.starts) for c in vox.coords], axis=1)
    hi = np.stack([np.maximum.reduceat(c, vox.starts) for c in vox.coords], axis=1) + 1
    return lo, hi


def _moments(vox: _Voxels, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (voxels) and covariance matrices (units of spacing squared) of every cell."""
    n = vox.counts.astype(np.float64)
    c = [coord.astype(np.float64) for coord in vox.coords]
    mean = np.stack([vox.sum(ci) / n for ci in c], axis=1)
    cov = np.empty((vox.n, 3, 3))
    for a in range(3):
        da = (c[a] - np.repeat(mean[:, a], vox.counts)) * spacing[a]
        for b in range(a, 3):
            db = (c[b] - np.repeat(mean[:, b], vox.counts)) * spacing[b]
            cov[:, a, b] = cov[:, b, a] = vox.sum(da * db) / n
    return mean, cov


def _convex_voxels(mask: np.ndarray) -> int:
    """Voxels of ``skimage.morphology.convex_hull_image(mask)`` (regionprops' ``image_convex``).

    As scikit-image: the hull of the voxels' face centres (each voxel offset by +-0.5
    along each axis; only surface voxels can be on it), and the bounding-box voxels
    whose centres lie inside it, with its tolerance. Degenerate (flat) cells count their
    own voxels.
    """
    from scipy import ndimage as ndi
    from scipy.spatial import ConvexHull, QhullError

    surface = mask & ~ndi.binary_erosion(mask)
    pts = np.argwhere(surface).astype(np.float64)
    corners = np.concatenate([np.eye(3) * 0.5, np.eye(3) * -0.5])
    pts = np.unique((pts[:, None, :] + corners[None]).reshape(-1, 3), axis=0)
    try:
        hull = ConvexHull(pts)
    except (QhullError, ValueError):
        return int(mask.sum())
    grid = np.indices(mask.shape).reshape(3, -1).T.astype(np.float64)
    inside = np.all(grid @ hull.equations[:, :3].T + hull.equations[:, 3] < 1e-10, axis=1)
    return int(inside.sum())


#: Sigma (in-plane voxels, isotropic in physical space) of the Gaussian that smooths a
#: cell's mask before marching cubes. The mesh of the binary mask is a staircase whose
#: area is 9 % (isotropic voxels) to 16 % (z step 3x) too large on a ball of radius 10 or
#: 20; smoothed at 0.7 it is within 1 % (4 % at z step 3x) for radii of 6 voxels and more.
SURFACE_SMOOTHING = 0.7


def _surface(mask: np.ndarray, spacing: np.ndarray) -> tuple[float, float]:
    """Area and enclosed volume of the marching-cubes mesh of the smoothed ``mask``."""
    from scipy import ndimage as ndi
    from skimage.measure import marching_cubes, mesh_surface_area

    padded = np.pad(mask, 3).astype(np.float32)
    padded = ndi.gaussian_filter(padded, SURFACE_SMOOTHING * spacing.min() / spacing)
    if not padded.max() > 0.5:  # too thin to have a surface after smoothing
        padded = np.pad(mask, 3).astype(np.float32)
    verts, faces, _, _ = marching_cubes(padded, 0.5, spacing=tuple(spacing))
    tri = verts[faces]
    enclosed = abs(float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum()) / 6)
    return float(mesh_surface_area(verts, faces)), enclosed


def _shape(
    labels: np.ndarray, vox: _Voxels, spacing: np.ndarray
) -> Generator[Progress, None, dict[str, np.ndarray]]:
    lo, hi = _bboxes(vox)
    mean, cov = _moments(vox, spacing)
    ev = np.linalg.eigvalsh(cov)[:, ::-1]  # descending
    ev = np.clip(ev, 0, None)
    volume = vox.counts * float(np.prod(spacing))
    area = np.empty(vox.n)
    enclosed = np.empty(vox.n)
    convex = np.empty(vox.n)
    for k in range(vox.n):
        if k and k % 50 == 0:
            yield Progress(k, vox.n, f"Shape: {k}/{vox.n} objects")
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo[k], hi[k], strict=True))
        mask = labels[sl] == vox.ids[k]
        area[k], enclosed[k] = _surface(mask, spacing)
        convex[k] = _convex_voxels(mask)
    with np.errstate(invalid="ignore", divide="ignore"):
        # the mesh's own volume: by the isoperimetric inequality at most 1, 1 for a ball
        sphericity = np.cbrt(np.pi) * np.cbrt(6 * enclosed) ** 2 / area
    out = {f"centroid_{a}": mean[:, i] for i, a in enumerate("zyx")}
    out.update({f"bbox_min_{a}": lo[:, i] for i, a in enumerate("zyx")})
    out.update({f"bbox_max_{a}": hi[:, i] for i, a in enumerate("zyx")})
    out.update(
        volume=volume,
        surface_area=area,
        sphericity=sphericity,
        equivalent_diameter=np.cbrt(6 * volume / np.pi),
        major_axis_length=np.sqrt(20 * ev[:, 0]),
        intermediate_axis_length=np.sqrt(20 * ev[:, 1]),
        minor_axis_length=np.sqrt(20 * ev[:, 2]),
        solidity=vox.counts / convex,
        extent=vox.counts / np.prod(hi - lo, axis=1),
    )
    return out


# --------------------------------------------------------------------------- intensity
def _quantiles(sorted_v: np.ndarray, vox: _Voxels, q: float) -> np.ndarray:
    """Linear-interpolated quantile ``q`` of every cell's sorted values (numpy's default)."""
    pos = q * (vox.counts - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, vox.counts - 1)
    frac = pos - lo
    a, b = sorted_v[vox.starts + lo], sorted_v[vox.starts + hi]
    return a + (b - a) * frac


def _intensity(
    img: np.ndarray, vox: _Voxels, centroid: np.ndarray, spacing: np.ndarray
) -> dict[str, np.ndarray]:
    v = img.ravel()[vox.idx].astype(np.float64)
    n = vox.counts.astype(np.float64)
    total = vox.sum(v)
    mean = total / n
    dev = v - np.repeat(mean, vox.counts)
    std = np.sqrt(vox.sum(dev * dev) / n)
    order = np.lexsort((v, vox.rank))
    sv = v[order]
    out = {
        "mean_intensity": mean,
        "std_intensity": std,
        "min_intensity": np.minimum.reduceat(v, vox.starts),
        "max_intensity": np.maximum.reduceat(v, vox.starts),
        "median_intensity": _quantiles(sv, vox, 0.5),
        "q25_intensity": _quantiles(sv, vox, 0.25),
        "q75_intensity": _quantiles(sv, vox, 0.75),
        "integrated_intensity": total,
    }
    with np.errstate(invalid="ignore", divide="ignore"):
        d2 = np.zeros(vox.n)
        for axis in range(3):
            weighted = vox.sum(v * vox.coords[axis]) / total
            d2 += ((weighted - centroid[:, axis]) * spacing[axis]) ** 2
        out["mass_displacement"] = np.sqrt(d2)
    has_nan = vox.sum(np.isnan(v).astype(np.float64)) > 0
    if has_nan.any():
        for key in ("min_intensity", "max_intensity", "median_intensity", "q25_intensity", "q75_intensity"):
            out[key] = np.where(has_nan, np.nan, out[key])
    return out


# --------------------------------------------------------------------------- texture
def texture_offsets_3d(distances: Sequence[int]) -> list[tuple[int, int, int]]:
    """The 13 directions of the 3-D lattice (one of each opposite pair) at each distance."""
    dirs = [d for d in product((-1, 0, 1), repeat=3) if d > (0, 0, 0)]
    return [(a * k, b * k, c * k) for k in distances for a, b, c in dirs]


def _shifted(shape: tuple[int, ...], offset: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices ``a`` and ``b`` with ``arr[b]`` the neighbours at ``offset`` of ``arr[a]``."""
    sa, sb = [], []
    for n, d in zip(shape, offset, strict=True):
        sa.append(slice(0, n - d) if d >= 0 else slice(-d, n))
        sb.append(slice(d, n) if d >= 0 else slice(0, n + d))
    return tuple(sa), tuple(sb)


def _texture(
    labels: np.ndarray, vox: _Voxels, img: np.ndarray, offsets: Sequence[tuple[int, int, int]], levels: int
) -> dict[str, np.ndarray]:
    q, finite_or_none = _Quantiser(img, levels)(img)  # the 2-D set's grey levels and GLCM features
    finite = np.ones(img.shape, bool) if finite_or_none is None else finite_or_none
    acc = {f: np.zeros(vox.n) for f in TEXTURE_FEATURES}
    n_valid = np.zeros(vox.n)
    for off in offsets:
        sa, sb = _shifted(labels.shape, off)
        la, lb = labels[sa], labels[sb]
        ok = (la == lb) & (la > 0) & finite[sa] & finite[sb]
        r = vox.rank_of(la[ok])
        feats, has = _haralick(r, q[sa][ok], q[sb][ok], vox.n, levels)
        for f in TEXTURE_FEATURES:
            acc[f] += np.where(has, feats[f], 0.0)
        n_valid += has
    with np.errstate(invalid="ignore", divide="ignore"):
        return {f: np.where(n_valid > 0, acc[f] / n_valid, np.nan) for f in TEXTURE_FEATURES}


# --------------------------------------------------------------------------- neighbours
def _n_neighbors(labels: np.ndarray, vox: _Voxels) -> np.ndarray:
    """Distinct other labels in every cell's 26-neighbourhood."""
    pairs = []
    for off in texture_offsets_3d([1]):
        sa, sb = _shifted(labels.shape, off)
        la, lb = labels[sa], labels[sb]
        m = (la != lb) & (la > 0) & (lb > 0)
        if m.any():
            ra, rb = vox.rank_of(la[m]).astype(np.int64), vox.rank_of(lb[m]).astype(np.int64)
            pairs.append(np.unique(np.concatenate([ra * vox.n + rb, rb * vox.n + ra])))
    if not pairs:
        return np.zeros(vox.n, np.int64)
    keys = np.unique(np.concatenate(pairs))
    return np.bincount(keys // vox.n, minlength=vox.n).astype(np.int64)


# --------------------------------------------------------------------------- API
def iter_features_3d(
    labels: np.ndarray,
    intensities: np.ndarray | Mapping[str, np.ndarray] | None = None,
    *,
    groups: Iterable[str] = FEATURE_GROUPS_3D,
    texture_distances: Sequence[int] = (1,),
    texture_levels: int = 32,
    spacing: float | Sequence[float] | None = None,
) -> Generator[Progress, None, pd.DataFrame]:
    """Measure every cell of a (Z, Y, X) label image, yielding progress.

    Parameters
    ----------
    labels : (Z, Y, X) ndarray of int
        Label image; 0 is background.
    intensities : (Z, Y, X) ndarray or mapping of str to such arrays, optional
        Intensity channels (a single array is called ``"intensity"``).
    groups : iterable of str, optional
        Among :data:`FEATURE_GROUPS_3D` (default: all).
    texture_distances : sequence of int, optional
        Co-occurrence distances in voxels (13 directions each).
    texture_levels : int, optional
        Grey levels of the co-occurrence matrices.
    spacing : float or (float, float, float), optional
        Voxel size (z, y, x); sizes, the surface and the mass displacement are in its units.

    Returns
    -------
    pandas.DataFrame
        One row per label, sorted by label, columns as :func:`feature_columns_3d`.
    """
    labels = _check_labels(labels)
    channels = _check_channels(intensities, labels.shape)
    groups = _normalise_groups(groups)
    sp = _check_spacing(spacing)
    distances = tuple(int(d) for d in np.atleast_1d(texture_distances))
    if not distances or any(d < 1 for d in distances):
        raise ValueError(f"texture_distances must be positive integers, got {texture_distances!r}.")
    if not isinstance(texture_levels, (int, np.integer)) or not 2 <= texture_levels <= 256:
        raise ValueError(f"texture_levels must be an integer between 2 and 256, got {texture_levels!r}.")
    columns = feature_columns_3d(list(channels), groups)
    stages = 1 + ("shape" in groups) + len(channels) * (("intensity" in groups) + ("texture" in groups))
    total, step = stages * 100, 0
    yield Progress(0, total, "Scanning labels")
    if not labels.any():
        yield Progress(total, total, "No labels")
        return pd.DataFrame({c: np.empty(0, dtype=_dtype(c)) for c in columns})
    vox = _Voxels(labels)
    data: dict[str, np.ndarray] = {"label": vox.ids}
    step += 100
    centroid = None
    if "shape" in groups:
        gen = _shape(labels, vox, sp)
        while True:
            try:
                p = next(gen)
            except StopIteration as stop:
                data.update(stop.value)
                break
            yield Progress(step + p.step * 100 // max(1, p.total), total, p.message)
        step += 100
        centroid = np.stack([data["centroid_z"], data["centroid_y"], data["centroid_x"]], axis=1)
    if "intensity" in groups and channels:
        if centroid is None:
            centroid, _ = _moments(vox, sp)
        for name, img in channels.items():
            yield Progress(step, total, f"Intensity: {name}")
            data.update({f"{k}_{name}": v for k, v in _intensity(img, vox, centroid, sp).items()})
            step += 100
    if "texture" in groups and channels:
        offsets = texture_offsets_3d(distances)
        for name, img in channels.items():
            yield Progress(step, total, f"Texture: {name}")
            data.update(
                {
                    f"{k}_{name}": v
                    for k, v in _texture(labels, vox, img, offsets, int(texture_levels)).items()
                }
            )
            step += 100
    if "neighbors" in groups:
        data["n_neighbors"] = _n_neighbors(labels, vox)
    yield Progress(total, total, f"Measured {vox.n} objects in 3-D")
    return pd.DataFrame({c: np.asarray(data[c], dtype=_dtype(c)) for c in columns})


def compute_features_3d(
    labels: np.ndarray, intensities: np.ndarray | Mapping[str, np.ndarray] | None = None, **kwargs
) -> pd.DataFrame:
    """:func:`iter_features_3d` run synchronously."""
    return run(iter_features_3d(labels, intensities, **kwargs))
