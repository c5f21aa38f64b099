"""The Phenotypes widget as a biologist uses it: classes, key presses, live retraining,
next cell, queue, re-segmentation, regression, sessions."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from qtpy.QtGui import QColor

from cellgrid import grid_cells
from napari_phenotyper._napari.feedback import FLASH_MS, help_without_keys
from napari_phenotyper._napari.layers import camera, upsert_labels
from napari_phenotyper._napari.phenotype_layers import LayerBridge
from napari_phenotyper._napari.phenotype_view import find_view
from napari_phenotyper._napari.phenotype_widget import PhenotypeWidget
from napari_phenotyper.core.classify.engine import border_labels
from napari_phenotyper.core.features import compute_features

ROWS, COLS, STEP = 6, 8, 30


def _cells(seed: int = 0):
    return grid_cells(ROWS, COLS, STEP, seed)


def _center(labels, lab):
    yy, xx = np.nonzero(labels == lab)
    return float(yy.mean()), float(xx.mean())


def _open(make_napari_viewer, qtbot, tmp_path, crop=0, measure=compute_features):
    """The grid measured (by ``measure``) in a viewer with the Phenotypes dock and two
    classes; ``crop`` cuts that many pixels off the top and left (the outer cells then
    touch the border)."""
    viewer = make_napari_viewer()
    image, labels, kinds = _cells()
    image, labels = image[crop:, crop:], labels[crop:, crop:]
    img_layer = viewer.add_image(image, name="cells")
    feats = measure(labels, {"image": image})
    lab_layer = upsert_labels(viewer, img_layer, labels, feats, {"backend": "test"})
    widget = PhenotypeWidget(viewer, session_path=tmp_path / "session.json")
    viewer.window.add_dock_widget(widget)
    widget.add_class("small")
    widget.add_class("big")
    viewer.layers.selection.active = lab_layer
    yield viewer, lab_layer, widget, kinds, tmp_path
    widget.close_session()
    qtbot.waitUntil(lambda: widget._worker is None and widget._quality_worker is None, timeout=30000)


@pytest.fixture
def setup(make_napari_viewer, qtbot, tmp_path):
    yield from _open(make_napari_viewer, qtbot, tmp_path)


def _press(viewer, qtbot, key):
    """A real key press on the canvas (napari's keymap handler)."""
    viewer.window._qt_viewer.canvas._scene_canvas.native.setFocus()
    handler = viewer.window._qt_viewer.canvas._key_map_handler
    handler.press_key(key)
    handler.release_key(key)


def _point_at(viewer, labels, lab):
    viewer.cursor.position = _center(labels.data, lab)


def _wait_trained(widget, qtbot, timeout=20000):
    qtbot.waitUntil(lambda: widget._worker is None and not widget._timer.isActive(), timeout=timeout)


def test_keys_annotate_cells_and_retrain_predicts_all(setup, qtbot):
    viewer, labels, widget, kinds, tmp_path = setup
    given = {lab: kinds[lab] for lab in (1, 2, 3, 4, 10, 11)}
    for lab, kind in given.items():
        _point_at(viewer, labels, lab)
        _press(viewer, qtbot, "1" if kind == "small" else "2")
    assert {lab: widget.store.get(widget.key_of(labels), lab) for lab in given} == given
    assert given[10] == "big" and given[11] == "small"
    # every annotation is autosaved at once (a crash loses nothing)...
    saved = json.loads((tmp_path / "session.json").read_text())
    assert len(saved["annotations"]) == 6
    # ...and shown in the view within a frame or two, before the retrain (the repaint
    # gathers the answers of the next PAINT_MS)
    view = find_view(viewer, labels)
    y, x = (round(v) for v in _center(labels.data, 11))
    qtbot.waitUntil(lambda: view.data[y, x] == 3, timeout=LayerBridge.PAINT_MS * 10)  # "small"
    _wait_trained(widget, qtbot)
    qtbot.waitUntil(lambda: widget.result is not None, timeout=20000)
    ann = labels.features.set_index("label")["pheno_annotation"]
    assert ann.loc[1] == "big" and ann.loc[2] == "small" and pd.isna(ann.loc[5])
    feats = labels.features.set_index("label")
    assert {"pheno_class", "pheno_proba_small", "pheno_proba_big", "pheno_uncertainty"} <= set(feats.columns)
    predicted = feats["pheno_class"].astype(str)
    truth = pd.Series(kinds)
    assert (predicted.loc[truth.index] == truth).mean() >= 0.95
    np.testing.assert_allclose(feats["pheno_proba_small"] + feats["pheno_proba_big"], 1.0)
    # the view paints predicted classes faint and annotated ones distinct
    view = find_view(viewer, labels)
    assert view is not None
    small_code, big_code, small_ann = 1, 2, 3
    y, x = (round(v) for v in _center(labels.data, 2))
    assert view.data[y, x] == small_ann
    not_annotated = [lab for lab in kinds if lab not in given]
    lab = not_annotated[0]
    y, x = (round(v) for v in _center(labels.data, lab))
    assert view.data[y, x] == (small_code if kinds[lab] == "small" else big_code)
    assert view.data[0, 0] == 0
    # the labels' own ids are untouched
    assert labels.data.max() == ROWS * COLS
    # the class list counts annotations and predictions
    texts = [widget.class_list.item(i).text() for i in range(widget.class_list.count())]
    assert "3 annotated" in texts[0] and "predicted" in texts[0]
    # clearing with 0
    _point_at(viewer, labels, 1)
    _press(viewer, qtbot, "0")
    assert widget.store.get(widget.key_of(labels), 1) is None


def test_next_cell_flies_to_a_proposal_and_key_answers_it(setup, qtbot):
    viewer, labels, widget, kinds, _ = setup
    for lab in (1, 2, 3, 4):
        widget.annotate(labels, lab, kinds[lab])
    _wait_trained(widget, qtbot)
    viewer.cursor.position = (-100, -100)  # not over a cell: keys go to the proposal
    _press(viewer, qtbot, "n")
    assert widget.current is not None
    layer, lab = widget.current
    assert layer is labels and lab not in (1, 2, 3, 4)
    np.testing.assert_allclose(camera(viewer).center[-2:], _center(labels.data, lab), atol=0.6)
    marker = [lay for lay in viewer.layers if lay.name == "proposed cell"]
    assert marker and np.allclose(marker[0].data[0], _center(labels.data, lab), atol=0.6)
    _press(viewer, qtbot, "1" if kinds[lab] == "small" else "2")
    assert widget.store.get(widget.key_of(labels), lab) == kinds[lab]
    # with "go on after each answer", the next proposal comes once the retrain finished
    qtbot.waitUntil(lambda: widget.current is not None and widget.current[1] != lab, timeout=20000)
    assert widget.current[1] not in (1, 2, 3, 4, lab)


def test_queue_lists_distinct_unannotated_cells(setup, qtbot):
    viewer, labels, widget, kinds, _ = setup
    for lab in (1, 2, 3, 4):
        widget.annotate(labels, lab, kinds[lab])
    _wait_trained(widget, qtbot)
    widget.queue_k.setValue(5)
    found = widget.fill_queue()
    assert widget.queue.count() == len(found) == 5
    assert len({p.label for p in found}) == 5 and not {p.label for p in found} & {1, 2, 3, 4}
    widget._on_queue_clicked(widget.queue.item(0))
    assert widget.current == (labels, found[0].label)
    widget.annotate(labels, found[0].label, "big")
    assert widget.queue.count() == 4  # answered items leave the queue


def test_click_mode_annotates_with_the_selected_class(setup, qtbot):
    viewer, labels, widget, kinds, _ = setup
    widget.click_mode.setChecked(True)
    widget.class_list.setCurrentRow(1)  # "big"

    class _Ev:
        button, modifiers, type = 1, (), "mouse_press"

    ev = _Ev()
    _point_at(viewer, labels, 5)
    gen = widget._on_mouse(viewer, ev)
    next(gen)
    ev.type = "mouse_release"
    with pytest.raises(StopIteration):
        next(gen)
    assert widget.store.get(widget.key_of(labels), 5) == "big"
    gen = widget._on_mouse(viewer, ev)  # a second click clears it
    next(gen)
    with pytest.raises(StopIteration):
        next(gen)
    assert widget.store.get(widget.key_of(labels), 5) is None


def test_annotations_follow_a_resegmentation(setup, qtbot):
    viewer, labels, widget, kinds, _ = setup
    for lab in (1, 2, 3):
        widget.annotate(labels, lab, kinds[lab])
    new = np.where(labels.data > 0, labels.data + 100, 0).astype(np.int32)
    new[labels.data == 3] = 0  # cell 3 vanished
    image = viewer.layers["cells"]
    upsert_labels(viewer, image, new, compute_features(new, {"image": image.data}), {"backend": "test"})
    key = widget.key_of(labels)
    assert widget.store.annotations(key) == {101: kinds[1], 102: kinds[2]}
    assert [(lab, c) for _, lab, c in widget.lost] == [(3, kinds[3])]
    assert "kept 2 of 3" in widget.status.text()
    ann = labels.features.set_index("label")["pheno_annotation"]
    assert ann.loc[101] == kinds[1]


def test_regression_mode_predicts_a_value_for_every_cell(setup, qtbot):
    viewer, labels, widget, kinds, _ = setup
    widget.mode.setCurrentIndex(1)
    for lab in (1, 2, 3, 4, 9, 10, 12, 13):
        _point_at(viewer, labels, lab)
        _press(viewer, qtbot, "9" if kinds[lab] == "big" else "1")  # big = 1.0, small = 0.0
    key = widget.key_of(labels)
    assert widget.store.values(key)[1] == 1.0 and widget.store.values(key)[2] == 0.0
    _wait_trained(widget, qtbot)
    qtbot.waitUntil(lambda: widget.result is not None and widget.result.task == "regression", timeout=20000)
    feats = labels.features.set_index("label")
    big = [lab for lab, k in kinds.items() if k == "big"]
    small = [lab for lab, k in kinds.items() if k == "small"]
    assert feats.loc[big, "pheno_value"].mean() > 0.8
    assert feats.loc[small, "pheno_value"].mean() < 0.2
    view = find_view(viewer, labels)
    y, x = (round(v) for v in _center(labels.data, 5))
    assert view.data[y, x] > 0


def test_session_restores_classes_and_annotations(setup, qtbot, tmp_path):
    viewer, labels, widget, kinds, _ = setup
    widget.annotate(labels, 1, "big")
    widget.annotate(labels, 2, "small")
    widget.trees.setValue(40)
    widget.kind.setCurrentIndex(widget.kind.findData("logistic_regression"))
    widget.groups["texture"].setChecked(False)
    path = widget.save_session(tmp_path / "mine.json")
    other = PhenotypeWidget(viewer, session_path=tmp_path / "other.json")
    other.open_session(path)
    assert other.trees.value() == 40 and other.kind.currentData() == "logistic_regression"
    assert not other.groups["texture"].isChecked() and other.groups["shape"].isChecked()
    # the autosaved file (not only an explicit save) has the settings
    autosaved = json.loads((tmp_path / "session.json").read_text())
    assert autosaved["settings"]["classifier"] == "logistic_regression"
    assert [c.name for c in other.store.classes] == ["small", "big"]
    assert other.store.annotations(other.key_of(labels)) == {1: "big", 2: "small"}
    other.close_session()


def test_training_needs_two_classes_and_says_so(setup, qtbot):
    viewer, labels, widget, kinds, _ = setup
    widget.annotate(labels, 1, "big")
    widget.retrain()
    assert widget._worker is None
    assert "two classes" in widget.quality_label.text()


def test_quality_importances_and_full_forest_after_a_pause(setup, qtbot):
    viewer, labels, widget, kinds, _ = setup
    for lab in (1, 2, 3, 4, 5, 6, 7, 8):
        widget.annotate(labels, lab, kinds[lab])
    qtbot.waitUntil(lambda: widget.quality is not None, timeout=30000)
    assert widget._full  # the last training was the full forest
    assert widget.quality["accuracy"] >= 0.75
    assert widget.confusion.rowCount() == 2 and widget.confusion.columnCount() == 2
    assert sum(int(widget.confusion.item(i, j).text()) for i in range(2) for j in range(2)) == 8
    assert "Most important features" in widget.importance_label.text()


def test_saved_classifier_predicts_on_a_new_image(setup, qtbot, make_napari_viewer, tmp_path):
    viewer, labels, widget, kinds, _ = setup
    for lab in range(1, 13):
        widget.annotate(labels, lab, kinds[lab])
    path = widget.save_classifier(tmp_path / "cells.phenotyper.zip")
    # a second viewer with another image of the same kind of cells
    viewer2 = make_napari_viewer()
    image, labels2, kinds2 = _cells(seed=1)
    img = viewer2.add_image(image, name="other")
    lay2 = upsert_labels(
        viewer2, img, labels2, compute_features(labels2, {"image": image}), {"backend": "test"}
    )
    w2 = PhenotypeWidget(viewer2, session_path=tmp_path / "s2.json")
    w2.load_classifier(path)
    assert [c.name for c in w2.store.classes] == ["small", "big"]
    qtbot.waitUntil(lambda: w2.result is not None, timeout=30000)
    pred = lay2.features.set_index("label")["pheno_class"].astype(str)
    assert (pred.loc[list(kinds2)] == pd.Series(kinds2)).mean() >= 0.95
    # cells measured without the intensity channel are refused, naming a missing column
    viewer3 = make_napari_viewer()
    img3 = viewer3.add_image(image, name="third")
    upsert_labels(viewer3, img3, labels2, compute_features(labels2), {"backend": "test"})
    w3 = PhenotypeWidget(viewer3, session_path=tmp_path / "s3.json")
    with pytest.raises(ValueError, match="mean_intensity_image"):
        w3.load_classifier(path)
    for w in (w2, w3):
        w.close_session()
        qtbot.waitUntil(lambda w=w: w._worker is None and w._quality_worker is None, timeout=30000)


def test_after_next_cell_the_key_answers_the_proposal_until_the_mouse_moves(setup, qtbot):
    """Mouse resting on one cell, N flies the camera elsewhere: the class key must go to
    the proposed cell, not to whatever now lies under the unmoved mouse."""
    viewer, labels, widget, kinds, _ = setup
    widget.auto_next.setChecked(False)
    for lab in (1, 2, 3, 4):
        widget.annotate(labels, lab, kinds[lab])
    _wait_trained(widget, qtbot)
    qtbot.waitUntil(lambda: widget.result is not None, timeout=20000)
    first = widget.proposals(1)[0].label
    resting = next(lab for lab in (40, 41, 42) if lab != first)
    _point_at(viewer, labels, resting)
    _press(viewer, qtbot, "n")
    proposed = widget.current[1]
    assert proposed != resting
    _press(viewer, qtbot, "2")
    key = widget.key_of(labels)
    assert widget.store.get(key, proposed) == "big"
    assert widget.store.get(key, resting) is None
    # once the mouse moves, keys go to the cell under it again
    other = next(lab for lab in kinds if lab not in (1, 2, 3, 4, proposed, resting))
    _point_at(viewer, labels, other)
    _press(viewer, qtbot, "1")
    assert widget.store.get(key, other) == "small"
    assert widget.store.get(key, proposed) == "big"


def _ring(viewer):
    return [lay for lay in viewer.layers if lay.name == "proposed cell"]


def test_quality_and_importances_go_when_every_annotation_is_cleared(setup, qtbot):
    viewer, labels, widget, kinds, _ = setup
    for lab in (1, 2, 3, 4, 5, 6):
        widget.annotate(labels, lab, kinds[lab])
    widget.retrain(full=True)
    _wait_trained(widget, qtbot)
    widget.start_quality()
    qtbot.waitUntil(lambda: widget.quality is not None and widget._quality_worker is None, timeout=30000)
    assert widget.confusion.rowCount() == 2 and widget.importance_label.text()
    for lab in (1, 2, 3, 4, 5, 6):
        widget.annotate(labels, lab, None)
    widget.retrain()
    _wait_trained(widget, qtbot)
    assert widget.result is None and widget.quality is None and widget.importances is None
    assert widget.confusion.rowCount() == 0 and widget.importance_label.text() == ""
    assert "pheno_class" not in labels.features.columns


def test_switching_to_values_drops_class_proposals_and_the_ring(setup, qtbot):
    viewer, labels, widget, kinds, _ = setup
    for lab in (1, 2, 3, 4):
        widget.annotate(labels, lab, kinds[lab])
    _wait_trained(widget, qtbot)
    widget.fill_queue()
    widget.next_cell()
    assert widget.queue.count() > 0 and _ring(viewer)
    widget.mode.setCurrentIndex(widget.mode.findData("regression"))
    assert widget.queue.count() == 0 and widget.current is None and not _ring(viewer)


def test_re_measuring_removes_the_proposal_ring(setup, qtbot):
    viewer, labels, widget, kinds, _ = setup
    for lab in (1, 2, 3, 4):
        widget.annotate(labels, lab, kinds[lab])
    _wait_trained(widget, qtbot)
    widget.next_cell()
    assert _ring(viewer) and widget.current is not None
    image = viewer.layers["cells"].data
    upsert_labels(
        viewer,
        viewer.layers["cells"],
        labels.data,
        compute_features(labels.data, {"image": image}),
        {"backend": "test"},
    )
    assert not _ring(viewer) and widget.current is None


def test_closing_an_image_removes_its_counts_and_predictions(setup, qtbot):
    viewer, labels, widget, kinds, _ = setup
    image2, labels2, kinds2 = _cells(seed=1)
    img2 = viewer.add_image(image2, name="cells 2")
    lab2 = upsert_labels(
        viewer, img2, labels2, compute_features(labels2, {"image": image2}), {"backend": "test"}
    )
    for lab in (1, 2, 3, 4):
        widget.annotate(labels, lab, kinds[lab])
    smalls = [lab for lab, k in kinds2.items() if k == "small"][:2]
    bigs = [lab for lab, k in kinds2.items() if k == "big"][:1]
    for lab in smalls + bigs:
        widget.annotate(lab2, lab, kinds2[lab])
    widget.retrain(full=True)
    _wait_trained(widget, qtbot)
    qtbot.waitUntil(lambda: widget.result is not None and len(widget.result.predictions) == 2, timeout=20000)
    viewer.layers.remove(labels)
    _wait_trained(widget, qtbot)
    qtbot.waitUntil(lambda: widget.result is not None and len(widget.result.predictions) == 1, timeout=20000)
    texts = [widget.class_list.item(i).text() for i in range(widget.class_list.count())]
    assert texts[0].startswith("1: small  —  2 annotated") and texts[1].startswith("2: big  —  1 annotated")
    n_pred = sum(int(t.split(", ")[1].split()[0]) for t in texts)
    assert n_pred == len(lab2.features)
    assert set(widget.result.predictions) == {widget.key_of(lab2)}


def _relabel(labels, drop=()):
    """The same cells under other label ids (a different segmenter's numbering), some gone."""
    rng = np.random.default_rng(5)
    ids = np.unique(labels[labels > 0])
    new_ids = rng.permutation(ids) + 100
    lut = np.zeros(labels.max() + 1, np.int32)
    lut[ids] = new_ids
    out = lut[labels]
    for lab in drop:
        out[labels == lab] = 0
    return out, dict(zip(ids.tolist(), new_ids.tolist(), strict=True))


def _remeasure(viewer, labels_array):
    image = viewer.layers["cells"]
    return upsert_labels(
        viewer,
        image,
        labels_array,
        compute_features(labels_array, {"image": image.data}),
        {"backend": "test"},
    )


def test_a_session_restored_onto_another_segmentation_follows_the_cells(
    setup, qtbot, make_napari_viewer, tmp_path
):
    viewer, labels, widget, kinds, _ = setup
    given = {lab: kinds[lab] for lab in (1, 2, 3, 4, 5, 6, 7, 8)}
    for lab, kind in given.items():
        widget.annotate(labels, lab, kind)
    widget.save_session(tmp_path / "mine.json")
    original = np.array(labels.data)
    # another day: the same image, segmented by another method (other ids, cell 8 missed)
    other, mapping = _relabel(original, drop=(8,))
    viewer2 = make_napari_viewer()
    img2 = viewer2.add_image(viewer.layers["cells"].data, name="cells")
    lab2 = upsert_labels(
        viewer2, img2, other, compute_features(other, {"image": img2.data}), {"backend": "x"}
    )
    widget2 = PhenotypeWidget(viewer2, session_path=tmp_path / "other.json")
    key = widget2.key_of(lab2)
    assert key == widget.key_of(labels)
    widget2.open_session(tmp_path / "mine.json")
    got = widget2.store.annotations(key)
    assert got == {mapping[lab]: kind for lab, kind in given.items() if lab != 8}
    assert [r.label for r in widget2.store.lost(key)] == [8]
    assert "7 moved" in widget2.status.text() and "1 lost" in widget2.status.text()
    widget2.close_session()
    qtbot.waitUntil(lambda: widget2._worker is None and widget2._quality_worker is None, timeout=30000)


def test_another_segmenter_keeps_lost_annotations_and_gives_them_back(setup, qtbot):
    viewer, labels, widget, kinds, _ = setup
    given = {lab: kinds[lab] for lab in range(1, 11)}
    for lab, kind in given.items():
        widget.annotate(labels, lab, kind)
    original = np.array(labels.data)
    missing = (2, 4, 6, 8, 10)
    other, mapping = _relabel(original, drop=missing)
    _remeasure(viewer, other)
    key = widget.key_of(labels)
    assert widget.store.annotations(key) == {mapping[lab]: given[lab] for lab in given if lab not in missing}
    lost = widget.store.lost(key)
    assert sorted(r.label for r in lost) == list(missing)
    points = [lay for lay in viewer.layers if lay.name == "cells labels lost annotations"]
    assert points and len(points[0].data) == 5
    assert "5 lost annotation" in widget.lost_label.text()
    # the session file keeps them
    saved = json.loads(widget.store.path.read_text())
    assert len(saved["lost"]) == 5 and len(saved["annotations"]) == 5
    # back to the first segmentation: every annotation is back on its cell
    _remeasure(viewer, original)
    assert widget.store.annotations(key) == given
    assert widget.store.lost() == [] and not [lay for lay in viewer.layers if "lost annotations" in lay.name]


def test_re_attach_lost_annotations_onto_the_cells_under_their_points(setup, qtbot):
    viewer, labels, widget, kinds, _ = setup
    for lab in (1, 2, 3):
        widget.annotate(labels, lab, kinds[lab])
    original = np.array(labels.data)
    shrunk = original.copy()
    shrunk[(original == 2) & (np.roll(original, 4, axis=1) != 2)] = 0  # cell 2 shrinks below IoU 0.5
    shrunk[(original == 2) & (np.roll(original, -4, axis=1) != 2)] = 0
    shrunk[(original == 2) & (np.roll(original, 4, axis=0) != 2)] = 0
    shrunk[(original == 2) & (np.roll(original, -4, axis=0) != 2)] = 0
    _remeasure(viewer, shrunk)
    key = widget.key_of(labels)
    if not widget.store.lost(key):
        pytest.skip("the shrunk cell still overlaps by half")
    assert widget.store.get(key, 2) is None
    assert widget.reattach_under_points() == 1
    assert widget.store.get(key, 2) == kinds[2] and not widget.store.lost()


def test_ctrl_z_undoes_and_ctrl_shift_z_redoes_annotations(setup, qtbot):
    viewer, labels, widget, kinds, _ = setup
    widget.auto.setChecked(False)
    for lab in (1, 2, 3):
        _point_at(viewer, labels, lab)
        _press(viewer, qtbot, "1")
    key = widget.key_of(labels)
    assert set(widget.store.annotations(key)) == {1, 2, 3}
    _press(viewer, qtbot, "Control-Z")
    _press(viewer, qtbot, "Control-Z")
    assert set(widget.store.annotations(key)) == {1}
    assert labels.features.set_index("label")["pheno_annotation"].notna().sum() == 1
    _press(viewer, qtbot, "Control-Shift-Z")
    assert set(widget.store.annotations(key)) == {1, 2}
    # while painting, Ctrl+Z stays napari's own paint undo
    labels.mode = "paint"
    labels.selected_label = 5
    labels.paint((3, 3), 5)
    assert labels.data[3, 3] == 5
    _press(viewer, qtbot, "Control-Z")
    assert labels.data[3, 3] != 5 and set(widget.store.annotations(key)) == {1, 2}


def test_segment_dock_asks_before_a_run_that_would_lose_annotations(setup, qtbot, monkeypatch):
    from qtpy.QtWidgets import QMessageBox

    from napari_phenotyper._napari.segment_widget import SegmentWidget
    from napari_phenotyper.core.pipeline import SegmentResult

    viewer, labels, widget, kinds, _ = setup
    for lab in range(1, 11):
        widget.annotate(labels, lab, kinds[lab])
    seg = SegmentWidget(viewer)
    empty = np.zeros_like(labels.data)
    empty[:30, :30] = 1
    result = SegmentResult(
        empty,
        compute_features(empty, {"image": viewer.layers["cells"].data}),
        {"backend": "x", "segmenter": "x", "segment_seconds": 0.0, "measure_seconds": 0.0},
    )
    asked = []
    monkeypatch.setattr(
        QMessageBox, "question", lambda *a, **k: asked.append(a) or QMessageBox.StandardButton.No
    )
    seg._on_returned(viewer.layers["cells"], result)
    assert asked and labels.data.max() == ROWS * COLS  # refused: nothing changed
    assert len(widget.store.annotations(widget.key_of(labels))) == 10
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    seg._on_returned(viewer.layers["cells"], result)
    assert labels.data.max() == 1
    assert len(widget.store.lost(widget.key_of(labels))) >= 9


def test_a_classifier_with_other_channel_names_asks_which_channel_is_which(
    setup, qtbot, make_napari_viewer, tmp_path, monkeypatch
):
    from qtpy.QtWidgets import QDialog

    from napari_phenotyper._napari import channel_dialog
    from napari_phenotyper.core.channels import ChannelMismatch

    viewer, labels, widget, kinds, _ = setup
    image = viewer.layers["cells"].data
    # trained on cells measured in two channels named after the stains
    feats = compute_features(labels.data, {"gfp": image, "dapi": image[::-1]})
    upsert_labels(viewer, viewer.layers["cells"], labels.data, feats, {"backend": "test"})
    for lab in range(1, 13):
        widget.annotate(labels, lab, kinds[lab])
    path = widget.save_classifier(tmp_path / "stains.phenotyper.zip")
    # the next image's cells were measured in channels named ch0 and ch1
    viewer2 = make_napari_viewer()
    image2, labels2, kinds2 = _cells(seed=1)
    img = viewer2.add_image(image2, name="other")
    lay2 = upsert_labels(
        viewer2,
        img,
        labels2,
        compute_features(labels2, {"ch0": image2, "ch1": image2[::-1]}),
        {"backend": "test"},
    )
    w2 = PhenotypeWidget(viewer2, session_path=tmp_path / "s2.json")
    with pytest.raises(ChannelMismatch, match="'gfp', 'dapi'"):
        w2.load_classifier(path)
    shown = []

    def accept(dialog):
        shown.append({n: c.currentText() for n, c in dialog.combos.items()})
        return QDialog.DialogCode.Accepted

    monkeypatch.setattr(channel_dialog.ChannelMapDialog, "exec", accept)
    w2._load_classifier_asking(str(path))
    assert shown == [{"gfp": "ch0", "dapi": "ch1"}]  # pre-filled in order
    assert "'gfp' read from 'ch0'" in w2.status.text()
    qtbot.waitUntil(lambda: w2.result is not None, timeout=30000)
    pred = lay2.features.set_index("label")["pheno_class"].astype(str)
    assert (pred.loc[list(kinds2)] == pd.Series(kinds2)).mean() >= 0.95
    w2.close_session()
    qtbot.waitUntil(lambda: w2._worker is None and w2._quality_worker is None, timeout=30000)


def test_a_class_key_flashes_the_cell_and_says_the_new_count(setup, qtbot):
    """Issue 13: class-key feedback where the eyes are (before: a status line in the
    dock, overwritten 150 ms later)."""
    viewer, labels, widget, kinds, tmp_path = setup
    widget.auto.setChecked(False)
    n_layers = len(viewer.layers)
    _point_at(viewer, labels, 7)
    _press(viewer, qtbot, "2")
    flash = widget.flash
    assert flash.showing and flash.text == "cell 7 → big: 1 big annotated"
    big = next(c for c in widget.store.classes if c.name == "big")
    assert flash.color == big.color
    # the ring is drawn over the canvas where cell 7 is
    ring, line = flash._ring, flash._line
    assert ring is not None and line is not None
    assert not ring.isHidden() and not line.isHidden() and line.text == flash.text
    canvas = ring.parentWidget()
    # each is as small as what it draws: Qt composites only what changed with the GL
    # canvas (a canvas-sized overlay cost ~15 ms a key press on llvmpipe)
    area = ring.width() * ring.height() + line.width() * line.height()
    assert area < canvas.width() * canvas.height() / 4
    assert canvas.height() / 2 < line.y() and line.geometry().bottom() < canvas.height()
    cam = camera(viewer)
    cy, cx = _center(labels.data, 7)
    x, y, r = flash.ring
    assert x == pytest.approx((cx - cam.center[-1]) * cam.zoom + canvas.width() / 2)
    assert y == pytest.approx((cy - cam.center[-2]) * cam.zoom + canvas.height() / 2)
    assert r > 6
    assert ring.geometry().contains(int(x), int(y))
    grab = ring.grab().toImage()  # it paints: the ring's colour is on it
    gx, gy = x - ring.x(), y - ring.y()
    assert (
        QColor(grab.pixel(int(gx + r), int(gy))).name() != "#000000"
        or QColor(grab.pixel(int(gx - r), int(gy))).name() != "#000000"
    )
    # drawn by Qt, not by a napari layer (a first Points layer stalls napari 0.3-2 s on llvmpipe)
    assert [type(lay).__name__ for lay in viewer.layers][n_layers:] == ["Labels"]  # the phenotype view only
    _point_at(viewer, labels, 8)
    _press(viewer, qtbot, "2")
    assert flash.text == "cell 8 → big: 2 big annotated"
    _press(viewer, qtbot, "0")
    assert flash.text == "cell 8 cleared" and flash.color == "#B0B0B0"
    cam.zoom = cam.zoom * 1.5  # the camera moved: the ring would point elsewhere
    assert flash.ring is None and ring.isHidden() and not line.isHidden()
    qtbot.waitUntil(lambda: not flash.showing and line.isHidden(), timeout=FLASH_MS * 5)


def test_napari_status_bar_does_not_advertise_number_keys_we_took(setup):
    viewer, labels, widget, kinds, tmp_path = setup
    for mode in ("paint", "pan_zoom", "fill"):
        labels.mode = mode  # napari writes its help again on every mode change
        assert "label eraser" not in viewer.help and "use <1> for" not in labels.help
        assert viewer.help.startswith("use <1>-<9> to give the cell under the mouse a class")
        assert help_without_keys(labels.help, {"1"}) == labels.help  # stable
    widget.close_session()
    labels.mode = "paint"
    assert "label eraser" in viewer.help  # napari's own keys are back


@pytest.fixture
def cropped(make_napari_viewer, qtbot, tmp_path):
    """The grid with its top rows and left columns cut: the outer cells touch the border."""
    yield from _open(make_napari_viewer, qtbot, tmp_path, crop=22)


def test_x_excludes_a_proposed_cell_and_proposals_skip_border_cells(cropped, qtbot):
    """Issue 13: proposals skip cells cut by the image border, and X excludes a cell
    (debris, a half cell) from proposals and training; X again takes it back in."""
    viewer, labels, widget, kinds, _ = cropped
    key = widget.key_of(labels)
    table = widget.session.images[key].table
    border = set(border_labels(table, labels.data.shape).tolist())
    assert len(border) >= 5  # cells of the cut row and column
    given = [lab for lab in table["label"] if lab not in border][:4]
    for lab in given:
        widget.annotate(labels, lab, kinds[lab])
    _wait_trained(widget, qtbot)
    queue = widget.proposals(30)
    inner = {p.label for p in queue} - border
    assert inner and not ({p.label for p in queue[: len(inner)]} & border)  # whole cells first
    viewer.cursor.position = (-100, -100)
    _press(viewer, qtbot, "n")
    _layer, proposed = widget.current
    assert proposed not in border
    _press(viewer, qtbot, "x")  # the key goes to the proposed cell
    assert widget.store.is_excluded(key, proposed)
    row = labels.features.set_index("label").loc[proposed]
    assert bool(row["pheno_excluded"]) and pd.isna(row["pheno_class"])  # no phenotype for debris
    assert widget.flash.text.startswith(f"cell {proposed} excluded")
    assert proposed not in {p.label for p in widget.proposals(len(table))}
    # the answer moved on, as after a class key
    qtbot.waitUntil(lambda: widget.current is not None and widget.current[1] != proposed, timeout=20000)
    # X again on the cell takes it back in; Ctrl+Z undoes
    _point_at(viewer, labels, proposed)
    _press(viewer, qtbot, "x")
    assert not widget.store.is_excluded(key, proposed)
    _press(viewer, qtbot, "Control-Z")
    assert widget.store.is_excluded(key, proposed)
    saved = json.loads((widget.store.path).read_text())
    assert {"image": key, "label": proposed, "class": "(excluded)"} in saved["annotations"]


def test_the_loop_runs_on_a_cellprofiler_table(make_napari_viewer, qtbot, tmp_path):
    """Cells measured with the CellProfiler set: keys annotate, the retrain predicts every
    cell from CellProfiler's columns, never from positions or neighbour object numbers."""
    from functools import partial

    from napari_phenotyper.core.cellprofiler import compute_cellprofiler_features

    measure = partial(compute_cellprofiler_features, positions=True)
    opened = _open(make_napari_viewer, qtbot, tmp_path, measure=measure)
    viewer, lab_layer, widget, kinds, _ = next(opened)
    try:
        for lab in (1, 2, 3, 4, 10, 11):
            _point_at(viewer, lab_layer, lab)
            _press(viewer, qtbot, "1" if kinds[lab] == "small" else "2")
        _wait_trained(widget, qtbot)
        qtbot.waitUntil(lambda: widget.result is not None, timeout=20000)
        table = lab_layer.features.set_index("label")
        truth = pd.Series(kinds)
        assert (table["pheno_class"].astype(str).loc[truth.index] == truth).mean() >= 0.95
        used = widget.result.feature_names
        assert "AreaShape_Area" in used and any(c.startswith("Texture_") for c in used)
        assert not any(
            c.startswith(("Location_", "AreaShape_Center")) or "ClosestObjectNumber" in c for c in used
        )
        assert "centroid_y" not in used
    finally:
        next(opened, None)  # closes the session


def test_a_new_session_trains_the_self_trained_learner_and_trees_follow_the_forest(setup, qtbot):
    viewer, layer, widget, kinds, _ = setup
    assert widget.kind.currentData() == "self_trained" and not widget.trees.isEnabled()
    widget.auto.setChecked(False)
    for cell in (1, 2, 3, 4):
        widget.annotate(layer, cell, kinds[cell])
    widget.retrain()
    qtbot.waitUntil(lambda: widget.result is not None and widget._worker is None, timeout=30000)
    assert widget.result.model.settings.kind == "self_trained"
    table = widget.session.pheno_frame(widget.key_of(layer))
    truth = np.array([kinds[int(lab)] for lab in widget.session.images[widget.key_of(layer)].table["label"]])
    assert (table["pheno_class"].astype(str).to_numpy() == truth).mean() >= 0.9  # from 4 answers
    widget.kind.setCurrentIndex(widget.kind.findData("random_forest"))
    assert widget.session.loop.classifier == "random_forest" and widget.trees.isEnabled()
