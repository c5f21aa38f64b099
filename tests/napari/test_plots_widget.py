"""The Plots dock: scatter / embedding linked to the viewer both ways, annotate a selection,
colour by predictions, histograms, quality plots, export, updates."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
import xml.etree.ElementTree as ET

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from matplotlib.backend_bases import MouseButton, MouseEvent
from matplotlib.colors import to_hex

from cellgrid import grid_cells
from napari_phenotyper._napari import plots_widget as pw
from napari_phenotyper._napari.layers import camera, upsert_labels
from napari_phenotyper._napari.phenotype_widget import PhenotypeWidget
from napari_phenotyper._napari.plots_widget import PlotsWidget, find_selection_layer
from napari_phenotyper._napari.table_widget import FeatureTableWidget
from napari_phenotyper.core.embedding import embed, selection_image
from napari_phenotyper.core.features import compute_features
from napari_phenotyper.core.progress import Progress

ROWS, COLS, STEP = 4, 6, 30


def _cells(seed: int = 0):
    return grid_cells(ROWS, COLS, STEP, seed)


@pytest.fixture
def cells(make_napari_viewer):
    viewer = make_napari_viewer()
    image, labels, kinds = _cells()
    img_layer = viewer.add_image(image, name="cells")
    feats = compute_features(labels, {"image": image})
    layer = upsert_labels(viewer, img_layer, labels, feats, {"backend": "test"})
    viewer.layers.selection.active = layer
    return viewer, layer, kinds


@pytest.fixture
def plots(cells, qtbot):
    viewer, layer, kinds = cells
    widget = PlotsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.layer is layer
    widget.plots["scatter"].canvas.draw()
    yield viewer, layer, kinds, widget
    widget.close_widget()
    qtbot.waitUntil(lambda: not widget.embedding_busy(), timeout=30000)


@pytest.fixture
def with_phenotypes(plots, qtbot, tmp_path):
    viewer, layer, kinds, widget = plots
    pheno = PhenotypeWidget(viewer, session_path=tmp_path / "session.json")
    viewer.window.add_dock_widget(pheno)
    pheno.add_class("small")
    pheno.add_class("big")
    widget.sync_with_phenotypes()
    yield viewer, layer, kinds, widget, pheno, tmp_path
    pheno.close_session()
    qtbot.waitUntil(lambda: pheno._worker is None and pheno._quality_worker is None, timeout=30000)


# ---- helpers: real mouse events on the plot's canvas ------------------------------------
def _mouse(widget, kind, xy_data, button=MouseButton.LEFT):
    canvas = widget.plots["scatter"].canvas
    x, y = widget.ax.transData.transform(xy_data)
    MouseEvent(kind, canvas, x, y, button=button)._process()


def _drag(widget, path):
    """Press at the first point, move through the others, release at the last."""
    _mouse(widget, "button_press_event", path[0])
    for p in path[1:]:
        _mouse(widget, "motion_notify_event", p)
    _mouse(widget, "button_release_event", path[-1])


def _inner(limits, frac=0.01):
    lo, hi = limits
    return lo + frac * (hi - lo), hi - frac * (hi - lo)


def _drawn_points(widget):
    return sum(len(line.get_xdata()) for line in widget._lines if line.get_visible())


def _big_side(widget, kinds):
    """Data x dividing the two clusters on PCA 1, and the sign of the big cells' side."""
    xy, labels = widget.xy, widget.table["label"].to_numpy()
    big = np.array([kinds[int(lab)] == "big" for lab in labels])
    mid = (xy[big, 0].mean() + xy[~big, 0].mean()) / 2
    return mid, 1.0 if xy[big, 0].mean() > mid else -1.0, big


