"""OME-Zarr (NGFF 0.4) images and label images, read and written chunk by chunk.

Only what the block-wise pipeline needs, on top of ``zarr`` alone: open the full
resolution level of an OME-Zarr image (NGFF 0.4, or 0.5 where the metadata sits under
``"ome"``) or of a plain Zarr array without loading it; create a multiscale image or
label image whose level 0 is filled region by region; add the lower-resolution levels
afterwards (2x steps, block by block) so that napari can show a 20,000 x 20,000 result.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "OmeZarrImage",
    "PlaneView",
    "add_pyramid",
    "create_ome_zarr",
    "is_zarr_path",
    "open_ome_zarr",
    "write_ome_zarr",
]

NGFF_VERSION = "0.4"
_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


def is_zarr_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a Zarr store on disk: a folder named ``*.zarr`` or holding Zarr metadata."""
    p = Path(path)
    if not p.is_dir():
        return False
    return p.suffix.lower() == ".zarr" or any((p / n).is_file() for n in (".zgroup", ".zarray", "zarr.json"))


def _zarr() -> Any:
    try:
        import zarr
    except ImportError as exc:  # pragma: no cover - zarr is a dependency
        raise ImportError("Reading and writing OME-Zarr needs zarr: pip install zarr") from exc
    return zarr


def _multiscales(attrs: dict[str, Any]) -> list[dict[str, Any]] | None:
    meta = attrs.get("ome", attrs)
    ms = meta.get("multiscales")
    return ms if isinstance(ms, list) and ms else None


@dataclass(frozen=True)
class OmeZarrImage:
    """The full-resolution level of an OME-Zarr image, not loaded.

    Attributes
    ----------
    data : zarr.Array
        Level 0; slicing it reads only the chunks needed.
    axes : str
        One letter per axis, e.g. ``"cyx"`` or ``"tczyx"``.
    path : pathlib.Path
        The store.
    name : str
        The image's name in its metadata (or the folder's stem).
    """

    data: Any
    axes: str
    path: Path
    name: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.data.shape)

    def plane(self, channel: int | None = None) -> tuple[PlaneView, int | None]:
        """A lazy ``(Y, X)`` or ``(C, Y, X)`` view, and its channel axis (``None`` or 0).

        Time and z axes must have one entry (block-wise segmentation is 2-D); a channel
        axis is kept for the caller to select ``channel`` from (or average), or dropped
        when it has one entry.

        Raises
        ------
        ValueError
            For a time series or z stack, or a ``channel`` that does not exist.
        """
        index: list[int | slice] = []
        channel_axis = None
        kept = 0
        for ax, n in zip(self.axes, self.shape, strict=True):
            if ax in "yx":
                index.append(slice(None))
                kept += 1
            elif ax == "c" and n > 1 and channel is None:
                index.append(slice(None))
                channel_axis = kept
                kept += 1
            elif ax == "c":
                c = 0 if channel is None else channel
                if not -n <= c < n:
                    raise ValueError(f"Channel {channel} does not exist: {self.path.name} has {n} channels.")
                index.append(c % n)
            elif n == 1:
                index.append(0)
            else:
                raise ValueError(
                    f"{self.path.name} has {n} entries along its {_AXIS_TYPES.get(ax, ax)} axis {ax!r}; "
                    "block-wise segmentation takes a single 2-D plane (with channels)."
                )
        return PlaneView(self.data, tuple(index)), channel_axis


