"""The cell table: sort, row <-> cell selection, camera, CSV export and the npe2 writer."""

import numpy as np
import pandas as pd
import pytest
from qtpy.QtCore import Qt

from napari_phenotyper._napari.layers import META_KEY, upsert_labels
from napari_phenotyper._napari.selection import find_selection_layer
from napari_phenotyper._napari.table_widget import FeatureTableWidget, camera
from napari_phenotyper._napari.writer import write_cell_table
from napari_phenotyper.core.pipeline import iter_segment_and_measure
from napari_phenotyper.core.progress import run
from napari_phenotyper.core.segment.classical import ClassicalParams


def _image():
    yy, xx = np.mgrid[:120, :160]
    img = np.zeros((120, 160), np.float32)
    for i, (cy, cx, r) in enumerate([(20, 20, 8), (60, 120, 12), (100, 40, 10)]):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 100 + 50 * i
    return img


@pytest.fixture
def segmented(make_napari_viewer):
    viewer = make_napari_viewer()
    image = viewer.add_image(_image(), name="cells", scale=(0.5, 0.5), translate=(10, 0))
    res = run(iter_segment_and_measure(image.data, "classical", ClassicalParams(diameter=20)))
    labels = upsert_labels(viewer, image, res.labels, res.features, res.provenance)
    assert labels.data.max() == 3
    widget = FeatureTableWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.layer_combo.value = labels
    return viewer, labels, widget


def test_table_shows_features_and_sorts(segmented):
    viewer, labels, widget = segmented
    assert widget.model.rowCount() == 3
    assert widget.model.columnCount() == len(labels.features.columns) - 1  # napari's index column hidden
    col = list(widget.model.frame.columns).index("area")
    widget.view.sortByColumn(col, Qt.SortOrder.DescendingOrder)
    first = widget.proxy.mapToSource(widget.proxy.index(0, 0)).row()
    assert widget.model.frame["area"].iloc[first] == widget.model.frame["area"].max()
    assert "3 cells" in widget.info.text()


def test_row_selection_selects_label_and_centres_camera(segmented):
    viewer, labels, widget = segmented
    df = widget.model.frame
    target = int(df.loc[df["area"].idxmax(), "label"])
    widget.select_row(target)  # programmatic select (as from the viewer)...
    widget.show_cell(target)  # ...and what a row click does
    assert labels.selected_label == target
    row = df[df["label"] == target].iloc[0]
    expected = labels.data_to_world([row["centroid_y"], row["centroid_x"]])
    np.testing.assert_allclose(camera(viewer).center[-2:], expected, atol=1e-6)
    # the big cell is centred at (60, 120) px -> world (10 + 30, 60)
    np.testing.assert_allclose(expected, [40, 60], atol=0.5)


def test_a_row_click_outlines_the_cell_and_zooms_in(segmented):
    """Issue 13: a selected cell is outlined and zoomed to, not only centred."""
    viewer, labels, widget = segmented
    df = widget.model.frame
    small = int(df.loc[df["area"].idxmin(), "label"])
    cam = camera(viewer)
    viewer.reset_view()
    before = float(cam.zoom)
    widget.show_cell(small)
    outline = find_selection_layer(viewer, labels)
    assert outline is not None and outline.visible
    cell = labels.data == small
    assert (outline.data[cell] > 0).all() and (outline.data[~cell] == 0).all()
    assert 2 in np.unique(outline.data[cell])  # its outline, drawn opaque
    diameter = float(df.loc[df["label"] == small, "equivalent_diameter"].iloc[0])
    canvas = min(viewer.window._qt_viewer.canvas.size)
    assert float(cam.zoom) > before
    # ten diameters (world units: pixels x 0.5) span the canvas's smaller side
    np.testing.assert_allclose(float(cam.zoom), canvas / (10 * diameter * 0.5), rtol=1e-6)
    # a closer view is kept, the next cell is outlined instead
    cam.zoom = 4 * float(cam.zoom)
    closer = float(cam.zoom)
    big = int(df.loc[df["area"].idxmax(), "label"])
    widget.show_cell(big)
    assert float(cam.zoom) == closer
    assert (outline.data[labels.data == big] > 0).all() and (outline.data[cell] == 0).all()


def test_clicking_a_row_in_the_view(segmented, qtbot):
    viewer, labels, widget = segmented
    widget.view.selectRow(1)
    label = widget.selected_label()
    assert labels.selected_label == label


def test_selecting_a_cell_in_the_viewer_selects_its_row(segmented):
    viewer, labels, widget = segmented
    value = int(labels.data[100, 40])
    assert value != labels.selected_label
    labels.selected_label = value  # e.g. napari's colour picker
    assert widget.selected_label() == value


