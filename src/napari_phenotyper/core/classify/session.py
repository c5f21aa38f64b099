"""One phenotyping session: the whole annotation loop as a plain object, without Qt.

A :class:`PhenotypingSession` owns, for one viewer (or one headless run), everything the
annotation loop knows: the images taking part (each a per-cell table and its labels,
by a stable key), the classes and the annotations with their undo history and the lost
annotations (an :class:`~.annotations.AnnotationStore`), the task (classes or values),
the classifier settings, the latest model and its predictions, its quality
(cross-validation, importances), the proposed cell and the queue of proposals.

It never imports Qt or napari. Every change is announced on :attr:`PhenotypingSession.events`
(psygnal signals, which need no Qt), and every derived thing (model, predictions,
quality, proposals) is dropped in one place, :meth:`PhenotypingSession._inputs_changed`,
when the inputs it came from no longer hold: no view can show a stale state. The
long steps (train and predict, cross-validate) are progress generators that the GUI
runs in a thread and tests and the command line run directly; their results come
back through :meth:`~PhenotypingSession.apply_result` and
:meth:`~PhenotypingSession.apply_quality`, which refuse results of inputs that have
changed since.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from psygnal import Signal, SignalGroup

from ..progress import Progress
from .annotations import AnnotationStore, LostAnnotation, ReconcileReport
from .engine import (
    MatrixCache,
    Proposal,
    TrainResult,
    annotation_column,
    border_labels,
    common_feature_columns,
    iter_quality,
    iter_train_predict,
    propose,
    training_set,
    unlabelled_pool,
)
from .geometry import CellShape, cell_shape
from .model import CLASSIFIERS, FEATURE_GROUP_NAMES, ClassifierSettings
from .query import STRATEGIES
from .transfer import TransferResult, transfer_annotations

__all__ = [
    "TASKS",
    "ImageEntry",
    "LoopSettings",
    "PhenotypingSession",
    "SessionEvents",
    "default_classifier_path",
    "default_session_path",
]

TASKS = ("classification", "regression")
#: Trees of the random forest of a live pass (the full forest follows after a pause).
LIVE_TREES = 32


class SessionEvents(SignalGroup):
    """What a :class:`PhenotypingSession` announces. Views subscribe; none carries state
    a view must keep: each says *what* changed, the session holds the new state."""

    #: A message for the user (what just happened, or why something cannot).
    status = Signal(str)
    #: The classes (names, colours, order) or their counts changed.
    classes = Signal()
    #: The annotations of these image keys changed (their tables need rewriting).
    annotations = Signal(tuple)
    #: One cell got an answer: ``(key, label, class or None, what)`` (for a flash).
    answered = Signal(str, int, object, str)
    #: An image joined or left the session.
    images = Signal()
    #: The model and its predictions changed (a new result, or none).
    predictions = Signal()
    #: The cross-validated quality or the importances changed (or were cleared).
    quality = Signal()
    #: The queue of proposals changed.
    queue = Signal()
    #: The proposed cell changed (``current`` is the new one, or ``None``).
    proposal = Signal()
    #: The lost annotations changed.
    lost = Signal()
    #: Someone asked to see the cells annotated as one class but cross-validated as
    #: another (a cell of the confusion matrix was clicked): ``(true, predicted)``.
    review = Signal(str, str)
    #: The settings changed from inside the session (a session file or a classifier
    #: file was opened): controls showing them should read them again.
    settings = Signal()
    #: The task changed (``"classification"`` or ``"regression"``).
    task = Signal(str)
    #: The training inputs changed: a retrain is due.
    inputs = Signal()


@dataclass(frozen=True)
class LoopSettings:
    """The settings of the loop that a session file keeps.

    Parameters
    ----------
    classifier : str
        One of :data:`~.model.CLASSIFIERS` (regression uses the regressor of that name,
        else a random forest). The default, ``"self_trained"``, is the learner that
        ``benchmarks/active_learning.py --workflow default`` measured best: from tens of
        answers over hundreds of features, a logistic regression that also learns from
        the unannotated cells generalises much better than a forest.
    feature_groups : tuple of str or None
        Feature groups to learn from; ``None``: all of them.
    trees : int
        Trees of a random forest (the full model; a live pass uses at most
        :data:`LIVE_TREES`).
    strategy : str
        One of :data:`~.query.STRATEGIES`.
    value_range : tuple of float
        Values that keys 1 and 9 give in regression mode.
    seed : int
        Random seed of the models.
    """

    classifier: str = "self_trained"
    feature_groups: tuple[str, ...] | None = None
    trees: int = ClassifierSettings().trees
    strategy: str = "margin"
    value_range: tuple[float, float] = (0.0, 1.0)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.classifier not in CLASSIFIERS:
            raise ValueError(
                f"Unknown classifier {self.classifier!r}; choose one of {', '.join(CLASSIFIERS)}."
            )
        if self.strategy not in STRATEGIES:
            raise ValueError(f"Unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}.")
        if self.feature_groups is not None:
            unknown = [g for g in self.feature_groups if g not in FEATURE_GROUP_NAMES]
            if unknown or not self.feature_groups:
                raise ValueError(
                    "Tick at least one feature group."
                    if not unknown
                    else f"Unknown feature group(s) {unknown}; known: {', '.join(FEATURE_GROUP_NAMES)}."
                )
            if set(self.feature_groups) == set(FEATURE_GROUP_NAMES):
                object.__setattr__(self, "feature_groups", None)
        if int(self.trees) < 1:
            raise ValueError("A forest needs at least one tree.")
        lo, hi = (float(v) for v in self.value_range)
        object.__setattr__(self, "value_range", (lo, hi))

    def to_json(self, task: str) -> dict[str, Any]:
        """The session file's ``settings`` entry."""
        return {
            "task": task,
            "classifier": self.classifier,
            "feature_groups": list(self.feature_groups or FEATURE_GROUP_NAMES),
            "trees": int(self.trees),
            "strategy": self.strategy,
            "value_range": list(self.value_range),
            "seed": int(self.seed),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LoopSettings:
        """Settings from a session file, keeping the defaults for what is missing or not valid."""
        kw: dict[str, Any] = {}
        if data.get("classifier") in CLASSIFIERS:
            kw["classifier"] = data["classifier"]
        groups = data.get("feature_groups")
        if isinstance(groups, list) and groups and all(g in FEATURE_GROUP_NAMES for g in groups):
            kw["feature_groups"] = tuple(groups)
        if isinstance(data.get("trees"), int) and data["trees"] >= 1:
            kw["trees"] = data["trees"]
        if data.get("strategy") in STRATEGIES:
            kw["strategy"] = data["strategy"]
        if isinstance(data.get("seed"), int):
            kw["seed"] = data["seed"]
        vr = data.get("value_range")
        if isinstance(vr, list | tuple) and len(vr) == 2:
            kw["value_range"] = (float(vr[0]), float(vr[1]))
        return cls(**kw)


@dataclass
class ImageEntry:
    """One image of the session: its per-cell table (features only) and its labels."""

    key: str
    table: pd.DataFrame
    #: The labels image (``None`` for a table read without its labels, headless).
    labels: np.ndarray | None
    name: str = ""
    _label_set: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64), repr=False)

    def __post_init__(self) -> None:
        self._label_set = np.sort(self.table["label"].to_numpy(dtype=np.int64))

    def has(self, label: int) -> bool:
        """Whether cell ``label`` has a row in the table."""
        i = np.searchsorted(self._label_set, int(label))
        return bool(i < len(self._label_set) and self._label_set[i] == int(label))

    def areas(self) -> dict[int, int] | None:
        if "area" not in self.table.columns:
            return None
        return dict(
            zip(
                self.table["label"].astype(int).tolist(), self.table["area"].astype(int).tolist(), strict=True
            )
        )


