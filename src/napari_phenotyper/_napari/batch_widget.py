"""The "Batch" dock widget: build or load a pipeline, run it over folders of images.

Controls only: the run is :func:`napari_phenotyper.core.batch.iter_run_batch`, the
same generator the ``napari-phenotyper batch`` command drives, here in a thread worker
with progress and cancel. When it finishes, the per-image profile table opens in a dock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
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
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QSortFilterProxyModel, Qt
from qtpy.QtWidgets import QAbstractItemView, QFileDialog, QLabel, QTableView, QVBoxLayout, QWidget

from ..core.batch import BatchOptions, BatchRequest, BatchResult, iter_run_batch
from ..core.classify.session import default_classifier_path
from ..core.features import DEFAULT_FEATURE_GROUPS, FEATURE_GROUPS
from ..core.pipeline_spec import FileRef, PipelineSpec
from ..core.progress import Progress
from ..core.segment import get_segmenter
from ..core.segment.registry import available
from ..io.pipeline_file import load_pipeline, save_pipeline
from ..io.tables import parquet_available
from .docking import scroll_body, settle_when_docked
from .params_form import ParamsForm, compact_widths, feature_groups_box, feature_set_combo
from .segment_widget import SegmentWidget
from .table_widget import DataFrameModel
from .workers import Latest, start_job, user_message

if TYPE_CHECKING:
    import napari

__all__ = ["BatchWidget", "ProfileTable", "batch_job"]

_PIPELINE_FILTER = "Pipeline (*.json *.yaml *.yml)"


class ProfileTable(QWidget):
    """A sortable, read-only view of a profile table (one row per image or well)."""

    def __init__(self, table: pd.DataFrame, title: str = "") -> None:
        super().__init__()
        self.model = DataFrameModel(table)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(DataFrameModel.SORT_ROLE)
        self.view = QTableView(self)
        self.view.setModel(self.proxy)
        self.view.setSortingEnabled(True)
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.view.sortByColumn(-1, Qt.SortOrder.AscendingOrder)  # file order until the user sorts
        self.info = QLabel(title)
        layout = QVBoxLayout(self)
        layout.addWidget(self.info)
        layout.addWidget(self.view, 1)

    @property
    def frame(self) -> pd.DataFrame:
        """The table shown."""
        return self.model.frame


def batch_job(
    request: BatchRequest, cancel: threading.Event
) -> Generator[Progress, None, BatchResult | None]:
    """:func:`~napari_phenotyper.core.batch.iter_run_batch` for a thread worker, cancellable.

    When ``cancel`` is set, the run is closed at its next yield *in the worker thread*
    (its manifest says "cancelled", a Dask cluster it started is shut down) and ``None``
    is returned. (A napari worker's own ``quit()`` leaves the generator suspended, so
    that cleanup would wait for garbage collection.)
    """
    gen = iter_run_batch(request)
    try:
        while True:
            if cancel.is_set():
                gen.close()
                return None
            try:
                p = next(gen)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            yield p
    finally:
        gen.close()


def _text_items(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(";") if item.strip())


class BatchWidget(Container):
    """Run a pipeline over many images in the background (the ``batch`` command's GUI)."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self.viewer = napari_viewer
        self._worker: Any = None
        self._cancel = threading.Event()
        self._can_estimate = False
        self.form: ParamsForm | None = None
        self.result: BatchResult | None = None
        self.profile_table: ProfileTable | None = None

        # ---- the pipeline
        self.pipeline_file = FileEdit(
            label="pipeline file",
            mode="r",
            filter=_PIPELINE_FILTER,
            nullable=True,
            tooltip="Load a saved pipeline into the form below",
        )
        self.load_button = PushButton(text="Load")
        self.from_segment = PushButton(
            text="Copy from Segment && measure",
            tooltip="Take the segmenter, parameters and features of the open Segment & measure widget",
        )
        self.save_button = PushButton(text="Save pipeline...")
        specs = available()
        self.segmenter = ComboBox(
            label="segmenter",
            choices=[(s.display_name, n) for n, s in specs.items()],
            value="classical" if "classical" in specs else None,
        )
        self.params_box = Container(labels=False)
        self.auto_diameter = CheckBox(text="estimate the diameter on every image", value=True)
        self.channel = SpinBox(
            label="channel", value=-1, min=-1, max=64, tooltip="Channel to segment; -1: all channels combined"
        )
        self.groups = {g: CheckBox(text=g, value=g in DEFAULT_FEATURE_GROUPS) for g in FEATURE_GROUPS}
        groups_box = feature_groups_box(self.groups)
        self.feature_set = feature_set_combo()
        self.classifier = FileEdit(
            label="classifier",
            mode="r",
            filter="Classifier (*.zip)",
            nullable=True,
            tooltip="Saved classifier or regressor applied to every cell (optional)",
        )
        self.from_phenotypes = PushButton(
            text="From Phenotypes",
            tooltip="Use the classifier you are teaching in the Phenotypes dock (saved as a file for the run)",
        )
        # ---- the images
        self.inputs = LineEdit(
            label="images",
            tooltip="Folders, files or glob patterns, separated by ';' (e.g. /data/plate1; /data/plate2/*.tif)",
        )
        self.browse_inputs = PushButton(text="Add folder...")
        self.layout_regex = LineEdit(
            label="layout regex",
            tooltip=r"Named groups plate, well, site in file names, e.g. (?P<plate>P\d+)_(?P<well>[A-P]\d{2})_s(?P<site>\d+)",
        )
        self.layout_csv = FileEdit(
            label="layout table",
            mode="r",
            filter="Table (*.csv *.tsv)",
            nullable=True,
            tooltip="CSV: file, plate, well, site, treatment, concentration, control (negative/positive)",
        )
        # ---- the output
        self.out_dir = FileEdit(label="output folder", mode="d", nullable=True)
        can_parquet = parquet_available()
        self.format = ComboBox(
            label="format",
            choices=["parquet", "csv"] if can_parquet else ["csv"],
            value="parquet" if can_parquet else "csv",
            tooltip="Parquet needs pyarrow",
        )
        self.write_labels = CheckBox(text="write label images", value=False)
        self.force = CheckBox(text="redo finished images", value=False)
        self.workers = SpinBox(
            label="workers",
            value=0,
            min=0,
            max=256,
            tooltip="0: run here; N: a local Dask cluster of N processes (needs distributed)",
        )
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(min=0, max=1000, value=0, label="progress")
        self.status = Label(value="Ready.")
        super().__init__(
            widgets=[
                Container(widgets=[self.pipeline_file, self.load_button], layout="horizontal", labels=False),
                Container(widgets=[self.from_segment, self.save_button], layout="horizontal", labels=False),
                self.segmenter,
                self.params_box,
                self.auto_diameter,
                self.channel,
                groups_box,
                self.feature_set,
                Container(widgets=[self.classifier, self.from_phenotypes], layout="horizontal"),
                Container(widgets=[self.inputs, self.browse_inputs], layout="horizontal"),
                self.layout_regex,
                self.layout_csv,
                self.out_dir,
                self.format,
                Container(
                    widgets=[self.write_labels, self.force],
                    layout="horizontal",
                    labels=False,
                    label="options",
                ),
                self.workers,
                Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False),
                self.progress,
                self.status,
            ]
        )
        self.segmenter.changed.connect(self._on_segmenter_changed)
        self.load_button.changed.connect(lambda: self.load_pipeline())
        self.save_button.changed.connect(lambda: self.save_pipeline())
        self.from_segment.changed.connect(lambda: self.copy_from_segment_widget())
        self.browse_inputs.changed.connect(self._browse_inputs)
        self.from_phenotypes.changed.connect(lambda: self.classifier_from_phenotypes())
        self.auto_diameter.changed.connect(self._sync_diameter)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self._on_segmenter_changed(self.segmenter.value)
        compact_widths(self.native)  # long layer names must not widen the dock
        # progress of many small images: shown at most 10 times a second (GUI stalls)
        self._progress_latest = Latest(self._on_progress, 100)
        scroll_body(self.native)  # fits a laptop screen
        settle_when_docked(self.native)

    # ---- the pipeline form ---------------------------------------------------------
    def _on_segmenter_changed(self, name: str | None) -> None:
        self.params_box.clear()
        self.form = None
        if name is None:
            return
        try:
            seg = get_segmenter(name)
        except (ImportError, KeyError) as exc:
            show_error(user_message(exc))
            return
        self.form = ParamsForm(seg.params_type)
        self.params_box.append(self.form)
        compact_widths(self.form.native)
        self._can_estimate = hasattr(seg, "estimate_diameter") and "diameter" in self.form.editors
        self.auto_diameter.visible = self._can_estimate
        self._sync_diameter()

    def _sync_diameter(self, _value: Any = None) -> None:
        if self.form is not None and "diameter" in self.form.editors:
            self.form.editors["diameter"].enabled = not (self._can_estimate and self.auto_diameter.value)

    def pipeline_spec(self) -> PipelineSpec:
        """The pipeline the form describes (raises ``ValueError`` for invalid settings)."""
        if self.form is None or self.segmenter.value is None:
            raise ValueError("Choose a segmenter first.")
        params = dataclasses.asdict(self.form.params())
        groups = tuple(g for g, cb in self.groups.items() if cb.value)
        if not groups:
            raise ValueError("Tick at least one feature group to measure.")
        clf = self.classifier.value
        spec = PipelineSpec(
            segmenter=self.segmenter.value,
            params=params,
            auto_diameter=bool(self._can_estimate and self.auto_diameter.value),
            channel=None if self.channel.value < 0 else int(self.channel.value),
            feature_groups=groups,
            feature_set=self.feature_set.value,
            classifier=None if clf is None else FileRef(str(Path(clf).resolve())),
        )
        return spec.with_model_from_params().validate("the Batch widget's pipeline")

    def set_pipeline(self, spec: PipelineSpec) -> None:
        """Show ``spec`` in the form (parameters it does not give take their defaults)."""
        if self.segmenter.value == spec.segmenter:
            self._on_segmenter_changed(spec.segmenter)  # a fresh form: defaults first
        else:
            self.segmenter.value = spec.segmenter
        if self.form is not None:
            for name, value in spec.params.items():
                if name in self.form.editors:
                    self.form.set_value(name, value)
        if spec.model is not None and self.form is not None and "model" in self.form.editors:
            self.form.set_value("model", spec.model.value)
        self.auto_diameter.value = spec.auto_diameter
        self.channel.value = -1 if spec.channel is None else spec.channel
        for g, cb in self.groups.items():
            cb.value = g in spec.feature_groups
        self.feature_set.value = spec.feature_set
        self.classifier.value = None if spec.classifier is None else spec.classifier.path
        self._sync_diameter()

    def load_pipeline(self, path: str | Path | None = None) -> PipelineSpec | None:
        """Load a pipeline file into the form (default: the pipeline file field)."""
        path = path if path is not None else self.pipeline_file.value
        if path is None:
            show_info("Choose a pipeline file first.")
            return None
        try:
            spec = load_pipeline(path)
        except (OSError, ValueError) as exc:
            show_error(str(exc))
            self.status.value = f"Could not load the pipeline: {str(exc).splitlines()[0]}"
            return None
        self.pipeline_file.value = path
        self.set_pipeline(spec)
        self.status.value = f"Loaded {Path(path).name}."
        return spec

    def save_pipeline(self, path: str | Path | None = None) -> Path | None:
        """Save the form as a pipeline file (asks where when ``path`` is not given)."""
        try:
            spec = self.pipeline_spec()
        except (ValueError, KeyError, ImportError) as exc:
            show_error(user_message(exc))
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(
                self.native, "Save pipeline", "pipeline.json", _PIPELINE_FILTER
            )
            if not path:
                return None
        try:
            written = save_pipeline(spec, path)
        except (OSError, ValueError) as exc:
            show_error(str(exc))
            return None
        self.pipeline_file.value = written
        self.status.value = f"Saved the pipeline to {written.name}."
        return written

    def _segment_widget(self) -> SegmentWidget | None:
        docks = getattr(self.viewer.window, "dock_widgets", None)
        if docks is None:
            return None
        for widget in docks.values():
            if isinstance(widget, SegmentWidget):
                return widget
        return None

    def classifier_from_phenotypes(self) -> Path | None:
        """Save the classifier being taught in this viewer's Phenotypes dock (its session's
        annotations and settings, pickle-free) under ``$NAPARI_PHENOTYPER_HOME/classifiers``
        and choose it for the run; returns the file (``None``, with the reason shown, when
        there is none yet)."""
        from .phenotype_widget import find_phenotypes

        pheno = find_phenotypes(self.viewer)
        if pheno is None:
            self.status.value = "Open the Phenotypes dock and annotate cells first."
            return None
        path = default_classifier_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            saved = pheno.session.save_classifier(path)
        except (OSError, ValueError) as exc:
            self.status.value = f"No classifier to use yet: {exc}"
            return None
        self.classifier.value = saved
        self.status.value = f"Classifier of the Phenotypes dock saved to {saved} and chosen for the run."
        return saved

    def copy_from_segment_widget(self) -> bool:
        """Fill the form from the docked "Segment & measure" widget, if there is one."""
        seg = self._segment_widget()
        if seg is None or getattr(seg, "form", None) is None:
            show_info("Open Segment & measure (Plugins menu) to copy its settings, or fill in the form here.")
            return False
        self.segmenter.value = seg.segmenter.value
        if self.form is not None:
            for name, value in seg.form.values().items():
                if name in self.form.editors:
                    self.form.set_value(name, value)
        self.auto_diameter.value = bool(seg.auto_diameter.value)
        channel = seg.channel.value
        self.channel.value = -1 if channel is None else int(channel)
        for g, cb in self.groups.items():
            cb.value = bool(seg.groups[g].value) if g in seg.groups else cb.value
        self.feature_set.value = seg.feature_set.value
        self._sync_diameter()
        self.status.value = "Copied the Segment & measure settings."
        return True

    def _browse_inputs(self, _value: Any = None) -> None:
        folder = QFileDialog.getExistingDirectory(self.native, "Add a folder of images")
        if folder:
            items = [*_text_items(self.inputs.value), folder]
            self.inputs.value = "; ".join(items)

    # ---- running ----------------------------------------------------------------
    def request(self) -> BatchRequest:
        """The run's parameters (raises ``ValueError`` with what to fix)."""
        spec = self.pipeline_spec()
        inputs = _text_items(self.inputs.value)
        if not inputs:
            raise ValueError("Give the images: folders, files or glob patterns separated by ';'.")
        if self.out_dir.value is None:
            raise ValueError("Choose an output folder.")
        layout_csv = self.layout_csv.value
        return BatchRequest(
            inputs=inputs,
            pipeline=spec,
            options=BatchOptions(
                out_dir=str(self.out_dir.value),
                format=self.format.value,
                labels=bool(self.write_labels.value),
                force=bool(self.force.value),
            ),
            layout_regex=self.layout_regex.value.strip() or None,
            layout_table=None if layout_csv is None else str(layout_csv),
            workers=int(self.workers.value),
            pipeline_file=None if self.pipeline_file.value is None else str(self.pipeline_file.value),
            command=("napari", "Batch widget"),
        )

    def run(self) -> None:
        """Start the batch run in a background thread."""
        if self._worker is not None:
            show_info("A batch run is already going; cancel it first.")
            return
        try:
            request = self.request()
        except (ValueError, KeyError, ImportError) as exc:
            msg = user_message(exc)
            show_error(msg)
            self.status.value = msg.splitlines()[0]
            return
        self._set_running(True)
        self.progress.value = 0
        self.status.value = "Starting..."
        self._cancel = threading.Event()
        self._worker = start_job(
            batch_job,
            request,
            self._cancel,
            title="Batch run",
            on_progress=self._progress_latest,
            on_returned=self._on_returned,
            on_errored=self._on_errored,
            on_finished=lambda: self._set_running(False),
        )

    def cancel(self) -> None:
        """Stop at the next step; finished images are kept (a rerun resumes them)."""
        if self._worker is not None:
            self.status.value = "Cancelling..."
            self._cancel.set()

    def _set_running(self, running: bool) -> None:
        self.run_button.enabled = not running
        self.cancel_button.enabled = running
        if not running:
            self._worker = None

    def _on_progress(self, p: Progress) -> None:
        self.progress.value = int(p.fraction * 1000)
        summary = p.summary() if hasattr(p, "summary") else ""
        self.status.value = f"{summary} · {p.message}" if summary else p.message

    def _on_returned(self, result: BatchResult | None) -> None:
        self._progress_latest.flush()  # then the result's own text
        if result is None:  # cancelled
            self.status.value = "Cancelled; finished images are kept (run again to resume)."
            self.progress.value = 0
            return
        self.result = result
        self.progress.value = 1000
        c = result.counts
        self.status.value = (
            f"Done: {c['processed']} processed, {c['skipped']} kept, {c['failed']} failed; "
            f"{c['cells']} cells in {result.out_dir}"
        )
        if result.failures:
            show_info(f"{len(result.failures)} image(s) failed; see manifest.json in {result.out_dir}.")
        self.show_profiles(result.image_profiles, f"Per-image profiles: {result.out_dir}")

    def show_profiles(self, table: pd.DataFrame, title: str = "") -> ProfileTable:
        """Open (or refresh) the profile table dock."""
        if self.profile_table is not None:
            with contextlib.suppress(KeyError, LookupError, RuntimeError):  # already closed by the user
                self.viewer.window.remove_dock_widget(self.profile_table)
        self.profile_table = ProfileTable(table, title)
        self.viewer.window.add_dock_widget(self.profile_table, name="Batch profiles", area="right")
        return self.profile_table

    def _on_errored(self, exc: BaseException) -> None:
        msg = user_message(exc)
        show_error(f"Batch run failed: {msg}")
        self.status.value = f"Failed: {msg.splitlines()[0]}"
        self.progress.value = 0
