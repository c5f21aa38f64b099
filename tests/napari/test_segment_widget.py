"""Click through "Segment & measure" as a biologist would, with real threads."""

import sys

import numpy as np
import pytest

from napari_phenotyper._napari.layers import META_KEY, find_result_layer
from napari_phenotyper._napari.sample_data import nuclei_sample
from napari_phenotyper._napari.segment_widget import SegmentWidget


@pytest.fixture
def viewer_with_sample(make_napari_viewer):
    viewer = make_napari_viewer()
    for data, kwargs, kind in nuclei_sample():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    return viewer


def _run_and_wait(qtbot, widget, timeout=60_000):
    widget.run()
    worker = widget._worker
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=timeout):
        pass
    qtbot.waitUntil(lambda: widget._worker is None, timeout=5000)


def test_widget_docks_from_plugin_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    dw, widget = viewer.window.add_plugin_dock_widget("napari-phenotyper", "Segment & measure")
    assert isinstance(widget, SegmentWidget)


def test_segment_sample_in_background(viewer_with_sample, qtbot):
    viewer = viewer_with_sample
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    image = viewer.layers["nuclei"]
    widget.image.value = image
    widget.auto_diameter.value = False
    assert widget.form.editors["diameter"].enabled
    widget.form.set_value("diameter", 16.0)
    widget.groups["texture"].value = False  # keep it quick
    progress = []
    widget.progress.changed.connect(progress.append)
    _run_and_wait(qtbot, widget)

    layer = find_result_layer(viewer, image)
    assert layer is not None and layer.data.dtype == np.uint32
    n = len(np.unique(layer.data)) - 1
    assert 100 <= n <= 220  # 125+ annotated nuclei in this image
    df = layer.features
    assert list(df["label"]) == sorted(np.unique(layer.data)[1:].tolist())
    assert (df["index"] == df["label"]).all()
    assert (
        "area" in df
        and "mean_intensity_image" in df
        and not any(c.startswith(("haralick", "glcm")) for c in df)
    )
    meta = layer.metadata[META_KEY]
    assert meta["backend"] == "classical" and meta["params"]["diameter"] == 16.0
    assert meta["source_layer"] == "nuclei" and meta["device"] == "CPU"
    assert progress and max(progress) == 1000
    assert "cells" in widget.status.value and "CPU" in widget.status.value

    # Re-run with other parameters: the same layer is updated in place.
    widget.form.set_value("diameter", 30.0)
    n_layers = len(viewer.layers)
    _run_and_wait(qtbot, widget)
    assert len(viewer.layers) == n_layers
    assert find_result_layer(viewer, image) is layer
    assert layer.metadata[META_KEY]["params"]["diameter"] == 30.0
    assert len(layer.features) == len(np.unique(layer.data)) - 1


def test_cancel_keeps_previous_result(viewer_with_sample, qtbot):
    viewer = viewer_with_sample
    image = viewer.layers["nuclei"]
    # a 40-plane stack so the job is long enough to cancel half-way
    stack = np.stack([image.data] * 40)
    stack_layer = viewer.add_image(stack, name="stack")
    widget = SegmentWidget(viewer)
    widget.image.value = stack_layer
    widget.groups["texture"].value = False
    # first a quick complete run on a 2-plane stack to have a previous result
    short = viewer.add_image(stack[:2], name="short")
    widget.image.value = short
    _run_and_wait(qtbot, widget)
    previous = find_result_layer(viewer, short)
    before = previous.data.copy()
    before_features = previous.features.copy()

    widget.image.value = stack_layer
    widget.run()
    worker = widget._worker
    qtbot.waitUntil(lambda: widget.progress.value > 0, timeout=30_000)
    with qtbot.waitSignal(worker.aborted, timeout=30_000):
        widget.cancel()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=5000)
    assert find_result_layer(viewer, stack_layer) is None  # nothing half-done was added
    assert np.array_equal(previous.data, before)
    assert previous.features.equals(before_features)
    assert "Cancelled" in widget.status.value
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_error_reaches_the_user(make_napari_viewer, qtbot, monkeypatch):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64), np.float32), name="blank")
    widget = SegmentWidget(viewer)
    shown = []
    monkeypatch.setattr("napari_phenotyper._napari.segment_widget.show_error", shown.append)
    widget.groups["shape"].value = widget.groups["intensity"].value = False
    widget.groups["texture"].value = widget.groups["neighbors"].value = False
    widget.run()  # no feature group: refused before any thread starts
    assert widget._worker is None and "at least one feature group" in shown[-1]

    widget.groups["shape"].value = True
    viewer.layers.clear()
    widget.run()
    assert "Open or select an image" in shown[-1]