class PlaneView:
    """A lazy view of some axes of an array: fixed indices on the others.

    Slicing it slices the underlying array (a Zarr array reads only the chunks needed).
    """

    def __init__(self, data: Any, index: tuple[int | slice, ...]):
        self._data = data
        self._index = index
        self.shape = tuple(int(n) for n, i in zip(data.shape, index, strict=True) if isinstance(i, slice))
        self.ndim = len(self.shape)
        self.dtype = np.dtype(data.dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        it = iter(key)
        full = tuple(next(it) if isinstance(i, slice) else i for i in self._index)
        return np.asarray(self._data[full])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self[(slice(None),) * self.ndim]
        return arr.astype(dtype) if dtype is not None else arr


def open_ome_zarr(path: str | os.PathLike[str]) -> OmeZarrImage:
    """Open the full-resolution level of an OME-Zarr image (or a plain Zarr array).

    Parameters
    ----------
    path : path-like
        The ``.zarr`` folder: an NGFF image (its first multiscale's first dataset is
        level 0) or a Zarr array (2-D ``yx``, 3-D ``cyx``).

    Raises
    ------
    FileNotFoundError
        When there is no such folder.
    ValueError
        When it holds no readable image.
    """
    zarr = _zarr()
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"No such Zarr folder: {p}")
    try:
        node = zarr.open(str(p), mode="r")
    except Exception as exc:
        raise ValueError(f"Cannot open {p.name} as Zarr: {type(exc).__name__}: {exc}") from exc
    if hasattr(node, "shape"):  # a bare array
        axes = {2: "yx", 3: "cyx"}.get(node.ndim)
        if axes is None:
            raise ValueError(
                f"{p.name} is a {node.ndim}-D Zarr array without OME metadata; expected yx or cyx."
            )
        return OmeZarrImage(node, axes, p, p.stem)
    ms = _multiscales(dict(node.attrs))
    if ms is None:
        raise ValueError(f"{p.name} is a Zarr group without OME-Zarr 'multiscales' metadata.")
    first = ms[0]
    datasets = first.get("datasets") or []
    if not datasets:
        raise ValueError(f"{p.name}: its multiscales metadata lists no datasets.")
    data = node[datasets[0]["path"]]
    raw_axes = first.get("axes")
    if raw_axes:
        axes = "".join((a["name"] if isinstance(a, dict) else str(a))[0].lower() for a in raw_axes)
    else:  # NGFF 0.1 / 0.2: always 5-D tczyx
        axes = "tczyx"[-data.ndim :]
    if len(axes) != data.ndim or not axes.endswith("yx"):
        raise ValueError(f"{p.name}: axes {axes!r} do not fit its {data.ndim}-D level 0 (need ...yx).")
    return OmeZarrImage(data, axes, p, str(first.get("name") or p.stem))


def _compressor(labels: bool) -> Any:
    import numcodecs

    shuffle = numcodecs.Blosc.BITSHUFFLE if labels else numcodecs.Blosc.SHUFFLE
    return numcodecs.Blosc(cname="zstd" if labels else "lz4", clevel=3 if labels else 5, shuffle=shuffle)


def _ngff_attrs(name: str, axes: str, n_levels: int, labels: bool) -> dict[str, Any]:
    ms = {
        "version": NGFF_VERSION,
        "name": name,
        "axes": [{"name": a, "type": _AXIS_TYPES[a]} for a in axes],
        "datasets": [
            {
                "path": str(k),
                "coordinateTransformations": [
                    {"type": "scale", "scale": [float(2**k) if a in "yx" else 1.0 for a in axes]}
                ],
            }
            for k in range(n_levels)
        ],
    }
    attrs: dict[str, Any] = {"multiscales": [ms]}
    if labels:
        attrs["image-label"] = {"version": NGFF_VERSION}
    return attrs


def create_ome_zarr(
    path: str | os.PathLike[str],
    shape: Sequence[int],
    dtype: Any,
    *,
    chunks: Sequence[int] | None = None,
    axes: str | None = None,
    name: str | None = None,
    labels: bool = False,
) -> Any:
    """Create an NGFF 0.4 image (or label image) and return its empty level 0 to fill.

    Parameters
    ----------
    path : path-like
        The ``.zarr`` folder to create (replaced if it exists).
    shape, dtype
        Of level 0.
    chunks : sequence of int, optional
        Chunk shape (default 1024 along y and x, 1 along the others).
    axes : str, optional
        One letter per axis among ``tczyx`` (default ``"yx"``, ``"cyx"`` for 3-D).
    name : str, optional
        Stored in the metadata (default: the folder's stem).
    labels : bool
        Write ``image-label`` metadata: napari's OME-Zarr reader opens it as a labels layer.

    Returns
    -------
    zarr.Array
        Level 0, filled with zeros.
    """
    zarr = _zarr()
    shape = tuple(int(n) for n in shape)
    axes = axes or {2: "yx", 3: "cyx"}.get(len(shape), "tczyx"[-len(shape) :])
    if len(axes) != len(shape) or not axes.endswith("yx"):
        raise ValueError(f"axes {axes!r} do not fit shape {shape}.")
    if chunks is None:
        chunks = tuple(min(1024, n) if a in "yx" else 1 for a, n in zip(axes, shape, strict=True))
    p = Path(path)
    group = zarr.open_group(str(p), mode="w", zarr_format=2)
    group.attrs.update(_ngff_attrs(name or p.stem.removesuffix(".ome"), axes, 1, labels))
    return group.create_array(
        "0",
        shape=shape,
        chunks=tuple(int(c) for c in chunks),
        dtype=np.dtype(dtype),
        compressors=_compressor(labels),
        chunk_key_encoding={"name": "v2", "separator": "/"},
        fill_value=0,
    )


