"""Cellpose segmentation (cellpose 3.1.x or 4.x, whichever is installed).

The adapter hides the differences between the two cellpose generations:

- **cellpose 3** (``cyto3``, ``nuclei``... and models trained from them): a residual U-Net
  that rescales objects to the model's mean diameter; the two-channel input is chosen by
  ``channels=[cytoplasm, nucleus]``; cellpose 3 has size models that estimate the
  object diameter (:meth:`CellposeSegmenter.estimate_diameter`).
- **cellpose 4** (``cpsam``, ``cpsam_v2``): Cellpose-SAM, a vision transformer that takes
  up to three channels in any order and no ``channels`` argument. On CPU it is built
  with ``use_bfloat16=False``: bfloat16 matrix products without AVX-512 run about 7x
  slower than float32 (bfloat16 is kept on CUDA only).

Models are found by :mod:`.cellpose_models` (built-ins, local files, fine-tuned models),
loaded once per (model file, device) and kept by :func:`~..engine.cache.model_cache` in
the process that runs them (the engine process in the GUI). torch and cellpose are
imported only when a model is loaded: the GUI imports this module for
:class:`CellposeParams` alone.

The device is CUDA if torch sees one, then Apple MPS, then the CPU, unless ``device``
says otherwise. Stacks: leading axes (time, z) are segmented plane by plane with label
ids unique over the stack, or, with ``do_3D`` or ``stitch_threshold``, the last three
axes as a z-stack. Planes larger than ``block_size`` are segmented in overlapping blocks
so that memory stays bounded.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from ..engine.cache import model_cache
from ..progress import Progress
from .base import SegmentationError, as_label_image, check_image
from .cellpose_models import (
    CellposeModelInfo,
    ModelNotFoundError,
    cellpose_version,
    ensure_cellpose_weights,
    resolve_cellpose_model,
)

__all__ = ["CellposeParams", "CellposeSegmenter", "load_cellpose_model", "pick_device"]

_DEVICES = ("auto", "cuda", "mps", "cpu")


def _finite(value: object) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float, np.integer, np.floating))
        and math.isfinite(float(value))
    )


def _is_int(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


@dataclass(frozen=True)
class CellposeParams:
    """Parameters of the Cellpose segmenter.

    Parameters
    ----------
    model : str or None
        Built-in model name (``cyto3``, ``nuclei``... with cellpose 3; ``cpsam``,
        ``cpsam_v2`` with cellpose 4), the name of a model in the models folder, or the
        path of a weights file. ``None``: the installed cellpose's default (``cyto3`` or
        ``cpsam``/``cpsam_v2``). See :func:`~.cellpose_models.list_cellpose_models`.
    diameter : float or None
        Typical object diameter in pixels; the image is rescaled so that objects have
        the size the model was trained at. ``None``: no rescaling for cellpose 4; for
        cellpose 3 the mean diameter of the model's training objects.
    flow_threshold : float
        Largest flow error of a kept object (default 0.4); raise it to keep more,
        irregular objects, 0 turns the check off. Not used in 3D.
    cellprob_threshold : float
        Cell-probability threshold (logit, default 0); lower it to find more and larger
        objects, raise it in noisy images.
    min_size : int
        Objects smaller than this many pixels (voxels in 3D) are dropped (default 15).
    normalize : bool
        Rescale intensities between two percentiles before the network (default True).
    percentile_low, percentile_high : float
        Percentiles mapped to 0 and 1 by the normalisation (default 1 and 99).
    invert : bool
        Invert intensities before the network (dark objects on a bright background).
    channel_axis : int or None
        Axis of ``image`` that holds channels. ``None`` (default): the image is a single
        channel (the cytoplasm, or the nuclei, channel). The labels then have the image's
        shape without that axis.
    cyto_channel : int
        With ``channel_axis``: the channel to segment (cytoplasm or nuclei).
    nucleus_channel : int or None
        With ``channel_axis``: an optional nucleus channel that helps cytoplasm models.
    do_3D : bool
        Segment the last three axes (z, y, x) as a volume (cellpose's 3D mode: flows from
        xy, zy and zx views). Slow on a CPU.
    stitch_threshold : float
        If > 0: segment the planes of the last three axes in 2D and join masks of
        consecutive planes whose IoU exceeds this value into 3D objects (e.g. 0.25).
    anisotropy : float or None
        With ``do_3D``: z step over xy pixel size (e.g. 2.0 for a z step twice the
        pixel size).
    tile_overlap : float
        Overlap of the network's tiles, as a fraction of the tile size (default 0.1).
    batch_size : int
        Tiles the network processes at once (default 8); lower it on a small GPU.
    augment : bool
        Average the network over flipped, overlapping tiles (slower, slightly smoother).
    block_size : int
        Planes with a side longer than this many pixels are segmented in overlapping
        blocks of this size, so that memory stays bounded (default 2048; 0 = never).
        Objects are kept from the block that holds their centre.
    device : {"auto", "cuda", "mps", "cpu"}
        Where the network runs. ``auto``: CUDA if available, then Apple MPS, then the
        CPU.

    Raises
    ------
    ValueError
        If a value is out of range (the message names the parameter).
    """

    model: str | None = field(
        default=None,
        metadata={
            "doc": "Built-in name (cyto3, nuclei, cpsam...), a model in the models folder, or a weights file"
        },
    )
    diameter: float | None = field(
        default=None,
        metadata={
            "doc": "Typical object diameter in pixels; auto: the model's own scale",
            "min": 1.0,
            "max": 10000.0,
        },
    )
    flow_threshold: float = field(
        default=0.4,
        metadata={"doc": "Largest flow error of a kept object (0 = off)", "min": 0.0, "max": 10.0},
    )
    cellprob_threshold: float = field(
        default=0.0,
        metadata={"doc": "Cell probability threshold; lower finds more objects", "min": -20.0, "max": 20.0},
    )
    min_size: int = field(default=15, metadata={"doc": "Smallest object kept, in pixels", "min": 0})
    normalize: bool = field(default=True, metadata={"doc": "Normalise intensities between two percentiles"})
    percentile_low: float = field(
        default=1.0, metadata={"doc": "Percentile mapped to 0", "min": 0.0, "max": 100.0}
    )
    percentile_high: float = field(
        default=99.0, metadata={"doc": "Percentile mapped to 1", "min": 0.0, "max": 100.0}
    )
    invert: bool = field(default=False, metadata={"doc": "Dark objects on a bright background"})
    channel_axis: int | None = field(
        default=None, metadata={"doc": "Axis holding channels (auto = single channel)", "min": -8, "max": 8}
    )
    cyto_channel: int = field(
        default=0, metadata={"doc": "Channel to segment (with a channel axis)", "min": 0}
    )
    nucleus_channel: int | None = field(
        default=None, metadata={"doc": "Optional nucleus channel (with a channel axis)", "min": 0}
    )
    do_3D: bool = field(default=False, metadata={"doc": "Segment z-stacks as volumes"})  # noqa: N815
    stitch_threshold: float = field(
        default=0.0,
        metadata={
            "doc": "Stitch 2D masks across z above this IoU (0 = off)",
            "min": 0.0,
            "max": 1.0,
            "step": 0.05,
        },
    )
    anisotropy: float | None = field(
        default=None, metadata={"doc": "z step / xy pixel size (3D)", "min": 0.01, "max": 100.0}
    )
    tile_overlap: float = field(
        default=0.1, metadata={"doc": "Overlap of network tiles", "min": 0.0, "max": 0.5, "step": 0.05}
    )
    batch_size: int = field(default=8, metadata={"doc": "Tiles per network batch", "min": 1, "max": 1024})
    augment: bool = field(default=False, metadata={"doc": "Average over flipped tiles (slower)"})
    block_size: int = field(
        default=2048,
        metadata={
            "doc": "Split larger planes into overlapping blocks (0 = never)",
            "min": 0,
            "max": 1_000_000,
        },
    )
    device: Literal["auto", "cuda", "mps", "cpu"] = field(
        default="auto", metadata={"doc": "auto: CUDA, then Apple MPS, then CPU"}
    )

    def __post_init__(self) -> None:
        if self.model is not None and (not isinstance(self.model, str) or not self.model.strip()):
            raise ValueError(
                f"model must be a model name or path, or None for the default, got {self.model!r}."
            )
        if self.diameter is not None and (not _finite(self.diameter) or not self.diameter > 0):
            raise ValueError(f"diameter must be a positive number of pixels or None, got {self.diameter!r}.")
        if not _finite(self.flow_threshold) or self.flow_threshold < 0:
            raise ValueError(f"flow_threshold must be a number >= 0, got {self.flow_threshold!r}.")
        if not _finite(self.cellprob_threshold) or abs(self.cellprob_threshold) > 20:
            raise ValueError(
                f"cellprob_threshold must be a number between -20 and 20, got {self.cellprob_threshold!r}."
            )
        if not _is_int(self.min_size) or self.min_size < 0:
            raise ValueError(f"min_size must be a whole number of pixels >= 0, got {self.min_size!r}.")
        for name in ("percentile_low", "percentile_high"):
            value = getattr(self, name)
            if not _finite(value) or not 0 <= value <= 100:
                raise ValueError(f"{name} must be a number between 0 and 100, got {value!r}.")
        if not self.percentile_low < self.percentile_high:
            raise ValueError(
                f"percentile_low ({self.percentile_low:g}) must be below percentile_high ({self.percentile_high:g})."
            )
        for name in ("normalize", "invert", "do_3D", "augment"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        if self.invert and not self.normalize:
            raise ValueError("invert needs normalize=True (cellpose inverts normalised intensities).")
        if self.channel_axis is not None and not _is_int(self.channel_axis):
            raise ValueError(f"channel_axis must be a whole number or None, got {self.channel_axis!r}.")
        if not _is_int(self.cyto_channel) or self.cyto_channel < 0:
            raise ValueError(f"cyto_channel must be a channel index >= 0, got {self.cyto_channel!r}.")
        if self.nucleus_channel is not None:
            if not _is_int(self.nucleus_channel) or self.nucleus_channel < 0:
                raise ValueError(
                    f"nucleus_channel must be a channel index >= 0 or None, got {self.nucleus_channel!r}."
                )
            if self.channel_axis is None:
                raise ValueError(
                    "nucleus_channel needs channel_axis: the axis of the image that holds the channels."
                )
            if self.nucleus_channel == self.cyto_channel:
                raise ValueError("nucleus_channel must differ from cyto_channel.")
        if self.channel_axis is None and self.cyto_channel != 0:
            raise ValueError(
                "cyto_channel needs channel_axis: the axis of the image that holds the channels."
            )
        if not _finite(self.stitch_threshold) or not 0 <= self.stitch_threshold <= 1:
            raise ValueError(
                f"stitch_threshold must be a number between 0 and 1, got {self.stitch_threshold!r}."
            )
        if self.do_3D and self.stitch_threshold > 0:
            raise ValueError("Choose either do_3D or stitch_threshold > 0, not both.")
        if self.anisotropy is not None and (not _finite(self.anisotropy) or not self.anisotropy > 0):
            raise ValueError(f"anisotropy must be a positive number or None, got {self.anisotropy!r}.")
        if not _finite(self.tile_overlap) or not 0 <= self.tile_overlap <= 0.5:
            raise ValueError(f"tile_overlap must be a number between 0 and 0.5, got {self.tile_overlap!r}.")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a whole number >= 1, got {self.batch_size!r}.")
        if not _is_int(self.block_size) or (self.block_size != 0 and self.block_size < 256):
            raise ValueError(
                f"block_size must be 0 (never split) or at least 256 pixels, got {self.block_size!r}."
            )
        if self.device not in _DEVICES:
            raise ValueError(f"device must be one of {', '.join(_DEVICES)}, got {self.device!r}.")

    @property
    def volumetric(self) -> bool:
        """Whether the last three axes are segmented together (``do_3D`` or stitching)."""
        return bool(self.do_3D) or self.stitch_threshold > 0


# --------------------------------------------------------------------------- devices


def pick_device(choice: str = "auto") -> str:
    """The torch device to run on: ``"cuda"``, ``"mps"`` or ``"cpu"``.

    ``auto`` takes CUDA if torch sees a GPU, then Apple MPS, then the CPU.

    Raises
    ------
    SegmentationError
        If ``cuda`` or ``mps`` is asked for and this torch cannot use it.
    """
    import torch

    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if choice == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if choice == "cuda" and not cuda:
        raise SegmentationError(
            f"device='cuda' was asked for, but this torch ({torch.__version__}) sees no CUDA GPU. "
            "Use device='auto' or 'cpu', or install a CUDA build of torch."
        )
    if choice == "mps" and not mps:
        raise SegmentationError(
            "device='mps' was asked for, but Apple MPS is not available here. Use device='auto' or 'cpu'."
        )
    if choice not in _DEVICES:
        raise SegmentationError(f"Unknown device {choice!r}; choose one of {', '.join(_DEVICES)}.")
    return choice


def _describe_device(kind: str) -> str:
    if kind == "cuda":
        import torch

        return f"CUDA ({torch.cuda.get_device_name(torch.cuda.current_device())})"
    if kind == "mps":
        return "Apple MPS"
    return "CPU"


# --------------------------------------------------------------------------- models


@model_cache(maxsize=2)
def _load(path: str, mtime_ns: int, major: int, builtin_diam: float | None, device: str) -> Any:
    """Build a cellpose ``CellposeModel`` from a weights file (cached per file version and device)."""
    import torch
    from cellpose import models

    dev = torch.device(device)
    _check_generation(path, major)
    if major >= 4:
        # bfloat16 is only fast on GPUs (and CPUs with AVX-512): float32 elsewhere.
        model = models.CellposeModel(pretrained_model=path, device=dev, use_bfloat16=dev.type == "cuda")
    else:
        model = models.CellposeModel(pretrained_model=path, device=dev)
        if builtin_diam is not None:
            model.diam_mean = float(builtin_diam)
    return model


def _check_generation(path: str, major: int) -> None:
    """Refuse, with a clear message, weights of the other cellpose generation (or no weights at all)."""
    import torch

    state: Any = None
    for mmap in (True, False):  # files in torch's old (non-zip) format cannot be memory-mapped
        try:
            state = torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
            break
        except Exception as exc:
            if not mmap:
                raise SegmentationError(
                    f"{path} is not a Cellpose weights file ({type(exc).__name__}: {exc})."
                ) from exc
    keys = set(state) if isinstance(state, dict) else set()
    is_v4 = "W2" in keys or "module.W2" in keys
    if is_v4 != (major >= 4):
        made, needs = ("cellpose 4 (Cellpose-SAM)", "4") if is_v4 else ("cellpose 3", "3.1")
        raise SegmentationError(
            f"{path} holds {made} weights, which the installed cellpose {major}.x cannot run; "
            f"use a cellpose {needs} environment, or another model."
        )


def load_cellpose_model(info: CellposeModelInfo, device: str = "cpu") -> Any:
    """The cellpose ``CellposeModel`` for a resolved model on ``device`` (cached).

    Built-in weights missing on disk are downloaded by cellpose's downloader, or, offline,
    a :class:`~.cellpose_models.ModelNotFoundError` says which file to put where.
    """
    version = cellpose_version()
    if version is None:
        raise ImportError(
            'Cellpose is not installed. Install it with: pip install "napari-phenotyper[cellpose]".'
        )
    path = ensure_cellpose_weights(info)
    diam = info.diam_mean if info.kind == "builtin" else None
    return _load(str(path), path.stat().st_mtime_ns, version[0], diam, device)


# --------------------------------------------------------------------------- image layout


def _channels_last(image: np.ndarray, params: CellposeParams) -> tuple[np.ndarray, bool]:
    """``image`` with the selected channels on a trailing axis, and whether there is one."""
    arr = np.asarray(image)
    if params.channel_axis is None:
        return arr, False
    if arr.ndim < 3:
        raise SegmentationError(
            f"channel_axis={params.channel_axis} needs an image with a channel axis and two spatial axes, "
            f"got shape {arr.shape}."
        )
    if not -arr.ndim <= params.channel_axis < arr.ndim:
        raise SegmentationError(
            f"channel_axis={params.channel_axis} is out of range for an image of shape {arr.shape}."
        )
    axis = params.channel_axis % arr.ndim
    arr = np.moveaxis(arr, axis, -1)
    n = arr.shape[-1]
    wanted = [params.cyto_channel] + ([params.nucleus_channel] if params.nucleus_channel is not None else [])
    for c in wanted:
        assert c is not None
        if c >= n:
            raise SegmentationError(
                f"Channel {c} does not exist: the channel axis has {n} channels (0-{n - 1})."
            )
    return arr[..., wanted], True


def _blocks(shape: tuple[int, int], block: int, overlap: int) -> list[tuple[slice, slice, slice, slice]]:
    """Overlapping blocks covering a plane: (block rows, block cols, core rows, core cols)."""
    core = block - 2 * overlap
    out = []
    for y0 in range(0, shape[0], core):
        for x0 in range(0, shape[1], core):
            cy = slice(y0, min(y0 + core, shape[0]))
            cx = slice(x0, min(x0 + core, shape[1]))
            by = slice(max(0, y0 - overlap), min(shape[0], cy.stop + overlap))
            bx = slice(max(0, x0 - overlap), min(shape[1], cx.stop + overlap))
            out.append((by, bx, cy, cx))
    return out


def _merge_block(
    out: np.ndarray, lab: np.ndarray, by: slice, bx: slice, cy: slice, cx: slice, offset: int
) -> int:
    """Paste the objects of a block whose centre lies in its core; returns the new offset."""
    from scipy import ndimage as ndi

    n = int(lab.max())
    if n == 0:
        return offset
    ids = np.arange(1, n + 1)
    centres = np.asarray(ndi.center_of_mass(np.ones(lab.shape, np.uint8), lab, ids), dtype=np.float64)
    present = np.bincount(lab.ravel(), minlength=n + 1)[1:] > 0
    cyy = centres[:, 0] + by.start
    cxx = centres[:, 1] + bx.start
    keep = present & (cyy >= cy.start) & (cyy < cy.stop) & (cxx >= cx.start) & (cxx < cx.stop)
    lut = np.zeros(n + 1, np.uint32)
    kept = np.flatnonzero(keep) + 1
    lut[kept] = np.arange(offset + 1, offset + 1 + len(kept), dtype=np.uint32)
    new = lut[lab]
    region = out[by, bx]
    free = region == 0
    region[free] = new[free]
    return offset + len(kept)


# --------------------------------------------------------------------------- segmenter


class CellposeSegmenter:
    """Cellpose (3.1.x or 4.x) behind the :class:`~.base.Segmenter` protocol.

    See the module documentation and :class:`CellposeParams`. After :meth:`segment`,
    :meth:`device` says which device ran and, on a GPU, the peak memory used.
    """

    name: ClassVar[str] = "cellpose"
    display_name: ClassVar[str] = "Cellpose (deep learning)"
    params_type: ClassVar[type] = CellposeParams
    spatial_ndim: ClassVar[int] = 2

    def __init__(self) -> None:
        self._last_device: str | None = None

    # -- protocol -------------------------------------------------------------------

    def spatial_ndim_for(self, params: CellposeParams | None = None) -> int:
        """3 with ``do_3D`` or stitching (the last three axes are one volume), else 2."""
        return 3 if params is not None and params.volumetric else 2

    def device(self, params: CellposeParams | None = None) -> str:
        """Where the last :meth:`segment` ran (with peak GPU memory), else where it would run."""
        if self._last_device is not None:
            return self._last_device
        params = CellposeParams() if params is None else params
        return _describe_device(pick_device(params.device))

    def segment(
        self, image: np.ndarray, params: CellposeParams | None = None
    ) -> Generator[Progress, None, np.ndarray]:
        """Segment ``image`` (2-D planes behind optional leading axes, or z-stacks).

        Yields
        ------
        Progress
            While the model loads, then once per plane (per block for planes larger than
            ``block_size``; once per stack with ``do_3D`` or stitching).

        Returns
        -------
        numpy.ndarray
            ``uint32`` labels of ``image``'s shape (without its channel axis), 0 =
            background, ids unique over the whole array.

        Raises
        ------
        ModelNotFoundError
            If the model is unknown, or its weights are missing and cannot be downloaded.
        SegmentationError
            For an image the parameters do not fit (too few axes for 3D, bad channel).
        """
        params = CellposeParams() if params is None else params
        if not isinstance(params, CellposeParams):
            raise TypeError(f"Expected CellposeParams, got {type(params).__name__}.")
        arr, has_channels = _channels_last(image, params)
        spatial = 3 if params.volumetric else 2
        check_image(arr[..., 0] if has_channels else arr, spatial)
        if params.volumetric and (arr.ndim - int(has_channels)) < 3:
            raise SegmentationError(
                f"do_3D and stitch_threshold need a z-stack (z, y, x), got an image of shape {np.shape(image)}."
            )
        info = resolve_cellpose_model(params.model)
        yield Progress(0, 0, f"Loading Cellpose model {info.name}")
        ensure_cellpose_weights(info)  # offline and missing: fail now, before torch loads
        kind = pick_device(params.device)
        model = load_cellpose_model(info, kind)
        major = (cellpose_version() or (3,))[0]
        torch_mod, reset = _gpu_peak_reset(kind)
        run = _Runner(model, major, params, has_channels)
        labels = yield from _over_stack(arr, has_channels, spatial, params, run)
        self._last_device = _describe_device(kind) + _gpu_peak(torch_mod, kind, reset)
        return labels

    # -- diameter -------------------------------------------------------------------

    def estimate_diameter(self, image: np.ndarray, params: CellposeParams | None = None) -> float:
        """Estimate the typical object diameter (pixels) on the first plane of ``image``.

        With cellpose 3 and a model that has a size model (``cyto3``, ``nuclei``,
        ``cyto2``, ``cyto``, or a local model with a ``<weights>_size.npy`` beside it),
        cellpose's own two-step estimate (style regression, then the median diameter of a
        first segmentation). Otherwise (cellpose 4 has no size models; other models)
        the weights-free estimate of the classical segmenter, which suits nuclei and
        compact cells.
        """
        from .classical import estimate_diameter as classical_estimate

        params = CellposeParams() if params is None else params
        arr, has_channels = _channels_last(image, params)
        plane = arr
        while plane.ndim > 2 + int(has_channels):
            plane = plane[0]
        gray = plane[..., 0] if has_channels else plane
        version = cellpose_version()
        if version is None or version[0] >= 4:
            return float(classical_estimate(gray))
        info = resolve_cellpose_model(params.model)
        if info.size_model is None:
            return float(classical_estimate(gray))
        try:
            size_path = ensure_cellpose_weights(info, size_model=True)
        except ModelNotFoundError:
            return float(classical_estimate(gray))
        from cellpose import models

        model = load_cellpose_model(info, pick_device(params.device))
        size = models.SizeModel(model, pretrained_size=str(size_path))
        channels = [1, 2 if has_channels and plane.shape[-1] > 1 else 0] if has_channels else [0, 0]
        diam, _ = size.eval(
            np.asarray(plane, dtype=np.float32),
            channels=channels,
            channel_axis=-1 if has_channels else None,
            normalize=_normalize_dict(params, volumetric=False),
        )
        d = float(np.asarray(diam).ravel()[0])
        return d if math.isfinite(d) and d > 0 else float(classical_estimate(gray))


# --------------------------------------------------------------------------- running


def _normalize_dict(params: CellposeParams, volumetric: bool) -> dict[str, Any]:
    """Cellpose's ``normalize`` dictionary (always a fresh dict: cellpose mutates its default)."""
    return {
        "normalize": bool(params.normalize),
        "percentile": [float(params.percentile_low), float(params.percentile_high)],
        "norm3D": bool(volumetric),
        "invert": bool(params.invert),
        "lowhigh": None,
        "sharpen_radius": 0,
        "smooth_radius": 0,
        "tile_norm_blocksize": 0,
        "tile_norm_smooth3D": 1,
    }