def test_rgb_channel_choice(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    rgb = np.zeros((96, 96, 3), np.uint8)
    rgb[20:40, 20:40, 0] = 255  # red square
    rgb[60:80, 60:80, 2] = 255  # blue square
    layer = viewer.add_image(rgb, name="rgb")
    assert layer.rgb
    widget = SegmentWidget(viewer)
    widget.image.value = layer
    assert widget.channel.enabled
    widget.channel.value = 0
    widget.auto_diameter.value = False
    widget.form.set_value("diameter", 20.0)
    widget.groups["texture"].value = False
    _run_and_wait(qtbot, widget)
    labels = find_result_layer(viewer, layer)
    assert labels.data.shape == (96, 96)
    assert len(np.unique(labels.data)) - 1 == 1 and labels.data[30, 30] > 0 and labels.data[70, 70] == 0


def test_rgb_channel_choice_survives_docking_new_layers_and_runs(make_napari_viewer, qtbot):
    """Issue 13 item 6: docked from the menu the RGB channels were missing; after Run the
    choice fell back to luminance and the next run silently used it."""
    viewer = make_napari_viewer()
    rgb = np.zeros((96, 96, 3), np.uint8)
    rgb[20:40, 20:40, 0] = 255  # red square
    rgb[60:80, 60:80, 2] = 255  # blue square
    layer = viewer.add_image(rgb, name="rgb")
    _dw, widget = viewer.window.add_plugin_dock_widget("napari-phenotyper", "Segment & measure")
    assert widget.image.value is layer and widget.channel.enabled
    assert list(widget.channel.choices) == [None, 0, 1, 2]
    widget.channel.value = 2  # blue
    widget.auto_diameter.value = False
    widget.form.set_value("diameter", 20.0)
    widget.groups["texture"].value = False
    _run_and_wait(qtbot, widget)
    assert widget.channel.value == 2  # the result layer's arrival did not reset it
    labels = find_result_layer(viewer, layer)
    assert labels.data[70, 70] > 0 and labels.data[30, 30] == 0
    viewer.add_image(rgb[..., 0], name="grey")  # another layer arrives: still blue
    assert widget.channel.value == 2
    labels.data = np.zeros_like(labels.data)
    _run_and_wait(qtbot, widget)
    labels = find_result_layer(viewer, layer)
    assert labels.data[70, 70] > 0 and labels.data[30, 30] == 0  # the second run used blue too

    other = make_napari_viewer()  # dock first, then open the RGB image
    _dw, widget2 = other.window.add_plugin_dock_widget("napari-phenotyper", "Segment & measure")
    assert not widget2.channel.enabled
    other.add_image(rgb, name="rgb")
    assert widget2.channel.enabled and list(widget2.channel.choices) == [None, 0, 1, 2]


def test_auto_diameter_is_estimated_in_the_worker_and_shown(viewer_with_sample, qtbot):
    viewer = viewer_with_sample
    widget = SegmentWidget(viewer)
    widget.image.value = viewer.layers["nuclei"]
    assert widget.auto_diameter.value and not widget.form.editors["diameter"].enabled
    widget.groups["texture"].value = False
    _run_and_wait(qtbot, widget)
    used = find_result_layer(viewer, viewer.layers["nuclei"]).metadata[META_KEY]["params"]["diameter"]
    assert 15 < used < 30 and used != 30.0  # estimated, not the default
    assert widget.form.editors["diameter"].value == pytest.approx(used, abs=0.01)  # shown to 2 decimals


def test_estimate_button_fills_the_diameter(viewer_with_sample, qtbot):
    widget = SegmentWidget(viewer_with_sample)
    widget.image.value = viewer_with_sample.layers["nuclei"]
    widget.auto_diameter.value = False
    widget.estimate_diameter()
    with qtbot.waitSignal(widget._estimate_worker.finished, timeout=30_000):
        pass
    qtbot.waitUntil(lambda: "Estimated diameter" in widget.status.value, timeout=5000)
    assert 15 < widget.form.editors["diameter"].value < 30


# --------------------------------------------------------------------------- forms and models


def test_optional_numbers_with_a_positive_minimum_can_be_auto(make_napari_viewer):
    """``float | None`` with ``min > 0`` (Cellpose's diameter, anisotropy) used to crash the form."""
    import dataclasses

    from napari_phenotyper._napari.params_form import ParamsForm
    from napari_phenotyper.core.segment.cellpose import CellposeParams

    @dataclasses.dataclass(frozen=True)
    class P:
        scale: float | None = dataclasses.field(default=None, metadata={"min": 0.5, "max": 4.0})
        count: int | None = dataclasses.field(default=None, metadata={"min": 3, "max": 9})
        gain: float | None = dataclasses.field(default=2.0, metadata={"min": 1.0, "max": 3.0})
        odd: float = dataclasses.field(default=0.0, metadata={"min": 1.0, "max": 3.0})  # outside its range

    form = ParamsForm(P)
    assert form.params() == P()
    scale = form.editors["scale"]
    assert scale.auto.value and scale.editor.value == 0.5 and not scale.editor.enabled
    scale.auto.value = False
    assert form.params().scale == 0.5
    form.set_value("scale", 2.5)
    form.set_value("count", 4)
    assert form.params() == P(scale=2.5, count=4)
    form.set_value("scale", None)
    assert form.editors["scale"].auto.value and form.params().scale is None
    assert form.editors["odd"].value == 0.0  # the range widens; the default is kept

    cp = ParamsForm(CellposeParams)
    assert cp.params() == CellposeParams()
    cp.set_value("diameter", 17.0)
    assert cp.params().diameter == 17.0
    cp.set_value("diameter", None)
    assert cp.params().diameter is None


def _fake_stardist_model(folder, finetuned=False):
    import json

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"n_dim": 2, "axes": "YXC", "n_channel_in": 1}))
    (folder / "weights_best.h5").write_bytes(b"not really weights")
    if finetuned:
        (folder / "model.json").write_text(
            json.dumps({"backend": "stardist", "base_model": "2D_versatile_fluo", "created": "2026-01-02"})
        )
    return folder


