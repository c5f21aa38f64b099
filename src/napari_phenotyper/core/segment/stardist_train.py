"""Training and fine-tuning StarDist 2-D models with StarDist's own training code.

:func:`iter_train_stardist` is a progress generator like every long operation in core:
it yields :class:`~napari_phenotyper.core.progress.Progress` while Keras trains (in a
worker thread, so that a record comes at least every second and cancelling takes effect
at the next batch), optimises the probability and NMS thresholds on a validation split,
and saves a model folder that the StarDist segmenter loads like any other:
``config.json``, ``weights_best.h5``, ``weights_last.h5``, ``thresholds.json`` and the
plugin's ``model.json`` (:data:`~napari_phenotyper.core.segment.models.METADATA_FILE`:
base model, backend, versions, date, training images with their SHA-256, parameters,
loss history, thresholds).

Run it in the engine process from a GUI (TensorFlow must not load in napari's
process); the CLI and tests may run it anywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import queue
import shutil
import threading
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from ..progress import Progress, TrainProgress
from .models import METADATA_FILE, resolve_model, write_metadata
from .stardist import _quiet, normalize_percentiles

__all__ = ["DEFAULT_CONFIG", "TrainResult", "array_sha256", "iter_train_stardist"]

#: Configuration used unless ``config`` overrides it (StarDist's ``Config2D`` defaults
#: otherwise). ``train_tensorboard`` is always off (TensorBoard logging fails with
#: TensorFlow 2.21 and is of no use here).
DEFAULT_CONFIG: Mapping[str, Any] = {
    "n_rays": 32,
    "grid": (2, 2),
    "train_patch_size": (256, 256),
    "train_batch_size": 4,
}

#: Architecture keys that fine-tuning cannot change (they shape the weights).
_ARCHITECTURE_PREFIXES = ("n_rays", "n_channel_in", "grid", "backbone", "unet_", "net_", "n_classes", "axes")


@dataclass(frozen=True)
class TrainResult:
    """What :func:`iter_train_stardist` returns.

    Parameters
    ----------
    path : str
        The saved model folder (load it by this path, or by ``name`` when it lies in
        ``models_dir() / "stardist"``).
    name : str
        The model's name (its folder name).
    thresholds : dict
        ``{"prob": ..., "nms": ...}`` optimised on the validation images.
    history : dict
        Per-epoch Keras logs (``loss``, ``val_loss``...), lists of floats.
    seconds : float
        Wall time of the whole run.
    n_train, n_val : int
        Images used for training and for validation / threshold optimisation.
    metadata : dict
        The ``model.json`` written into the folder.
    """

    path: str
    name: str
    thresholds: dict[str, float]
    history: dict[str, list[float]]
    seconds: float
    n_train: int
    n_val: int
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)


def array_sha256(array: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and pixel data (C order): identifies training images."""
    a = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in (
        "napari-phenotyper",
        "stardist",
        "csbdeep",
        "tensorflow",
        "tensorflow-cpu",
        "keras",
        "numpy",
    ):
        with contextlib.suppress(importlib_metadata.PackageNotFoundError):
            out[name] = importlib_metadata.version(name)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


#: Weights of the epoch with the best validation AP@0.5 (``score_validation``), while training.
_BEST_AP_WEIGHTS = "weights_bestap.h5"


