"""The "Batch" dock widget: build a pipeline, run it in a real thread, cancel, see profiles."""

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
from skimage.draw import disk

from napari_phenotyper._napari.batch_widget import BatchWidget, ProfileTable
from napari_phenotyper._napari.segment_widget import SegmentWidget
from napari_phenotyper.core.pipeline_spec import PipelineSpec
from napari_phenotyper.io.pipeline_file import load_pipeline, save_pipeline


def _images(folder, n, size=96):
    folder.mkdir()
    for i in range(n):
        img = np.full((size, size), 10, np.uint16)
        for c in [(25, 25), (70, 60), (30, 70)][: i % 3 + 1]:
            img[disk(c, 9, shape=img.shape)] = 1000
        tifffile.imwrite(folder / f"P1_A{i % 3 + 1:02d}_s{i}.tif", img)
    return folder


def _fill(widget, folder, out):
    widget.auto_diameter.value = False
    widget.form.set_value("diameter", 18.0)
    widget.groups["texture"].value = widget.groups["neighbors"].value = False
    widget.inputs.value = str(folder)
    widget.out_dir.value = out
    widget.format.value = "csv"


def test_run_shows_progress_and_opens_the_profiles(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    widget = BatchWidget(viewer)
    viewer.window.add_dock_widget(widget)
    folder = _images(tmp_path / "in", 3)
    out = tmp_path / "out"
    out.mkdir()
    _fill(widget, folder, out)
    widget.layout_regex.value = r"(?P<plate>P\d)_(?P<well>[A-H]\d+)_s(?P<site>\d+)"
    progress = []
    widget.progress.changed.connect(progress.append)
    statuses = []

    shown = widget._progress_latest.fn  # what the dock shows (at most 10 times a second)
    widget._progress_latest.fn = lambda p: (shown(p), statuses.append(widget.status.value))
    widget.run()
    worker = widget._worker
    assert worker is not None and not widget.run_button.enabled and widget.cancel_button.enabled
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: widget._worker is None, timeout=5000)

    assert widget.result is not None and widget.result.counts["processed"] == 3
    assert progress and max(progress) == 1000
    assert any("images/s" in s for s in statuses), statuses
    assert "Done: 3 processed" in widget.status.value
    table = widget.profile_table
    assert isinstance(table, ProfileTable) and "Batch profiles" in viewer.window.dock_widgets
    assert table.frame["image"].tolist() == ["P1_A01_s0", "P1_A02_s1", "P1_A03_s2"]
    assert table.frame["n_cells"].tolist() == [1, 2, 3]
    assert table.view.model().rowCount() == 3
    assert (out / "cells.csv").exists() and (out / "well_profiles.csv").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run"]["command"] == ["napari", "Batch widget"]

    # a second run resumes: nothing to redo, the table is refreshed
    widget.run()
    with qtbot.waitSignal(widget._worker.finished, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: widget._worker is None, timeout=5000)
    assert widget.result.counts["skipped"] == 3 and widget.profile_table is not table


def test_cancel_stops_and_keeps_finished_images(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    widget = BatchWidget(viewer)
    folder = _images(tmp_path / "in", 12, size=256)
    out = tmp_path / "out"
    out.mkdir()
    _fill(widget, folder, out)
    widget.run()
    worker = widget._worker
    qtbot.waitUntil(lambda: widget.progress.value > 0, timeout=30_000)
    with qtbot.waitSignal(worker.finished, timeout=30_000):
        widget.cancel()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=5000)
    assert "Cancelled" in widget.status.value
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    assert widget.result is None and widget.profile_table is None
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "cancelled"
    assert manifest["counts"]["processed"] < 12
    assert not (out / "cells.csv").exists()


