"""The "Fine-tune" dock widget: controls only, the training happens in core, in an engine process.

A biologist segments an image, corrects the labels with napari's paint / erase / fill
tools, picks the (image, corrected labels) pairs here and starts
:func:`~napari_phenotyper.core.finetune.run.iter_finetune`. It runs in an
:class:`~napari_phenotyper.core.engine.EngineProcess` owned by this widget, one per
backend (TensorFlow must never load into napari's process, and torch and TensorFlow
never share one). Every epoch's :class:`~napari_phenotyper.core.progress.TrainProgress`
updates a live plot of the training loss and the validation AP@0.5. The new model is
saved under a fresh name (``<base>-ft``, ``<base>-ft-v2``...), listed with the earlier
versions, and can be applied to every image of the viewer: each image's result labels
layer is updated in place (so the Phenotypes dock carries its annotations over by
overlap), and open "Segment & measure" docks are told to list their models again.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.types import FileDialogMode
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import QFrame, QScrollArea

from ..core.features import DEFAULT_FEATURE_GROUPS, FEATURE_GROUPS, FEATURE_SETS
from ..core.finetune import BACKENDS as FINETUNE_BACKENDS
from ..core.finetune import (
    FinetuneRequest,
    FinetuneResult,
    check_training_pairs,
    default_model_name,
    default_settings,
    load_training_folder,
    next_version_name,
)
from ..core.params import field_specs
from ..core.pipeline import MeasureParams, SegmentResult, select_channel
from ..core.progress import Progress, TrainProgress
from ..core.segment import get_segmenter
from ..core.segment.models import ModelInfo, list_models, models_dir
from ..core.segment.registry import available
from .docking import settle_when_docked
from .engine_worker import engine_job
from .layers import find_result_layer, source_of, upsert_labels
from .params_form import ModelChooser, compact_widths
from .workers import SegmentRequest, segment_job, start_job, user_message

if TYPE_CHECKING:
    import napari

    from ..core.engine import EngineProcess

__all__ = ["FINETUNE", "FinetuneJob", "FinetuneWidget", "finetune_job"]

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


class FinetuneWidget(Container):
    """Fine-tune a StarDist or Cellpose model on corrected labels, in the background.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer whose layers provide the training pairs and receive the new labels.
    engines : mapping of backend -> EngineProcess, optional
        Engine processes to train and segment in (e.g. shared with a test). By default
        the widget starts one per backend on first use and stops them when it is closed
        (:meth:`close_widget`).
    on_model_saved : callable, optional
        Called with ``(backend, model_name)`` after a model was saved (also a best-so-far
        model kept on cancel), besides telling every docked widget that has a
        ``refresh_models(select=None)`` method (the "Segment & measure" dock).
    """

    def __init__(
        self,
        napari_viewer: napari.viewer.Viewer,
        engines: dict[str, EngineProcess] | None = None,
        on_model_saved: Callable[[str, str], None] | None = None,
    ) -> None:
        self.viewer = napari_viewer
        self._engines: dict[str, EngineProcess] = dict(engines or {})
        self._owned: set[str] = set()  # backends whose engine this widget started (and stops)
        self._on_model_saved = on_model_saved
        self._worker: Any = None
        self._running_engine: EngineProcess | None = None
        self._mode = ""  # "train" or "apply" while a job runs
        self._models_before: set[str] = set()
        self._keep_requested = False
        self._training_layers: set[str] = set()  # unique ids of the labels layers trained on
        self._apply_queue: list[Image] = []
        self._apply_total = 0
        self._apply_done = 0
        self._apply_model = ""
        self._apply_stopped = False
        self._apply_skipped = 0
        self._t_epochs: list[tuple[float, int]] = []
        self._sps: float | None = None
        self._setting_name = False
        self._name_edited = False
        self.result: FinetuneResult | None = None
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.base: ModelChooser | None = None
        self._has_steps = False  # the backend trains a set number of steps per epoch (StarDist)

        backends = [
            (spec.display_name, name) for name, spec in available().items() if name in FINETUNE_BACKENDS
        ]
        self.backend = ComboBox(
            label="backend",
            choices=backends,
            value=backends[0][1] if backends else None,
            tooltip="The deep-learning library to fine-tune (only installed ones are listed)",
        )
        self.base_box: Container[Any] = Container(labels=False, label="base model")
        self.base_box.margins = (0, 0, 0, 0)
        self.source = ComboBox(
            label="training data",
            choices=[
                ("(image, labels) layers in the viewer", "layers"),
                ("folders of images and masks", "folders"),
            ],
            value="layers",
        )
        self.pairs_box: Container[Any] = Container(labels=False)
        self.pairs_box.margins = (0, 0, 0, 0)
        self.add_pair = PushButton(text="Add a pair", tooltip="Train on one more (labels, image) pair")
        self.images_dir = FileEdit(
            mode=FileDialogMode.EXISTING_DIRECTORY, label="images folder", tooltip="Folder of training images"
        )
        self.masks_dir = FileEdit(
            mode=FileDialogMode.EXISTING_DIRECTORY,
            label="masks folder",
            tooltip="Folder of label masks, paired with the images by file name (a1.png <-> a1.tif or a1_mask.tif)",
        )
        self.val_labels = ComboBox(
            label="validation labels",
            choices=self._labels_choices,
            nullable=True,
            value=None,
            tooltip="Optional: corrected labels of an image NOT used for training; scored after every epoch (AP@0.5)",
        )
        self.val_image = ComboBox(
            label="validation image", choices=self._image_choices, nullable=True, value=None
        )
        self.val_images_dir = FileEdit(
            mode=FileDialogMode.EXISTING_DIRECTORY, label="validation images", tooltip="Optional folder"
        )
        self.val_masks_dir = FileEdit(
            mode=FileDialogMode.EXISTING_DIRECTORY, label="validation masks", tooltip="Optional folder"
        )
        self.epochs = SpinBox(label="epochs", min=1, max=100_000, value=20)
        self.learning_rate = LineEdit(label="learning rate", value="1e-4", tooltip="e.g. 1e-4")
        self.steps_per_epoch = SpinBox(
            label="steps per epoch", min=1, max=100_000, value=25, tooltip="Batches per epoch (StarDist)"
        )
        self.patch_size = SpinBox(
            label="patch size",
            min=16,
            max=4096,
            step=16,
            value=256,
            tooltip="Side of the square training patches, a multiple of 16 (not larger than the smallest image)",
        )
        self.batch_size = SpinBox(label="batch size", min=1, max=1024, value=4, tooltip="Patches per step")
        self.model_name = LineEdit(
            label="new model name", tooltip="Taken names get -v2, -v3...; nothing is overwritten"
        )
        self.name_hint = Label(value="")
        self.name_hint.native.setWordWrap(True)
        self.keep_best = CheckBox(
            text="keep the best so far if cancelled",
            value=False,
            tooltip="When you cancel after at least one epoch, save the best epoch's weights (marked 'cancelled')",
        )
        self.warning = Label(value="")
        self.warning.native.setWordWrap(True)
        self.start_button = PushButton(text="Start")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        buttons = Container(
            widgets=[self.start_button, self.cancel_button], layout="horizontal", labels=False
        )
        self.progress = ProgressBar(min=0, max=1000, value=0, label="progress")
        self.status = Label(value="Ready.")
        self.status.native.setWordWrap(True)

        # the live plot: training loss (left axis) and validation AP@0.5 (right axis) per epoch
        self.figure = Figure(figsize=(4.0, 2.8), dpi=100, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(220)
        self.ax = self.figure.add_subplot()
        self.ax_ap = self.ax.twinx()
        (self.loss_line,) = self.ax.plot([], [], "o-", color="tab:blue", label="training loss", ms=3)
        (self.val_loss_line,) = self.ax.plot([], [], "s--", color="tab:cyan", label="validation loss", ms=3)
        (self.ap_line,) = self.ax_ap.plot([], [], "D-", color="tab:orange", label="validation AP@0.5", ms=4)
        self._style_plot()
        plot_box: Container[Any] = Container(labels=False)
        plot_box.margins = (0, 0, 0, 0)
        plot_box.native.layout().addWidget(self.canvas)

        self.result_label = Label(value="")
        self.result_label.native.setWordWrap(True)
        self.versions = ComboBox(label="model versions", choices=[], nullable=True, value=None)
        self.versions.tooltip = (
            "Fine-tuned models of this backend, newest first (validation AP@0.5 of the kept epoch)"
        )
        self.skip_training = CheckBox(
            text="skip the training images",
            value=True,
            tooltip="Do not replace the labels you corrected and trained on with the model's prediction",
        )
        self.apply_button = PushButton(
            text="Apply to all images",
            tooltip="Re-segment every image layer with the chosen model; result layers are updated in place",
        )
        # napari docks a magicgui widget's ``native``, which for ``scrollable=True`` is the
        # inner widget without its scroll area (left behind, it kept resizing the inner widget
        # to its own 640 px, wider than the dock): the scroll area is ours, inside the dock.
        self.form: Container[Any] = Container(
            widgets=[
                self.backend,
                self.base_box,
                self.source,
                self.pairs_box,
                self.add_pair,
                self.images_dir,
                self.masks_dir,
                self.val_labels,
                self.val_image,
                self.val_images_dir,
                self.val_masks_dir,
                self.epochs,
                self.learning_rate,
                self.steps_per_epoch,
                self.patch_size,
                self.batch_size,
                self.model_name,
                self.name_hint,
                self.keep_best,
                self.warning,
                buttons,
                self.progress,
                self.status,
                plot_box,
                self.result_label,
                self.versions,
                self.skip_training,
                self.apply_button,
            ],
        )
        super().__init__(labels=False)
        self.margins = (0, 0, 0, 0)
        self.scroll_area = QScrollArea()
        self.scroll_area.setWidgetResizable(True)
        self.scroll_area.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll_area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll_area.setWidget(self.form.native)
        self.native.layout().addWidget(self.scroll_area)
        compact_widths(self.native)
        settle_when_docked(self.native)

        self.backend.changed.connect(self._on_backend_changed)
        self.source.changed.connect(self._on_source_changed)
        self.add_pair.changed.connect(lambda _v=None: self.add_row())
        self.val_labels.changed.connect(self._on_val_labels)
        self.model_name.changed.connect(self._on_name_edited)
        self.start_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.apply_button.changed.connect(self.apply_to_all)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        # stop the engine processes this widget started when its dock is closed: napari
        # takes the widget out of its dock (parent -> None) or deletes it with the window
        self.native.destroyed.connect(_closer(self._engines, self._owned, self))
        self._undock_watcher = _UndockWatcher(self)
        self.native.installEventFilter(self._undock_watcher)

        self._on_backend_changed(self.backend.value)
        self._on_source_changed(self.source.value)
        self._start_from(self.add_row().labels_layer.value, [n for _, n in backends])
        if not backends:
            self.start_button.enabled = self.apply_button.enabled = False
            self.status.value = (
                "Neither StarDist nor Cellpose is installed: pip install 'napari-phenotyper[stardist]' "
                "or 'napari-phenotyper[cellpose]'."
            )

    def _start_from(self, labels: Labels | None, backends: list[str]) -> None:
        """Preset the backend and base model to those that segmented ``labels`` (our provenance)."""
        prov = source_of(labels) if labels is not None else {}
        backend, model = prov.get("backend"), (prov.get("params") or {}).get("model")
        if backend not in backends:
            return
        if backend != self.backend.value:
            self.backend.value = backend
        if isinstance(model, str) and model and self.base is not None:
            self.base.value = model

    # ---- choices ---------------------------------------------------------------------
    def _image_choices(self, _w: Any = None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _labels_choices(self, _w: Any = None) -> list[tuple[str, Labels]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Labels)]

    def _refresh_layers(self, _event: Any = None) -> None:
        for row in self.rows:
            row.labels_layer.reset_choices()
            row.image_layer.reset_choices()
        self.val_labels.reset_choices()
        self.val_image.reset_choices()

    @property
    def rows(self) -> list[_PairRow]:
        """The training pairs' rows."""
        return [w for w in self.pairs_box if isinstance(w, _PairRow)]

    def source_image(self, labels: Labels) -> Image | None:
        """The image a labels layer was drawn on: from our provenance, else the first image of its shape."""
        images = [layer for layer in self.viewer.layers if isinstance(layer, Image)]
        sid = source_of(labels).get("source_layer_id")
        for img in images:
            if sid is not None and str(img.unique_id) == str(sid):
                return img
        shape = tuple(_level0(labels).shape)
        return next((img for img in images if _plane_shape(img) == shape), None)

    def add_row(self, labels: Labels | None = None, image: Image | None = None) -> _PairRow:
        """Add a training pair (by default the selected, else the first, labels layer not used yet)."""
        row = _PairRow(self)
        row.remove_button.changed.connect(lambda _v=None: self.remove_row(row))
        if labels is None:
            used = {id(r.labels_layer.value) for r in self.rows}
            candidates = [lyr for _, lyr in self._labels_choices() if id(lyr) not in used]
            selected = [lyr for lyr in candidates if lyr in self.viewer.layers.selection]
            labels = (selected or candidates or [None])[0]
        row.labels_layer.value = labels
        if image is not None:
            row.image_layer.value = image
        elif labels is not None:
            row.image_layer.value = self.source_image(labels)
        self.pairs_box.append(row)
        compact_widths(row.native)
        return row

    def remove_row(self, row: _PairRow) -> None:
        """Remove a training pair."""
        if row in self.rows:
            self.pairs_box.remove(row)

    def _on_val_labels(self, layer: Labels | None) -> None:
        if layer is not None:
            self.val_image.value = self.source_image(layer)

    def _on_source_changed(self, mode: str | None) -> None:
        layers = mode != "folders"
        layer_controls: list[Any] = [self.pairs_box, self.add_pair, self.val_labels, self.val_image]
        folder_controls: list[Any] = [
            self.images_dir,
            self.masks_dir,
            self.val_images_dir,
            self.val_masks_dir,
        ]
        for w in layer_controls:
            w.visible = layers
        for w in folder_controls:
            w.visible = not layers

    def _on_backend_changed(self, backend: str | None) -> None:
        self.base_box.clear()
        self.base = None
        if backend is None:
            return
        cp_major = _cellpose_major() if backend == "cellpose" else None
        scratch_ok = backend == "stardist" or (cp_major or 3) < 4
        # an empty field means "from scratch" here (not the segmenter's default model), so
        # the chooser is not "optional"; "" becomes None in request()
        self.base = ModelChooser(
            backend,
            _default_base(backend),
            label="base model",
            tooltip="The model to start from: a built-in, one fine-tuned earlier, or Browse… for a folder/file",
        )
        line = self.base.combo.lineEdit()
        if line is not None:
            line.setPlaceholderText("empty: train from scratch" if scratch_ok else "choose a base model")
        self.base_box.append(self.base)
        compact_widths(self.base.native)
        self.base.combo.currentTextChanged.connect(self._on_base_changed)
        settings = default_settings(backend)
        self.epochs.value = int(settings["epochs"])
        self.learning_rate.value = f"{settings['learning_rate']:g}"
        self.patch_size.value = int(settings["patch_size"])
        self.batch_size.value = int(settings["batch_size"])
        sd = settings.get("steps_per_epoch")
        self._has_steps = sd is not None
        self.steps_per_epoch.visible = sd is not None
        if sd is not None:
            self.steps_per_epoch.value = int(sd)
        if backend == "cellpose" and (cp_major or 0) >= 4 and not _gpu_known():
            self.warning.value = (
                "⚠ Cellpose 4 (Cellpose-SAM) trains slowly without a GPU: several seconds per step on a "
                "CPU, so hours for the default epochs. The status line shows the time per step; "
                "try a few epochs first."
            )
            self.warning.visible = True
        else:
            self.warning.value = ""
            self.warning.visible = False
        self._name_edited = False
        self._on_base_changed()
        self.refresh_versions()

    def _on_base_changed(self, _text: str = "") -> None:
        if not self._name_edited and self.base is not None:
            self._setting_name = True
            try:
                self.model_name.value = default_model_name(self.base.value or None)
            finally:
                self._setting_name = False
        self._update_name_hint()

    def _on_name_edited(self, _value: str = "") -> None:
        if not self._setting_name:
            self._name_edited = bool(str(self.model_name.value).strip())
        self._update_name_hint()

    def _update_name_hint(self) -> None:
        backend = self.backend.value
        name = str(self.model_name.value).strip() or (
            default_model_name(self.base.value or None) if self.base else ""
        )
        if backend is None or not name:
            self.name_hint.value = ""
            return
        root = models_dir() / backend
        try:
            final = next_version_name(root, name)
        except OSError:
            final = name
        self.name_hint.value = (
            f"will be saved as {final} ({name} exists)" if final != name else f"will be saved in {root}"
        )

    # ---- model versions --------------------------------------------------------------------
    def finetuned_models(self, backend: str | None = None) -> list[ModelInfo]:
        """The backend's fine-tuned models, newest first."""
        backend = backend or self.backend.value
        if backend is None:
            return []
        try:
            infos = [m for m in list_models(backend) if m.kind == "finetuned"]
        except (OSError, ValueError) as exc:
            self.status.value = f"Could not list the {backend} models: {exc}"
            return []
        return sorted(infos, key=_created, reverse=True)

    def refresh_versions(self, select: str | None = None) -> None:
        """List the fine-tuned models again (newest first) and choose ``select`` (default: keep)."""
        keep = select if select is not None else self.versions.value
        infos = self.finetuned_models()
        choices = [(_version_label(m), m.name) for m in infos]
        self.versions.choices = []  # magicgui keeps surviving items in place: clear to get this order
        self.versions.choices = choices
        names = [n for _, n in choices]
        self.versions.value = keep if keep in names else (names[0] if names else None)

    def _notify_model_saved(self, backend: str, name: str) -> None:
        self.refresh_versions(select=name)
        self._update_name_hint()
        if self._on_model_saved is not None:
            self._on_model_saved(backend, name)
        window = getattr(self.viewer, "window", None)
        docks = getattr(window, "dock_widgets", None)
        for widget in list(docks.values()) if docks is not None else []:
            refresh = getattr(widget, "refresh_models", None)
            if widget is self or not callable(refresh):
                continue
            same = getattr(getattr(widget, "segmenter", None), "value", None) == backend
            try:
                if same:
                    refresh(select=name)
                else:
                    refresh()
            except Exception as exc:  # another dock's bug must not hide our result
                show_info(f"Could not refresh the models list of {type(widget).__name__}: {exc}")

    # ---- engines ---------------------------------------------------------------------------
    def engine_for(self, backend: str) -> EngineProcess:
        """The engine process that trains and segments with ``backend`` (created here, started by its first job)."""
        engine = self._engines.get(backend)
        if engine is None:
            from ..core.engine import EngineProcess

            engine = EngineProcess(name=f"napari-phenotyper-finetune-{backend}", grace_period=CANCEL_GRACE_S)
            self._engines[backend] = engine
            self._owned.add(backend)
        return engine

    def shutdown_engine(self) -> None:
        """Stop the engine processes this widget started (frees their memory)."""
        for backend in list(self._owned):
            self._engines[backend].shutdown()

    def close_widget(self) -> None:
        """Cancel a running job and stop this widget's engine processes (the dock is closing)."""
        self._apply_queue.clear()
        if self._worker is not None:
            self._worker.quit()
        self.shutdown_engine()

    # ---- reading the controls --------------------------------------------------------------
    def _image_array(self, layer: Image, backend: str) -> np.ndarray:
        arr = np.array(_level0(layer), copy=True)
        if layer.rgb and backend == "cellpose":
            arr = select_channel(arr, -1, None)  # luminance: Cellpose fine-tunes on one channel
        return arr

    def _layer_pairs(
        self, backend: str
    ) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...], tuple[str, ...], list[Labels]]:
        images, masks, names, used = [], [], [], []
        rows = self.rows
        if not rows:
            raise ValueError("Add a training pair: a corrected labels layer and the image it was drawn on.")
        for i, row in enumerate(rows, 1):
            labels, image = row.labels_layer.value, row.image_layer.value
            if labels is None or image is None:
                raise ValueError(
                    f"Training pair {i}: choose a labels layer and its image (or remove the pair with ✕)."
                )
            images.append(self._image_array(image, backend))
            masks.append(np.array(_level0(labels), copy=True))
            names.append(f"{image.name} / {labels.name}")
            used.append(labels)
        return tuple(images), tuple(masks), tuple(names), used

    def _learning_rate(self) -> float | None:
        text = str(self.learning_rate.value).strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"Learning rate {text!r} is not a number (e.g. 1e-4).") from None
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"The learning rate must be a positive number, got {text}.")
        return value

    @staticmethod
    def _folder(edit: FileEdit) -> str | None:
        text = str(edit.line_edit.value).strip()
        return text or None

    def request(self) -> FinetuneJob:
        """The run as a frozen job; checks the pairs here so that errors show at once.

        Raises
        ------
        ValueError
            With a message for the user (bad pairs, missing folders, bad settings).
        """
        backend = self.backend.value
        if backend is None:
            raise ValueError("No fine-tuning backend is installed (StarDist or Cellpose).")
        base = (self.base.value or None) if self.base is not None else None
        patch = int(self.patch_size.value)
        if patch % 16:
            raise ValueError(f"The patch size must be a multiple of 16, got {patch}.")
        max_channels = 1 if backend == "cellpose" else 4
        common: dict[str, Any] = {
            "backend": backend,
            "base_model": base,
            "name": str(self.model_name.value).strip(),
            "epochs": int(self.epochs.value),
            "learning_rate": self._learning_rate(),
            "steps_per_epoch": int(self.steps_per_epoch.value) if self._has_steps else None,
            "patch_size": patch,
            "batch_size": int(self.batch_size.value),
            "keep_on_cancel": bool(self.keep_best.value),
        }
        if self.source.value == "folders":
            folders = {
                "images_dir": self._folder(self.images_dir),
                "masks_dir": self._folder(self.masks_dir),
                "val_images_dir": self._folder(self.val_images_dir),
                "val_masks_dir": self._folder(self.val_masks_dir),
            }
            if not folders["images_dir"] or not folders["masks_dir"]:
                raise ValueError("Choose a folder of training images and a folder of their masks.")
            if bool(folders["val_images_dir"]) != bool(folders["val_masks_dir"]):
                raise ValueError("For validation, choose both a folder of images and a folder of masks.")
            for key, folder in folders.items():
                if folder and not Path(folder).expanduser().is_dir():
                    raise ValueError(
                        f"The {key.replace('_dir', '').replace('_', ' ')} folder {folder} does not exist."
                    )
            self._training_layers = set()
            return FinetuneJob(FinetuneRequest(images=(), masks=(), **common), **folders)

        images, masks, names, used = self._layer_pairs(backend)
        check_training_pairs(images, masks, names, min_side=patch, max_channels=max_channels)
        val_images: tuple[np.ndarray, ...] = ()
        val_masks: tuple[np.ndarray, ...] = ()
        val_labels, val_image = self.val_labels.value, self.val_image.value
        if val_labels is not None:
            if val_image is None:
                raise ValueError(f"Choose the image of the validation labels {val_labels.name!r}.")
            if any(val_labels is lab for lab in used):
                raise ValueError(
                    f"The validation labels {val_labels.name!r} are also a training pair: validate on an "
                    "image the model does not train on (or choose no validation)."
                )
            val_images = (self._image_array(val_image, backend),)
            val_masks = (np.array(_level0(val_labels), copy=True),)
            check_training_pairs(
                val_images, val_masks, [val_image.name], what="validation", max_channels=max_channels
            )
            used = [*used, val_labels]
        self._training_layers = {str(lab.unique_id) for lab in used}
        return FinetuneJob(
            FinetuneRequest(
                images=images,
                masks=masks,
                image_names=names,
                val_images=val_images,
                val_masks=val_masks,
                **common,
            )
        )

    # ---- actions -----------------------------------------------------------------------------
    def _should_cancel(self) -> bool:
        return self._worker is not None and self._worker.abort_requested

    def start(self, _value: Any = None) -> None:
        """Check the pairs and start fine-tuning in the backend's engine process."""
        if self._worker is not None:
            show_info("A job is already running; cancel it first.")
            return
        try:
            job = self.request()
        except ValueError as exc:
            self._fail(str(exc))
            return
        backend = job.request.backend
        engine = self.engine_for(backend)
        self._models_before = {m.name for m in self.finetuned_models(backend)}
        self._keep_requested = job.request.keep_on_cancel
        self._clear_plot()
        self.result = None
        self.result_label.value = ""
        self._t_epochs = [(time.perf_counter(), 0)]
        self._sps = None
        self._mode = "train"
        self._running_engine = engine
        self._set_running(True)
        self.progress.value = 0
        self.status.value = f"Starting {backend} fine-tuning from {job.request.base_model or 'scratch'}..."
        self._worker = start_job(
            finetune_job,
            job,
            engine,
            self._should_cancel,
            title="Fine-tune",
            on_progress=self._on_train_progress,
            on_returned=self._on_trained,
            on_errored=self._on_errored,
            on_aborted=self._on_train_aborted,
            on_finished=self._on_finished,
        )

    def cancel(self, _value: Any = None) -> None:
        """Ask the running job to stop at its next step."""
        self._apply_queue.clear()
        if self._worker is not None:
            keep = self._mode == "train" and self._keep_requested
            self.status.value = "Cancelling" + (" (keeping the best model so far)..." if keep else "...")
            self._worker.quit()

    def apply_to_all(self, _value: Any = None) -> None:
        """Re-segment every image layer with the chosen model, one after the other, in the engine."""
        if self._worker is not None:
            show_info("A job is already running; cancel it first.")
            return
        backend, model = self.backend.value, self.versions.value
        if backend is None or not model:
            self._fail(
                "No fine-tuned model to apply yet: fine-tune one first, or pick one in 'model versions'."
            )
            return
        images = [layer for layer in self.viewer.layers if isinstance(layer, Image)]
        if self.skip_training.value:
            kept = [
                img
                for img in images
                if (res := find_result_layer(self.viewer, img)) is not None
                and str(res.unique_id) in self._training_layers
            ]
            images = [img for img in images if img not in kept]
            self._apply_skipped = len(kept)
        else:
            self._apply_skipped = 0
        if not images:
            self._fail("No image to apply the model to (the images trained on are skipped).")
            return
        self._apply_queue = images
        self._apply_stopped = False
        self._apply_total = len(images)
        self._apply_done = 0
        self._apply_model = str(model)
        self._mode = "apply"
        self._running_engine = self.engine_for(backend)
        self._set_running(True)
        self.progress.value = 0
        self._start_next_apply()

    def _segment_request(self, layer: Image, backend: str, model: str) -> SegmentRequest:
        """Defaults of the backend with the chosen model; measured like the layer's previous result."""
        seg = get_segmenter(backend)
        params = seg.params_type(model=model)
        previous = find_result_layer(self.viewer, layer)
        prov = source_of(previous) if previous is not None else {}
        measured = prov.get("measure") or {}
        groups = tuple(g for g in measured.get("groups", ()) if g in FEATURE_GROUPS)
        feature_set = measured.get("feature_set", "default")
        channel = prov.get("channel") if layer.rgb else None
        return SegmentRequest(
            _level0(layer),
            layer.rgb,
            backend,
            params,
            channel if isinstance(channel, int) else None,
            (),
            MeasureParams(
                groups=groups or DEFAULT_FEATURE_GROUPS,
                feature_set=feature_set if feature_set in FEATURE_SETS else "default",
            ),
            auto_diameter=False,
        )

    def _start_next_apply(self) -> None:
        source = self._apply_queue.pop(0)
        backend = str(self.backend.value)
        try:
            request = self._segment_request(source, backend, self._apply_model)
        except (ImportError, KeyError, TypeError, ValueError) as exc:
            self._apply_queue.clear()
            self._fail(f"Could not apply {self._apply_model} to {source.name}: {user_message(exc)}")
            self._set_running(False)
            return
        i = self._apply_done
        self.status.value = f"Applying {self._apply_model} to {source.name} ({i + 1}/{self._apply_total})..."
        self._worker = start_job(
            segment_job,
            request,
            self._running_engine,
            self._should_cancel,
            title="Apply the model",
            on_progress=lambda p: self._on_apply_progress(source, p),
            on_returned=lambda result: self._on_applied(source, result),
            on_errored=self._on_errored,
            on_aborted=self._on_apply_aborted,
            on_finished=self._on_finished,
        )

    # ---- worker callbacks (GUI thread) -----------------------------------------------------------
    def _set_running(self, running: bool) -> None:
        self.start_button.enabled = self.apply_button.enabled = not running
        self.backend.enabled = not running
        self.cancel_button.enabled = running
        if not running:
            self._worker = None
            self._running_engine = None
            self._mode = ""

    def _on_finished(self) -> None:
        if self._mode == "apply" and self._apply_queue and not self._apply_stopped:
            self._worker = None
            self._start_next_apply()
            return
        if self._mode == "apply" and self._apply_done and not self._apply_stopped:
            self.progress.value = 1000
            self.status.value = (
                f"Applied {self._apply_model} to {self._apply_done} image(s); their labels layers were "
                "updated in place."
            )
            if self._apply_skipped:
                self.status.value += f" Skipped {self._apply_skipped} image(s) trained on (labels kept)."

        self._set_running(False)

    def _fail(self, msg: str) -> None:
        show_error(msg)
        self.status.value = msg

    def _on_errored(self, exc: BaseException) -> None:
        self._apply_queue.clear()
        self._apply_stopped = True
        what = "Fine-tuning" if self._mode == "train" else "Applying the model"
        msg = user_message(exc)
        show_error(f"{what} failed: {msg}")
        self.status.value = f"Failed: {msg}"
        self.progress.value = 0

    def _on_train_progress(self, p: Progress) -> None:
        self.progress.value = int(min(max(p.fraction, 0.0), 1.0) * 1000)
        if isinstance(p, TrainProgress):
            # the trainers re-send their last record as a heartbeat: an epoch counts once
            if p.epoch > self._t_epochs[-1][1] or (p.epoch == 0 and not self.history):
                self._record(p)
                if p.epoch > 0:
                    self._t_epochs.append((time.perf_counter(), p.epoch))
            if p.seconds_per_step is not None:
                self._sps = float(p.seconds_per_step)
            left = self._time_left(p)
            self.status.value = p.message + (f" · about {_duration(left)} left" if left is not None else "")
        elif p.message:
            sps = f" · {self._sps:.2f} s/step" if self._sps is not None and "s/step" not in p.message else ""
            self.status.value = p.message + sps

    def _time_left(self, p: TrainProgress) -> float | None:
        done = [(t, e) for t, e in self._t_epochs if e > 0]
        if len(done) < 2 or p.epochs <= p.epoch:
            return None
        (t0, e0), (t1, e1) = done[0], done[-1]
        return (t1 - t0) / (e1 - e0) * (p.epochs - p.epoch) if e1 > e0 else None

    def _record(self, p: TrainProgress) -> None:
        for key in ("loss", "val_loss", "val_ap50"):
            value = p.metrics.get(key)
            if value is not None and math.isfinite(float(value)):
                self.history.setdefault(key, []).append((int(p.epoch), float(value)))
        self._draw_plot()

    def _style_plot(self) -> None:
        self.ax.set_xlabel("epoch")
        self.ax.set_ylabel("loss")
        self.ax_ap.set_ylabel("validation AP@0.5")
        self.ax_ap.set_ylim(0.0, 1.0)
        handles = [self.loss_line, self.val_loss_line, self.ap_line]
        self.ax.legend(handles=handles, loc="upper right", fontsize="small", frameon=False)

    def _clear_plot(self) -> None:
        self.history = {}
        self._draw_plot()

    def _draw_plot(self) -> None:
        for key, line in (
            ("loss", self.loss_line),
            ("val_loss", self.val_loss_line),
            ("val_ap50", self.ap_line),
        ):
            pts = self.history.get(key, [])
            line.set_data([e for e, _ in pts], [v for _, v in pts])
        self.ax.relim()
        self.ax.autoscale_view()
        self.ax_ap.set_ylim(0.0, 1.0)
        epochs = [e for pts in self.history.values() for e, _ in pts]
        if epochs:
            self.ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        self.canvas.draw_idle()

    def _on_trained(self, result: FinetuneResult) -> None:
        self.result = result
        self.progress.value = 1000
        ap = ""
        if result.val_ap50_best is not None:
            ap = f" · best validation AP@0.5 {result.val_ap50_best:.3f}"
            if result.val_ap50_before is not None:
                ap += f" (base model {result.val_ap50_before:.3f})"
        text = f"Saved {result.name}{ap} · {_duration(result.seconds)} of training"
        self.result_label.value = f"{result.name} is in {result.path}"
        self.result_label.tooltip = str(result.path)
        self.status.value = text
        self._notify_model_saved(result.backend, result.name)

    def _on_train_aborted(self) -> None:
        engine = self._running_engine
        if engine is not None:  # the worker stopped at a yield: stop the engine's job too
            engine.cancel()
        self.progress.value = 0
        backend = str(self.backend.value)
        new = [m for m in self.finetuned_models(backend) if m.name not in self._models_before]
        if new:
            kept = new[0]
            self.status.value = f"Cancelled; the best model so far was kept as {kept.name}."
            self.result_label.value = f"Kept {kept.name} (cancelled run)" + (
                "" if kept.path is None else f" in {kept.path}"
            )
            self.result_label.tooltip = "" if kept.path is None else str(kept.path)
            self._notify_model_saved(backend, kept.name)
        else:
            self.status.value = "Cancelled; no model was saved."

    def _on_apply_progress(self, source: Image, p: Progress) -> None:
        i = self._apply_done
        frac = min(max(p.fraction, 0.0), 1.0)
        self.progress.value = int((i + frac) / max(self._apply_total, 1) * 1000)
        if p.message:
            self.status.value = f"{source.name} ({i + 1}/{self._apply_total}): {p.message}"

    def _on_applied(self, source: Image, result: SegmentResult) -> None:
        self._apply_done += 1
        if source not in self.viewer.layers:
            return  # closed meanwhile: nothing to update
        upsert_labels(self.viewer, source, result.labels, result.features, result.provenance)

    def _on_apply_aborted(self) -> None:
        engine = self._running_engine
        if engine is not None:
            engine.cancel()
        self._apply_queue.clear()
        self._apply_stopped = True
        self.progress.value = 0
        self.status.value = f"Cancelled after {self._apply_done} of {self._apply_total} image(s); the others keep their labels."


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
