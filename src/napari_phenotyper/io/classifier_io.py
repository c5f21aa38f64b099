"""Saving and loading phenotype classifiers and regressors without pickle.

A classifier file is a zip archive holding two members:

``classifier.json``
    format name and version, task, settings, class names and colours, feature names,
    package versions and free-form metadata (all plain JSON);
``training.npz``
    ``X`` (float64, annotated cells x features) and ``y``, loaded with
    ``allow_pickle=False``: for a classifier the class index of each cell (integers),
    for a regressor its phenotype value (float64); for a self-trained classifier also
    ``X_unlabelled`` (float64, the sample of unannotated cells it learnt from, at most
    :data:`~napari_phenotyper.core.classify.model.SELF_TRAIN_MAX_UNLABELLED`), so that
    loading rebuilds the same model.

Loading validates the schema and retrains the model from the stored training set with
its deterministic settings, so nothing executable is ever deserialised: a crafted file
can at worst be refused.

Versions: version 1 holds classifiers only and has no ``task`` (or
``"task": "classification"``); version 2 adds ``"task": "regression"``, for which
``classes`` is empty. Each file is written with the oldest version that describes it,
so classifiers saved now still open in releases that read only version 1, while
such a release refuses a regressor with a clear "version 2 is not supported" instead of
misreading it. Both versions are read.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .atomic import atomic_write_with

__all__ = [
    "FORMAT",
    "TASKS",
    "VERSION",
    "ClassifierFile",
    "load_classifier",
    "save_classifier",
    "save_regressor",
]

FORMAT = "napari-phenotyper-classifier"
#: The newest format version this module reads (and writes, for regressors).
VERSION = 2
_READABLE = (1, 2)
#: What a file's model does: assign a class, or predict a continuous value.
TASKS = ("classification", "regression")
_MAX_BYTES = 512 * 2**20  # refuse absurd members (zip bombs)


@dataclass
class ClassifierFile:
    """The content of a classifier file: a training set plus everything to rebuild it.

    Attributes
    ----------
    classes : list of str
        Class names (empty for a regressor).
    feature_names : list of str
    X : numpy.ndarray
        float64, annotated cells x features.
    y : numpy.ndarray
        Class index per row (int64), or the phenotype value per row (float64) for a regressor.
    settings : dict
        The fields of :class:`~napari_phenotyper.core.classify.model.ClassifierSettings`
        or :class:`~napari_phenotyper.core.classify.regression.RegressorSettings`.
    colors : dict
        Class name -> colour.
    metadata : dict
    task : str
        ``"classification"`` or ``"regression"``.
    X_unlabelled : numpy.ndarray or None
        float64, the unannotated cells a self-trained classifier learnt from.
    """

    classes: list[str]
    feature_names: list[str]
    X: np.ndarray
    y: np.ndarray
    settings: dict[str, Any]
    colors: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    task: str = "classification"
    X_unlabelled: np.ndarray | None = None

    @property
    def is_regression(self) -> bool:
        """Whether the file holds a regressor (continuous phenotype values)."""
        return self.task == "regression"

    @property
    def channels(self) -> list[str]:
        """The intensity channels its features were measured in (``image``, ``gfp``...)."""
        from ..core.channels import channels_of

        return channels_of(self.feature_names)

    def for_columns(
        self, columns: Sequence[str], channel_map: Mapping[str, str] | None = None
    ) -> ClassifierFile:
        """This classifier with its channels renamed to those of a table with ``columns``.

        Same-named channels pair by themselves, as do one channel on each side; give
        ``channel_map`` (classifier channel -> table channel) for the rest. The file's
        metadata records the mapping (``channel_map``) when a channel was renamed.

        Raises
        ------
        ChannelMismatch
            When a channel has no partner (carries the suggestion, for a dialog).
        ValueError
            For a ``channel_map`` that names a channel the table lacks or one twice.
        """
        from ..core.channels import rename_channels, resolve_channel_mapping

        mapping = resolve_channel_mapping(self.feature_names, [str(c) for c in columns], channel_map)
        if not mapping.renamed():
            return self
        names = rename_channels(self.feature_names, mapping)
        metadata = {**self.metadata, "channel_map": dict(mapping.renamed())}
        return dataclasses.replace(self, feature_names=names, metadata=metadata)

    def training_table(self) -> tuple[pd.DataFrame, list[Any]]:
        """The stored cells as a feature table and their class names (or values, as floats)."""
        table = pd.DataFrame(self.X, columns=self.feature_names)
        if self.is_regression:
            return table, [float(v) for v in self.y]
        return table, [self.classes[i] for i in self.y]

    def train(self) -> Any:
        """Rebuild the model from the stored training set.

        Returns
        -------
        TrainedClassifier or TrainedRegressor
            A :class:`~napari_phenotyper.core.classify.model.TrainedClassifier`, or for a
            regression file a :class:`~napari_phenotyper.core.classify.regression.TrainedRegressor`.
        """
        settings = _settings(self.task, self.settings)
        table, targets = self.training_table()
        if self.is_regression:
            from ..core.classify.regression import train_regressor

            return train_regressor(table, targets, settings, feature_names=self.feature_names)
        from ..core.classify.model import train

        pool = (
            None if self.X_unlabelled is None else pd.DataFrame(self.X_unlabelled, columns=self.feature_names)
        )
        return train(table, targets, settings, feature_names=self.feature_names, unlabelled=pool)


def _settings_class(task: str) -> Any:
    if task == "regression":
        from ..core.classify.regression import RegressorSettings

        return RegressorSettings
    from ..core.classify.model import ClassifierSettings

    return ClassifierSettings


def _settings(task: str, settings: dict[str, Any]) -> Any:
    """The settings dataclass of ``task`` from its JSON form (validated by the dataclass)."""
    groups = settings.get("feature_groups")
    return _settings_class(task)(**{**settings, "feature_groups": None if groups is None else tuple(groups)})


def _settings_json(settings: Any) -> dict[str, Any]:
    s = asdict(settings)
    s["feature_groups"] = None if s.get("feature_groups") is None else list(s["feature_groups"])
    return s


def _write(
    path: str | os.PathLike,
    header: dict[str, Any],
    X: np.ndarray,
    y: np.ndarray,
    X_unlabelled: np.ndarray | None = None,
) -> Path:
    from ..core.pipeline import package_versions

    header = {
        **header,
        "versions": package_versions(("napari-phenotyper", "numpy", "scikit-learn", "pandas")),
    }

    def _write_zip(tmp: Path) -> None:
        buf = io.BytesIO()
        if X_unlabelled is None:
            np.savez_compressed(buf, X=X, y=y)
        else:
            np.savez_compressed(buf, X=X, y=y, X_unlabelled=X_unlabelled)
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("classifier.json", json.dumps(header, indent=2, allow_nan=False))
            zf.writestr("training.npz", buf.getvalue())

    return atomic_write_with(path, _write_zip)


def save_classifier(
    path: str | os.PathLike,
    table: pd.DataFrame,
    labels: list[Any],
    feature_names: list[str],
    settings: Any,
    colors: dict[str, str] | None = None,
    metadata: dict[str, Any] | None = None,
    unlabelled: pd.DataFrame | None = None,
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
    unlabelled : pandas.DataFrame, optional
        For a ``"self_trained"`` classifier: the unannotated cells it learns from
        (at least ``feature_names`` columns).

    Returns
    -------
    pathlib.Path
        The written file (version 1, readable by every release).
    """
    names = [str(v) for v in labels]
    classes = sorted(set(names))
    X = table[list(feature_names)].to_numpy(dtype=np.float64)
    y = np.asarray([classes.index(n) for n in names], dtype=np.int64)
    header = {
        "format": FORMAT,
        "version": 1,
        "task": "classification",
        "classes": classes,
        "colors": {c: str(v) for c, v in (colors or {}).items()},
        "feature_names": [str(c) for c in feature_names],
        "settings": _settings_json(settings),
        "n_cells": len(names),
        "metadata": metadata or {},
    }
    pool = None if unlabelled is None else unlabelled[list(feature_names)].to_numpy(dtype=np.float64)
    return _write(path, header, X, y, pool)


