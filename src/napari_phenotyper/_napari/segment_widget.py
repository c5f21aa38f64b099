"""The "Segment & measure" dock widget: controls only, the work happens in core."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, ProgressBar, PushButton, Select
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info

from ..core.features import FEATURE_GROUPS
from ..core.pipeline import MeasureParams, SegmentResult, estimate_params_diameter, select_channel
from ..core.progress import Progress
from ..core.segment import get_segmenter
from ..core.segment.registry import BUILTIN, available
from .layers import upsert_labels
from .params_form import ParamsForm
from .workers import SegmentRequest, segment_job, start_job, user_message

if TYPE_CHECKING:
    import napari

__all__ = ["SegmentWidget"]

_RGB_CHANNELS = [("luminance (all channels)", None), ("red", 0), ("green", 1), ("blue", 2)]


def _plane_shape(layer: Image) -> tuple[int, ...]:
    shape = layer.data[0].shape if layer.multiscale else layer.data.shape
    return tuple(shape[:-1]) if layer.rgb else tuple(shape)


def _level0(layer: Image) -> Any:
    return layer.data[0] if layer.multiscale else layer.data


class SegmentWidget(Container):
    """Choose an image and a segmenter, run it in the background, get labels + features."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self.viewer = napari_viewer
        self._worker: Any = None
        self._segmenter_obj: Any = None
        self._engine: Any = None  # deep-learning backends run in this process, started on first use

        self.image = ComboBox(
            label="image", choices=self._image_choices, nullable=False, tooltip="Image layer to segment"
        )
        self.channel = ComboBox(
            label="channel", choices=[("single channel", None)], tooltip="Channel of an RGB image to segment"
        )
        specs = available()
        self.segmenter = ComboBox(
            label="segmenter",
            choices=[(s.display_name, n) for n, s in specs.items()],
            value="classical" if "classical" in specs else None,
        )
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
        self.groups = {g: CheckBox(text=g, value=True) for g in FEATURE_GROUPS}
        groups_box = Container(
            widgets=list(self.groups.values()), layout="horizontal", labels=False, label="features"
        )
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        buttons = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False)
        self.progress = ProgressBar(min=0, max=1000, value=0, label="progress")
        self.status = Label(value="Ready.")
        super().__init__(
            widgets=[
                self.image,
                self.channel,
                self.segmenter,
                self.params_box,
                self.auto_diameter,
                self.estimate,
                self.measure_in,
                groups_box,
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
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        self._on_segmenter_changed(self.segmenter.value)
        self._on_image_changed(self.image.value)

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

    def _refresh_layers(self, _event: Any = None) -> None:
        self.image.reset_choices()
        self.measure_in.reset_choices()

    def _on_image_changed(self, layer: Image | None) -> None:
        self.channel.choices = (
            _RGB_CHANNELS if (layer is not None and layer.rgb) else [("single channel", None)]
        )
        self.channel.enabled = bool(layer is not None and layer.rgb)
        self.measure_in.reset_choices()

    def _on_segmenter_changed(self, name: str | None) -> None:
        self.params_box.clear()
        if name is None:
            return
        try:
            self._segmenter_obj = get_segmenter(name)
        except (ImportError, KeyError) as exc:
            show_error(user_message(exc))
            return
        self.form = ParamsForm(self._segmenter_obj.params_type)
        self.params_box.append(self.form)
        can = hasattr(self._segmenter_obj, "estimate_diameter") and "diameter" in self.form.editors
        self.estimate.visible = self.auto_diameter.visible = can
        self._sync_diameter_editor()

    def _auto_diameter_on(self) -> bool:
        return bool(
            self.auto_diameter.value
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
        params = self.form.params()
        groups = tuple(g for g, cb in self.groups.items() if cb.value)
        if not groups:
            raise ValueError("Tick at least one feature group to measure.")
        measure = MeasureParams(groups=groups)
        intens = tuple((lyr.name, _level0(lyr), lyr.rgb) for lyr in self.measure_in.value)
        return SegmentRequest(
            _level0(layer),
            layer.rgb,
            self.segmenter.value,
            params,
            self.channel.value,
            intens,
            measure,
            auto_diameter=self._auto_diameter_on(),
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
        self.status.value = (
            f"Running {self.segmenter.value} on {self._segmenter_obj.device(request.params)}..."
        )
        engine = None
        spec = BUILTIN.get(request.segmenter)
        if spec is not None and spec.engine:
            if self._engine is None:
                from ..core.engine import EngineProcess

                self._engine = EngineProcess()
            engine = self._engine

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

    def shutdown_engine(self) -> None:
        """Stop the engine process (frees its memory; the next deep-learning run starts a new one)."""
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None

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

        def _estimate() -> float:
            img = select_channel(np.asarray(data), -1 if rgb else None, channel)
            return float(estimate_params_diameter(name, None, img).diameter)

        worker = create_worker(_estimate, _start_thread=False)
        worker.returned.connect(self._on_estimated)
        worker.errored.connect(
            lambda exc: show_error(f"Could not estimate the diameter: {user_message(exc)}")
        )
        worker.start()
        self._estimate_worker = worker

    # ---- worker callbacks (GUI thread) --------------------------------------------------
    def _on_estimated(self, value: float) -> None:
        self.form.set_value("diameter", round(value, 1))
        self.status.value = f"Estimated diameter: {value:.1f} px"

    def _set_running(self, running: bool) -> None:
        self.run_button.enabled = not running
        self.cancel_button.enabled = running
        if not running:
            self._worker = None

    def _on_progress(self, p: Progress) -> None:
        self.progress.value = int(p.fraction * 1000)
        if p.message:
            self.status.value = p.message

    def _on_returned(self, source: Image, result: SegmentResult) -> None:
        if source not in self.viewer.layers:
            show_info("The image was closed while it was being segmented; the result was discarded.")
            return
        upsert_labels(self.viewer, source, result.labels, result.features, result.provenance)
        prov = result.provenance
        if "diameter" in prov.get("params", {}) and "diameter" in self.form.editors:
            self.form.set_value("diameter", prov["params"]["diameter"])  # show what was used
        self.progress.value = 1000
        self.status.value = (
            f"{len(result.features)} cells · {prov['segmenter']} on {prov['device']} · "
            f"{prov['segment_seconds']:.2f} s segment + {prov['measure_seconds']:.2f} s measure"
        )

    def _on_errored(self, exc: BaseException) -> None:
        msg = user_message(exc)
        show_error(f"Segmentation failed: {msg}")
        self.status.value = f"Failed: {msg}"
        self.progress.value = 0

    def _on_aborted(self) -> None:
        if self._engine is not None:  # the worker stopped at a yield: stop the engine's job too
            self._engine.cancel()
        self.status.value = "Cancelled; previous results were kept."
        self.progress.value = 0
