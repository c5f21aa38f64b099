"""The "Phenotypes" dock widget: classes, key-press annotation, live retraining, next cell.

The widget owns the session state (an :class:`AnnotationStore`, the latest
predictions and a feature-matrix cache) and forwards every computation to
:mod:`napari_phenotyper.core.classify` through thread workers. Results go into each
labels layer's ``features`` (``pheno_annotation``, ``pheno_class``,
``pheno_proba_<class>``, ``pheno_uncertainty``; ``pheno_value*`` in value mode) and
into a display-only phenotype view layer above it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from napari.layers import Labels, Points
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QCheckBox,
    QColorDialog,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.classify.annotations import AnnotationStore, LostAnnotation, ReconcileReport
from ..core.classify.engine import (
    MatrixCache,
    Proposal,
    TrainResult,
    annotation_column,
    border_labels,
    iter_quality,
    iter_train_predict,
    propose,
)
from ..core.classify.geometry import CellShape, cell_shape
from ..core.classify.model import CLASSIFIERS, FEATURE_GROUP_NAMES, ClassifierSettings
from ..core.classify.query import STRATEGIES
from ..core.classify.transfer import transfer_annotations
from .docking import scroll_body, settle_when_docked
from .feedback import AnnotationFlash, KeyHelp
from .layers import (
    META_KEY,
    add_display_layer,
    cell_world_position,
    features_for_layer,
    fly_to_cell,
    source_of,
    table_of,
)
from .lost_view import find_lost_layer, update_lost_layer
from .params_form import compact_widths
from .phenotype_view import VIEW_ROLE, find_view, update_view
from .selection import cell_diameter
from .workers import start_job, user_message

if TYPE_CHECKING:
    import napari

__all__ = ["PhenotypeWidget", "default_session_path"]

#: Milliseconds between the last annotation and the start of a retrain.
DEBOUNCE_MS = 150
#: Milliseconds without a new training before cross-validation starts.
QUALITY_DELAY_MS = 1000
#: Trees of the random forest trained after each annotation (the full forest follows).
LIVE_TREES = 32
PHENO_PREFIX = "pheno_"
DISPLAY_MODES = {
    "predictions": "Predicted classes",
    "annotations": "Annotations only",
    "uncertainty": "Uncertainty (heat map)",
    "value": "Values (colour map)",
}
CLASS_KEYS = [str(k) for k in range(1, 10)]
UNDO_KEYS = ("Control-Z", "Control-Shift-Z", "Control-Y")
#: A segmentation run that would lose more annotations than this asks first.
ASK_WHEN_LOSING = 3
_PAINT_MODES = ("paint", "erase", "fill", "polygon")


def default_session_path() -> Path:
    """Where a new session is autosaved: ``$NAPARI_PHENOTYPER_HOME/sessions`` (default
    ``~/.napari-phenotyper/sessions``), one file per session, named by its start time."""
    home = Path(os.environ.get("NAPARI_PHENOTYPER_HOME") or Path.home() / ".napari-phenotyper")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return home / "sessions" / f"session-{stamp}.json"


def _swatch(color: str) -> QIcon:
    pix = QPixmap(14, 14)
    pix.fill(QColor(color))
    return QIcon(pix)


def layer_key(layer: Labels) -> str:
    """The image key of a labels layer's annotations: the image file when known, else the name."""
    meta = source_of(layer)
    path = meta.get("source_path") or getattr(layer.source, "path", None)
    return str(path) if path else f"layer:{layer.name}"


