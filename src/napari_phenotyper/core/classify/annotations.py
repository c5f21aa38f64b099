"""Phenotype classes and per-cell annotations, saved after every change.

The store is the widget's session state (never a module-level singleton). Cells are
keyed by ``(image key, label id)``; an image key is any stable string, typically the
image file path or the layer's id. With a ``path``, every change is written atomically
to a JSON session file, so a crash loses nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...io.atomic import atomic_write_text
from .transfer import TransferResult

__all__ = ["SESSION_FORMAT", "AnnotationStore", "PhenotypeClass", "file_sha256"]

SESSION_FORMAT = "napari-phenotyper-session"
_SESSION_VERSION = 1
_COLOR = re.compile(r"^#[0-9a-fA-F]{6}([0-9a-fA-F]{2})?$")
#: Default colours of new classes (colour-blind friendly, Okabe-Ito).
DEFAULT_COLORS = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#999999")


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
        self.images: dict[str, dict[str, Any]] = {}
        self.settings: dict[str, Any] = {}
        #: Why the last autosave failed (``None`` when it worked).
        self.save_error: str | None = None

    # ---- classes ---------------------------------------------------------------------
    @property
    def classes(self) -> list[PhenotypeClass]:
        """Classes in creation order."""
        return list(self._classes.values())

    def add_class(self, name: str, color: str | None = None) -> PhenotypeClass:
        """Add a class (a default colour when none is given)."""
        if name in self._classes:
            raise ValueError(f"There is already a class named {name!r}.")
        color = color or DEFAULT_COLORS[len(self._classes) % len(DEFAULT_COLORS)]
        cls = PhenotypeClass(name, color)
        self._classes[name] = cls
        self._changed()
        return cls

    def rename_class(self, old: str, new: str) -> None:
        """Rename a class; its annotations follow."""
        self._require(old)
        if new in self._classes and new != old:
            raise ValueError(f"There is already a class named {new!r}.")
        cls = PhenotypeClass(new, self._classes[old].color)
        self._classes = {(new if k == old else k): (cls if k == old else v) for k, v in self._classes.items()}
        self._cells = {key: (new if c == old else c) for key, c in self._cells.items()}
        self._changed()

    def recolor_class(self, name: str, color: str) -> None:
        """Change a class's colour."""
        self._require(name)
        self._classes[name] = PhenotypeClass(name, color)
        self._changed()

    def remove_class(self, name: str) -> int:
        """Delete a class and its annotations; returns how many annotations were removed
        (the GUI asks for confirmation when that is not zero)."""
        self._require(name)
        n = self.count(name)
        del self._classes[name]
        self._cells = {k: c for k, c in self._cells.items() if c != name}
        self._changed()
        return n

    def _require(self, name: str) -> None:
        if name not in self._classes:
            raise KeyError(
                f"No class named {name!r}; the classes are: {', '.join(self._classes) or 'none yet'}."
            )

    # ---- annotations -----------------------------------------------------------------
    def annotate(self, image: str, label: int, class_name: str | None) -> None:
        """Give cell ``label`` of ``image`` a class (``None`` clears it)."""
        key = (str(image), int(label))
        if key[1] <= 0:
            raise ValueError("Background (label 0) cannot be annotated.")
        if class_name is None:
            if self._cells.pop(key, None) is not None:
                self._changed()
            return
        self._require(class_name)
        if self._cells.get(key) != class_name:
            self._cells[key] = class_name
            self._changed()

    def annotate_many(self, image: str, labels: Iterable[int], class_name: str | None) -> int:
        """Give many cells of ``image`` one class (``None`` clears them), saved once.

        Returns the number of cells whose annotation changed.
        """
        if class_name is not None:
            self._require(class_name)
        changed = 0
        for label in labels:
            key = (str(image), int(label))
            if key[1] <= 0:
                raise ValueError("Background (label 0) cannot be annotated.")
            if class_name is None:
                changed += self._cells.pop(key, None) is not None
            elif self._cells.get(key) != class_name:
                self._cells[key] = class_name
                changed += 1
        if changed:
            self._changed()
        return changed

    def set_value(self, image: str, label: int, value: float | None) -> None:
        """Give cell ``label`` of ``image`` a continuous phenotype value (``None`` clears it).

        Values (regression mode, e.g. cell-cycle progression) are kept apart from
        class annotations; a cell may have both.
        """
        key = (str(image), int(label))
        if key[1] <= 0:
            raise ValueError("Background (label 0) cannot be annotated.")
        if value is None:
            if self._values.pop(key, None) is not None:
                self._changed()
            return
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"A phenotype value must be a finite number, not {value}.")
        if self._values.get(key) != value:
            self._values[key] = value
            self._changed()

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
        """Label id -> class of the annotated cells of ``image``."""
        image = str(image)
        return {lab: c for (img, lab), c in self._cells.items() if img == image}

    def __iter__(self) -> Iterator[tuple[str, int, str]]:
        for (img, lab), c in sorted(self._cells.items()):
            yield img, lab, c

    def __len__(self) -> int:
        return len(self._cells)

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

    def apply_transfer(self, image: str, result: TransferResult) -> None:
        """Re-key ``image``'s annotations after a re-segmentation (see
        :func:`~napari_phenotyper.core.classify.transfer.transfer_annotations`)."""
        image = str(image)
        kept = {
            (image, int(new)): self._cells[(image, int(old))]
            for old, new in result.moved.items()
            if (image, int(old)) in self._cells
        }
        kept_values = {
            (image, int(new)): self._values[(image, int(old))]
            for old, new in result.moved.items()
            if (image, int(old)) in self._values
        }
        self._cells = {k: c for k, c in self._cells.items() if k[0] != image}
        self._cells.update(kept)
        self._values = {k: v for k, v in self._values.items() if k[0] != image}
        self._values.update(kept_values)
        self._changed()

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
            "images": self.images,
            "settings": self.settings,
        }

    def _changed(self) -> None:
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

    def save(self, path: str | os.PathLike) -> Path:
        """Write the session as JSON, atomically (its folder is created when missing)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1, allow_nan=False))

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
        if data.get("version") != _SESSION_VERSION:
            raise ValueError(f"{path}: session version {data.get('version')!r} is not supported.")
        store = cls(None)
        try:
            for c in data["classes"]:
                store._classes[str(c["name"])] = PhenotypeClass(str(c["name"]), str(c["color"]))
            for a in data["annotations"]:
                store.annotate(str(a["image"]), int(a["label"]), str(a["class"]))
            for a in data.get("values") or []:
                store.set_value(str(a["image"]), int(a["label"]), float(a["value"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: malformed session ({exc}).") from None
        store.images = dict(data.get("images") or {})
        store.settings = dict(data.get("settings") or {})
        store.path = path if autosave else None
        return store
