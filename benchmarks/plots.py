"""How fast the Plots dock redraws its scatter of 100,000 cells.

A synthetic screen-sized session: 100,000 cells (10 x 10 px squares in a 3,170 x 3,170
label image) with 60 features in 4 classes (scikit-learn's ``make_classification``,
seeded), predictions (``pheno_class``, probabilities, ``pheno_uncertainty``) and 200
annotated cells, in a real napari viewer under Xvfb with the Plots dock docked. The
scatter shows PCA 1 against PCA 2 (computed in the dock's worker thread, timed as
``pca_ms``). Then, each repeated and timed from the change to the end of the plot's
redraw (the Agg render and the Qt repaint, waited for through matplotlib's
``draw_event``):

``colour``
    colour-by switched in turn to predicted class, uncertainty, annotation and a feature
    (every point recoloured);
``select``
    a lasso through the selector's callback with real data coordinates: the cells in it
    are selected, tinted and outlined in the viewer's selection layer (a 10-megapixel
    repaint, drawn by the viewer) and ringed in the plot (blitted over the cached plot
    image, so no ``draw_event``: timed to the end of the events it queued);
``axes``
    the x axis switched between a feature and PCA 1 (every point moved);
``features``
    the layer's ``features`` replaced with new predictions, as after a retrain (the
    table is re-read, the embedding found still valid by its fingerprint, recoloured).

``redraw_ms_100k`` is the median over the ``colour`` and ``select`` redraws (target
<= 200 ms). The reference is the usual way, one ``ax.scatter`` with a colour per point
(a ``PathCollection``) recoloured with ``set_facecolors`` on a canvas of the same size.

The last line is::

    RESULT redraw_ms_100k=<ms> colour_ms=<ms> select_ms=<ms> axes_ms=<ms> features_ms=<ms> pca_ms=<ms> ...

Usage::

    xvfb-run -a python benchmarks/plots.py [--cells N] [--features F] [--repeats R]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import pandas as pd
from sklearn.datasets import make_classification

CLASSES = ("interphase", "prophase", "metaphase", "anaphase")


def make_session(n_cells: int, n_features: int, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """Labels (10 x 10 px squares) and a per-cell table with features and predictions."""
    X, y = make_classification(
        n_cells,
        n_features,
        n_informative=12,
        n_redundant=12,
        n_classes=len(CLASSES),
        n_clusters_per_class=2,
        class_sep=1.5,
        random_state=seed,
    )
    side = int(np.ceil(np.sqrt(n_cells)))
    ids = np.zeros(side * side, np.int32)
    ids[:n_cells] = np.arange(1, n_cells + 1)
    labels = np.kron(ids.reshape(side, side), np.ones((10, 10), np.int32))
    table = pd.DataFrame(X.astype(np.float32), columns=[f"feature_{i:02d}" for i in range(n_features)])
    table.insert(0, "label", np.arange(1, n_cells + 1))
    pos = np.arange(n_cells)
    table.insert(1, "centroid_y", (pos // side) * 10 + 4.5)
    table.insert(2, "centroid_x", (pos % side) * 10 + 4.5)
    return labels, with_predictions(table, y, seed)


def with_predictions(table: pd.DataFrame, truth: np.ndarray, seed: int) -> pd.DataFrame:
    """``table`` with noisy class probabilities, the predicted class, uncertainty and 200
    annotations (the columns the Phenotypes dock writes)."""
    rng = np.random.default_rng(seed)
    n = len(table)
    logits = rng.normal(0, 1, (n, len(CLASSES)))
    logits[np.arange(n), truth] += 2.0
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    out = table.copy()
    annotated = rng.choice(n, 200, replace=False)
    ann = np.full(n, None, dtype=object)
    ann[annotated] = np.array(CLASSES)[truth[annotated]]
    out["pheno_annotation"] = pd.Categorical(ann, categories=CLASSES)
    out["pheno_class"] = pd.Categorical(np.array(CLASSES)[proba.argmax(axis=1)], categories=CLASSES)
    for k, c in enumerate(CLASSES):
        out[f"pheno_proba_{c}"] = proba[:, k]
    out["pheno_uncertainty"] = -(proba * np.log(proba)).sum(axis=1) / np.log(len(CLASSES))
    return out


def reference_scatter_ms(xy: np.ndarray, size: tuple[int, int], repeats: int) -> float:
    """Recolour + redraw of one ``ax.scatter`` (a colour per point) on a canvas of ``size``."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from matplotlib.figure import Figure

    fig = Figure(dpi=100)
    canvas = FigureCanvasQTAgg(fig)
    canvas.resize(*size)
    ax = fig.add_axes((0.11, 0.11, 0.64, 0.83))
    sc = ax.scatter(xy[:, 0], xy[:, 1], s=4, linewidths=0)
    values = np.random.default_rng(0).random(len(xy))
    canvas.draw()
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        sc.set_facecolors(colormaps["viridis"]((values + 0.1 * i) % 1.0))
        canvas.draw()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=int, default=100_000)
    ap.add_argument("--features", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)

    from qtpy.QtWidgets import QApplication

    import napari
    from napari_phenotyper._napari.layers import META_KEY, features_for_layer
    from napari_phenotyper._napari.plots_widget import PlotsWidget, find_selection_layer

    labels, table = make_session(args.cells, args.features)
    print(f"{args.cells} cells x {args.features} features, labels {labels.shape}")
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    app = QApplication.instance()
    layer = viewer.add_labels(
        labels,
        name="cells labels",
        features=features_for_layer(table),
        metadata={META_KEY: {"backend": "bench"}},
    )
    t0 = time.perf_counter()
    widget = PlotsWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Plots", area="right")
    canvas = widget.plots["scatter"].canvas
    draws = [0]
    canvas.mpl_connect("draw_event", lambda _e: draws.__setitem__(0, draws[0] + 1))

    def wait_drawn(before: int, timeout: float = 30.0) -> None:
        end = time.perf_counter() + timeout
        while draws[0] == before:
            app.processEvents()
            if time.perf_counter() > end:
                raise TimeoutError("the plot did not redraw")

    while widget.xy is None or widget.embedding_busy():
        app.processEvents()
        time.sleep(0.001)
    wait_drawn(-1 if draws[0] else 0)
    pca_ms = (time.perf_counter() - t0) * 1e3
    print(
        f"dock opened and PCA of {args.cells} cells drawn in {pca_ms:.0f} ms; canvas {canvas.width()} x {canvas.height()} px"
    )

    def timed(action) -> float:
        """Milliseconds from ``action`` to the end of the plot's full redraw."""
        before = draws[0]
        t = time.perf_counter()
        action()
        wait_drawn(before)
        return (time.perf_counter() - t) * 1e3

    def timed_blit(action) -> float:
        """Milliseconds from ``action`` (which blits the plot at once) to the end of the
        events it queued (the viewer's repaint)."""
        t = time.perf_counter()
        action()
        app.processEvents()
        return (time.perf_counter() - t) * 1e3

    # warm-up: every kind of redraw once
    for choice in ("predicted class", "uncertainty", "annotation", "feature_03"):
        timed(lambda c=choice: widget.color_combo.setCurrentText(c))
    colour = [
        timed(lambda c=choice: widget.color_combo.setCurrentText(c))
        for _ in range(args.repeats)
        for choice in ("predicted class", "uncertainty", "annotation", "feature_03")
    ]
    xy = widget.xy
    centre = np.median(xy, axis=0)
    spread = xy.std(axis=0)
    rng = np.random.default_rng(1)
    select, n_selected = [], []
    for i in range(args.repeats * 2 + 1):
        c = centre + rng.normal(0, 0.5, 2) * spread
        r = rng.uniform(0.3, 0.8) * spread
        angles = np.linspace(0, 2 * np.pi, 60)
        lasso = np.column_stack([c[0] + r[0] * np.cos(angles), c[1] + r[1] * np.sin(angles)])
        ms = timed_blit(lambda v=lasso: widget._lasso.onselect(v))
        if i:  # the first makes the viewer's selection layer: warm-up
            select.append(ms)
            n_selected.append(len(widget.selected_labels()))
    overlay = find_selection_layer(viewer, layer)
    assert overlay is not None and int((overlay.data > 0).sum()) == 100 * n_selected[-1]
    axes = []
    for _ in range(args.repeats):
        axes.append(timed(lambda: widget.x_combo.setCurrentText("feature_05")))
        axes.append(timed(lambda: widget.x_combo.setCurrentText("PCA 1")))
    features = []
    for k in range(args.repeats):
        truth = np.random.default_rng(100 + k).integers(0, len(CLASSES), len(table))
        new = features_for_layer(with_predictions(table.iloc[:, : 3 + args.features], truth, 100 + k))
        features.append(timed(lambda f=new: setattr(layer, "features", f)))
    assert not widget.embedding_busy()  # the PCA was still valid: not recomputed

    size = (canvas.width(), canvas.height())
    ref = reference_scatter_ms(xy, size, args.repeats)
    redraw = statistics.median(colour + select)
    print("colour-by ms:", " ".join(f"{t:.0f}" for t in colour))
    print(
        f"lasso ms ({min(n_selected)}-{max(n_selected)} cells selected):",
        " ".join(f"{t:.0f}" for t in select),
    )
    print("axis change ms:", " ".join(f"{t:.0f}" for t in axes))
    print("features replaced (retrain) ms:", " ".join(f"{t:.0f}" for t in features))
    print(
        f"reference ax.scatter recolour + draw: {ref:.0f} ms ({ref / statistics.median(colour):.1f}x the dock's recolour)"
    )
    print(
        f"RESULT redraw_ms_100k={redraw:.0f} colour_ms={statistics.median(colour):.0f} "
        f"select_ms={statistics.median(select):.0f} axes_ms={statistics.median(axes):.0f} "
        f"features_ms={statistics.median(features):.0f} pca_ms={pca_ms:.0f} reference_scatter_ms={ref:.0f} "
        f"n_cells={args.cells} n_features={args.features} repeats={args.repeats}"
    )
    widget.close_widget()
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
