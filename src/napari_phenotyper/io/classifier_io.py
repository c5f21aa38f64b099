"""Saving and loading phenotype classifiers without pickle.

A classifier file is a zip archive holding two members:

``classifier.json``
    format name and version, settings, class names and colours, feature names,
    package versions and free-form metadata (all plain JSON);
``training.npz``
    ``X`` (float64, annotated cells x features) and ``y`` (class index per cell),
    loaded with ``allow_pickle=False``.

Loading validates the schema and retrains the classifier from the stored training set
with its deterministic settings, so nothing executable is ever deserialised: a crafted
file can at worst be refused.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .atomic import atomic_write_with

__all__ = ["FORMAT", "VERSION", "ClassifierFile", "load_classifier", "save_classifier"]

FORMAT = "napari-phenotyper-classifier"
VERSION = 1
_MAX_BYTES = 512 * 2**20  # refuse absurd members (zip bombs)


@dataclass
class ClassifierFile:
    """The content of a classifier file: a training set plus everything to rebuild it."""

    classes: list[str]
    feature_names: list[str]
    X: np.ndarray
    y: np.ndarray  # class index per row
    settings: dict[str, Any]
    colors: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def training_table(self) -> tuple[pd.DataFrame, list[str]]:
        """The stored cells as a feature table and their class names."""
        return pd.DataFrame(self.X, columns=self.feature_names), [self.classes[i] for i in self.y]

    def train(self) -> Any:
        """Rebuild the :class:`~napari_phenotyper.core.classify.model.TrainedClassifier`."""
        from ..core.classify.model import ClassifierSettings, train

        settings = ClassifierSettings(
            **{**self.settings, "feature_groups": _tuple_or_none(self.settings.get("feature_groups"))}
        )
        table, labels = self.training_table()
        return train(table, labels, settings, feature_names=self.feature_names)


def _tuple_or_none(v: Any) -> tuple[str, ...] | None:
    return None if v is None else tuple(v)


def save_classifier(
    path: str | os.PathLike,
    table: pd.DataFrame,
    labels: list[Any],
    feature_names: list[str],
    settings: Any,
    colors: dict[str, str] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a classifier file (atomically).

    Parameters
    ----------
    path : path-like
        Destination (conventionally ``*.phenotyper.zip``).
    table : pandas.DataFrame
        The annotated cells, with at least ``feature_names`` columns.
    labels : list
        The class of each row.
    feature_names : list of str
        Columns the classifier uses.
    settings : ClassifierSettings
    colors : dict, optional
        Class name -> colour (hex) for display.
    metadata : dict, optional
        JSON-serialisable extras (package versions, source images...).
    """
    from ..core.pipeline import package_versions

    names = [str(v) for v in labels]
    classes = sorted(set(names))
    X = table[list(feature_names)].to_numpy(dtype=np.float64)
    y = np.asarray([classes.index(n) for n in names], dtype=np.int64)
    s = asdict(settings)
    s["feature_groups"] = None if s.get("feature_groups") is None else list(s["feature_groups"])
    header = {
        "format": FORMAT,
        "version": VERSION,
        "classes": classes,
        "colors": {c: str(v) for c, v in (colors or {}).items()},
        "feature_names": [str(c) for c in feature_names],
        "settings": s,
        "n_cells": len(names),
        "versions": package_versions(("napari-phenotyper", "numpy", "scikit-learn", "pandas")),
        "metadata": metadata or {},
    }

    def _write(tmp: Path) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, X=X, y=y)
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("classifier.json", json.dumps(header, indent=2, allow_nan=False))
            zf.writestr("training.npz", buf.getvalue())

    return atomic_write_with(path, _write)


def _bad(path: Path, why: str) -> ValueError:
    return ValueError(f"{path} is not a valid napari-phenotyper classifier file: {why}")


def _read_member(zf: zipfile.ZipFile, name: str, path: Path) -> bytes:
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise _bad(path, f"member {name!r} is missing.") from None
    if info.file_size > _MAX_BYTES:
        raise _bad(path, f"member {name!r} is implausibly large ({info.file_size} bytes).")
    return zf.read(name)


def load_classifier(path: str | os.PathLike) -> ClassifierFile:
    """Read and validate a classifier file (no pickle, no code execution).

    Raises
    ------
    ValueError
        If the file is not a classifier file, has an unknown format version, or its
        content is inconsistent (the message says what is wrong).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such classifier file: {path}")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise _bad(path, "not a zip archive.") from None
    with zf:
        try:
            header = json.loads(_read_member(zf, "classifier.json", path))
        except json.JSONDecodeError as exc:
            raise _bad(path, f"classifier.json is not JSON ({exc}).") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise _bad(path, "wrong format name.")
        if header.get("version") != VERSION:
            raise _bad(
                path,
                f"format version {header.get('version')!r} is not supported (this version reads {VERSION}); update napari-phenotyper.",
            )
        try:
            with np.load(io.BytesIO(_read_member(zf, "training.npz", path)), allow_pickle=False) as npz:
                X = np.asarray(npz["X"])
                y = np.asarray(npz["y"])
        except (ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
            raise _bad(path, f"training.npz cannot be read safely ({exc}).") from None
    classes = header.get("classes")
    features = header.get("feature_names")
    settings = header.get("settings")
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes) and len(classes) >= 2):
        raise _bad(path, "'classes' must list at least two class names.")
    if not (isinstance(features, list) and all(isinstance(c, str) for c in features) and features):
        raise _bad(path, "'feature_names' must list feature column names.")
    if not isinstance(settings, dict):
        raise _bad(path, "'settings' must be an object.")
    if X.dtype != np.float64 or X.ndim != 2 or X.shape[1] != len(features):
        raise _bad(
            path, f"X has shape {X.shape} and dtype {X.dtype}; expected float64 with {len(features)} columns."
        )
    if (
        y.dtype.kind not in "iu"
        or y.shape != (X.shape[0],)
        or (len(y) and (y.min() < 0 or y.max() >= len(classes)))
    ):
        raise _bad(path, "y must hold one class index per training row.")
    from ..core.classify.model import ClassifierSettings

    known = set(ClassifierSettings.__dataclass_fields__)
    if set(settings) - known:
        raise _bad(path, f"unknown settings {sorted(set(settings) - known)}.")
    colors = header.get("colors") or {}
    metadata = header.get("metadata")
    return ClassifierFile(
        classes=classes,
        feature_names=features,
        X=X,
        y=y.astype(np.int64),
        settings=settings,
        colors={str(k): str(v) for k, v in colors.items()} if isinstance(colors, dict) else {},
        metadata=metadata if isinstance(metadata, dict) else {},
    )
