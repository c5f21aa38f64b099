"""The "Plots" dock: look at the per-cell data, linked to the viewer both ways.

Tabs (matplotlib embedded in Qt, no pyplot state):

- **Scatter**: any two features, or a 2D embedding of every feature (PCA; UMAP when
  ``umap-learn`` is installed), coloured by annotation, predicted class, uncertainty or
  any feature. Lasso or box select points to select those cells in the viewer (outlined
  by a display-only *selection* layer) and, with the Phenotypes dock open, give them
  all a class. Selecting a cell in the viewer (a click, the Cell table, Next cell)
  rings its point.
- **Histogram**: one feature, one histogram per class.
- **Confusion matrix**, **Learning curve** (cross-validated accuracy against the number
  of annotated cells) and **Importances**, from the Phenotypes dock.

The data come from the labels layer's ``features`` (the data bus); computations are in
:mod:`napari_phenotyper.core.embedding`. Drawing 100,000 points stays fast because each
colour is one marker batch (a ``Line2D`` per class or per colour level, which Agg stamps
in one pass) and an update only swaps those batches' data: recolouring or reselecting
100,000 points takes a few tens of milliseconds (``benchmarks/plots.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
from magicgui.widgets import ComboBox
from matplotlib import colormaps
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg, NavigationToolbar2QT
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from matplotlib.widgets import LassoSelector, RectangleSelector
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..core.classify.annotations import DEFAULT_COLORS
from ..core.classify.model import feature_columns_for
from ..core.classify.session import PhenotypingSession
from ..core.embedding import (
    EMBEDDINGS,
    Embedding,
    EmbeddingSettings,
    available_embeddings,
    feature_fingerprint,
    histogram_by_class,
    iter_embedding,
    label_edges,
    learning_curve,
    nearest_point,
    points_in_box,
    points_in_polygon,
    quantize,
    split_by_code,
)
from ..core.progress import run
from ..io.atomic import atomic_path
from .docking import settle_when_docked
from .layers import source_of, table_of
from .params_form import compact_widths
from .phenotype_view import VIEW_ROLE
from .phenotype_widget import PhenotypeWidget
from .selection import SELECTION_ROLE, find_selection_layer, focus_cell, update_selection_layer
from .workers import start_job, user_message

if TYPE_CHECKING:
    import napari

__all__ = ["SELECTION_ROLE", "TABS", "PlotsWidget", "find_selection_layer", "update_selection_layer"]

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


class PlotsWidget(QWidget):
    """Scatter / embedding, histograms and classifier quality, linked to the viewer.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    phenotypes : PhenotypeWidget, optional
        The Phenotypes dock to take class colours, quality and importances from and to
        annotate through. By default the one docked in the viewer's window, if any;
        everything else works without it.
    """

    #: Emitted with the selected label ids (int64 array) after every selection change.
    selection_changed = Signal(object)

    def __init__(
        self, napari_viewer: napari.viewer.Viewer, phenotypes: PhenotypeWidget | None = None
    ) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._phenotypes = phenotypes
        self._layer: Labels | None = None
        self._table = pd.DataFrame()
        self._label_ids = np.empty(0, np.int64)
        self._sorter = np.empty(0, np.int64)
        self._selected = np.empty(0, np.int64)
        self._xy: np.ndarray | None = None
        self._embeddings: dict[str, Embedding] = {}
        self._embed_worker: Any = None
        self._embed_wanted: dict[str, str] = {}  # method -> fingerprint a worker should produce
        self._fingerprint: str | None = None
        self._embed_failed: dict[str, str] = {}  # method -> fingerprint it failed on
        self._edges: np.ndarray | None = None  # label_edges of the layer's data, for the overlay
        self._legend_key: Any = None
        self._bar_key: Any = None
        self._dirty: set[str] = set(TABS)
        self._syncing = False
        self._classes_sig: tuple[tuple[str, str], ...] = ()
        self._quality: Any = None
        self._importances: Any = None
        self._session: PhenotypingSession | None = None  # the session whose events we follow
        self._build()
        self._reload_timer = QTimer(self)
        self._reload_timer.setSingleShot(True)
        self._reload_timer.setInterval(0)  # coalesce the events of one retrain
        self._reload_timer.timeout.connect(self.reload)
        self._poll = QTimer(self)
        self._poll.setInterval(POLL_MS)
        self._poll.timeout.connect(self._follow_session)
        self._poll.start()
        self.layer_combo.changed.connect(self._set_layer)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self._on_layers_changed)
        self._follow_session()
        self._set_layer(self.layer_combo.value)
        compact_widths(self)  # long layer names must not widen the dock
        settle_when_docked(self)

    # ---- UI ------------------------------------------------------------------------
    def _build(self) -> None:
        self.layer_combo = ComboBox(label="labels", choices=self._labels_choices)
        self.export_button = QPushButton("Export PNG/SVG…")
        self.export_button.clicked.connect(lambda: self._ask_export())
        top = QHBoxLayout()
        top.addWidget(QLabel("labels layer:"))
        top.addWidget(self.layer_combo.native, 1)
        top.addWidget(self.export_button)

        self.tabs = QTabWidget()
        self.plots: dict[str, _Plot] = {}
        for key, title in TABS.items():
            plot = _Plot(toolbar=key == "scatter")
            self.plots[key] = plot
            self.tabs.addTab(plot, title)
        self.tabs.currentChanged.connect(lambda _i: self.refresh())

        # scatter controls
        sc = self.plots["scatter"]
        form = QFormLayout()
        axes = QHBoxLayout()
        self.x_combo, self.y_combo = QComboBox(), QComboBox()
        for combo in (self.x_combo, self.y_combo):
            combo.setMinimumContentsLength(10)
            combo.currentIndexChanged.connect(lambda _i: self._axes_changed())
            axes.addWidget(combo, 1)
        form.addRow("x, y", axes)
        self.color_combo = QComboBox()
        self.color_combo.currentIndexChanged.connect(lambda _i: self._mark("scatter"))
        form.addRow("colour by", self.color_combo)
        sel = QHBoxLayout()
        self.tool_combo = QComboBox()
        self.tool_combo.addItems(["Lasso", "Box"])
        self.tool_combo.setToolTip(
            "Drag to select cells; Shift adds to the selection, Ctrl/Alt removes; a click picks one."
        )
        self.tool_combo.currentIndexChanged.connect(lambda _i: self._activate_tool())
        self.clear_button = QPushButton("Clear")
        self.clear_button.clicked.connect(lambda: self.select_labels([]))
        sel.addWidget(self.tool_combo)
        sel.addWidget(self.clear_button)
        form.addRow("select", sel)
        ann = QHBoxLayout()
        self.annotate_button = QPushButton("Annotate selection as")
        self.annotate_button.clicked.connect(lambda: self.annotate_selection())
        self.class_combo = QComboBox()
        ann.addWidget(self.annotate_button)
        ann.addWidget(self.class_combo, 1)
        form.addRow(ann)
        sc.controls.addLayout(form)

        # histogram controls
        hi = self.plots["histogram"]
        hform = QFormLayout()
        self.hist_combo = QComboBox()
        self.hist_combo.currentIndexChanged.connect(lambda _i: self._mark("histogram"))
        hform.addRow("feature", self.hist_combo)
        hrow = QHBoxLayout()
        self.group_combo = QComboBox()
        self.group_combo.currentIndexChanged.connect(lambda _i: self._mark("histogram"))
        self.bins = QSpinBox()
        self.bins.setRange(2, 500)
        self.bins.setValue(40)
        self.bins.valueChanged.connect(lambda _v: self._mark("histogram"))
        self.density = QCheckBox("density")
        self.density.setChecked(True)
        self.density.setToolTip("Each class with unit area, so that classes of different sizes compare.")
        self.density.toggled.connect(lambda _v: self._mark("histogram"))
        hrow.addWidget(self.group_combo, 1)
        hrow.addWidget(QLabel("bins"))
        hrow.addWidget(self.bins)
        hrow.addWidget(self.density)
        hform.addRow("per", hrow)
        hi.controls.addLayout(hform)

        self.info = QLabel("")
        self.info.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.tabs, 1)
        layout.addWidget(self.info)

        # scatter artists, made once and updated in place
        fig = sc.figure
        self.ax = fig.add_axes((0.11, 0.11, 0.64, 0.83))
        self._cax = fig.add_axes((0.78, 0.11, 0.03, 0.83))
        self._mappable = ScalarMappable(norm=Normalize(0, 1), cmap=colormaps["viridis"])
        self._cbar = fig.colorbar(self._mappable, cax=self._cax)
        self._cax.set_visible(False)
        self._lines: list[Line2D] = []
        self._sel_line = Line2D(
            [], [], linestyle="none", marker="o", markerfacecolor="none", markeredgecolor="#D62728",
            markeredgewidth=1.2, zorder=5,
        )  # fmt: skip
        self.ax.add_line(self._sel_line)
        # The ring is drawn over a cached image of the plot (blitting): a new selection
        # redraws the ring only, not 100,000 points. It stays hidden in full draws and
        # is drawn after each by _on_scatter_drawn, connected before the selectors' own
        # draw handlers so that they find no visible extra artist (else they redraw).
        self._sel_line.set_visible(False)
        self._background: Any = None
        fig.canvas.mpl_connect("draw_event", self._on_scatter_drawn)
        self._message = self.ax.text(
            0.5, 0.5, "", transform=self.ax.transAxes, ha="center", va="center", wrap=True, zorder=6
        )
        self._lasso = LassoSelector(
            self.ax, self._on_lasso, useblit=True, props={"color": "#D62728", "linewidth": 1.0}
        )
        self._box = RectangleSelector(
            self.ax,
            self._on_box,
            useblit=True,
            button=[1],
            minspanx=-1,  # a click is a box too (it picks the nearest point)
            minspany=-1,
            spancoords="pixels",
            props={"facecolor": "#D62728", "alpha": 0.15, "edgecolor": "#D62728"},
            # Shift / Ctrl mean add / remove here, not "square" / "from the centre"
            state_modifier_keys={"square": "not-applicable", "center": "not-applicable"},
        )
        self._activate_tool()

    def _activate_tool(self) -> None:
        lasso = self.tool_combo.currentText() == "Lasso"
        self._lasso.set_active(lasso)
        self._box.set_active(not lasso)

    # ---- the Phenotypes dock -------------------------------------------------------
    def phenotypes(self) -> PhenotypeWidget | None:
        """The Phenotypes dock: the one given to the constructor, else the one docked."""
        if self._phenotypes is not None:
            return self._phenotypes
        window = getattr(self.viewer, "window", None)
        docks = getattr(window, "dock_widgets", None)  # recent napari: the inner widgets
        if docks is None:  # older napari: the dock wrappers
            docks = {k: d.widget() for k, d in getattr(window, "_dock_widgets", {}).items()}
        for widget in list(docks.values()):
            if isinstance(widget, PhenotypeWidget):
                return widget
        return None

    def class_colors(self) -> dict[str, str]:
        """Class name -> colour, from the Phenotypes dock (empty without it)."""
        pheno = self.phenotypes()
        return {c.name: c.color for c in pheno.store.classes} if pheno is not None else {}

    @property
    def learning_records(self) -> list[tuple[int, float]]:
        """The session's cross-validated (cells, accuracy), in the order measured."""
        return self._session.learning_records if self._session is not None else []

    @property
    def balanced_records(self) -> list[tuple[int, float]]:
        return self._session.balanced_records if self._session is not None else []

    def _follow_session(self) -> None:
        """Subscribe to the session of the viewer's Phenotypes dock (opened before or after
        this dock; looked for every :data:`POLL_MS` ms, a cheap check), and take its state."""
        pheno = self.phenotypes()
        session = pheno.session if pheno is not None else None
        if session is self._session:
            return
        if self._session is not None:
            for signal in (self._session.events.quality, self._session.events.classes):
                signal.disconnect(self.sync_with_phenotypes)
        self._session = session
        if session is not None:
            session.events.quality.connect(self.sync_with_phenotypes)
            session.events.classes.connect(self.sync_with_phenotypes)
        self.sync_with_phenotypes()

    def sync_with_phenotypes(self, redraw: bool = True) -> None:
        """Take the session's classes, quality and importances (on its events)."""
        pheno = self.phenotypes()
        classes = tuple((c.name, c.color) for c in pheno.store.classes) if pheno is not None else ()
        if classes != self._classes_sig:
            self._classes_sig = classes
            names = [c for c, _ in classes]
            _set_items(self.class_combo, [*names, CLEAR_ANNOTATION] if names else [], names[:1])
            self._dirty |= {"scatter", "histogram"}
        quality = pheno.quality if pheno is not None else None
        if quality is not self._quality:
            self._quality = quality
            self._dirty |= {"confusion", "learning"}
        importances = pheno.importances if pheno is not None else None
        if importances is not self._importances:
            self._importances = importances
            self._dirty.add("importances")
        self.annotate_button.setEnabled(pheno is not None and len(self._selected) > 0)
        self.annotate_button.setToolTip(
            "" if pheno is not None else "Open the Phenotypes dock to annotate (Plugins > napari-phenotyper)."
        )
        if redraw and self.current_tab() in self._dirty:
            self.refresh()

    def _labels_choices(self, _w: Any = None) -> list[tuple[str, Labels]]:
        layers = [lyr for lyr in self.viewer.layers if _is_candidate(lyr)]
        # measured ones first (ours before others): a layer measured later can be chosen too
        layers.sort(key=lambda lyr: ("label" not in lyr.features.columns, not source_of(lyr)))
        return [(lyr.name, lyr) for lyr in layers]

    def _on_layers_changed(self, _event: Any = None) -> None:
        self.layer_combo.reset_choices()
        if self.layer_combo.value is not self._layer:
            self._set_layer(self.layer_combo.value)

    @property
    def layer(self) -> Labels | None:
        """The labels layer whose cells are plotted."""
        return self._layer

    def set_layer(self, layer: Labels | None) -> None:
        """Plot the cells of ``layer`` (any labels layer with a ``label`` column)."""
        self.layer_combo.reset_choices()
        if layer is not None:
            self.layer_combo.value = layer
        self._set_layer(layer)

    def _set_layer(self, layer: Labels | None) -> None:
        if layer is self._layer:
            return
        old = self._layer
        if old is not None:
            old.events.features.disconnect(self._on_features)
            old.events.selected_label.disconnect(self._on_selected_label)
            old.events.data.disconnect(self._on_data)
            if hasattr(old.events, "paint"):
                old.events.paint.disconnect(self._on_paint)
            if self._on_click in old.mouse_drag_callbacks:
                old.mouse_drag_callbacks.remove(self._on_click)
            overlay = find_selection_layer(self.viewer, old)
            if overlay is not None:
                if old in self.viewer.layers:
                    overlay.visible = False
                else:  # its labels are gone: so is the overlay
                    self.viewer.layers.remove(overlay)
        self._layer = layer
        self._selected = np.empty(0, np.int64)
        self._edges = None
        self._embeddings.clear()
        if layer is not None:
            layer.events.features.connect(self._on_features)
            layer.events.selected_label.connect(self._on_selected_label)
            layer.events.data.connect(self._on_data)
            if hasattr(layer.events, "paint"):
                layer.events.paint.connect(self._on_paint)
            layer.mouse_drag_callbacks.append(self._on_click)
        self.reload()

    def _on_features(self, _event: Any = None) -> None:
        self._reload_timer.start()

    def _on_data(self, _event: Any = None) -> None:
        """New label image (e.g. re-segmented): repaint the selection overlay."""
        self._edges = None
        layer = self._layer
        if layer is not None and len(self._selected):
            update_selection_layer(self.viewer, layer, self._selected, self._cell_edges())

    def _on_paint(self, _event: Any = None) -> None:
        self._edges = None  # painted in place: the cells' outlines changed

    def _cell_edges(self) -> np.ndarray | None:
        """Outlines of every cell of the layer (computed once per label image)."""
        layer = self._layer
        if layer is None:
            return None
        if self._edges is None or self._edges.shape != tuple(layer.data.shape):
            self._edges = label_edges(np.asarray(layer.data))
        return self._edges

    def reload(self) -> None:
        """Re-read the layer's table (after its features changed) and redraw."""
        self._reload_timer.stop()
        layer = self._layer
        table = table_of(layer) if layer is not None else pd.DataFrame()
        if "label" not in table.columns:
            table = pd.DataFrame({"label": pd.Series(dtype=np.int64)})
        self._table = table
        self._fingerprint = None
        self._label_ids = table["label"].to_numpy(dtype=np.int64)
        self._sorter = np.argsort(self._label_ids, kind="stable")
        kept = self._selected[np.isin(self._selected, self._label_ids)]
        self._populate()
        self._dirty = set(TABS)
        self._axes_changed()
        self.sync_with_phenotypes(redraw=False)
        if layer is None:
            self.info.setText("No labels layer with a per-cell table: run Segment & measure.")
        else:
            self.info.setText(f"{layer.name}: {len(table)} cells")
        self.refresh()
        if len(kept) != len(self._selected):  # cells that are gone leave the selection
            self.select_labels(kept)

    def _populate(self) -> None:
        table = self._table
        numeric = _numeric_columns(table)
        embedded = [f"{EMBEDDINGS[m]} {k}" for m in available_embeddings() for k in (1, 2)]
        axis_items = [*embedded, *[c for c in numeric if not c.startswith("pheno_")]]
        axis_items += [c for c in numeric if c.startswith("pheno_")]
        _set_items(self.x_combo, axis_items, ["PCA 1"])
        _set_items(self.y_combo, axis_items, ["PCA 2"])
        colours = [NONE]
        colours += [name for name, col in CLASS_COLUMNS.items() if col in table.columns]
        if "pheno_uncertainty" in table.columns:
            colours.append(UNCERTAINTY)
        colours += [c for c in numeric if c != "pheno_uncertainty"]
        _set_items(self.color_combo, colours, ["predicted class", "annotation"])
        _set_items(self.hist_combo, numeric, feature_columns_for(table)[:1])
        groups = [name for name, col in CLASS_COLUMNS.items() if col in table.columns]
        _set_items(self.group_combo, [*groups, NONE], groups[:1])

    # ---- tabs ----------------------------------------------------------------------
    def current_tab(self) -> str:
        return list(TABS)[self.tabs.currentIndex()]

    def show_tab(self, key: str) -> None:
        """Bring tab ``key`` (one of :data:`TABS`) to the front, drawn up to date."""
        self.tabs.setCurrentIndex(list(TABS).index(key))
        self.refresh(key)

    def _mark(self, key: str) -> None:
        self._dirty.add(key)
        if self.current_tab() == key:
            self.refresh(key)

    def refresh(self, key: str | None = None) -> None:
        """Redraw tab ``key`` (default: the one shown) if its data changed."""
        key = key or self.current_tab()
        if key not in self._dirty:
            return
        self._dirty.discard(key)
        if key == "scatter":
            self._redraw_scatter()
        else:
            {
                "histogram": self._draw_histogram,
                "confusion": self._draw_confusion,
                "learning": self._draw_learning,
                "importances": self._draw_importances,
            }[key]()
            self.plots[key].canvas.draw_idle()

    # ---- scatter: coordinates ------------------------------------------------------
    def _embedding_method(self, axis: str) -> tuple[str, int] | None:
        for method, name in EMBEDDINGS.items():
            for k in (1, 2):
                if axis == f"{name} {k}":
                    return method, k - 1
        return None

    def embedding(self, method: str = "pca") -> Embedding | None:
        """The current table's embedding if computed (else starts computing it).

        PCA of up to :data:`SYNC_EMBED_CELLS` cells is computed at once; larger tables
        and UMAP run in a worker thread and the scatter is redrawn when they return.
        """
        table = self._table
        if table.empty:
            return None
        fingerprint = self._table_fingerprint()
        if fingerprint is None:
            self._message.set_text("No numeric features to embed: choose two columns.")
            return None
        have = self._embeddings.get(method)
        if have is not None and have.fingerprint == fingerprint:
            return have
        if self._embed_failed.get(method) == fingerprint:
            return None  # said why once; retried when the features change
        settings = EmbeddingSettings(method=method)  # type: ignore[arg-type]
        if method == "pca" and len(table) <= SYNC_EMBED_CELLS:
            try:
                emb = run(iter_embedding(table, settings))
            except ValueError as exc:
                self._message.set_text(str(exc))
                return None
            self._embeddings[method] = emb
            return emb
        if self._embed_wanted.get(method) != fingerprint:
            self._embed_wanted[method] = fingerprint
            self._start_embedding()
        return None

    def _table_fingerprint(self) -> str | None:
        """The table's feature fingerprint (once per table; ``None`` without features)."""
        if self._fingerprint is None:
            try:
                self._fingerprint = feature_fingerprint(self._table)
            except ValueError:
                self._fingerprint = ""
        return self._fingerprint or None

    def _start_embedding(self) -> None:
        if self._embed_worker is not None:
            return  # the next starts when this one finishes
        todo = [
            m
            for m, fp in self._embed_wanted.items()
            if self._embeddings.get(m) is None or self._embeddings[m].fingerprint != fp
        ]
        if not todo:
            return
        method = todo[0]
        self.info.setText(f"Computing the {EMBEDDINGS[method]} of {len(self._table)} cells…")
        self._embed_worker = start_job(
            iter_embedding,
            self._table,
            EmbeddingSettings(method=method),  # type: ignore[arg-type]
            on_progress=lambda p: self.info.setText(f"{p.message}…"),
            on_returned=self._on_embedded,
            on_errored=lambda exc: self._on_embed_error(method, exc),
            on_aborted=lambda: None,  # closing the dock: nothing to report
            on_finished=self._on_embed_finished,
            title=EMBEDDINGS[method],
        )

    def _on_embedded(self, emb: Embedding) -> None:
        self._embeddings[emb.method] = emb
        if self._embed_wanted.get(emb.method) == emb.fingerprint:
            self._embed_wanted.pop(emb.method, None)
            if self._layer is not None:
                self.info.setText(f"{self._layer.name}: {len(self._table)} cells")
            self._axes_changed()

    def _on_embed_error(self, method: str, exc: BaseException) -> None:
        fingerprint = self._embed_wanted.pop(method, None)
        if fingerprint is not None:
            self._embed_failed[method] = fingerprint
        text = f"{EMBEDDINGS[method]} failed: {user_message(exc)}"
        self.info.setText(text)
        self._message.set_text(text)
        self.plots["scatter"].canvas.draw_idle()

    def _on_embed_finished(self) -> None:
        self._embed_worker = None
        self._start_embedding()

    def embedding_busy(self) -> bool:
        """Whether an embedding is being computed in a worker thread."""
        return self._embed_worker is not None

    def _axis_values(self, axis: str) -> tuple[np.ndarray | None, str]:
        table = self._table
        emb_axis = self._embedding_method(axis)
        if emb_axis is not None:
            method, k = emb_axis
            emb = self.embedding(method)
            if emb is None:
                return None, axis
            label = axis
            if emb.explained is not None:
                label += f" ({100 * emb.explained[k]:.0f}% of variance)"
            return emb.coords[:, k], label
        if axis in table.columns:
            return table[axis].to_numpy(dtype=float, na_value=np.nan), axis
        return None, axis

    def _axes_changed(self) -> None:
        x, xlabel = self._axis_values(self.x_combo.currentText())
        y, ylabel = self._axis_values(self.y_combo.currentText())
        self._xy = np.column_stack([x, y]) if x is not None and y is not None else None
        self.ax.set_xlabel(xlabel)
        self.ax.set_ylabel(ylabel)
        if self._xy is not None and len(self._xy):
            self._message.set_text("")
            for values, setter in ((self._xy[:, 0], self.ax.set_xlim), (self._xy[:, 1], self.ax.set_ylim)):
                ok = values[np.isfinite(values)]
                lo, hi = (float(ok.min()), float(ok.max())) if len(ok) else (0.0, 1.0)
                pad = 0.04 * (hi - lo) if hi > lo else 0.5
                setter(lo - pad, hi + pad)
        elif self._table.empty:
            self._message.set_text("No cells measured.")
        elif self.embedding_busy():
            self._message.set_text("Computing the embedding…")
        sc = self.plots["scatter"]
        if hasattr(sc, "toolbar"):
            sc.toolbar.update()  # "home" is the new view
        self._dirty.add("scatter")
        if self.current_tab() == "scatter":
            self._redraw_scatter()

    # ---- scatter: colours ----------------------------------------------------------
    def _category_colors(self, categories: list[str]) -> dict[str, str]:
        known = self.class_colors()
        extra = [c for c in categories if c not in known]
        out = dict(known)
        for i, c in enumerate(extra):
            out[c] = DEFAULT_COLORS[(len(known) + i) % len(DEFAULT_COLORS)]
        return out

    def _class_order(self, values: pd.Series) -> list[str]:
        """The Phenotypes dock's classes first, then any other class in the column."""
        known = list(self.class_colors())
        if isinstance(values.dtype, pd.CategoricalDtype):
            cats = [str(c) for c in values.cat.categories]
        else:
            cats = sorted({str(v) for v in pd.unique(values.dropna())})
        return [*known, *[c for c in cats if c not in known]]

    def colour_groups(self) -> tuple[list[tuple[str, Any, np.ndarray, float]], Any]:
        """The marker batches of the scatter: ``(legend name, colour, rows, size factor)``,
        drawn in order, and ``(cmap, vmin, vmax, title)`` for a continuous colour bar
        (``None`` for classes)."""
        table = self._table
        n = len(table)
        choice = self.color_combo.currentText()
        if choice in CLASS_COLUMNS and CLASS_COLUMNS[choice] in table.columns:
            values = table[CLASS_COLUMNS[choice]]
            order = self._class_order(values)
            found, uniques = pd.factorize(values)  # -1 for missing
            remap = np.array([order.index(str(u)) for u in uniques] + [-1], dtype=np.int64)
            codes = remap[np.asarray(found, dtype=np.int64)]
            colors = self._category_colors(order)
            rows = split_by_code(codes, len(order))
            size = 2.0 if choice == "annotation" else 1.0  # the few annotated cells stand out
            groups = [("no class", NO_CLASS_COLOR, np.flatnonzero(codes < 0), 1.0)]
            groups += [(c, colors[c], r, size) for c, r in zip(order, rows, strict=True)]
            return [g for g in groups if len(g[2])], None
        column = "pheno_uncertainty" if choice == UNCERTAINTY else choice
        if column in table.columns and choice != NONE:
            values = table[column].to_numpy(dtype=float, na_value=np.nan)
            unit = column == "pheno_uncertainty" or column.startswith("pheno_proba_")
            vmin, vmax = (0.0, 1.0) if unit else (None, None)
            if vmin is None:
                ok = values[np.isfinite(values)]
                lo, hi = np.percentile(ok, [1, 99]) if len(ok) else (0.0, 1.0)
                vmin, vmax = float(lo), (float(hi) if hi > lo else float(lo) + 1.0)
            codes = quantize(values, LEVELS, vmin, vmax)
            cmap = colormaps["magma" if column == "pheno_uncertainty" else "viridis"]
            groups = [("missing", NO_CLASS_COLOR, np.flatnonzero(codes < 0), 1.0)]
            groups += [
                (f"{column} {k}", cmap((k + 0.5) / LEVELS), r, 1.0)
                for k, r in enumerate(split_by_code(codes, LEVELS))
            ]
            return [g for g in groups if len(g[2])], (cmap, vmin, vmax, column)
        return [("cells", "#4C72B0", np.arange(n), 1.0)], None

    def _line(self, i: int) -> Line2D:
        while len(self._lines) <= i:
            line = Line2D([], [], linestyle="none", marker="o", markeredgewidth=0, zorder=2)
            line.set_rasterized(True)  # a 100k-point SVG stays small; no effect on screen
            self.ax.add_line(line)
            self._lines.append(line)
        return self._lines[i]

    def _marker_size(self) -> float:
        n = len(self._table)
        return 6.0 if n <= 2_000 else 4.0 if n <= 20_000 else 2.0

    def _redraw_scatter(self) -> None:
        """Swap the marker batches' data and colours (the artists are reused) and draw."""
        self._dirty.discard("scatter")
        xy = self._xy
        groups, bar = self.colour_groups() if xy is not None else ([], None)
        ms = self._marker_size()
        for i, (name, color, rows, size) in enumerate(groups):
            line = self._line(i)
            line.set_data(xy[rows, 0], xy[rows, 1])  # type: ignore[index]
            line.set_markerfacecolor(color)
            line.set_markersize(ms * size)
            line.set_label(name)
            line.set_visible(True)
        for line in self._lines[len(groups) :]:
            line.set_data([], [])
            line.set_visible(False)
        entries = [(name, to_hex(color)) for name, color, _, _ in groups]
        legend_key = tuple(entries) if bar is None and xy is not None and 1 < len(groups) <= 20 else None
        if legend_key != self._legend_key:  # a new legend only when its entries change
            self._legend_key = legend_key
            legend = self.ax.get_legend()
            if legend is not None:
                legend.remove()
            if legend_key is not None:
                proxies = [
                    Line2D([], [], linestyle="none", marker="o", markersize=6, markeredgewidth=0,
                           markerfacecolor=color, label=name)
                    for name, color in entries
                ]  # fmt: skip
                self.ax.legend(
                    handles=proxies,
                    loc="upper left",
                    bbox_to_anchor=(1.02, 1.0),
                    borderaxespad=0.0,
                    fontsize="small",
                    frameon=False,
                )
        self._cax.set_visible(bar is not None)
        if bar is not None and bar != self._bar_key:
            cmap, vmin, vmax, title = bar
            self._mappable.set_cmap(cmap)
            self._mappable.set_norm(Normalize(vmin, vmax))
            self._cbar.update_normal(self._mappable)
            self._cbar.set_label(title, fontsize="small")
        self._bar_key = bar
        self._show_selection_points()
        self.plots["scatter"].canvas.draw_idle()

    def _show_selection_points(self) -> None:
        rows = self.rows_of(self._selected)
        if self._xy is None or len(rows) == 0:
            self._sel_line.set_data([], [])
            return
        self._sel_line.set_data(self._xy[rows, 0], self._xy[rows, 1])
        self._sel_line.set_markersize(self._marker_size() + 3)

    def _on_scatter_drawn(self, event: Any = None) -> None:
        canvas = self.plots["scatter"].canvas
        # savefig draws through another canvas (FigureCanvasSVG/PDF has no renderer to
        # blit with): the ring is drawn as an artist there (see export)
        if canvas.is_saving() or self.plots["scatter"].figure.canvas is not canvas:
            return
        self._background = canvas.copy_from_bbox(self.ax.bbox)
        self._draw_ring(blit=False)  # the paint that follows a draw shows it

    def _draw_ring(self, blit: bool = True) -> None:
        """Draw the selection ring over the cached plot image (and blit the axes)."""
        canvas = self.plots["scatter"].canvas
        if blit:
            if self._background is None:
                canvas.draw_idle()
                return
            canvas.restore_region(self._background)
        if len(self._sel_line.get_xdata()):
            self._sel_line.set_visible(True)
            try:
                self.ax.draw_artist(self._sel_line)
            finally:
                self._sel_line.set_visible(False)
        if blit:
            canvas.blit(self.ax.bbox)

    @property
    def xy(self) -> np.ndarray | None:
        """The scatter's ``(n_cells, 2)`` coordinates, in table row order (``None`` while
        an embedding is being computed)."""
        return self._xy

    @property
    def table(self) -> pd.DataFrame:
        """The plotted per-cell table (rows in the order of :attr:`xy`)."""
        return self._table

    # ---- selection -----------------------------------------------------------------
    def rows_of(self, labels: np.ndarray) -> np.ndarray:
        """Table rows of the label ids ``labels`` (ids without a row are left out)."""
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) == 0 or len(self._label_ids) == 0:
            return np.empty(0, np.int64)
        sorted_ids = self._label_ids[self._sorter]
        pos = np.clip(np.searchsorted(sorted_ids, labels), 0, len(sorted_ids) - 1)
        found = sorted_ids[pos] == labels
        return self._sorter[pos[found]]

    def selected_labels(self) -> np.ndarray:
        """Label ids of the selected cells (sorted)."""
        return self._selected.copy()

    def select_labels(self, labels: Any, mode: str = "replace") -> np.ndarray:
        """Select cells by label id, in the plot and in the viewer.

        Parameters
        ----------
        labels : array-like of int
            Label ids; ids without a row in the table are ignored.
        mode : {"replace", "add", "remove"}

        Returns
        -------
        numpy.ndarray
            The selected label ids after the change.
        """
        ids = np.unique(np.asarray(labels, dtype=np.int64).ravel())
        ids = ids[np.isin(ids, self._label_ids)]
        if mode == "add":
            ids = np.union1d(self._selected, ids)
        elif mode == "remove":
            ids = np.setdiff1d(self._selected, ids)
        elif mode != "replace":
            raise ValueError(f"mode must be 'replace', 'add' or 'remove', not {mode!r}")
        self._selected = ids
        self._show_selection_points()
        if "scatter" in self._dirty:
            self.plots["scatter"].canvas.draw_idle()
        else:
            self._draw_ring()
        layer = self._layer
        if layer is not None and layer in self.viewer.layers:
            update_selection_layer(self.viewer, layer, ids, self._cell_edges() if len(ids) else None)
            if len(ids) == 1 and int(layer.selected_label) != int(ids[0]):
                self._syncing = True
                try:
                    layer.selected_label = int(ids[0])  # the Cell table follows
                finally:
                    self._syncing = False
        pheno = self.phenotypes()
        self.annotate_button.setEnabled(pheno is not None and len(ids) > 0)
        shown = f"{len(ids)} cells selected" if len(ids) != 1 else f"cell {int(ids[0])} selected"
        if layer is not None:
            self.info.setText(f"{layer.name}: {len(self._table)} cells; {shown}")
        self.selection_changed.emit(ids.copy())
        return ids

    def _select_mask(self, mask: np.ndarray, mode: str) -> np.ndarray:
        return self.select_labels(self._label_ids[np.asarray(mask, dtype=bool)], mode)

    def select_in_box(self, x0: float, y0: float, x1: float, y1: float, mode: str = "replace") -> np.ndarray:
        """Select the cells whose points lie in a box (data coordinates of the scatter)."""
        if self._xy is None:
            return self._selected.copy()
        return self._select_mask(points_in_box(self._xy, x0, y0, x1, y1), mode)

    def select_in_polygon(self, vertices: Any, mode: str = "replace") -> np.ndarray:
        """Select the cells whose points lie in a polygon (a lasso, data coordinates)."""
        if self._xy is None:
            return self._selected.copy()
        return self._select_mask(points_in_polygon(self._xy, vertices), mode)

    def select_nearest(self, x: float, y: float, mode: str = "replace", pixels: float = 6.0) -> np.ndarray:
        """Select the cell whose point is nearest to ``(x, y)`` (data coordinates) within
        ``pixels`` screen pixels; a click on nothing clears a plain selection."""
        if self._xy is None:
            return self._selected.copy()
        to_screen = self.ax.transData.transform
        ratio = float(self.plots["scatter"].canvas.device_pixel_ratio or 1.0)
        hit = nearest_point(to_screen(self._xy), to_screen((x, y)), pixels * ratio)
        if hit is None:
            return self.select_labels([], mode) if mode == "replace" else self._selected.copy()
        ids = self.select_labels([self._label_ids[hit]], mode)
        layer = self._layer
        if mode == "replace" and layer is not None and layer in self.viewer.layers:
            # a clicked point is shown in the viewer: outlined (above), flown to and zoomed in on
            focus_cell(self.viewer, layer, self._table, int(ids[0]), outline=False)
        return ids

    @staticmethod
    def _modifier_mode() -> str:
        mods = QApplication.keyboardModifiers()
        if mods & Qt.KeyboardModifier.ShiftModifier:
            return "add"
        if mods & (Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.AltModifier):
            return "remove"
        return "replace"

    def _small(self, points: np.ndarray) -> bool:
        screen = self.ax.transData.transform(np.asarray(points, dtype=float).reshape(-1, 2))
        return bool(np.ptp(screen, axis=0).max() < CLICK_PIXELS)

    def _on_lasso(self, vertices: Any) -> None:
        verts = np.asarray(vertices, dtype=float).reshape(-1, 2)
        if len(verts) == 0:
            return
        mode = self._modifier_mode()
        if len(verts) < 3 or self._small(verts):
            self.select_nearest(*verts[-1], mode=mode)
        else:
            self.select_in_polygon(verts, mode=mode)

    def _on_box(self, press: Any, release: Any) -> None:
        if None in (press.xdata, press.ydata, release.xdata, release.ydata):
            return
        mode = self._modifier_mode()
        corners = np.array([[press.xdata, press.ydata], [release.xdata, release.ydata]], dtype=float)
        if self._small(corners):
            self.select_nearest(release.xdata, release.ydata, mode=mode)
        else:
            self.select_in_box(*corners.ravel(), mode=mode)

    # ---- viewer -> plot ------------------------------------------------------------
    def _on_selected_label(self, _event: Any = None) -> None:
        layer = self._layer
        if self._syncing or layer is None:
            return
        label = int(layer.selected_label)
        if len(self._selected) == 1 and int(self._selected[0]) == label:
            return
        if label > 0 and len(self.rows_of(np.array([label]))):
            self.select_labels([label])

    def _on_click(self, layer: Labels, event: Any) -> Any:
        """A click (not a drag) on a cell selects it; a drag still pans."""
        if layer.mode not in ("pan_zoom", "pick"):
            return
        yield
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
        if isinstance(value, tuple):  # multiscale: (level, value)
            value = value[-1]
        if value:
            self.select_labels([int(value)])

    # ---- annotate ------------------------------------------------------------------
    def annotate_selection(self, cls: Any = _CHOSEN) -> int:
        """Give every selected cell a class through the Phenotypes dock (saved at once).

        Parameters
        ----------
        cls : str or None
            The class; ``None`` clears the cells' annotations; by default the class
            chosen beside the button.

        Returns
        -------
        int
            How many cells were annotated (0 when it could not be done; says why).
        """
        pheno = self.phenotypes()
        layer = self._layer
        if pheno is None:
            show_error("Open the Phenotypes dock (Plugins > napari-phenotyper > Phenotypes) to annotate.")
            return 0
        if layer is None or len(self._selected) == 0:
            show_info("Select cells in the plot first (lasso or box).")
            return 0
        if pheno.task != "classification":
            show_error("Annotating a selection gives it a class; switch the Phenotypes dock to Classes.")
            return 0
        if cls is _CHOSEN:
            text = self.class_combo.currentText()
            if not text:
                show_error("Add a class in the Phenotypes dock first.")
                return 0
            cls = None if text == CLEAR_ANNOTATION else text
        if layer not in pheno.layers():
            show_error(f"{layer.name} is not measured for phenotyping.")
            return 0
        labels = [int(v) for v in self._selected]
        if len(labels) == 1:
            pheno.annotate(layer, labels[0], cls)
            return 1
        pheno.annotate_many(layer, labels, cls)
        show_info(f"{len(labels)} cells {'cleared' if cls is None else f'→ {cls}'}")
        return len(labels)

    # ---- other plots ---------------------------------------------------------------
    @staticmethod
    def _say(ax: Any, text: str) -> None:
        ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", wrap=True)
        ax.set_xticks([])
        ax.set_yticks([])

    def _draw_histogram(self) -> None:
        fig = self.plots["histogram"].figure
        fig.clear()
        ax = fig.add_axes((0.12, 0.12, 0.62, 0.82))
        table = self._table
        feature = self.hist_combo.currentText()
        if not feature or feature not in table.columns:
            self._say(ax, "No numeric feature.")
            return
        by = self.group_combo.currentText()
        column = CLASS_COLUMNS.get(by)
        classes = table[column] if column in table.columns else None
        order = self._class_order(classes) if classes is not None else None
        hist = histogram_by_class(
            table[feature].to_numpy(dtype=float, na_value=np.nan),
            classes,
            bins=self.bins.value(),
            order=order,
            density=self.density.isChecked(),
        )
        colors = self._category_colors(list(hist.counts))
        for name, counts in hist.counts.items():
            if hist.n[name] == 0:
                continue
            color = NO_CLASS_COLOR if name == "no class" else colors.get(name, "#4C72B0")
            ax.stairs(counts, hist.edges, fill=True, alpha=0.35, color=color)
            ax.stairs(counts, hist.edges, color=color, linewidth=1.5, label=f"{name} ({hist.n[name]})")
        ax.set_xlabel(feature)
        ax.set_ylabel("density" if self.density.isChecked() else "cells")
        if hist.counts:
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize="small")

    def _draw_confusion(self) -> None:
        fig = self.plots["confusion"].figure
        fig.clear()
        ax = fig.add_axes((0.2, 0.15, 0.6, 0.75))
        quality = self._quality
        if not isinstance(quality, dict) or not isinstance(quality.get("confusion"), pd.DataFrame):
            why = (
                "Open the Phenotypes dock."
                if self.phenotypes() is None
                else "Annotate 2 cells of each class."
            )
            self._say(ax, f"No cross-validation yet.\n{why}")
            return
        conf: pd.DataFrame = quality["confusion"]
        counts = conf.to_numpy(dtype=float)
        rows = counts.sum(axis=1, keepdims=True)
        recall = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
        ax.imshow(recall, cmap="Blues", vmin=0, vmax=1)
        for i in range(counts.shape[0]):
            for j in range(counts.shape[1]):
                ax.text(
                    j, i, f"{int(counts[i, j])}", ha="center", va="center",
                    color="white" if recall[i, j] > 0.6 else "black",
                )  # fmt: skip
        ax.set_xticks(range(len(conf.columns)), [str(c) for c in conf.columns], rotation=30, ha="right")
        ax.set_yticks(range(len(conf.index)), [str(c) for c in conf.index])
        ax.set_xlabel("predicted class")
        ax.set_ylabel("annotated class")
        ax.set_title(
            f"{quality.get('folds', '?')}-fold CV: accuracy {quality['accuracy']:.2f}, "
            f"balanced {quality.get('balanced_accuracy', float('nan')):.2f}",
            fontsize="medium",
        )

    def _draw_learning(self) -> None:
        fig = self.plots["learning"].figure
        fig.clear()
        ax = fig.add_axes((0.14, 0.14, 0.8, 0.78))
        n, acc = learning_curve(self.learning_records)
        if len(n) == 0:
            self._say(ax, "Each cross-validation in the Phenotypes dock adds a point here.")
            return
        ax.plot(n, acc, "o-", color="#0072B2", label="accuracy")
        nb, bal = learning_curve(self.balanced_records)
        if len(nb):
            ax.plot(nb, bal, "s--", color="#D55E00", label="balanced accuracy", markersize=4)
        ax.set_xlabel("annotated cells")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("cross-validated accuracy")
        ax.set_ylim(0, 1.02)
        if len(n) == 1:
            ax.set_xlim(n[0] - 1, n[0] + 1)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize="small")

    def _draw_importances(self, top: int = 20) -> None:
        fig = self.plots["importances"].figure
        fig.clear()
        ax = fig.add_axes((0.42, 0.12, 0.54, 0.82))
        imp = self._importances
        if not isinstance(imp, pd.Series) or imp.empty:
            why = (
                "Open the Phenotypes dock."
                if self.phenotypes() is None
                else "Train a random forest or logistic regression\n(SVM, k-NN and boosting have none)."
            )
            self._say(ax, f"No feature importances.\n{why}")
            return
        shown = imp.head(top)[::-1]
        ax.barh(range(len(shown)), shown.to_numpy(dtype=float), color="#009E73")
        ax.set_yticks(range(len(shown)), [str(i) for i in shown.index], fontsize="small")
        ax.set_xlabel("importance (share of the total)")
        ax.set_title(f"Top {len(shown)} of {len(imp)} features", fontsize="medium")

    # ---- export --------------------------------------------------------------------
    def export(self, path: str | Path, tab: str | None = None, dpi: float = 150) -> Path:
        """Save a plot (default: the one shown) as PNG, SVG or PDF (by the suffix), atomically.

        The scatter's points are rasterised inside an SVG/PDF (axes, labels and legend
        stay vector), so that a 100,000-cell plot stays a small file.
        """
        key = tab or self.current_tab()
        path = Path(path)
        fmt = path.suffix.lower().lstrip(".")
        if fmt not in ("png", "svg", "pdf"):
            raise ValueError(f"Export as .png, .svg or .pdf, not {path.suffix or 'no suffix'!r}.")
        self._dirty.add(key)
        self.refresh(key)
        figure = self.plots[key].figure
        ring = self._sel_line
        ring.set_visible(key == "scatter" and len(ring.get_xdata()) > 0)  # blitted on screen
        try:
            with atomic_path(path) as tmp:
                figure.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
        finally:
            ring.set_visible(False)
        return path

    def _ask_export(self) -> None:
        key = self.current_tab()
        name = self._layer.name if self._layer is not None else "cells"
        path, _ = QFileDialog.getSaveFileName(self, "Export plot", f"{name}_{key}.png", EXPORT_FILTER)
        if not path:
            return
        try:
            out = self.export(path)
        except (OSError, ValueError) as exc:
            show_error(f"Could not save {path}: {exc}")
            return
        show_info(f"Saved the {TABS[key].lower()} to {out}")

    # ---- teardown ------------------------------------------------------------------
    def close_widget(self) -> None:
        """Stop timers and workers, unhook from the layer (called when the dock closes)."""
        self._poll.stop()
        self._reload_timer.stop()
        if self._embed_worker is not None:
            self._embed_worker.quit()
        self._embed_wanted.clear()
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.disconnect(self._on_layers_changed)
        layer = self._layer
        if layer is not None:
            layer.events.features.disconnect(self._on_features)
            layer.events.selected_label.disconnect(self._on_selected_label)
            layer.events.data.disconnect(self._on_data)
            if hasattr(layer.events, "paint"):
                layer.events.paint.disconnect(self._on_paint)
            if self._on_click in layer.mouse_drag_callbacks:
                layer.mouse_drag_callbacks.remove(self._on_click)
        self._layer = None

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        self.close_widget()
        super().closeEvent(event)
