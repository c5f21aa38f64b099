"""The gallery's pages (which cells, in which order) and its thumbnails, without Qt."""

from __future__ import annotations

import numpy as np
import pytest

from cellgrid import grid_cells
from napari_phenotyper.core.classify.session import PhenotypingSession
from napari_phenotyper.core.features import compute_features
from napari_phenotyper.core.gallery import Channel, crop_box, page_tiles, thumbnail
from napari_phenotyper.core.progress import run


@pytest.fixture
def loop(tmp_path):
    image, labels, kinds = grid_cells(6, 8, 30, 0)
    table = compute_features(labels, {"image": image})
    session = PhenotypingSession(tmp_path / "session.json")
    session.set_image("cells.tif", table, labels, name="cells")
    session.add_class("small")
    session.add_class("big")
    return session, image, labels, kinds


def _train(session):
    assert session.apply_result(run(session.iter_train(full=True, n_jobs=1)))


def test_unannotated_pages_are_random_distinct_and_skip_answers_and_shown_cells(loop):
    session, _, _, kinds = loop
    session.annotate("cells.tif", 1, "big")
    page = page_tiles(session, "unannotated", 10, seed=3)
    labels = [t.label for t in page]
    assert len(labels) == 10 and len(set(labels)) == 10 and 1 not in labels
    assert labels != sorted(labels)  # at random, not in table order
    assert [t.label for t in page_tiles(session, "unannotated", 10, seed=3)] == labels  # seeded
    nxt = page_tiles(session, "unannotated", 40, seed=3, exclude=[(t.key, t.label) for t in page])
    assert not set(labels) & {t.label for t in nxt}
    assert len(nxt) == min(40, len(kinds) - 1 - 10)  # every other unanswered cell


def test_no_model_no_proposals_and_predicted_pages_order_by_uncertainty(loop):
    session, _, _, kinds = loop
    assert page_tiles(session, "proposals", 8) == []
    for lab in (1, 2, 3, 4, 9, 10):
        session.annotate("cells.tif", lab, kinds[lab])
    _train(session)
    props = page_tiles(session, "proposals", 8)
    assert len(props) == 8 and all(session.store.get("cells.tif", t.label) is None for t in props)
    small = page_tiles(session, "predicted", 50, cls="small")
    assert small and all(kinds[t.label] == "small" for t in small)  # the grid is easy
    assert not {1, 2, 3, 4, 9, 10} & {t.label for t in small}  # answered cells are not reviewed
    pred = session.result.predictions["cells.tif"].set_index(session.images["cells.tif"].table["label"])
    unc = [pred.loc[t.label, "pheno_uncertainty"] for t in small]
    assert unc == sorted(unc, reverse=True)
    confident = page_tiles(session, "predicted", 50, cls="small", order="confident")
    assert [pred.loc[t.label, "pheno_uncertainty"] for t in confident] == sorted(unc)
    assert {t.label for t in confident} == {t.label for t in small}
    assert [t.label for t in page_tiles(session, "annotated", 5, cls="big")] == sorted(
        lab for lab in (1, 2, 3, 4, 9, 10) if kinds[lab] == "big"
    )


def test_bad_requests_say_what_to_do(loop):
    session = loop[0]
    with pytest.raises(ValueError, match="Unknown gallery source"):
        page_tiles(session, "best", 5)
    with pytest.raises(ValueError, match="Choose one of the classes small, big"):
        page_tiles(session, "predicted", 5, cls="mitosis")
    with pytest.raises(ValueError, match="at least one tile"):
        page_tiles(session, "unannotated", 0)


def test_thumbnail_composites_channels_with_their_limits_and_outlines_the_cell(loop):
    session, image, labels, _ = loop
    table = session.images["cells.tif"].table
    box = crop_box(table, 1, labels.shape)
    # cell 1 (big, radius 10-11) at (15, 15): a crop twice its size, clipped at the corner
    assert box[0].start == 0 and box[1].start == 0 and 30 <= box[0].stop <= 40
    green = np.zeros((256, 3))
    green[:, 1] = np.linspace(0, 1, 256)
    tile = thumbnail([Channel(image, (0.0, 255.0), green)], labels, 1, box, size=64, outline=(1, 0, 1))
    assert tile.shape == (64, 64, 3) and tile.dtype == np.uint8
    outline = (tile[..., 0] == 255) & (tile[..., 2] == 255)
    assert 40 < outline.sum() < 400  # a ring, not a fill
    inside = tile[..., 1][~outline & (tile[..., 1] > 0)]
    assert inside.size and abs(float(np.median(inside)) - 60) < 15  # dim "big" cell: ~60/255 green
    assert tile[..., 0][~outline].max() == 0  # a green colour table adds no red
    # narrower limits make it brighter; no channel gives a black tile with the outline
    bright = thumbnail([Channel(image, (0.0, 100.0), green)], labels, 1, box, size=64, outline=None)
    assert np.median(bright[..., 1][bright[..., 1] > 0]) > 140
    dark = thumbnail([], labels, 1, box, size=32)
    assert dark[..., 2].max() == 0 and dark[..., 0].max() == 255


def test_thumbnail_reads_only_the_crop_of_lazy_data(loop):
    dask = pytest.importorskip("dask.array")
    session, image, labels, _ = loop
    box = crop_box(session.images["cells.tif"].table, 20, labels.shape)
    lazy = dask.from_array(image, chunks=30)
    a = thumbnail([Channel(lazy, (0.0, 255.0), np.ones((256, 3)))], labels, 20, box, size=48)
    b = thumbnail([Channel(image, (0.0, 255.0), np.ones((256, 3)))], labels, 20, box, size=48)
    np.testing.assert_array_equal(a, b)


def test_explain_cell_names_the_feature_that_decides_and_its_probabilities(loop):
    from napari_phenotyper.core.classify.explain import explain_cell

    session, _, _, kinds = loop
    for lab in (1, 2, 3, 4, 9, 10):
        session.annotate("cells.tif", lab, kinds[lab])
    _train(session)
    table = session.images["cells.tif"].table
    # a cell the forest is sure is big: its size is why
    big = next(lab for lab, k in kinds.items() if k == "big" and lab not in (1, 3, 9))
    ex = explain_cell(session.result.model, table, big)
    assert ex.predicted == "big" and ex.proba["big"] > 0.6
    assert abs(sum(ex.proba.values()) - 1) < 1e-6
    top = ex.contributions.index[:5]
    assert any(
        ("area" in c or "diameter" in c or "axis" in c or "perimeter" in c or "intensity" in c) for c in top
    )
    assert ex.contributions.iloc[0] > 0
    assert ex.text().startswith(f"cell {big}: big ") and "because of" in ex.text()
    other = explain_cell(session.result.model, table, big, cls="small")
    assert len(other.contributions) == len(session.result.model.feature_names)
    with pytest.raises(KeyError, match="not in the table"):
        explain_cell(session.result.model, table, 9999)
    with pytest.raises(ValueError, match="not a class"):
        explain_cell(session.result.model, table, big, cls="mitosis")