@pytest.fixture
def models_folder(tmp_path, monkeypatch):
    """An empty models folder and Keras cache; offline."""
    models = tmp_path / "models"
    monkeypatch.setenv("NAPARI_PHENOTYPER_MODELS", str(models))
    monkeypatch.setenv("NAPARI_PHENOTYPER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path / "cellpose"))
    monkeypatch.setenv("NAPARI_PHENOTYPER_OFFLINE", "1")
    return models


def test_model_chooser_lists_models_and_browses(make_napari_viewer, models_folder, tmp_path, monkeypatch):
    from napari_phenotyper._napari.params_form import SUFFIX_ROLE, ModelChooser

    _fake_stardist_model(models_folder / "stardist" / "my_nuclei")
    _fake_stardist_model(models_folder / "stardist" / "tuned", finetuned=True)
    chooser = ModelChooser("stardist", "2D_versatile_fluo")
    names = chooser.names()
    assert names[0] == "2D_versatile_fluo" and names[-2:] == ["my_nuclei", "tuned"]
    assert chooser.value == "2D_versatile_fluo"

    def suffix(name):
        return chooser.combo.itemData(chooser.combo.findText(name), SUFFIX_ROLE)

    assert "not downloaded" in suffix("2D_versatile_fluo")
    assert suffix("my_nuclei") == "local, on this computer"
    assert suffix("tuned") == "fine-tuned, on this computer"
    assert "not downloaded" in chooser.detail.value

    chooser.value = "tuned"
    assert chooser.value == "tuned" and chooser.detail.value == "fine-tuned, on this computer"
    assert "fine-tuned from 2D_versatile_fluo" in chooser.detail.tooltip
    # any name or path can be typed; napari's reset_choices (layers changed) keeps it
    elsewhere = _fake_stardist_model(tmp_path / "elsewhere" / "other")
    chooser.combo.setEditText(str(elsewhere))
    chooser.reset_choices()
    assert chooser.value == str(elsewhere) and "on disk" in chooser.detail.value
    # Browse…: a folder picked in the dialog (the class is patched: magicgui containers
    # treat deleting an instance attribute as removing a widget); a cancelled dialog changes nothing
    monkeypatch.setattr(ModelChooser, "_ask_path", lambda self: str(models_folder / "stardist" / "my_nuclei"))
    chooser.browse.clicked.emit()
    assert chooser.value == str(models_folder / "stardist" / "my_nuclei")
    monkeypatch.setattr(ModelChooser, "_ask_path", lambda self: "")
    chooser.browse.clicked.emit()
    assert chooser.value == str(models_folder / "stardist" / "my_nuclei")
    # a model saved meanwhile shows up on refresh
    _fake_stardist_model(models_folder / "stardist" / "fresh", finetuned=True)
    chooser.refresh(select="fresh")
    assert "fresh" in chooser.names() and chooser.value == "fresh"

    # Cellpose: the field may be empty (the installed cellpose's default model)
    cp = ModelChooser("cellpose", None, optional=True, default_model="cyto3")
    assert cp.value is None and cp.combo.lineEdit().placeholderText() == "default (cyto3)"
    if "cyto3" in cp.names():  # cellpose 3 installed
        assert cp.detail.value == "the default model: built-in, not downloaded (needs internet once)"
    monkeypatch.setattr(ModelChooser, "_ask_path", lambda self: str(tmp_path / "tuned_cp" / "model.json"))
    cp.browse.clicked.emit()
    assert cp.value == str(tmp_path / "tuned_cp")  # a fine-tuned model's folder, not its model.json


def test_widget_model_list_follows_the_segmenter(make_napari_viewer, models_folder):
    from napari_phenotyper.core.segment.registry import available

    if "stardist" not in available():
        pytest.skip("stardist is not installed")
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    assert widget.model_chooser is None  # classical: no models
    widget.refresh_models("anything")  # nothing to refresh: no error
    assert widget.status.value.startswith("Ready") and "CPU" in widget.status.value

    widget.segmenter.value = "stardist"
    chooser = widget.model_chooser
    assert chooser is not None and widget.form.editors["model"] is chooser
    assert "my_nuclei" not in chooser.names()
    assert "auto" in widget.device_text() and "runs on auto" in widget.status.value  # nothing loaded here
    _fake_stardist_model(models_folder / "stardist" / "my_nuclei", finetuned=True)
    widget.refresh_models(select="my_nuclei")  # e.g. called by the fine-tuning widget
    assert widget.form.params().model == "my_nuclei"

    _fake_stardist_model(models_folder / "stardist" / "later")
    widget.segmenter.value = "classical"
    assert widget.model_chooser is None
    widget.segmenter.value = "stardist"  # the list is read again
    assert "later" in widget.model_chooser.names()
    assert widget.form.params().model == "2D_versatile_fluo"  # the parameter's default


def test_status_shows_the_device_the_engine_reported(make_napari_viewer, monkeypatch):
    """After a deep-learning run the status line names the model and the engine's device and GPU memory."""
    import types

    import pandas as pd

    from napari_phenotyper.core.pipeline import SegmentResult, device_memory
    from napari_phenotyper.core.segment.registry import available

    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((32, 32), np.float32), name="img")
    widget = SegmentWidget(viewer)
    labels = np.zeros((32, 32), np.uint32)
    labels[4:9, 4:9] = 1
    prov = {
        "backend": "stardist",
        "segmenter": "StarDist (deep learning)",
        "params": {"model": "my_nuclei"},
        "device": "GPU (NVIDIA H100, TensorFlow)",
        "device_memory": "3.1 GiB GPU memory in use (peak 4.0 GiB)",
        "model_info": {"name": "my_nuclei", "kind": "finetuned"},
        "segment_seconds": 0.5,
        "measure_seconds": 0.1,
    }
    widget._on_returned(image, SegmentResult(labels, pd.DataFrame({"label": [1]}), prov))
    status = widget.status.value
    assert "1 cells" in status and "(my_nuclei)" in status
    assert "GPU (NVIDIA H100, TensorFlow), 3.1 GiB GPU memory in use" in status
    if "stardist" in available():
        widget.segmenter.value = "stardist"
        assert widget.device_text().startswith("GPU (NVIDIA H100")  # remembered for this backend

    # what the engine process reports: asked of an already-loaded library only (never imported)
    gib = 1024**3
    cuda = types.SimpleNamespace(
        is_available=lambda: True, is_initialized=lambda: True, mem_get_info=lambda: (6 * gib, 80 * gib)
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    assert device_memory() == "6.0 of 80.0 GiB GPU memory free"
    cuda.is_initialized = lambda: False  # CUDA never used in this process: nothing to say
    assert device_memory() is None


def test_measured_layers_get_short_stable_channel_names(make_napari_viewer, qtbot):
    """Columns are named by channel, not by layer, so frame 2's table has frame 1's columns."""
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    tables = []
    for frame in (1, 2):
        for lyr in list(viewer.layers):
            viewer.layers.remove(lyr)
        rng = np.random.default_rng(frame)
        nuclei = rng.normal(10, 2, (96, 96)).astype(np.float32)
        nuclei[20:40, 20:40] += 200
        nuclei[55:80, 50:75] += 200
        tubulin = rng.normal(30, 3, (96, 96)).astype(np.float32)
        seg = viewer.add_image(nuclei, name=f"dapi_P0037_T0000{frame}_Z1")
        other = viewer.add_image(tubulin, name=f"tubulin_P0037_T0000{frame}_Cgfp_Z1_S1")
        widget.image.value = seg
        widget.measure_in.value = [seg, other]
        assert [w.value for w in widget.channel_names] == ["image", "ch1"]
        assert not widget.channel_names.native.isHidden()
        widget.auto_diameter.value = False
        widget.form.set_value("diameter", 20.0)
        widget.groups["texture"].value = False
        _run_and_wait(qtbot, widget)
        layer = find_result_layer(viewer, seg)
        tables.append(layer.features)
        assert layer.metadata[META_KEY]["channels"] == {"image": seg.name, "ch1": other.name}
    assert list(tables[0].columns) == list(tables[1].columns)
    assert "mean_intensity_ch1" in tables[0] and not any("tubulin" in c for c in tables[0].columns)
    # a typed name is used and kept for that layer; an empty or repeated one is refused
    widget.channel_names[1].value = "GFP tubulin"
    widget._sync_channel_names()
    assert widget.channel_names[1].value == "GFP_tubulin"  # shown as the columns will name it
    assert [n for n, _ in widget.measured_channels()] == ["image", "GFP_tubulin"]
    widget.channel_names[1].value = "image"
    with pytest.raises(ValueError, match="both named 'image'"):
        widget.request()
    widget.channel_names[1].value = "  "
    with pytest.raises(ValueError, match="channel name"):
        widget.request()


def test_cellprofiler_feature_set_and_zernike_from_the_dock(viewer_with_sample, qtbot):
    """Feature set "CellProfiler 4" and the Zernike box: the layer's table has CellProfiler's
    columns (plus the positions the viewer needs) and says how it was measured; the Batch
    dock copies the choice into its pipeline."""
    from napari_phenotyper._napari.batch_widget import BatchWidget

    viewer = viewer_with_sample
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image.value = viewer.layers["nuclei"]
    widget.auto_diameter.value = False
    widget.form.set_value("diameter", 16.0)
    assert widget.feature_set.value == "default" and not widget.groups["zernike"].value  # opt-in
    widget.feature_set.value = "cellprofiler"
    widget.groups["zernike"].value = True
    widget.groups["texture"].value = False
    _run_and_wait(qtbot, widget)
    layer = find_result_layer(viewer, viewer.layers["nuclei"])
    df = layer.features
    assert {
        "AreaShape_Area",
        "AreaShape_Zernike_9_9",
        "Intensity_MedianIntensity_image",
        "Neighbors_PercentTouching_5",
    } <= set(df)
    assert {"centroid_y", "bbox_max_x", "index"} <= set(df) and not any(c.startswith("Texture_") for c in df)
    assert layer.metadata[META_KEY]["measure"]["feature_set"] == "cellprofiler"
    assert "cells" in widget.status.value

    batch = BatchWidget(viewer)
    viewer.window.add_dock_widget(batch)
    assert batch.copy_from_segment_widget()
    spec = batch.pipeline_spec()
    assert spec.feature_set == "cellprofiler" and "zernike" in spec.feature_groups
    batch.set_pipeline(spec.__class__(feature_groups=("shape",)))
    assert batch.feature_set.value == "default"
