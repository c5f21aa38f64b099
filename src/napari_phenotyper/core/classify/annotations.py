"""Phenotype classes and per-cell annotations, saved after every change.

The store is the widget's session state (never a module-level singleton). Cells are
keyed by ``(image key, label id)``; an image key is any stable string, typically the
image file path or the layer's id. With a ``path``, every change is written atomically
to a JSON session file, so a crash loses nothing.

Label ids mean nothing across segmentations, so each annotation also keeps its cell's
geometry (:mod:`.geometry`): a session restored onto another segmentation of the image
is put back by overlap (:meth:`AnnotationStore.reconcile`), and an annotation whose cell
is gone is kept as a *lost* record with its position, re-attached when a later
segmentation has a cell there. Every change can be undone (:meth:`AnnotationStore.undo`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ...io.atomic import atomic_write_text
from .geometry import CellShape, match_shape
from .transfer import TransferResult

__all__ = [
    "EXCLUDED",
    "SESSION_FORMAT",
    "UNDO_STEPS",
    "AnnotationStore",
    "LostAnnotation",
    "PhenotypeClass",
    "ReconcileReport",
    "file_sha256",
]

SESSION_FORMAT = "napari-phenotyper-session"
_SESSION_VERSION = 2
_READABLE_VERSIONS = (1, 2)
#: Changes that :meth:`AnnotationStore.undo` can take back.
UNDO_STEPS = 200
#: Smallest intersection over union for an annotation to follow its cell.
MIN_IOU = 0.5
_COLOR = re.compile(r"^#[0-9a-fA-F]{6}([0-9a-fA-F]{2})?$")
#: Default colours of new classes (colour-blind friendly, Okabe-Ito).
DEFAULT_COLORS = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#999999")


#: The "class" of an excluded cell (debris, a half cell, an artefact): never proposed,
#: never trained on, kept like an annotation (saved, undone, moved with its cell to
#: another segmentation). Not a class of the model and not a user's class name.
EXCLUDED = "(excluded)"


def file_sha256(path: str | os.PathLike, chunk: int = 2**20) -> str:
    """SHA-256 of a file's content (to recognise an image after it was moved or renamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class PhenotypeClass:
    """A phenotype class: a unique name and a display colour (``#rrggbb``)."""

    name: str
    color: str

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("A class needs a name.")
        if not _COLOR.match(self.color):
            raise ValueError(f"Colour {self.color!r} must look like #rrggbb.")


@dataclass(frozen=True)
class LostAnnotation:
    """An annotation whose cell no segmentation of its image has at present.

    Attributes
    ----------
    image : str
        The image key.
    label : int
        The label id the cell had when it was annotated (or last seen).
    cls : str or None
        Its class (``None`` for a value-only annotation).
    value : float or None
        Its phenotype value (regression mode), if any.
    shape : dict or None
        Its geometry (:meth:`CellShape.to_json`); ``None`` for sessions older than geometry.
    """

    image: str
    label: int
    cls: str | None = None
    value: float | None = None
    shape: dict[str, Any] | None = None

    @property
    def centroid(self) -> tuple[float, ...] | None:
        return None if self.shape is None else tuple(float(c) for c in self.shape["centroid"])

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "label": self.label,
            "class": self.cls,
            "value": self.value,
            "shape": self.shape,
        }


@dataclass(frozen=True)
class ReconcileReport:
    """What :meth:`AnnotationStore.reconcile` did to one image's annotations.

    ``kept``: still on their cell; ``moved``: old label -> new label; ``lost``: old labels
    now kept as lost records; ``reattached``: lost records put back (new labels);
    ``unchecked``: annotations without stored geometry, left where they were.
    """

    kept: int = 0
    moved: dict[int, int] = field(default_factory=dict)
    lost: list[int] = field(default_factory=list)
    reattached: list[int] = field(default_factory=list)
    unchecked: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.moved or self.lost or self.reattached)

    def summary(self) -> str:
        parts = [f"{self.kept} kept"]
        if self.moved:
            parts.append(f"{len(self.moved)} moved to the cell now there")
        if self.lost:
            parts.append(f"{len(self.lost)} lost (no cell there now; kept, shown as points)")
        if self.reattached:
            parts.append(f"{len(self.reattached)} lost ones re-attached")
        if self.unchecked:
            parts.append(f"{self.unchecked} without geometry (left by label id)")
        return ", ".join(parts)


