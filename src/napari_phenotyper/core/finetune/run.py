"""Fine-tune a Cellpose or StarDist model on corrected masks: one request, one generator.

:func:`iter_finetune` is what the Fine-tune dock runs in the engine process and what
``napari-phenotyper finetune`` and ``benchmarks/finetune.py`` run directly. It checks the
request and the data, scores the base model on the validation pairs (the first point of
the live curve), trains with the backend's own training code
(:func:`~..segment.stardist_train.iter_train_stardist`,
:func:`~..segment.cellpose_train.iter_train_cellpose`), relays one
:class:`~..progress.TrainProgress` per epoch (loss, validation AP@0.5, time per step),
and saves the model under a name that is never taken yet: fine-tuning ``nuclei-ft``
twice gives ``nuclei-ft`` and ``nuclei-ft-v2``, so every earlier version stays
available in the segmenter's model list.

Safety: the model is written into a hidden folder and renamed into place when complete,
so a failed or cancelled run never overwrites (or half-writes) a model. A cancelled run
keeps the best weights so far only when ``keep_on_cancel`` asks for it, under the new
version's name.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..progress import Progress, TrainProgress
from .data import TrainingData, check_training_pairs

__all__ = [
    "BACKENDS",
    "FinetuneRequest",
    "FinetuneResult",
    "default_model_name",
    "default_settings",
    "iter_finetune",
    "next_version_name",
    "score_model",
]

BACKENDS: tuple[str, ...] = ("stardist", "cellpose")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_VERSION = re.compile(r"^(?P<stem>.+?)-v(?P<n>\d+)$")


@dataclass(frozen=True)
class FinetuneRequest:
    """Everything one fine-tuning run needs (picklable: it travels to the engine process).

    Parameters
    ----------
    backend : {"stardist", "cellpose"}
        Which library trains.
    base_model : str or None
        Model to start from: a built-in name, a model in the models folder (e.g. one
        fine-tuned earlier), or a path. ``None``: from scratch (StarDist, cellpose 3).
    images, masks : tuple of ndarray
        Training pairs (corrected label images, 0 = background).
    name : str
        Name of the new model; ``""`` gives ``<base>-ft``. Taken names get ``-v2``, ``-v3``...
    image_names : tuple of str
        Names of the training images (layer or file names), for messages and metadata.
    val_images, val_masks : tuple of ndarray
        Optional validation pairs: scored after every epoch (AP@0.5), the best epoch is
        kept, and StarDist optimises its thresholds on them.
    epochs : int or None
        ``None``: the backend's default (:func:`default_settings`).
    learning_rate : float or None
        ``None``: the backend's default for fine-tuning.
    steps_per_epoch : int or None
        StarDist: batches per epoch (``None``: default).
    patch_size : int or None
        Side of the square training patches (``None``: the backend's default, or the
        smallest image side when smaller, rounded down to a multiple of 16).
    batch_size : int or None
        Patches per step (``None``: default).
    seed : int
        Seeds the training.
    keep_on_cancel : bool
        Keep the best model so far when the run is cancelled.
    out_dir : str or None
        Folder of the backend's models (``None``: ``models_dir() / backend``).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``... (Cellpose; StarDist uses what TensorFlow sees).
    """

    backend: Literal["stardist", "cellpose"]
    base_model: str | None
    images: tuple[np.ndarray, ...]
    masks: tuple[np.ndarray, ...]
    name: str = ""
    image_names: tuple[str, ...] = ()
    val_images: tuple[np.ndarray, ...] = ()
    val_masks: tuple[np.ndarray, ...] = ()
    epochs: int | None = None
    learning_rate: float | None = None
    steps_per_epoch: int | None = None
    patch_size: int | None = None
    batch_size: int | None = None
    seed: int = 0
    keep_on_cancel: bool = False
    out_dir: str | None = None
    device: str = "auto"


@dataclass(frozen=True)
class FinetuneResult:
    """What :func:`iter_finetune` returns.

    Parameters
    ----------
    backend, name : str
        The new model's backend and name (as the segmenter's ``model`` parameter takes it
        when ``out_dir`` is the models folder).
    path : str
        The saved model (StarDist: its folder; Cellpose: its folder holding ``weights.pth``).
    base_model : str or None
        The starting model.
    history : dict of str to list of float
        Per-epoch ``epoch``, ``loss`` and, with validation, ``val_ap50``.
    val_ap50_before, val_ap50_best : float or None
        Validation AP@0.5 of the base model and of the kept epoch (None without validation).
    seconds : float
        Wall time of the training (base-model scoring excluded).
    metadata : dict
        The saved ``model.json``.
    """

    backend: str
    name: str
    path: str
    base_model: str | None
    history: dict[str, list[float]]
    val_ap50_before: float | None
    val_ap50_best: float | None
    seconds: float
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)


def _cellpose_major() -> int | None:
    from ..segment.cellpose_models import cellpose_version

    v = cellpose_version()
    return None if v is None else v[0]


def default_settings(backend: str) -> dict[str, Any]:
    """Defaults for fine-tuning with ``backend`` (what the dock shows and ``None`` means).

    StarDist: 20 epochs of 25 steps at StarDist's learning rate 3e-4 (with it, 500 steps on
    five corrected DSB images raised held-out AP@0.5 by 0.14: ``benchmarks/finetune.py``),
    256-pixel patches, 4 per step.
    Cellpose 3: 100 epochs at 5e-4 (a tenth of cellpose's from-scratch 0.005, which wrecked a
    small model within 30 epochs in ``benchmarks/finetune.py``: held-out AP@0.5 0.39 -> 0.00,
    against 0.39 -> 0.48 at 5e-4), AdamW, 224-pixel crops, 8 per step.
    Cellpose 4 (Cellpose-SAM): 100 epochs at 1e-5, 256-pixel crops, 1 per step; slow on
    a CPU (several seconds per step).
    """
    if backend == "stardist":
        return {
            "epochs": 20,
            "learning_rate": 3e-4,
            "steps_per_epoch": 25,
            "patch_size": 256,
            "batch_size": 4,
        }
    if backend == "cellpose":
        if (_cellpose_major() or 3) >= 4:
            return {
                "epochs": 100,
                "learning_rate": 1e-5,
                "steps_per_epoch": None,
                "patch_size": 256,
                "batch_size": 1,
            }
        return {
            "epochs": 100,
            "learning_rate": 5e-4,
            "steps_per_epoch": None,
            "patch_size": 224,
            "batch_size": 8,
        }
    raise ValueError(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")


def next_version_name(root: str | Path, name: str) -> str:
    """``name`` if ``root / name`` is free, else the next free ``<stem>-vN`` (N >= 2).

    ``nuclei-ft`` -> ``nuclei-ft-v2`` -> ``nuclei-ft-v3``; ``nuclei-ft-v2`` taken and
    asked for again gives ``nuclei-ft-v3``. Hidden partial folders are not names.
    """
    folder = Path(root)
    if not (folder / name).exists():
        return name
    m = _VERSION.match(name)
    stem = m.group("stem") if m else name
    taken = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    n = 2
    while f"{stem}-v{n}" in taken:
        n += 1
    return f"{stem}-v{n}"


def default_model_name(base_model: str | None) -> str:
    """The name a fine-tuned model gets unless the user names it: ``<base>-ft`` (``model`` from scratch)."""
    if base_model is None:
        return "model"
    stem = Path(str(base_model)).name
    stem = re.sub(r"\.(pth|pt|h5)$", "", stem)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-") or "model"
    return f"{stem}-ft"


def _check_request(req: FinetuneRequest) -> dict[str, Any]:
    """Validate the request's settings; return them with the defaults filled in."""
    if req.backend not in BACKENDS:
        raise ValueError(f"Unknown backend {req.backend!r}; choose one of {', '.join(BACKENDS)}.")
    name = req.name or default_model_name(req.base_model)
    if not _NAME.match(name):
        raise ValueError(
            f"Model name {name!r}: start with a letter or digit and use only letters, digits, '.', '_' and '-'."
        )
    settings = default_settings(req.backend)
    given = {
        "epochs": req.epochs,
        "learning_rate": req.learning_rate,
        "steps_per_epoch": req.steps_per_epoch,
        "patch_size": req.patch_size,
        "batch_size": req.batch_size,
    }
    for key in ("epochs", "steps_per_epoch", "patch_size", "batch_size"):
        v = given[key]
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
            raise ValueError(f"{key} must be a whole number >= 1, got {v!r}.")
    lr = given["learning_rate"]
    if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"learning_rate must be a positive number, got {lr!r}.")
    if req.patch_size is not None and req.patch_size % 16:
        raise ValueError(f"patch_size must be a multiple of 16, got {req.patch_size}.")
    settings.update({k: v for k, v in given.items() if v is not None})
    settings["name"] = name
    return settings


