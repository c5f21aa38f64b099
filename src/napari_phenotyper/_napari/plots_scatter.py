"""The Plots dock's scatter: colours, marker batches, the selection ring and selecting."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import Normalize, to_hex
from matplotlib.lines import Line2D
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QApplication,
)

from ..core.classify.annotations import DEFAULT_COLORS
from ..core.embedding import (
    nearest_point,
    points_in_box,
    points_in_polygon,
    quantize,
    split_by_code,
)
from .selection import focus_cell, update_selection_layer

if TYPE_CHECKING:
    pass


from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

from .plots_common import (
    CLASS_COLUMNS,
    CLICK_PIXELS,
    LEVELS,
    NO_CLASS_COLOR,
    NONE,
    UNCERTAINTY,
)


class ScatterView:
    """Scatter drawing and selection of :class:`~.plots_widget.PlotsWidget` (a mixin: the
    state it uses is the dock's)."""

    selection_changed: Any

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