class _Event:
    def __init__(self, kind, position):
        self.type, self.position = kind, position
        self.view_direction, self.dims_displayed = None, [0, 1]


def test_clicking_a_cell_selects_its_row(segmented):
    viewer, labels, widget = segmented
    # the cell at data (60, 120) -> world (10 + 30, 60)
    value = int(labels.data[60, 120])
    gen = widget._on_click(labels, _Event("mouse_press", (40.0, 60.0)))
    next(gen)  # press
    with pytest.raises(StopIteration):
        next(gen)  # release without moving
    assert labels.selected_label == value
    assert widget.selected_label() == value
    # a drag (pan) selects nothing
    labels.selected_label = 0
    event = _Event("mouse_press", (40.0, 60.0))
    gen = widget._on_click(labels, event)
    next(gen)
    event.type = "mouse_move"
    next(gen)
    event.type = "mouse_release"
    with pytest.raises(StopIteration):
        next(gen)
    assert labels.selected_label == 0


def test_table_follows_feature_updates(segmented):
    viewer, labels, widget = segmented
    labels.features = labels.features.iloc[:2]
    assert widget.model.rowCount() == 2


def test_export_csv_and_writer(segmented, tmp_path):
    viewer, labels, widget = segmented
    out = widget.export_csv(tmp_path / "cells.csv")
    df = pd.read_csv(out)
    assert list(df.columns[:2]) == ["image", "label"] and "index" not in df.columns
    assert (df["image"] == "cells").all() and len(df) == 3
    np.testing.assert_allclose(df["area"], labels.features["area"])

    # npe2 writer through napari's own save
    path = tmp_path / "via_napari.csv"
    written = labels.save(str(path), plugin="napari-phenotyper")
    assert written == [str(path)]
    assert pd.read_csv(path).equals(df)


def _classify(labels):
    """Put phenotype columns on the layer as the classifier widget would (empty class 'dead')."""
    features = labels.features.copy()
    n = len(features)
    features["pheno_class"] = pd.Categorical(
        ["live"] * (n - 1) + ["mitotic"], categories=["live", "mitotic", "dead"]
    )
    features["pheno_proba_live"] = [0.8] * (n - 1) + [0.1]
    features["pheno_proba_mitotic"] = 1 - features["pheno_proba_live"]
    features["pheno_proba_dead"] = 0.0
    features["pheno_uncertainty"] = 0.5
    features["pheno_annotation"] = pd.Categorical(
        ["mitotic"] + [None] * (n - 1), categories=["live", "mitotic"]
    )
    labels.features = features


def test_export_with_phenotypes_writes_summary(segmented, tmp_path):
    viewer, labels, widget = segmented
    out = tmp_path / "plate_cells.csv"
    assert widget.export_csv(out) == out
    assert not (tmp_path / "plate_cells_summary.csv").exists()  # no phenotype columns yet

    _classify(labels)
    assert widget.export_csv(out) == out
    df = pd.read_csv(out)
    assert list(df.columns[:8]) == [
        "image",
        "label",
        "pheno_annotation",
        "pheno_class",
        "pheno_proba_live",
        "pheno_proba_mitotic",
        "pheno_proba_dead",
        "pheno_uncertainty",
    ]
    assert df["pheno_class"].tolist() == ["live", "live", "mitotic"]
    summary = pd.read_csv(tmp_path / "plate_cells_summary.csv")
    assert summary["image"].tolist() == ["cells"]
    row = summary.iloc[0]
    # the first cell is annotated mitotic: the annotation wins over its 'live' prediction
    assert (row["n_cells"], row["n_annotated"], row["n_live"], row["n_mitotic"], row["n_dead"]) == (
        3,
        1,
        1,
        2,
        0,
    )
    assert row["fraction_mitotic"] == pytest.approx(2 / 3) and row["mean_uncertainty"] == 0.5

    # the npe2 writer writes both and returns both paths
    path = tmp_path / "via_napari.csv"
    written = labels.save(str(path), plugin="napari-phenotyper")
    assert written == [str(path), str(tmp_path / "via_napari_summary.csv")]
    assert pd.read_csv(path).equals(df)
    assert pd.read_csv(written[1]).equals(summary)


def test_writer_refuses_layer_without_table(tmp_path):
    with pytest.raises(ValueError, match="no per-cell table"):
        write_cell_table(
            str(tmp_path / "x.csv"), np.zeros((4, 4), int), {"features": {}, "metadata": {}, "name": "x"}
        )
    assert not (tmp_path / "x.csv").exists()


def test_layer_metadata_identifies_source(segmented):
    viewer, labels, widget = segmented
    assert labels.metadata[META_KEY]["source_layer"] == "cells"
    np.testing.assert_allclose(labels.scale, [0.5, 0.5])
    np.testing.assert_allclose(labels.translate, [10, 0])
