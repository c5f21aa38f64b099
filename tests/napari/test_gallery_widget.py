"""The Gallery dock, clicked and typed through as a biologist does: pages, keys,
multi-select, page advance, fly-to, undo, review of one predicted class."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import QPoint, Qt

from cellgrid import grid_cells
from napari_phenotyper._napari.gallery_widget import GalleryWidget
from napari_phenotyper._napari.layers import camera, upsert_labels
from napari_phenotyper._napari.phenotype_widget import PhenotypeWidget
from napari_phenotyper.core.features import compute_features


@pytest.fixture
def gallery(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    image, labels, kinds = grid_cells(6, 8, 30, 0)
    img = viewer.add_image(image, name="cells", colormap="green", contrast_limits=(0, 255))
    lab = upsert_labels(viewer, img, labels, compute_features(labels, {"image": image}), {"backend": "test"})
    pheno = PhenotypeWidget(viewer, session_path=tmp_path / "session.json")
    viewer.window.add_dock_widget(pheno)
    pheno.add_class("small")
    pheno.add_class("big")
    gal = GalleryWidget(viewer)
    viewer.window.add_dock_widget(gal)
    gal.show()
    yield viewer, lab, pheno, gal, kinds
    gal.close()
    pheno.close_session()
    qtbot.waitUntil(lambda: pheno._worker is None and pheno._quality_worker is None, timeout=30000)


def _source(gal, name):
    gal.source.setCurrentIndex(gal.source.findData(name))


def _center(gal, i):
    return gal.tiles[i].geometry().center()


def test_keys_answer_hovered_and_selected_tiles_and_the_page_advances(gallery, qtbot):
    viewer, lab, pheno, gal, kinds = gallery
    # opened after the classes were added, it does not ask for them (a new user was told to)
    assert gal.status.text().startswith("Press Show"), gal.status.text()
    _source(gal, "unannotated")
    gal.per_page.setValue(6)
    gal.size.setValue(48)
    tiles = gal.show_page()
    assert len(tiles) == 6 and len(gal.tiles) == 6
    # the thumbnail shows the cell: green channel, yellow outline
    first = gal.tiles[0].pixmap.toImage()
    assert first.width() == 48
    px = [first.pixelColor(x, y) for x in range(0, 48, 3) for y in range(0, 48, 3)]
    assert any(c.green() > 40 and c.red() == 0 for c in px) and any(
        c.red() == 255 and c.green() == 255 for c in px
    )
    # hover + key
    qtbot.mouseMove(gal.grid, _center(gal, 0))
    gal.hover(0)
    qtbot.keyClick(gal.grid, Qt.Key.Key_1)
    t0 = tiles[0]
    assert pheno.store.get(t0.key, t0.label) == "small"
    assert gal.tiles[0].answer == "small" and gal.tiles[0].color is not None
    # ctrl-click two more, shift-click a run, then one key for all
    qtbot.mouseClick(gal.grid, Qt.MouseButton.LeftButton, pos=_center(gal, 1))
    qtbot.mouseClick(gal.grid, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ShiftModifier, _center(gal, 3))
    assert [t.selected for t in gal.tiles] == [False, True, True, True, False, False]
    qtbot.mouseClick(
        gal.grid, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ControlModifier, _center(gal, 5)
    )
    qtbot.keyClick(gal.grid, Qt.Key.Key_2)
    for i in (1, 2, 3, 5):
        assert pheno.store.get(tiles[i].key, tiles[i].label) == "big"
    assert pheno.store.get(tiles[4].key, tiles[4].label) is None
    # 0 clears; ctrl+Z takes it back
    gal.select([1])
    qtbot.keyClick(gal.grid, Qt.Key.Key_0)
    assert pheno.store.get(tiles[1].key, tiles[1].label) is None and gal.tiles[1].answer is None
    qtbot.keyClick(gal.grid, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert pheno.store.get(tiles[1].key, tiles[1].label) == "big" and gal.tiles[1].answer == "big"
    # answering the last tile brings the next page, of other cells
    gal.select([4])
    qtbot.keyClick(gal.grid, Qt.Key.Key_1)
    qtbot.waitUntil(lambda: gal.tiles and gal.tiles[0].tile not in tiles, timeout=5000)
    assert not {(t.tile.key, t.tile.label) for t in gal.tiles} & {(t.key, t.label) for t in tiles}
    assert all(t.answer is None for t in gal.tiles)


def test_a_rubber_band_selects_many_and_a_click_flies_to_the_cell(gallery, qtbot):
    viewer, lab, pheno, gal, kinds = gallery
    _source(gal, "unannotated")
    gal.per_page.setValue(8)
    gal.size.setValue(40)
    gal.show_page()
    a, b = gal.tiles[0].geometry().topLeft(), gal.tiles[2].geometry().bottomRight()
    qtbot.mousePress(gal.grid, Qt.MouseButton.LeftButton, pos=a + QPoint(2, 2))
    from qtpy.QtGui import QMouseEvent

    move = QMouseEvent(
        QMouseEvent.Type.MouseMove,
        (b - QPoint(2, 2)).toPointF(),
        Qt.MouseButton.NoButton,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    gal.grid.mouseMoveEvent(move)
    qtbot.mouseRelease(gal.grid, Qt.MouseButton.LeftButton, pos=b - QPoint(2, 2))
    selected = [i for i, t in enumerate(gal.tiles) if t.selected]
    assert selected[:3] == [0, 1, 2] and len(selected) >= 3
    # a click flies the camera to the cell
    tile = gal.tiles[5].tile
    qtbot.mouseClick(gal.grid, Qt.MouseButton.LeftButton, pos=_center(gal, 5))
    row = lab.features.set_index("label").loc[tile.label]
    np.testing.assert_allclose(camera(viewer).center[-2:], (row["centroid_y"], row["centroid_x"]), atol=1)


def test_proposals_wait_for_a_model_then_review_one_predicted_class(gallery, qtbot):
    viewer, lab, pheno, gal, kinds = gallery
    _source(gal, "proposals")
    assert gal.show_page() == []
    assert "two classes" in gal.status.text() or "annotate" in gal.status.text().lower()
    for cell in (1, 2, 3, 4, 9, 10):
        pheno.annotate(lab, cell, kinds[cell])
    pheno.retrain(full=True)
    qtbot.waitUntil(lambda: pheno._worker is None and pheno.result is not None, timeout=30000)
    page = gal.show_page()
    assert page and all(pheno.store.get(t.key, t.label) is None for t in page)
    # review: the cells predicted "big", most uncertain first; the grid is easy, so all are big
    _source(gal, "predicted")
    gal.cls.setCurrentText("big")
    gal.per_page.setValue(48)
    review = gal.show_page()
    assert review and all(kinds[t.label] == "big" for t in review)
    assert not {1, 2, 3, 4, 9, 10} & {t.label for t in review}
    # annotated: the cells given "small"
    _source(gal, "annotated")
    gal.cls.setCurrentText("small")
    assert sorted(t.label for t in gal.show_page()) == sorted(
        c for c in (1, 2, 3, 4, 9, 10) if kinds[c] == "small"
    )


def test_the_gallery_without_a_phenotypes_dock_says_what_to_do(make_napari_viewer):
    viewer = make_napari_viewer()
    gal = GalleryWidget(viewer)
    assert gal.show_page() == []
    assert "Phenotypes dock" in gal.status.text()
    gal.close()


def _segmented(viewer, channels, segment_on):
    """Segment (classical) and measure ``segment_on`` with every channel's intensities,
    as the Segment dock does, and put the labels in the viewer."""
    from napari_phenotyper.core.pipeline import estimate_params_diameter, iter_segment_and_measure
    from napari_phenotyper.core.progress import run

    data = {name: layer.data for name, layer in channels.items()}
    params = estimate_params_diameter("classical", None, data[segment_on])
    res = run(iter_segment_and_measure(data[segment_on], "classical", params, intensities=data))
    return upsert_labels(viewer, channels[segment_on], res.labels, res.features, {"backend": "classical"})


@pytest.mark.parametrize("dataset", ["nuclei sample", "h2b"])
def test_the_gallery_on_real_images_composites_channels_and_takes_keys(
    dataset, make_napari_viewer, qtbot, tmp_path, shared_data
):
    from napari_phenotyper._napari.sample_data import nuclei_sample
    from napari_phenotyper.io.images import read_image

    viewer = make_napari_viewer()
    if dataset == "h2b":
        root = shared_data / "cellcognition_h2b" / "images" / "0037"
        h2b = viewer.add_image(
            read_image(root / "tubulin_P0037_T00001_Crfp_Z1_S1.tif"),
            name="h2b",
            colormap="red",
            blending="additive",
        )
        tub = viewer.add_image(
            read_image(root / "tubulin_P0037_T00001_Cgfp_Z1_S1.tif"),
            name="tubulin",
            colormap="green",
            blending="additive",
        )
        lab = _segmented(viewer, {"h2b": h2b, "tubulin": tub}, "h2b")
    else:
        data, kw, _ = nuclei_sample()[0]
        nuclei = viewer.add_image(data, **kw)
        lab = _segmented(viewer, {"nuclei": nuclei}, "nuclei")
    assert len(lab.features) > 50
    pheno = PhenotypeWidget(viewer, session_path=tmp_path / "session.json")
    viewer.window.add_dock_widget(pheno)
    pheno.auto.setChecked(False)
    pheno.add_class("interphase")
    pheno.add_class("mitotic")
    gal = GalleryWidget(viewer)
    viewer.window.add_dock_widget(gal)
    _source(gal, "unannotated")
    gal.per_page.setValue(12)
    page = gal.show_page()
    assert len(page) == 12
    img = gal.tiles[0].pixmap.toImage()
    colors = np.array(
        [[img.pixelColor(x, y).getRgb()[:3] for x in range(img.width())] for y in range(img.height())]
    )
    outline = (colors[..., 0] == 255) & (colors[..., 1] == 255) & (colors[..., 2] == 0)
    inside = colors[~outline & (colors.sum(-1) > 30)]
    assert len(inside) > 50
    if dataset == "h2b":  # both channels: red (H2B) and green (tubulin) in one tile
        assert inside[:, 0].max() > 60 and inside[:, 1].max() > 30
    gal.select(list(range(12)))
    qtbot.keyClick(gal.grid, Qt.Key.Key_1)
    assert all(pheno.store.get(t.key, t.label) == "interphase" for t in page)
    qtbot.waitUntil(lambda: gal.tiles and gal.tiles[0].tile not in page, timeout=5000)  # the next page
    gal.close()
    pheno.close_session()


def test_the_docks_say_why_a_cell_got_its_class(gallery, qtbot):
    viewer, lab, pheno, gal, kinds = gallery
    for cell in (1, 2, 3, 4, 9, 10):
        pheno.annotate(lab, cell, kinds[cell])
    pheno.retrain(full=True)
    qtbot.waitUntil(lambda: pheno._worker is None and pheno.result is not None, timeout=30000)
    # the Phenotypes dock: the cell under the mouse
    big = next(c for c, k in kinds.items() if k == "big" and c not in (1, 3, 9))
    yy, xx = np.nonzero(lab.data == big)
    viewer.cursor.position = (float(yy.mean()), float(xx.mean()))
    text = pheno.why.update()
    assert text.startswith(f"cell {big}: big ") and "because of" in text
    assert pheno.why_label.text() == text
    # the Gallery: the hovered thumbnail
    _source(gal, "predicted")
    gal.cls.setCurrentText("small")
    page = gal.show_page()
    gal.hover(0)
    assert gal.explain_hovered().startswith(f"cell {page[0].label}: ")
    assert "because of" in gal.status.text()


def test_a_click_on_the_confusion_matrix_opens_those_cells_in_the_gallery(gallery, qtbot):
    viewer, lab, pheno, gal, kinds = gallery
    # two "big" cells annotated "small" on purpose: the cross-validation calls them big
    wrong = [c for c, k in kinds.items() if k == "big"][5:7]
    for cell in (1, 2, 3, 4, 9, 10, 11, 12, 13, 14, 15, 16):
        pheno.annotate(lab, cell, kinds[cell])
    for cell in wrong:
        pheno.annotate(lab, cell, "small")
    pheno.retrain(full=True)
    qtbot.waitUntil(lambda: pheno.quality is not None and pheno._quality_worker is None, timeout=60000)
    conf = pheno.quality["confusion"]
    row, col = list(conf.index).index("small"), list(conf.columns).index("big")
    assert conf.iat[row, col] >= 1
    confused = pheno.session.confused_cells("small", "big")
    assert len(confused) == conf.iat[row, col] and {lab_ for _, lab_ in confused} <= set(wrong) | {
        c for c, k in kinds.items() if k == "small"
    }
    pheno.confusion.cellClicked.emit(row, col)
    assert gal.source.currentData() == "confused" and gal.cls.currentText() == "small"
    assert sorted(t.tile.label for t in gal.tiles) == sorted(lab_ for _, lab_ in confused)
    assert "cross-validated as big" in gal.status.text()
    # the Plots dock's confusion figure does the same
    from matplotlib.backend_bases import MouseEvent

    from napari_phenotyper._napari.plots_widget import PlotsWidget

    gal.source.setCurrentIndex(gal.source.findData("unannotated"))
    plots = PlotsWidget(viewer, phenotypes=pheno)
    plots.show_tab("confusion")
    plots.refresh()
    fig = plots.plots["confusion"].figure
    ax = fig.axes[0]
    x, y = ax.transData.transform((col, row))
    canvas = plots.plots["confusion"].canvas
    canvas.callbacks.process("button_press_event", MouseEvent("button_press_event", canvas, x, y, button=1))
    assert gal.source.currentData() == "confused"
    assert sorted(t.tile.label for t in gal.tiles) == sorted(lab_ for _, lab_ in confused)
    plots.close_widget()