class _Runner:
    """Calls ``model.eval`` on one plane, block or volume with the parameters' options."""

    def __init__(self, model: Any, major: int, params: CellposeParams, has_channels: bool) -> None:
        self.model = model
        self.major = major
        self.params = params
        self.has_channels = has_channels

    def __call__(self, data: np.ndarray, volumetric: bool) -> np.ndarray:
        p = self.params
        kwargs: dict[str, Any] = {
            "diameter": p.diameter,
            "flow_threshold": p.flow_threshold,
            "cellprob_threshold": p.cellprob_threshold,
            "min_size": int(p.min_size),
            "normalize": _normalize_dict(p, volumetric),
            "tile_overlap": float(p.tile_overlap),  # cellpose clips it to [0.05, 0.5]
            "batch_size": int(p.batch_size),
            "augment": bool(p.augment),
            "channel_axis": data.ndim - 1 if self.has_channels else None,
        }
        if volumetric:
            kwargs.update(
                do_3D=bool(p.do_3D),
                stitch_threshold=float(p.stitch_threshold),
                anisotropy=p.anisotropy,
                z_axis=0,
            )
        if self.major < 4:
            if self.has_channels:
                kwargs["channels"] = [1, 2 if data.shape[-1] > 1 else 0]
            else:
                kwargs["channels"] = [0, 0]
        with warnings.catch_warnings():
            # torch, inside cellpose's mask dynamics; harmless and printed once per process otherwise
            warnings.filterwarnings("ignore", message="Sparse invariant checks", category=UserWarning)
            masks = self.model.eval(np.asarray(data), **kwargs)[0]
        masks = np.asarray(masks)
        expected = data.shape[:-1] if self.has_channels else data.shape
        if masks.shape != expected:
            if masks.size == int(np.prod(expected)):
                masks = masks.reshape(expected)
            else:
                raise RuntimeError(
                    f"cellpose returned masks of shape {masks.shape} for an input of {data.shape}"
                )
        return as_label_image(masks)


