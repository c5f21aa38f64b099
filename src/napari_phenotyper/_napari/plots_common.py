"""What the Plots dock's modules share: tab keys, colours, limits, the figure widget."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg, NavigationToolbar2QT
from matplotlib.figure import Figure
from napari.layers import Labels
from qtpy.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QVBoxLayout,
    QWidget,
)

from .layers import source_of
from .phenotype_view import VIEW_ROLE
from .selection import SELECTION_ROLE

if TYPE_CHECKING:
    pass


from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

__all__ = ["TABS"]

#: Tab keys and titles.
TABS = {
    "scatter": "Scatter",
    "histogram": "Histogram",
    "confusion": "Confusion matrix",
    "learning": "Learning curve",
    "importances": "Importances",
}
#: Colour-by choices backed by the Phenotypes dock's columns.
CLASS_COLUMNS = {"annotation": "pheno_annotation", "predicted class": "pheno_class"}
UNCERTAINTY = "uncertainty"
NONE = "none"
#: Colour levels of a continuous colour-by (one marker batch each).
LEVELS = 64
#: Up to this many cells the PCA runs at once on the GUI thread (a fraction of a
#: second); larger tables (and UMAP always) go to a worker thread.
SYNC_EMBED_CELLS = 20_000
#: How often the dock looks for a Phenotypes dock (opened or closed) to follow (ms).
POLL_MS = 400
NO_CLASS_COLOR = "#B0B0B0"
CLEAR_ANNOTATION = "— clear —"
#: Smaller than this many screen pixels, a lasso or box is a click (nearest point).
CLICK_PIXELS = 4
_CHOSEN: Any = object()  # annotate_selection's default: the class chosen in the dock
EXPORT_FILTER = "PNG image (*.png);;SVG vector image (*.svg);;PDF (*.pdf)"


def _is_candidate(layer: Any) -> bool:
    """A labels layer that may hold a per-cell table (not one of our display layers)."""
    return isinstance(layer, Labels) and source_of(layer).get("role") not in (VIEW_ROLE, SELECTION_ROLE)


def _numeric_columns(table: pd.DataFrame) -> list[str]:
    return [
        str(c)
        for c in table.columns
        if c not in ("label", "index")
        and pd.api.types.is_numeric_dtype(table[c])
        and not pd.api.types.is_bool_dtype(table[c])
    ]


def _set_items(combo: QComboBox, items: list[str], preferred: list[str]) -> None:
    """Replace ``combo``'s items, keeping its choice when still offered (else the first
    of ``preferred`` offered, else the first item); no signal is emitted."""
    current = combo.currentText()
    combo.blockSignals(True)
    try:
        if [combo.itemText(i) for i in range(combo.count())] != items:
            combo.clear()
            combo.addItems(items)
        for choice in [current, *preferred]:
            if choice in items:
                combo.setCurrentIndex(items.index(choice))
                break
    finally:
        combo.blockSignals(False)


class _Toolbar(NavigationToolbar2QT):
    """matplotlib's toolbar for home / back / forward / pan / zoom; saving goes through
    the dock's atomic *Export* (which also keeps the blitted selection ring)."""

    toolitems: ClassVar[list[Any]] = [
        t for t in NavigationToolbar2QT.toolitems if t[0] in ("Home", "Back", "Forward", "Pan", "Zoom")
    ]


class _Plot(QWidget):
    """One figure on a Qt canvas (no pyplot), optionally with matplotlib's toolbar."""

    def __init__(self, toolbar: bool = False, size: tuple[float, float] = (5.0, 4.0)) -> None:
        super().__init__()
        self.figure = Figure(figsize=size, dpi=100)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(260)
        self.controls = QHBoxLayout()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(self.controls)
        if toolbar:
            self.toolbar = _Toolbar(self.canvas, self)
            layout.addWidget(self.toolbar)
        layout.addWidget(self.canvas, 1)
