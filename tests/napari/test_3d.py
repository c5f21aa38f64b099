"""3-D labels in the docks: the Segment dock's 2D/3D switch on the 3-D sample (a real
thread), the Cell table's fly-to (through z), the Phenotypes dock and the Gallery
(a cell's middle plane)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_phenotyper._napari.gallery_widget import GalleryWidget
from napari_phenotyper._napari.layers import META_KEY, camera, find_result_layer
from napari_phenotyper._napari.phenotype_widget import PhenotypeWidget
from napari_phenotyper._napari.sample_data import nuclei3d_sample
from napari_phenotyper._napari.segment_widget import SegmentWidget
from napari_phenotyper._napari.table_widget import FeatureTableWidget
from napari_phenotyper.core.evaluate import average_precision

pytest.importorskip("stardist.data")


def _shown(w):
    """Not hidden (the dock itself need not be on screen)."""
    return not w.native.isHidden()


def _run_and_wait(qtbot, widget, timeout=120_000):
    widget.run()
    worker = widget._worker
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=timeout):
        pass
    qtbot.waitUntil(lambda: widget._worker is None, timeout=5000)


@pytest.fixture
def segmented3d(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    for data, kwargs, kind in nuclei3d_sample():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    image = viewer.layers["nuclei 3D"]
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image.value = image
    assert _shown(widget.dims) and widget.dims.value == "3d"  # its scale (2, 1, 1) says: a volume
    assert not _shown(widget.form.editors["mode"])  # the switch stands for it
    _run_and_wait(qtbot, widget)
    layer = find_result_layer(viewer, image)
    assert layer is not None
    return viewer, image, layer, widget


def test_segment_dock_segments_the_3d_sample_in_3d(segmented3d, qtbot):
    viewer, image, layer, widget = segmented3d
    assert layer.data.shape == image.data.shape and tuple(layer.scale) == (2.0, 1.0, 1.0)
    meta = layer.metadata[META_KEY]
    assert meta["spatial_ndim"] == 3 and meta["voxel_spacing"] == [2.0, 1.0, 1.0]  # from the layer's scale
    assert meta["params"]["mode"] == "3d"
    gt = viewer.layers["nuclei 3D ground truth"].data
    assert average_precision(gt, layer.data)["ap50"] >= 0.69
    df = layer.features
    assert {"volume", "sphericity", "centroid_z", "n_neighbors"} <= set(df.columns)
    assert len(df) == len(np.unique(layer.data)) - 1
    # the switch back: plane by plane, a table per plane
    widget.dims.value = "2d-per-plane"
    _run_and_wait(qtbot, widget)
    assert "axis0" in layer.features.columns and "volume" not in layer.features.columns


def test_uncalibrated_stack_defaults_to_planes_and_a_plane_hides_the_switch(make_napari_viewer):
    viewer = make_napari_viewer()
    stack = viewer.add_image(np.zeros((4, 32, 32), np.float32), name="stack")
    plane = viewer.add_image(np.zeros((32, 32), np.float32), name="plane")
    widget = SegmentWidget(viewer)
    widget.image.value = stack
    assert _shown(widget.dims) and widget.dims.value == "2d-per-plane"  # maybe a time-lapse
    viewer.dims.axis_labels = ("z", "y", "x")
    widget.image.value = plane
    assert not _shown(widget.dims)
    widget.image.value = stack
    assert widget.dims.value == "3d"  # an axis called z


def test_cell_table_flies_to_a_cell_through_z(segmented3d):
    viewer, _image, layer, _widget = segmented3d
    table = FeatureTableWidget(viewer)
    viewer.window.add_dock_widget(table)
    table.layer_combo.value = layer
    df = layer.features
    row = df.iloc[int(np.argmax(np.abs(df["centroid_z"].to_numpy() - 15)))]  # far from the middle
    table.show_cell(int(row["label"]))
    z = round(float(row["centroid_z"]))
    assert viewer.dims.current_step[0] == z
    assert layer.data[z, round(row["centroid_y"]), round(row["centroid_x"])] in (int(row["label"]), 0)
    np.testing.assert_allclose(camera(viewer).center[-2:], [row["centroid_y"], row["centroid_x"]], atol=1e-6)


def test_phenotypes_and_gallery_on_3d_labels(segmented3d, qtbot, tmp_path):
    viewer, _image, layer, _widget = segmented3d
    pheno = PhenotypeWidget(viewer, session_path=tmp_path / "session.json")
    viewer.window.add_dock_widget(pheno)
    pheno.add_class("small")
    pheno.add_class("big")
    df = layer.features.sort_values("volume")
    key = next(iter(pheno.session.images))
    small, big = df["label"].to_numpy()[:4], df["label"].to_numpy()[-4:]
    pheno.session.annotate_many(key, [int(v) for v in small], "small")
    pheno.session.annotate_many(key, [int(v) for v in big], "big")
    assert pheno.store.get(key, int(big[0])) == "big"
    gal = GalleryWidget(viewer)
    viewer.window.add_dock_widget(gal)
    gal.show()
    gal.source.setCurrentIndex(gal.source.findData("annotated"))
    gal.cls.setCurrentText("big")
    gal.size.setValue(48)
    viewer.dims.current_step = (0, 0, 0)  # the first plane: most cells are not in it
    tiles = gal.show_page()
    assert tiles
    for i, t in enumerate(tiles[:4]):  # every thumbnail shows its cell (the outline), cut at its middle
        img = gal.tiles[i].pixmap.toImage()
        px = [img.pixelColor(x, y) for x in range(0, 48, 2) for y in range(0, 48, 2)]
        assert any(c.red() == 255 and c.green() == 255 and c.blue() == 0 for c in px), t.label
    gal.close()
    pheno.close_session()
    qtbot.waitUntil(lambda: pheno._worker is None and pheno._quality_worker is None, timeout=60_000)
