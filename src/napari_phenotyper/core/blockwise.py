"""Segment and measure images larger than memory, block by block.

The image is cut into a grid of ``block_size`` square *cores*; each core is segmented
with an ``overlap`` margin of context around it, by any registered segmenter (they all
take a 2-D numpy plane, see :mod:`.segment.base`). The stitching rule:

* an object belongs to the block whose core holds its centroid; cores tile the image, so
  exactly one block keeps any object that all blocks see alike;
* two blocks may see an object that straddles their border a pixel differently, each
  putting its centroid on the other's side: so a block also *rescues* an object whose
  centroid lies within a few pixels outside its core, in the core of a block segmented
  before it, unless that block already wrote it (see below). No object is lost that way;
* a kept object is written whole (its pixels in the margin too) with a new, globally
  unique id; its centroid lies in the core and, as long as it is no larger than the
  margin, it lies inside the block's crop without touching its edge, so it is not cut;
* an object whose centroid lies in the core but which touches the crop's edge is larger
  than the margin: it is kept (cut) and counted as *oversized*; raise ``overlap`` to
  stitch it whole. Where two blocks segment the same object slightly differently and
  both keep it, the later one overlaps pixels already written: an object more than half
  of whose pixels are taken is dropped (counted as a *duplicate*), otherwise it only
  gets the free pixels. No pixel is ever written twice.

Features are measured on the stitched labels, per block, for the objects that block
kept: once every neighbouring block is segmented (nothing can change near them any
more) the labels and image around them are read back and measured with
:func:`.pipeline.iter_measure`, the centroid and bounding-box columns shifted to image
coordinates, and the rows appended to a table on disk. Texture is quantised on the
whole image's intensity range (one reading pass first), so every feature equals the
whole-image measurement. Memory is bounded by the block size: one block and its margin
are held at a time, whatever the image's size.

``image`` is anything sliceable with a ``shape``: a numpy array, a memory map, a Zarr
or Dask array, or :class:`~napari_phenotyper.io.ome_zarr.PlaneView` of an OME-Zarr
image; 2-D, or 2-D with a channel axis (``channel_axis``, then ``channel`` picks one or
they are averaged, as :func:`.pipeline.select_channel`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from .pipeline import (
    DEFAULT_CHANNEL,
    MeasureParams,
    iter_measure,
    model_provenance,
    package_versions,
    select_channel,
)
from .progress import Progress
from .segment import get_segmenter
from .segment.base import SegmentationError, Segmenter, as_label_image

__all__ = [
    "BLOCKWISE_ABOVE",
    "DEFAULT_BLOCK_SIZE",
    "BlockGrid",
    "BlockwiseResult",
    "centre_region",
    "default_overlap",
    "iter_segment_blockwise",
]

#: Side of a block's core (pixels): as fast per pixel as any size on the classical
#: segmenter, a few hundred MB per block.
DEFAULT_BLOCK_SIZE = 2048
#: Images with more pixels than this are segmented block by block by the command line and
#: the batch (8192 x 8192: a 16-bit plane of 128 MB, a few GB while segmenting).
BLOCKWISE_ABOVE = 8192 * 8192
#: Margin when the parameters give no diameter (pixels).
FALLBACK_OVERLAP = 64
#: Pixels of context kept around a block's objects when measuring them (perimeter,
#: texture pairs and touching neighbours need one).
_HALO = 2
#: Largest overview (pixels per side) sampled in the first pass for image-wide decisions.
_OVERVIEW = 2048

# Coordinate columns that are shifted from block to image coordinates.
_Y_COLUMNS = ("centroid_y", "bbox_min_y", "bbox_max_y")
_X_COLUMNS = ("centroid_x", "bbox_min_x", "bbox_max_x")


def centre_region(plane: Any, channel_axis: int | None = None, size: int = 2048) -> np.ndarray:
    """The central ``size x size`` region of a lazy 2-D plane (one channel: the mean of
    several), read alone: where a segmenter's diameter is estimated before going block-wise."""
    from .pipeline import select_channel

    index: list[slice] = [slice(None)] * len(plane.shape)
    for a in (a for a in range(len(plane.shape)) if a != channel_axis):
        start = max(0, (int(plane.shape[a]) - size) // 2)
        index[a] = slice(start, start + size)
    return select_channel(np.asarray(plane[tuple(index)]), channel_axis, None)


def default_overlap(params: Any) -> int:
    """The margin for ``params``: twice the expected object diameter (at least 16 px).

    Parameters without a ``diameter`` (or with ``None``) get :data:`FALLBACK_OVERLAP`.
    """
    d = getattr(params, "diameter", None)
    if d is None or not isinstance(d, (int, float)) or not math.isfinite(d) or d <= 0:
        return FALLBACK_OVERLAP
    return max(16, math.ceil(2 * float(d)))


@dataclass(frozen=True)
class BlockGrid:
    """Blocks of an image: square cores of ``block`` pixels and their ``overlap`` margins.

    Parameters
    ----------
    shape : (int, int)
        Image height and width.
    block : int
        Side of a core (the last row and column of blocks may be smaller).
    overlap : int
        Margin around each core that is segmented with it (clipped at the image border).
    """

    shape: tuple[int, int]
    block: int
    overlap: int

    def __post_init__(self) -> None:
        if self.block < 16:
            raise ValueError(f"block_size must be at least 16 pixels, got {self.block}.")
        if self.overlap < 0:
            raise ValueError(f"overlap must be >= 0, got {self.overlap}.")
        if 2 * self.overlap + 2 * _HALO > self.block:
            raise ValueError(
                f"overlap ({self.overlap} px) must be at most about half the block size ({self.block} px); "
                f"choose a block size of at least {2 * self.overlap + 2 * _HALO}."
            )

    @property
    def rows(self) -> int:
        return max(1, math.ceil(self.shape[0] / self.block))

    @property
    def cols(self) -> int:
        return max(1, math.ceil(self.shape[1] / self.block))

    def __len__(self) -> int:
        return self.rows * self.cols

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for r in range(self.rows):
            for c in range(self.cols):
                yield r, c

    def core(self, r: int, c: int) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` of block ``(r, c)``'s core."""
        b = self.block
        return r * b, min(self.shape[0], (r + 1) * b), c * b, min(self.shape[1], (c + 1) * b)

    def crop(self, r: int, c: int) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` of the core with its margin, inside the image."""
        y0, y1, x0, x1 = self.core(r, c)
        m = self.overlap
        return max(0, y0 - m), min(self.shape[0], y1 + m), max(0, x0 - m), min(self.shape[1], x1 + m)

    def neighbours_done(self, r: int, c: int, done: set[tuple[int, int]]) -> bool:
        """Whether every block next to ``(r, c)`` (and itself) is segmented."""
        return all(
            (rr, cc) in done
            for rr in range(max(0, r - 1), min(self.rows, r + 2))
            for cc in range(max(0, c - 1), min(self.cols, c + 2))
        )


@dataclass
class BlockwiseResult:
    """What :func:`iter_segment_blockwise` returns.

    Attributes
    ----------
    labels : array-like
        The stitched ``uint32`` labels (the array written to: numpy or Zarr).
    features : pandas.DataFrame or None
        One row per object, when no ``table_out`` was given (else ``None``).
    table_path : pathlib.Path or None
        The table written by streaming.
    n_objects : int
        Objects in the labels (ids ``1..n_objects``).
    provenance : dict
        Backend, parameters, device, versions, timings, and the block-wise figures:
        ``block_size``, ``overlap``, ``n_blocks``, ``oversized`` (objects larger than
        the margin, kept cut), ``duplicates`` (objects two blocks kept, dropped once),
        ``rescued`` (objects kept by the block next to the one their centroid is in,
        which had seen them on this side of the border),
        ``conflict_pixels`` (pixels a later block's object could not take).
    """

    labels: Any
    features: pd.DataFrame | None
    table_path: Path | None
    n_objects: int
    provenance: dict[str, Any] = field(default_factory=dict)


class _Reader:
    """Reads a region of the image as a 2-D numpy plane (one channel)."""

    def __init__(self, image: Any, channel_axis: int | None, channel: int | None):
        shape = tuple(int(n) for n in image.shape)
        ndim = len(shape)
        if channel_axis is not None:
            channel_axis %= ndim
        if ndim == 2 and channel_axis is None:
            self.spatial = (0, 1)
        elif ndim == 3 and channel_axis is not None:
            self.spatial = tuple(a for a in range(3) if a != channel_axis)  # type: ignore[assignment]
        else:
            raise SegmentationError(
                f"Block-wise segmentation takes a 2-D image, or 2-D with a channel axis; got shape "
                f"{shape}" + ("" if channel_axis is None else f" with channel axis {channel_axis}") + "."
            )
        self.image, self.channel_axis, self.channel = image, channel_axis, channel
        self.shape = (shape[self.spatial[0]], shape[self.spatial[1]])
        if (
            channel_axis is not None
            and channel is not None
            and not -shape[channel_axis] <= channel < shape[channel_axis]
        ):
            raise SegmentationError(
                f"Channel {channel} does not exist: this image has {shape[channel_axis]} channels."
            )

    def __call__(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        index: list[slice] = [slice(None)] * len(self.image.shape)
        index[self.spatial[0]] = slice(y0, y1)
        index[self.spatial[1]] = slice(x0, x1)
        block = np.asarray(self.image[tuple(index)])
        return select_channel(block, self.channel_axis, self.channel)


def _prepass(
    read: _Reader, grid: BlockGrid, step: int, total: int
) -> Generator[Progress, None, tuple[tuple[float, float] | None, np.ndarray]]:
    """One reading pass: the image's finite range and a strided overview."""
    h, w = grid.shape
    s = max(1, math.ceil(max(h, w) / _OVERVIEW))
    overview: np.ndarray | None = None
    lo, hi = math.inf, -math.inf
    n = len(grid)
    for i, (r, c) in enumerate(grid):
        yield Progress(step * 1000 + i * 1000 // n, total * 1000, f"Reading the image: block {i + 1}/{n}")
        y0, y1, x0, x1 = grid.core(r, c)
        plane = read(y0, y1, x0, x1)
        finite = plane[np.isfinite(plane)] if plane.dtype.kind == "f" else plane
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
        sub = plane[(-y0) % s :: s, (-x0) % s :: s]
        if overview is None:
            overview = np.zeros((math.ceil(h / s), math.ceil(w / s)), plane.dtype)
        oy, ox = -(-y0 // s), -(-x0 // s)
        overview[oy : oy + sub.shape[0], ox : ox + sub.shape[1]] = sub
    assert overview is not None
    return ((lo, hi) if lo <= hi else None), overview


def _objects_to_keep(
    lab: np.ndarray,
    grid: BlockGrid,
    block: tuple[int, int],
    done: set[tuple[int, int]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per block label: kept (centroid in the core), rescued, oversized, area.

    *Rescued*: the centroid lies just outside the core (within :func:`_tolerance`), in the
    core of a block already segmented: that block may have seen the same object's centroid
    on this side of the border (two segmentations of a block-straddling object differ by a
    pixel), so this block keeps it too unless it is already written. *Oversized*: kept or
    rescued but touching the crop's edge inside the image (larger than the margin).
    """
    n = int(lab.max())
    y0, y1, x0, x1 = grid.crop(*block)
    core = grid.core(*block)
    flat = lab.ravel()
    nz = np.flatnonzero(flat)
    ids = flat[nz]
    w = lab.shape[1]
    area = np.bincount(ids, minlength=n + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = np.bincount(ids, weights=nz // w, minlength=n + 1) / area + y0
        cx = np.bincount(ids, weights=nz % w, minlength=n + 1) / area + x0
    present = area > 0
    present[0] = False
    fy, fx = np.floor(np.where(present, cy, -1)), np.floor(np.where(present, cx, -1))
    keep = present & (fy >= core[0]) & (fy < core[1]) & (fx >= core[2]) & (fx < core[3])
    tol = _tolerance(grid.overlap)
    near = (
        present
        & ~keep
        & (fy >= core[0] - tol)
        & (fy < core[1] + tol)
        & (fx >= core[2] - tol)
        & (fx < core[3] + tol)
    )
    rescue = np.zeros(n + 1, bool)
    for k in np.flatnonzero(near):
        owner = (
            min(grid.rows - 1, max(0, int(fy[k]) // grid.block)),
            min(grid.cols - 1, max(0, int(fx[k]) // grid.block)),
        )
        rescue[k] = owner in done
    edges = []  # only the crop's edges inside the image cut objects
    if y0 > 0:
        edges.append(lab[0])
    if y1 < grid.shape[0]:
        edges.append(lab[-1])
    if x0 > 0:
        edges.append(lab[:, 0])
    if x1 < grid.shape[1]:
        edges.append(lab[:, -1])
    touch = np.zeros(n + 1, bool)
    if edges:
        touch[np.unique(np.concatenate(edges))] = True
    touch[0] = False
    return keep, rescue, (keep | rescue) & touch, area


def _tolerance(overlap: int) -> int:
    """How far outside its core (pixels) a block still rescues an object's centroid."""
    return max(2, overlap // 10)


def _bbox(lab: np.ndarray, keep: np.ndarray) -> tuple[int, int, int, int] | None:
    """Union of the bounding boxes of the kept labels (block coordinates)."""
    boxes = ndi.find_objects(lab)
    ys0, ys1, xs0, xs1 = [], [], [], []
    for k in np.flatnonzero(keep):
        sl = boxes[k - 1]
        if sl is None:
            continue
        ys0.append(sl[0].start)
        ys1.append(sl[0].stop)
        xs0.append(sl[1].start)
        xs1.append(sl[1].stop)
    if not ys0:
        return None
    return min(ys0), max(ys1), min(xs0), max(xs1)


@dataclass
class _Pending:
    """A segmented block whose objects wait to be measured."""

    first: int  # ids first..last
    last: int
    region: tuple[int, int, int, int]  # image coordinates of their bounding box


def _check_labels_out(labels_out: Any, shape: tuple[int, int]) -> None:
    got = tuple(int(n) for n in labels_out.shape)
    if got != shape:
        raise ValueError(f"labels_out has shape {got}, the image's plane is {shape}.")
    if np.dtype(labels_out.dtype) != np.uint32:
        raise ValueError(f"labels_out must be uint32, got {labels_out.dtype}.")


def iter_segment_blockwise(
    image: Any,
    segmenter: str | Segmenter = "classical",
    params: Any = None,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    overlap: int | None = None,
    channel_axis: int | None = None,
    channel: int | None = None,
    labels_out: Any = None,
    measure: MeasureParams | None = None,
    features: bool = True,
    table_out: str | os.PathLike[str] | None = None,
    image_name: str | None = None,
    pyramid: bool = True,
) -> Generator[Progress, None, BlockwiseResult]:
    """Segment an image block by block, stitch the labels and measure every object.

    Parameters
    ----------
    image : array-like
        2-D, or 2-D with a channel axis; only one block is read at a time.
    segmenter : str or Segmenter
        Registered segmenter name, or an object following the
        :class:`~.segment.base.Segmenter` protocol.
    params : dataclass, optional
        Its parameters (defaults when omitted). A segmenter may fix image-wide choices
        first from an overview of the whole image (``blockwise_params``, e.g. the
        classical segmenter decides once whether nuclei are dark).
    block_size : int
        Side of a block's core in pixels.
    overlap : int, optional
        Margin segmented around each core; must exceed the largest object's size.
        Default :func:`default_overlap` (twice the diameter).
    channel_axis, channel : int, optional
        Channel axis of ``image`` and the channel to segment (``None``: their mean).
    labels_out : path-like or array-like, optional
        Where the labels go: a path writes an OME-Zarr label image there (atomically,
        with a multiscale pyramid when ``pyramid``); an array of the plane's shape and
        ``uint32`` dtype (numpy, Zarr, filled with zeros) is written into. Default: a
        numpy array in memory (small images, tests).
    measure : MeasureParams, optional
        What to measure (default: the default feature groups).
    features : bool
        Measure the objects (default True).
    table_out : path-like, optional
        ``.csv`` or ``.parquet`` file the per-object table is streamed to (one block's
        rows at a time); without it the table is returned in memory.
    image_name : str, optional
        Written as the table file's ``image`` column.
    pyramid : bool
        With a ``labels_out`` path, add the downsampled levels.

    Yields
    ------
    Progress
        While reading the image (when texture or image-wide choices need it), then for
        every block, within it from the segmenter; cancelling between two records leaves
        no output behind (a ``labels_out`` path or ``table_out`` is written only at the end).

    Returns
    -------
    BlockwiseResult
    """
    seg = get_segmenter(segmenter) if isinstance(segmenter, str) else segmenter
    if params is None:
        params = seg.params_type()
    elif not isinstance(params, seg.params_type):
        raise TypeError(
            f"Parameters for {seg.name!r} must be {seg.params_type.__name__}, got {type(params).__name__}."
        )
    if seg.spatial_ndim != 2:
        raise SegmentationError(
            f"Block-wise segmentation is 2-D; the {seg.name} segmenter is {seg.spatial_ndim}-D."
        )
    measure = measure or MeasureParams()
    read = _Reader(image, channel_axis, channel)
    shape = read.shape
    margin = default_overlap(params) if overlap is None else int(overlap)
    grid = BlockGrid(shape, int(block_size), margin)
    with contextlib.ExitStack() as stack:
        labels_path: Path | None = None
        if labels_out is None:
            out = np.zeros(shape, np.uint32)
        elif isinstance(labels_out, (str, os.PathLike)):
            from ..io.atomic import atomic_directory
            from ..io.ome_zarr import create_ome_zarr

            labels_path = Path(labels_out)
            tmp = stack.enter_context(atomic_directory(labels_path))
            chunk = min(1024, grid.block)
            out = create_ome_zarr(
                tmp, shape, np.uint32, chunks=(chunk, chunk), name=labels_path.stem, labels=True
            )
        else:
            _check_labels_out(labels_out, shape)
            out = labels_out
        result = yield from _run(
            seg, params, read, grid, out, measure if features else None, table_out, image_name
        )
        if labels_path is not None and pyramid:
            yield Progress(1, 1, "Writing the downsampled labels")
            from ..io.ome_zarr import add_pyramid

            add_pyramid(tmp)
    if labels_path is not None:
        from ..io.ome_zarr import open_ome_zarr

        result.labels = open_ome_zarr(labels_path).data
        result.provenance["labels_path"] = str(labels_path)
    return result


def _run(
    seg: Any,
    params: Any,
    read: _Reader,
    grid: BlockGrid,
    out: Any,
    measure: MeasureParams | None,
    table_out: str | os.PathLike[str] | None,
    image_name: str | None,
) -> Generator[Progress, None, BlockwiseResult]:
    fix = getattr(seg, "blockwise_params", None)
    texture = measure is not None and "texture" in measure.groups and measure.feature_set == "default"
    first_pass = texture or callable(fix)
    value_range: tuple[float, float] | None = None
    n = len(grid)
    total = n + int(first_pass)
    if first_pass:
        value_range, overview = yield from _prepass(read, grid, 0, total)
        if callable(fix):
            params = fix(params, overview)
        del overview
    texture_range = {DEFAULT_CHANNEL: value_range} if texture and value_range is not None else None

    writer = None
    empty = None
    if measure is not None:
        from ..io.export import table_for_export

        empty = yield from iter_measure(
            np.zeros((1, 1), np.uint32), {DEFAULT_CHANNEL: np.zeros((1, 1), np.float32)}, measure
        )
        columns = list(table_for_export(empty, image_name).columns)
        if table_out is not None:
            from ..io.tables import StreamingTableWriter

            writer = StreamingTableWriter(table_out, columns)
    try:
        return (
            yield from _blocks(
                seg, params, read, grid, out, measure, writer, empty, image_name, texture_range, first_pass
            )
        )
    except BaseException:  # an error, or the generator closed (cancelled): no half table
        if writer is not None:
            writer.abort()
        raise


def _coordinate_axis(column: str) -> str | None:
    """``"y"`` or ``"x"`` for a column holding a position (shifted to image coordinates)."""
    if column in _Y_COLUMNS:
        return "y"
    if column in _X_COLUMNS:
        return "x"
    if column.startswith(("AreaShape_", "Location_")) and "BoundingBoxArea" not in column:
        if column.endswith("_Y") or "_Y_" in column:
            return "y"
        if column.endswith("_X") or "_X_" in column:
            return "x"
    return None


def _blocks(
    seg: Any,
    params: Any,
    read: _Reader,
    grid: BlockGrid,
    out: Any,
    measure: MeasureParams | None,
    writer: Any,
    empty: pd.DataFrame | None,
    image_name: str | None,
    texture_range: dict[str, tuple[float, float]] | None,
    first_pass: bool,
) -> Generator[Progress, None, BlockwiseResult]:
    t_start = time.perf_counter()
    n = len(grid)
    total = n + int(first_pass)
    kept_tables: list[pd.DataFrame] = []

    stats = {"oversized": 0, "duplicates": 0, "rescued": 0, "conflict_pixels": 0}
    seconds = {"segment": 0.0, "measure": 0.0, "write": 0.0}
    next_id = 0
    done: set[tuple[int, int]] = set()
    pending: dict[tuple[int, int], _Pending] = {}
    h, w = grid.shape

    def measure_block(key: tuple[int, int], p: _Pending) -> Generator[Progress, None, None]:
        assert measure is not None
        t0 = time.perf_counter()
        y0, y1, x0, x1 = p.region
        y0, x0 = max(0, y0 - _HALO), max(0, x0 - _HALO)
        y1, x1 = min(h, y1 + _HALO), min(w, x1 + _HALO)
        lab = np.asarray(out[y0:y1, x0:x1])
        img = read(y0, y1, x0, x1)
        df = yield from iter_measure(lab, {DEFAULT_CHANNEL: img}, measure, texture_range=texture_range)
        df = df[(df["label"] >= p.first) & (df["label"] <= p.last)].reset_index(drop=True)
        for col in df.columns:
            axis = _coordinate_axis(col)
            if axis is not None:
                df[col] = df[col] + (y0 if axis == "y" else x0)
        if writer is not None:
            from ..io.export import table_for_export

            writer.write(table_for_export(df, image_name))
        else:
            kept_tables.append(df)
        seconds["measure"] += time.perf_counter() - t0

    for i, (r, c) in enumerate(grid):
        base = (int(first_pass) + i) * 1000
        label = f"Block {i + 1}/{n}"
        yield Progress(base, total * 1000, label)
        t0 = time.perf_counter()
        crop = grid.crop(r, c)
        y0, y1, x0, x1 = crop
        plane = read(y0, y1, x0, x1)
        gen = seg.segment(plane, params)
        while True:
            try:
                p = next(gen)
            except StopIteration as stop:
                lab = as_label_image(stop.value)
                break
            yield Progress(base + int(900 * p.fraction), total * 1000, f"{label}: {p.message}")
        if lab.shape != plane.shape:
            raise RuntimeError(
                f"The {seg.name} segmenter returned shape {lab.shape} for a block of {plane.shape}."
            )
        del plane
        seconds["segment"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        first = next_id + 1
        region = None
        if lab.any():
            claimed, rescue, oversized, area = _objects_to_keep(lab, grid, (r, c), done)
            keep = claimed | rescue
            box = _bbox(lab, keep)
            if box is not None:
                by0, by1, bx0, bx1 = box
                sub = lab[by0:by1, bx0:bx1]
                gy0, gx0 = y0 + by0, x0 + bx0
                existing = np.array(out[gy0 : gy0 + sub.shape[0], gx0 : gx0 + sub.shape[1]], dtype=np.uint32)
                mine = keep[sub]
                taken = np.bincount(sub[mine & (existing > 0)], minlength=keep.size)
                written = taken * 2 > area  # mostly written already by an earlier block
                keep &= ~written
                stats["duplicates"] += int((claimed & written).sum())
                stats["rescued"] += int((rescue & keep).sum())
                stats["oversized"] += int((oversized & keep).sum())
                new_ids = np.zeros(keep.size, np.uint32)
                k = int(keep.sum())
                new_ids[keep] = np.arange(first, first + k, dtype=np.uint32)
                mine = keep[sub]
                free = existing == 0
                stats["conflict_pixels"] += int((mine & ~free).sum())
                paste = mine & free
                existing[paste] = new_ids[sub[paste]]
                out[gy0 : gy0 + sub.shape[0], gx0 : gx0 + sub.shape[1]] = existing
                next_id += k
                if k:
                    rows, cols = np.nonzero(paste)
                    region = (
                        gy0 + int(rows.min()),
                        gy0 + int(rows.max()) + 1,
                        gx0 + int(cols.min()),
                        gx0 + int(cols.max()) + 1,
                    )
        del lab
        seconds["write"] += time.perf_counter() - t0
        done.add((r, c))
        if region is not None and measure is not None:
            pending[(r, c)] = _Pending(first, next_id, region)
        for key in [k for k in pending if grid.neighbours_done(*k, done)]:
            yield Progress(
                base + 950, total * 1000, f"{label}: measuring block {key[0] * grid.cols + key[1] + 1}"
            )
            yield from measure_block(key, pending.pop(key))
    for key in list(pending):  # every block is segmented: the rest are ready
        yield from measure_block(key, pending.pop(key))

    table_path = None
    table = None
    if writer is not None:
        table_path = writer.close()
    elif measure is not None:
        table = pd.concat(kept_tables, ignore_index=True) if kept_tables else empty
    yield Progress(total * 1000, total * 1000, f"Done: {next_id} objects in {n} blocks")
    provenance: dict[str, Any] = {
        "backend": seg.name,
        "segmenter": seg.display_name,
        "params": dataclasses.asdict(params),
        "device": seg.device(params),
        "blockwise": {
            "block_size": grid.block,
            "overlap": grid.overlap,
            "n_blocks": n,
            "grid": [grid.rows, grid.cols],
            **stats,
            "texture_range": list(texture_range[DEFAULT_CHANNEL]) if texture_range else None,
        },
        "segment_seconds": round(seconds["segment"] + seconds["write"], 3),
        "measure_seconds": round(seconds["measure"], 3),
        "seconds": round(time.perf_counter() - t_start, 3),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "n_cells": next_id,
    }
    if measure is not None:
        provenance["measure"] = dataclasses.asdict(measure)
    model_info = model_provenance(seg.name, params)
    if model_info is not None:
        provenance["model_info"] = model_info
    return BlockwiseResult(out, table, table_path, next_id, provenance)
