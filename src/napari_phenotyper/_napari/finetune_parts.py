"""The Fine-tune dock's job record and helpers: the frozen job, the engine job, model
version labels, a training-pair row, and the watcher that stops engines on undock."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    ComboBox,
    Container,
    PushButton,
)
from napari.layers import Image, Labels
from qtpy.QtCore import QEvent, QObject

from ..core.finetune import (
    FinetuneRequest,
    FinetuneResult,
    load_training_folder,
)
from ..core.params import field_specs
from ..core.progress import Progress
from ..core.segment import get_segmenter
from ..core.segment.models import ModelInfo
from .engine_worker import engine_job

if TYPE_CHECKING:
    from ..core.engine import EngineProcess
    from .finetune_widget import FinetuneWidget

__all__ = ["CANCEL_GRACE_S", "FINETUNE", "FinetuneJob", "finetune_job"]

#: The core function the engine process runs to fine-tune.
FINETUNE = "napari_phenotyper.core.finetune.run:iter_finetune"

#: Seconds a cancelled training has to stop (and, if asked, save the best model so far)
#: before its engine process is terminated.
CANCEL_GRACE_S = 30.0


# --------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class FinetuneJob:
    """A fine-tuning run as read from the dock: the request, and folders to read first.

    Parameters
    ----------
    request : FinetuneRequest
        With the training pairs when they come from layers (empty when from folders).
    images_dir, masks_dir : str or None
        Folders of training images and masks (read in the worker thread).
    val_images_dir, val_masks_dir : str or None
        Folders of validation images and masks.
    """

    request: FinetuneRequest
    images_dir: str | None = None
    masks_dir: str | None = None
    val_images_dir: str | None = None
    val_masks_dir: str | None = None


def finetune_job(
    job: FinetuneJob, engine: EngineProcess, should_cancel: Callable[[], bool] | None = None
) -> Generator[Progress, None, FinetuneResult]:
    """Read the job's folders (in this worker thread), then fine-tune in ``engine``.

    A generator for :func:`~.workers.start_job`; ``should_cancel`` is polled while the
    engine works (the Cancel button).
    """
    request = job.request
    if job.images_dir and job.masks_dir:
        yield Progress(0, 0, "Reading the training folders")
        data = load_training_folder(job.images_dir, job.masks_dir)
        request = replace(request, images=data.images, masks=data.masks, image_names=data.names)
    if job.val_images_dir and job.val_masks_dir:
        yield Progress(0, 0, "Reading the validation folders")
        val = load_training_folder(job.val_images_dir, job.val_masks_dir, what="validation")
        request = replace(request, val_images=val.images, val_masks=val.masks)
    result = yield from engine_job(engine.job(FINETUNE, request), should_cancel)
    return result


# --------------------------------------------------------------------------- helpers


def _level0(layer: Any) -> Any:
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def _plane_shape(layer: Image) -> tuple[int, ...]:
    shape = tuple(_level0(layer).shape)
    return shape[:-1] if layer.rgb else shape


def _default_base(backend: str) -> str | None:
    """The segmenter's default model (what "Segment & measure" uses when the field is empty)."""
    try:
        spec = next(s for s in field_specs(get_segmenter(backend).params_type) if s.name == "model")
    except (ImportError, KeyError, StopIteration):
        return None
    if spec.default is not None:
        return str(spec.default)
    if backend == "cellpose":
        from ..core.segment.cellpose_models import default_cellpose_model

        return default_cellpose_model()
    return None


def _cellpose_major() -> int | None:
    from ..core.segment.cellpose_models import cellpose_version

    v = cellpose_version()
    return None if v is None else v[0]


def _gpu_known() -> bool:
    """Whether torch, already loaded here, sees a GPU (never imports torch)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    try:
        return bool(torch.cuda.is_available() or torch.backends.mps.is_available())
    except (AttributeError, RuntimeError):
        return False


def _best_ap(info: ModelInfo) -> float | None:
    ft = info.metadata.get("finetune") or {}
    value = ft.get("val_ap50_best") if isinstance(ft, dict) else None
    if value is None:
        hist = ((info.metadata.get("training") or {}).get("history") or {}).get("val_ap50")
        values = list(hist.values()) if isinstance(hist, dict) else hist
        finite = [float(v) for v in values or () if v is not None and math.isfinite(float(v))]
        value = max(finite) if finite else None
    return None if value is None else float(value)


def _created(info: ModelInfo) -> str:
    created = str(info.metadata.get("created") or "")
    if not created and info.path is not None:
        with contextlib.suppress(OSError):
            created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(Path(info.path).stat().st_mtime))
    return created


def _version_label(info: ModelInfo) -> str:
    ap = _best_ap(info)
    parts = [info.name]
    parts.append(f"val AP@0.5 {ap:.3f}" if ap is not None else "no validation")
    created = _created(info)
    if created:
        parts.append(created[:16].replace("T", " "))
    if info.metadata.get("cancelled"):
        parts.append("cancelled")
    return " · ".join(parts)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# --------------------------------------------------------------------------- one training pair


class _PairRow(Container):
    """One training pair: an image layer and its corrected labels layer, with a remove button."""

    def __init__(self, owner: FinetuneWidget) -> None:
        self.labels_layer = ComboBox(
            label="labels",
            choices=owner._labels_choices,
            nullable=True,
            tooltip="The corrected labels layer (instance labels, 0 = background)",
        )
        self.image_layer = ComboBox(
            label="image",
            choices=owner._image_choices,
            nullable=True,
            tooltip="The image the labels were drawn on (found from the labels layer when possible)",
        )
        self.remove_button = PushButton(text="✕", tooltip="Remove this pair")
        self.remove_button.max_width = 32
        super().__init__(
            widgets=[self.labels_layer, self.image_layer, self.remove_button],
            layout="horizontal",
            labels=False,
        )
        self.margins = (0, 0, 0, 0)
        self._owner = owner
        self.labels_layer.changed.connect(self._on_labels)

    def _on_labels(self, layer: Labels | None) -> None:
        if layer is not None:
            self.image_layer.value = self._owner.source_image(layer)


# --------------------------------------------------------------------------- the dock


class _UndockWatcher(QObject):
    """Calls :meth:`FinetuneWidget.close_widget` when the widget leaves its dock (the dock was closed)."""

    def __init__(self, widget: FinetuneWidget) -> None:
        super().__init__()
        self._widget = widget
        self._docked = False

    def eventFilter(self, obj: Any, event: Any) -> bool:  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.ParentChange:
            docked = obj.parent() is not None
            if self._docked and not docked:
                self._widget.close_widget()
            self._docked = docked
        return False


def _closer(
    engines: dict[str, EngineProcess], owned: set[str], widget: FinetuneWidget
) -> Callable[..., None]:
    """A slot for the dock's ``destroyed`` signal: cancel the job, stop the engines this widget started.

    It holds no Qt object: by the time it runs the widget's Qt side is gone.
    """
    import weakref

    ref = weakref.ref(widget)

    def close(*_args: Any) -> None:
        w = ref()
        if w is not None:
            w._apply_queue.clear()
            worker = w._worker
            if worker is not None:
                with contextlib.suppress(RuntimeError):
                    worker.quit()
        for backend in list(owned):
            engines[backend].shutdown()

    return close
