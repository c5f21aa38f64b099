"""The whole annotation loop as a plain object (no Qt, no napari): annotate, undo/redo,
retrain, predictions, proposals, switch task, re-segment, close an image, save/restore;
and every stale-view case of the first-contact issue as a session test."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cellgrid import grid_cells
from napari_phenotyper.core.classify.session import LoopSettings, PhenotypingSession
from napari_phenotyper.core.features import compute_features
from napari_phenotyper.core.progress import run

ROWS, COLS, STEP = 6, 8, 30


def grid(seed=0):
    """Chessboard of 'big' dim and 'small' bright disks; returns image, labels, kinds."""
    return grid_cells(ROWS, COLS, STEP, seed)


class Recorder:
    """Counts every event of a session, and keeps the status messages."""

    def __init__(self, session):
        self.counts: dict[str, int] = {}
        self.status: list[str] = []
        for name in (
            "classes",
            "annotations",
            "predictions",
            "quality",
            "queue",
            "proposal",
            "lost",
            "inputs",
        ):
            getattr(session.events, name).connect(lambda *_a, n=name: self._hit(n))
        session.events.status.connect(self.status.append)

    def _hit(self, name):
        self.counts[name] = self.counts.get(name, 0) + 1

    def reset(self):
        self.counts.clear()
        self.status.clear()


@pytest.fixture
def loop(tmp_path):
    image, labels, kinds = grid()
    table = compute_features(labels, {"image": image})
    session = PhenotypingSession(tmp_path / "session.json")
    session.set_image("cells.tif", table, labels, name="cells")
    session.add_class("small")
    session.add_class("big")
    return session, labels, kinds


def _teach(session, kinds, labs=(1, 2, 3, 4, 10, 11)):
    for lab in labs:
        session.annotate("cells.tif", lab, kinds[lab])


def _train(session, full=True):
    result = run(session.iter_train(full=full, n_jobs=1))
    assert session.apply_result(result)
    return result


def test_annotate_autosaves_and_undo_redo(loop, tmp_path):
    session, _, kinds = loop
    events = Recorder(session)
    assert session.press("cells.tif", 1, 2) == "→ big"
    assert session.press("cells.tif", 2, 1) == "→ small"
    assert session.store.annotations("cells.tif") == {1: "big", 2: "small"}
    saved = json.loads((tmp_path / "session.json").read_text())
    assert {(a["label"], a["class"]) for a in saved["annotations"]} == {(1, "big"), (2, "small")}
    assert events.counts["annotations"] == 2 and events.counts["inputs"] == 2
    assert session.undo() and session.store.annotations("cells.tif") == {1: "big"}
    assert session.redo() and session.store.annotations("cells.tif") == {1: "big", 2: "small"}
    with pytest.raises(ValueError, match="no class 3"):
        session.press("cells.tif", 3, 3)
    with pytest.raises(LookupError, match="measure"):
        session.annotate("cells.tif", 999, "big")  # no such cell in the table
    assert session.press("cells.tif", 1, 0) == "cleared"
    assert session.store.annotations("cells.tif") == {2: "small"}


def test_retrain_predicts_every_cell_and_the_frame_carries_it(loop):
    session, _, kinds = loop
    assert session.ready_to_train() == "Annotate cells of at least two classes to train."
    with pytest.raises(ValueError, match="two classes"):
        session.iter_train()
    _teach(session, kinds)
    result = _train(session)
    assert result.n_train == 6 and session.is_current(result)
    frame = session.pheno_frame("cells.tif").set_index(session.images["cells.tif"].table["label"])
    truth = np.array([kinds[lab] for lab in frame.index])
    assert (frame["pheno_class"].astype(str).to_numpy() == truth).mean() >= 0.95
    assert frame.loc[1, "pheno_annotation"] == "big" and frame["pheno_annotation"].isna().sum() == 42
    counts = session.predicted_counts()
    assert sum(counts.values()) == 48 and abs(counts["big"] - 24) <= 2
    # the default learner is the self-trained one, and it learnt from the unannotated cells
    assert result.model.settings.kind == "self_trained" and not session.is_live_cut()
    # a forest: the live pass cuts it, the full one does not
    session.configure(classifier="random_forest")
    assert session.model_settings(live=True).trees == 32 and session.model_settings().trees == 100
    outcome = run(session.iter_quality(folds=2))
    assert session.apply_quality(outcome)
    assert session.quality["accuracy"] >= 0.8 and "accuracy" in session.quality_text()


def test_proposals_queue_and_auto_next(loop):
    session, _, kinds = loop
    _teach(session, kinds)
    _train(session)
    p = session.next_proposal()
    assert p is not None and p.label not in (1, 2, 3, 4, 10, 11)
    assert session.current == ("cells.tif", p.label)
    session.annotate("cells.tif", p.label, kinds[p.label])
    assert session.wants_next()  # answered the proposal: the next follows the retrain
    queue = session.fill_queue(5)
    assert len(queue) == 5 and len({q.label for q in queue}) == 5
    first = queue[0]
    session.annotate(first.image, first.label, kinds[first.label])
    assert first not in session.queue and len(session.queue) == 4


def test_undoing_every_annotation_clears_model_quality_queue_and_ring(loop):
    """The stale views of the first-contact issue: nothing derived survives its inputs."""
    session, _, kinds = loop
    _teach(session, kinds, (1, 2))
    _train(session)
    session.apply_quality(run(session.iter_quality(folds=2)))
    session.next_proposal()
    session.fill_queue(3)
    assert session.result is not None and session.current is not None and session.queue
    events = Recorder(session)
    session.undo()
    session.undo()
    assert session.result is None and session.quality is None and session.importances is None
    assert session.current is None and session.queue == []
    assert session.predicted_counts() == {}
    assert (
        events.counts["predictions"] >= 1 and events.counts["queue"] >= 1 and events.counts["proposal"] >= 1
    )
    assert "two classes" in events.status[-1] or "Undone" in events.status[-1]
    assert "at least two classes" in session.quality_text()


def test_a_result_of_old_inputs_or_another_task_is_refused(loop):
    session, _, kinds = loop
    _teach(session, kinds)
    job = session.iter_train(n_jobs=1)  # inputs taken now
    session.annotate("cells.tif", 20, kinds[20])
    result = run(job)
    assert not session.is_current(result)  # a retrain is due, but the result is still right to show
    assert session.apply_result(result)
    job = session.iter_train(n_jobs=1)
    session.set_task("regression")
    assert not session.apply_result(run(job)) and session.result is None
    # quality of inputs that changed meanwhile is dropped, not shown
    session.set_task("classification")
    q = session.iter_quality(folds=2)
    session.annotate("cells.tif", 21, kinds[21])
    assert not session.apply_quality(run(q)) and session.quality is None


def test_switching_task_clears_class_proposals(loop):
    session, _, kinds = loop
    _teach(session, kinds)
    _train(session)
    session.fill_queue(4)
    session.set_task("regression")
    assert session.queue == [] and session.result is None and session.current is None
    assert session.ready_to_train() == "Give at least 3 cells a value to train."
    for lab in (1, 2, 3, 4):
        session.press("cells.tif", lab, 9 if kinds[lab] == "big" else 1)
    assert session.store.values("cells.tif") == {1: 1.0, 2: 0.0, 3: 1.0, 4: 0.0}
    result = _train(session)
    assert result.task == "regression" and "pheno_value" in session.pheno_frame("cells.tif")
    session.set_task("classification")
    assert session.result is None  # a regressor's predictions are not classes


def test_resegmenting_moves_annotations_and_keeps_lost_ones(loop):
    session, labels, kinds = loop
    _teach(session, kinds, (1, 2, 3))
    _train(session)
    session.propose_cell(session.proposals(1)[0])
    relabelled = np.where(labels > 0, labels + 100, 0)
    relabelled[labels == 3] = 0  # cell 3 is gone
    events = Recorder(session)
    result = session.relabel("cells.tif", relabelled)
    assert result is not None and result.moved == {1: 101, 2: 102} and list(result.lost) == [3]
    assert session.store.annotations("cells.tif") == {101: "big", 102: "small"}
    assert [(r.label, r.cls) for r in session.store.lost("cells.tif")] == [(3, "big")]
    assert session.current is None  # no ring on a cell that changed
    assert "kept 2 of 3" in events.status[-1] and events.counts["lost"] == 1
    assert session.result is None or "cells.tif" not in session.result.predictions
    # a segmentation that has cell 3 again gets its annotation back
    session.relabel("cells.tif", labels)
    assert session.store.annotations("cells.tif") == {1: "big", 2: "small", 3: "big"}
    assert session.store.lost() == []
    assert session.would_lose("cells.tif", np.zeros_like(labels)) == (3, 3)


def test_closing_an_image_forgets_its_counts_predictions_and_proposals(loop):
    session, _, kinds = loop
    image, labels2, kinds2 = grid(seed=1)
    session.set_image("other.tif", compute_features(labels2, {"image": image}), labels2, name="other")
    _teach(session, kinds)
    session.annotate("other.tif", 5, kinds2[5])
    _train(session)
    assert set(session.result.predictions) == {"cells.tif", "other.tif"}
    session.propose_cell(next(p for p in session.proposals(40) if p.image == "other.tif"))
    session.fill_queue(20)
    session.remove_image("other.tif")
    assert "other.tif" not in session.result.predictions
    assert sum(session.predicted_counts().values()) == 48
    assert session.annotated_counts() == {"small": 3, "big": 3}
    assert session.current is None and all(p.image == "cells.tif" for p in session.queue)
    # its annotations stay in the session file for when it is opened again
    assert session.store.annotations("other.tif") == {5: kinds2[5]}


def test_save_and_open_restores_by_geometry(loop, tmp_path):
    session, labels, kinds = loop
    _teach(session, kinds, (1, 2, 3))
    session.configure(strategy="entropy", trees=50)
    session.save(tmp_path / "mine.json")
    # another viewer, the same image segmented with other label ids
    image, _, _ = grid()
    other = np.where(labels > 0, labels + 10, 0)
    fresh = PhenotypingSession(tmp_path / "fresh.json")
    fresh.set_image("cells.tif", compute_features(other, {"image": image}), other, name="cells")
    summary = fresh.open(tmp_path / "mine.json")
    assert fresh.store.annotations("cells.tif") == {11: "big", 12: "small", 13: "big"}
    assert "3 annotations" in summary and "moved" in summary
    assert fresh.loop.strategy == "entropy" and fresh.loop.trees == 50
    assert fresh.classes == ["small", "big"]
    assert not fresh.store.can_undo  # opening is not a change to take back


def test_settings_are_validated_and_remembered(loop, tmp_path):
    session, _, kinds = loop
    with pytest.raises(ValueError, match="feature group"):
        session.configure(feature_groups=())
    with pytest.raises(ValueError, match="Unknown strategy"):
        session.configure(strategy="psychic")
    session.configure(feature_groups=("shape",), classifier="logistic_regression")
    saved = json.loads((tmp_path / "session.json").read_text())["settings"]
    assert saved["feature_groups"] == ["shape"] and saved["classifier"] == "logistic_regression"
    assert LoopSettings.from_json(saved) == session.loop
    # all groups ticked is "every feature"
    assert LoopSettings(feature_groups=("shape", "intensity", "texture", "neighbors")).feature_groups is None
    _teach(session, kinds)
    result = _train(session)
    assert all(not n.startswith("mean_intensity") for n in result.feature_names)


def test_exclusions_leave_training_and_proposals(loop):
    session, _, kinds = loop
    _teach(session, kinds)
    assert session.exclude("cells.tif", 20).startswith("excluded")
    assert session.store.is_excluded("cells.tif", 20)
    _train(session)
    assert all(p.label != 20 for p in session.proposals(48))
    assert session.pheno_frame("cells.tif")["pheno_excluded"].sum() == 1
    assert session.exclude("cells.tif", 20) == "taken back in"
    assert session.exclude("cells.tif", 20, excluded=False) is None


def test_classifier_files_round_trip_through_sessions(loop, tmp_path):
    session, _, kinds = loop
    _teach(session, kinds)
    path = session.save_classifier(tmp_path / "clf.phenotyper.zip")
    image, labels2, kinds2 = grid(seed=2)
    other = PhenotypingSession(None)
    other.set_image("b.tif", compute_features(labels2, {"image": image}), labels2)
    summary = other.load_classifier(path)
    assert "6 training cells" in summary and other.classes == ["small", "big"]
    assert other.ready_to_train() is None  # the file's cells suffice
    _train(other)
    frame = other.pheno_frame("b.tif")
    truth = np.array([kinds2[lab] for lab in other.images["b.tif"].table["label"]])
    assert (frame["pheno_class"].astype(str).to_numpy() == truth).mean() >= 0.95
