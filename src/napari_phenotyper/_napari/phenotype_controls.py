"""The Phenotypes dock's controls, and how each shows the session's state.

:class:`PhenotypeControls` builds the widgets (classes, values, classifier, active
learning, quality, files) and turns the session's state into them: the class list with
its counts, the quality text and confusion matrix, the queue, the settings. What the
controls *do* (the calls into the session, the workers, the keys) is the dock's,
:class:`~.phenotype_widget.PhenotypeWidget`.
"""

from __future__ import annotations

import pandas as pd
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
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

from ..core.classify.model import CLASSIFIERS, FEATURE_GROUP_NAMES, ClassifierSettings
from ..core.classify.query import STRATEGIES
from ..core.classify.session import LoopSettings, PhenotypingSession

__all__ = ["DISPLAY_MODES", "PhenotypeControls"]

DISPLAY_MODES = {
    "predictions": "Predicted classes",
    "annotations": "Annotations only",
    "uncertainty": "Uncertainty (heat map)",
    "value": "Values (colour map)",
}


def _swatch(color: str) -> QIcon:
    pix = QPixmap(14, 14)
    pix.fill(QColor(color))
    return QIcon(pix)


class PhenotypeControls(QWidget):
    """The widgets of the Phenotypes dock and their views of a session."""

    session: PhenotypingSession

    def _build(self) -> None:
        root = QVBoxLayout(self)
        top = QFormLayout()
        self.mode = QComboBox()
        self.mode.addItem("Classes", "classification")
        self.mode.addItem("Values (regression)", "regression")
        top.addRow("Phenotype", self.mode)
        root.addLayout(top)

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
        for b in (self.add_btn, self.rename_btn, self.color_btn, self.delete_btn):
            row.addWidget(b)
        lay.addLayout(row)
        root.addWidget(self.class_box)

        urow = QHBoxLayout()
        self.undo_btn = QPushButton("Undo")
        self.undo_btn.setToolTip("Undo the last annotation change (Ctrl+Z)")
        self.redo_btn = QPushButton("Redo")
        self.redo_btn.setToolTip("Redo (Ctrl+Shift+Z)")
        self.reattach_btn = QPushButton("Re-attach lost")
        self.reattach_btn.setToolTip(
            "Put each lost annotation (an x in its class colour) on the cell now under it"
        )
        for b in (self.undo_btn, self.redo_btn, self.reattach_btn):
            urow.addWidget(b)
        root.addLayout(urow)
        self.lost_label = QLabel("")
        self.lost_label.setWordWrap(True)
        root.addWidget(self.lost_label)

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
        vrow.addWidget(self.assign_btn)
        form.addRow("Value", vrow)
        self.value_box.setVisible(False)
        root.addWidget(self.value_box)

        learn = QGroupBox("Classifier")
        form = QFormLayout(learn)
        self.kind = QComboBox()
        for k, name in CLASSIFIERS.items():
            self.kind.addItem(name, k)
        form.addRow("Model", self.kind)
        self.trees = QSpinBox()
        self.trees.setRange(1, 2000)
        self.trees.setValue(ClassifierSettings().trees)
        self.trees.setToolTip("Trees of the random forest: fewer retrain and predict faster.")
        form.addRow("Trees", self.trees)
        self.kind.currentIndexChanged.connect(
            lambda _i: self.trees.setEnabled(self.kind.currentData() == "random_forest")
        )
        self.trees.setEnabled(self.kind.currentData() == "random_forest")  # only a forest has trees
        groups = QGridLayout()  # three a row: the dock stays narrow
        self.groups: dict[str, QCheckBox] = {}
        for i, g in enumerate(FEATURE_GROUP_NAMES):
            cb = QCheckBox(g)
            cb.setChecked(True)
            self.groups[g] = cb
            groups.addWidget(cb, i // 3, i % 3)
        form.addRow("Features", groups)
        opts = QHBoxLayout()
        self.auto = QCheckBox("Retrain after each annotation")
        self.auto.setChecked(True)
        self.retrain_btn = QPushButton("Retrain now")
        opts.addWidget(self.auto)
        opts.addWidget(self.retrain_btn)
        form.addRow(opts)
        self.display = QComboBox()
        for k, name in DISPLAY_MODES.items():
            self.display.addItem(name, k)
        form.addRow("Show", self.display)
        self.click_mode = QCheckBox("Click a cell to give it the selected class")
        self.click_mode.setToolTip(
            "A click gives the cell the class selected above; a second click clears it"
        )
        form.addRow(self.click_mode)
        root.addWidget(learn)

        al = QGroupBox("Active learning")
        form = QFormLayout(al)
        self.strategy = QComboBox()
        for name in STRATEGIES:
            self.strategy.addItem(name, name)
        self.strategy.setCurrentText("margin")
        form.addRow("Strategy", self.strategy)
        nrow = QHBoxLayout()
        self.next_btn = QPushButton("Next cell (N)")
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
        qrow.addWidget(self.queue_k)
        qrow.addWidget(self.queue_btn)
        form.addRow("Queue", qrow)
        self.queue = QListWidget()
        self.queue.setMaximumHeight(120)
        form.addRow(self.queue)
        root.addWidget(al)

        qual = QGroupBox("Quality")
        lay = QVBoxLayout(qual)
        self.quality_label = QLabel("Annotate cells of at least two classes.")
        self.quality_label.setWordWrap(True)
        lay.addWidget(self.quality_label)
        self.why_label = QLabel("")  # why the cell under the mouse got its class (CellWhy)
        self.why_label.setWordWrap(True)
        self.why_label.setVisible(False)
        lay.addWidget(self.why_label)
        self.confusion = QTableWidget()
        self.confusion.setMaximumHeight(160)
        self.confusion.setToolTip("Click a count to see those cells in the Gallery dock")
        self.confusion.cellClicked.connect(self._review_confusion)
        lay.addWidget(self.confusion)
        self.importance_label = QLabel("")
        self.importance_label.setWordWrap(True)
        lay.addWidget(self.importance_label)
        root.addWidget(qual)

        srow = QGridLayout()  # two a row: the dock stays narrow
        self.save_session_btn = QPushButton("Save session as…")
        self.open_session_btn = QPushButton("Open session…")
        self.save_clf_btn = QPushButton("Save classifier…")
        self.load_clf_btn = QPushButton("Load classifier…")
        for i, b in enumerate(
            (self.save_session_btn, self.open_session_btn, self.save_clf_btn, self.load_clf_btn)
        ):
            srow.addWidget(b, i // 2, i % 2)
        root.addLayout(srow)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        root.addWidget(self.status)
        root.addStretch(1)

    # ---- reading the controls ------------------------------------------------------------
    def selected_class(self) -> str | None:
        item = self.class_list.currentItem()
        return None if item is None else str(item.data(Qt.ItemDataRole.UserRole))

    def ticked_groups(self) -> tuple[str, ...]:
        return tuple(g for g, cb in self.groups.items() if cb.isChecked())

    def display_mode(self) -> tuple[str, tuple[float, float] | None]:
        """The view's mode (value mode shows values) and, for values, the range."""
        mode = str(self.display.currentData())
        if self.session.task == "regression" and mode in ("predictions", "uncertainty"):
            mode = "value"
        return mode, (self.session.loop.value_range if mode == "value" else None)

    # ---- dialogs ---------------------------------------------------------------------
    def _ask_add_class(self) -> None:
        name, ok = QInputDialog.getText(self, "New class", "Class name:")
        if ok and name.strip():
            try:
                self.session.add_class(name.strip())
            except ValueError as exc:
                show_error(str(exc))

    def _ask_rename_class(self) -> None:
        old = self.selected_class()
        if old is None:
            return
        new, ok = QInputDialog.getText(self, "Rename class", "New name:", text=old)
        if ok and new.strip():
            try:
                self.session.rename_class(old, new.strip())
            except ValueError as exc:
                show_error(str(exc))

    def _ask_recolor_class(self) -> None:
        name = self.selected_class()
        if name is not None:
            color = QColorDialog.getColor(QColor(self.session.colors()[name]), self, f"Colour of {name}")
            if color.isValid():
                self.session.recolor_class(name, color.name())

    def _ask_delete_class(self) -> None:
        name = self.selected_class()
        if name is None:
            return
        n = self.session.store.count(name)
        if n:
            answer = QMessageBox.question(self, "Delete class", f"Delete {name!r} and its {n} annotations?")
            if answer != QMessageBox.StandardButton.Yes:
                return
        self.session.delete_class(name)

    def _ask_save_session(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save session", "", "Session (*.json)")
        if path:
            self.session.save(path)

    def _ask_open_session(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open session", "", "Session (*.json)")
        if path:
            try:
                self.session.open(path)
            except ValueError as exc:
                show_error(str(exc))

    def _ask_save_classifier(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save classifier", "", "Classifier (*.phenotyper.zip)")
        if path:
            try:
                show_info(f"Classifier saved to {self.session.save_classifier(path)}")
            except ValueError as exc:
                show_error(str(exc))

    # ---- showing the session ---------------------------------------------------------------
    def show_settings(self) -> None:
        """Set the controls from the session's settings (without feeding them back)."""
        loop: LoopSettings = self.session.loop
        widgets = (
            self.mode,
            self.kind,
            self.trees,
            self.strategy,
            self.value_min,
            self.value_max,
            *self.groups.values(),
        )
        for w in widgets:
            w.blockSignals(True)
        try:
            self.mode.setCurrentIndex(self.mode.findData(self.session.task))
            self.kind.setCurrentIndex(self.kind.findData(loop.classifier))
            for g, cb in self.groups.items():
                cb.setChecked(loop.feature_groups is None or g in loop.feature_groups)
            self.trees.setValue(int(loop.trees))
            self.strategy.setCurrentIndex(self.strategy.findData(loop.strategy))
            self.value_min.setValue(loop.value_range[0])
            self.value_max.setValue(loop.value_range[1])
        finally:
            for w in widgets:
                w.blockSignals(False)
        self.trees.setEnabled(loop.classifier == "random_forest")  # only a forest has trees
        regression = self.session.task == "regression"
        self.class_box.setVisible(not regression)
        self.value_box.setVisible(regression)

    def show_classes(self) -> None:
        """The class list: colour, key, name, annotated and predicted counts."""
        current = self.selected_class()
        predicted = self.session.predicted_counts()
        annotated = self.session.annotated_counts()
        self.class_list.clear()
        for k, cls in enumerate(self.session.store.classes):
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

    def show_quality(self) -> None:
        """Quality text, confusion matrix and importances (cleared with the model)."""
        s = self.session
        text = s.quality_text()
        if text:
            self.quality_label.setText(text)
        imp = s.importances
        self.importance_label.setText(
            "Most important features: " + ", ".join(f"{n} {v:.2f}" for n, v in imp.head(8).items())
            if imp is not None
            else ""
        )
        conf: pd.DataFrame | None = (s.quality or {}).get("confusion")
        if conf is None:
            self.confusion.setRowCount(0)
            self.confusion.setColumnCount(0)
            return
        self.confusion.setRowCount(len(conf))
        self.confusion.setColumnCount(len(conf.columns))
        self.confusion.setVerticalHeaderLabels([f"true {c}" for c in conf.index])
        self.confusion.setHorizontalHeaderLabels([str(c) for c in conf.columns])
        for i in range(len(conf)):
            for j in range(len(conf.columns)):
                self.confusion.setItem(i, j, QTableWidgetItem(str(int(conf.iat[i, j]))))

    def _review_confusion(self, row: int, column: int) -> None:
        """A count of the confusion matrix was clicked: the session asks the views to
        show those cells (the Gallery opens them)."""
        conf = (self.session.quality or {}).get("confusion")
        if isinstance(conf, pd.DataFrame) and row < len(conf) and column < len(conf.columns):
            self.session.review(str(conf.index[row]), str(conf.columns[column]))

    def show_queue(self) -> None:
        self.queue.clear()
        for p in self.session.queue:
            entry = self.session.images.get(p.image)
            name = entry.name if entry is not None else p.image
            guess = f" → {p.predicted}?" if p.predicted else ""
            item = QListWidgetItem(f"{name}: cell {p.label}{guess} ({p.score:.2f})")
            item.setData(Qt.ItemDataRole.UserRole, p)
            self.queue.addItem(item)

    def show_lost_count(self) -> None:
        n = len(self.session.store.lost())
        self.lost_label.setText(
            f"{n} lost annotation(s): their cells are not in the current segmentation. They are kept "
            "(x marks), come back by themselves when a segmentation has their cell again, or with "
            "*Re-attach lost*."
            if n
            else ""
        )
        self.reattach_btn.setEnabled(n > 0)

    def show_status(self, text: str) -> None:
        error = self.session.store.save_error
        if error:
            text = f"{text}\n⚠ {error}; your annotations are kept in memory: use *Save session as…*."
        self.status.setText(text)