# ---- scatter ---------------------------------------------------------------------------
def test_scatter_shows_pca_of_every_cell(plots):
    viewer, layer, kinds, widget = plots
    assert widget.x_combo.currentText() == "PCA 1" and widget.y_combo.currentText() == "PCA 2"
    np.testing.assert_allclose(widget.xy, embed(widget.table))
    assert _drawn_points(widget) == len(kinds) == len(widget.table)
    assert widget.ax.get_xlabel().startswith("PCA 1 (")
    # the two kinds of cells form two clusters along PCA 1
    mid, sign, big = _big_side(widget, kinds)
    assert ((sign * (widget.xy[:, 0] - mid) > 0) == big).all()
    # any two features
    widget.x_combo.setCurrentText("area")
    widget.y_combo.setCurrentText("mean_intensity_image")
    np.testing.assert_allclose(widget.xy[:, 0], widget.table["area"])
    assert widget.ax.get_xlabel() == "area"
    lo, hi = widget.ax.get_xlim()
    assert lo < widget.table["area"].min() and hi > widget.table["area"].max()


def test_lasso_in_plot_selects_cells_in_viewer(plots):
    viewer, layer, kinds, widget = plots
    mid, sign, big = _big_side(widget, kinds)
    xy = widget.xy
    # inside the axes (a drag must start on them), around every point of one side
    (xlo, xhi), (y0, y1) = _inner(widget.ax.get_xlim()), _inner(widget.ax.get_ylim())
    far = xhi if sign > 0 else xlo
    # a real lasso drag around the big cells' cluster
    _drag(widget, [(mid, y0), (far, y0), (far, y1), (mid, y1), (mid, y0 + 0.01)])
    expected = np.sort(widget.table["label"].to_numpy()[big])
    np.testing.assert_array_equal(widget.selected_labels(), expected)
    # the viewer outlines exactly those cells, in a display-only layer found by metadata
    sel = find_selection_layer(viewer, layer)
    assert sel is not None and sel.visible and not sel.editable
    np.testing.assert_array_equal(sel.data > 0, np.isin(layer.data, expected))
    np.testing.assert_array_equal(sel.data, selection_image(layer.data, expected))  # tint + outline
    assert (sel.data == 2).any() and (sel.data == 1).any()
    assert viewer.layers.selection.active is layer  # adding the overlay kept the active layer
    np.testing.assert_array_equal(layer.data, _cells()[1])  # label ids untouched
    # and the plot rings the selected points
    assert len(widget._sel_line.get_xdata()) == len(expected)
    assert f"{len(expected)} cells selected" in widget.info.text()
    # the box tool, with "add" and "remove"
    widget.tool_combo.setCurrentText("Box")
    lo, hi = sorted([mid, far])
    _drag(widget, [(lo, y0), (hi, y1)])
    np.testing.assert_array_equal(widget.selected_labels(), expected)
    widget.select_in_box(xy[:, 0].min() - 1, y0, xy[:, 0].max() + 1, y1, mode="remove")
    assert len(widget.selected_labels()) == 0
    assert not find_selection_layer(viewer, layer).visible
    widget.select_in_box(lo, y0, hi, y1, mode="add")
    np.testing.assert_array_equal(widget.selected_labels(), expected)


def test_click_in_plot_selects_one_cell_and_the_viewer_follows(plots):
    viewer, layer, kinds, widget = plots
    table = widget.table
    row = int(np.flatnonzero(table["label"].to_numpy() == 5)[0])
    target = widget.xy[row]
    viewer.reset_view()
    camera(viewer).zoom = zoom = float(camera(viewer).zoom) / 20  # a whole-slide view
    _drag(widget, [target, target])  # a click with the lasso tool
    np.testing.assert_array_equal(widget.selected_labels(), [5])
    assert layer.selected_label == 5
    # the clicked cell is flown to and zoomed in on (issue 13), and outlined
    yy, xx = np.nonzero(layer.data == 5)
    np.testing.assert_allclose(camera(viewer).center[-2:], [yy.mean(), xx.mean()], atol=1.0)
    assert float(camera(viewer).zoom) > zoom
    np.testing.assert_array_equal(find_selection_layer(viewer, layer).data > 0, layer.data == 5)
    widget.tool_combo.setCurrentText("Box")
    row9 = int(np.flatnonzero(table["label"].to_numpy() == 9)[0])
    _drag(widget, [widget.xy[row9], widget.xy[row9]])
    np.testing.assert_array_equal(widget.selected_labels(), [9])
    assert layer.selected_label == 9


