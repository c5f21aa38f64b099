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