def test_pipeline_from_segment_widget_save_and_load(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    widget = BatchWidget(viewer)
    assert not widget.copy_from_segment_widget()  # none open: says so, changes nothing

    seg = SegmentWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment & measure")
    seg.auto_diameter.value = False
    seg.form.set_value("diameter", 23.0)
    seg.form.set_value("threshold_method", "li")
    seg.groups["texture"].value = False
    assert widget.copy_from_segment_widget()
    spec = widget.pipeline_spec()
    assert spec.params["diameter"] == 23.0 and spec.params["threshold_method"] == "li"
    assert spec.feature_groups == ("shape", "intensity", "neighbors") and not spec.auto_diameter

    path = widget.save_pipeline(tmp_path / "p.json")
    assert path is not None and load_pipeline(path) == spec
    assert widget.pipeline_file.value == path

    other = PipelineSpec(params={"diameter": 12.0}, auto_diameter=True, channel=1, feature_groups=("shape",))
    save_pipeline(other, tmp_path / "q.yaml")
    widget.load_pipeline(tmp_path / "q.yaml")
    assert widget.form.values()["diameter"] == 12.0 and widget.auto_diameter.value
    assert widget.channel.value == 1
    assert [g for g, cb in widget.groups.items() if cb.value] == ["shape"]
    shown, saved = widget.pipeline_spec(), load_pipeline(tmp_path / "q.yaml")
    assert shown.segmenter_params() == saved.segmenter_params()
    assert (shown.auto_diameter, shown.channel, shown.feature_groups) == (True, 1, ("shape",))


def test_bad_settings_are_refused_before_a_thread_starts(make_napari_viewer, tmp_path, monkeypatch):
    viewer = make_napari_viewer()
    widget = BatchWidget(viewer)
    shown = []
    monkeypatch.setattr("napari_phenotyper._napari.batch_widget.show_error", shown.append)
    widget.run()
    assert widget._worker is None and "Give the images" in shown[-1]
    widget.inputs.value = str(tmp_path)
    widget.run()
    assert "Choose an output folder" in shown[-1]
    for cb in widget.groups.values():
        cb.value = False
    widget.run()
    assert "at least one feature group" in shown[-1]
    (tmp_path / "bad.json").write_text("{}")
    assert widget.load_pipeline(tmp_path / "bad.json") is None
    assert "not a valid napari-phenotyper pipeline" in shown[-1]


@pytest.mark.parametrize("frame", [pd.DataFrame({"image": ["a"], "n_cells": [3]})])
def test_profile_table_view(qtbot, frame):
    view = ProfileTable(frame, "t")
    qtbot.addWidget(view)
    assert view.view.model().rowCount() == 1 and view.info.text() == "t"


def test_progress_reaches_the_dock_at_most_ten_times_a_second_and_the_last_always(qtbot):
    from napari_phenotyper._napari.workers import Latest

    got = []
    latest = Latest(got.append, 100)
    for i in range(500):  # a burst, as a batch of small images yields
        latest(i)
    assert got == [0]  # the first at once, the rest waits
    qtbot.waitUntil(lambda: got[-1] == 499, timeout=2000)
    assert got == [0, 499]  # only the latest of the burst, after the interval
    latest(500)
    latest.flush()  # e.g. the result arrives: what waits is shown first
    assert got[-1] == 500
    qtbot.wait(250)
    assert got == [0, 499, 500]  # nothing delivered twice


def test_batch_takes_the_classifier_taught_in_the_phenotypes_dock(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    """Teach in the Phenotypes dock, then run the plate with it: *From Phenotypes* saves the
    session's classifier under NAPARI_PHENOTYPER_HOME and chooses it."""
    home = tmp_path / "home"  # not the session's fresh home: the tutorial test finds that empty
    monkeypatch.setenv("NAPARI_PHENOTYPER_HOME", str(home))
    from cellgrid import grid_cells
    from napari_phenotyper._napari.layers import upsert_labels
    from napari_phenotyper._napari.phenotype_widget import PhenotypeWidget
    from napari_phenotyper.core.features import compute_features
    from napari_phenotyper.io.classifier_io import load_classifier

    viewer = make_napari_viewer()
    batch = BatchWidget(viewer)
    viewer.window.add_dock_widget(batch)
    batch.from_phenotypes.changed.emit(True)  # no Phenotypes dock yet: says what to do
    assert "Open the Phenotypes dock" in batch.status.value and batch.classifier.value is None
    image, labels, kinds = grid_cells(4, 4, 30, 0)
    img = viewer.add_image(image, name="cells")
    lab = upsert_labels(viewer, img, labels, compute_features(labels, {"image": image}), {"backend": "test"})
    pheno = PhenotypeWidget(viewer, session_path=tmp_path / "session.json")
    pheno.auto.setChecked(False)
    viewer.window.add_dock_widget(pheno)
    pheno.add_class("small")
    pheno.add_class("big")
    batch.from_phenotypes.changed.emit(True)
    assert "No classifier to use yet" in batch.status.value  # nothing annotated
    for cell in (1, 2, 3, 4):
        pheno.annotate(lab, cell, kinds[cell])
    batch.from_phenotypes.changed.emit(True)
    chosen = batch.classifier.value
    assert chosen is not None and chosen.is_file()
    assert chosen.parent == home / "classifiers"
    loaded = load_classifier(chosen)
    assert sorted(loaded.classes) == ["big", "small"] and len(loaded.y) == 4
    pheno.close_session()


def test_batch_dock_segments_an_ome_zarr_block_by_block(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """A folder holding an OME-Zarr store: the dock runs it block-wise (here above 300 x 300 px,
    in 256 px blocks) and writes its labels as an OME-Zarr label image."""
    from napari_phenotyper.core import blockwise
    from napari_phenotyper.core.synthetic import NucleiField
    from napari_phenotyper.io.ome_zarr import open_ome_zarr, write_ome_zarr

    monkeypatch.setattr(blockwise, "BLOCKWISE_ABOVE", 300 * 300)
    monkeypatch.setattr(blockwise, "DEFAULT_BLOCK_SIZE", 256)
    folder = tmp_path / "plate"
    folder.mkdir()
    field = NucleiField((600, 600), seed=2)
    write_ome_zarr(folder / "P1_A01_s1.ome.zarr", (600, 600), np.uint16, field.render, chunks=128)
    viewer = make_napari_viewer()
    widget = BatchWidget(viewer)
    viewer.window.add_dock_widget(widget)
    out = tmp_path / "out"
    out.mkdir()
    _fill(widget, folder, out)
    widget.form.set_value("diameter", float(field.diameter))
    widget.write_labels.value = True
    widget.run()
    with qtbot.waitSignal(widget._worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: widget._worker is None, timeout=5000)
    assert widget.result.counts["processed"] == 1, widget.status.value
    record = json.loads((out / "parts" / "P1_A01_s1.json").read_text())
    assert record["blockwise"]["n_blocks"] == 9
    labels = np.asarray(open_ome_zarr(out / "labels" / "P1_A01_s1_labels.zarr").data)
    assert labels.max() == record["n_cells"] > 200
    cells = pd.read_csv(out / "cells.csv")
    assert len(cells) == record["n_cells"] and set(cells["image"]) == {"P1_A01_s1"}