def _validation_ap50(model: Any, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> float:
    """Mean AP@0.5 of ``model`` on normalised validation images (default thresholds)."""
    from ..evaluate import match_stats

    scores = []  # runs inside the training thread's _quiet() (not nested: leaving it would unmute)
    for x, y in zip(xs, ys, strict=True):
        pred, _ = model.predict_instances(x, show_tile_progress=False, verbose=False)
        scores.append(match_stats(y, pred, 0.5)[0.5].ap)
    return float(np.mean(scores)) if scores else math.nan


def _header(name: str, base_name: str | None) -> dict[str, Any]:
    """The ``model.json`` keys every saved model has, finished or cancelled."""
    return {
        "backend": "stardist",
        "name": name,
        "kind": "finetuned",
        "model_class": "StarDist2D",
        "base_model": base_name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
    }


def _save_cancelled(
    partial: Path,
    final: Path,
    model: Any,
    history: Mapping[str, list[float]],
    name: str,
    base_name: str | None,
    epochs: int,
) -> None:
    """Keep a cancelled run's best weights so far as a model folder (no threshold optimisation)."""
    best_ap, best_loss = partial / _BEST_AP_WEIGHTS, partial / "weights_best.h5"
    if best_ap.exists():
        os.replace(best_ap, best_loss)
    elif not best_loss.exists():
        model.keras_model.save_weights(str(best_loss))
    with contextlib.suppress(FileNotFoundError):
        (partial / "weights_now.h5").unlink()
    thresholds = {"prob": float(model.thresholds.prob), "nms": float(model.thresholds.nms)}
    (partial / "thresholds.json").write_text(json.dumps(thresholds), encoding="utf-8")
    write_metadata(
        partial,
        {
            **_header(name, base_name),
            "cancelled": True,
            "training": {
                "epochs": epochs,
                "epochs_run": len(next(iter(history.values()), [])),
                "history": {k: list(v) for k, v in history.items()},
            },
            "thresholds": thresholds,
        },
    )
    os.replace(partial, final)


def _check_data(
    images: Sequence[np.ndarray], masks: Sequence[np.ndarray], what: str
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if len(images) != len(masks):
        raise ValueError(f"{what}: {len(images)} images but {len(masks)} masks; give one mask per image.")
    xs, ys = [], []
    for i, (img, mask) in enumerate(zip(images, masks, strict=True)):
        x, y = np.asarray(img), np.asarray(mask)
        if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[-1] > 4):
            raise ValueError(
                f"{what} image {i} has shape {x.shape}: expected (Y, X) or (Y, X, C) with C <= 4."
            )
        if x.dtype.kind not in "uifb":
            raise ValueError(f"{what} image {i} has dtype {x.dtype}: expected numbers.")
        if y.shape != x.shape[:2]:
            raise ValueError(f"{what} mask {i} has shape {y.shape} but its image has {x.shape[:2]}.")
        if y.dtype.kind not in "iub" or (y.dtype.kind == "i" and y.size and y.min() < 0):
            raise ValueError(f"{what} mask {i} must be a label image of integers >= 0 (got {y.dtype}).")
        xs.append(x)
        ys.append(y)
    channels = {1 if x.ndim == 2 else x.shape[-1] for x in xs}
    if len(channels) > 1:
        raise ValueError(f"{what} images have different numbers of channels ({sorted(channels)}).")
    return xs, ys


def _pad_to(x: np.ndarray, y: np.ndarray, patch: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Pad an image (with 0, i.e. its low percentile) and mask (background) up to ``patch``."""
    pad = [(0, max(0, int(p) - s)) for p, s in zip(patch, y.shape, strict=True)]
    if not any(after for _, after in pad):
        return x, y
    xpad = pad + [(0, 0)] * (x.ndim - 2)
    return np.pad(x, xpad), np.pad(y, pad)


class _Augmenter:
    """Random flips, 90-degree turns of square patches and intensity changes (StarDist's example)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        if rng.random() < 0.5:
            x, y = x[::-1], y[::-1]
        if rng.random() < 0.5:
            x, y = x[:, ::-1], y[:, ::-1]
        if y.shape[0] == y.shape[1] and rng.random() < 0.5:
            x, y = np.swapaxes(x, 0, 1), y.T
        x = x * rng.uniform(0.6, 2.0) + rng.uniform(-0.2, 0.2)
        return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y)


def _base_config(base_model: str) -> tuple[dict[str, Any], Path, str]:
    """The base model's config, weights file and resolved name (downloaded if needed)."""
    from .stardist import _download_builtin

    info = resolve_model("stardist", base_model)
    if not info.available or info.path is None:
        info = _download_builtin(info)
    assert info.path is not None
    cfg = json.loads((info.path / "config.json").read_text(encoding="utf-8"))
    if int(cfg.get("n_dim", 2)) != 2:
        raise ValueError(
            f"The base model {base_model!r} is not a 2-D StarDist model; only 2-D training is supported."
        )
    weights = sorted(info.path.glob("*.h5"), key=lambda p: ("best" not in p.name, -p.stat().st_mtime))
    if not weights:
        raise FileNotFoundError(f"The base model folder {info.path} has no weights (*.h5).")
    return cfg, weights[0], info.name


def iter_train_stardist(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    config: Mapping[str, Any] | None = None,
    epochs: int = 20,
    steps_per_epoch: int = 50,
    out_dir: str | os.PathLike[str] | None = None,
    name: str = "stardist_model",
    base_model: str | None = None,
    seed: int = 0,
    *,
    validation: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None = None,
    val_fraction: float = 0.15,
    image_names: Sequence[str] | None = None,
    norm_low: float = 1.0,
    norm_high: float = 99.8,
    augment: bool = True,
    optimize_thresholds: bool = True,
    nms_threshs: Sequence[float] = (0.3, 0.4, 0.5),
    overwrite: bool = False,
    score_validation: bool = False,
    keep_on_cancel: bool = False,
) -> Generator[Progress, None, TrainResult]:
    """Train (or fine-tune) a StarDist 2-D model and save it with its metadata.

    Parameters
    ----------
    images : sequence of ndarray
        Training images, ``(Y, X)`` or ``(Y, X, C)``; any size (images smaller than the
        patch size are padded). Each is normalised to its ``norm_low`` / ``norm_high``
        percentiles, as the segmenter does before predicting.
    masks : sequence of ndarray
        Instance label images (0 = background), one per image.
    config : mapping, optional
        ``Config2D`` parameters over :data:`DEFAULT_CONFIG` (e.g. ``n_rays``, ``grid``,
        ``unet_n_depth``, ``train_patch_size``, ``train_learning_rate``). With
        ``base_model`` only ``train_*`` parameters may differ from the base model's.
    epochs, steps_per_epoch : int
        Length of the training (``epochs * steps_per_epoch`` batches).
    out_dir : path-like, optional
        Folder receiving the model folder ``out_dir / name``; default
        ``models_dir() / "stardist"``, where the segmenter finds it by ``name``.
    name : str
        Model (folder) name.
    base_model : str, optional
        Fine-tune this model (a name or path the segmenter accepts) instead of
        training from scratch: its architecture and weights are the starting point.
    seed : int
        Seeds the validation split, Keras, NumPy and the augmentations.
    validation : (images, masks), optional
        Validation data; by default ``val_fraction`` of the images (at least one) are
        set aside.
    val_fraction : float
        Share of the images set aside for validation when ``validation`` is not given.
    image_names : sequence of str, optional
        Names recorded in the metadata (default ``image_0``...).
    norm_low, norm_high : float
        Normalisation percentiles (recorded; use the same when segmenting).
    augment : bool
        Random flips, turns and intensity changes of the training patches.
    optimize_thresholds : bool
        Optimise the probability and NMS thresholds on the validation images (StarDist's
        ``optimize_thresholds``); otherwise StarDist's defaults are kept.
    nms_threshs : sequence of float
        NMS thresholds tried by the optimisation (each gets its best probability
        threshold; fewer is faster).
    overwrite : bool
        Replace an existing model folder of the same name.
    score_validation : bool
        Segment the validation images after every epoch and record their mean AP@0.5
        (``val_ap50`` in the history and the epoch's :class:`TrainProgress`). The saved
        model then holds the weights of the epoch with the best ``val_ap50`` (otherwise
        those with the lowest validation loss, as StarDist keeps them).
    keep_on_cancel : bool
        When the run is cancelled (the generator closed) after at least one epoch, save
        the best weights so far as the model (``model.json`` says ``"cancelled": true``;
        thresholds are not optimised). Otherwise a cancelled run leaves nothing behind.

    Yields
    ------
    Progress
        At least once a second while training (step = batches done); a
        :class:`TrainProgress` with the epoch's figures at the end of every epoch; then
        for the threshold optimisation and the saving.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        For inconsistent data or parameters (the message says which).
    FileExistsError
        If ``out_dir / name`` exists and ``overwrite`` is false.
    """
    from .models import models_dir

    t0 = time.perf_counter()
    if not isinstance(name, str) or not name.strip() or name.startswith(".") or os.sep in name:
        raise ValueError(f"name must be a plain folder name, got {name!r}.")
    for key, value in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{key} must be a whole number >= 1, got {value!r}.")
    if not 0 <= norm_low < norm_high <= 100:
        raise ValueError(f"Need 0 <= norm_low < norm_high <= 100, got {norm_low} and {norm_high}.")
    xs, ys = _check_data(images, masks, "Training")
    names = list(image_names) if image_names is not None else [f"image_{i}" for i in range(len(xs))]
    if len(names) != len(xs):
        raise ValueError(f"{len(names)} image names for {len(xs)} images.")
    if validation is not None:
        xv, yv = _check_data(validation[0], validation[1], "Validation")
        if not xv:
            raise ValueError("validation holds no images.")
        xt, yt = xs, ys
        split = ["train"] * len(xs) + ["validation"] * len(xv)
        record = [*zip(names, xs, ys, strict=True)] + [
            (f"validation_{i}", x, y) for i, (x, y) in enumerate(zip(xv, yv, strict=True))
        ]
    else:
        if len(xs) < 2:
            raise ValueError(
                "Give at least two images (one is set aside for validation), or pass validation=."
            )
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}.")
        order = np.random.default_rng(seed).permutation(len(xs))
        n_val = min(len(xs) - 1, max(1, round(val_fraction * len(xs))))
        val_idx = set(order[:n_val].tolist())
        xt = [x for i, x in enumerate(xs) if i not in val_idx]
        yt = [y for i, y in enumerate(ys) if i not in val_idx]
        xv = [x for i, x in enumerate(xs) if i in val_idx]
        yv = [y for i, y in enumerate(ys) if i in val_idx]
        split = ["validation" if i in val_idx else "train" for i in range(len(xs))]
        record = list(zip(names, xs, ys, strict=True))
    n_channel = 1 if xs[0].ndim == 2 else xs[0].shape[-1]
    if (1 if xv[0].ndim == 2 else xv[0].shape[-1]) != n_channel:
        raise ValueError("Validation images have a different number of channels than the training images.")

    base_cfg: dict[str, Any] | None = None
    base_weights: Path | None = None
    base_name: str | None = None
    config = dict(config or {})
    if base_model is not None:
        yield Progress(0, 0, f"Loading the base model {base_model}")
        base_cfg, base_weights, base_name = _base_config(base_model)
        clash = [
            k
            for k, v in config.items()
            if k.startswith(_ARCHITECTURE_PREFIXES) and _jsonable(v) != _jsonable(base_cfg.get(k))
        ]
        if clash:
            raise ValueError(
                f"Fine-tuning keeps the base model's architecture; these settings differ from "
                f"{base_model!r}: {', '.join(clash)}. Change only train_* settings."
            )
        if int(base_cfg.get("n_channel_in", 1)) != n_channel:
            raise ValueError(
                f"The base model {base_model!r} takes {base_cfg.get('n_channel_in')} channel(s); "
                f"the images have {n_channel}."
            )
        settings: dict[str, Any] = {
            **base_cfg,
            **{k: v for k, v in DEFAULT_CONFIG.items() if k.startswith("train_")},
            **config,
        }
    else:
        settings = {**DEFAULT_CONFIG, **config, "n_channel_in": n_channel}
    settings["train_tensorboard"] = False
    settings["use_gpu"] = False  # gputools (OpenCL) data generation: not a dependency

    target_root = Path(out_dir) if out_dir is not None else models_dir() / "stardist"
    final = target_root / name
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists; choose another name or pass overwrite=True.")
    target_root.mkdir(parents=True, exist_ok=True)
    partial = target_root / f".{name}.partial-{os.getpid()}"
    if partial.exists():
        shutil.rmtree(partial)

    yield Progress(0, 0, "Loading StarDist")
    from .stardist import _import_stardist

    sdm = _import_stardist()
    import keras
    from stardist import fill_label_holes

    keras.utils.set_random_seed(int(seed))
    conf = sdm.Config2D(**settings)
    if not conf.is_valid():
        raise ValueError("Invalid StarDist configuration: " + ", ".join(conf.is_valid(True)[1]))
    patch = tuple(int(p) for p in conf.train_patch_size)

    def prepare(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xn = normalize_percentiles(x, norm_low, norm_high)
        yn = fill_label_holes(y.astype(np.int32, copy=False))
        return _pad_to(xn, yn, patch)

    train_x, train_y = zip(*(prepare(x, y) for x, y in zip(xt, yt, strict=True)), strict=True)
    val_x, val_y = zip(*(prepare(x, y) for x, y in zip(xv, yv, strict=True)), strict=True)

    with _quiet():
        model = sdm.StarDist2D(conf, name=partial.name, basedir=str(target_root))
        if base_weights is not None:
            model.keras_model.load_weights(str(base_weights))
            base_thresholds = base_weights.parent / "thresholds.json"
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                t = json.loads(base_thresholds.read_text(encoding="utf-8"))
                # validation scores during training (and a cancelled run) use the base's thresholds
                model.thresholds = {"prob": float(t["prob"]), "nms": float(t["nms"])}
        model.prepare_for_training()

    total = int(epochs) * int(steps_per_epoch)
    updates: queue.Queue[tuple[str, Any]] = queue.Queue()
    stop = threading.Event()
    history: dict[str, list[float]] = {}

    class _Cancelled(Exception):
        """Raised in Keras's loop to end a cancelled training after its current batch."""

    class _Relay(keras.callbacks.Callback):
        """Reports batches and epochs to the generator; stops when asked."""

        def __init__(self) -> None:
            super().__init__()
            self.epoch = 0

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.epoch = epoch

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            updates.put(("batch", self.epoch * int(steps_per_epoch) + batch + 1))
            if stop.is_set():  # abort at once: no validation, no saving of a cancelled model
                raise _Cancelled

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            figures = {k: float(v) for k, v in (logs or {}).items()}
            if score_validation:
                ap = _validation_ap50(model, val_x, val_y)
                figures["val_ap50"] = ap
                if ap >= best_ap[0]:  # on a tie the later (longer trained) epoch wins
                    best_ap[0] = ap
                    model.keras_model.save_weights(str(partial / _BEST_AP_WEIGHTS))
            updates.put(("epoch", (epoch, figures)))

    model.callbacks.append(_Relay())
    best_ap = [-1.0]

    def work() -> None:
        try:
            with _quiet():
                model.train(
                    list(train_x),
                    list(train_y),
                    validation_data=(list(val_x), list(val_y)),
                    augmenter=_Augmenter(int(seed)) if augment else None,
                    seed=int(seed),
                    epochs=int(epochs),
                    steps_per_epoch=int(steps_per_epoch),
                )
                if stop.is_set():
                    updates.put(("stopped", None))
                    return
                if (partial / _BEST_AP_WEIGHTS).exists():  # the epoch with the best val AP wins
                    model.keras_model.load_weights(str(partial / _BEST_AP_WEIGHTS))
                    model.keras_model.save_weights(str(partial / "weights_best.h5"))
                    (partial / _BEST_AP_WEIGHTS).unlink()
                updates.put(("thresholds", None))
                if optimize_thresholds:
                    model.optimize_thresholds(
                        list(val_x), list(val_y), nms_threshs=[float(t) for t in nms_threshs]
                    )
                else:
                    with open(partial / "thresholds.json", "w", encoding="utf-8") as fh:
                        json.dump(
                            {"prob": float(model.thresholds.prob), "nms": float(model.thresholds.nms)}, fh
                        )
            updates.put(("done", None))
        except BaseException as exc:
            updates.put(("error", exc))

    thread = threading.Thread(target=work, name="stardist-training", daemon=True)
    steps = total + 2
    last = Progress(0, steps, f"Training: epoch 1/{epochs}")
    yield last
    thread.start()
    finished = False
    epoch_t0 = time.perf_counter()
    try:
        while True:
            try:
                kind, value = updates.get(timeout=1.0)
            except queue.Empty:
                yield Progress(last.step, last.total, last.message)  # heartbeat: a chance to cancel
                continue
            if kind == "batch":
                epoch = min(int(epochs), (value - 1) // int(steps_per_epoch) + 1)
                last = Progress(min(value, total), steps, f"Training: epoch {epoch}/{epochs}")
                yield last
            elif kind == "epoch":
                epoch, logs = value
                for k, v in logs.items():
                    history.setdefault(k, []).append(v)
                now = time.perf_counter()
                per_step = (now - epoch_t0) / int(steps_per_epoch)
                epoch_t0 = now
                loss = logs.get("val_loss", logs.get("loss", math.nan))
                msg = f"Epoch {epoch + 1}/{epochs}: loss {loss:.3f}"
                if "val_ap50" in logs:
                    msg += f", validation AP@0.5 {logs['val_ap50']:.3f}"
                last = TrainProgress(
                    (epoch + 1) * int(steps_per_epoch),
                    steps,
                    msg + f" ({per_step:.2f} s/step)",
                    epoch=epoch + 1,
                    epochs=int(epochs),
                    metrics=dict(logs),
                    seconds_per_step=per_step,
                )
                yield last
            elif kind == "thresholds":
                last = Progress(total, steps, "Optimising thresholds on the validation images")
                yield last
            elif kind == "done":
                break
            elif kind == "stopped":
                raise RuntimeError("Training stopped before the end.")  # pragma: no cover - only on cancel
            elif kind == "error":
                raise value
        finished = True
    finally:
        if not finished:  # cancelled (closed at a yield) or failed: Keras stops after its batch
            stop.set()
            thread.join(timeout=4)  # within the engine's grace period
            if not thread.is_alive():
                if keep_on_cancel and history and not final.exists():
                    with contextlib.suppress(Exception):
                        _save_cancelled(partial, final, model, history, name, base_name, int(epochs))
                shutil.rmtree(partial, ignore_errors=True)
    thread.join()

    thresholds = {"prob": float(model.thresholds.prob), "nms": float(model.thresholds.nms)}
    yield Progress(total + 1, steps, "Saving the model")
    metadata: dict[str, Any] = {
        **_header(name, base_name),
        "training": {
            "images": [
                {
                    "name": str(n),
                    "shape": list(x.shape),
                    "dtype": str(x.dtype),
                    "sha256": array_sha256(x),
                    "mask_sha256": array_sha256(y),
                    "n_objects": int(len(np.unique(y)) - (1 if (y == 0).any() else 0)),
                    "split": s,
                }
                for (n, x, y), s in zip(record, split, strict=True)
            ],
            "epochs": int(epochs),
            "epochs_run": len(next(iter(history.values()), [])),
            "steps_per_epoch": int(steps_per_epoch),
            "seed": int(seed),
            "augment": bool(augment),
            "normalization": {"low": float(norm_low), "high": float(norm_high)},
            "config": _jsonable(vars(model.config)),
            "thresholds_optimized": bool(optimize_thresholds),
            "nms_threshs": [float(t) for t in nms_threshs] if optimize_thresholds else [],
            "history": history,
            "seconds": round(time.perf_counter() - t0, 1),
        },
        "thresholds": thresholds,
    }
    if history.get("val_ap50"):
        metadata["validation"] = {
            "final_ap50": history["val_ap50"][-1],
            "best_ap50": max(history["val_ap50"]),
            "best_epoch": int(np.argmax(history["val_ap50"])) + 1,
        }
    with contextlib.suppress(FileNotFoundError):
        (partial / "weights_now.h5").unlink()
    write_metadata(partial, metadata)
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    yield Progress(steps, steps, f"Saved {name}")
    meta = json.loads((final / METADATA_FILE).read_text(encoding="utf-8"))
    return TrainResult(
        path=str(final),
        name=name,
        thresholds=thresholds,
        history=history,
        seconds=round(time.perf_counter() - t0, 1),
        n_train=len(train_x),
        n_val=len(val_x),
        metadata=meta,
    )
