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

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer, Signal

from ..core.classify.model import feature_columns_for
from ..core.classify.session import PhenotypingSession
from ..core.embedding import (
    EMBEDDINGS,
    Embedding,
    EmbeddingSettings,
    available_embeddings,
    feature_fingerprint,
    iter_embedding,
    label_edges,
)
from ..core.progress import run
from .docking import settle_when_docked
from .layers import source_of, table_of
from .params_form import compact_widths
from .phenotype_widget import PhenotypeWidget, find_phenotypes
from .selection import SELECTION_ROLE, find_selection_layer, update_selection_layer
from .workers import start_job, user_message

if TYPE_CHECKING:
    import napari


from typing import TYPE_CHECKING

from .plots_common import (
    _CHOSEN,
    CLASS_COLUMNS,
    CLEAR_ANNOTATION,
    NONE,
    POLL_MS,
    SYNC_EMBED_CELLS,
    TABS,
    UNCERTAINTY,
    _is_candidate,
    _numeric_columns,
    _set_items,
)
from .plots_controls import PlotsControls
from .plots_figures import QualityFigures
from .plots_scatter import ScatterView

if TYPE_CHECKING:
    import napari

__all__ = ["SELECTION_ROLE", "TABS", "PlotsWidget", "find_selection_layer", "update_selection_layer"]


class PlotsWidget(PlotsControls, ScatterView, QualityFigures):
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

    # ---- the Phenotypes dock -------------------------------------------------------
    def phenotypes(self) -> PhenotypeWidget | None:
        """The Phenotypes dock: the one given to the constructor, else the one docked."""
        return self._phenotypes if self._phenotypes is not None else find_phenotypes(self.viewer)

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