def test_selecting_in_viewer_highlights_the_point(plots):
    viewer, layer, kinds, widget = plots
    got = []
    widget.selection_changed.connect(got.append)
    layer.selected_label = 10  # napari's picker, Next cell, ...
    np.testing.assert_array_equal(widget.selected_labels(), [10])
    row = int(np.flatnonzero(widget.table["label"].to_numpy() == 10)[0])
    ring = np.column_stack([widget._sel_line.get_xdata(), widget._sel_line.get_ydata()])
    np.testing.assert_allclose(ring, widget.xy[[row]])
    np.testing.assert_array_equal(got[-1], [10])
    sel = find_selection_layer(viewer, layer)
    np.testing.assert_array_equal(sel.data > 0, layer.data == 10)
    # a label without measurements changes nothing
    layer.selected_label = 999
    np.testing.assert_array_equal(widget.selected_labels(), [10])


class _Event:
    def __init__(self, kind, position):
        self.type, self.position = kind, position
        self.view_direction, self.dims_displayed = None, [0, 1]


def test_clicking_a_cell_in_the_viewer_and_the_cell_table(plots):
    viewer, layer, kinds, widget = plots
    # a click on cell 8 (the viewer's mouse callback)
    yy, xx = np.nonzero(layer.data == 8)
    gen = widget._on_click(layer, _Event("mouse_press", (yy.mean(), xx.mean())))
    next(gen)
    with pytest.raises(StopIteration):
        next(gen)
    np.testing.assert_array_equal(widget.selected_labels(), [8])
    # the Cell table's row selection reaches the plot through the layer, and back
    table = FeatureTableWidget(viewer)
    viewer.window.add_dock_widget(table)
    table.layer_combo.value = layer
    table.show_cell(12)
    np.testing.assert_array_equal(widget.selected_labels(), [12])
    widget.select_labels([3])
    assert table.selected_label() == 3


# ---- annotate, colour by predictions ----------------------------------------------------
def test_annotate_selection_through_the_phenotypes_dock(with_phenotypes, qtbot):
    viewer, layer, kinds, widget, pheno, tmp_path = with_phenotypes
    assert widget.phenotypes() is pheno  # found among the dock widgets
    assert [widget.class_combo.itemText(i) for i in range(widget.class_combo.count())] == [
        "small",
        "big",
        pw.CLEAR_ANNOTATION,
    ]
    mid, sign, big = _big_side(widget, kinds)
    labels = widget.table["label"].to_numpy()
    big_ids = labels[big][:6]
    small_ids = labels[~big][:6]
    widget.select_labels(big_ids)
    assert widget.annotate_button.isEnabled()
    widget.class_combo.setCurrentText("big")
    assert widget.annotate_selection() == 6
    widget.select_labels(small_ids)
    assert widget.annotate_selection("small") == 6
    key = pheno.key_of(layer)
    assert pheno.store.annotations(key) == {
        **{int(i): "big" for i in big_ids},
        **{int(i): "small" for i in small_ids},
    }
    saved = json.loads((tmp_path / "session.json").read_text())  # saved at once
    assert len(saved["annotations"]) == 12
    ann = layer.features.set_index("label")["pheno_annotation"]
    assert (ann.loc[big_ids] == "big").all() and ann.drop(index=[*big_ids, *small_ids]).isna().all()
    # the retrain predicts every cell; colour the scatter by the predicted class
    qtbot.waitUntil(lambda: pheno.result is not None and pheno._worker is None, timeout=30000)
    qtbot.waitUntil(lambda: "pheno_class" in widget.table.columns, timeout=5000)
    widget.color_combo.setCurrentText("predicted class")
    groups, bar = widget.colour_groups()
    assert bar is None
    predicted = widget.table["pheno_class"].astype(str).to_numpy()
    colors = {c.name: c.color for c in pheno.store.classes}
    for (name, _color, rows, _size), line in zip(groups, widget._lines, strict=False):
        assert (predicted[rows] == name).all()
        assert to_hex(line.get_markerfacecolor()) == to_hex(colors[name])
    assert sum(len(r) for _, _, r, _ in groups) == len(kinds)
    truth = np.array([kinds[int(lab)] for lab in labels])
    assert (predicted == truth).mean() >= 0.9
    legend = widget.ax.get_legend()
    assert legend is not None and {t.get_text() for t in legend.get_texts()} <= {"small", "big"}
    # uncertainty: a continuous colour with a colour bar
    widget.color_combo.setCurrentText("uncertainty")
    groups, bar = widget.colour_groups()
    assert bar is not None and bar[1:3] == (0.0, 1.0) and widget._cax.get_visible()
    # clearing annotations of a selection
    widget.select_labels(big_ids[:2])
    widget.class_combo.setCurrentText(pw.CLEAR_ANNOTATION)
    assert widget.annotate_selection() == 2
    assert all(pheno.store.get(key, int(i)) is None for i in big_ids[:2])