def _home() -> Path:
    return Path(os.environ.get("NAPARI_PHENOTYPER_HOME") or Path.home() / ".napari-phenotyper")


def _stamp() -> str:
    from datetime import datetime

    return datetime.now().strftime("%Y%m%d-%H%M%S-%f")


def default_session_path() -> Path:
    """Where a new session is autosaved: ``$NAPARI_PHENOTYPER_HOME/sessions`` (default
    ``~/.napari-phenotyper/sessions``), one file per session, named by its start time."""
    return _home() / "sessions" / f"session-{_stamp()}.json"


def default_classifier_path() -> Path:
    """Where a classifier taken from a session for a batch run is saved:
    ``$NAPARI_PHENOTYPER_HOME/classifiers`` (default ``~/.napari-phenotyper/classifiers``)."""
    return _home() / "classifiers" / f"session-{_stamp()}.phenotyper.zip"


class PhenotypingSession:
    """The annotation loop of one viewer: images, classes, annotations, model, proposals.

    Parameters
    ----------
    path : path-like, optional
        Session file autosaved after every change; ``None`` keeps it in memory.

    Notes
    -----
    Image keys are stable names (the image file when known): a session file restored
    in another viewer finds its images by them. Every method that changes something
    emits the matching :class:`SessionEvents`; the long steps are
    :meth:`iter_train` and :meth:`iter_quality`.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.events = SessionEvents()
        self.store = AnnotationStore(path)
        self.images: dict[str, ImageEntry] = {}
        self.task = "classification"
        self.loop = LoopSettings()
        #: Training set of a loaded classifier file (joins every retrain), or ``None``.
        self.extra: tuple[pd.DataFrame, list[Any]] | None = None
        self.result: TrainResult | None = None
        self.quality: dict[str, Any] | None = None
        self.current: tuple[str, int] | None = None
        self.queue: list[Proposal] = []
        #: The annotations lost by the last re-segmentation: ``(key, label, class)``.
        self.last_lost: list[tuple[str, int, Any]] = []
        #: After an answer to the proposed cell, propose the next one when the model is new.
        self.auto_next = True
        #: Each cross-validation's (cells cross-validated, accuracy), in the order measured,
        #: and the same with the balanced accuracy: the learning curve.
        self.learning_records: list[tuple[int, float]] = []
        self.balanced_records: list[tuple[int, float]] = []
        self.cache = MatrixCache()
        self._advance = False
        self._version = 0  # bumps whenever the training inputs change

    # ---- small accessors -------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return [c.name for c in self.store.classes]

    def colors(self) -> dict[str, str]:
        return {c.name: c.color for c in self.store.classes}

    @property
    def importances(self) -> pd.Series | None:
        """Feature importances of the current model (``None`` without one)."""
        return self.result.importances if self.result is not None else None

    @property
    def version(self) -> int:
        """A counter of changes to the training inputs (a result knows which it used)."""
        return self._version

    def _status(self, text: str) -> None:
        self.events.status.emit(text)

    # ---- the one place derived state is dropped ----------------------------------------
    def _inputs_changed(self, keys: Sequence[str] = (), *, tables: bool = False) -> None:
        """The training inputs changed (annotations, classes, tables of ``keys``).

        Predictions of re-measured tables no longer align with them and go; the model,
        its quality and the proposals go when training is no longer possible; queue
        items of cells that now have an answer go.
        """
        self._version += 1
        if tables and self.result is not None:
            for key in keys:
                self.result.predictions.pop(key, None)
            self.events.predictions.emit()
        why = self.ready_to_train()
        if why is not None:
            self.clear_derived(why)
        else:
            self._prune_queue()
        self.events.classes.emit()
        self.events.inputs.emit()

    def clear_derived(self, why: str = "") -> None:
        """Forget the model, its predictions and quality, the proposals and the queue."""
        had = self.result is not None or self.quality is not None
        self.result = None
        self.quality = None
        self._advance = False
        if had:
            self.events.predictions.emit()
        self.events.quality.emit()
        self.clear_proposal()
        if self.queue:
            self.queue = []
            self.events.queue.emit()
        if why:
            self._status(why)

    def clear_proposal(self) -> None:
        """No cell is proposed any more."""
        if self.current is not None:
            self.current = None
            self.events.proposal.emit()

    def _prune_queue(self) -> None:
        keep = [p for p in self.queue if p.image in self.images and not self._answered(p.image, p.label)]
        if len(keep) != len(self.queue):
            self.queue = keep
            self.events.queue.emit()

    def _answered(self, key: str, label: int) -> bool:
        return int(label) in self._answers(key) or self.store.is_excluded(key, int(label))

    def _answers(self, key: str) -> dict[int, Any]:
        return self.store.values(key) if self.task == "regression" else self.store.annotations(key)

    # ---- images ------------------------------------------------------------------------
    def set_image(
        self,
        key: str,
        table: pd.DataFrame,
        labels: Any,
        *,
        name: str = "",
        path: str | os.PathLike | None = None,
    ) -> ReconcileReport | None:
        """An image joins the session, or was measured again.

        Its annotations are checked against its cells by their geometry (restored sessions,
        a re-measured image) and the lost ones that a cell now covers come back.

        Parameters
        ----------
        key : str
            Stable image key.
        table : pandas.DataFrame
            Per-cell table with a ``label`` column (``pheno_*`` columns are ignored).
        labels : array-like or None
            Its labels (a copy is kept: a later :meth:`relabel` compares with it);
            ``None`` for a table alone (no geometry is then stored with its answers).
        name, path : optional
            Shown in messages; the image file (recorded with its hash).
        """
        if "label" not in table.columns:
            raise ValueError(f"{name or key}: the table has no 'label' column; measure the image first.")
        table = table.drop(columns=[c for c in table.columns if str(c).startswith("pheno_")])
        arr = None if labels is None else np.array(labels, copy=True)
        entry = ImageEntry(str(key), table, arr, name or str(key))
        new = entry.key not in self.images
        self.images[entry.key] = entry
        if entry.key not in self.store.images:
            self.store.register_image(entry.key, path=path, layer=entry.name)
        report = None
        if arr is not None and (self.store.annotated_labels(entry.key) or self.store.lost(entry.key)):
            report = self.store.reconcile(entry.key, entry.labels, entry.areas())
            if report.changed:
                self._status(f"{entry.name}: annotations checked against its cells: {report.summary()}.")
                self.events.lost.emit()
        self.cache.forget(list(self.images))
        if self.current is not None and self.current[0] == entry.key:
            self.clear_proposal()  # proposed from predictions of the table just replaced
        if new:
            self.events.images.emit()
        self.events.annotations.emit((entry.key,))
        self._inputs_changed([entry.key], tables=True)
        return report

    def remove_image(self, key: str) -> None:
        """An image left (its layer was closed): nothing may still describe it. Its
        annotations stay in the session file and come back when it is opened again."""
        if self.images.pop(str(key), None) is None:
            return
        self.cache.forget(list(self.images))
        if self.current is not None and self.current[0] == key:
            self.clear_proposal()
        self.events.images.emit()
        self._inputs_changed([str(key)], tables=True)
        self._prune_queue()

    def entry(self, key: str) -> ImageEntry:
        try:
            return self.images[str(key)]
        except KeyError:
            raise KeyError(f"No image {key!r} in this session; measure it first.") from None

    def shape_of(self, key: str, label: int, labels: Any = None) -> CellShape | None:
        """The geometry of one cell (the table's bounding box saves a scan of the image)."""
        entry = self.entry(key)
        arr = entry.labels if labels is None else np.asarray(labels)
        if arr is None:
            return None
        bbox = None
        t = entry.table
        if labels is None and arr.ndim == 2 and "bbox_min_y" in t.columns:
            row = np.flatnonzero(t["label"].to_numpy() == int(label))
            if len(row):
                r = t.iloc[int(row[0])]
                bbox = (
                    (int(r["bbox_min_y"]), int(r["bbox_min_x"])),
                    (int(r["bbox_max_y"]), int(r["bbox_max_x"])),
                )
        return cell_shape(arr, int(label), bbox)

    def would_lose(self, key: str, new_labels: Any) -> tuple[int, int]:
        """``(annotated, lost)``: how many of ``key``'s annotations new labels would not
        keep track of (a segmentation run asks before losing many)."""
        entry = self.images.get(str(key))
        annotated = self.store.annotated_labels(str(key)) if entry is not None else {}
        if not annotated or entry is None:
            return 0, 0
        new = np.asarray(new_labels)
        if entry.labels is None or entry.labels.shape != new.shape:
            return len(annotated), len(annotated)
        return len(annotated), len(transfer_annotations(entry.labels, new, annotated).lost)

    def relabel(self, key: str, new_labels: Any) -> TransferResult | None:
        """The image's labels changed (re-segmented, painted): move its annotations onto
        the new cells (IoU >= 0.5), keep the others as lost records, and report."""
        entry = self.entry(key)
        new = np.array(new_labels, copy=True)
        old = entry.labels if entry.labels is not None else np.zeros_like(new)
        entry.labels = new
        annotated = self.store.annotated_labels(entry.key)
        if not annotated:
            return None
        result = transfer_annotations(old if old.shape == new.shape else np.zeros_like(new), new, annotated)
        if result.n_kept == len(annotated) and all(o == n for o, n in result.moved.items()):
            return result
        old_shapes = {
            int(lab): sh
            for lab in result.lost
            if self.store.shape(entry.key, lab) is None and (sh := cell_shape(old, int(lab))) is not None
        }
        new_shapes = {
            int(n): sh for n in result.moved.values() if (sh := cell_shape(new, int(n))) is not None
        }
        self.store.apply_transfer(entry.key, result, new_shapes=new_shapes, old_shapes=old_shapes)
        back = self.store.reattach(entry.key, new)
        self.last_lost = [(entry.key, int(lab), annotated[lab]) for lab in result.lost]
        lost_txt = ", ".join(f"{lab} ({c})" for _, lab, c in self.last_lost[:10])
        self._status(
            f"{entry.name}: kept {result.n_kept} of {len(annotated)} annotations after the labels changed"
            + (
                f"; lost: {lost_txt}"
                + (" …" if len(self.last_lost) > 10 else "")
                + " (kept as x marks; they come back when a segmentation has their cells)"
                if self.last_lost
                else "."
            )
            + (f" {len(back)} annotation(s) lost earlier came back." if back else "")
        )
        if self.current is not None and self.current[0] == entry.key:
            self.clear_proposal()
        self.events.lost.emit()
        self.events.annotations.emit((entry.key,))
        self._inputs_changed([entry.key], tables=True)
        return result

    # ---- classes -----------------------------------------------------------------------
    def add_class(self, name: str, color: str | None = None) -> None:
        self.store.add_class(name, color)
        self.events.classes.emit()
        self.events.annotations.emit(tuple(self.images))

    def rename_class(self, old: str, new: str) -> None:
        self.store.rename_class(old, new)
        self.events.annotations.emit(tuple(self.images))
        self._inputs_changed()

    def recolor_class(self, name: str, color: str) -> None:
        self.store.recolor_class(name, color)
        self.events.classes.emit()
        self.events.annotations.emit(tuple(self.images))

    def delete_class(self, name: str) -> int:
        """Delete a class and its annotations; returns how many went with it."""
        n = self.store.remove_class(name)
        self.events.annotations.emit(tuple(self.images))
        self._inputs_changed()
        return n

    def annotated_counts(self) -> dict[str, int]:
        """Annotations per class, of the open images only."""
        return self.store.counts(images=list(self.images))

    def predicted_counts(self) -> dict[str, int]:
        """Predicted cells per class (of the open images)."""
        counts: dict[str, int] = {}
        if self.result is None or self.result.task != "classification":
            return counts
        for key, pred in self.result.predictions.items():
            if key in self.images:
                for c, n in pred["pheno_class"].value_counts().items():
                    counts[str(c)] = counts.get(str(c), 0) + int(n)
        return counts

    # ---- answers -----------------------------------------------------------------------
    def _check_cell(self, key: str, label: int) -> ImageEntry:
        entry = self.images.get(str(key))
        if entry is None or not entry.has(int(label)):
            name = entry.name if entry is not None else key
            raise LookupError(f"Cell {label} has no measurements; measure {name} first.")
        return entry

    def _answered_current(self, key: str, label: int, answered: bool) -> None:
        if self.current == (str(key), int(label)):
            self._advance = self.auto_next and answered

    def annotate(self, key: str, label: int, cls: str | None) -> str:
        """Give a cell a class (``None`` clears it); returns what happened, in words.

        Raises
        ------
        LookupError
            When the cell is not in a measured image of the session.
        ValueError
            For a class the session does not have.
        """
        self._check_cell(key, label)
        shape = None if cls is None else self.shape_of(key, int(label))
        self.store.annotate(str(key), int(label), cls, shape=shape)
        what = "cleared" if cls is None else f"→ {cls}"
        self._answered_current(key, label, cls is not None)
        self._after_answer(key, label, cls, what)
        return what

    def set_value(self, key: str, label: int, value: float | None) -> str:
        """Give a cell a phenotype value (``None`` clears it); returns what happened."""
        self._check_cell(key, label)
        shape = None if value is None else self.shape_of(key, int(label))
        self.store.set_value(str(key), int(label), None if value is None else float(value), shape=shape)
        what = "cleared" if value is None else f"= {float(value):.3g}"
        self._answered_current(key, label, value is not None)
        self._after_answer(key, label, None, what)
        return what

    def _after_answer(self, key: str, label: int, cls: str | None, what: str) -> None:
        self._remove_from_queue(str(key), int(label))
        self.events.answered.emit(str(key), int(label), cls, what)
        self.events.annotations.emit((str(key),))
        self._inputs_changed()

    def press(self, key: str, label: int, number: int) -> str:
        """What key ``number`` does to a cell: 1-9 give the n-th class (in value mode a
        value from the range's start to its end), 0 clears. Returns what happened."""
        if self.task == "regression":
            if number == 0:
                return self.set_value(key, label, None)
            lo, hi = self.loop.value_range
            return self.set_value(key, label, lo + (number - 1) / 8 * (hi - lo))
        if number == 0:
            return self.annotate(key, label, None)
        classes = self.classes
        if number > len(classes):
            raise ValueError(f"There is no class {number}; add classes first.")
        return self.annotate(key, label, classes[number - 1])

    def toggle(self, key: str, label: int, cls: str) -> str:
        """A click in click mode: give the cell ``cls``, or clear it when it has it."""
        return self.annotate(key, label, None if self.store.get(str(key), int(label)) == cls else cls)

    def annotate_many(self, key: str, labels: Sequence[int], cls: str | None) -> int:
        """Give many cells one class at once (a lasso in the Plots dock); ``None`` clears
        them. Saved once, retrained once. Returns how many changed."""
        self.entry(key)
        shapes = None
        if cls is not None:
            shapes = {int(lab): sh for lab in labels if (sh := self.shape_of(key, int(lab))) is not None}
        n = self.store.annotate_many(str(key), list(labels), cls, shapes=shapes)
        for lab in labels:
            self._remove_from_queue(str(key), int(lab))
        self.events.annotations.emit((str(key),))
        self._inputs_changed()
        return n

    def exclude(self, key: str, label: int, excluded: bool | None = None) -> str | None:
        """Exclude a cell (debris, a half cell) from proposals and training;
        ``excluded=None`` toggles. Returns what happened, or ``None`` for no change."""
        self._check_cell(key, label)
        now = self.store.is_excluded(str(key), int(label))
        if excluded is None:
            excluded = not now
        if excluded == now:
            return None
        if excluded:
            self.store.exclude(str(key), int(label), shape=self.shape_of(key, int(label)))
            what = "excluded (X again takes it back)"
        else:
            self.store.annotate(str(key), int(label), None)
            what = "taken back in"
        self._answered_current(key, label, bool(excluded))
        self._after_answer(key, label, None, what)
        return what

    def _after_history(self) -> None:
        self.events.lost.emit()
        self.events.annotations.emit(tuple(self.images))
        self._inputs_changed()

    def undo(self) -> bool:
        """Take back the last annotation change."""
        if not self.store.undo():
            self._status("Nothing to undo.")
            return False
        self._after_history()
        self._status(f"Undone ({len(self.store)} annotations now).")
        return True

    def redo(self) -> bool:
        """Do again what :meth:`undo` took back."""
        if not self.store.redo():
            self._status("Nothing to redo.")
            return False
        self._after_history()
        self._status(f"Redone ({len(self.store)} annotations now).")
        return True

    def reattach_lost(self) -> int:
        """Put every lost annotation on the cell now under its point; returns how many."""
        done = 0
        for key, entry in self.images.items():
            data = entry.labels
            if data is None:
                continue
            for record in self.store.lost(key):
                c = record.centroid
                if c is None or len(c) != data.ndim:
                    continue
                idx = tuple(min(max(round(v), 0), n - 1) for v, n in zip(c, data.shape, strict=True))
                label = int(data[idx])
                if label > 0 and self.store.attach_lost(record, label):
                    done += 1
        if done:
            self._after_history()
        self._status(f"Re-attached {done} lost annotation(s)." if done else "No cell under the lost points.")
        return done

    def attach(self, record: LostAnnotation, label: int) -> bool:
        """Put one lost annotation on cell ``label`` of its image (a user's click)."""
        if not self.store.attach_lost(record, int(label)):
            return False
        self._after_history()
        return True

    # ---- task and settings -------------------------------------------------------------
    def set_task(self, task: str) -> None:
        """Classes or values: what the keys give and what the model learns."""
        if task not in TASKS:
            raise ValueError(f"Unknown task {task!r}; choose one of {', '.join(TASKS)}.")
        if task == self.task:
            return
        self.task = task
        self._save_settings()
        self.clear_derived()
        self.events.task.emit(task)
        self.events.annotations.emit(tuple(self.images))
        self._inputs_changed()

    def configure(self, **changes: Any) -> None:
        """Change the loop's settings (fields of :class:`LoopSettings`); kept in the session file.

        Raises
        ------
        ValueError
            For a setting that is not valid (says which and what is allowed).
        """
        if "feature_groups" in changes and changes["feature_groups"] is not None:
            changes["feature_groups"] = tuple(changes["feature_groups"])
        if "value_range" in changes:
            changes["value_range"] = tuple(changes["value_range"])
        loop = replace(self.loop, **changes)
        if loop == self.loop:
            return
        learns = {k for k in asdict(loop) if getattr(loop, k) != getattr(self.loop, k)} - {
            "strategy",
            "value_range",
        }
        self.loop = loop
        self._save_settings()
        if "value_range" in changes:
            self.events.annotations.emit(tuple(self.images))  # the value colour map spans it
        if learns:
            self._inputs_changed()

    def _save_settings(self) -> None:
        settings = self.loop.to_json(self.task)
        if settings != self.store.settings:
            self.store.settings = settings
            if self.store.path is not None:
                self.store.autosave()

    def _restore_settings(self, settings: Mapping[str, Any]) -> None:
        self.loop = LoopSettings.from_json(settings)
        task = settings.get("task")
        if task in TASKS and task != self.task:
            self.task = str(task)
            self.events.task.emit(self.task)
        self.events.settings.emit()

    def model_settings(self, live: bool = False) -> Any:
        """The classifier (or regressor) settings of a training pass; ``live``: the
        fast pass after each answer (a forest of at most :data:`LIVE_TREES` trees)."""
        loop = self.loop
        if self.task == "regression":
            from .regression import REGRESSORS, RegressorSettings

            kind = loop.classifier if loop.classifier in REGRESSORS else "random_forest"
            return RegressorSettings(kind=kind, feature_groups=loop.feature_groups, seed=loop.seed)  # type: ignore[arg-type]
        trees = min(loop.trees, LIVE_TREES) if live and loop.classifier == "random_forest" else loop.trees
        return ClassifierSettings(
            kind=loop.classifier,  # type: ignore[arg-type]
            feature_groups=loop.feature_groups,
            trees=trees,
            seed=loop.seed,
        )

    def is_live_cut(self) -> bool:
        """Whether a live pass trains less than the full model (a cut forest)."""
        return self.model_settings(live=True) != self.model_settings()

    # ---- training ----------------------------------------------------------------------
    def training_inputs(self) -> tuple[dict[str, pd.DataFrame], dict[str, dict[int, Any]]]:
        """Image key -> table, and image key -> answers (classes, or values in value mode)."""
        tables = {k: e.table for k, e in self.images.items()}
        return tables, {k: self._answers(k) for k in tables}

    def ready_to_train(self) -> str | None:
        """Why training cannot start yet (``None`` when it can)."""
        tables, answers = self.training_inputs()
        if not tables:
            return "Segment and measure an image first."
        n = sum(len(a) for a in answers.values()) + (len(self.extra[1]) if self.extra is not None else 0)
        if self.task == "regression":
            return None if n >= 3 else "Give at least 3 cells a value to train."
        present = {c for a in answers.values() for c in a.values()}
        if self.extra is not None:
            present |= {str(c) for c in self.extra[1]}
        return None if len(present) >= 2 else "Annotate cells of at least two classes to train."

    def iter_train(self, full: bool = True, n_jobs: int = -1) -> Generator[Progress, None, TrainResult]:
        """A progress generator that trains on the answers and predicts every cell of
        every image; it returns a :class:`~.engine.TrainResult` for :meth:`apply_result`.

        The inputs are taken when this is called (on the caller's thread), so the session
        may change while the generator runs elsewhere; :meth:`apply_result` refuses a
        result that the changes since made wrong. ``full=False`` is the live pass.

        Raises
        ------
        ValueError
            When training cannot start yet (says why: :meth:`ready_to_train`).
        """
        why = self.ready_to_train()
        if why is not None:
            raise ValueError(why)
        tables, answers = self.training_inputs()
        return self._train(
            tables, answers, self.model_settings(live=not full), self.task, self.extra, self._version, n_jobs
        )

    def _train(
        self,
        tables: dict[str, pd.DataFrame],
        answers: dict[str, dict[int, Any]],
        settings: Any,
        task: str,
        extra: Any,
        version: int,
        n_jobs: int,
    ) -> Generator[Progress, None, TrainResult]:
        result = yield from iter_train_predict(
            tables, answers, settings, task=task, cache=self.cache, n_jobs=n_jobs, extra=extra
        )
        result.version = version
        return result

    def apply_result(self, result: TrainResult) -> bool:
        """Take a finished training pass as the current model; returns whether it was taken.

        A result of the other task, or one trained while training became impossible (every
        annotation undone), is refused; predictions of images that left or were measured
        again since are dropped.
        """
        if result.task != self.task or self.ready_to_train() is not None:
            return False
        result.predictions = {
            k: p
            for k, p in result.predictions.items()
            if k in self.images
            and len(p) == len(self.images[k].table)
            and p.index.equals(self.images[k].table.index)
        }
        self.result = result
        self.events.predictions.emit()
        self.events.annotations.emit(tuple(self.images))
        self.events.classes.emit()
        self.events.quality.emit()  # the importances came with the model
        return True

    def is_current(self, result: TrainResult) -> bool:
        """Whether ``result`` was trained on the inputs as they are now."""
        return result.version == self._version

    def iter_quality(self, folds: int = 5) -> Generator[Progress, None, tuple[int, dict[str, Any] | None]]:
        """A progress generator that cross-validates the answers (inputs taken now, as
        :meth:`iter_train` does); it returns ``(version, quality)`` for
        :meth:`apply_quality` (``quality`` is ``None`` while too few cells are answered)."""
        tables, answers = self.training_inputs()
        gen = iter_quality(
            tables, answers, self.model_settings(), task=self.task, folds=folds, extra=self.extra
        )
        return self._versioned(gen, self._version)

    @staticmethod
    def _versioned(gen: Generator[Progress, None, Any], version: int) -> Generator[Progress, None, Any]:
        out = yield from gen
        return version, out

    def apply_quality(self, outcome: tuple[int, dict[str, Any] | None]) -> bool:
        """Take a cross-validation's outcome, unless the inputs changed since it started."""
        version, quality = outcome
        if version != self._version:
            return False
        self.quality = quality
        if isinstance(quality, dict) and isinstance(quality.get("confusion"), pd.DataFrame):
            n = int(quality["confusion"].to_numpy().sum())  # the cells cross-validated
            self.learning_records.append((n, float(quality["accuracy"])))
            if "balanced_accuracy" in quality:
                self.balanced_records.append((n, float(quality["balanced_accuracy"])))
        self.events.quality.emit()
        return True

    def quality_text(self) -> str:
        """The quality in words, for the dock and the command line."""
        q = self.quality
        if self.result is None and q is None:
            return self.ready_to_train() or ""
        if q is None:
            return (
                "Cross-validation needs 2 annotated cells of each class"
                if self.task == "classification"
                else "Cross-validation needs at least 5 cells with a value."
            )
        if "r2" in q:
            return f"{q['folds']}-fold CV: R² {q['r2']:.2f}, MAE {q['mae']:.3g}, RMSE {q['rmse']:.3g}"
        pr = "; ".join(f"{c}: P {q['precision'][c]:.2f} R {q['recall'][c]:.2f}" for c in q["precision"])
        return (
            f"{q['folds']}-fold CV accuracy {q['accuracy']:.2f}, "
            f"balanced accuracy {q['balanced_accuracy']:.2f}. {pr}"
        )

    # ---- proposals ---------------------------------------------------------------------
    def proposals(self, k: int = 1, diverse: bool = False, pool_factor: int = 10) -> list[Proposal]:
        """The best cells to answer next, from the latest predictions (``diverse``: a batch
        spread by k-means over the ``pool_factor * k`` most informative cells)."""
        if self.result is None:
            return []
        tables = {key: e.table for key, e in self.images.items()}
        answered = {key: {*self._answers(key), *self.store.excluded(key)} for key in tables}
        # cells cut by the image border are a poor example: proposed only when nothing else is left
        avoid = {
            key: border_labels(e.table, e.labels.shape)
            for key, e in self.images.items()
            if e.labels is not None
        }
        strategy = self.loop.strategy
        return propose(
            tables,
            self.result.predictions,
            answered,
            avoid=avoid,
            strategy=strategy,
            k=k,
            diverse=diverse,
            feature_names=self.result.feature_names if diverse or strategy == "density" else None,
            pool_factor=pool_factor,
        )

    def next_proposal(self) -> Proposal | None:
        """Propose the most informative unanswered cell (``current``); ``None`` if none."""
        self._advance = False
        if self.result is None:
            self._status(self.ready_to_train() or "Training… the proposal follows when it finishes.")
            return None
        found = self.proposals(1)
        if not found:
            self._status("Every cell is annotated.")
            self.clear_proposal()
            return None
        self.propose_cell(found[0])
        return found[0]

    def propose_cell(self, proposal: Proposal) -> None:
        """Make ``proposal`` the current cell (a queue item was chosen)."""
        if proposal.image not in self.images:
            return
        self.current = (proposal.image, int(proposal.label))
        self.events.proposal.emit()
        name = self.images[proposal.image].name
        guess = f", predicted {proposal.predicted}" if proposal.predicted else ""
        self._status(
            f"Proposed: {name} cell {proposal.label}{guess} (score {proposal.score:.2f}). Press its class key."
        )

    def wants_next(self) -> bool:
        """Whether the current proposal was answered and the next one is due."""
        return self._advance

    def ask_next(self) -> None:
        """Propose a cell as soon as a model is there (*Next cell* before the first one)."""
        self._advance = True

    def fill_queue(self, k: int = 10) -> list[Proposal]:
        """The top ``k`` proposals as a diverse batch to work through."""
        self.queue = self.proposals(k, diverse=True)
        self.events.queue.emit()
        if not self.queue:
            self._status(self.ready_to_train() or "Nothing to propose.")
        return list(self.queue)

    def _remove_from_queue(self, key: str, label: int) -> None:
        keep = [p for p in self.queue if (p.image, p.label) != (key, label)]
        if len(keep) != len(self.queue):
            self.queue = keep
            self.events.queue.emit()

    # ---- what a table shows ------------------------------------------------------------
    def pheno_frame(self, key: str) -> pd.DataFrame:
        """The ``pheno_*`` columns of an image's table (same index): its annotations,
        exclusions, values and the current predictions."""
        entry = self.entry(key)
        table = entry.table
        out = pd.DataFrame(index=table.index)
        labels = table["label"].to_numpy()
        out["pheno_annotation"] = annotation_column(labels, self.store.annotations(entry.key), self.classes)
        excluded = self.store.excluded(entry.key)
        if excluded:
            out["pheno_excluded"] = np.isin(labels, np.fromiter(excluded, dtype=np.int64))
        values = self.store.values(entry.key)
        if values or self.task == "regression":
            out["pheno_value_annotation"] = np.array(
                [values.get(int(lab), np.nan) for lab in labels], dtype=float
            )
        pred = self.result.predictions.get(entry.key) if self.result is not None else None
        if pred is not None and len(pred) == len(table) and pred.index.equals(table.index):
            out = pd.concat([out, pred.drop(columns=[c for c in out.columns if c in pred.columns])], axis=1)
            if excluded and "pheno_class" in out:  # debris gets no phenotype (nor a colour)
                out["pheno_class"] = out["pheno_class"].where(~out["pheno_excluded"])
        return out

    def confused_cells(self, true: str, predicted: str) -> list[tuple[str, int]]:
        """The annotated cells of class ``true`` that the cross-validation called
        ``predicted`` (one cell of the confusion matrix), as ``(key, label)``; empty
        without a cross-validation. ``true == predicted`` gives the ones it got right."""
        q = self.quality or {}
        cells, truth, pred = q.get("cells") or [], q.get("truth") or [], q.get("predicted") or []
        return [
            (str(c[0]), int(c[1]))
            for c, t, p in zip(cells, truth, pred, strict=False)
            if c is not None and t == true and p == predicted and str(c[0]) in self.images
        ]

    def review(self, true: str, predicted: str) -> list[tuple[str, int]]:
        """Ask the views to show :meth:`confused_cells` (the Gallery does)."""
        cells = self.confused_cells(true, predicted)
        self.events.review.emit(str(true), str(predicted))
        what = "right" if true == predicted else f"called {predicted}"
        self._status(f"{len(cells)} cells annotated {true} that the cross-validation {what}.")
        return cells

    def explain(self, key: str, label: int) -> Any:
        """Why the current model gives cell ``label`` of image ``key`` its class: a
        :class:`~napari_phenotyper.core.classify.explain.CellExplanation` (``None``
        without a classifier, in value mode, or for a cell it cannot see)."""
        from .explain import explain_cell

        model = self.result.model if self.result is not None and self.task == "classification" else None
        entry = self.images.get(str(key))
        if model is None or entry is None or not entry.has(int(label)) or not hasattr(model, "classes"):
            return None
        try:
            return explain_cell(model, entry.table, int(label))
        except (KeyError, ValueError):
            return None

    def predicted_class(self, key: str, label: int) -> str | None:
        """The class predicted for one cell, if any."""
        pred = self.result.predictions.get(key) if self.result is not None else None
        if pred is None or "pheno_class" not in pred:
            return None
        table = self.images[key].table
        row = np.flatnonzero(table["label"].to_numpy() == int(label))
        if not len(row) or len(pred) != len(table):
            return None
        guess = pred["pheno_class"].iloc[int(row[0])]
        return None if pd.isna(guess) else str(guess)

    # ---- files -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Save the session to ``path`` and keep autosaving there."""
        self.store.settings = self.loop.to_json(self.task)
        self.store.path = Path(path)
        return self.store.save(path)

    def open(self, path: str | os.PathLike) -> str:
        """Restore classes, annotations and settings from a session file (and keep
        autosaving to it); the open images' annotations are checked against their cells
        by geometry. Returns a summary.

        Raises
        ------
        ValueError
            If the file is not a session file (says what is wrong).
        """
        self.store = AnnotationStore.load(path)
        self.extra = None
        self._restore_settings(dict(self.store.settings))
        self.clear_derived()
        missing = [k for k in self.store.images if k not in self.images]
        reports = []
        for key, entry in self.images.items():
            if entry.labels is None:
                continue
            report = self.store.reconcile(key, entry.labels, entry.areas())
            if report.changed or report.kept:
                reports.append(f"{entry.name}: {report.summary()}")
        self.store.clear_history()  # opening is not a change to take back
        summary = (
            f"Session {Path(path).name}: {len(self.store)} annotations"
            + (" (" + "; ".join(reports) + ")" if reports else "")
            + (f"; open these images to see the rest: {', '.join(missing)}" if missing else "")
        )
        self.events.lost.emit()
        self.events.annotations.emit(tuple(self.images))
        self._inputs_changed()
        self._status(summary)
        return summary

    def save_classifier(self, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> Path:
        """Save the training set and settings (pickle-free, see :mod:`...io.classifier_io`);
        ``metadata`` goes into the file as it is (e.g. where the cells came from)."""
        from ...io.classifier_io import save_classifier

        if self.task != "classification":
            raise ValueError("Saving is for classifiers; switch to Classes.")
        settings = self.model_settings()
        tables, answers = self.training_inputs()
        names = common_feature_columns(tables, settings.feature_groups)
        X, y, _ = training_set(tables, answers, names)
        if len(set(y)) < 2:
            raise ValueError("Annotate cells of at least two classes before saving a classifier.")
        pool = unlabelled_pool(tables, answers, names, settings) if settings.kind == "self_trained" else None
        return save_classifier(
            path, X, y, names, settings, colors=self.colors(), metadata=dict(metadata or {}), unlabelled=pool
        )

    def load_classifier(self, path: str | os.PathLike, channel_map: Mapping[str, str] | None = None) -> str:
        """Use a saved classifier (or regressor) on every image; returns a summary.

        Its training set joins the session's answers in every later retrain, so answering
        more refines it. Its channels pair with the images' channels of the same name, or
        with the only channel when both have one; ``channel_map`` (classifier channel ->
        the cells' channel) pairs the rest.

        Raises
        ------
        ChannelMismatch
            When a classifier channel has no partner and ``channel_map`` does not give one.
        ValueError
            For a file that is not a classifier, or cells measured differently.
        """
        from ...io.classifier_io import load_classifier
        from .model import check_columns

        loaded = load_classifier(path)
        entries = list(self.images.values())
        if entries:
            first = entries[0].table
            common = [str(c) for c in first.columns if all(c in e.table.columns for e in entries[1:])]
            loaded = loaded.for_columns(common, channel_map)
        for e in entries:
            try:
                check_columns(loaded.feature_names, e.table)
            except ValueError as exc:
                raise ValueError(f"{e.name}: {exc}") from None
        renamed = loaded.metadata.get("channel_map") or {}
        known = set(self.classes)
        # the saved colours keep the order the classes had in their session
        for name in dict.fromkeys([*loaded.colors, *loaded.classes]):
            if name in loaded.classes and name not in known:
                self.store.add_class(name, loaded.colors.get(name))
        s = loaded.settings
        changes: dict[str, Any] = {"feature_groups": s.get("feature_groups")}
        if s.get("kind") in CLASSIFIERS and not loaded.is_regression:
            changes["classifier"] = s["kind"]
        if "trees" in s:
            changes["trees"] = int(s["trees"])
        task = "regression" if loaded.is_regression else "classification"
        if task != self.task:
            self.task = task
            self.clear_derived()
            self.events.task.emit(task)
        self.loop = replace(self.loop, **changes)
        self._save_settings()
        self.extra = loaded.training_table()
        self.events.settings.emit()
        pairs = "".join(f"; its {k!r} read from {v!r}" for k, v in renamed.items())
        summary = (
            f"Loaded {Path(path).name}: {len(self.extra[1])} training cells{pairs}; predicting every cell…"
        )
        self.events.annotations.emit(tuple(self.images))
        self._inputs_changed()
        self._status(summary)
        return summary
