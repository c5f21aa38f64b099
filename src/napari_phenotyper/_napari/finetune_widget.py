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

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    Container,
)
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QScrollArea

from ..core.features import DEFAULT_FEATURE_GROUPS, FEATURE_GROUPS, FEATURE_SETS
from ..core.finetune import BACKENDS as FINETUNE_BACKENDS
from ..core.finetune import (
    FinetuneResult,
    default_model_name,
    default_settings,
)
from ..core.pipeline import MeasureParams, SegmentResult
from ..core.progress import Progress, TrainProgress
from ..core.segment import get_segmenter
from ..core.segment.registry import available
from .docking import settle_when_docked
from .finetune_controls import FinetuneControls
from .finetune_parts import (
    CANCEL_GRACE_S,
    FINETUNE,
    FinetuneJob,
    _cellpose_major,
    _closer,
    _default_base,
    _duration,
    _gpu_known,
    _level0,
    _PairRow,
    _plane_shape,
    _UndockWatcher,
    finetune_job,
)
from .layers import find_result_layer, source_of, upsert_labels
from .params_form import ModelChooser, compact_widths
from .workers import SegmentRequest, segment_job, start_job, user_message

if TYPE_CHECKING:
    import napari

    from ..core.engine import EngineProcess

__all__ = ["FINETUNE", "FinetuneJob", "FinetuneWidget", "finetune_job"]


class FinetuneWidget(FinetuneControls, Container):
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
        self._build_controls(backends)
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