def test_without_the_phenotypes_dock(plots):
    viewer, layer, kinds, widget = plots
    assert widget.phenotypes() is None
    widget.select_labels([1, 2])
    assert not widget.annotate_button.isEnabled()
    assert widget.annotate_selection("big") == 0
    for key in ("confusion", "learning", "importances"):
        widget.show_tab(key)  # says what is missing instead of failing
        texts = [t.get_text() for ax in widget.plots[key].figure.axes for t in ax.texts]
        assert any(texts)


def test_quality_plots_follow_the_classifier(with_phenotypes, qtbot):
    viewer, layer, kinds, widget, pheno, tmp_path = with_phenotypes
    key = pheno.key_of(layer)
    for lab in range(1, 9):
        pheno.annotate(layer, lab, kinds[lab])
    qtbot.waitUntil(lambda: pheno.quality is not None and pheno.importances is not None, timeout=30000)
    widget.sync_with_phenotypes()
    assert widget.learning_records and widget.learning_records[-1][0] == len(pheno.store.annotations(key))
    widget.show_tab("confusion")
    ax = widget.plots["confusion"].figure.axes[0]
    conf = pheno.quality["confusion"]
    assert [t.get_text() for t in ax.texts] == [str(int(v)) for v in conf.to_numpy().ravel()]
    widget.show_tab("learning")
    line = widget.plots["learning"].figure.axes[0].lines[0]
    np.testing.assert_array_equal(line.get_xdata(), [r[0] for r in widget.learning_records][-1:])
    widget.show_tab("importances")
    bars = widget.plots["importances"].figure.axes[0].patches
    assert len(bars) == min(20, len(pheno.importances))
    # a new cross-validation after more annotations adds a point to the learning curve
    for lab in range(9, 15):
        pheno.annotate(layer, lab, kinds[lab])
    qtbot.waitUntil(lambda: widget.learning_records[-1][0] == 14, timeout=30000)  # the poll timer
    widget.refresh("learning")
    xs = widget.plots["learning"].figure.axes[0].lines[0].get_xdata()
    assert xs[-1] == 14 and len(xs) >= 2


# ---- histogram, export, updates ---------------------------------------------------------
def test_histogram_per_class(with_phenotypes, qtbot):
    viewer, layer, kinds, widget, pheno, tmp_path = with_phenotypes
    for lab in (1, 2, 3, 4):
        pheno.annotate(layer, lab, kinds[lab])
    qtbot.waitUntil(lambda: "pheno_class" in widget.table.columns, timeout=30000)
    widget.hist_combo.setCurrentText("area")
    widget.group_combo.setCurrentText("annotation")
    widget.density.setChecked(False)
    widget.show_tab("histogram")
    ax = widget.plots["histogram"].figure.axes[0]
    names = [t.get_text() for t in ax.get_legend().get_texts()]
    assert names == ["small (2)", "big (2)", "no class (20)"]
    assert ax.get_xlabel() == "area"


