import json

import numpy as np
import pytest

from napari_phenotyper.core.classify.annotations import AnnotationStore
from napari_phenotyper.core.classify.transfer import transfer_annotations


def test_classes_annotations_and_counts(tmp_path):
    store = AnnotationStore(tmp_path / "s.json")
    store.add_class("interphase")
    store.add_class("mitosis", "#ff0000")
    store.annotate("img1", 5, "mitosis")
    store.annotate("img1", 6, "interphase")
    store.annotate("img2", 5, "mitosis")
    assert store.counts() == {"interphase": 1, "mitosis": 2}
    assert store.annotations("img1") == {5: "mitosis", 6: "interphase"}
    store.annotate("img1", 6, None)
    assert store.get("img1", 6) is None and len(store) == 2
    with pytest.raises(KeyError, match="No class named 'apo'"):
        store.annotate("img1", 7, "apo")
    with pytest.raises(ValueError, match="Background"):
        store.annotate("img1", 0, "mitosis")
    with pytest.raises(ValueError, match="already a class"):
        store.add_class("mitosis")
    with pytest.raises(ValueError, match="#rrggbb"):
        store.recolor_class("mitosis", "red")


def test_rename_and_remove_class():
    store = AnnotationStore()
    store.add_class("a")
    store.add_class("b")
    store.annotate("i", 1, "a")
    store.annotate("i", 2, "b")
    store.rename_class("a", "alpha")
    assert [c.name for c in store.classes] == ["alpha", "b"]
    assert store.get("i", 1) == "alpha"
    assert store.remove_class("b") == 1
    assert store.annotations("i") == {1: "alpha"}


def test_every_change_is_autosaved_and_restores(tmp_path):
    path = tmp_path / "session.json"
    store = AnnotationStore(path)
    store.add_class("mitosis", "#123456")
    store.annotate("plate1/A01.tif", 3, "mitosis")
    img = tmp_path / "a.tif"
    img.write_bytes(b"pixels")
    store.register_image("plate1/A01.tif", img)
    on_disk = json.loads(path.read_text())
    assert on_disk["annotations"] == [{"image": "plate1/A01.tif", "label": 3, "class": "mitosis"}]
    assert len(on_disk["images"]["plate1/A01.tif"]["sha256"]) == 64
    back = AnnotationStore.load(path)
    assert back.annotations("plate1/A01.tif") == {3: "mitosis"} and back.classes[0].color == "#123456"
    back.annotate("plate1/A01.tif", 4, "mitosis")  # keeps autosaving to the same file
    assert len(json.loads(path.read_text())["annotations"]) == 2


