"""The "Segment & measure" dock widget: controls only, the work happens in core.

Deep-learning segmenters (StarDist, Cellpose) run in an engine process, one per backend,
so that TensorFlow and torch never share a process and neither loads into napari's. Their
``model`` parameter is a :class:`~.params_form.ModelChooser` (the models on this computer,
plus "Browse…"); :meth:`SegmentWidget.refresh_models` re-reads the list, e.g. after the
fine-tuning widget saved a model.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, LineEdit, ProgressBar, PushButton, Select
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QMessageBox

from ..core.channels import clean_channel_name, default_channel_names
from ..core.features import DEFAULT_FEATURE_GROUPS, FEATURE_GROUPS
from ..core.params import FieldSpec
from ..core.pipeline import (
    DEFAULT_CHANNEL,
    MeasureParams,
    SegmentResult,
    estimate_params_diameter,
    select_channel,
)
from ..core.progress import Progress
from ..core.segment import get_segmenter
from ..core.segment.models import BACKENDS as MODEL_BACKENDS
from ..core.segment.registry import BUILTIN, available
from .dims import apply_dims, default_dims, dims_combo, stack_axes
from .docking import scroll_body, settle_when_docked
from .layers import docked_widgets, find_result_layer, upsert_labels
from .params_form import ModelChooser, ParamsForm, compact_widths, feature_groups_box, feature_set_combo
from .workers import SegmentRequest, segment_job, start_job, user_message

if TYPE_CHECKING:
    import napari

    from ..core.engine import EngineProcess

__all__ = ["SegmentWidget"]

_RGB_CHANNELS = [("luminance (all channels)", None), ("red", 0), ("green", 1), ("blue", 2)]


def _plane_shape(layer: Image) -> tuple[int, ...]:
    shape = layer.data[0].shape if layer.multiscale else layer.data.shape
    return tuple(shape[:-1]) if layer.rgb else tuple(shape)


def _level0(layer: Image) -> Any:
    return layer.data[0] if layer.multiscale else layer.data


def _default_model(backend: str) -> str | None:
    """The model an empty model field stands for (Cellpose: the installed version's default)."""
    if backend != "cellpose":
        return None
    from ..core.segment.cellpose_models import cellpose_version, default_cellpose_model

    return default_cellpose_model() if cellpose_version() is not None else None


class SegmentWidget(Container):
    """Choose an image and a segmenter, run it in the background, get labels + features.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer whose image layers are segmented.
    engines : mapping of segmenter name -> EngineProcess, optional
        Engine processes to run the deep-learning segmenters in (e.g. shared with another
        widget). By default the widget starts one per backend on first use; they stop
        with :meth:`shutdown_engine`, or when the widget is garbage-collected.
    """

    def __init__(
        self, napari_viewer: napari.viewer.Viewer, engines: dict[str, EngineProcess] | None = None
    ) -> None:
        self.viewer = napari_viewer
        self._worker: Any = None
        self._segmenter_obj: Any = None
        self.form: ParamsForm | None = None
        self.model_chooser: ModelChooser | None = None
        # deep-learning backends run in these processes (one per backend), started on first use
        self._engines: dict[str, EngineProcess] = dict(engines or {})
        self._running_engine: EngineProcess | None = None
        self._last_device: dict[str, str] = {}  # what the engine reported, by segmenter

        self.image = ComboBox(
            label="image", choices=self._image_choices, nullable=False, tooltip="Image layer to segment"
        )
        # choices are a callable: napari resets every choice when it docks the widget or
        # a layer changes, and a static list would fall back to "single channel"
        self.channel = ComboBox(
            label="channel", choices=self._channel_choices, tooltip="Channel of an RGB image to segment"
        )
        specs = available()
        self.segmenter = ComboBox(
            label="segmenter",
            choices=[(s.display_name, n) for n, s in specs.items()],
            value="classical" if "classical" in specs else None,
        )
        self.dims = dims_combo()  # shown for stacks: 2D per plane or 3D volume
        self.params_box = Container(labels=False)
        self.estimate = PushButton(text="Estimate diameter now")
        self.auto_diameter = CheckBox(
            text="estimate the diameter on every run",
            value=True,
            tooltip="Measure the typical object diameter on the image before segmenting (like --diameter auto)",
        )
        self.measure_in = Select(
            label="measure in",
            choices=self._measure_choices,
            tooltip="Image layers to measure intensities in (none selected: the segmented image)",
        )
        # one short channel name per measured layer: the columns are named by it
        # (mean_intensity_<name>), so that a classifier applies to the next image's layers
        self.channel_names = Container(label="channel names", visible=False)
        self._typed_names: dict[str, str] = {}  # layer name -> the channel name typed for it
        self.groups = {g: CheckBox(text=g, value=g in DEFAULT_FEATURE_GROUPS) for g in FEATURE_GROUPS}
        groups_box = feature_groups_box(self.groups)
        self.feature_set = feature_set_combo()
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        buttons = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False)
        self.progress = ProgressBar(min=0, max=1000, value=0, label="progress")
        self.status = Label(value="Ready.")
        self.status.native.setWordWrap(True)  # error messages are long
        super().__init__(
            widgets=[
                self.image,
                self.channel,
                self.segmenter,
                self.dims,
                self.params_box,
                self.auto_diameter,
                self.estimate,
                self.measure_in,
                self.channel_names,
                groups_box,
                self.feature_set,
                buttons,
                self.progress,
                self.status,
            ]
        )

        self.segmenter.changed.connect(self._on_segmenter_changed)
        self.image.changed.connect(self._on_image_changed)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.estimate.changed.connect(self.estimate_diameter)
        self.auto_diameter.changed.connect(self._sync_diameter_editor)
        self.measure_in.changed.connect(self._sync_channel_names)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        self._on_segmenter_changed(self.segmenter.value)
        self._on_image_changed(self.image.value)
        compact_widths(self.native)  # long layer names must not widen the dock
        scroll_body(self.native)  # fits a laptop screen
        settle_when_docked(self.native)

    # ---- choices -------------------------------------------------------------------
    def _image_choices(self, _w: Any = None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _measure_choices(self, _w: Any = None) -> list[tuple[str, Image]]:
        src = self.image.value if hasattr(self, "image") else None
        if src is None:
            return []
        shape = _plane_shape(src)
        return [
            (lyr.name, lyr)
            for lyr in self.viewer.layers
            if isinstance(lyr, Image) and _plane_shape(lyr) == shape
        ]

    def _channel_choices(self, _w: Any = None) -> list[tuple[str, int | None]]:
        layer = self.image.value if hasattr(self, "image") else None
        return list(_RGB_CHANNELS) if (layer is not None and layer.rgb) else [("single channel", None)]

    def _refresh_layers(self, _event: Any = None) -> None:
        before = self.image.value
        self.image.reset_choices()
        if self.image.value is not before:  # the first image opened after the dock
            self._on_image_changed(self.image.value)
        else:
            self.channel.reset_choices()  # keeps the chosen channel
            self.measure_in.reset_choices()

    def _on_image_changed(self, layer: Image | None) -> None:
        self.dims.visible = layer is not None and stack_axes(layer) >= 3
        self.dims.value = default_dims(self.viewer, layer)
        self.channel.reset_choices()
        self.channel.enabled = bool(layer is not None and layer.rgb)
        self.measure_in.reset_choices()
        self._sync_channel_names()

    def _sync_channel_names(self, _value: Any = None) -> None:
        """One name field per measured layer, pre-filled with a short stable name.

        A name typed for a layer is kept; a layer whose metadata has ``channel_name``
        (e.g. from OME metadata) starts with it; the segmented layer is ``image`` (as in
        headless runs) and any other ``ch<i>``, its position among the measured layers.
        """
        layers = list(self.measure_in.value or [])
        src = self.image.value
        known = {
            lyr.name: str(lyr.metadata["channel_name"]) for lyr in layers if lyr.metadata.get("channel_name")
        }
        known.update(self._typed_names)
        names = default_channel_names([lyr.name for lyr in layers], None if src is None else src.name, known)
        self.channel_names.clear()
        for lyr, name in zip(layers, names, strict=True):
            shown = lyr.name if len(lyr.name) <= 22 else lyr.name[:10] + "…" + lyr.name[-10:]
            edit = LineEdit(
                value=name,
                label=shown,
                tooltip=f"Channel name of {lyr.name}: its columns are <feature>_{name}",
            )
            edit.changed.connect(lambda v, n=lyr.name: self._typed_names.__setitem__(n, str(v)))
            self.channel_names.append(edit)
        self.channel_names.visible = bool(layers)

    def measured_channels(self) -> list[tuple[str, Image]]:
        """``(channel name, layer)`` of every layer to measure in, as the fields name them.

        Raises
        ------
        ValueError
            For an empty or repeated channel name.
        """
        layers = list(self.measure_in.value or [])
        if len(self.channel_names) != len(layers):
            self._sync_channel_names()
        names = [clean_channel_name(w.value, "") for w in self.channel_names]
        for lyr, name in zip(layers, names, strict=True):
            if not name:
                raise ValueError(f"Give {lyr.name!r} a channel name (letters and digits), e.g. ch1 or gfp.")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(
                f"Two measured layers are both named {twice[0]!r}; give each channel its own name."
            )
        return list(zip(names, layers, strict=True))

    def _on_segmenter_changed(self, name: str | None) -> None:
        self.params_box.clear()
        self.form = None
        self.model_chooser = None
        if name is None:
            return
        try:
            self._segmenter_obj = get_segmenter(name)
        except (ImportError, KeyError) as exc:
            show_error(user_message(exc))
            return
        editors = {"model": self._model_editor} if name in MODEL_BACKENDS else None
        self.form = ParamsForm(self._segmenter_obj.params_type, editors=editors)
        if "mode" in self.form.editors:  # the dock's 2D/3D switch stands for it
            self.form.editors["mode"].visible = False
        self.params_box.append(self.form)
        compact_widths(self.form.native)
        can = hasattr(self._segmenter_obj, "estimate_diameter") and "diameter" in self.form.editors
        self.estimate.visible = self.auto_diameter.visible = can
        self._sync_diameter_editor()
        self.status.value = f"Ready · {self._segmenter_obj.display_name} runs on {self.device_text()}"

    def _model_editor(self, spec: FieldSpec) -> ModelChooser:
        backend = str(self.segmenter.value)
        self.model_chooser = ModelChooser(
            backend,
            spec.default,
            optional=spec.optional,
            default_model=_default_model(backend),
            tooltip=spec.doc or None,
        )
        return self.model_chooser

    def refresh_models(self, select: str | None = None) -> None:
        """List the current backend's models again (a model was saved, copied or downloaded).

        Parameters
        ----------
        select : str, optional
            A model name or path to show in the model field afterwards (e.g. the model a
            fine-tuning run just saved); by default the field keeps its text.

        Does nothing for a segmenter without models (the classical one); the list is
        re-read anyway whenever the segmenter changes.
        """
        if self.model_chooser is not None:
            self.model_chooser.refresh(select)

    def device_text(self, params: Any = None) -> str:
        """Where the current segmenter runs, as far as is known without loading its library.

        Classical: the CPU. Deep-learning backends run in their engine process: the device
        it reported after the last run (GPU name and memory included), else the device
        asked for ("auto" before the first run). torch is asked directly only when this
        process has already imported it; TensorFlow never is.
        """
        name = self.segmenter.value
        seg = self._segmenter_obj
        if seg is None or name is None:
            return "unknown"
        spec = BUILTIN.get(name)
        if spec is None or not spec.engine:
            return str(seg.device(params))
        if name in self._last_device:
            return self._last_device[name]
        if params is None and self.form is not None:
            try:
                params = self.form.params()
            except (TypeError, ValueError):
                params = None
        requested = str(getattr(params, "device", "auto"))
        if name == "cellpose" and "torch" in sys.modules:  # already loaded: asking is free
            try:
                return str(seg.device(params))
            except (ImportError, RuntimeError, ValueError):
                pass
        if requested == "auto":
            return "auto (a GPU if the engine sees one)"
        return requested.upper()

    def _auto_diameter_on(self) -> bool:
        return bool(
            self.auto_diameter.value
            and self.form is not None
            and "diameter" in self.form.editors
            and hasattr(self._segmenter_obj, "estimate_diameter")
        )

    def _sync_diameter_editor(self, _value: Any = None) -> None:
        form = getattr(self, "form", None)
        if form is not None and "diameter" in form.editors:
            form.editors["diameter"].enabled = not self._auto_diameter_on()

    # ---- reading the controls -----------------------------------------------------
    def request(self) -> SegmentRequest:
        """The run's parameters as a frozen request (raises ValueError for bad input)."""
        layer = self.image.value
        if layer is None:
            raise ValueError("Open or select an image layer to segment first.")
        if self.form is None:
            raise ValueError("Choose a segmenter first.")
        params = apply_dims(self.form.params(), self.dims.value, layer)
        groups = tuple(g for g, cb in self.groups.items() if cb.value)
        if not groups:
            raise ValueError("Tick at least one feature group to measure.")
        measure = MeasureParams(groups=groups, feature_set=self.feature_set.value)
        channels = self.measured_channels()
        intens = tuple((name, _level0(lyr), lyr.rgb) for name, lyr in channels)
        channel_layers = tuple((name, lyr.name) for name, lyr in channels) or ((DEFAULT_CHANNEL, layer.name),)
        return SegmentRequest(
            _level0(layer),
            layer.rgb,
            self.segmenter.value,
            params,
            self.channel.value,
            intens,
            measure,
            auto_diameter=self._auto_diameter_on(),
            channel_layers=channel_layers,
        )

    # ---- actions ------------------------------------------------------------------
    def run(self) -> None:
        """Start segmentation + measurement in a background thread."""
        if self._worker is not None:
            show_info("A segmentation is already running; cancel it first.")
            return
        try:
            request = self.request()
        except ValueError as exc:
            show_error(str(exc))
            self.status.value = str(exc)
            return
        source = self.image.value
        self._set_running(True)
        model = getattr(request.params, "model", None)
        self.status.value = (
            f"Running {self.segmenter.value}"
            + (f" ({model})" if model else "")
            + f" on {self.device_text(request.params)}..."
        )
        engine = None
        spec = BUILTIN.get(request.segmenter)
        if spec is not None and spec.engine:
            engine = self.engine_for(request.segmenter)
        self._running_engine = engine

        def should_cancel() -> bool:
            return self._worker is not None and self._worker.abort_requested

        self._worker = start_job(
            segment_job,
            request,
            engine,
            should_cancel,
            title="Segmentation",
            on_progress=self._on_progress,
            on_returned=lambda result: self._on_returned(source, result),
            on_errored=self._on_errored,
            on_aborted=self._on_aborted,
            on_finished=lambda: self._set_running(False),
        )

    def engine_for(self, segmenter: str) -> EngineProcess:
        """The engine process that runs ``segmenter`` (created here, started by its first job)."""
        engine = self._engines.get(segmenter)
        if engine is None:
            from ..core.engine import EngineProcess

            engine = self._engines[segmenter] = EngineProcess(name=f"napari-phenotyper-{segmenter}")
        return engine

    def shutdown_engine(self) -> None:
        """Stop the engine processes (frees their memory; the next deep-learning run starts a new one)."""
        for engine in self._engines.values():
            engine.shutdown()

    def cancel(self) -> None:
        """Ask the running job to stop at its next step; the previous result is kept."""
        if self._worker is not None:
            self.status.value = "Cancelling..."
            self._worker.quit()

    def estimate_diameter(self) -> None:
        """Estimate the object diameter from the selected image (in the background)."""
        layer = self.image.value
        seg = self._segmenter_obj
        spec = BUILTIN.get(self.segmenter.value)
        if spec is not None and spec.engine:
            self.status.value = "This segmenter estimates the diameter in its engine process: tick 'estimate the diameter on every run'."
            return
        if layer is None or seg is None or not hasattr(seg, "estimate_diameter"):
            show_error("Select an image (and a segmenter with a diameter) first.")
            return
        data, rgb, channel, name = _level0(layer), layer.rgb, self.channel.value, self.segmenter.value
        params = apply_dims(seg.params_type(), self.dims.value, layer)  # a 3-D run: a 3-D estimate

        def _estimate() -> float:
            img = select_channel(np.asarray(data), -1 if rgb else None, channel)
            return float(estimate_params_diameter(name, params, img).diameter)

        worker = create_worker(_estimate, _start_thread=False)
        worker.returned.connect(self._on_estimated)
        worker.errored.connect(
            lambda exc: show_error(f"Could not estimate the diameter: {user_message(exc)}")
        )
        worker.start()
        self._estimate_worker = worker

    # ---- worker callbacks (GUI thread) --------------------------------------------------
    def _on_estimated(self, value: float) -> None:
        if self.form is None or "diameter" not in self.form.editors:
            return
        self.form.set_value("diameter", round(value, 1))
        self.status.value = f"Estimated diameter: {value:.1f} px"

    def _set_running(self, running: bool) -> None:
        self.run_button.enabled = not running
        self.cancel_button.enabled = running
        if not running:
            self._worker = None
            self._running_engine = None

    def _on_progress(self, p: Progress) -> None:
        self.progress.value = int(p.fraction * 1000)
        if p.message:
            self.status.value = p.message

    def _on_returned(self, source: Image, result: SegmentResult) -> None:
        if source not in self.viewer.layers:
            show_info("The image was closed while it was being segmented; the result was discarded.")
            return
        if not self._confirm_annotation_loss(source, result.labels):
            self.status.value = "Not applied: the previous segmentation and its annotations were kept."
            self.progress.value = 0
            return
        upsert_labels(self.viewer, source, result.labels, result.features, result.provenance)
        prov = result.provenance
        device = str(prov.get("device", "?"))
        if prov.get("device_memory"):
            device += f", {prov['device_memory']}"
        spec = BUILTIN.get(str(prov.get("backend")))
        if spec is not None and spec.engine:
            self._last_device[spec.name] = device
        same_form = self.form is not None and prov.get("backend") == self.segmenter.value
        if same_form and "diameter" in prov.get("params", {}) and "diameter" in self.form.editors:
            self.form.set_value("diameter", prov["params"]["diameter"])  # show what was used
        model = (prov.get("model_info") or {}).get("name")
        self.progress.value = 1000
        self.status.value = (
            f"{len(result.features)} cells · {prov['segmenter']}"
            + (f" ({model})" if model else "")
            + f" on {device} · "
            f"{prov['segment_seconds']:.2f} s segment + {prov['measure_seconds']:.2f} s measure"
        )

    def _confirm_annotation_loss(self, source: Image, labels: Any) -> bool:
        """Ask before a result replaces a segmentation whose annotations it would lose
        (more than :data:`~.phenotype_widget.ASK_WHEN_LOSING` of them)."""
        from .phenotype_widget import ASK_WHEN_LOSING

        layer = find_result_layer(self.viewer, source)
        if layer is None:
            return True
        for widget in docked_widgets(self.viewer):
            would_lose = getattr(widget, "would_lose", None)
            if would_lose is None:
                continue
            annotated, lost = would_lose(layer, labels)
            if lost > ASK_WHEN_LOSING:
                answer = QMessageBox.question(
                    self.native,
                    "Annotations would be lost",
                    f"The new segmentation of {source.name} has no matching cell for {lost} of its "
                    f"{annotated} annotated cells. They would be kept as lost annotations (x marks) and "
                    "come back if a later segmentation finds their cells again.\n\n"
                    "Apply the new segmentation?",
                )
                return answer == QMessageBox.StandardButton.Yes
        return True

    def _on_errored(self, exc: BaseException) -> None:
        msg = user_message(exc)
        show_error(f"Segmentation failed: {msg}")
        self.status.value = f"Failed: {msg}"
        self.progress.value = 0

    def _on_aborted(self) -> None:
        engine = self._running_engine
        if engine is not None:  # the worker stopped at a yield: stop the engine's job too
            engine.cancel()
        self.status.value = "Cancelled; previous results were kept."
        self.progress.value = 0