def save_regressor(
    path: str | os.PathLike,
    table: pd.DataFrame,
    values: list[float],
    feature_names: list[str],
    settings: Any,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a regressor file (atomically); :func:`load_classifier` reads it back.

    Parameters
    ----------
    path : path-like
        Destination (conventionally ``*.phenotyper.zip``).
    table : pandas.DataFrame
        The cells that have a value, with at least ``feature_names`` columns.
    values : list of float
        The phenotype value of each row (finite).
    feature_names : list of str
        Columns the regressor uses (``TrainedRegressor.feature_names``).
    settings : RegressorSettings
    metadata : dict, optional
        JSON-serialisable extras (value name and meaning, source images...).

    Returns
    -------
    pathlib.Path
        The written file (version 2).

    Raises
    ------
    ValueError
        If the values are not one finite number per row.
    """
    y = np.asarray(values, dtype=np.float64)
    if y.shape != (len(table),):
        raise ValueError(f"{len(table)} rows but values of shape {y.shape}.")
    if not np.isfinite(y).all():
        raise ValueError("Phenotype values must be finite to be saved.")
    X = table[list(feature_names)].to_numpy(dtype=np.float64)
    header = {
        "format": FORMAT,
        "version": 2,
        "task": "regression",
        "classes": [],
        "colors": {},
        "feature_names": [str(c) for c in feature_names],
        "settings": _settings_json(settings),
        "n_cells": len(y),
        "value_range": [float(y.min()), float(y.max())] if len(y) else None,
        "metadata": metadata or {},
    }
    return _write(path, header, X, y)


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
    """Read and validate a classifier or regressor file (no pickle, no code execution).

    Returns
    -------
    ClassifierFile
        Its ``task`` says which; ``train()`` rebuilds the model.

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
        version = header.get("version")
        if version not in _READABLE or isinstance(version, bool):
            raise _bad(
                path,
                f"format version {version!r} is not supported (this version reads {' and '.join(map(str, _READABLE))}); update napari-phenotyper.",
            )
        task = header.get("task", "classification")
        if task not in TASKS:
            raise _bad(path, f"unknown task {task!r}; expected one of {', '.join(TASKS)}.")
        if task == "regression" and version < 2:
            raise _bad(path, "a regressor needs format version 2.")
        try:
            with np.load(io.BytesIO(_read_member(zf, "training.npz", path)), allow_pickle=False) as npz:
                X = np.asarray(npz["X"])
                y = np.asarray(npz["y"])
                pool = np.asarray(npz["X_unlabelled"]) if "X_unlabelled" in npz.files else None
        except (ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
            raise _bad(path, f"training.npz cannot be read safely ({exc}).") from None
    classes = header.get("classes")
    features = header.get("feature_names")
    settings = header.get("settings")
    if task == "regression":
        if classes not in ([], None):
            raise _bad(path, "'classes' must be empty for a regressor.")
        classes = []
    elif not (isinstance(classes, list) and all(isinstance(c, str) for c in classes) and len(classes) >= 2):
        raise _bad(path, "'classes' must list at least two class names.")
    if not (isinstance(features, list) and all(isinstance(c, str) for c in features) and features):
        raise _bad(path, "'feature_names' must list feature column names.")
    if not isinstance(settings, dict):
        raise _bad(path, "'settings' must be an object.")
    from ..core.features import upgrade_column_names

    features = upgrade_column_names(features)
    if X.dtype != np.float64 or X.ndim != 2 or X.shape[1] != len(features):
        raise _bad(
            path, f"X has shape {X.shape} and dtype {X.dtype}; expected float64 with {len(features)} columns."
        )
    if pool is not None and (pool.dtype != np.float64 or pool.ndim != 2 or pool.shape[1] != len(features)):
        raise _bad(
            path,
            f"X_unlabelled has shape {pool.shape} and dtype {pool.dtype}; expected float64 with {len(features)} columns.",
        )
    if task == "regression":
        if y.dtype != np.float64 or y.shape != (X.shape[0],) or not np.isfinite(y).all():
            raise _bad(path, "y must hold one finite float64 value per training row.")
    elif (
        y.dtype.kind not in "iu"
        or y.shape != (X.shape[0],)
        or (len(y) and (y.min() < 0 or y.max() >= len(classes)))
    ):
        raise _bad(path, "y must hold one class index per training row.")
    known = set(_settings_class(task).__dataclass_fields__)
    if set(settings) - known:
        raise _bad(path, f"unknown settings {sorted(set(settings) - known)}.")
    groups = settings.get("feature_groups")
    if groups is not None and not (isinstance(groups, list) and all(isinstance(g, str) for g in groups)):
        raise _bad(path, "'feature_groups' must be null or a list of group names.")
    try:
        _settings(task, settings)
    except (TypeError, ValueError) as exc:
        raise _bad(path, f"invalid settings ({exc})") from None
    colors = header.get("colors") or {}
    metadata = header.get("metadata")
    return ClassifierFile(
        classes=classes,
        feature_names=features,
        X=X,
        y=y.astype(np.float64 if task == "regression" else np.int64),
        settings=settings,
        colors={str(k): str(v) for k, v in colors.items()} if isinstance(colors, dict) else {},
        metadata=metadata if isinstance(metadata, dict) else {},
        task=task,
        X_unlabelled=pool,
    )
