"""A sortable view of a labels layer's per-cell table, linked to the viewer both ways."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from magicgui.widgets import ComboBox
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from ..core.profiles import has_phenotype_columns
from ..io.export import summary_path, write_summary_csv, write_table_csv
from .docking import settle_when_docked
from .layers import camera, source_of, table_of
from .selection import focus_cell

if TYPE_CHECKING:
    import napari

__all__ = ["DataFrameModel", "FeatureTableWidget", "camera"]


class DataFrameModel(QAbstractTableModel):
    """Read-only Qt model over a DataFrame; sorts numerically through ``SORT_ROLE``."""

    SORT_ROLE = Qt.ItemDataRole.UserRole + 1

    def __init__(self, df: pd.DataFrame | None = None) -> None:
        super().__init__()
        self._df = pd.DataFrame()
        self._values: np.ndarray = np.empty((0, 0), dtype=object)
        if df is not None:
            self.set_frame(df)

    def set_frame(self, df: pd.DataFrame) -> None:
        """Show ``df`` (resets the view)."""
        self.beginResetModel()
        self._df = df.reset_index(drop=True)
        self._values = self._df.to_numpy(dtype=object)
        self.endResetModel()

    @property
    def frame(self) -> pd.DataFrame:
        return self._df

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(self._df)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(self._df.columns)

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        value = self._values[index.row(), index.column()]
        if role == Qt.ItemDataRole.DisplayRole:
            if isinstance(value, float | np.floating):
                return "" if np.isnan(value) else f"{value:.4g}"
            return str(value)
        if role == self.SORT_ROLE:
            if isinstance(value, float | np.floating) and np.isnan(value):
                return float("-inf")
            return value.item() if isinstance(value, np.generic) else value
        if role == Qt.ItemDataRole.TextAlignmentRole and isinstance(value, int | float | np.number):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def headerData(  # noqa: N802
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        if orientation == Qt.Orientation.Horizontal:
            return str(self._df.columns[section])
        return str(section + 1)


class FeatureTableWidget(QWidget):
    """Per-cell table of a labels layer: sort, select a row to fly to the cell, click a
    cell to select its row, export as CSV."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._layer: Labels | None = None
        self._syncing = False

        self.layer_combo = ComboBox(label="labels", choices=self._labels_choices)
        self.model = DataFrameModel()
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(DataFrameModel.SORT_ROLE)
        self.view = QTableView(self)
        self.view.setModel(self.proxy)
        self.view.setSortingEnabled(True)
        self.view.sortByColumn(0, Qt.SortOrder.AscendingOrder)  # by label until the user sorts
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.info = QLabel("No table yet: run Segment & measure.")
        self.export_button = QPushButton("Export CSV...")
        self.export_button.clicked.connect(lambda: self.export_csv())

        top = QHBoxLayout()
        top.addWidget(QLabel("labels layer:"))
        top.addWidget(self.layer_combo.native, 1)
        top.addWidget(self.export_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.info)
        layout.addWidget(self.view, 1)

        self.view.selectionModel().selectionChanged.connect(self._on_row_selected)
        self.layer_combo.changed.connect(self._set_layer)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(lambda e: self.layer_combo.reset_choices())
        self._set_layer(self.layer_combo.value)
        settle_when_docked(self)

    # ---- layer binding --------------------------------------------------------------
    def _labels_choices(self, _w: Any = None) -> list[tuple[str, Labels]]:
        # display-only layers (phenotype view, plot selection) have no table of their own
        layers = [
            lyr
            for lyr in self.viewer.layers
            if isinstance(lyr, Labels)
            and source_of(lyr).get("role") not in ("phenotype_view", "plot_selection")
        ]
        # ours first (by metadata), then any labels layer that carries a table
        layers.sort(key=lambda lyr: 0 if source_of(lyr) else 1)
        return [(lyr.name, lyr) for lyr in layers]

    def _set_layer(self, layer: Labels | None) -> None:
        if self._layer is not None:
            self._layer.events.features.disconnect(self._refresh)
            self._layer.events.selected_label.disconnect(self._on_selected_label)
            if self._on_click in self._layer.mouse_drag_callbacks:
                self._layer.mouse_drag_callbacks.remove(self._on_click)
        self._layer = layer
        if layer is not None:
            layer.events.features.connect(self._refresh)
            layer.events.selected_label.connect(self._on_selected_label)
            layer.mouse_drag_callbacks.append(self._on_click)
        self._refresh()

    def _refresh(self, _event: Any = None) -> None:
        layer = self._layer
        df = table_of(layer) if layer is not None else pd.DataFrame()
        self.model.set_frame(df)
        if layer is None:
            self.info.setText("No labels layer.")
        elif df.empty:
            self.info.setText(f"{layer.name}: no cells measured.")
        else:
            self.info.setText(f"{layer.name}: {len(df)} cells × {len(df.columns) - 1} features")
        self.export_button.setEnabled(not df.empty)

    # ---- table -> viewer -----------------------------------------------------------
    def _on_row_selected(self, *_args: Any) -> None:
        if self._syncing or self._layer is None:
            return
        rows = self.view.selectionModel().selectedRows()
        if not rows:
            return
        row = self.proxy.mapToSource(rows[0]).row()
        self.show_cell(int(self.model.frame["label"].iloc[row]))

    def show_cell(self, label: int) -> None:
        """Select ``label`` in the labels layer, outline it, centre the camera on it and
        zoom in until it is easy to see (a closer view is kept)."""
        layer = self._layer
        if layer is None:
            return
        self._syncing = True
        try:
            layer.selected_label = int(label)
        finally:
            self._syncing = False
        focus_cell(self.viewer, layer, self.model.frame, int(label))

    # ---- viewer -> table -----------------------------------------------------------
    def _on_click(self, layer: Labels, event: Any) -> Any:
        if layer.mode not in ("pan_zoom", "pick"):
            return
        yield  # wait for release: a drag pans, a click selects
        dragged = False
        while event.type == "mouse_move":
            dragged = True
            yield
        if dragged:
            return
        value = layer.get_value(
            event.position,
            view_direction=event.view_direction,
            dims_displayed=event.dims_displayed,
            world=True,
        )
        if value:
            layer.selected_label = int(value)

    def _on_selected_label(self, _event: Any = None) -> None:
        if self._syncing or self._layer is None:
            return
        self.select_row(int(self._layer.selected_label))

    def select_row(self, label: int) -> None:
        """Select (and scroll to) the row of ``label`` in the table, if present."""
        df = self.model.frame
        if df.empty:
            return
        rows = np.flatnonzero(df["label"].to_numpy() == label)
        self._syncing = True
        try:
            if len(rows) == 0:
                self.view.clearSelection()
                return
            index = self.proxy.mapFromSource(self.model.index(int(rows[0]), 0))
            self.view.selectRow(index.row())
            self.view.scrollTo(index)
        finally:
            self._syncing = False

    def selected_label(self) -> int | None:
        """Label of the selected row, or ``None``."""
        rows = self.view.selectionModel().selectedRows()
        if not rows:
            return None
        return int(self.model.frame["label"].iloc[self.proxy.mapToSource(rows[0]).row()])

    # ---- export --------------------------------------------------------------------
    def export_csv(self, path: str | Path | None = None) -> Path | None:
        """Save the table (image name, label, phenotype columns, every feature) as CSV, atomically.

        When the table has phenotype columns, also saves the image's summary (cells per
        class, proportions) as ``<stem>_summary.csv`` beside it. Without ``path``, asks
        for one with a file dialog. Returns the per-cell file's path, or ``None``.
        """
        layer = self._layer
        if layer is None or self.model.frame.empty:
            show_error("Nothing to export: run Segment & measure first.")
            return None
        image_name = source_of(layer).get("source_layer") or layer.name
        if path is None:
            suggested = f"{image_name}_cells.csv"
            path, _ = QFileDialog.getSaveFileName(self, "Export cell table", suggested, "CSV (*.csv)")
            if not path:
                return None
        table = table_of(layer)
        try:
            out = write_table_csv(table, path, image_name=image_name)
        except (OSError, ValueError) as exc:
            show_error(f"Could not save {path}: {exc}")
            return None
        message = f"Saved {len(table)} cells to {out}"
        if has_phenotype_columns(table):
            try:
                summary = write_summary_csv({image_name: table}, summary_path(out))
            except (OSError, ValueError) as exc:
                show_error(f"Saved the cells to {out}, but not the summary: {exc}")
                return out
            message += f" and the summary to {summary.name}"
        show_info(message)
        return out
