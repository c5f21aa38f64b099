"""The Plots dock's other figures (histogram, confusion matrix, learning curve,
importances) and the export of any tab."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QFileDialog,
)

from ..core.embedding import (
    histogram_by_class,
    learning_curve,
)
from ..io.atomic import atomic_path

if TYPE_CHECKING:
    pass


from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

from .plots_common import (
    CLASS_COLUMNS,
    EXPORT_FILTER,
    NO_CLASS_COLOR,
    TABS,
)


class QualityFigures:
    """Drawing of the non-scatter tabs of :class:`~.plots_widget.PlotsWidget` (a mixin)."""

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

    def _on_confusion_click(self, event: Any) -> None:
        """A click on a count: the session asks the Gallery to show those cells."""
        quality = self._quality
        conf = quality.get("confusion") if isinstance(quality, dict) else None
        session = getattr(self, "_session", None)
        if (
            event.inaxes is None
            or event.xdata is None
            or not isinstance(conf, pd.DataFrame)
            or session is None
        ):
            return
        i, j = round(float(event.ydata)), round(float(event.xdata))
        if 0 <= i < len(conf) and 0 <= j < len(conf.columns):
            session.review(str(conf.index[i]), str(conf.columns[j]))

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