def test_export_png_and_svg(plots, tmp_path, capfd):
    viewer, layer, kinds, widget = plots
    plain = matplotlib.image.imread(widget.export(tmp_path / "plain.png"))
    widget.select_labels([1, 2, 3])
    png = widget.export(tmp_path / "scatter.png")
    (tmp_path / "plain.png").unlink()
    svg = widget.export(tmp_path / "hist.svg", tab="histogram")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(png)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    # the selection ring (blitted on screen) is in the file too
    assert img.shape == plain.shape and not np.array_equal(img, plain)
    assert not widget._sel_line.get_visible()  # and hidden again for the next full draw
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hist.svg", "scatter.png"]  # no temp files
    with pytest.raises(ValueError, match=r"\.png, \.svg or \.pdf"):
        widget.export(tmp_path / "plot.jpg")
    # the scatter's points are rasterised inside a vector file
    big = widget.export(tmp_path / "scatter.svg", tab="scatter")
    assert b"<image" in big.read_bytes()
    pdf = widget.export(tmp_path / "scatter.pdf", tab="scatter")
    assert pdf.read_bytes()[:4] == b"%PDF"
    # matplotlib prints (does not raise) errors in draw callbacks: the SVG export's
    # 'FigureCanvasSVG' object has no attribute 'get_renderer' (issue 13 item 8)
    assert "Traceback" not in capfd.readouterr().err


def test_updates_when_features_change(plots, qtbot):
    viewer, layer, kinds, widget = plots
    before = widget.xy.copy()
    widget.select_labels([1, 2])
    feats = layer.features.copy()
    feats["area"] = feats["area"] * np.linspace(1, 3, len(feats))
    feats["new_score"] = np.arange(len(feats), dtype=float)
    layer.features = feats  # replaced whole: napari's event fires
    qtbot.waitUntil(lambda: "new_score" in widget.table.columns, timeout=5000)
    assert widget.color_combo.findText("new_score") >= 0
    assert not np.allclose(widget.xy, before)  # the PCA was recomputed
    np.testing.assert_allclose(widget.xy, embed(widget.table))
    np.testing.assert_array_equal(widget.selected_labels(), [1, 2])  # kept
    widget.color_combo.setCurrentText("new_score")
    groups, bar = widget.colour_groups()
    assert bar is not None and widget._cax.get_visible()
    assert sum(len(r) for _, _, r, _ in groups) == len(feats)
    # cells that disappear leave the selection (and the viewer's overlay)
    layer.features = feats[feats["label"] != 2]
    qtbot.waitUntil(lambda: len(widget.table) == len(feats) - 1, timeout=5000)
    np.testing.assert_array_equal(widget.selected_labels(), [1])
    overlay = find_selection_layer(viewer, layer)
    np.testing.assert_array_equal(overlay.data > 0, layer.data == 1)
    # a new label image (re-segmentation) repaints the overlay
    moved = np.where(layer.data == 1, 0, layer.data)
    moved[:5, :5] = 1
    layer.data = moved
    np.testing.assert_array_equal(overlay.data > 0, moved == 1)
    np.testing.assert_array_equal(overlay.data, selection_image(moved, [1]))  # new outlines
    # painting in place (the brush) renews the outlines too
    layer.paint((20, 20), 1, refresh=True)
    widget.select_labels([1])
    np.testing.assert_array_equal(overlay.data, selection_image(layer.data, [1]))


