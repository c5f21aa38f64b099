"""Click through "Segment & measure" as a biologist would, with real threads."""

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
    assert "area" in df and "mean_intensity_image" in df and not any(c.startswith("haralick") for c in df)
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