def _over_stack(
    arr: np.ndarray,
    has_channels: bool,
    spatial: int,
    params: CellposeParams,
    run: Callable[[np.ndarray, bool], np.ndarray],
) -> Generator[Progress, None, np.ndarray]:
    """Segment every plane (or z-stack) behind the leading axes, ids unique over the stack."""
    core_ndim = spatial + int(has_channels)
    lead = arr.shape[: arr.ndim - core_ndim]
    space = arr.shape[arr.ndim - core_ndim : arr.ndim - int(has_channels)]
    out = np.zeros(lead + space, dtype=np.uint32)
    items = list(np.ndindex(*lead)) if lead else [()]
    volumetric = spatial == 3
    plans: list[list[tuple[slice, slice, slice, slice]]] = []
    block = int(params.block_size)
    for _ in items:
        if not volumetric and block and max(space) > block:
            d = float(params.diameter) if params.diameter is not None else 30.0
            overlap = min(block // 4, int(2 * d) + 32)
            plans.append(_blocks((space[0], space[1]), block, overlap))
        else:
            plans.append([])
    total = sum(max(1, len(p)) for p in plans)
    done = 0
    offset = 0
    n = len(items)
    what = "stack" if volumetric else "plane"
    yield Progress(0, total, f"Cellpose: {what} 1/{n}" if n > 1 else "Cellpose: segmenting")
    for i, (idx, plan) in enumerate(zip(items, plans, strict=True)):
        data = arr[idx]
        prefix = f"Cellpose: {what} {i + 1}/{n}" if n > 1 else "Cellpose"
        if plan:
            lab = np.zeros(space, np.uint32)
            local = 0
            for k, (by, bx, cy, cx) in enumerate(plan):
                part = run(np.ascontiguousarray(data[by, bx]), False)
                local = _merge_block(lab, part, by, bx, cy, cx, local)
                done += 1
                yield Progress(done, total, f"{prefix}: block {k + 1}/{len(plan)}")
        else:
            lab = run(np.ascontiguousarray(data), volumetric)
            done += 1
            yield Progress(done, total, f"{prefix}: {int(lab.max())} objects")
        if offset:
            lab = np.where(lab > 0, lab + np.uint32(offset), np.uint32(0)).astype(np.uint32)
        out[idx] = lab
        if lab.size:
            offset = max(offset, int(lab.max()))
    return out


def _gpu_peak_reset(kind: str) -> tuple[Any, bool]:
    if kind == "cpu":
        return None, False
    import torch

    if kind == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return torch, True
    return torch, False


def _gpu_peak(torch_mod: Any, kind: str, reset: bool) -> str:
    if torch_mod is None:
        return ""
    gib = 1024**3
    if kind == "cuda" and reset:
        return f", peak GPU memory {torch_mod.cuda.max_memory_allocated() / gib:.2f} GiB"
    if kind == "mps":
        mps = getattr(torch_mod, "mps", None)
        if mps is not None and hasattr(mps, "driver_allocated_memory"):
            return f", GPU memory {mps.driver_allocated_memory() / gib:.2f} GiB"
    return ""