def test_large_tables_embed_in_a_worker_thread(cells, qtbot, monkeypatch):
    viewer, layer, kinds = cells
    monkeypatch.setattr(pw, "SYNC_EMBED_CELLS", 5)
    widget = PlotsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    try:
        qtbot.waitUntil(lambda: widget.xy is not None and not widget.embedding_busy(), timeout=30000)
        np.testing.assert_allclose(widget.xy, embed(widget.table))
        assert _drawn_points(widget) == len(kinds)
    finally:
        widget.close_widget()
        qtbot.waitUntil(lambda: not widget.embedding_busy(), timeout=30000)


def test_layer_choice_skips_display_layers(plots, qtbot):
    viewer, layer, kinds, widget = plots
    widget.select_labels([1])
    other = viewer.add_labels(np.zeros((10, 10), np.int32), name="no table")
    choices = list(widget.layer_combo.choices)
    assert choices == [layer, other]  # measured first; never the selection overlay
    assert find_selection_layer(viewer, layer) is not None
    viewer.layers.remove(layer)
    assert find_selection_layer(viewer, layer) is None  # the overlay went with its labels
    assert widget.layer is other
    assert widget.table.empty and widget.xy is None and _drawn_points(widget) == 0
    assert "No cells measured" in widget._message.get_text()
    # measured later: the plot follows its features event
    other.features = pd.DataFrame({"label": [1, 2, 3], "area": [1.0, 2.0, 4.0], "solidity": [0.9, 0.8, 0.95]})
    qtbot.waitUntil(lambda: len(widget.table) == 3, timeout=5000)
    assert widget.xy.shape == (3, 2) and _drawn_points(widget) == 3
    viewer.layers.remove(other)
    assert widget.layer is None and "No labels layer" in widget.info.text()


def test_umap_axes_when_umap_is_installed(cells, qtbot, monkeypatch):
    """With umap-learn importable, UMAP 1/2 are offered and computed in a worker thread."""
    viewer, layer, kinds = cells

    class UMAP:  # a stand-in: the real package is optional
        def __init__(self, **kwargs):
            self.kwargs = kwargs

        def fit_transform(self, X):
            return X[:, :2] + 100.0

    mod = types.ModuleType("umap")
    mod.__spec__ = importlib.machinery.ModuleSpec("umap", None)
    mod.UMAP = UMAP
    monkeypatch.setitem(sys.modules, "umap", mod)
    widget = PlotsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    try:
        items = [widget.x_combo.itemText(i) for i in range(widget.x_combo.count())]
        assert items[:4] == ["PCA 1", "PCA 2", "UMAP 1", "UMAP 2"]
        widget.x_combo.setCurrentText("UMAP 1")
        widget.y_combo.setCurrentText("UMAP 2")
        qtbot.waitUntil(lambda: widget.xy is not None and not widget.embedding_busy(), timeout=30000)
        assert widget.xy.min() > 50  # the stand-in's coordinates
        assert _drawn_points(widget) == len(kinds)
    finally:
        widget.close_widget()
        qtbot.waitUntil(lambda: not widget.embedding_busy(), timeout=30000)


def test_a_failing_embedding_says_why_once(cells, qtbot, monkeypatch):
    viewer, layer, kinds = cells
    monkeypatch.setattr(pw, "SYNC_EMBED_CELLS", 5)
    calls = []

    def broken(table, settings):
        calls.append(settings.method)
        yield Progress(0, 1, "Standardising features")
        raise ValueError("no luck")

    monkeypatch.setattr(pw, "iter_embedding", broken)
    widget = PlotsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    try:
        qtbot.waitUntil(lambda: "PCA failed: no luck" in widget.info.text(), timeout=30000)
        qtbot.wait(200)
        assert calls == ["pca"] and not widget.embedding_busy()  # not retried in a loop
        assert "no luck" in widget._message.get_text() and widget.xy is None
        widget.x_combo.setCurrentText("area")
        widget.y_combo.setCurrentText("solidity")
        assert widget.xy.shape == (len(kinds), 2)  # plain columns still work
    finally:
        widget.close_widget()