class PhenotypeWidget(QWidget):
    """Teach a phenotype classifier by annotating cells; see the user guide."""

    def __init__(
        self, napari_viewer: napari.viewer.Viewer, session_path: str | os.PathLike | None = None
    ) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.store = AnnotationStore(session_path or default_session_path())
        self.cache = MatrixCache()
        self.result: TrainResult | None = None
        self.quality: dict[str, Any] | None = None
        self.importances: pd.Series | None = None
        self.current: tuple[Labels, int] | None = None  # the proposed / selected cell
        # where the cursor was when the camera flew to the proposal: until the mouse moves
        # away from there, class keys answer the proposal, not the cell under the resting mouse
        self._proposal_cursor: tuple[float, ...] | None = None
        self.lost: list[tuple[str, int, Any]] = []  # annotations lost in the last transfer
        self.extra: tuple[pd.DataFrame, list[Any]] | None = None  # training set of a loaded classifier
        self._tables: dict[int, pd.DataFrame] = {}  # layer id -> feature table (no pheno columns)
        self._bases: dict[int, pd.DataFrame] = {}  # the same with napari's index column
        self._snapshots: dict[int, np.ndarray] = {}  # layer id -> labels as last seen
        self._keys: dict[int, str] = {}  # layer id -> image key
        self._tracked: dict[int, Labels] = {}
        self._writing = False
        self._worker: Any = None
        self._quality_worker: Any = None
        self._pending = False
        self._quality_pending = False
        self._advance = False
        self._bound: list[Any] = []  # keymap owners we bound keys on
        self._build()
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self.retrain)
        # cross-validation waits for a pause, so it never slows the next retrain
        self._quality_timer = QTimer(self)
        self._quality_timer.setSingleShot(True)
        self._quality_timer.setInterval(QUALITY_DELAY_MS)
        self._quality_timer.timeout.connect(self.start_quality)
        self._refine_timer = QTimer(self)
        self._refine_timer.setSingleShot(True)
        self._refine_timer.setInterval(QUALITY_DELAY_MS)
        self._refine_timer.timeout.connect(lambda: self.retrain(full=True))
        self._full = True
        self.viewer.layers.events.inserted.connect(self._sync_layers)
        self.viewer.layers.events.removed.connect(self._sync_layers)
        self.viewer.mouse_drag_callbacks.append(self._on_mouse)
        self.flash = AnnotationFlash(self.viewer, host=self)  # what a class key shows on the canvas
        # napari's status bar must not advertise <1> label eraser while 1-9 are class keys
        self.key_help = KeyHelp(self.viewer, {*CLASS_KEYS, "0", "Backspace", "n", "N", "x", "X"})
        self._bind_keys(self.viewer)
        self._sync_layers()
        self._refresh_classes()
        compact_widths(self)  # long layer names must not widen the dock
        scroll_body(self)  # fits a laptop screen
        settle_when_docked(self)

    # ---- UI ------------------------------------------------------------------------
    def _build(self) -> None:
        root = QVBoxLayout(self)

        top = QFormLayout()
        self.mode = QComboBox()
        self.mode.addItem("Classes", "classification")
        self.mode.addItem("Values (regression)", "regression")
        self.mode.currentIndexChanged.connect(self._on_mode_changed)
        top.addRow("Phenotype", self.mode)
        root.addLayout(top)

        # classes
        self.class_box = QGroupBox("Classes (keys 1-9; 0 clears)")
        lay = QVBoxLayout(self.class_box)
        self.class_list = QListWidget()
        self.class_list.setMaximumHeight(150)
        lay.addWidget(self.class_list)
        row = QHBoxLayout()
        self.add_btn = QPushButton("Add")
        self.rename_btn = QPushButton("Rename")
        self.color_btn = QPushButton("Colour")
        self.delete_btn = QPushButton("Delete")
        for b, f in (
            (self.add_btn, self._ask_add_class),
            (self.rename_btn, self._ask_rename_class),
            (self.color_btn, self._ask_recolor_class),
            (self.delete_btn, self._ask_delete_class),
        ):
            b.clicked.connect(f)
            row.addWidget(b)
        lay.addLayout(row)
        root.addWidget(self.class_box)

        # undo / redo, lost annotations
        urow = QHBoxLayout()
        self.undo_btn = QPushButton("Undo")
        self.undo_btn.setToolTip("Undo the last annotation change (Ctrl+Z)")
        self.undo_btn.clicked.connect(self.undo)
        self.redo_btn = QPushButton("Redo")
        self.redo_btn.setToolTip("Redo (Ctrl+Shift+Z)")
        self.redo_btn.clicked.connect(self.redo)
        self.reattach_btn = QPushButton("Re-attach lost")
        self.reattach_btn.setToolTip(
            "Put each lost annotation (an x in its class colour) on the cell now under it"
        )
        self.reattach_btn.clicked.connect(self.reattach_under_points)
        for b in (self.undo_btn, self.redo_btn, self.reattach_btn):
            urow.addWidget(b)
        root.addLayout(urow)
        self.lost_label = QLabel("")
        self.lost_label.setWordWrap(True)
        root.addWidget(self.lost_label)

        # values
        self.value_box = QGroupBox("Values (keys 1-9: from min to max, 0 / Backspace clear)")
        form = QFormLayout(self.value_box)
        self.value_min = QDoubleSpinBox()
        self.value_max = QDoubleSpinBox()
        self.value = QDoubleSpinBox()
        for w in (self.value_min, self.value_max, self.value):
            w.setRange(-1e9, 1e9)
            w.setDecimals(3)
            w.setSingleStep(0.05)
        self.value_max.setValue(1.0)
        self.value.setValue(0.5)
        rng = QHBoxLayout()
        rng.addWidget(self.value_min)
        rng.addWidget(QLabel("to"))
        rng.addWidget(self.value_max)
        form.addRow("Range", rng)
        vrow = QHBoxLayout()
        vrow.addWidget(self.value)
        self.assign_btn = QPushButton("Assign to cell")
        self.assign_btn.clicked.connect(lambda: self.annotate_current(value=self.value.value()))
        vrow.addWidget(self.assign_btn)
        form.addRow("Value", vrow)
        self.value_box.setVisible(False)
        root.addWidget(self.value_box)

        # learning
        learn = QGroupBox("Classifier")
        form = QFormLayout(learn)
        self.kind = QComboBox()
        for k, name in CLASSIFIERS.items():
            self.kind.addItem(name, k)
        self.kind.currentIndexChanged.connect(self._settings_changed)
        form.addRow("Model", self.kind)
        self.trees = QSpinBox()
        self.trees.setRange(1, 2000)
        self.trees.setValue(ClassifierSettings().trees)
        self.trees.setToolTip("Trees of the random forest: fewer retrain and predict faster.")
        self.trees.valueChanged.connect(self._settings_changed)
        form.addRow("Trees", self.trees)
        groups = QGridLayout()  # three a row: the dock stays narrow
        self.groups: dict[str, QCheckBox] = {}
        for i, g in enumerate(FEATURE_GROUP_NAMES):
            cb = QCheckBox(g)
            cb.setChecked(True)
            cb.toggled.connect(self._settings_changed)
            self.groups[g] = cb
            groups.addWidget(cb, i // 3, i % 3)
        form.addRow("Features", groups)
        opts = QHBoxLayout()
        self.auto = QCheckBox("Retrain after each annotation")
        self.auto.setChecked(True)
        self.retrain_btn = QPushButton("Retrain now")
        self.retrain_btn.clicked.connect(lambda: self.retrain(full=True))
        opts.addWidget(self.auto)
        opts.addWidget(self.retrain_btn)
        form.addRow(opts)
        self.display = QComboBox()
        for k, name in DISPLAY_MODES.items():
            self.display.addItem(name, k)
        self.display.currentIndexChanged.connect(lambda _i: self.refresh_views())
        form.addRow("Show", self.display)
        self.click_mode = QCheckBox("Click a cell to give it the selected class")
        self.click_mode.setToolTip(
            "A click gives the cell the class selected above; a second click clears it"
        )
        form.addRow(self.click_mode)
        root.addWidget(learn)

        # active learning
        al = QGroupBox("Active learning")
        form = QFormLayout(al)
        self.strategy = QComboBox()
        for name in STRATEGIES:
            self.strategy.addItem(name, name)
        self.strategy.setCurrentText("margin")
        self.strategy.currentIndexChanged.connect(lambda _i: self._remember_settings())
        form.addRow("Strategy", self.strategy)
        nrow = QHBoxLayout()
        self.next_btn = QPushButton("Next cell (N)")
        self.next_btn.clicked.connect(self.next_cell)
        self.auto_next = QCheckBox("go on after each answer")
        self.auto_next.setChecked(True)
        nrow.addWidget(self.next_btn)
        nrow.addWidget(self.auto_next)
        form.addRow(nrow)
        qrow = QHBoxLayout()
        self.queue_k = QSpinBox()
        self.queue_k.setRange(1, 200)
        self.queue_k.setValue(10)
        self.queue_btn = QPushButton("Propose a queue")
        self.queue_btn.clicked.connect(self.fill_queue)
        qrow.addWidget(self.queue_k)
        qrow.addWidget(self.queue_btn)
        form.addRow("Queue", qrow)
        self.queue = QListWidget()
        self.queue.setMaximumHeight(120)
        self.queue.itemClicked.connect(self._on_queue_clicked)
        form.addRow(self.queue)
        root.addWidget(al)

        # quality
        qual = QGroupBox("Quality")
        lay = QVBoxLayout(qual)
        self.quality_label = QLabel("Annotate cells of at least two classes.")
        self.quality_label.setWordWrap(True)
        lay.addWidget(self.quality_label)
        self.confusion = QTableWidget()
        self.confusion.setMaximumHeight(160)
        lay.addWidget(self.confusion)
        self.importance_label = QLabel("")
        self.importance_label.setWordWrap(True)
        lay.addWidget(self.importance_label)
        root.addWidget(qual)

        # session
        srow = QGridLayout()  # two a row: the dock stays narrow
        self.save_session_btn = QPushButton("Save session as…")
        self.save_session_btn.clicked.connect(self._ask_save_session)
        self.open_session_btn = QPushButton("Open session…")
        self.open_session_btn.clicked.connect(self._ask_open_session)
        self.save_clf_btn = QPushButton("Save classifier…")
        self.save_clf_btn.clicked.connect(self._ask_save_classifier)
        self.load_clf_btn = QPushButton("Load classifier…")
        self.load_clf_btn.clicked.connect(self._ask_load_classifier)
        for i, b in enumerate(
            (self.save_session_btn, self.open_session_btn, self.save_clf_btn, self.load_clf_btn)
        ):
            srow.addWidget(b, i // 2, i % 2)
        root.addLayout(srow)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        root.addWidget(self.status)
        root.addStretch(1)

    # ---- state helpers -------------------------------------------------------------
    @property
    def task(self) -> str:
        return str(self.mode.currentData())

    def settings(self) -> Any:
        """The classifier (or regressor) settings read from the controls."""
        groups = tuple(g for g, cb in self.groups.items() if cb.isChecked())
        if not groups:
            raise ValueError("Tick at least one feature group.")
        feature_groups = None if len(groups) == len(FEATURE_GROUP_NAMES) else groups
        if self.task == "regression":
            from ..core.classify.regression import REGRESSORS, RegressorSettings

            kind = str(self.kind.currentData())
            kind = kind if kind in REGRESSORS else "random_forest"
            return RegressorSettings(kind=kind, feature_groups=feature_groups)  # type: ignore[arg-type]
        return ClassifierSettings(
            kind=self.kind.currentData(), feature_groups=feature_groups, trees=self.trees.value()
        )

    def layers(self) -> list[Labels]:
        """The labels layers taking part: measured (a ``label`` column), not our views."""
        return list(self._tracked.values())

    def key_of(self, layer: Labels) -> str:
        return self._keys.setdefault(id(layer), layer_key(layer))

    def _is_candidate(self, layer: Any) -> bool:
        if not isinstance(layer, Labels) or source_of(layer).get("role") == VIEW_ROLE:
            return False
        return "label" in layer.features.columns and len(layer.features) > 0

    def _set_status(self, text: str) -> None:
        if self.store.save_error:
            text = f"{text}\n⚠ {self.store.save_error}; your annotations are kept in memory: use *Save session as…*."
        self.status.setText(text)

    # ---- layers --------------------------------------------------------------------
    def _sync_layers(self, _event: Any = None) -> None:
        present = {id(layer) for layer in self.viewer.layers}
        for lid in [lid for lid in self._tracked if lid not in present]:
            layer = self._tracked.pop(lid)
            self._tables.pop(lid, None)
            self._bases.pop(lid, None)
            self._snapshots.pop(lid, None)
            layer.events.features.disconnect(self._on_features)
            layer.events.data.disconnect(self._on_data)
            self.key_help.forget(layer)
            if hasattr(layer.events, "paint"):
                layer.events.paint.disconnect(self._on_paint)
            for extra in (find_view(self.viewer, layer), find_lost_layer(self.viewer, layer)):
                if extra is not None:
                    self.viewer.layers.remove(extra)
            self._forget_layer(layer)
        for layer in list(self.viewer.layers):
            if id(layer) in self._tracked:
                continue
            if isinstance(layer, Labels) and source_of(layer).get("role") != VIEW_ROLE:
                # watch every labels layer: one measured later joins then
                layer.events.features.connect(self._on_features)
                layer.events.data.connect(self._on_data)
                if hasattr(layer.events, "paint"):
                    layer.events.paint.connect(self._on_paint)
                self._tracked[id(layer)] = layer
                self._bind_keys(layer)
                self._adopt(layer)
        self.cache.forget([self.key_of(lay) for lay in self._tracked.values()])

    def _forget_layer(self, layer: Labels) -> None:
        """A layer left the viewer: nothing shown may still describe it."""
        key = self._keys.pop(id(layer), None) or layer_key(layer)
        if self.result is not None:
            self.result.predictions.pop(key, None)
        if self.current is not None and self.current[0] is layer:
            self.clear_proposal()
        for i in reversed(range(self.queue.count())):
            if self.queue.item(i).data(Qt.ItemDataRole.UserRole).image == key:
                self.queue.takeItem(i)
        self._refresh_classes()
        self._schedule()

    def _adopt(self, layer: Labels) -> None:
        """Take a (re)measured layer's table; keep our annotations on it."""
        lid = id(layer)
        if not self._is_candidate(layer):
            self._tables.pop(lid, None)
            self._bases.pop(lid, None)
            return
        table = table_of(layer)
        table = table.drop(columns=[c for c in table.columns if c.startswith(PHENO_PREFIX)])
        self._tables[lid] = table
        self._bases[lid] = features_for_layer(table)
        self._snapshots[lid] = np.array(layer.data, copy=True)
        key = self.key_of(layer)
        if key not in self.store.images:
            self.store.register_image(key, path=source_of(layer).get("source_path"), layer=layer.name)
        if self.store.annotated_labels(key) or self.store.lost(key):
            report = self.store.reconcile(key, layer.data, self._areas(layer))
            if report.changed:
                self._set_status(f"{layer.name}: annotations checked against its cells: {report.summary()}.")
                self._invalidate(layer)
                self._refresh_classes()
        self._write_features(layer)
        self._show_lost(layer)

    # ---- geometry and lost annotations ---------------------------------------------
    def _areas(self, layer: Labels) -> dict[int, int] | None:
        table = self._tables.get(id(layer))
        if table is None or "area" not in table.columns:
            return None
        return dict(zip(table["label"].astype(int).tolist(), table["area"].astype(int).tolist(), strict=True))

    def _shape_for(self, layer: Labels, label: int, data: Any = None) -> CellShape | None:
        """The geometry of one cell (the table's bounding box saves a scan of the image)."""
        arr = np.asarray(layer.data if data is None else data)
        table = self._tables.get(id(layer))
        bbox = None
        if data is None and arr.ndim == 2 and table is not None and "bbox_min_y" in table.columns:
            row = np.flatnonzero(table["label"].to_numpy() == int(label))
            if len(row):
                r = table.iloc[int(row[0])]
                bbox = (
                    (int(r["bbox_min_y"]), int(r["bbox_min_x"])),
                    (int(r["bbox_max_y"]), int(r["bbox_max_x"])),
                )
        return cell_shape(arr, int(label), bbox)

    def _show_lost(self, layer: Labels) -> None:
        lost = self.store.lost(self.key_of(layer))
        colors = {c.name: c.color for c in self.store.classes}
        self._writing = True
        try:
            update_lost_layer(self.viewer, layer, lost, colors)
        finally:
            self._writing = False
        n = len(self.store.lost())
        self.lost_label.setText(
            f"{n} lost annotation(s): their cells are not in the current segmentation. They are kept "
            "(x marks), come back by themselves when a segmentation has their cell again, or with "
            "*Re-attach lost*."
            if n
            else ""
        )
        self.reattach_btn.setEnabled(n > 0)

    def _show_all_lost(self) -> None:
        for lay in self.layers():
            self._show_lost(lay)

    def would_lose(self, layer: Labels, new_labels: np.ndarray) -> tuple[int, int]:
        """How many of ``layer``'s annotations new labels would keep track of: returns
        ``(annotated, lost)`` (the Segment & measure dock asks before losing many)."""
        if id(layer) not in self._tracked:
            return 0, 0
        annotated = self.store.annotated_labels(self.key_of(layer))
        if not annotated:
            return 0, 0
        old = np.asarray(layer.data)
        new = np.asarray(new_labels)
        if old.shape != new.shape:
            return len(annotated), len(annotated)
        return len(annotated), len(transfer_annotations(old, new, annotated).lost)

    def reattach_under_points(self) -> int:
        """Put every lost annotation on the cell now under its point; returns how many."""
        done = 0
        for layer in self.layers():
            if id(layer) not in self._tables:
                continue
            data = np.asarray(layer.data)
            for record in self.store.lost(self.key_of(layer)):
                c = record.centroid
                if c is None or len(c) != data.ndim:
                    continue
                idx = tuple(min(max(round(v), 0), n - 1) for v, n in zip(c, data.shape, strict=True))
                label = int(data[idx])
                if label > 0:
                    done += self._attach(layer, record, label)
        self._set_status(
            f"Re-attached {done} lost annotation(s)." if done else "No cell under the lost points."
        )
        return done

    def _attach(self, layer: Labels, record: LostAnnotation, label: int) -> bool:
        if not self.store.attach_lost(record, label):
            return False
        self._after_store_change()
        return True

    def _after_store_change(self) -> None:
        """Views after a change that may touch every image (undo, redo, re-attach)."""
        for lay in self.layers():
            self._invalidate(lay)
        self._write_all()
        self._show_all_lost()
        self._refresh_classes()
        self._schedule()

    def undo(self) -> bool:
        """Take back the last annotation change (Ctrl+Z)."""
        if not self.store.undo():
            self._set_status("Nothing to undo.")
            return False
        self._after_store_change()
        self._set_status(f"Undone ({len(self.store)} annotations now).")
        return True

    def redo(self) -> bool:
        """Do again what Undo took back (Ctrl+Shift+Z)."""
        if not self.store.redo():
            self._set_status("Nothing to redo.")
            return False
        self._after_store_change()
        self._set_status(f"Redone ({len(self.store)} annotations now).")
        return True

    def _undo_key(self, redo: bool) -> Callable[[Any], None]:
        def handler(owner: Any) -> None:
            # while painting, Ctrl+Z stays napari's paint undo
            if isinstance(owner, Labels) and owner.mode in _PAINT_MODES:
                (owner.redo if redo else owner.undo)()
                return
            (self.redo if redo else self.undo)()

        return handler

    def _on_features(self, event: Any) -> None:
        if self._writing:
            return
        layer = event.source
        self._adopt(layer)
        self._invalidate(layer)
        if self.current is not None and self.current[0] is layer:
            self.clear_proposal()
        self._schedule()

    def _on_data(self, event: Any) -> None:
        if self._writing:
            return
        self._transfer(event.source)

    def _on_paint(self, event: Any) -> None:
        self._transfer(event.source)

    def _transfer(self, layer: Labels) -> None:
        """Move the layer's annotations onto its new labels (IoU >= 0.5) and report."""
        lid = id(layer)
        old = self._snapshots.get(lid)
        new = np.asarray(layer.data)
        self._snapshots[lid] = np.array(new, copy=True)
        key = self.key_of(layer)
        annotated = self.store.annotated_labels(key)
        if old is None or not annotated:
            return
        if old.shape != new.shape:
            result = transfer_annotations(np.zeros_like(new), new, annotated)
        else:
            result = transfer_annotations(old, new, annotated)
        if result.n_kept == len(annotated) and all(o == n for o, n in result.moved.items()):
            return
        old_shapes = {
            int(lab): sh
            for lab in result.lost
            if self.store.shape(key, lab) is None and (sh := cell_shape(old, int(lab))) is not None
        }
        new_shapes = {
            int(n): sh for n in result.moved.values() if (sh := cell_shape(new, int(n))) is not None
        }
        self.store.apply_transfer(key, result, new_shapes=new_shapes, old_shapes=old_shapes)
        back = self.store.reattach(key, new)
        self.lost = [(key, int(lab), annotated[lab]) for lab in result.lost]
        lost_txt = ", ".join(f"{lab} ({c})" for _, lab, c in self.lost[:10])
        self._set_status(
            f"{layer.name}: kept {result.n_kept} of {len(annotated)} annotations after the labels changed"
            + (
                f"; lost: {lost_txt}"
                + (" …" if len(self.lost) > 10 else "")
                + " (kept as x marks; they come back when a segmentation has their cells)"
                if self.lost
                else "."
            )
            + (f" {len(back)} annotation(s) lost earlier came back." if back else "")
        )
        self._show_lost(layer)
        self._invalidate(layer)
        self._write_features(layer)
        self._refresh_classes()
        self._schedule()

    def _invalidate(self, layer: Labels) -> None:
        if self.result is not None:
            self.result.predictions.pop(self.key_of(layer), None)

    def clear_derived(self, why: str = "") -> None:
        """Forget everything derived from the annotations (model, predictions, quality,
        importances, proposals, the proposal ring) and clear their views: called whenever
        those inputs no longer support them, so that no view can show a stale state."""
        self.result = None
        self.quality = None
        self.importances = None
        self.confusion.setRowCount(0)
        self.confusion.setColumnCount(0)
        self.importance_label.setText("")
        if why:
            self.quality_label.setText(why)
        self.clear_proposal()
        self.queue.clear()

    def clear_proposal(self) -> None:
        """Drop the proposed cell and remove its ring."""
        self.current = None
        self._proposal_cursor = None
        for lay in list(self.viewer.layers):
            if isinstance(lay, Points) and source_of(lay).get("role") == "proposal":
                self.viewer.layers.remove(lay)

    # ---- classes -------------------------------------------------------------------
    def add_class(self, name: str, color: str | None = None) -> None:
        self.store.add_class(name, color)
        self._refresh_classes()
        self.refresh_views()

    def rename_class(self, old: str, new: str) -> None:
        self.store.rename_class(old, new)
        self._refresh_classes()
        self._write_all()
        self._schedule()

    def recolor_class(self, name: str, color: str) -> None:
        self.store.recolor_class(name, color)
        self._refresh_classes()
        self.refresh_views()

    def delete_class(self, name: str) -> int:
        n = self.store.remove_class(name)
        self._refresh_classes()
        self._write_all()
        self._schedule()
        return n

    def selected_class(self) -> str | None:
        item = self.class_list.currentItem()
        return None if item is None else str(item.data(Qt.ItemDataRole.UserRole))

    def _predicted_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        if self.result is None or self.result.task != "classification":
            return counts
        for pred in self.result.predictions.values():
            for c, n in pred["pheno_class"].value_counts().items():
                counts[str(c)] = counts.get(str(c), 0) + int(n)
        return counts

    def _refresh_classes(self) -> None:
        current = self.selected_class()
        predicted = self._predicted_counts()
        open_keys = [self.key_of(lay) for lay in self.layers() if id(lay) in self._tables]
        annotated = self.store.counts(images=open_keys)
        self.class_list.clear()
        for k, cls in enumerate(self.store.classes):
            key = f"{k + 1}: " if k < 9 else ""
            item = QListWidgetItem(
                _swatch(cls.color),
                f"{key}{cls.name}  —  {annotated.get(cls.name, 0)} annotated, {predicted.get(cls.name, 0)} predicted",
            )
            item.setData(Qt.ItemDataRole.UserRole, cls.name)
            self.class_list.addItem(item)
            if cls.name == current:
                self.class_list.setCurrentItem(item)
        if self.class_list.currentItem() is None and self.class_list.count():
            self.class_list.setCurrentRow(0)

    def _ask_add_class(self) -> None:
        name, ok = QInputDialog.getText(self, "New class", "Class name:")
        if ok and name.strip():
            try:
                self.add_class(name.strip())
            except ValueError as exc:
                show_error(str(exc))

    def _ask_rename_class(self) -> None:
        old = self.selected_class()
        if old is None:
            return
        new, ok = QInputDialog.getText(self, "Rename class", "New name:", text=old)
        if ok and new.strip():
            try:
                self.rename_class(old, new.strip())
            except ValueError as exc:
                show_error(str(exc))

    def _ask_recolor_class(self) -> None:
        name = self.selected_class()
        if name is None:
            return
        cls = next(c for c in self.store.classes if c.name == name)
        color = QColorDialog.getColor(QColor(cls.color), self, f"Colour of {name}")
        if color.isValid():
            self.recolor_class(name, color.name())

    def _ask_delete_class(self) -> None:
        name = self.selected_class()
        if name is None:
            return
        n = self.store.count(name)
        if n:
            answer = QMessageBox.question(self, "Delete class", f"Delete {name!r} and its {n} annotations?")
            if answer != QMessageBox.StandardButton.Yes:
                return
        self.delete_class(name)

    # ---- annotating ----------------------------------------------------------------
    def _bind_keys(self, owner: Any) -> None:
        """Class keys on the viewer and on every labels layer (whose own 1-7 mode keys they
        replace while this widget is open; E/P/F/L/Z still switch modes)."""
        for i, k in enumerate(CLASS_KEYS):
            owner.bind_key(k, self._key_handler(i + 1), overwrite=True)
        owner.bind_key("0", self._key_handler(0), overwrite=True)
        owner.bind_key("Backspace", self._key_handler(0), overwrite=True)
        owner.bind_key("n", lambda _o: self.next_cell(), overwrite=True)
        owner.bind_key("x", lambda _o: self.exclude_target(), overwrite=True)
        owner.bind_key("Control-Z", self._undo_key(redo=False), overwrite=True)
        owner.bind_key("Control-Shift-Z", self._undo_key(redo=True), overwrite=True)
        owner.bind_key("Control-Y", self._undo_key(redo=True), overwrite=True)
        self._bound.append(owner)
        if isinstance(owner, Labels):
            self.key_help.attach(owner)

    def _key_handler(self, number: int) -> Callable[[Any], None]:
        def handler(_owner: Any) -> None:
            self.press(number)

        return handler

    def press(self, number: int) -> None:
        """What key ``number`` does: 1-9 annotate the target cell, 0 clears it."""
        target = self.target_cell()
        if target is None:
            self._set_status("Point at a cell (or press N for a proposal) before pressing a class key.")
            return
        layer, label = target
        if self.task == "regression":
            if number == 0:
                self.annotate(layer, label, value=None)
            else:
                lo, hi = self.value_min.value(), self.value_max.value()
                self.annotate(layer, label, value=lo + (number - 1) / 8 * (hi - lo))
            return
        if number == 0:
            self.annotate(layer, label, None)
            return
        classes = self.store.classes
        if number > len(classes):
            self._set_status(f"There is no class {number}; add classes first.")
            return
        self.annotate(layer, label, classes[number - 1].name)

    def cell_under_cursor(self) -> tuple[Labels, int] | None:
        pos = self.viewer.cursor.position
        active = self.viewer.layers.selection.active
        order = sorted(self.layers(), key=lambda lay: lay is not active)
        for layer in order:
            if not layer.visible or id(layer) not in self._tables:
                continue
            value = layer.get_value(pos, world=True)
            if isinstance(value, tuple):  # multiscale: (level, value)
                value = value[-1]
            if value is not None and int(value) > 0:
                return layer, int(value)
        return None

    def target_cell(self) -> tuple[Labels, int] | None:
        """The cell a key press applies to.

        Right after a proposal (*Next cell*, a queue item) it is the proposed cell until the
        mouse actually moves: the camera flew under a resting mouse, so the cell that now
        happens to lie under it was never pointed at. Otherwise the cell under the cursor,
        else the proposed/selected one.
        """
        if self.current is not None and self._proposal_cursor is not None:
            if tuple(np.asarray(self.viewer.cursor.position, dtype=float)) == self._proposal_cursor:
                return self.current
            self._proposal_cursor = None
        return self.cell_under_cursor() or self.current

    def exclude_target(self) -> None:
        """Key X: exclude the target cell (debris, a half cell) from proposals and
        training; X again takes it back in."""
        target = self.target_cell()
        if target is None:
            self._set_status("Point at a cell (or press N for a proposal) before pressing X.")
            return
        self.exclude(*target)

    def exclude(self, layer: Labels, label: int, excluded: bool | None = None) -> None:
        """Exclude a cell from proposals and training (``excluded=None``: toggle)."""
        key = self.key_of(layer)
        table = self._tables.get(id(layer))
        if table is None or not (table["label"].to_numpy() == int(label)).any():
            self._set_status(f"Cell {label} has no measurements; measure {layer.name} first.")
            return
        now = self.store.is_excluded(key, int(label))
        if excluded is None:
            excluded = not now
        if excluded == now:
            return
        if excluded:
            self.store.exclude(key, int(label), shape=self._shape_for(layer, int(label)))
            what = "excluded (X again takes it back)"
        else:
            self.store.annotate(key, int(label), None)
            what = "taken back in"
        self._set_status(f"{layer.name}: cell {label} {what}.")
        self._flash(layer, int(label), None, what)
        if self.current is not None and self.current[0] is layer and self.current[1] == int(label):
            self._advance = bool(excluded) and self.auto_next.isChecked()
        self._remove_from_queue(key, int(label))
        self._write_features(layer)
        self._refresh_classes()
        self._schedule()

    def annotate_current(self, cls: str | None = None, value: float | None = None) -> None:
        target = self.target_cell()
        if target is not None:
            self.annotate(target[0], target[1], cls, value=value)

    def annotate(
        self, layer: Labels, label: int, cls: str | None = None, *, value: float | str | None = "unset"
    ) -> None:
        """Give a cell a class (or, with ``value=``, a value); ``None`` clears it."""
        key = self.key_of(layer)
        table = self._tables.get(id(layer))
        if table is None or not (table["label"].to_numpy() == int(label)).any():
            self._set_status(f"Cell {label} has no measurements; measure {layer.name} first.")
            return
        shape = None if cls is None and value in ("unset", None) else self._shape_for(layer, int(label))
        if value != "unset":
            self.store.set_value(key, label, None if value is None else float(value), shape=shape)  # type: ignore[arg-type]
            what = "cleared" if value is None else f"= {float(value):.3g}"  # type: ignore[arg-type]
        else:
            self.store.annotate(key, label, cls, shape=shape)
            what = "cleared" if cls is None else f"→ {cls}"
        self._set_status(f"{layer.name}: cell {label} {what} (session saved to {self.store.path}).")
        self._flash(layer, int(label), cls if value == "unset" else None, what)
        if self.current is not None and self.current[0] is layer and self.current[1] == int(label):
            self._advance = self.auto_next.isChecked() and (cls is not None or value not in ("unset", None))
        self._remove_from_queue(key, int(label))
        if self.auto.isChecked() and self.ready_to_train() is None:
            # the retrain that follows writes the table; show the answer at once meanwhile
            self._paint_cell(layer, int(label), cls if value == "unset" else None)
        else:
            self._write_features(layer)
        self._refresh_classes()
        self._schedule()

    def _flash(self, layer: Labels, label: int, cls: str | None, what: str) -> None:
        """Show the answer where the eyes are: the cell rings in its class colour for a
        moment and the canvas says the class's new count."""
        table = self._tables.get(id(layer))
        if table is None:
            return
        world = cell_world_position(self.viewer, layer, table, label)
        size = 1.3 * max(cell_diameter(table, label), 4.0) * float(np.mean(np.abs(layer.scale[-2:])))
        color = next((c.color for c in self.store.classes if c.name == cls), None)
        text = f"cell {label} {what}"
        if cls is not None:
            text += f": {self.store.count(cls)} {cls} annotated"
        self.flash.show(world, size, color, text)

    def annotate_many(self, layer: Labels, labels: list[int], cls: str | None) -> int:
        """Give many cells one class at once (e.g. a lasso selection in the Plots dock);
        ``None`` clears them. Saved once, retrained once. Returns how many changed."""
        key = self.key_of(layer)
        shapes = None
        if cls is not None:
            shapes = {int(lab): sh for lab in labels if (sh := self._shape_for(layer, int(lab))) is not None}
        n = self.store.annotate_many(key, labels, cls, shapes=shapes)
        for label in labels:
            self._remove_from_queue(key, int(label))
        self._set_status(f"{layer.name}: {n} cells {'cleared' if cls is None else f'→ {cls}'}.")
        self._write_features(layer)
        self._refresh_classes()
        self._schedule()
        return n

    def _paint_cell(self, layer: Labels, label: int, cls: str | None) -> None:
        """Repaint one cell of the view (annotated colour), without touching the rest."""
        view = find_view(self.viewer, layer)
        mode = self._display_mode()
        if view is None or mode not in ("predictions", "annotations"):
            return
        names = [c.name for c in self.store.classes]
        if cls is None:
            pred = self.result.predictions.get(self.key_of(layer)) if self.result is not None else None
            code = 0
            if pred is not None and mode == "predictions":
                table = self._tables[id(layer)]
                row = np.flatnonzero(table["label"].to_numpy() == label)
                if len(row) and len(pred) == len(table):
                    guess = str(pred["pheno_class"].iloc[int(row[0])])
                    code = 1 + names.index(guess) if guess in names else 0
        else:
            code = 1 + len(names) + names.index(cls)
        where = np.nonzero(np.asarray(layer.data) == label)
        self._writing = True
        try:
            view.data_setitem(where, code)
        finally:
            self._writing = False

    def _on_mouse(self, viewer: Any, event: Any) -> Any:
        if not self.click_mode.isChecked() or event.button != 1 or event.modifiers:
            return
        yield
        dragged = False
        while event.type == "mouse_move":
            dragged = True
            yield
        if dragged:
            return
        hit = self.cell_under_cursor()
        if hit is None:
            return
        layer, label = hit
        if self.task == "regression":
            self.annotate(layer, label, None, value=self.value.value())
            return
        cls = self.selected_class()
        if cls is None:
            self._set_status("Add a class first.")
            return
        key = self.key_of(layer)
        self.annotate(layer, label, None if self.store.get(key, label) == cls else cls)

    # ---- writing results into layers ------------------------------------------------
    def _pheno_frame(self, layer: Labels) -> pd.DataFrame:
        table = self._tables[id(layer)]
        key = self.key_of(layer)
        out = pd.DataFrame(index=table.index)
        labels = table["label"].to_numpy()
        out["pheno_annotation"] = annotation_column(
            labels, self.store.annotations(key), [c.name for c in self.store.classes]
        )
        excluded = self.store.excluded(key)
        if excluded:
            out["pheno_excluded"] = np.isin(labels, np.fromiter(excluded, dtype=np.int64))
        values = self.store.values(key)
        if values or self.task == "regression":
            out["pheno_value_annotation"] = np.array(
                [values.get(int(lab), np.nan) for lab in labels], dtype=float
            )
        pred = self.result.predictions.get(key) if self.result is not None else None
        if pred is not None and len(pred) == len(table) and pred.index.equals(table.index):
            for c in pred.columns:
                out[c] = pred[c]
            if excluded and "pheno_class" in out:  # debris gets no phenotype (nor a colour)
                out["pheno_class"] = out["pheno_class"].where(~out["pheno_excluded"])
        return out

    def _write_features(self, layer: Labels) -> None:
        if id(layer) not in self._tables:
            return
        merged = pd.concat([self._bases[id(layer)], self._pheno_frame(layer)], axis=1)
        self._writing = True
        try:
            layer.features = merged
        finally:
            self._writing = False
        self._update_view(layer, merged)

    def _write_all(self) -> None:
        for layer in self.layers():
            self._write_features(layer)

    def _display_mode(self) -> str:
        mode = str(self.display.currentData())
        if self.task == "regression" and mode in ("predictions", "uncertainty"):
            return "value"
        return mode

    def _update_view(self, layer: Labels, merged: pd.DataFrame) -> None:
        classes = [(c.name, c.color) for c in self.store.classes]
        mode = self._display_mode()
        vr = (self.value_min.value(), self.value_max.value()) if mode == "value" else None
        self._writing = True
        try:
            update_view(self.viewer, layer, merged, classes, mode, value_range=vr)
        finally:
            self._writing = False

    def refresh_views(self) -> None:
        """Repaint every phenotype view (after a display or colour change)."""
        self._write_all()

    # ---- training ------------------------------------------------------------------
    def _settings_changed(self, *_: Any) -> None:
        self._remember_settings()
        self._schedule()

    def _remember_settings(self) -> None:
        """Keep the controls' settings in the session (saved with it)."""
        if getattr(self, "_restoring", False):
            return
        settings = {
            "task": self.task,
            "classifier": str(self.kind.currentData()),
            "feature_groups": [g for g, cb in self.groups.items() if cb.isChecked()],
            "trees": int(self.trees.value()),
            "strategy": str(self.strategy.currentData()),
            "value_range": [self.value_min.value(), self.value_max.value()],
        }
        if settings != self.store.settings:
            self.store.settings = settings
            if self.store.path is not None:
                self.store.save(self.store.path)

    def _restore_settings(self, settings: dict[str, Any]) -> None:
        self._restoring = True
        try:
            if settings.get("task") in ("classification", "regression"):
                self.mode.setCurrentIndex(self.mode.findData(settings["task"]))
            if settings.get("classifier") in CLASSIFIERS:
                self.kind.setCurrentIndex(self.kind.findData(settings["classifier"]))
            groups = settings.get("feature_groups")
            if isinstance(groups, list) and groups:
                for g, cb in self.groups.items():
                    cb.setChecked(g in groups)
            if isinstance(settings.get("trees"), int):
                self.trees.setValue(settings["trees"])
            if settings.get("strategy") in STRATEGIES:
                self.strategy.setCurrentIndex(self.strategy.findData(settings["strategy"]))
            vr = settings.get("value_range")
            if isinstance(vr, list) and len(vr) == 2:
                self.value_min.setValue(float(vr[0]))
                self.value_max.setValue(float(vr[1]))
        finally:
            self._restoring = False

    def _on_mode_changed(self, _i: int) -> None:
        regression = self.task == "regression"
        self.class_box.setVisible(not regression)
        self.value_box.setVisible(regression)
        self._remember_settings()
        self.clear_derived()
        self._write_all()
        self._refresh_classes()
        self._schedule()

    def _schedule(self) -> None:
        self._refine_timer.stop()
        self._quality_timer.stop()
        if self.auto.isChecked():
            self._timer.start()

    def _training_inputs(self) -> tuple[dict[str, pd.DataFrame], dict[str, dict[int, Any]], int]:
        tables: dict[str, pd.DataFrame] = {}
        annotations: dict[str, dict[int, Any]] = {}
        for layer in self.layers():
            if id(layer) not in self._tables:
                continue
            key = self.key_of(layer)
            tables[key] = self._tables[id(layer)]
            annotations[key] = (
                self.store.values(key) if self.task == "regression" else self.store.annotations(key)
            )
        n = sum(len(a) for a in annotations.values())
        return tables, annotations, n

    def ready_to_train(self) -> str | None:
        """Why training cannot start yet (``None`` when it can)."""
        tables, annotations, n = self._training_inputs()
        if not tables:
            return "Segment and measure an image first."
        if self.extra is not None:
            n += len(self.extra[1])
        if self.task == "regression":
            return None if n >= 3 else "Give at least 3 cells a value to train."
        present = {c for a in annotations.values() for c in a.values()}
        if self.extra is not None:
            present |= {str(c) for c in self.extra[1]}
        return None if len(present) >= 2 else "Annotate cells of at least two classes to train."

    def live_settings(self, settings: Any) -> Any:
        """The settings of a live pass: a forest of at most :data:`LIVE_TREES` trees."""
        if isinstance(settings, ClassifierSettings) and settings.kind == "random_forest":
            return replace(settings, trees=min(settings.trees, LIVE_TREES))
        return settings

    def retrain(self, full: bool = False) -> None:
        """Train on the annotations and predict every cell (in a thread).

        While the user annotates, each retrain is a *live* pass: a random forest is
        cut to :data:`LIVE_TREES` trees, so that a cycle stays well under a second on
        100,000 cells. After a pause of :data:`QUALITY_DELAY_MS` the *full* model
        (all the trees asked for) is trained and predicts every cell again, then the
        cross-validation runs. Other models are always trained in full.
        """
        self._timer.stop()
        if not full:
            self._refine_timer.stop()
            self._quality_timer.stop()
        if self._worker is not None:
            self._pending = True
            return
        why = self.ready_to_train()
        if why is not None:
            self.clear_derived(why)
            self._write_all()
            self._refresh_classes()
            return
        try:
            settings = self.settings()
        except ValueError as exc:
            show_error(str(exc))
            return
        tables, annotations, _ = self._training_inputs()
        self._pending = False
        run_settings = settings if full else self.live_settings(settings)
        self._full = run_settings == settings
        self._worker = start_job(
            iter_train_predict,
            tables,
            annotations,
            run_settings,
            task=self.task,
            cache=self.cache,
            n_jobs=-1,
            extra=self.extra,
            on_returned=self._on_trained,
            on_errored=self._on_train_error,
            on_finished=self._on_train_finished,
            title="Training",
        )

    def _on_trained(self, result: TrainResult) -> None:
        if result.task != self.task:
            return
        self.result = result
        self._write_all()
        self._refresh_classes()
        self._set_status(
            f"Trained on {result.n_train} cells in {result.seconds_train * 1e3:.0f} ms; predicted "
            f"{sum(len(p) for p in result.predictions.values())} cells in {result.seconds_predict * 1e3:.0f} ms"
            + (
                "."
                if self._full
                else f" (live forest of {LIVE_TREES} trees; the full forest follows after a pause)."
            )
        )
        if self._full:
            self._quality_timer.start()
        else:
            self._refine_timer.start()
        if self._advance and not self._pending:
            self._advance = False
            self.next_cell()

    def _on_train_error(self, exc: BaseException) -> None:
        self.quality_label.setText(f"Training failed: {user_message(exc)}")
        show_error(f"Training failed: {user_message(exc)}")

    def _on_train_finished(self) -> None:
        self._worker = None
        if self._pending:
            self._pending = False
            self.retrain()

    def start_quality(self) -> None:
        """Cross-validate in the background (once at a time; the latest annotations win)."""
        if self._quality_worker is not None:
            self._quality_pending = True
            return
        tables, annotations, _ = self._training_inputs()
        try:
            settings = self.settings()
        except ValueError:
            return
        self._quality_pending = False
        task = self.task
        self._quality_worker = start_job(
            iter_quality,
            tables,
            annotations,
            settings,
            task=task,
            extra=self.extra,
            on_returned=lambda q: self._on_quality(q, task),
            on_errored=lambda exc: self.quality_label.setText(
                f"Cross-validation failed: {user_message(exc)}"
            ),
            on_finished=self._on_quality_finished,
            title="Cross-validation",
        )

    def _on_quality_finished(self) -> None:
        self._quality_worker = None
        if self._quality_pending:
            self.start_quality()

    def _show_importances(self) -> None:
        self.importances = self.result.importances if self.result is not None else None
        if self.importances is not None:
            top = ", ".join(f"{n} {v:.2f}" for n, v in self.importances.head(8).items())
            self.importance_label.setText(f"Most important features: {top}")
        else:
            self.importance_label.setText("")

    def _on_quality(self, quality: dict[str, Any] | None, task: str) -> None:
        self.quality = quality
        self._show_importances()
        if quality is None:
            self.quality_label.setText(
                "Cross-validation needs 2 annotated cells of each class"
                if task == "classification"
                else "Cross-validation needs at least 5 cells with a value."
            )
            self.confusion.setRowCount(0)
            self.confusion.setColumnCount(0)
            return
        if task == "regression":
            self.quality_label.setText(
                f"{quality['folds']}-fold CV: R² {quality['r2']:.2f}, MAE {quality['mae']:.3g}, RMSE {quality['rmse']:.3g}"
            )
            self.confusion.setRowCount(0)
            self.confusion.setColumnCount(0)
            return
        pr = "; ".join(
            f"{c}: P {quality['precision'][c]:.2f} R {quality['recall'][c]:.2f}" for c in quality["precision"]
        )
        self.quality_label.setText(
            f"{quality['folds']}-fold CV accuracy {quality['accuracy']:.2f}, "
            f"balanced accuracy {quality['balanced_accuracy']:.2f}. {pr}"
        )
        conf: pd.DataFrame = quality["confusion"]
        self.confusion.setRowCount(len(conf))
        self.confusion.setColumnCount(len(conf.columns))
        self.confusion.setVerticalHeaderLabels([f"true {c}" for c in conf.index])
        self.confusion.setHorizontalHeaderLabels([str(c) for c in conf.columns])
        for i in range(len(conf)):
            for j in range(len(conf.columns)):
                self.confusion.setItem(i, j, QTableWidgetItem(str(int(conf.iat[i, j]))))

    # ---- active learning -----------------------------------------------------------
    def _layer_of_key(self, key: str) -> Labels | None:
        for layer in self.layers():
            if self.key_of(layer) == key:
                return layer
        return None

    def proposals(self, k: int = 1, diverse: bool = False) -> list[Proposal]:
        """The best cells to annotate next, from the latest predictions."""
        if self.result is None:
            return []
        tables = {self.key_of(lay): self._tables[id(lay)] for lay in self.layers() if id(lay) in self._tables}
        annotated = {
            key: {
                *(self.store.values(key) if self.task == "regression" else self.store.annotations(key)),
                *self.store.excluded(key),
            }
            for key in tables
        }
        # cells cut by the image border are a poor example: proposed only when nothing else is left
        avoid = {
            self.key_of(lay): border_labels(self._tables[id(lay)], np.shape(lay.data))
            for lay in self.layers()
            if id(lay) in self._tables
        }
        return propose(
            tables,
            self.result.predictions,
            annotated,
            avoid=avoid,
            strategy=str(self.strategy.currentData()),
            k=k,
            diverse=diverse,
            feature_names=self.result.feature_names
            if diverse or self.strategy.currentData() == "density"
            else None,
        )

    def next_cell(self) -> Proposal | None:
        """Fly to the most informative unannotated cell and wait for a class key."""
        if self.result is None:
            self._set_status(self.ready_to_train() or "Training… the proposal follows when it finishes.")
            if self._worker is not None:
                self._advance = True
            return None
        found = self.proposals(1)
        if not found:
            self._set_status("Every cell is annotated.")
            return None
        self.go_to(found[0])
        return found[0]

    def go_to(self, proposal: Proposal) -> None:
        layer = self._layer_of_key(proposal.image)
        if layer is None:
            return
        table = self._tables[id(layer)]
        row = table.loc[table["label"].to_numpy() == proposal.label]
        diameter = (
            float(row["equivalent_diameter"].iloc[0]) if "equivalent_diameter" in row and len(row) else 20.0
        )
        world = fly_to_cell(self.viewer, layer, table, proposal.label, zoom_to=12 * max(diameter, 4.0))
        self.current = (layer, proposal.label)
        self._proposal_cursor = tuple(np.asarray(self.viewer.cursor.position, dtype=float))
        layer.selected_label = proposal.label
        self._highlight(layer, world, diameter)
        guess = f", predicted {proposal.predicted}" if proposal.predicted else ""
        self._set_status(
            f"Proposed: {layer.name} cell {proposal.label}{guess} (score {proposal.score:.2f}). Press its class key."
        )

    def _highlight(self, layer: Labels, world: np.ndarray | None, diameter: float) -> None:
        marker = None
        for lay in self.viewer.layers:
            if isinstance(lay, Points) and source_of(lay).get("role") == "proposal":
                marker = lay
        if world is None:
            return
        size = 1.6 * max(diameter, 4.0) * float(np.mean(layer.scale[-2:]))
        if marker is None:
            marker = Points(
                [world],
                name="proposed cell",
                symbol="disc",
                size=size,
                face_color="transparent",
                border_color="yellow",
                border_width=0.12,
                border_width_is_relative=True,
                metadata={META_KEY: {"role": "proposal"}},
            )
            add_display_layer(self.viewer, marker)
        else:
            marker.data = np.asarray([world])
            marker.size = size

    def fill_queue(self) -> list[Proposal]:
        """Show the top proposals (a diverse batch) as a list to work through."""
        found = self.proposals(self.queue_k.value(), diverse=True)
        self.queue.clear()
        for p in found:
            layer = self._layer_of_key(p.image)
            name = layer.name if layer is not None else p.image
            guess = f" → {p.predicted}?" if p.predicted else ""
            item = QListWidgetItem(f"{name}: cell {p.label}{guess} ({p.score:.2f})")
            item.setData(Qt.ItemDataRole.UserRole, p)
            self.queue.addItem(item)
        if not found:
            self._set_status(self.ready_to_train() or "Nothing to propose.")
        return found

    def _on_queue_clicked(self, item: QListWidgetItem) -> None:
        self.go_to(item.data(Qt.ItemDataRole.UserRole))

    def _remove_from_queue(self, key: str, label: int) -> None:
        for i in range(self.queue.count()):
            p = self.queue.item(i).data(Qt.ItemDataRole.UserRole)
            if p.image == key and p.label == label:
                self.queue.takeItem(i)
                break

    # ---- files ---------------------------------------------------------------------
    def save_session(self, path: str | os.PathLike) -> Path:
        """Save the session to ``path`` and keep autosaving there."""
        self._remember_settings()
        self.store.path = Path(path)
        return self.store.save(path)

    def open_session(self, path: str | os.PathLike) -> None:
        """Restore classes and annotations (and keep autosaving to that file)."""
        self.store = AnnotationStore.load(path)
        self._restore_settings(dict(self.store.settings))
        self.clear_derived()
        known = {self.key_of(lay) for lay in self.layers()}
        missing = [k for k in self.store.images if k not in known]
        reports: list[str] = []
        for layer in self.layers():
            if id(layer) not in self._tables:
                continue
            report: ReconcileReport = self.store.reconcile(self.key_of(layer), layer.data, self._areas(layer))
            if report.changed or report.kept:
                reports.append(f"{layer.name}: {report.summary()}")
        self.store.clear_history()  # opening is not a change to take back
        self._refresh_classes()
        self._write_all()
        self._show_all_lost()
        self._set_status(
            f"Session {Path(path).name}: {len(self.store)} annotations"
            + (" (" + "; ".join(reports) + ")" if reports else "")
            + (f"; open these images to see the rest: {', '.join(missing)}" if missing else "")
        )
        self._schedule()

    def save_classifier(self, path: str | os.PathLike) -> Path:
        """Save the training set and settings (pickle-free, see :mod:`..io.classifier_io`)."""
        from ..core.classify.engine import common_feature_columns, training_set
        from ..io.classifier_io import save_classifier

        if self.task != "classification":
            raise ValueError("Saving is for classifiers; switch to Classes.")
        settings = self.settings()
        tables, annotations, _ = self._training_inputs()
        names = common_feature_columns(tables, settings.feature_groups)
        X, y, _ = training_set(tables, annotations, names)
        if len(set(y)) < 2:
            raise ValueError("Annotate cells of at least two classes before saving a classifier.")
        colors = {c.name: c.color for c in self.store.classes}
        return save_classifier(path, X, y, names, settings, colors=colors)

    def load_classifier(self, path: str | os.PathLike, channel_map: Mapping[str, str] | None = None) -> None:
        """Apply a saved classifier (or regressor) to every measured layer.

        Its training set joins the session's annotations in every later retrain, so
        annotating more refines it. Its channels pair with the layers' channels of the
        same name, or with the only channel when both have one; ``channel_map``
        (classifier channel -> the cells' channel) pairs the rest, and the training set's
        columns are renamed accordingly. A layer lacking any of its feature columns is
        refused with the columns named.

        Raises
        ------
        ChannelMismatch
            When a classifier channel has no partner and ``channel_map`` does not give one
            (Load classifier… then asks with :class:`~.channel_dialog.ChannelMapDialog`).
        ValueError
            For a file that is not a classifier, or cells measured differently.
        """
        from ..core.classify.model import check_columns
        from ..io.classifier_io import load_classifier

        loaded = load_classifier(path)
        tables = [(layer, self._tables[id(layer)]) for layer in self.layers() if id(layer) in self._tables]
        if tables:
            common = [str(c) for c in tables[0][1].columns if all(c in t.columns for _, t in tables[1:])]
            loaded = loaded.for_columns(common, channel_map)
        for layer, table in tables:
            try:
                check_columns(loaded.feature_names, table)
            except ValueError as exc:
                raise ValueError(f"{layer.name}: {exc}") from None
        renamed = loaded.metadata.get("channel_map") or {}
        self.mode.setCurrentIndex(1 if loaded.is_regression else 0)
        known = {c.name for c in self.store.classes}
        # the saved colours keep the order the classes had in their session
        for name in dict.fromkeys([*loaded.colors, *loaded.classes]):
            if name in loaded.classes and name not in known:
                self.store.add_class(name, loaded.colors.get(name))
        settings = loaded.settings
        if settings.get("kind") in CLASSIFIERS and not loaded.is_regression:
            self.kind.setCurrentIndex(list(CLASSIFIERS).index(settings["kind"]))
        groups = settings.get("feature_groups")
        for g, cb in self.groups.items():
            cb.setChecked(groups is None or g in groups)
        if "trees" in settings:
            self.trees.setValue(int(settings["trees"]))
        self.extra = loaded.training_table()
        self._refresh_classes()
        pairs = "".join(f"; its {k!r} read from {v!r}" for k, v in renamed.items())
        self._set_status(
            f"Loaded {Path(path).name}: {len(self.extra[1])} training cells{pairs}; predicting every cell…"
        )
        self.retrain(full=True)

    def _ask_load_classifier(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load classifier", "", "Classifier (*.zip)")
        if path:
            self._load_classifier_asking(path)

    def _load_classifier_asking(self, path: str) -> None:
        from ..core.channels import ChannelMismatch
        from .channel_dialog import ask_channel_map

        try:
            try:
                self.load_classifier(path)
            except ChannelMismatch as mismatch:
                chosen = ask_channel_map(mismatch, Path(path).name, self)
                if chosen is not None:
                    self.load_classifier(path, chosen)
        except (ValueError, FileNotFoundError) as exc:
            show_error(str(exc))

    def _ask_save_session(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save session", "", "Session (*.json)")
        if path:
            self.save_session(path)

    def _ask_open_session(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open session", "", "Session (*.json)")
        if path:
            try:
                self.open_session(path)
            except ValueError as exc:
                show_error(str(exc))

    def _ask_save_classifier(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save classifier", "", "Classifier (*.phenotyper.zip)")
        if path:
            try:
                saved = self.save_classifier(path)
                show_info(f"Classifier saved to {saved}")
            except ValueError as exc:
                show_error(str(exc))

    # ---- teardown ------------------------------------------------------------------
    def close_session(self) -> None:
        """Stop the timers, unbind our keys and callbacks (called when the dock closes)."""
        for timer in (self._timer, self._refine_timer, self._quality_timer):
            timer.stop()
        self.flash.close()
        self.auto.setChecked(False)
        for owner in self._bound:
            for k in [*CLASS_KEYS, "0", "Backspace", "n", "x", *UNDO_KEYS]:
                with contextlib.suppress(KeyError, ValueError):
                    owner.bind_key(k, None)
        self._bound.clear()
        self.key_help.detach_all()
        if self._on_mouse in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._on_mouse)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        self.close_session()
        super().closeEvent(event)
