"""Classical nucleus segmentation: threshold and seeded watershed, no weights.

The pipeline for one 2-D plane:

1. **Normalise.** NaN/inf pixels become background. Intensities are rescaled so that the
   1st percentile maps to 0 and the 99.8th to 1 (robust to a few hot pixels); a plane
   without contrast is returned empty. If nuclei are darker than the background
   (brightfield, H&E) the image is inverted (``invert``).
2. **Flatten.** A smooth background is estimated at a scale of about twice the nucleus
   diameter (a grey opening on a block-averaged, downsampled copy, i.e. a fast
   rolling-ball) and subtracted, which removes uneven illumination.
3. **Threshold.** A Gaussian of ``smoothing`` sigma is applied and the plane is
   thresholded: automatically (Otsu by default) times ``threshold_scale`` (0.7: hand
   annotations include the dim rim of a nucleus that Otsu cuts off), or at a manual value
   in the normalised, flattened units (0 = background, 1 = bright nuclei). The threshold
   is never set below a few standard deviations of the background noise, so noise alone
   gives no objects.
4. **Clean.** Small holes inside nuclei are filled.
5. **Split.** Touching nuclei are split by a seeded watershed. ``seeds="blob"`` (default)
   seeds one nucleus per peak of a scale-normalised Laplacian of Gaussian tuned to the
   diameter (peaks at least ``0.3 * diameter`` apart) and floods that blob response, which
   also separates nuclei whose union is round. ``seeds="distance"`` is the textbook
   variant: a watershed of the distance transform seeded by its h-maxima (regional maxima
   at least ``h`` pixels high). Measured on the three annotated data sets (see
   ``docs/accuracy.md``) the blob seeds are better on average.
6. **Filter.** Objects outside ``[min_size, max_size]`` pixels (and, optionally, objects
   touching the border) are dropped, and ids are made consecutive from 1.

Stacks are segmented plane by plane (``mode="2d-per-plane"``, the default: leading axes
may be time) or, with ``mode="3d"``, as (Z, Y, X) volumes with the voxel size
``spacing`` (:mod:`.classical3d`: the same steps, each volumetric and isotropic in
physical space).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Generator
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from scipy import ndimage as ndi

from ..progress import Progress
from .base import SegmentationError, check_image, planewise

__all__ = ["MODES", "ClassicalParams", "ClassicalSegmenter", "estimate_diameter", "segment_plane"]

_METHODS = ("otsu", "li", "triangle")
#: How stacks are segmented: each 2-D plane on its own, or (Z, Y, X) volumes in 3-D.
MODES = ("2d-per-plane", "3d")
# Blob seeds: LoG scale relative to the one matched to a disk of the given diameter, and
# the smallest distance between two seeds as a fraction of the diameter (tuned on the
# annotated data sets, see docs/accuracy.md).
_BLOB_SIGMA = 0.85
_BLOB_MIN_DISTANCE = 0.3


def _is_number(value: object) -> bool:
    """A finite real number (not a bool)."""
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float, np.integer, np.floating))
        and math.isfinite(value)
    )


def _positive_or_none(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number or None, got {value!r}.")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number or None, got {value!r}.")


@dataclass(frozen=True)
class ClassicalParams:
    """Parameters of the classical nucleus segmenter.

    Sizes are in pixels. Everything left at ``None`` is derived from ``diameter``; see
    the ``effective_*`` properties for the values used.

    Parameters
    ----------
    diameter : float
        Typical nucleus diameter in pixels (default 30). Sets the background scale, the
        smoothing, the split height and the size limits. :func:`estimate_diameter`
        measures it from an image.
    threshold : float or None
        Foreground threshold. ``None`` (default) chooses it automatically with
        ``threshold_method``. A number sets it by hand, in normalised, flattened units:
        the image is rescaled so that its 1st percentile is 0 and its 99.8th percentile
        is 1, the background is then subtracted, so 0 is the local background and 1 a
        bright nucleus; typical values are 0.05 to 0.5.
    threshold_method : {"otsu", "li", "triangle"}
        Automatic threshold (scikit-image's ``threshold_<method>``). Otsu (default) suits
        well-separated bright nuclei; Li and triangle cut lower and keep dim nuclei.
    threshold_scale : float
        Factor applied to the automatic threshold (default 0.7); lower keeps more of the
        dim rim of each nucleus. Ignored with a manual ``threshold``.
    smoothing : float or None
        Sigma of the Gaussian applied before thresholding. ``None``: ``diameter / 15``
        (at least 1).
    flatten_background : bool
        Subtract a smooth background estimated at about twice the diameter (default True).
    split_touching : bool
        Split touching nuclei with a seeded watershed (default True).
    seeds : {"blob", "distance"}
        How nuclei are seeded for the split: peaks of a Laplacian-of-Gaussian blob filter
        at the nucleus scale (``"blob"``, default), or h-maxima of the distance transform
        (``"distance"``).
    h : float or None
        For ``seeds="distance"``: height (in pixels of distance to the edge) that a
        maximum of the distance transform must rise above its surroundings to seed its own
        nucleus. Smaller values split more. ``None``: ``diameter / 15`` (at least 1).
    min_size : float or None
        Smallest object area kept, in pixels. ``None``: the area of a disk of diameter
        ``diameter / 3`` (about 79 px for diameter 30).
    max_size : float or None
        Largest object area kept, in pixels. ``None``: the area of a disk of diameter
        ``4 * diameter`` (about 11300 px for diameter 30).
    exclude_border : bool
        Drop objects touching the image border (default False).
    fill_holes : bool
        Fill holes inside objects that are smaller than half a nucleus (default True).
    invert : bool or None
        Segment dark objects on a bright background (brightfield, H&E). ``None`` (default)
        decides per plane: inverted when its intensity histogram is left-skewed (the long
        tail, i.e. the minority phase that the nuclei form, lies on the dark side).
    mode : {"2d-per-plane", "3d"}
        How an image with leading axes is segmented: every 2-D plane on its own, ids
        unique over the stack (``"2d-per-plane"``, default: the leading axes may be time),
        or the last three axes as a (Z, Y, X) volume (``"3d"``; leading axes beyond them
        volume by volume). In 3-D ``min_size`` and ``max_size`` are voxel counts (default:
        the volumes of balls of diameter ``diameter / 3`` and ``4 * diameter``) and the
        diameter is in in-plane pixels.
    spacing : (float, float, float) or None
        With ``mode="3d"``: the voxel size (z, y, x), in any unit, e.g. ``(2, 1, 1)`` for
        a z step twice the pixel size (a string ``"2,1,1"`` is accepted). Only its ratios
        matter. ``None`` (default): isotropic voxels.

    Raises
    ------
    ValueError
        If a value is out of range (the message names the parameter).
    """

    diameter: float = 30.0
    threshold: float | None = None
    threshold_method: Literal["otsu", "li", "triangle"] = "otsu"
    threshold_scale: float = 0.7
    smoothing: float | None = None
    flatten_background: bool = True
    split_touching: bool = True
    seeds: Literal["blob", "distance"] = "blob"
    h: float | None = None
    min_size: float | None = None
    max_size: float | None = None
    exclude_border: bool = False
    fill_holes: bool = True
    invert: bool | None = None
    mode: Literal["2d-per-plane", "3d"] = "2d-per-plane"
    spacing: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        from .classical3d import check_spacing

        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got {self.mode!r}.")
        if isinstance(self.spacing, str) and not self.spacing.strip():
            object.__setattr__(self, "spacing", None)
        if self.spacing is not None:  # a list (from a file) or "2,1,1" (command line, form)
            object.__setattr__(self, "spacing", check_spacing(self.spacing))
        lo, hi = self.size_limits()
        if lo > hi:
            raise ValueError(f"min_size ({lo:g}) must not exceed max_size ({hi:g}).")
        _positive_or_none("diameter", self.diameter)
        if self.diameter is None:
            raise ValueError("diameter must be a positive number, got None.")
        if self.diameter < 2:
            raise ValueError(f"diameter must be at least 2 pixels, got {self.diameter}.")
        if self.threshold is not None and not _is_number(self.threshold):
            raise ValueError(f"threshold must be a finite number or None, got {self.threshold!r}.")
        if self.threshold_method not in _METHODS:
            raise ValueError(
                f"threshold_method must be one of {', '.join(map(repr, _METHODS))}, got {self.threshold_method!r}."
            )
        if not _is_number(self.threshold_scale) or not 0 < self.threshold_scale <= 2:
            raise ValueError(f"threshold_scale must be a number in (0, 2], got {self.threshold_scale!r}.")
        if self.seeds not in ("blob", "distance"):
            raise ValueError(f"seeds must be 'blob' or 'distance', got {self.seeds!r}.")
        if self.smoothing is not None and (not _is_number(self.smoothing) or self.smoothing < 0):
            raise ValueError(f"smoothing must be a number >= 0 or None, got {self.smoothing!r}.")
        _positive_or_none("h", self.h)
        _positive_or_none("min_size", self.min_size)
        _positive_or_none("max_size", self.max_size)
        for name in ("flatten_background", "split_touching", "exclude_border", "fill_holes"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        if self.invert is not None and not isinstance(self.invert, (bool, np.bool_)):
            raise ValueError(f"invert must be True, False or None, got {self.invert!r}.")

    def size_limits(self) -> tuple[float, float]:
        """Smallest and largest object kept: pixels, or voxels in ``mode="3d"``."""
        if self.mode == "3d":
            from .classical3d import volume_limits

            return volume_limits(self, self.spacing or (1.0, 1.0, 1.0))
        return self.effective_min_size, self.effective_max_size

    @property
    def effective_smoothing(self) -> float:
        """Gaussian sigma used before thresholding."""
        return float(self.smoothing) if self.smoothing is not None else max(1.0, self.diameter / 15)

    @property
    def effective_h(self) -> float:
        """h-maxima height used to seed the split."""
        return float(self.h) if self.h is not None else max(1.0, self.diameter / 15)

    @property
    def effective_min_size(self) -> float:
        """Smallest object area kept in 2-D (pixels; :meth:`size_limits` for 3-D)."""
        if self.min_size is not None:
            return float(self.min_size)
        return math.pi * (self.diameter / 6) ** 2

    @property
    def effective_max_size(self) -> float:
        """Largest object area kept in 2-D (pixels; :meth:`size_limits` for 3-D)."""
        if self.max_size is not None:
            return float(self.max_size)
        return math.pi * (2 * self.diameter) ** 2


# --------------------------------------------------------------------------- helpers


def _normalise(plane: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Float32 copy scaled to [p1, p99.8] -> [0, 1], and the finite mask; None if flat."""
    img = plane.astype(np.float32, copy=True)
    finite = np.isfinite(img)
    all_finite = bool(finite.all())
    values = img if all_finite else img[finite]
    if values.size == 0:
        return None
    lo, hi = np.percentile(values, (1.0, 99.8))
    if not hi > lo:
        lo, hi = float(values.min()), float(values.max())
        if not hi > lo:
            return None
    img -= lo
    img /= hi - lo
    # Clip the few pixels above the 99.8th percentile (hot pixels, mitotic or dead cells):
    # left in, they pull an automatic threshold far above ordinary nuclei.
    np.clip(img, 0.0, 1.0, out=img)
    if not all_finite:
        img[~finite] = 0.0
    return img, finite


def _auto_invert(img: np.ndarray, finite: np.ndarray) -> bool:
    """Whether objects are darker than the background: the intensities are left-skewed.

    Nuclei (bright or dark) are the minority phase, so their side of the histogram is
    the long tail: right-skewed for fluorescence, left-skewed for brightfield and H&E.
    Unlike a foreground-fraction rule this holds for dense fields too.
    """
    vals = img[finite] if not finite.all() else img
    z = vals.ravel()[:: max(1, vals.size // 200_000)].astype(np.float64)
    z -= z.mean()
    sd = math.sqrt(float(np.dot(z, z)) / z.size)
    if not sd > 0:
        return False
    z /= sd
    skew = float(np.dot(z * z, z)) / z.size  # dot products: ``mean(z ** 3)`` took 6x longer
    return skew < 0


def _background(img: np.ndarray, diameter: float) -> np.ndarray:
    """Smooth lower envelope of ``img`` at a scale of about twice ``diameter`` (fast rolling ball)."""
    from skimage.measure import block_reduce

    factor = max(1, int(diameter // 4))
    small = block_reduce(img, (factor, factor), np.mean) if factor > 1 else img
    size = max(3, round(2 * diameter / factor) | 1)
    bg = ndi.grey_opening(small, size=(size, size), mode="reflect")
    bg = ndi.uniform_filter(bg, size=size, mode="reflect")
    if factor > 1:
        zoom = (img.shape[0] / bg.shape[0], img.shape[1] / bg.shape[1])
        bg = ndi.zoom(bg, zoom, order=1, mode="nearest", grid_mode=True)
        bg = bg[: img.shape[0], : img.shape[1]]
        if bg.shape != img.shape:  # zoom rounding: pad by edge values
            bg = np.pad(bg, [(0, img.shape[0] - bg.shape[0]), (0, img.shape[1] - bg.shape[1])], mode="edge")
    return np.minimum(bg, img.max()).astype(np.float32)


def _threshold(img: np.ndarray, method: str) -> float:
    from skimage import filters

    sample = img.ravel()[:: max(1, img.size // 500_000)]
    if method == "otsu":
        return float(filters.threshold_otsu(sample))
    if method == "li":
        return float(filters.threshold_li(sample))
    return float(filters.threshold_triangle(sample))


def _noise_floor(img: np.ndarray, fg: np.ndarray) -> float:
    """Median + 3 robust standard deviations of the background pixels of ``img``."""
    bg = img[~fg]
    if bg.size < 16:
        return -np.inf
    bg = bg.ravel()[:: max(1, bg.size // 200_000)]
    med = float(np.median(bg))
    mad = float(np.median(np.abs(bg - med)))
    return med + 3 * 1.4826 * mad


def _pixel_noise_floor(img: np.ndarray, sm: np.ndarray, sigma: float) -> float:
    """Median of ``sm`` + 5 standard deviations of smoothed pixel noise.

    The noise of ``img`` is measured from differences of horizontal neighbours (robust to
    objects and to slow background changes) and scaled by the variance reduction of a
    Gaussian of ``sigma``, so that a plane of pure noise yields no objects.
    """
    step = max(1, img.shape[0] // 512)
    diff = np.diff(img[::step], axis=1).ravel()
    mad = float(np.median(np.abs(diff - np.median(diff))))
    noise = 1.4826 * mad / math.sqrt(2)
    smoothed_noise = noise / (2 * math.sqrt(math.pi) * sigma) if sigma > 0 else noise
    return float(np.median(sm[:: max(1, sm.shape[0] // 512)])) + 5 * smoothed_noise


def _fill_small_holes(mask: np.ndarray, max_area: float) -> np.ndarray:
    filled = ndi.binary_fill_holes(mask)
    holes = filled & ~mask
    if not holes.any():
        return mask
    lab, n = ndi.label(holes)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    small = sizes <= max_area
    small[0] = False
    return mask | small[lab]


def _split(mask: np.ndarray, h: float) -> np.ndarray:
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    dist = ndi.distance_transform_edt(mask).astype(np.float32)
    dist = ndi.gaussian_filter(dist, 1.0)
    seeds = h_maxima(dist, h)
    markers, _ = ndi.label(seeds & mask)
    return watershed(-dist, markers, mask=mask)


def _split_blobs(img: np.ndarray, mask: np.ndarray, diameter: float) -> np.ndarray:
    """Watershed of a Laplacian-of-Gaussian blob response, one seed per blob peak.

    The scale-normalised LoG at ``sigma = diameter / (2 sqrt 2)`` peaks at the centre of
    every nucleus of about that diameter, even where two nuclei touch along a long edge
    and the distance transform has a single maximum. A connected component without any
    peak (a nucleus much smaller than expected) is seeded at its distance maximum.
    """
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    sigma = _BLOB_SIGMA * diameter / (2 * math.sqrt(2))
    blob = -ndi.gaussian_laplace(img, sigma) * np.float32(sigma**2)
    cc, n = ndi.label(mask)
    min_distance = max(2, int(_BLOB_MIN_DISTANCE * diameter))
    peaks = peak_local_max(blob, min_distance=min_distance, labels=cc, exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    seeded = np.zeros(n + 1, bool)
    seeded[cc[tuple(peaks.T)]] = True
    unseeded = np.flatnonzero(~seeded[1:]) + 1
    if len(unseeded):
        dist = ndi.distance_transform_edt(mask)
        for k, (y, x) in enumerate(_max_positions(dist, cc, unseeded)):
            markers[y, x] = len(peaks) + 1 + k
    return watershed(-blob, markers, mask=mask)


def _label_max(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Maximum of the non-negative ``values`` over each label ``1..n`` (0 for an empty label).

    ``ndi.maximum(values, labels, index)`` gives the same, but sorts every pixel by label
    first: about 50 ms on a 512 x 640 image against 1 ms here, a fifth of the batch's
    time per image.
    """
    out = np.zeros(n + 1, np.float64)
    np.maximum.at(out, labels.ravel(), values.ravel())
    return out[1:]


def _max_positions(values: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> list[tuple[int, int]]:
    """``(y, x)`` of the first maximum of ``values`` (C order) inside each label of ``ids``.

    The same as ``ndi.maximum_position(values, labels, ids)`` without its sort of the
    whole image: each label is searched inside its bounding box only.
    """
    boxes = ndi.find_objects(labels, max_label=int(ids.max()))
    out = []
    for i in ids:
        sl = boxes[int(i) - 1]
        inside = np.where(labels[sl] == i, values[sl], -np.inf)
        y, x = np.unravel_index(int(np.argmax(inside)), inside.shape)
        out.append((int(y) + sl[0].start, int(x) + sl[1].start))
    return out


def _filter_relabel(labels: np.ndarray, min_size: float, max_size: float, exclude_border: bool) -> np.ndarray:
    from skimage.segmentation import relabel_sequential

    n = int(labels.max())
    if n == 0:
        return labels.astype(np.uint32)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = (sizes >= min_size) & (sizes <= max_size)
    keep[0] = False
    if exclude_border:
        edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        keep[np.unique(edge)] = False
    out = np.where(keep[labels], labels, 0)
    out, _, _ = relabel_sequential(out)
    return out.astype(np.uint32)


# --------------------------------------------------------------------------- plane


def _segment_steps(plane: np.ndarray, params: ClassicalParams) -> Generator[str, None, np.ndarray]:
    """Segment one 2-D plane, yielding the name of each finished step."""
    empty = np.zeros(plane.shape, dtype=np.uint32)
    norm = _normalise(plane)
    if norm is None:
        return empty
    img, finite = norm
    invert = params.invert if params.invert is not None else _auto_invert(img, finite)
    if invert:
        img = 1.0 - img
        img[~finite] = 0.0
    d = float(params.diameter)
    if params.flatten_background:
        img = img - _background(img, d)
        yield "flattened background"
    sigma = params.effective_smoothing
    sm = ndi.gaussian_filter(img, sigma) if sigma > 0 else img
    if params.threshold is None:
        t_auto = _threshold(sm, params.threshold_method)
        t = max(
            params.threshold_scale * t_auto, _noise_floor(sm, sm > t_auto), _pixel_noise_floor(img, sm, sigma)
        )
    else:
        t = float(params.threshold)
    mask = (sm > t) & finite
    if params.fill_holes:
        mask = _fill_small_holes(mask, 0.5 * math.pi * (d / 2) ** 2)
    yield "thresholded"
    if not mask.any():
        return empty
    if params.split_touching:
        if params.seeds == "blob":
            labels = _split_blobs(img, mask, d)
        else:
            labels = _split(mask, params.effective_h)
        yield "split touching nuclei"
    else:
        labels, _ = ndi.label(mask)
    return _filter_relabel(
        labels, params.effective_min_size, params.effective_max_size, params.exclude_border
    )


def segment_plane(plane: np.ndarray, params: ClassicalParams | None = None) -> np.ndarray:
    """Segment one 2-D plane synchronously; ids 1..n, 0 = background, ``uint32``."""
    params = ClassicalParams() if params is None else params
    gen = _segment_steps(np.asarray(plane), params)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


# --------------------------------------------------------------------------- diameter


def estimate_diameter(image: np.ndarray) -> float:
    """Estimate the typical nucleus diameter of an image, in pixels.

    Two passes over the first plane (normalised, inverted if its objects are dark):

    1. A rough scale: light smoothing, Otsu threshold, connected objects. Each object's
       size is measured both as its equivalent-disk diameter and as the diameter of its
       largest inscribed disk (twice its largest distance to the background, which does
       not grow when nuclei touch); the two area-weighted medians (so that specks of
       debris do not count) are combined by their geometric mean.
    2. The background is subtracted at that scale, the smoothing adapted, and the image
       thresholded again; the result is the median equivalent-disk diameter of the
       objects at least a third of the first estimate across.

    Images where a large bright region (tissue, debris) dominates the histogram can
    fool it: check the value against the image.

    Parameters
    ----------
    image : numpy.ndarray
        Single-channel image, 2-D or with leading axes.

    Returns
    -------
    float
        Estimated diameter in pixels (at least 2); 30.0 (the default) when nothing can
        be measured (constant image, no objects).
    """
    arr = check_image(image, 2)
    plane = arr[(0,) * (arr.ndim - 2)] if arr.ndim > 2 else arr
    norm = _normalise(plane)
    if norm is None:
        return 30.0
    img, finite = norm
    if _auto_invert(img, finite):
        img = 1.0 - img
        img[~finite] = 0.0
    first = _objects(img, finite, None)
    if first is None:
        return 30.0
    areas, eq, ins = first
    d1 = max(2.0, math.sqrt(_weighted_median(eq, areas) * _weighted_median(ins, areas)))
    second = _objects(img, finite, d1)
    if second is None:
        return float(d1)
    _, eq, _ = second
    eq = eq[eq >= d1 / 3]
    if eq.size == 0:
        return float(d1)
    return float(max(2.0, np.median(eq)))


def _weighted_median(x: np.ndarray, w: np.ndarray) -> float:
    order = np.argsort(x)
    cum = np.cumsum(w[order])
    return float(x[order][np.searchsorted(cum, cum[-1] / 2)])


def _objects(
    img: np.ndarray, finite: np.ndarray, diameter: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Areas, equivalent and inscribed diameters of the Otsu objects (>= 12 px) of ``img``."""
    from skimage.filters import threshold_otsu

    if diameter is not None:
        img = img - _background(img, diameter)
    sigma = 1.0 if diameter is None else max(1.0, diameter / 15)
    sm = ndi.gaussian_filter(img, sigma)
    sample = sm.ravel()[:: max(1, sm.size // 500_000)]
    if not sample.max() > sample.min():
        return None
    mask = (sm > threshold_otsu(sample)) & finite
    mask = ndi.binary_fill_holes(mask)
    lab, n = ndi.label(mask)
    if n == 0:
        return None
    areas = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    dist = ndi.distance_transform_edt(mask)
    inscribed = 2 * _label_max(dist, lab, n)
    ok = areas >= 12
    if not ok.any():
        return None
    areas = areas[ok].astype(np.float64)
    return areas, 2 * np.sqrt(areas / np.pi), inscribed[ok]


# --------------------------------------------------------------------------- segmenter


def _stepped(
    gen: Generator[str, None, np.ndarray], params: ClassicalParams, title: str, where: str
) -> Generator[Progress, None, np.ndarray]:
    """Progress records for a generator of step messages that returns the labels."""
    steps = 2 + int(params.flatten_background) + int(params.split_touching)
    yield Progress(0, steps, title)
    k = 0
    while True:
        try:
            msg = next(gen)
        except StopIteration as stop:
            labels = stop.value
            break
        k += 1
        yield Progress(min(k, steps - 1), steps, f"{title}: {msg}")
    yield Progress(steps, steps, f"Segmented {int(labels.max())} nuclei{where}")
    return labels


class ClassicalSegmenter:
    """Threshold + seeded watershed nucleus segmenter (no weights, CPU only).

    See the module documentation for the pipeline and :class:`ClassicalParams` for the
    parameters. Leading axes (time, z) are segmented plane by plane with ids unique over
    the stack.
    """

    name: ClassVar[str] = "classical"
    display_name: ClassVar[str] = "Classical (threshold + watershed)"
    params_type: ClassVar[type] = ClassicalParams
    spatial_ndim: ClassVar[int] = 2

    estimate_diameter = staticmethod(estimate_diameter)

    @staticmethod
    def estimate_diameter_3d(volume: np.ndarray) -> float:
        """The in-plane nucleus diameter of a (Z, Y, X) volume (:func:`.classical3d.estimate_diameter_3d`)."""
        from .classical3d import estimate_diameter_3d

        return estimate_diameter_3d(volume)

    def segment(
        self, image: np.ndarray, params: ClassicalParams | None = None
    ) -> Generator[Progress, None, np.ndarray]:
        """Segment ``image`` (2-D, or 2-D planes behind leading axes).

        Yields
        ------
        Progress
            One record per plane; for a single plane also after flattening,
            thresholding and splitting.

        Returns
        -------
        numpy.ndarray
            ``uint32`` labels of ``image``'s shape; ids consecutive from 1 within each plane
            and unique over the stack.
        """
        params = ClassicalParams() if params is None else params
        if not isinstance(params, ClassicalParams):
            raise TypeError(f"Expected ClassicalParams, got {type(params).__name__}.")
        if params.mode == "3d":
            return (yield from self._segment_3d(image, params))
        arr = check_image(image, 2)
        if arr.ndim == 2:
            return (yield from _stepped(_segment_steps(arr, params), params, "Segmenting nuclei", ""))
        return (yield from planewise(arr, lambda p: segment_plane(p, params), 2, "Segmenting nuclei"))

    def _segment_3d(
        self, image: np.ndarray, params: ClassicalParams
    ) -> Generator[Progress, None, np.ndarray]:
        from .classical3d import segment_volume, segment_volume_steps

        arr = np.asarray(image)
        if arr.ndim < 3:
            raise SegmentationError(
                f"3-D segmentation needs a (Z, Y, X) stack, got a 2-D image of shape {arr.shape}; "
                "use mode='2d-per-plane' for single planes."
            )
        arr = check_image(arr, 3)
        if arr.ndim > 3:  # (T, Z, Y, X): volume by volume, ids unique over the series
            return (
                yield from planewise(arr, lambda v: segment_volume(v, params), 3, "Segmenting nuclei in 3-D")
            )
        return (
            yield from _stepped(
                segment_volume_steps(arr, params), params, "Segmenting nuclei in 3-D", " in 3-D"
            )
        )

    def spatial_ndim_for(self, params: ClassicalParams | None = None) -> int:
        """Axes segmented together with ``params``: 3 in ``mode="3d"``, else 2."""
        return 3 if params is not None and params.mode == "3d" else 2

    def blockwise_params(self, params: ClassicalParams | None, overview: np.ndarray) -> ClassicalParams:
        """``params`` for segmenting an image block by block, with image-wide choices fixed.

        Whether the objects are dark (``invert=None``) is decided once, on ``overview``
        (a subsampled copy of the whole image), so that a block of background or of
        unusually dense nuclei does not flip. Everything else stays per block, as for
        tiles processed one by one.
        """
        params = ClassicalParams() if params is None else params
        if params.invert is not None:
            return params
        norm = _normalise(np.asarray(overview))
        if norm is None:
            return params
        return dataclasses.replace(params, invert=_auto_invert(*norm))

    def device(self, params: ClassicalParams | None = None) -> str:
        """Always ``"CPU"``."""
        return "CPU"
