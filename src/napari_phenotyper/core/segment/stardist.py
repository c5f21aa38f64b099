"""StarDist nucleus segmentation (TensorFlow), behind the :class:`Segmenter` protocol.

Models come from the model manager (:mod:`.models`): StarDist's built-in models
(``2D_versatile_fluo``, ``2D_versatile_he``, ``2D_paper_dsb2018``, ``2D_demo``,
``3D_demo``), model folders in ``models_dir() / "stardist"`` (``config.json`` +
``weights_best.h5``), models fine-tuned in the plugin, or any model folder given by path.
A built-in model that is not on disk is downloaded with StarDist's own code (a bounded
socket timeout; offline it fails at once with a message saying which file to put where).

For one image:

1. Each plane (2-D model) or volume (3-D model) is normalised: the ``norm_low`` and
   ``norm_high`` percentiles of its finite pixels map to 0 and 1 (not clipped), as in
   StarDist's examples; non-finite pixels become 0.
2. StarDist predicts object probabilities and star-convex distances, in tiles when the
   image is large (``n_tiles``; automatic by default, from the image size and the free
   memory), and non-maximum suppression turns them into labels with the model's
   thresholds unless ``prob_thresh`` / ``nms_thresh`` are given.

Leading axes (time, z for a 2-D model) are segmented plane by plane with label ids
unique over the stack. Models with several input channels (``2D_versatile_he``) take an
RGB image ``(Y, X, 3)``; a single-channel image is repeated into every channel.

TensorFlow is imported only when a model is loaded (never when this module is imported:
the napari process reads :class:`StarDistParams` from here). Run the segmenter in the
engine process (``core/engine``) from a GUI.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import socket
import sys
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from ..engine.cache import model_cache
from ..progress import Progress
from .base import SegmentationError, as_label_image, check_image, planewise
from .models import (
    ModelInfo,
    ModelNotFoundError,
    describe_model,
    missing_model_message,
    resolve_model,
)

__all__ = [
    "DOWNLOAD_TIMEOUT",
    "StarDistParams",
    "StarDistSegmenter",
    "auto_n_tiles",
    "normalize_percentiles",
    "parse_n_tiles",
    "segment_job",
    "tile_budget",
]

#: Socket timeout (s) for downloading a built-in model: a stalled download fails instead of hanging.
DOWNLOAD_TIMEOUT = 30.0

#: Largest tile (pixels for 2-D models, voxels for 3-D ones) that automatic tiling allows,
#: whatever the free memory.
MAX_TILE_PIXELS = {2: 1024 * 1024, 3: 128 * 256 * 256}
#: Smallest tile automatic tiling goes down to when memory is short.
MIN_TILE_PIXELS = {2: 256 * 256, 3: 32 * 128 * 128}

_DEVICES = ("auto", "cpu", "gpu")


def parse_n_tiles(text: str | None, ndim: int | None = None) -> tuple[int, ...] | None:
    """``"auto"``/``None``/``""`` -> ``None``; ``"4"`` or ``"2,3"`` (or ``"2x3"``) -> a tuple of ints >= 1.

    A single number applies to every spatial axis (needs ``ndim``). With ``ndim`` given,
    the tuple has that length.

    Raises
    ------
    ValueError
        For anything else (the message shows the accepted forms).
    """
    if text is None:
        return None
    s = str(text).strip().lower()
    if s in ("", "auto", "none"):
        return None
    parts = [p for p in s.replace("x", ",").replace(" ", ",").split(",") if p]
    try:
        tiles = tuple(int(p) for p in parts)
    except ValueError:
        tiles = ()
    if not tiles or any(t < 1 for t in tiles) or len(tiles) > 3:
        raise ValueError(
            f"n_tiles must be 'auto', one whole number >= 1 (tiles per axis) or one per spatial axis "
            f"such as '2,2' (Y, X) or '1,2,2' (Z, Y, X); got {text!r}."
        )
    if ndim is not None:
        if len(tiles) == 1:
            tiles = tiles * ndim
        elif len(tiles) != ndim:
            raise ValueError(
                f"n_tiles {text!r} gives {len(tiles)} numbers but this model has {ndim} spatial axes."
            )
    return tiles


def _in_open_unit(name: str, value: float | None, low_closed: bool = False) -> None:
    if value is None:
        return
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    if ok:
        v = float(value)
        ok = math.isfinite(v) and (v >= 0 if low_closed else v > 0) and v < 1
    if not ok:
        interval = "[0, 1)" if low_closed else "(0, 1)"
        raise ValueError(f"{name} must be a number in {interval} or None (the model's value), got {value!r}.")


@dataclass(frozen=True)
class StarDistParams:
    """Parameters of the StarDist segmenter.

    Parameters
    ----------
    model : str
        A model name (built-in: ``2D_versatile_fluo`` (default), ``2D_versatile_he``,
        ``2D_paper_dsb2018``, ``2D_demo``, ``3D_demo``; or a model folder's name in the
        models folder) or the path of a model folder. See ``docs/models.md``.
    prob_thresh : float or None
        Object probability threshold in (0, 1); lower finds more (and dimmer) nuclei.
        ``None``: the model's own (from its ``thresholds.json``).
    nms_thresh : float or None
        Overlap in [0, 1) above which two candidate nuclei are merged by non-maximum
        suppression; higher keeps more touching nuclei. ``None``: the model's own.
    norm_low, norm_high : float
        Percentiles of each plane's intensities mapped to 0 and 1 before prediction
        (defaults 1 and 99.8, as the built-in models were trained).
    n_tiles : str or None
        Tiles per spatial axis for large images: ``None``/``"auto"`` (default) chooses them
        from the image size and the free memory; ``"4"`` (every axis) or ``"2,3"`` (Y, X;
        ``"1,2,2"`` for Z, Y, X) sets them.
    device : {"auto", "cpu", "gpu"}
        Where TensorFlow runs: ``auto`` lets TensorFlow choose (its GPU when it sees
        one, e.g. CUDA or Apple's Metal plug-in; else the CPU).

    Raises
    ------
    ValueError
        If a value is out of range (the message names the parameter).
    """

    model: str = field(
        default="2D_versatile_fluo",
        metadata={"doc": "Built-in model name, a model in the models folder, or a model folder path"},
    )
    prob_thresh: float | None = field(
        default=None,
        metadata={
            "doc": "Object probability threshold (auto: the model's)",
            "min": 0.0,
            "max": 0.99,
            "step": 0.05,
        },
    )
    nms_thresh: float | None = field(
        default=None,
        metadata={
            "doc": "Overlap threshold of non-maximum suppression (auto: the model's)",
            "min": 0.0,
            "max": 0.95,
            "step": 0.05,
        },
    )
    norm_low: float = field(
        default=1.0, metadata={"doc": "Lower normalisation percentile", "min": 0.0, "max": 100.0, "step": 0.5}
    )
    norm_high: float = field(
        default=99.8,
        metadata={"doc": "Upper normalisation percentile", "min": 0.0, "max": 100.0, "step": 0.1},
    )
    n_tiles: str | None = field(
        default=None,
        metadata={"doc": "Tiles per axis for large images, e.g. 2,2 (auto: from image size and free memory)"},
    )
    device: Literal["auto", "cpu", "gpu"] = field(
        default="auto", metadata={"doc": "Where TensorFlow runs (auto: its GPU if it sees one)"}
    )

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model must be a model name or folder path, got {self.model!r}.")
        _in_open_unit("prob_thresh", self.prob_thresh)
        _in_open_unit("nms_thresh", self.nms_thresh, low_closed=True)
        for name in ("norm_low", "norm_high"):
            v = getattr(self, name)
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float, np.integer, np.floating))
                or not 0 <= v <= 100
            ):
                raise ValueError(f"{name} must be a percentile between 0 and 100, got {v!r}.")
        if not self.norm_low < self.norm_high:
            raise ValueError(f"norm_low ({self.norm_low:g}) must be below norm_high ({self.norm_high:g}).")
        parse_n_tiles(self.n_tiles)
        if self.device not in _DEVICES:
            raise ValueError(f"device must be one of {', '.join(_DEVICES)}, got {self.device!r}.")


# --------------------------------------------------------------------------- tiling


def auto_n_tiles(shape: tuple[int, ...], max_pixels: int) -> tuple[int, ...]:
    """Fewest tiles per axis so that one tile holds at most ``max_pixels`` pixels.

    The axis with the largest tile is split again until the tile is small enough, so
    tiles stay roughly square. (StarDist adds an overlap around each tile, a few
    percent for tiles of this size.)

    Examples
    --------
    >>> auto_n_tiles((512, 512), 1024 * 1024)
    (1, 1)
    >>> auto_n_tiles((4096, 2048), 1024 * 1024)
    (4, 2)
    """
    if max_pixels < 1:
        raise ValueError("max_pixels must be at least 1.")
    tiles = [1] * len(shape)
    sizes = [max(1, int(s)) for s in shape]
    while math.prod(math.ceil(s / t) for s, t in zip(sizes, tiles, strict=True)) > max_pixels:
        i = max(range(len(sizes)), key=lambda k: math.ceil(sizes[k] / tiles[k]))
        if tiles[i] >= sizes[i]:
            break
        tiles[i] += 1
    return tuple(tiles)


def _available_memory() -> int | None:
    """Bytes of memory free now (Linux, macOS), or None when unknown."""
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(AttributeError, OSError, ValueError):
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    return None


def tile_budget(ndim: int, filters: int = 32, available: int | None = None) -> int:
    """Pixels (voxels) per tile that automatic tiling allows.

    About ``4 * (6 * filters + 128)`` bytes per pixel are live at once in a StarDist
    U-Net of ``filters`` base filters; a quarter of the free memory (``available``
    bytes, measured when ``None``) may go to one tile, between
    :data:`MIN_TILE_PIXELS` and :data:`MAX_TILE_PIXELS`.
    """
    cap, floor = MAX_TILE_PIXELS[3 if ndim == 3 else 2], MIN_TILE_PIXELS[3 if ndim == 3 else 2]
    if available is None:
        available = _available_memory()
    if available is None:
        return cap
    per_pixel = 4 * (6 * max(1, filters) + 128) * (2 if ndim == 3 else 1)
    return int(min(cap, max(floor, available // 4 // per_pixel)))


# --------------------------------------------------------------------------- normalising


def normalize_percentiles(image: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """``float32`` copy with the ``low`` and ``high`` percentiles of its finite pixels at 0 and 1.

    Not clipped (as StarDist's ``csbdeep.utils.normalize``); non-finite pixels become 0,
    and a constant image becomes all zeros.
    """
    x = np.asarray(image, dtype=np.float32)
    finite = np.isfinite(x)
    all_finite = bool(finite.all())
    values = x if all_finite else x[finite]
    if values.size == 0:
        return np.zeros(x.shape, np.float32)
    lo, hi = (float(v) for v in np.percentile(values, (low, high)))
    out = (x - np.float32(lo)) / np.float32(max(hi - lo, 1e-20))
    if not all_finite:
        out[~finite] = 0.0
    return out.astype(np.float32, copy=False)


# --------------------------------------------------------------------------- TensorFlow side


class _ThreadSilencer(io.TextIOBase):
    """Stands in for ``sys.stdout``/``sys.stderr``: drops what some threads write, passes the rest."""

    def __init__(self, stream: Any, silenced: set[int]) -> None:
        self.stream = stream
        self.silenced = silenced

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if threading.get_ident() in self.silenced:
            return len(text)
        return int(self.stream.write(text))

    def flush(self) -> None:
        if threading.get_ident() not in self.silenced:
            self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence this thread's prints (Keras progress bars, StarDist's messages, tqdm).

    Other threads keep writing to the real streams, so a caller's own output is never lost.
    """
    me = threading.get_ident()
    for attr in ("stdout", "stderr"):
        current = getattr(sys, attr)
        if isinstance(current, _ThreadSilencer):
            current.silenced.add(me)
        else:
            setattr(sys, attr, _ThreadSilencer(current, {me}))
    try:
        yield
    finally:
        for attr in ("stdout", "stderr"):
            current = getattr(sys, attr)
            if isinstance(current, _ThreadSilencer):
                current.silenced.discard(me)
                if not current.silenced:
                    setattr(sys, attr, current.stream)


def _import_stardist() -> Any:
    """Import StarDist (and TensorFlow) quietly; only ever called where a model is used."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    try:
        import stardist.models as sdm
    except ImportError as exc:
        raise ImportError(
            f"The StarDist segmenter needs stardist and tensorflow ({exc}). "
            'Install them with: pip install "napari-phenotyper[stardist]".'
        ) from exc
    return sdm


def _gpus() -> list[Any]:
    import tensorflow as tf

    return list(tf.config.list_logical_devices("GPU"))


def _device_scope(device: str) -> contextlib.AbstractContextManager[Any]:
    """TensorFlow device scope for ``device`` (``auto``: TensorFlow's own placement)."""
    if device == "auto":
        return contextlib.nullcontext()
    import tensorflow as tf

    if device == "cpu":
        return tf.device("/CPU:0")
    gpus = _gpus()
    if not gpus:
        raise SegmentationError(
            "device='gpu' was asked for, but TensorFlow sees no GPU here; use device='auto' or 'cpu' "
            "(or install a GPU build of TensorFlow)."
        )
    return tf.device(gpus[0].name)


def _folder_stamp(folder: Path) -> float:
    """Latest modification time of a model folder's files (a retrained model reloads)."""
    return max((p.stat().st_mtime for p in folder.iterdir() if p.is_file()), default=0.0)


@dataclass(frozen=True)
class _Loaded:
    model: Any
    ndim: int
    n_channel_in: int
    filters: int


@model_cache(maxsize=2)
def _load_model(folder: str, stamp: float, device: str) -> _Loaded:
    """Load the StarDist model in ``folder`` (cached per folder, version and device)."""
    del stamp  # part of the cache key only
    sdm = _import_stardist()
    path = Path(folder)
    ndim = 2
    with contextlib.suppress(OSError, ValueError):
        import json

        ndim = int(json.loads((path / "config.json").read_text(encoding="utf-8")).get("n_dim", 2))
    cls = sdm.StarDist3D if ndim == 3 else sdm.StarDist2D
    with _device_scope(device), _quiet():
        model = cls(None, name=path.name, basedir=str(path.parent))
    model.basedir = None  # read-only: never write into the user's (or the cache's) folder
    cfg = model.config
    return _Loaded(model, ndim, int(cfg.n_channel_in), int(getattr(cfg, "unet_n_filter_base", 32)))


def _download_builtin(info: ModelInfo) -> ModelInfo:
    """Download a built-in model with StarDist's own code; socket operations time out."""
    sdm = _import_stardist()
    from csbdeep.models.pretrained import get_model_folder

    cls = sdm.StarDist3D if info.name.startswith("3D") else sdm.StarDist2D
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        with _quiet():
            get_model_folder(cls, info.name)
    except Exception as exc:
        raise ModelNotFoundError(
            missing_model_message("stardist", info.name, f"the download failed: {exc}")
        ) from exc
    finally:
        socket.setdefaulttimeout(old)
    return resolve_model("stardist", info.name, download=False)


def _model_for(params: StarDistParams) -> tuple[_Loaded, ModelInfo]:
    info = resolve_model("stardist", params.model)
    if not info.available or info.path is None:
        info = _download_builtin(info)
    assert info.path is not None
    return _load_model(str(info.path), _folder_stamp(info.path), params.device), info


def _drain(gen: Generator[Progress, None, np.ndarray]) -> np.ndarray:
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def _iter_predict(
    loaded: _Loaded, image: np.ndarray, params: StarDistParams, channels_last: bool
) -> Generator[Progress, None, np.ndarray]:
    """Normalise one plane (or volume) and predict its labels, one record per tile."""
    x = normalize_percentiles(image, params.norm_low, params.norm_high)
    spatial = x.shape[:-1] if channels_last else x.shape
    if loaded.n_channel_in > 1 and not channels_last:
        x = np.repeat(x[..., np.newaxis], loaded.n_channel_in, axis=-1)
        channels_last = True
    tiles = parse_n_tiles(params.n_tiles, loaded.ndim)
    if tiles is None:
        tiles = auto_n_tiles(tuple(spatial), tile_budget(loaded.ndim, loaded.filters))
    n_tiles = (*tiles, 1) if channels_last else tiles
    total = math.prod(tiles) + 1
    yield Progress(0, total, "Predicting" + (f" ({math.prod(tiles)} tiles)" if total > 2 else ""))
    gen = loaded.model._predict_instances_generator(
        x,
        n_tiles=n_tiles,
        prob_thresh=params.prob_thresh,
        nms_thresh=params.nms_thresh,
        show_tile_progress=False,
        verbose=False,
        predict_kwargs={"verbose": 0},
    )
    done, result = 0, None
    while True:
        with _device_scope(params.device):
            try:
                r = next(gen)
            except StopIteration:
                break
        if isinstance(r, str):
            if r == "tile":
                done += 1
                yield Progress(min(done, total - 1), total, f"Predicted tile {done}/{total - 1}")
            elif r == "nms":
                yield Progress(total - 1, total, "Non-maximum suppression")
        else:
            result = r
    if result is None:  # pragma: no cover - StarDist always ends with its result
        raise RuntimeError("StarDist returned no result.")
    labels = as_label_image(np.asarray(result[0]))
    yield Progress(total, total, f"Found {int(labels.max())} objects")
    return labels


class StarDistSegmenter:
    """StarDist star-convex nucleus segmentation (TensorFlow; see the module documentation).

    Models are loaded once per process and kept (:func:`~napari_phenotyper.core.engine.cache.model_cache`).
    """

    name: ClassVar[str] = "stardist"
    display_name: ClassVar[str] = "StarDist (deep learning)"
    params_type: ClassVar[type] = StarDistParams
    spatial_ndim: ClassVar[int] = 2

    def segment(
        self, image: np.ndarray, params: StarDistParams | None = None
    ) -> Generator[Progress, None, np.ndarray]:
        """Segment ``image`` with the model named in ``params``.

        ``image`` is 2-D (or ``(Y, X, C)`` for a model with ``C`` input channels), 3-D for
        a 3-D model, with any leading axes segmented plane by plane (volume by volume).

        Yields
        ------
        Progress
            While loading the model, then per tile (one plane) or per plane (stacks).

        Returns
        -------
        numpy.ndarray
            ``uint32`` labels, ids unique over the stack.

        Raises
        ------
        ModelNotFoundError
            If the model is not on disk and cannot be downloaded (the message says what to get).
        SegmentationError
            For an image the model cannot take.
        """
        params = StarDistParams() if params is None else params
        if not isinstance(params, StarDistParams):
            raise TypeError(f"Expected StarDistParams, got {type(params).__name__}.")
        arr = np.asarray(image)
        yield Progress(0, 0, f"Loading the StarDist model {params.model}")
        loaded, _info = _model_for(params)
        nd = loaded.ndim
        channels_last = (
            loaded.n_channel_in > 1 and arr.ndim == nd + 1 and arr.shape[-1] == loaded.n_channel_in
        )
        if channels_last:
            check_image(arr[..., 0], nd)
            return (yield from _iter_predict(loaded, arr, params, True))
        if nd == 3 and arr.ndim < 3:
            raise SegmentationError(
                f"The StarDist model {params.model!r} is 3-D: it needs a (Z, Y, X) image, got shape {arr.shape}."
            )
        arr = check_image(arr, nd)
        if arr.ndim == nd:
            return (yield from _iter_predict(loaded, arr, params, False))

        def one(plane: np.ndarray) -> np.ndarray:
            return _drain(_iter_predict(loaded, plane, params, False))

        return (yield from planewise(arr, one, nd, "StarDist"))

    def spatial_ndim_for(self, params: StarDistParams | None = None) -> int:
        """The model's dimensionality: 3 for a 3-D model (``3D_demo``, or a folder whose
        ``config.json`` says ``n_dim: 3``), else 2. Nothing is downloaded or loaded."""
        params = StarDistParams() if params is None else params
        try:
            info = resolve_model("stardist", params.model, download=False)
        except (ModelNotFoundError, ValueError):
            return 3 if str(params.model).startswith("3D") else 2
        ndim = (info.metadata or {}).get("ndim")
        return int(ndim) if ndim in (2, 3) else (3 if info.name.startswith("3D") else 2)

    def device(self, params: StarDistParams | None = None) -> str:
        """``"CPU (TensorFlow)"`` or ``"GPU (<name>, TensorFlow)"``.

        Asks TensorFlow only where it is already loaded (never imports it); elsewhere says
        what was asked for.
        """
        params = StarDistParams() if params is None else params
        if "tensorflow" not in sys.modules:
            return {"cpu": "CPU", "gpu": "GPU"}.get(params.device, "TensorFlow's choice (GPU if it sees one)")
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if params.device == "cpu" or not gpus:
            return "CPU (TensorFlow)"
        name = ""
        with contextlib.suppress(Exception):  # details are optional and backend-specific
            name = str(tf.config.experimental.get_device_details(gpus[0]).get("device_name", ""))
        return f"GPU ({name or gpus[0].name}, TensorFlow)"

    def model_info(self, params: StarDistParams | None = None) -> dict[str, Any]:
        """Provenance of the model ``params`` names (resolved here, nothing downloaded or loaded)."""
        params = StarDistParams() if params is None else params
        try:
            return describe_model(resolve_model("stardist", params.model, download=False))
        except ModelNotFoundError:
            return {"backend": "stardist", "name": params.model, "available": False}


def segment_job(
    image: np.ndarray, params: StarDistParams | None = None
) -> Generator[Progress, None, np.ndarray]:
    """:meth:`StarDistSegmenter.segment` as a module-level function (for ``EngineProcess.run``)."""
    return (yield from StarDistSegmenter().segment(image, params))
