"""``docs/getting-started.md``, step by step, exactly as the page tells a new user.

The session runs with an empty HOME (``tests/conftest.py``): no session folder, no settings,
nothing made by hand. Every step goes through the menus' own commands, the docks' buttons
and real key presses on the canvas; dialogs are answered by patching Qt's static dialog
functions, as a user would type into them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFileDialog, QInputDialog

from napari_phenotyper._napari.layers import camera, find_result_layer
from napari_phenotyper._napari.selection import find_selection_layer

PLUGIN = "napari-phenotyper"


def _press(viewer, key):
    viewer.window._qt_viewer.canvas._scene_canvas.native.setFocus()
    handler = viewer.window._qt_viewer.canvas._key_map_handler
    handler.press_key(key)
    handler.release_key(key)


def _point_at(viewer, labels, lab):
    yy, xx = np.nonzero(labels.data == lab)
    viewer.cursor.position = (float(yy.mean()), float(xx.mean()))


@pytest.mark.slow
def test_getting_started_tutorial_as_written(make_napari_viewer, qtbot, monkeypatch, tmp_path, fresh_home):
    # 1. Install and open napari (a fresh install: nothing in the user's home yet)
    assert not (fresh_home / ".napari-phenotyper").exists()
    viewer = make_napari_viewer()

    # 2. File > Open Sample > napari-phenotyper > Nuclei
    viewer.open_sample(PLUGIN, "nuclei")
    image = viewer.layers["nuclei"]
    assert image.data.shape == (512, 512)

    # 3. Plugins > napari-phenotyper > Segment & measure, Run
    _, seg = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment & measure")
    assert seg.image.value is image
    seg.run_button.native.click()
    qtbot.waitUntil(lambda: seg._worker is None, timeout=120000)
    labels = find_result_layer(viewer, image)
    assert labels is not None and labels.name == "nuclei labels"
    n_cells = len(labels.features)
    assert 90 <= n_cells <= 160  # the sample has 125 hand-annotated nuclei
    assert labels.metadata["napari_phenotyper"]["source_layer"] == "nuclei"

    # 4. Plugins > napari-phenotyper > Cell table (a tab next to Segment & measure); sort by area;
    # select a row: outlined, flown to, zoomed in on
    table_dock, table = viewer.window.add_plugin_dock_widget(PLUGIN, "Cell table")
    qtbot.waitUntil(lambda: table_dock.property("napari_phenotyper_dock") is True, timeout=5000)
    assert [d.windowTitle() for d in viewer.window._qt_window.tabifiedDockWidgets(table_dock)] == [
        "Segment && measure"
    ]
    zoom = float(camera(viewer).zoom)
    table.layer_combo.value = labels
    assert table.model.rowCount() == n_cells
    biggest = int(labels.features.nlargest(1, "area")["label"].iloc[0])
    table.view.sortByColumn(list(table.model.frame.columns).index("area"), Qt.SortOrder.DescendingOrder)
    table.view.selectRow(0)  # a click on the top row: the biggest nucleus
    assert labels.selected_label == biggest
    row = labels.features.set_index("label").loc[biggest]
    np.testing.assert_allclose(camera(viewer).center[-2:], (row["centroid_y"], row["centroid_x"]), atol=1.0)
    assert float(camera(viewer).zoom) > zoom
    outline = find_selection_layer(viewer, labels)
    assert outline is not None and outline.visible and (outline.data[labels.data == biggest] > 0).all()

    # 5. Plugins > napari-phenotyper > Phenotypes: Add three classes...
    _, pheno = viewer.window.add_plugin_dock_widget(PLUGIN, "Phenotypes")
    names = iter(["regular", "large", "irregular"])
    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: (next(names), True))
    for _ in range(3):
        pheno.add_btn.click()
    assert [c.name for c in pheno.store.classes] == ["regular", "large", "irregular"]
    # ...the session is autosaved under the new user's home, in a folder nothing made by hand
    assert pheno.store.path.is_relative_to(fresh_home / ".napari-phenotyper" / "sessions")
    assert pheno.store.path.is_file()
    # point at nuclei and press their class keys: 1 regular, 2 large, 3 irregular
    df = labels.features
    examples = {
        "2": df.nlargest(3, "area")["label"],
        "3": df.nsmallest(3, "solidity")["label"],
        "1": df[df["solidity"] > df["solidity"].median()].nsmallest(3, "eccentricity")["label"],
    }
    viewer.layers.selection.active = labels
    for key, labs in examples.items():
        for lab in labs:
            _point_at(viewer, labels, int(lab))
            _press(viewer, key)
    key_of = pheno.key_of(labels)
    assert len(pheno.store) == 9
    assert pheno.store.get(key_of, int(examples["2"].iloc[0])) == "large"
    # 0 clears
    _point_at(viewer, labels, int(examples["1"].iloc[0]))
    _press(viewer, "0")
    assert pheno.store.get(key_of, int(examples["1"].iloc[0])) is None
    _press(viewer, "1")
    # every nucleus gets a predicted class; Quality shows the cross-validated accuracy
    qtbot.waitUntil(lambda: pheno.quality is not None and pheno._worker is None, timeout=60000)
    predicted = labels.features["pheno_class"]
    assert predicted.notna().all() and set(predicted.astype(str)) <= {"regular", "large", "irregular"}
    assert "cross" in pheno.quality_label.text().lower() or "CV" in pheno.quality_label.text()
    assert pheno.confusion.rowCount() == 3

    # 6. Press N: the camera flies to a proposed cell, rings it, waits for a class key
    resting = int(examples["3"].iloc[1])
    _point_at(viewer, labels, resting)  # the mouse rests on a cell that is already annotated
    _press(viewer, "n")
    assert pheno.current is not None
    proposed = pheno.current[1]
    assert pheno.store.get(key_of, proposed) is None
    ring = [lay for lay in viewer.layers if lay.name == "proposed cell"]
    assert ring
    _press(viewer, "3")  # the answer goes to the proposed cell, not the one under the mouse
    assert pheno.store.get(key_of, proposed) == "irregular"
    assert pheno.store.get(key_of, resting) == "irregular"  # unchanged
    # "go on after each answer": the next proposal follows
    qtbot.waitUntil(lambda: pheno.current is not None and pheno.current[1] != proposed, timeout=60000)

    # 7. Plugins > napari-phenotyper > Plots: PCA of every cell coloured by predicted class
    _, plots = viewer.window.add_plugin_dock_widget(PLUGIN, "Plots")
    plots.set_layer(labels)
    plots.show_tab("scatter")
    plots.x_combo.setCurrentText("PCA 1")
    plots.y_combo.setCurrentText("PCA 2")
    plots.color_combo.setCurrentText("predicted class")
    qtbot.waitUntil(lambda: plots.xy is not None and not plots.embedding_busy(), timeout=60000)
    assert plots.xy.shape == (n_cells, 2)

    # 8. Export: Export CSV... in the cell table
    out = tmp_path / "nuclei_cells.csv"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(out), "CSV (*.csv)"))
    assert table.export_csv() == out
    cells = pd.read_csv(out)
    assert len(cells) == n_cells and {"image", "label", "pheno_annotation", "pheno_class"} <= set(cells)
    assert (tmp_path / "nuclei_cells_summary.csv").is_file()
    # ... and File > Save Selected Layers... with the labels layer selected, a .csv name and
    # the file type the page names
    viewer.layers.selection = {labels}
    saved = tmp_path / "saved_from_menu.csv"
    seen_filters: list[str] = []

    def _save_dialog(*_args, filter="", **_k):
        seen_filters.extend(filter.split(";;"))
        ours = next(f for f in seen_filters if f.startswith(f"{PLUGIN} per-cell table"))
        return str(saved), ours

    monkeypatch.setattr(QFileDialog, "getSaveFileName", _save_dialog)
    viewer.window._qt_viewer._save_layers_dialog(selected=True)
    assert pd.read_csv(saved)["label"].tolist() == cells["label"].tolist()
    # Save classifier... keeps what was taught
    clf = tmp_path / "nuclei.phenotyper.zip"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(clf), ""))
    pheno.save_clf_btn.click()
    assert clf.is_file()

    pheno.close_session()
    plots.close_widget()
    qtbot.waitUntil(lambda: pheno._worker is None and pheno._quality_worker is None, timeout=60000)
