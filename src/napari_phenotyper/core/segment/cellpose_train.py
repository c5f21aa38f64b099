"""Training and fine-tuning Cellpose models with cellpose's own training loop.

:func:`iter_train_cellpose` trains a model with ``cellpose.train.train_seg`` (cellpose
3.1.x or 4.x, whichever is installed) and saves it as a model folder that
:func:`~.cellpose_models.resolve_cellpose_model` finds by name::

    <models dir>/cellpose/<name>/
        weights.pth     the network's state dict, as cellpose saves it
        model.json      base model, cellpose / torch versions, training data hashes,
                        parameters, losses, date

How progress is reported: ``train_seg`` is one blocking call without callbacks, so it
runs in a worker thread. The network's ``train()`` method, which ``train_seg`` calls at
the start of every epoch, is shadowed on that one network object to report the epoch,
and a forward pre-hook checks for cancellation before every batch. The generator relays
one :class:`~..progress.Progress` per epoch (plus the losses that cellpose logs every ten
epochs) and a heartbeat every few seconds while cellpose prepares the data (flows are
computed before the first epoch). Closing the generator (cancel) stops the training at
the next batch. Calling ``train_seg`` chunk by chunk was rejected: each call restarts
cellpose's learning-rate warm-up and the optimiser state.

CPU traps handled here: cellpose 3 builds its network for MKL-DNN inference on CPUs
(``CellposeModel(mkldnn=True)``, the default) and converts its layers in place to MKL-DNN
modules at the first inference; such a network cannot be trained ("The MKLDNN backend does
not support weight as an MKLDNN tensor during training"). Training therefore builds a model
of its own with ``mkldnn=False`` (a ``CellposeModel`` argument; ``train_seg`` has none) and
never touches the cached inference models. Cellpose 4 models are built with
``use_bfloat16=False`` (bfloat16 weights would lose precision and are slow on CPUs without
AVX-512).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import math
import os
import platform
import queue
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Generator, Sequence
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from ..progress import Progress, TrainProgress
from .cellpose_models import (
    BACKEND,
    METADATA_FILE,
    WEIGHTS_FILE,
    CellposeModelInfo,
    cellpose_version,
    ensure_cellpose_weights,
    models_dir,
    resolve_cellpose_model,
)

__all__ = ["TrainingCancelled", "array_sha256", "iter_train_cellpose"]

#: ``format`` of model.json (shared with the other backends' fine-tuned models).
METADATA_FORMAT = "napari-phenotyper-model"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_LOG_LINE = re.compile(r"^(\d+), train_loss=([-\d.eE+naif]+), test_loss=([-\d.eE+naif]+)")
_HEARTBEAT_S = 2.0


class TrainingCancelled(RuntimeError):
    """Raised inside the training thread to stop ``train_seg`` at the next batch."""


def array_sha256(arr: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes (C order)."""
    a = np.ascontiguousarray(arr)
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_pairs(
    images: Sequence[np.ndarray], masks: Sequence[np.ndarray], what: str
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if len(images) != len(masks):
        raise ValueError(f"{what}: {len(images)} images but {len(masks)} masks.")
    imgs, labs = [], []
    for i, (img, lab) in enumerate(zip(images, masks, strict=True)):
        img, lab = np.asarray(img), np.asarray(lab)
        if img.ndim != 2:
            raise ValueError(
                f"{what}: image {i} has shape {img.shape}; single-channel 2-D images are expected."
            )
        if img.dtype.kind not in "uif":
            raise ValueError(f"{what}: image {i} has dtype {img.dtype}; expected integer or float pixels.")
        if lab.shape != img.shape:
            raise ValueError(f"{what}: mask {i} has shape {lab.shape} but its image has {img.shape}.")
        if lab.dtype.kind not in "iub" or (lab.dtype.kind == "i" and lab.size and lab.min() < 0):
            raise ValueError(f"{what}: mask {i} is not a label image (dtype {lab.dtype}).")
        imgs.append(img)
        labs.append(lab)
    return imgs, labs


class _LogRelay(logging.Handler):
    """Forwards cellpose's per-epoch loss log lines to the generator's queue."""

    def __init__(self, events: queue.Queue[tuple[str, Any]]) -> None:
        super().__init__(logging.INFO)
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        m = _LOG_LINE.match(record.getMessage())
        if m:
            self.events.put(("loss", (int(m.group(1)), float(m.group(2)), float(m.group(3)))))


def iter_train_cellpose(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    base_model: str | PathLike[str] | None = None,
    epochs: int = 100,
    learning_rate: float | None = None,
    out_dir: str | PathLike[str] | None = None,
    name: str = "cellpose_model",
    seed: int = 0,
    *,
    test_images: Sequence[np.ndarray] | None = None,
    test_masks: Sequence[np.ndarray] | None = None,
    batch_size: int | None = None,
    weight_decay: float | None = None,
    crop_size: int | None = None,
    images_per_epoch: int | None = None,
    diam_mean: float = 30.0,
    rescale: bool | None = None,
    min_train_masks: int = 1,
    device: str = "auto",
    overwrite: bool = False,
    score_validation: bool = False,
    val_every: int = 1,
    keep_on_cancel: bool = False,
) -> Generator[Progress, None, CellposeModelInfo]:
    """Train (or fine-tune) a Cellpose model with cellpose's ``train_seg`` and save it.

    Parameters
    ----------
    images, masks : sequences of numpy.ndarray
        Single-channel 2-D training images and their label images (0 = background).
    base_model : str, path or None
        Model to start from (anything :func:`~.cellpose_models.resolve_cellpose_model`
        accepts: ``cyto3``, ``nuclei``, ``cpsam``, a fine-tuned model's name, a file).
        ``None``: random initial weights, cellpose 3 only (cellpose 4 fine-tunes
        Cellpose-SAM and cannot start from scratch).
    epochs : int
        Passes over ``images_per_epoch`` images (cellpose warms the learning rate up over
        the first 10 epochs).
    learning_rate : float or None
        ``None``: cellpose's default (3.x: 0.005 with AdamW; 4.x: 1e-5).
    out_dir : path or None
        Folder that receives the model folder ``<out_dir>/<name>``. ``None``:
        ``<models dir>/cellpose`` (see :func:`~.cellpose_models.models_dir`), where the
        model is then found by its name.
    name : str
        Model (folder) name: letters, digits, ``.``, ``_``, ``-``.
    seed : int
        Seeds torch and numpy (initial weights, augmentation).
    test_images, test_masks : sequences of numpy.ndarray, optional
        Validation data: cellpose logs its loss every ten epochs.
    batch_size, weight_decay : optional
        ``None``: cellpose's defaults (3.x: 8 and 1e-5; 4.x: 1 and 0.1).
    crop_size : int or None
        Side of the square training crops (``bsize``); ``None``: cellpose's default
        (224 for cellpose 3; Cellpose-SAM needs 256).
    images_per_epoch : int or None
        Images drawn per epoch (``nimg_per_epoch``); ``None``: all of them.
    diam_mean : float
        Cellpose 3 from scratch: the diameter (pixels) objects are rescaled to.
    rescale : bool or None
        Rescale every training image so that its objects have the model's mean diameter
        (cellpose 3 default); ``None``: cellpose's default.
    min_train_masks : int
        Images with fewer objects are left out (cellpose's default is 5).
    device : {"auto", "cuda", "mps", "cpu"}
        Where to train (see :func:`~.cellpose.pick_device`).
    overwrite : bool
        Replace an existing model folder of that name.
    score_validation : bool
        Segment ``test_images`` every ``val_every`` epochs (and after the last) and record
        their mean AP@0.5 (``val_ap50``). The saved model then holds the weights of the
        scored epoch with the best ``val_ap50`` instead of the last epoch's.
    val_every : int
        Epochs between two validation scorings.
    keep_on_cancel : bool
        When the run is cancelled (the generator closed) after at least one epoch, save
        the best weights so far (the current ones without scoring) as the model, its
        ``model.json`` saying ``"cancelled": true``. Otherwise nothing is left behind.

    Yields
    ------
    Progress
        Once per epoch (``step`` = finished epochs of ``epochs``; a :class:`TrainProgress`
        with the epoch's mean training loss, and ``val_ap50`` when scored), and a
        heartbeat while cellpose prepares the data.

    Returns
    -------
    CellposeModelInfo
        The saved model, as :func:`~.cellpose_models.resolve_cellpose_model` describes it
        (``metadata`` holds ``model.json``).

    Raises
    ------
    ValueError
        For inconsistent data or parameters.
    FileExistsError
        If ``<out_dir>/<name>`` exists and ``overwrite`` is False.
    ModelNotFoundError
        If ``base_model`` is unknown or its weights are missing (offline).
    """
    from .cellpose import pick_device

    version = cellpose_version()
    if version is None:
        raise ImportError(
            'Cellpose is not installed. Install it with: pip install "napari-phenotyper[cellpose]".'
        )
    major = version[0]
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"Model name {name!r} must start with a letter or digit and use only letters, digits, '.', '_' and '-'."
        )
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a whole number >= 1, got {epochs!r}.")
    if learning_rate is not None and not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be a positive number, got {learning_rate!r}.")
    if not math.isfinite(diam_mean) or diam_mean <= 0:
        raise ValueError(f"diam_mean must be a positive number, got {diam_mean!r}.")
    if isinstance(val_every, bool) or not isinstance(val_every, int) or val_every < 1:
        raise ValueError(f"val_every must be a whole number >= 1, got {val_every!r}.")
    imgs, labs = _check_pairs(images, masks, "training data")
    if not imgs:
        raise ValueError("No training images were given.")
    test_imgs: list[np.ndarray] | None = None
    test_labs: list[np.ndarray] | None = None
    if test_images is not None or test_masks is not None:
        test_imgs, test_labs = _check_pairs(test_images or [], test_masks or [], "test data")
        if not test_imgs:
            test_imgs = test_labs = None
    if score_validation and test_imgs is None:
        raise ValueError("score_validation needs validation images (test_images and test_masks).")
    if base_model is None and major >= 4:
        raise ValueError(
            f"cellpose {'.'.join(map(str, version))} cannot train from scratch; give base_model (e.g. 'cpsam')."
        )
    root = Path(out_dir).expanduser() if out_dir is not None else models_dir() / BACKEND
    final = root / name
    if final.exists() and not overwrite:
        raise FileExistsError(
            f"A model named {name!r} already exists in {root}; choose another name or overwrite."
        )

    base: CellposeModelInfo | None = None
    base_path: Path | None = None
    if base_model is not None:
        base = resolve_cellpose_model(base_model)
        yield Progress(0, epochs, f"Getting base model {base.name}")
        base_path = ensure_cellpose_weights(base)

    yield Progress(0, epochs, "Loading cellpose")
    import torch
    from cellpose import models, train

    kind = pick_device(device)
    dev = torch.device(kind)
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - cellpose's augmentation draws from the global generator
    if major >= 4:
        model = models.CellposeModel(pretrained_model=str(base_path), device=dev, use_bfloat16=False)
    else:
        model = models.CellposeModel(
            pretrained_model=str(base_path) if base_path is not None else False,
            device=dev,
            mkldnn=False,  # MKL-DNN modules cannot be trained
            diam_mean=float(diam_mean),
        )
        if base is not None and base.kind == "builtin" and base.diam_mean is not None:
            model.net.diam_mean.data[:] = float(base.diam_mean)
    net = model.net

    signature = inspect.signature(train.train_seg).parameters
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".training", dir=root))
    kwargs: dict[str, Any] = {
        "train_data": [i.astype(np.float32) for i in imgs],
        "train_labels": [m.astype(np.int32) for m in labs],
        "test_data": None if test_imgs is None else [i.astype(np.float32) for i in test_imgs],
        "test_labels": None if test_labs is None else [m.astype(np.int32) for m in test_labs],
        "n_epochs": int(epochs),
        "save_path": str(work),
        "model_name": name,
        "save_every": 10**9,
        "min_train_masks": int(min_train_masks),
        "normalize": True,
    }
    optional = {
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "weight_decay": weight_decay,
        "bsize": crop_size,
        "nimg_per_epoch": images_per_epoch,
        "rescale": rescale,
    }
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    if "channels" in signature:
        kwargs["channels"] = [0, 0]
    kwargs = {k: v for k, v in kwargs.items() if k in signature}
    used = {
        k: kwargs.get(k, signature[k].default)
        for k in ("learning_rate", "batch_size", "weight_decay", "bsize", "nimg_per_epoch", "rescale")
        if k in signature
    }

    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    cancel = threading.Event()
    result: dict[str, Any] = {}
    epoch_counter = [0]
    original_train = net.train
    batch_losses: list[float] = []
    best: dict[str, Any] = {"ap": -1.0, "state": None, "epoch": 0}
    val_ap: dict[int, float] = {}
    original_loss = train._loss_fn_seg
    eval_diameter = _mean_diameter(labs) if major < 4 else None

    def loss_fn(lbl: Any, y: Any, dev_: Any) -> Any:
        loss = original_loss(lbl, y, dev_)
        if net.training:
            batch_losses.append(float(loss.item()))
        return loss

    def close_epoch(k: int) -> None:
        """Epoch ``k`` (0-based) has finished: score it if due and report it."""
        figures: dict[str, float] = {}
        if batch_losses:
            figures["loss"] = float(np.mean(batch_losses))
            batch_losses.clear()
        last_epoch = k == epochs - 1
        if score_validation and ((k + 1) % val_every == 0 or last_epoch):
            assert test_imgs is not None and test_labs is not None
            ap = _validation_ap50(model, major, test_imgs, test_labs, eval_diameter)
            figures["val_ap50"] = ap
            val_ap[k] = ap
            if ap >= best["ap"]:  # on a tie the later (longer trained) epoch wins
                best.update(
                    ap=ap,
                    epoch=k + 1,
                    state={n: t.detach().to("cpu", copy=True) for n, t in net.state_dict().items()},
                )
        events.put(("epoch_end", (k, figures)))

    def on_train(mode: bool = True) -> Any:
        if mode and not scoring[0]:
            if cancel.is_set():
                raise TrainingCancelled("training was cancelled")
            if epoch_counter[0] > 0:
                scoring[0] = True
                try:
                    close_epoch(epoch_counter[0] - 1)
                finally:
                    scoring[0] = False
                if cancel.is_set():
                    raise TrainingCancelled("training was cancelled")
            events.put(("epoch", epoch_counter[0]))
            epoch_counter[0] += 1
        return original_train(mode)

    scoring = [False]

    def before_batch(_module: Any, _inputs: Any) -> None:
        if cancel.is_set():
            raise TrainingCancelled("training was cancelled")

    def work_fn() -> None:
        try:
            result["out"] = train.train_seg(net, **kwargs)
            scoring[0] = True
            close_epoch(epoch_counter[0] - 1)
        except BaseException as exc:
            result["error"] = exc
        finally:
            events.put(("done", None))

    logger = logging.getLogger("cellpose.train")
    relay = _LogRelay(events)
    old_level = logger.level
    logger.addHandler(relay)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    net.train = on_train
    train._loss_fn_seg = loss_fn
    hook = net.register_forward_pre_hook(before_batch)
    t0 = time.perf_counter()
    thread = threading.Thread(target=work_fn, name=f"cellpose-train-{name}", daemon=True)
    last = Progress(0, epochs, "Preparing training data (computing flows)")
    losses: dict[int, tuple[float, float]] = {}
    history: dict[str, list[float]] = {}
    epoch_t0 = time.perf_counter()
    steps_per_epoch = max(1, math.ceil((images_per_epoch or len(imgs)) / int(used.get("batch_size") or 1)))
    try:
        thread.start()
        yield last
        finished = False
        while not finished:
            try:
                kind_ev, value = events.get(timeout=_HEARTBEAT_S)
            except queue.Empty:
                yield Progress(last.step, last.total, last.message)  # heartbeat
                continue
            if kind_ev == "done":
                finished = True
            elif kind_ev == "epoch":
                k = int(value)
                msg = f"Epoch {k + 1}/{epochs}"
                if losses:
                    e, tr, te = max(losses), *losses[max(losses)]
                    msg += (
                        f" (loss {tr:.3f}" + (f", test {te:.3f}" if test_imgs else "") + f" at epoch {e + 1})"
                    )
                last = Progress(k, epochs, msg)
                yield last
            elif kind_ev == "epoch_end":
                k, figures = value
                for key, v in figures.items():
                    history.setdefault(key, []).append(v)
                history.setdefault("epoch", []).append(float(k + 1))
                now = time.perf_counter()
                per_step = (now - epoch_t0) / steps_per_epoch
                epoch_t0 = now
                msg = f"Finished epoch {k + 1}/{epochs}"
                if "loss" in figures:
                    msg += f": loss {figures['loss']:.3f}"
                if "val_ap50" in figures:
                    msg += f", validation AP@0.5 {figures['val_ap50']:.3f}"
                last = TrainProgress(
                    k + 1,
                    epochs,
                    msg + f" ({per_step:.2f} s/step)",
                    epoch=k + 1,
                    epochs=epochs,
                    metrics=figures,
                    seconds_per_step=per_step,
                )
                yield last
            elif kind_ev == "loss":
                e, tr, te = value
                losses[int(e)] = (float(tr), float(te))
    finally:
        cancel.set()
        thread.join()
        hook.remove()
        train._loss_fn_seg = original_loss
        with contextlib.suppress(AttributeError):
            del net.train
        logger.removeHandler(relay)
        logger.setLevel(old_level)
        if "out" not in result:
            stopped = "error" not in result or isinstance(result["error"], TrainingCancelled)
            if keep_on_cancel and stopped and epoch_counter[0] > 1 and not final.exists():
                with contextlib.suppress(Exception):
                    _save_cancelled(
                        work,
                        final,
                        net,
                        best["state"],
                        name=name,
                        version=version,
                        base=base,
                        history=history,
                        epochs=epochs,
                    )
            shutil.rmtree(work, ignore_errors=True)
    if "error" in result:
        shutil.rmtree(work, ignore_errors=True)
        raise result["error"]
    seconds = time.perf_counter() - t0
    filename, train_losses, test_losses = result["out"]
    try:
        weights = work / WEIGHTS_FILE
        if best["state"] is not None and best["epoch"] != epochs:
            import torch

            net.load_state_dict(best["state"])
            torch.save(net.state_dict(), weights)
            Path(filename).unlink(missing_ok=True)
        else:
            os.replace(Path(filename), weights)
        shutil.rmtree(work / "models", ignore_errors=True)
        meta = _metadata(
            name=name,
            version=version,
            base=base,
            base_path=base_path,
            net=net,
            weights=weights,
            imgs=imgs,
            labs=labs,
            n_test=len(test_imgs) if test_imgs else 0,
            params={
                "epochs": int(epochs),
                **used,
                "min_train_masks": int(min_train_masks),
                "diam_mean": float(diam_mean) if base is None else None,
                "seed": int(seed),
                "device": kind,
            },
            seconds=seconds,
            train_losses=np.asarray(train_losses, dtype=float),
            test_losses=np.asarray(test_losses, dtype=float),
        )
        if val_ap:
            meta["training"]["history"]["val_ap50"] = {str(k + 1): v for k, v in sorted(val_ap.items())}
            meta["validation"] = {
                "final_ap50": val_ap[max(val_ap)],
                "best_ap50": best["ap"],
                "best_epoch": best["epoch"],
            }
        (work / METADATA_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    yield Progress(epochs, epochs, f"Saved model {name} ({seconds:.0f} s)")
    if out_dir is None:
        return resolve_cellpose_model(name)
    return resolve_cellpose_model(final)


def _mean_diameter(labs: Sequence[np.ndarray]) -> float | None:
    """Mean equivalent-circle diameter of the objects of label images (cellpose's measure)."""
    from cellpose import utils

    diams = [float(utils.diameters(lab)[0]) for lab in labs if lab.max() > 0]
    diams = [d for d in diams if math.isfinite(d) and d > 0]
    return float(np.mean(diams)) if diams else None


def _validation_ap50(
    model: Any, major: int, imgs: Sequence[np.ndarray], labs: Sequence[np.ndarray], diameter: float | None
) -> float:
    """Mean AP@0.5 of the network being trained on validation images."""
    from ..evaluate import match_stats

    scores = []
    for img, lab in zip(imgs, labs, strict=True):
        kwargs: dict[str, Any] = {"diameter": diameter, "normalize": True}
        if major < 4:
            kwargs["channels"] = [0, 0]
        pred = np.asarray(model.eval(np.asarray(img, dtype=np.float32), **kwargs)[0])
        scores.append(match_stats(lab, pred.reshape(lab.shape), 0.5)[0.5].ap)
    return float(np.mean(scores)) if scores else math.nan


def _header(name: str, net: Any, weights: Path, base: CellposeModelInfo | None) -> dict[str, Any]:
    """The ``model.json`` keys every saved model has, finished or cancelled."""
    return {
        "format": METADATA_FORMAT,
        "format_version": 1,
        "backend": BACKEND,
        "name": name,
        "kind": "finetuned",
        "weights": weights.name,
        "weights_sha256": _file_sha256(weights),
        "base_model": None if base is None else base.name,
        "diam_mean": float(net.diam_mean.item()),
        "diam_labels": float(net.diam_labels.item()),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _save_cancelled(
    work: Path,
    final: Path,
    net: Any,
    state: dict[str, Any] | None,
    *,
    name: str,
    version: tuple[int, ...],
    base: CellposeModelInfo | None,
    history: dict[str, list[float]],
    epochs: int,
) -> None:
    """Keep a cancelled run's best (or current) weights as a model folder."""
    import torch

    weights = work / WEIGHTS_FILE
    torch.save(state if state is not None else net.state_dict(), weights)
    meta = {
        **_header(name, net, weights, base),
        "cellpose_version": ".".join(map(str, version)),
        "cancelled": True,
        "training": {"epochs": epochs, "epochs_run": len(history.get("epoch", [])), "history": history},
    }
    (work / METADATA_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    os.replace(work, final)


def _json_float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _metadata(
    *,
    name: str,
    version: tuple[int, ...],
    base: CellposeModelInfo | None,
    base_path: Path | None,
    net: Any,
    weights: Path,
    imgs: list[np.ndarray],
    labs: list[np.ndarray],
    n_test: int,
    params: dict[str, Any],
    seconds: float,
    train_losses: np.ndarray,
    test_losses: np.ndarray,
) -> dict[str, Any]:
    def version_of(pkg: str) -> str:
        try:
            return importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            return "not installed"

    images = [
        {
            "shape": list(img.shape),
            "dtype": str(img.dtype),
            "sha256": array_sha256(img),
            "mask_sha256": array_sha256(lab),
            "n_objects": int(len(np.unique(lab)) - int((lab == 0).any())),
            "split": "train",
        }
        for img, lab in zip(imgs, labs, strict=True)
    ]
    return {
        **_header(name, net, weights, base),
        "base_model_kind": None if base is None else base.kind,
        "base_model_sha256": None if base_path is None else _file_sha256(base_path),
        "cellpose_version": version_of("cellpose"),
        "versions": {pkg: version_of(pkg) for pkg in ("napari-phenotyper", "cellpose", "torch", "numpy")}
        | {"python": platform.python_version()},
        "training": {
            "images": images,
            "n_test_images": n_test,
            **params,
            "history": {
                "loss": [_json_float(x) for x in train_losses.tolist()],
                "val_loss": [_json_float(x) for x in test_losses.tolist()],
            },
            "seconds": round(seconds, 1),
        },
    }