def write_ome_zarr(
    path: str | os.PathLike[str],
    shape: Sequence[int],
    dtype: Any,
    render: Callable[[int, int, int, int], np.ndarray],
    *,
    chunks: int = 1024,
    name: str | None = None,
    labels: bool = False,
    levels: int = 1,
) -> Path:
    """Write a 2-D OME-Zarr image region by region: ``render(y0, y1, x0, x1)`` gives the pixels.

    One ``chunks x chunks`` region is held at a time; ``levels > 1`` adds the downsampled
    levels (see :func:`add_pyramid`).
    """
    arr = create_ome_zarr(path, shape, dtype, chunks=(chunks, chunks), name=name, labels=labels)
    h, w = (int(n) for n in shape)
    for y0 in range(0, h, chunks):
        for x0 in range(0, w, chunks):
            y1, x1 = min(h, y0 + chunks), min(w, x0 + chunks)
            arr[y0:y1, x0:x1] = render(y0, y1, x0, x1)
    if levels > 1:
        add_pyramid(path, levels)
    return Path(path)


def add_pyramid(path: str | os.PathLike[str], levels: int | None = None, block: int = 4096) -> int:
    """Add 2x-downsampled levels to a 2-D NGFF image written by :func:`create_ome_zarr`.

    Each level takes every other pixel of the one above (nearest neighbour, so that label
    ids survive), read and written ``block`` pixels at a time. ``levels=None`` adds levels
    until the smallest fits in 1024 x 1024. Returns the number of levels now stored.
    """
    zarr = _zarr()
    group = zarr.open_group(str(path), mode="r+")
    ms = _multiscales(dict(group.attrs))
    if ms is None:
        raise ValueError(f"{path} has no multiscales metadata.")
    src = group["0"]
    if src.ndim != 2:
        raise ValueError("add_pyramid handles 2-D images only.")
    if levels is None:
        levels = 1 + max(0, math.ceil(math.log2(max(src.shape) / 1024)))
    is_labels = "image-label" in group.attrs
    for k in range(1, levels):
        prev = group[str(k - 1)]
        h, w = (math.ceil(n / 2) for n in prev.shape)
        dst = group.create_array(
            str(k),
            shape=(h, w),
            chunks=tuple(min(c, n) for c, n in zip(src.chunks, (h, w), strict=True)),
            dtype=src.dtype,
            compressors=_compressor(is_labels),
            chunk_key_encoding={"name": "v2", "separator": "/"},
            fill_value=0,
            overwrite=True,
        )
        for y0 in range(0, prev.shape[0], block):
            for x0 in range(0, prev.shape[1], block):
                part = np.asarray(prev[y0 : y0 + block : 2, x0 : x0 + block : 2])
                dst[y0 // 2 : y0 // 2 + part.shape[0], x0 // 2 : x0 // 2 + part.shape[1]] = part
    attrs = dict(group.attrs)
    axes = "".join(a["name"] for a in ms[0]["axes"])
    new = _ngff_attrs(str(ms[0].get("name", "")), axes, levels, is_labels)
    if is_labels:
        new["image-label"] = attrs["image-label"]
    group.attrs.update(new)
    return levels