def test_bad_session_files(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not a session file"):
        AnnotationStore.load(p)
    p.write_text(
        json.dumps(
            {
                "format": "napari-phenotyper-session",
                "version": 1,
                "classes": [{"name": "a"}],
                "annotations": [],
            }
        )
    )
    with pytest.raises(ValueError, match="malformed"):
        AnnotationStore.load(p)


def test_annotations_follow_a_resegmentation():
    old = np.zeros((20, 20), np.int32)
    old[:10, :10] = 1
    old[10:, 10:] = 2
    new = np.zeros_like(old)
    new[:10, 1:11] = 8  # cell 1 moved a little
    store = AnnotationStore()
    store.add_class("c")
    store.annotate("img", 1, "c")
    store.annotate("img", 2, "c")
    store.annotate("other", 1, "c")
    result = transfer_annotations(old, new, store.annotations("img"))
    store.apply_transfer("img", result)
    assert store.annotations("img") == {8: "c"} and store.annotations("other") == {1: "c"}
    assert list(result.lost) == [2]


def test_autosave_creates_a_missing_session_folder(tmp_path):
    """A new user has no ``~/.napari-phenotyper/sessions``: the first change makes it."""
    path = tmp_path / "home" / ".napari-phenotyper" / "sessions" / "session.json"
    store = AnnotationStore(path)
    store.add_class("mitotic")
    store.register_image("img", layer="img")
    store.annotate("img", 3, "mitotic")
    assert path.is_file() and store.save_error is None
    assert AnnotationStore.load(path).get("img", 3) == "mitotic"


def test_a_failed_autosave_keeps_the_annotation_and_says_why(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the session folder should be")
    store = AnnotationStore(blocker / "session.json")
    store.add_class("a")
    store.annotate("img", 1, "a")
    assert store.get("img", 1) == "a"
    assert store.save_error is not None and "Could not autosave" in store.save_error


# ---- geometry, restore by overlap, lost annotations, undo ------------------------------
from napari_phenotyper.core.classify.geometry import CellShape, cell_shape, match_shape  # noqa: E402


def _two_segmentations():
    """Three square cells; the second segmentation numbers them differently, drops one
    and adds a new one."""
    a = np.zeros((60, 90), np.int32)
    a[5:25, 5:25] = 1
    a[5:25, 35:55] = 2
    a[35:55, 5:25] = 3
    b = np.zeros_like(a)
    b[6:25, 5:25] = 7  # cell 1, slightly smaller
    b[5:25, 35:55] = 1  # cell 2 now has id 1: a label-id restore would put 1's class here
    b[35:55, 60:80] = 2  # a new cell where there was none
    return a, b


def test_cell_shape_round_trips_through_json():
    a, _ = _two_segmentations()
    shape = cell_shape(a, 2)
    assert shape.area == 400 and shape.lo == (5, 35) and shape.hi == (25, 55)
    np.testing.assert_allclose(shape.centroid, (14.5, 44.5))
    back = CellShape.from_json(json.loads(json.dumps(shape.to_json())))
    assert back.area == shape.area and np.array_equal(back.mask, shape.mask)
    assert match_shape(back, a) == (2, 1.0)
    with pytest.raises(ValueError, match="malformed cell geometry"):
        CellShape.from_json({"bbox": [0, 0, 1, 1], "area": 1, "centroid": [0, 0], "mask": "!!"})


def test_reconcile_restores_by_overlap_not_by_label_id(tmp_path):
    a, b = _two_segmentations()
    store = AnnotationStore(tmp_path / "s.json")
    store.add_class("big")
    store.add_class("small")
    for lab, cls in ((1, "big"), (2, "small"), (3, "big")):
        store.annotate("img", lab, cls, shape=cell_shape(a, lab))
    restored = AnnotationStore.load(tmp_path / "s.json")
    report = restored.reconcile("img", b)
    assert report.kept == 0 and report.moved == {1: 7, 2: 1} and report.lost == [3]
    assert restored.annotations("img") == {7: "big", 1: "small"}
    (lost,) = restored.lost("img")
    assert lost.cls == "big" and lost.label == 3
    np.testing.assert_allclose(lost.centroid, (44.5, 14.5))
    assert "1 lost" in report.summary()
    # back on the first segmentation: the lost one comes back by itself
    again = restored.reconcile("img", a)
    assert again.reattached == [3] and restored.annotations("img") == {1: "big", 2: "small", 3: "big"}
    assert restored.lost() == []


def test_transfer_keeps_lost_annotations_and_reattaches_them_later(tmp_path):
    from napari_phenotyper.core.classify.transfer import transfer_annotations

    a, b = _two_segmentations()
    store = AnnotationStore(tmp_path / "s.json")
    store.add_class("x")
    for lab in (1, 2, 3):
        store.annotate("img", lab, "x", shape=cell_shape(a, lab))
    result = transfer_annotations(a, b, store.annotated_labels("img"))
    store.apply_transfer("img", result)
    assert store.annotations("img") == {7: "x", 1: "x"}
    assert [r.label for r in store.lost("img")] == [3]
    saved = AnnotationStore.load(tmp_path / "s.json")
    assert [r.label for r in saved.lost("img")] == [3]  # lost records survive a restart
    assert store.reattach("img", a) == [3] and store.lost() == []
    # and a click can attach one by hand
    store.apply_transfer("img", transfer_annotations(a, b, {3: "x"}))
    record = store.lost("img")[0]
    assert store.attach_lost(record, 2) and store.get("img", 2) == "x" and not store.lost()


def test_undo_and_redo_every_change_for_at_least_100_steps(tmp_path):
    store = AnnotationStore(tmp_path / "s.json")
    store.add_class("a")
    store.add_class("b")
    for lab in range(1, 151):
        store.annotate("img", lab, "a" if lab % 2 else "b")
    assert len(store) == 150
    for _ in range(120):
        assert store.undo()
    assert len(store) == 30
    assert json.loads((tmp_path / "s.json").read_text())["annotations"].__len__() == 30  # saved
    for _ in range(20):
        assert store.redo()
    assert len(store) == 50 and store.get("img", 50) == "b"
    store.annotate("img", 50, None)
    assert not store.can_redo  # a new change starts a new branch
    assert store.undo() and store.get("img", 50) == "b"
    store.rename_class("a", "alpha")
    assert store.undo() and [c.name for c in store.classes] == ["a", "b"]


def test_excluded_cells_are_kept_like_annotations_but_never_trained_on(tmp_path):
    """Key X (issue 13): debris and half cells are excluded; saved, undone, and moved
    with their cell to another segmentation like annotations."""
    store = AnnotationStore(tmp_path / "s.json")
    store.add_class("c")
    store.annotate("img", 1, "c")
    store.set_value("img", 2, 0.5)
    store.exclude("img", 2)
    store.exclude("img", 3)
    assert store.excluded("img") == {2, 3} and store.n_excluded == 2
    assert store.annotations("img") == {1: "c"}  # the training set
    assert store.values("img") == {} and len(store) == 1  # a value goes too
    assert store.counts() == {"c": 1}
    store.exclude("img", 1)  # replaces a class annotation
    assert store.annotations("img") == {} and store.is_excluded("img", 1)
    assert store.undo() and store.annotations("img") == {1: "c"} and not store.is_excluded("img", 1)
    restored = AnnotationStore.load(tmp_path / "s.json")
    assert restored.excluded("img") == {2, 3} and restored.annotations("img") == {1: "c"}
    store.annotate("img", 3, None)  # taken back in
    assert store.excluded("img") == {2}
    with pytest.raises(ValueError, match="reserved"):
        store.add_class("(excluded)")
    # re-segmented: the exclusion follows its cell
    old = np.zeros((20, 20), np.int32)
    old[:10, :10] = 2
    new = np.zeros_like(old)
    new[:10, 1:11] = 9
    store.apply_transfer("img", transfer_annotations(old, new, store.annotated_labels("img")))
    assert store.excluded("img") == {9}