def _patch_for(data: TrainingData, wanted: int | None, default: int) -> int:
    """The patch side: ``wanted`` (checked against every image), else the default capped by the smallest image."""
    smallest = min(min(m.shape) for m in data.masks)
    if wanted is not None:
        return int(wanted)
    return int(max(16, min(default, smallest // 16 * 16)))


def _segment(
    backend: str, model: str, image: np.ndarray, extra: Mapping[str, Any] | None = None
) -> np.ndarray:
    """Labels from the plugin's own segmenter (the path 'apply' and 'evaluate' take)."""
    from ..progress import run
    from ..segment import get_segmenter

    segmenter = get_segmenter(backend)
    params = segmenter.params_type(model=model, **dict(extra or {}))
    return np.asarray(run(segmenter.segment(image, params)))


def score_model(
    backend: str, model: str, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]
) -> Generator[Progress, None, float]:
    """Mean AP@0.5 of ``model`` on image/mask pairs, segmented as the plugin segments.

    Parameters
    ----------
    backend : {"stardist", "cellpose"}
    model : str
        A name or path the segmenter's ``model`` parameter accepts.
    images, masks : sequences of ndarray
        Pairs to score (single-channel images for Cellpose).

    Returns
    -------
    float
    """
    from ..evaluate import match_stats

    scores = []
    for i, (x, y) in enumerate(zip(images, masks, strict=True)):
        yield Progress(i, len(images), f"Scoring {model} on validation image {i + 1}/{len(images)}")
        pred = _segment(backend, model, x)
        scores.append(match_stats(np.asarray(y), pred, 0.5)[0.5].ap)
    return float(np.mean(scores)) if scores else math.nan


def iter_finetune(request: FinetuneRequest) -> Generator[Progress, None, FinetuneResult]:
    """Fine-tune ``request.base_model`` on the request's pairs and save a new model version.

    Parameters
    ----------
    request : FinetuneRequest

    Yields
    ------
    Progress
        Loading and scoring the base model, then the training's records: a
        :class:`TrainProgress` per epoch. The first :class:`TrainProgress` (``epoch=0``)
        holds the base model's validation AP@0.5 when validation pairs were given.

    Returns
    -------
    FinetuneResult

    Raises
    ------
    ValueError
        For a bad request or bad pairs (the message names the image).
    ModelNotFoundError
        If the base model is unknown or missing offline.
    MemoryError
        Out of memory while training; the message suggests a smaller batch or patch.
    """
    settings = _check_request(request)
    backend = request.backend
    max_channels = 1 if backend == "cellpose" else 4
    names = request.image_names or tuple(f"image {i + 1}" for i in range(len(request.images)))
    train = check_training_pairs(request.images, request.masks, names, max_channels=max_channels)
    val: TrainingData | None = None
    if request.val_images or request.val_masks:
        val = check_training_pairs(
            request.val_images,
            request.val_masks,
            [f"validation {i + 1}" for i in range(len(request.val_images))],
            what="validation",
            max_channels=max_channels,
        )
    patch = _patch_for(train, request.patch_size, int(settings["patch_size"]))
    check_training_pairs(train.images, train.masks, train.names, min_side=patch, max_channels=max_channels)
    if backend == "cellpose" and request.base_model is None and (_cellpose_major() or 3) >= 4:
        raise ValueError(
            "Cellpose 4 fine-tunes Cellpose-SAM and cannot start from scratch: choose a base model."
        )

    from ..segment.models import models_dir

    root = Path(request.out_dir) if request.out_dir else models_dir() / backend
    name = next_version_name(root, settings["name"])

    before: float | None = None
    if val is not None and request.base_model is not None:
        yield Progress(0, 0, f"Scoring the base model {request.base_model} on the validation image(s)")
        before = yield from score_model(backend, request.base_model, val.images, val.masks)
        yield TrainProgress(
            0,
            0,
            f"Base model: validation AP@0.5 {before:.3f}",
            epoch=0,
            epochs=int(settings["epochs"]),
            metrics={"val_ap50": before},
        )

    t0 = time.perf_counter()
    try:
        if backend == "stardist":
            out = yield from _train_stardist(request, settings, train, val, patch, root, name)
        else:
            out = yield from _train_cellpose(request, settings, train, val, patch, root, name)
    except Exception as exc:
        if not _is_out_of_memory(exc):
            raise
        _free_memory()
        raise MemoryError(
            f"Out of memory while training ({type(exc).__name__}). Try a smaller batch size "
            f"(now {settings['batch_size']}) or patch size (now {patch}), or fewer or smaller images. "
            "Any earlier model is unchanged."
        ) from None
    seconds = time.perf_counter() - t0
    del out  # both trainers save to root / name
    new_name, path = name, root / name
    from ..segment.models import read_metadata, write_metadata

    meta = read_metadata(path) or {}
    history = _history(meta)
    best = None
    if history.get("val_ap50"):
        best = max(history["val_ap50"])
    meta["finetune"] = {
        "request": {
            k: v
            for k, v in asdict(request).items()
            if k not in ("images", "masks", "val_images", "val_masks")
        },
        "settings": {**settings, "patch_size": patch, "name": new_name},
        "image_names": list(train.names),
        "n_objects": train.n_objects,
        "n_validation": 0 if val is None else len(val),
        "val_ap50_before": before,
        "val_ap50_best": best,
        "version_of": _VERSION.sub(r"\g<stem>", new_name),
    }
    write_metadata(path, {k: v for k, v in meta.items() if k not in ("format", "format_version")})
    return FinetuneResult(
        backend=backend,
        name=new_name,
        path=str(path),
        base_model=request.base_model,
        history=history,
        val_ap50_before=before,
        val_ap50_best=best,
        seconds=round(seconds, 1),
        metadata=read_metadata(path) or {},
    )


def _history(meta: Mapping[str, Any]) -> dict[str, list[float]]:
    raw = (meta.get("training") or {}).get("history") or {}
    out: dict[str, list[float]] = {}
    for key, values in raw.items():
        if isinstance(values, Mapping):  # {"epoch": value}
            out[key] = [float(v) for _, v in sorted(values.items(), key=lambda kv: int(kv[0]))]
        elif isinstance(values, list):
            out[key] = [float(v) if v is not None else math.nan for v in values]
    return out


def _is_out_of_memory(exc: BaseException) -> bool:
    """Out of memory, as Python, torch (CPU or CUDA) or TensorFlow report it."""
    if isinstance(exc, MemoryError) or type(exc).__name__ in ("OutOfMemoryError", "ResourceExhaustedError"):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _free_memory() -> None:
    """Give memory back after a failed run: garbage, torch's CUDA cache, Keras's session."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    keras = sys.modules.get("keras")
    if keras is not None:
        with contextlib.suppress(Exception):
            keras.backend.clear_session()


def _train_stardist(
    req: FinetuneRequest,
    settings: Mapping[str, Any],
    train: TrainingData,
    val: TrainingData | None,
    patch: int,
    root: Path,
    name: str,
) -> Generator[Progress, None, Any]:
    from ..segment.stardist_train import iter_train_stardist

    config: dict[str, Any] = {
        "train_patch_size": (patch, patch),
        "train_batch_size": int(settings["batch_size"]),
        "train_learning_rate": float(settings["learning_rate"]),
    }
    # Without validation pairs every image trains, and StarDist's thresholds are tuned on the
    # training images (holding one of a handful of corrected images out costs more than it tells).
    if val is not None:
        validation = (list(val.images), list(val.masks))
    else:
        validation = (list(train.images), list(train.masks))
    return (
        yield from iter_train_stardist(
            list(train.images),
            list(train.masks),
            config=config,
            epochs=int(settings["epochs"]),
            steps_per_epoch=int(settings["steps_per_epoch"]),
            out_dir=root,
            name=name,
            base_model=req.base_model,
            seed=int(req.seed),
            validation=validation,
            image_names=list(train.names),
            score_validation=val is not None,
            keep_on_cancel=bool(req.keep_on_cancel),
        )
    )


def _train_cellpose(
    req: FinetuneRequest,
    settings: Mapping[str, Any],
    train: TrainingData,
    val: TrainingData | None,
    patch: int,
    root: Path,
    name: str,
) -> Generator[Progress, None, Any]:
    from ..segment.cellpose_train import iter_train_cellpose

    epochs = int(settings["epochs"])
    return (
        yield from iter_train_cellpose(
            list(train.images),
            list(train.masks),
            base_model=req.base_model,
            epochs=epochs,
            learning_rate=float(settings["learning_rate"]),
            out_dir=root,
            name=name,
            seed=int(req.seed),
            test_images=None if val is None else list(val.images),
            test_masks=None if val is None else list(val.masks),
            batch_size=int(settings["batch_size"]),
            crop_size=patch,
            min_train_masks=1,
            device=req.device,
            score_validation=val is not None,
            val_every=max(1, epochs // 20),
            keep_on_cancel=bool(req.keep_on_cancel),
        )
    )
