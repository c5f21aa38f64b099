"""Image -> labels -> per-cell features, as progress generators.

This is the one place where segmentation and measurement are chained; the command
line, the napari widgets and (later) batch runs all call it, so that every front end
produces the same tables with the same provenance.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import platform
import sys
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .channels import clean_channel_name
from .features import DEFAULT_FEATURE_GROUPS, FEATURE_GROUPS, FEATURE_SETS, iter_features
from .progress import Progress, sub_progress
from .segment import get_segmenter
from .segment.base import SegmentationError
from .segment.models import BACKENDS as MODEL_BACKENDS
from .segment.models import ModelNotFoundError, describe_model, resolve_model

__all__ = [
    "DIMENSIONS",
    "PLANE_PREFIX",
    "MeasureParams",
    "SegmentResult",
    "device_memory",
    "estimate_params_diameter",
    "iter_measure",
    "iter_segment",
    "iter_segment_and_measure",
    "model_provenance",
    "package_versions",
    "select_channel",
    "spatial_ndim_of",
    "voxel_spacing_of",
    "with_dimensions",
]

#: Prefix of the columns that index the plane (time point, z slice...) of a cell in
#: an image with extra leading axes: ``axis0``, ``axis1``...
PLANE_PREFIX = "axis"

#: Channel name of the segmented image when no other intensity channels are given, so
#: that every image of a run gets the same columns (``mean_intensity_image``...).
DEFAULT_CHANNEL = "image"


def channel_name(name: str) -> str:
    """A column-safe channel name: spaces and punctuation become ``_``."""
    return clean_channel_name(name, DEFAULT_CHANNEL)


@dataclass(frozen=True)
class MeasureParams:
    """What to measure for every cell.

    Parameters
    ----------
    groups : tuple of str
        Feature groups among ``shape``, ``zernike``, ``intensity``, ``texture``,
        ``neighbors`` (default: all but ``zernike``).
    texture_levels : int
        Grey levels of the co-occurrence matrices (texture features of the default
        set; the CellProfiler set uses CellProfiler's 256).
    feature_set : str
        ``"default"`` (this package's fast features) or ``"cellprofiler"``
        (CellProfiler 4's definitions and column names, with its defaults: texture
        at scale 3 with 256 grey levels, neighbours adjacent and within 5 pixels; see
        :mod:`napari_phenotyper.core.cellprofiler`).
    """

    groups: tuple[str, ...] = DEFAULT_FEATURE_GROUPS
    texture_levels: int = 32
    feature_set: str = "default"

    def __post_init__(self) -> None:
        unknown = [g for g in self.groups if g not in FEATURE_GROUPS]
        if unknown:
            raise ValueError(f"Unknown feature group(s) {unknown}; choose among {', '.join(FEATURE_GROUPS)}.")
        if not 2 <= self.texture_levels <= 256:
            raise ValueError("texture_levels must be between 2 and 256.")
        if self.feature_set not in FEATURE_SETS:
            raise ValueError(f"Unknown feature set {self.feature_set!r}; choose {' or '.join(FEATURE_SETS)}.")


@dataclass
class SegmentResult:
    """Labels, the per-cell table and where they came from."""

    labels: np.ndarray
    features: pd.DataFrame
    provenance: dict[str, Any] = field(default_factory=dict)


def package_versions(
    names: Sequence[str] = ("napari-phenotyper", "numpy", "scikit-image", "scipy", "pandas"),
) -> dict[str, str]:
    """Installed versions of the packages that shape results (for provenance)."""
    out = {"python": platform.python_version()}
    for name in names:
        out[name] = _version(name) or "not installed"
    return out


@functools.lru_cache(maxsize=64)
def _version(name: str) -> str | None:
    """Installed version of a distribution (looked up once per process: a few ms each)."""
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return None


#: Libraries whose versions shape a deep-learning backend's results (the first of a
#: tuple that is installed counts: TensorFlow is packaged under several names).
_BACKEND_PACKAGES: dict[str, tuple[tuple[str, ...], ...]] = {
    "cellpose": (("cellpose",), ("torch",)),
    "stardist": (
        ("stardist",),
        ("csbdeep",),
        ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tensorflow-intel"),
        ("keras",),
    ),
}

#: Weights files larger than this are not hashed for provenance (a Cellpose-SAM file is
#: 1.2 GB: seconds to hash); their size and modification time identify them instead.
HASH_LIMIT_BYTES = 512 * 1024**2


def _installed_versions(groups: Sequence[tuple[str, ...]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for names in groups:
        for name in names:
            version = _version(name)
            if version is not None:
                out[name] = version
                break
    return out


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file, computed once per process and file version (size, mtime)."""
    del size, mtime_ns  # cache key only
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _weights_file(path: str | os.PathLike[str]) -> Path | None:
    """The weights file a model path stands for: the file itself, or a StarDist folder's ``weights_best.h5``."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        for name in ("weights_best.h5", "weights_last.h5"):
            if (p / name).is_file():
                return p / name
        found = sorted(p.glob("*.h5"))
        if found:
            return found[0]
    return None


def model_provenance(backend: str, params: Any) -> dict[str, Any] | None:
    """Which model a deep-learning backend used: name, kind, path, SHA-256, versions.

    Based on :func:`~.segment.models.describe_model` of the resolved model, plus
    ``weights`` (the file loaded), ``sha256`` of it (from the model's ``model.json``
    when it records one, else hashed once per process and file version; ``None`` for
    files over :data:`HASH_LIMIT_BYTES`), ``size_bytes``, ``versions`` (the backend's
    libraries now) and ``trained_with`` (library versions a fine-tuned model was
    trained with). Nothing is downloaded or loaded.

    Returns
    -------
    dict or None
        ``None`` for a backend without models (the classical one) or parameters
        without a ``model`` field.
    """
    if backend not in MODEL_BACKENDS or not hasattr(params, "model"):
        return None
    name = getattr(params, "model", None) or "default"
    out: dict[str, Any]
    try:
        info = resolve_model(backend, str(name), download=False)
    except (ModelNotFoundError, ValueError) as exc:
        return {"backend": backend, "name": str(name), "available": False, "error": str(exc)}
    out = describe_model(info)
    meta = info.metadata or {}
    weights = _weights_file(info.path) if info.path is not None else None
    sha = meta.get("weights_sha256") if isinstance(meta.get("weights_sha256"), str) else None
    if weights is not None:
        out["weights"] = str(weights)
        try:
            st = os.stat(weights)
        except OSError:
            st = None
        if st is not None:
            out["size_bytes"] = int(st.st_size)
            out["modified"] = datetime.fromtimestamp(st.st_mtime, UTC).isoformat(timespec="seconds")
            if sha is None and st.st_size <= HASH_LIMIT_BYTES:
                sha = _file_sha256(str(weights), int(st.st_size), int(st.st_mtime_ns))
    out["sha256"] = sha
    out["versions"] = _installed_versions(_BACKEND_PACKAGES.get(backend, ()))
    if isinstance(meta.get("versions"), Mapping):
        out["trained_with"] = dict(meta["versions"])
    if info.kind == "finetuned" and "cellpose_version" in meta:
        out["trained_with"] = {**out.get("trained_with", {}), "cellpose": meta["cellpose_version"]}
    return out


def device_memory() -> str | None:
    """Memory of the GPU that ran, as the already-loaded deep-learning library reports it.

    torch (CUDA): free and total memory; TensorFlow: memory in use and its peak. Never
    imports a library, and ``None`` on a CPU, or when nothing is reported.
    """
    gib = 1024**3
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                free, total = torch.cuda.mem_get_info()
                return f"{free / gib:.1f} of {total / gib:.1f} GiB GPU memory free"
        except Exception:  # optional detail: a broken CUDA set-up must not fail the run
            return None
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        try:
            gpus = tf.config.list_logical_devices("GPU")
            if gpus:
                mem = tf.config.experimental.get_memory_info(gpus[0].name)
                return f"{mem['current'] / gib:.1f} GiB GPU memory in use (peak {mem['peak'] / gib:.1f} GiB)"
        except Exception:  # optional detail (not every TensorFlow build reports it)
            return None
    return None


def select_channel(
    image: np.ndarray, channel_axis: int | None = None, channel: int | None = None
) -> np.ndarray:
    """Return a single-channel view of ``image``.

    Parameters
    ----------
    image : ndarray
        Image data; RGB(A) images have their channels on the last axis.
    channel_axis : int, optional
        Axis holding the channels. ``None`` means the image is single-channel.
    channel : int, optional
        Which channel to keep. ``None`` with a channel axis averages the channels
        (luminance for RGB).

    Raises
    ------
    SegmentationError
        When ``channel`` is out of range.
    """
    image = np.asarray(image)
    if channel_axis is None:
        return image
    axis = channel_axis % image.ndim
    n = image.shape[axis]
    if channel is None:
        if n in (3, 4) and axis == image.ndim - 1:
            rgb = image[..., :3].astype(np.float32)
            return rgb @ np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
        return image.astype(np.float32).mean(axis=axis)
    if not 0 <= channel < n:
        raise SegmentationError(f"Channel {channel} does not exist: this image has {n} channels (0-{n - 1}).")
    return np.take(image, channel, axis=axis)


def spatial_ndim_of(seg: Any, params: Any) -> int:
    """How many trailing axes ``seg`` segments together with ``params`` (3 for a volume).

    The segmenter's ``spatial_ndim_for(params)`` where it has one (the classical one in
    ``mode="3d"``, Cellpose with ``do_3D`` or stitching, a 3-D StarDist model), else its
    ``spatial_ndim``.
    """
    fn = getattr(seg, "spatial_ndim_for", None)
    return int(fn(params)) if fn is not None else int(seg.spatial_ndim)


def voxel_spacing_of(params: Any) -> tuple[float, ...] | None:
    """The (z, y, x) voxel size ``params`` segment with: ``spacing`` (classical), or
    ``(anisotropy, 1, 1)`` (Cellpose); ``None`` when they say nothing."""
    spacing = getattr(params, "spacing", None)
    if spacing is not None:
        return tuple(float(s) for s in spacing)
    anisotropy = getattr(params, "anisotropy", None)
    if anisotropy is not None:
        return (float(anisotropy), 1.0, 1.0)
    return None


#: How a stack is segmented: each 2-D plane on its own, or the last three axes as volumes.
DIMENSIONS = ("2d-per-plane", "3d")


def with_dimensions(params: Any, mode: str, spacing: Sequence[float] | None = None) -> Any:
    """``params`` set up to segment each plane (``"2d-per-plane"``) or volumes (``"3d"``).

    One switch for every backend (the Segment dock's and the command line's): the
    classical segmenter gets ``mode`` (and ``spacing``, the (z, y, x) voxel size, when
    given); Cellpose gets ``do_3D`` and ``anisotropy = spacing[0] / spacing[-1]`` (its
    2-D-then-stitch mode, ``stitch_threshold > 0``, is kept as the 3-D choice when it is
    set); per plane it gets neither. Parameters of other backends come back unchanged
    (StarDist's dimensionality is its model's).
    """
    if mode not in DIMENSIONS:
        raise ValueError(f"Choose the dimensions among {', '.join(DIMENSIONS)}, not {mode!r}.")
    fields = {f.name for f in dataclasses.fields(params)}
    changes: dict[str, Any] = {}
    if "mode" in fields:
        changes["mode"] = mode
        if mode == "3d" and spacing is not None and "spacing" in fields:
            changes["spacing"] = tuple(float(s) for s in spacing)
    elif "do_3D" in fields:
        if mode == "3d":
            changes["do_3D"] = not getattr(params, "stitch_threshold", 0) > 0
            if spacing is not None and "anisotropy" in fields:
                changes["anisotropy"] = float(spacing[0]) / float(spacing[-1])
        else:
            changes["do_3D"] = False
            if "stitch_threshold" in fields:
                changes["stitch_threshold"] = 0.0
    return dataclasses.replace(params, **changes) if changes else params


def estimate_params_diameter(segmenter: str, params: Any, image: np.ndarray) -> Any:
    """``params`` with its ``diameter`` estimated on ``image`` (its first plane for a stack,
    or, where the segmenter works in 3-D and has ``estimate_diameter_3d``, its first volume).

    Unchanged when the segmenter has no ``estimate_diameter`` or no ``diameter`` parameter.
    """
    seg = get_segmenter(segmenter)
    params = params if params is not None else seg.params_type()
    fields = {f.name for f in dataclasses.fields(params)}
    if "diameter" not in fields or not hasattr(seg, "estimate_diameter"):
        return params
    nd = spatial_ndim_of(seg, params)
    plane = np.asarray(image)
    if nd == 3 and plane.ndim >= 3 and hasattr(seg, "estimate_diameter_3d"):
        while plane.ndim > 3:
            plane = plane[0]
        return dataclasses.replace(params, diameter=float(seg.estimate_diameter_3d(plane)))
    while plane.ndim > seg.spatial_ndim:
        plane = plane[0]
    return dataclasses.replace(params, diameter=float(seg.estimate_diameter(plane)))


def iter_segment(
    image: np.ndarray, segmenter: str = "classical", params: Any = None
) -> Generator[Progress, None, tuple[np.ndarray, dict[str, Any]]]:
    """Segment a single-channel image with a registered segmenter.

    Returns the uint32 labels and a provenance dictionary (backend, parameters,
    device, versions, timing).
    """
    seg = get_segmenter(segmenter)
    if params is None:
        params = seg.params_type()
    elif not isinstance(params, seg.params_type):
        raise TypeError(
            f"Parameters for {segmenter!r} must be {seg.params_type.__name__}, got {type(params).__name__}."
        )
    t0 = time.perf_counter()
    labels = yield from seg.segment(image, params)
    provenance = {
        "backend": seg.name,
        "segmenter": seg.display_name,
        "params": dataclasses.asdict(params),
        "device": seg.device(params),
        "segment_seconds": round(time.perf_counter() - t0, 3),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": package_versions(),
        # 3: the labels are volumes, measured in 3-D (core/features3d.py)
        "spatial_ndim": spatial_ndim_of(seg, params) if np.ndim(labels) >= 3 else 2,
    }
    if provenance["spatial_ndim"] == 3:
        provenance["voxel_spacing"] = list(voxel_spacing_of(params) or (1.0, 1.0, 1.0))
    model_info = model_provenance(seg.name, params)
    if model_info is not None:
        provenance["model_info"] = model_info
    memory = device_memory()
    if memory:
        provenance["device_memory"] = memory
    return labels, provenance


def iter_segment_auto(
    image: np.ndarray, segmenter: str = "classical", params: Any = None, auto_diameter: bool = False
) -> Generator[Progress, None, tuple[np.ndarray, dict[str, Any]]]:
    """:func:`iter_segment`, after estimating the diameter on ``image`` when asked.

    One call does both so that a backend running in the engine process estimates and
    segments there, with its model loaded once.
    """
    if auto_diameter:
        yield Progress(0, 1, "Estimating the object diameter")
        params = estimate_params_diameter(segmenter, params, image)
    return (yield from iter_segment(image, segmenter, params))


def _channel_dict(intensities: np.ndarray | Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    if intensities is None:
        return {}
    if isinstance(intensities, Mapping):
        out: dict[str, np.ndarray] = {}
        for k, v in intensities.items():
            name = channel_name(k)
            if name in out:
                raise ValueError(f"Two intensity channels are both named {name!r}; rename one of the layers.")
            out[name] = np.asarray(v)
        return out
    return {DEFAULT_CHANNEL: np.asarray(intensities)}


def iter_measure(
    labels: np.ndarray,
    intensities: np.ndarray | Mapping[str, np.ndarray] | None = None,
    params: MeasureParams | None = None,
    spatial_ndim: int = 2,
    spacing: Sequence[float] | None = None,
    texture_range: Mapping[str, tuple[float, float]] | None = None,
) -> Generator[Progress, None, pd.DataFrame]:
    """Measure every cell of a label image, plane by plane over extra leading axes.

    For labels with leading axes (time, z) each plane is measured in 2D, and the
    table gets ``axis0``, ``axis1``... columns after ``label`` saying where the cell is.
    With ``spatial_ndim=3`` the last three axes are volumes measured in 3-D
    (:mod:`.features3d`, with the voxel ``spacing``; Zernike moments are 2-D only and
    left out; the CellProfiler set is 2-D only), volume by volume over leading axes.

    Parameters
    ----------
    labels : ndarray of int
        Label image, 0 = background.
    intensities : ndarray or mapping of name -> ndarray, optional
        Intensity channels, each the same shape as ``labels``.
    params : MeasureParams, optional
        What to measure (default: everything).
    spatial_ndim : int, optional
        2 (planes) or 3 (volumes).
    spacing : sequence of float, optional
        Voxel size (z, y, x) of 3-D volumes.
    texture_range : mapping of str to (float, float), optional
        Channel -> the intensity range its texture is quantised on (default: the
        channel's own; the default feature set only, CellProfiler's levels are fixed).

    Returns
    -------
    pandas.DataFrame
        One row per label, ``label`` first.
    """
    params = params or MeasureParams()
    labels = np.asarray(labels)
    channels = _channel_dict(intensities)
    for name, img in channels.items():
        if img.shape != labels.shape:
            raise ValueError(
                f"Intensity channel {name!r} has shape {img.shape} but the labels have shape "
                f"{labels.shape}; measure on an image of the same size as the segmentation."
            )
    measure: Callable[..., Generator[Progress, None, pd.DataFrame]]
    if spatial_ndim == 3:
        from .features3d import iter_features_3d

        if params.feature_set != "default":
            raise ValueError(
                "The CellProfiler feature set is 2-D only; measure 3-D labels with the default set."
            )
        measure = iter_features_3d
        kwargs: dict[str, Any] = {
            "groups": tuple(g for g in params.groups if g != "zernike"),
            "texture_levels": params.texture_levels,
            "spacing": spacing,
        }
    elif params.feature_set == "cellprofiler":
        from .cellprofiler import iter_cellprofiler_features

        measure = iter_cellprofiler_features
        kwargs = {"groups": params.groups, "positions": True}
    else:
        measure = iter_features
        kwargs = {"groups": params.groups, "texture_levels": params.texture_levels}
        if texture_range is not None:
            kwargs["texture_range"] = {channel_name(k): v for k, v in texture_range.items()}
    if labels.ndim == spatial_ndim:
        return (yield from measure(labels, channels or None, **kwargs))
    lead = labels.shape[:-spatial_ndim]
    n = int(np.prod(lead))
    tables = []
    for i, idx in enumerate(np.ndindex(*lead)):
        plane_channels = {k: v[idx] for k, v in channels.items()}
        df = yield from sub_progress(
            measure(labels[idx], plane_channels or None, **kwargs), i, n, f"Plane {i + 1}/{n}: "
        )
        for ax, value in reversed(list(enumerate(idx))):
            df.insert(1, f"{PLANE_PREFIX}{ax}", np.full(len(df), value, dtype=np.int64))
        tables.append(df)
    if not tables:  # a zero-length leading axis: an empty table with the usual columns and dtypes
        one = (1,) * spatial_ndim
        empty = yield from measure(
            np.zeros(one, np.uint32), {k: np.zeros(one) for k in channels} or None, **kwargs
        )
        for ax in reversed(range(len(lead))):
            empty.insert(1, f"{PLANE_PREFIX}{ax}", np.zeros(0, dtype=np.int64))
        return empty
    out = pd.concat(tables, ignore_index=True)
    return out.sort_values("label", kind="stable").reset_index(drop=True)


def iter_segment_and_measure(
    image: np.ndarray,
    segmenter: str = "classical",
    params: Any = None,
    *,
    channel_axis: int | None = None,
    channel: int | None = None,
    intensities: np.ndarray | Mapping[str, np.ndarray] | None = None,
    measure: MeasureParams | None = None,
    auto_diameter: bool = False,
    segment_step: Callable[..., Generator[Progress, None, tuple[np.ndarray, dict[str, Any]]]] | None = None,
) -> Generator[Progress, None, SegmentResult]:
    """Segment an image and measure its cells: the whole single-image pipeline.

    Parameters
    ----------
    image : ndarray
        The image to segment (extra leading axes are segmented plane by plane).
    segmenter : str
        Registered segmenter name.
    params : dataclass, optional
        The segmenter's parameters (its defaults when omitted).
    channel_axis, channel : int, optional
        Which channel of a multi-channel image to segment (see :func:`select_channel`).
    intensities : ndarray or mapping, optional
        Channels to measure intensities in; defaults to the segmented channel.
    measure : MeasureParams, optional
        What to measure.
    auto_diameter : bool
        Estimate the object diameter on the image first.
    segment_step : callable, optional
        Runs :func:`iter_segment_auto`'s work: called as ``segment_step(plane, segmenter,
        params, auto_diameter)``, a generator returning ``(labels, provenance)``. By
        default it runs here; the napari widget passes one that runs deep-learning
        backends in the engine process.
    """
    plane = select_channel(image, channel_axis, channel)
    step = segment_step or iter_segment_auto
    labels, provenance = yield from sub_progress(
        step(plane, segmenter, params, auto_diameter), 0, 2, "Segment: "
    )
    if intensities is None:
        intensities = {DEFAULT_CHANNEL: plane}
    t0 = time.perf_counter()
    features = yield from sub_progress(
        iter_measure(
            labels,
            intensities,
            measure,
            spatial_ndim=int(provenance.get("spatial_ndim", 2)),
            spacing=provenance.get("voxel_spacing"),
        ),
        1,
        2,
        "Measure: ",
    )
    provenance["measure"] = dataclasses.asdict(measure or MeasureParams())
    provenance["measure_seconds"] = round(time.perf_counter() - t0, 3)
    provenance["channel_axis"] = channel_axis
    provenance["channel"] = channel
    provenance["n_cells"] = len(features)
    yield Progress(2000, 2000, f"Done: {len(features)} cells")
    return SegmentResult(labels, features, provenance)