def _shape_json(shape: CellShape | Mapping[str, Any] | None) -> dict[str, Any] | None:
    if shape is None:
        return None
    return shape.to_json() if isinstance(shape, CellShape) else dict(shape)


class AnnotationStore:
    """Classes and annotations of one session.

    Parameters
    ----------
    path : path-like, optional
        Session file written after every change (atomically). ``None`` keeps the
        store in memory only.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._classes: dict[str, PhenotypeClass] = {}
        self._cells: dict[tuple[str, int], str] = {}
        self._values: dict[tuple[str, int], float] = {}
        self._shapes: dict[tuple[str, int], dict[str, Any]] = {}  # geometry of annotated cells
        self._lost: list[LostAnnotation] = []
        self.images: dict[str, dict[str, Any]] = {}
        self.settings: dict[str, Any] = {}
        #: Why the last autosave failed (``None`` when it worked).
        self.save_error: str | None = None
        self._undo: list[tuple[Any, ...]] = []
        self._redo: list[tuple[Any, ...]] = []

    # ---- undo ------------------------------------------------------------------------
    def _state(self) -> tuple[Any, ...]:
        return (
            dict(self._classes),
            dict(self._cells),
            dict(self._values),
            dict(self._shapes),
            list(self._lost),
        )

    def _set_state(self, state: tuple[Any, ...]) -> None:
        classes, cells, values, shapes, lost = state
        self._classes, self._cells, self._values = dict(classes), dict(cells), dict(values)
        self._shapes, self._lost = dict(shapes), list(lost)

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def _rekeyed(self) -> None:
        """Cells changed their label ids: earlier undo steps would put annotations on
        whatever cells now have the old ids, so the history starts again here."""
        self.clear_history()
        self._changed()

    def clear_history(self) -> None:
        """Forget what can be undone (after opening a session: that is no change)."""
        self._undo.clear()
        self._redo.clear()

    def undo(self) -> bool:
        """Take back the last change of classes or annotations since the cells were last
        re-keyed (a transfer or reconcile); ``False`` if none."""
        if not self._undo:
            return False
        self._redo.append(self._state())
        self._set_state(self._undo.pop())
        self._changed()
        return True

    def redo(self) -> bool:
        """Do again what :meth:`undo` took back; ``False`` if nothing."""
        if not self._redo:
            return False
        self._undo.append(self._state())
        self._set_state(self._redo.pop())
        self._changed()
        return True

    # ---- classes ---------------------------------------------------------------------
    @property
    def classes(self) -> list[PhenotypeClass]:
        """Classes in creation order."""
        return list(self._classes.values())

    def add_class(self, name: str, color: str | None = None) -> PhenotypeClass:
        """Add a class (a default colour when none is given)."""
        if name == EXCLUDED:
            raise ValueError(f"{EXCLUDED!r} is reserved for excluded cells (key X); choose another name.")
        if name in self._classes:
            raise ValueError(f"There is already a class named {name!r}.")
        color = color or DEFAULT_COLORS[len(self._classes) % len(DEFAULT_COLORS)]
        cls = PhenotypeClass(name, color)
        before = self._state()
        self._classes[name] = cls
        self._changed(before)
        return cls

    def rename_class(self, old: str, new: str) -> None:
        """Rename a class; its annotations follow."""
        self._require(old)
        if new in self._classes and new != old:
            raise ValueError(f"There is already a class named {new!r}.")
        cls = PhenotypeClass(new, self._classes[old].color)
        before = self._state()
        self._classes = {(new if k == old else k): (cls if k == old else v) for k, v in self._classes.items()}
        self._cells = {key: (new if c == old else c) for key, c in self._cells.items()}
        self._lost = [replace(r, cls=new) if r.cls == old else r for r in self._lost]
        self._changed(before)

    def recolor_class(self, name: str, color: str) -> None:
        """Change a class's colour."""
        self._require(name)
        cls = PhenotypeClass(name, color)
        before = self._state()
        self._classes[name] = cls
        self._changed(before)

    def remove_class(self, name: str) -> int:
        """Delete a class and its annotations; returns how many annotations were removed
        (the GUI asks for confirmation when that is not zero)."""
        self._require(name)
        n = self.count(name)
        before = self._state()
        del self._classes[name]
        self._cells = {k: c for k, c in self._cells.items() if c != name}
        self._drop_unused_shapes()
        self._lost = [r for r in self._lost if r.cls != name or r.value is not None]
        self._lost = [replace(r, cls=None) if r.cls == name else r for r in self._lost]
        self._changed(before)
        return n

    def _require(self, name: str) -> None:
        if name not in self._classes and name != EXCLUDED:
            raise KeyError(
                f"No class named {name!r}; the classes are: {', '.join(self._classes) or 'none yet'}."
            )

    # ---- annotations -----------------------------------------------------------------
    def annotate(
        self,
        image: str,
        label: int,
        class_name: str | None,
        shape: CellShape | Mapping[str, Any] | None = None,
    ) -> None:
        """Give cell ``label`` of ``image`` a class (``None`` clears it).

        ``shape`` is the cell's geometry (:func:`~.geometry.cell_shape`), kept so that the
        annotation can follow its cell to another segmentation.
        """
        key = (str(image), int(label))
        if key[1] <= 0:
            raise ValueError("Background (label 0) cannot be annotated.")
        before = self._state()
        if class_name is None:
            if self._cells.pop(key, None) is not None:
                self._drop_unused_shapes()
                self._changed(before)
            return
        self._require(class_name)
        if self._cells.get(key) != class_name:
            self._cells[key] = class_name
            if shape is not None:
                self._shapes[key] = _shape_json(shape)  # type: ignore[assignment]
            self._changed(before)

    def annotate_many(
        self,
        image: str,
        labels: Iterable[int],
        class_name: str | None,
        shapes: Mapping[int, CellShape | Mapping[str, Any]] | None = None,
    ) -> int:
        """Give many cells of ``image`` one class (``None`` clears them), saved once and
        undone at once. ``shapes``: label -> geometry. Returns how many changed."""
        if class_name is not None:
            self._require(class_name)
        before = self._state()
        changed = 0
        for label in labels:
            key = (str(image), int(label))
            if key[1] <= 0:
                raise ValueError("Background (label 0) cannot be annotated.")
            if class_name is None:
                changed += self._cells.pop(key, None) is not None
            elif self._cells.get(key) != class_name:
                self._cells[key] = class_name
                if shapes is not None and int(label) in shapes:
                    self._shapes[key] = _shape_json(shapes[int(label)])  # type: ignore[assignment]
                changed += 1
        if changed:
            self._drop_unused_shapes()
            self._changed(before)
        return changed

    def set_value(
        self, image: str, label: int, value: float | None, shape: CellShape | Mapping[str, Any] | None = None
    ) -> None:
        """Give cell ``label`` of ``image`` a continuous phenotype value (``None`` clears it).

        Values (regression mode, e.g. cell-cycle progression) are kept apart from
        class annotations; a cell may have both.
        """
        key = (str(image), int(label))
        if key[1] <= 0:
            raise ValueError("Background (label 0) cannot be annotated.")
        before = self._state()
        if value is None:
            if self._values.pop(key, None) is not None:
                self._drop_unused_shapes()
                self._changed(before)
            return
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"A phenotype value must be a finite number, not {value}.")
        if self._values.get(key) != value:
            self._values[key] = value
            if shape is not None:
                self._shapes[key] = _shape_json(shape)  # type: ignore[assignment]
            self._changed(before)

    def _drop_unused_shapes(self) -> None:
        self._shapes = {k: v for k, v in self._shapes.items() if k in self._cells or k in self._values}

    def shape(self, image: str, label: int) -> CellShape | None:
        """The stored geometry of an annotated cell (``None`` when unknown)."""
        data = self._shapes.get((str(image), int(label)))
        return None if data is None else CellShape.from_json(data)

    def get_value(self, image: str, label: int) -> float | None:
        return self._values.get((str(image), int(label)))

    def values(self, image: str) -> dict[int, float]:
        """Label id -> value of the cells of ``image`` that were given one."""
        image = str(image)
        return {lab: v for (img, lab), v in self._values.items() if img == image}

    @property
    def n_values(self) -> int:
        return len(self._values)

    def get(self, image: str, label: int) -> str | None:
        return self._cells.get((str(image), int(label)))

    def annotations(self, image: str) -> dict[int, str]:
        """Label id -> class of the annotated cells of ``image`` (excluded cells are not
        annotations: see :meth:`excluded`)."""
        image = str(image)
        return {lab: c for (img, lab), c in self._cells.items() if img == image and c != EXCLUDED}

    def exclude(self, image: str, label: int, shape: CellShape | Mapping[str, Any] | None = None) -> None:
        """Exclude a cell (debris, a cell cut in half): it is never proposed and never
        trained on; its class annotation, if any, is replaced. Undone like an annotation;
        :meth:`annotate` with ``None`` takes it back in. A value it was given is dropped
        too (one undo step)."""
        key = (str(image), int(label))
        if key[1] <= 0:
            raise ValueError("Background (label 0) cannot be excluded.")
        if self._cells.get(key) == EXCLUDED and key not in self._values:
            return
        before = self._state()
        self._cells[key] = EXCLUDED
        self._values.pop(key, None)
        if shape is not None:
            self._shapes[key] = _shape_json(shape)  # type: ignore[assignment]
        self._changed(before)

    def excluded(self, image: str) -> set[int]:
        """Label ids of the excluded cells of ``image``."""
        image = str(image)
        return {lab for (img, lab), c in self._cells.items() if img == image and c == EXCLUDED}

    def is_excluded(self, image: str, label: int) -> bool:
        return self._cells.get((str(image), int(label))) == EXCLUDED

    @property
    def n_excluded(self) -> int:
        return sum(1 for c in self._cells.values() if c == EXCLUDED)

    def __iter__(self) -> Iterator[tuple[str, int, str]]:
        """Every ``(image, label, class)``, the excluded cells too (class :data:`EXCLUDED`)."""
        for (img, lab), c in sorted(self._cells.items()):
            yield img, lab, c

    def __len__(self) -> int:
        """How many cells have a class annotation (excluded cells not counted)."""
        return sum(1 for c in self._cells.values() if c != EXCLUDED)

    def count(self, class_name: str) -> int:
        return sum(1 for c in self._cells.values() if c == class_name)

    def counts(self, images: Iterable[str] | None = None) -> dict[str, int]:
        """Annotations per class (every class listed, zeros included), of ``images`` only
        when given (e.g. the images open in the viewer)."""
        if images is None:
            got = Counter(self._cells.values())
        else:
            keep = {str(i) for i in images}
            got = Counter(c for (img, _), c in self._cells.items() if img in keep)
        return {name: got.get(name, 0) for name in self._classes}

    def apply_transfer(
        self,
        image: str,
        result: TransferResult,
        new_shapes: Mapping[int, CellShape | Mapping[str, Any]] | None = None,
        old_shapes: Mapping[int, CellShape | Mapping[str, Any]] | None = None,
    ) -> None:
        """Re-key ``image``'s annotations after a re-segmentation (see
        :func:`~napari_phenotyper.core.classify.transfer.transfer_annotations`).
        The undo history starts again (its steps name the old label ids).

        Annotations in ``result.lost`` are not dropped: each becomes a
        :class:`LostAnnotation` with its geometry (stored, else ``old_shapes``), shown to
        the user and re-attached by :meth:`reattach` when a later segmentation has a cell
        there. ``new_shapes`` (new label -> geometry) refreshes the moved cells' geometry.
        """
        image = str(image)
        lost = []
        for old in result.lost:
            k = (image, int(old))
            if k not in self._cells and k not in self._values:
                continue
            shape = self._shapes.get(k) or _shape_json((old_shapes or {}).get(int(old)))
            lost.append(LostAnnotation(image, int(old), self._cells.get(k), self._values.get(k), shape))
        moved = {(image, int(o)): (image, int(n)) for o, n in result.moved.items()}
        self._cells = {moved.get(k, k): c for k, c in self._cells.items() if k[0] != image or k in moved}
        self._values = {moved.get(k, k): v for k, v in self._values.items() if k[0] != image or k in moved}
        self._shapes = {moved.get(k, k): v for k, v in self._shapes.items() if k[0] != image or k in moved}
        for n, new_shape in (new_shapes or {}).items():
            if (
                (image, int(n)) in self._shapes
                or (image, int(n)) in self._cells
                or (image, int(n)) in self._values
            ):
                self._shapes[(image, int(n))] = _shape_json(new_shape)  # type: ignore[assignment]
        self._lost.extend(lost)
        self._rekeyed()

    # ---- lost annotations --------------------------------------------------------------
    def lost(self, image: str | None = None) -> list[LostAnnotation]:
        """The lost annotations (of ``image`` only when given)."""
        return [r for r in self._lost if image is None or r.image == str(image)]

    def _attach(self, record: LostAnnotation, label: int) -> bool:
        key = (record.image, int(label))
        if key in self._cells or key in self._values:
            return False
        if record.cls is not None and record.cls in self._classes:
            self._cells[key] = record.cls
        if record.value is not None:
            self._values[key] = record.value
        if record.shape is not None:
            self._shapes[key] = record.shape
        self._lost.remove(record)
        return True

    def attach_lost(self, record: LostAnnotation, label: int) -> bool:
        """Put a lost annotation on cell ``label`` of its image (a user's click).

        Returns ``False`` when that cell already has an annotation.
        """
        if int(label) <= 0 or record not in self._lost:
            return False
        before = self._state()
        if not self._attach(record, int(label)):
            return False
        self._changed(before)
        return True

    def discard_lost(self, image: str | None = None) -> int:
        """Forget lost annotations for good (undoable); returns how many."""
        n = len(self.lost(image))
        if n:
            before = self._state()
            self._lost = [r for r in self._lost if image is not None and r.image != str(image)]
            self._changed(before)
        return n

    def _reattach(self, image: str, labels: Any, areas: Mapping[int, int] | None) -> list[int]:
        done = []
        for record in self.lost(image):
            if record.shape is None:
                continue
            label, iou = match_shape(CellShape.from_json(record.shape), labels, areas)
            if label and iou >= MIN_IOU and self._attach(record, label):
                done.append(label)
        return done

    def reattach(self, image: str, labels: Any, areas: Mapping[int, int] | None = None) -> list[int]:
        """Put back every lost annotation of ``image`` that a cell of ``labels`` now
        covers (IoU >= :data:`MIN_IOU` with its stored geometry). Returns the new labels."""
        before = self._state()
        done = self._reattach(str(image), labels, areas)
        if done:
            self._changed(before)
        return done

    def reconcile(self, image: str, labels: Any, areas: Mapping[int, int] | None = None) -> ReconcileReport:
        """Check ``image``'s annotations against a segmentation by their geometry.

        Used when a session is restored or an image is measured again: an annotation
        stays if its cell is still there under the same label, moves to the label that now
        covers its cell, and becomes a lost record when no cell covers it (IoU below
        :data:`MIN_IOU`). Lost records that a cell now covers are re-attached. Annotations
        without geometry (sessions from before it was stored) are left by label id.
        """
        image = str(image)
        keys = sorted({k for k in (*self._cells, *self._values) if k[0] == image})
        before = self._state()
        kept, unchecked = 0, 0
        moved: dict[int, int] = {}
        lost: list[int] = []
        target: dict[tuple[str, int], tuple[str, int]] = {}
        taken: set[int] = set()
        for k in keys:
            data = self._shapes.get(k)
            if data is None:
                unchecked += 1
                target[k] = k
                taken.add(k[1])
                continue
            label, iou = match_shape(CellShape.from_json(data), labels, areas)
            if iou >= MIN_IOU and label not in taken:
                taken.add(label)
                target[k] = (image, label)
                if label == k[1]:
                    kept += 1
                else:
                    moved[k[1]] = label
            else:
                lost.append(k[1])
        if moved or lost:
            for k in keys:
                if k in target:
                    continue
                self._lost.append(
                    LostAnnotation(image, k[1], self._cells.get(k), self._values.get(k), self._shapes.get(k))
                )
            self._cells = {
                target.get(k, k): c for k, c in self._cells.items() if k[0] != image or k in target
            }
            self._values = {
                target.get(k, k): v for k, v in self._values.items() if k[0] != image or k in target
            }
            self._shapes = {
                target.get(k, k): v for k, v in self._shapes.items() if k[0] != image or k in target
            }
        reattached = self._reattach(image, labels, areas)
        report = ReconcileReport(kept, moved, lost, reattached, unchecked)
        if report.moved or report.lost:
            self._rekeyed()
        elif report.reattached:
            self._changed(before)
        return report

    def annotated_labels(self, image: str) -> dict[int, Any]:
        """Every annotated label of ``image`` (class or value), for transfers."""
        image = str(image)
        out: dict[int, Any] = {lab: v for (img, lab), v in self._values.items() if img == image}
        out.update({lab: c for (img, lab), c in self._cells.items() if img == image})
        return out

    def register_image(self, key: str, path: str | os.PathLike | None = None, **extra: Any) -> None:
        """Remember where an image came from (path and content hash) to restore sessions."""
        info: dict[str, Any] = dict(extra)
        if path is not None and Path(path).is_file():
            info.update(path=str(Path(path).resolve()), sha256=file_sha256(path))
        self.images[str(key)] = info
        self._changed()

    # ---- persistence -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SESSION_FORMAT,
            "version": _SESSION_VERSION,
            "classes": [{"name": c.name, "color": c.color} for c in self._classes.values()],
            "annotations": [{"image": i, "label": lab, "class": c} for i, lab, c in self],
            "values": [
                {"image": i, "label": lab, "value": v} for (i, lab), v in sorted(self._values.items())
            ],
            "shapes": [
                {"image": i, "label": lab, "shape": v} for (i, lab), v in sorted(self._shapes.items())
            ],
            "lost": [r.to_json() for r in self._lost],
            "images": self.images,
            "settings": self.settings,
        }

    def _changed(self, before: tuple[Any, ...] | None = None) -> None:
        if before is not None:  # an undoable change
            self._undo.append(before)
            del self._undo[:-UNDO_STEPS]
            self._redo.clear()
        if self.path is None:
            return
        try:
            self.save(self.path)
        except OSError as exc:
            # the change stays in memory; the GUI reports it (a read-only or full disk must
            # not make a key press fail or lose the annotation)
            self.save_error = f"Could not autosave the session to {self.path}: {exc}"
        else:
            self.save_error = None

    def autosave(self) -> None:
        """Save to :attr:`path` now (settings changed); a failure is kept in
        :attr:`save_error`, never raised."""
        self._changed()

    def save(self, path: str | os.PathLike) -> Path:
        """Write the session as JSON, atomically (its folder is created when missing)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # compact, so json uses its C encoder (with an indent it runs in Python): a save in
        # the 100k-cell Gallery benchmark fell from 7.3 to 2.2 ms a key press
        text = json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)
        return atomic_write_text(path, text)

    @classmethod
    def load(cls, path: str | os.PathLike, autosave: bool = True) -> AnnotationStore:
        """Read a session file (validated); with ``autosave`` keep saving to it.

        Raises
        ------
        ValueError
            If the file is not a session file or is inconsistent (says what is wrong).
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not a session file: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != SESSION_FORMAT:
            raise ValueError(f"{path} is not a napari-phenotyper session file.")
        if data.get("version") not in _READABLE_VERSIONS:
            raise ValueError(f"{path}: session version {data.get('version')!r} is not supported.")
        store = cls(None)
        try:
            for c in data["classes"]:
                store._classes[str(c["name"])] = PhenotypeClass(str(c["name"]), str(c["color"]))
            for a in data["annotations"]:
                store.annotate(str(a["image"]), int(a["label"]), str(a["class"]))
            for a in data.get("values") or []:
                store.set_value(str(a["image"]), int(a["label"]), float(a["value"]))
            for a in data.get("shapes") or []:
                CellShape.from_json(a["shape"])  # validated here, decoded when used
                key = (str(a["image"]), int(a["label"]))
                if key in store._cells or key in store._values:
                    store._shapes[key] = dict(a["shape"])
            for r in data.get("lost") or []:
                shape = r.get("shape")
                if shape is not None:
                    CellShape.from_json(shape)
                cls_name = r.get("class")
                value = r.get("value")
                store._lost.append(
                    LostAnnotation(
                        str(r["image"]),
                        int(r["label"]),
                        None if cls_name is None else str(cls_name),
                        None if value is None else float(value),
                        None if shape is None else dict(shape),
                    )
                )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: malformed session ({exc}).") from None
        store.images = dict(data.get("images") or {})
        store.settings = dict(data.get("settings") or {})
        store._undo.clear()  # loading is not a change to take back
        store.path = path if autosave else None
        return store
