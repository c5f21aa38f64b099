"""Pipeline files: a batch run's segmenter, parameters, features and classifier on disk.

A pipeline file is human-readable JSON (or YAML, by its suffix ``.yaml``/``.yml``)::

    {
      "format": "napari-phenotyper-pipeline",
      "version": 1,
      "name": "nuclei, classical",
      "description": "",
      "segmenter": {"name": "classical", "params": {"diameter": 18.0, ...},
                    "auto_diameter": false, "model": null},
      "channel": null,
      "measure": {"groups": ["shape", "intensity", "texture", "neighbors"], "texture_levels": 32},
      "classifier": {"path": "mitosis.phenotyper.zip", "sha256": "9f2c..."},
      "created": "2025-01-01T12:00:00+00:00",
      "napari_phenotyper": "0.3.0"
    }

Relative paths (classifier, model file) are relative to the pipeline file, so a folder
holding both can be moved. Loading checks the schema and, by default, that the files
it refers to exist and still have the recorded SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..core.pipeline_spec import FileRef, ModelRef, PipelineError, PipelineSpec
from .atomic import atomic_write_text

__all__ = ["PipelineError", "file_sha256", "load_pipeline", "pipeline_text", "save_pipeline"]

_YAML_SUFFIXES = (".yaml", ".yml")
_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's content (read in 1 MiB chunks).

    For a folder (a model saved as a folder, e.g. StarDist's), the digest of its files'
    relative paths and contents, in sorted order, so that any change inside shows.
    """
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
            h.update(file_sha256(f).encode())
        return h.hexdigest()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _relative(path: str, folder: Path) -> str:
    """``path`` relative to ``folder`` when it lies inside it, else absolute (posix)."""
    p = Path(path).resolve()
    try:
        return p.relative_to(folder.resolve()).as_posix()
    except ValueError:
        return p.as_posix()


def _resolve(path: str, folder: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (folder / p)


def _with_digests(spec: PipelineSpec, folder: Path, relative_to: Path | None) -> PipelineSpec:
    """Fill in missing digests from the files; rewrite paths for ``relative_to``."""
    clf = spec.classifier
    if clf is not None:
        path = _resolve(clf.path, folder)
        if not path.is_file():
            raise FileNotFoundError(f"Classifier file {path} not found; save the classifier first.")
        digest = file_sha256(path)
        if clf.sha256 is not None and clf.sha256 != digest:
            raise ValueError(
                f"Classifier file {path} has changed since the pipeline was made (SHA-256 differs); "
                "choose the classifier again."
            )
        shown = _relative(str(path), relative_to) if relative_to is not None else str(path)
        spec = replace(spec, classifier=FileRef(shown, digest))
    model = spec.model
    if model is not None and model.path is not None:
        path = _resolve(model.path, folder)
        if not path.exists():
            raise FileNotFoundError(f"Model {path} not found (a file or a model folder).")
        digest = file_sha256(path)
        if model.sha256 is not None and model.sha256 != digest:
            raise ValueError(f"Model file {path} has changed since the pipeline was made (SHA-256 differs).")
        shown = _relative(str(path), relative_to) if relative_to is not None else str(path)
        spec = replace(spec, model=ModelRef(path=shown, sha256=digest))
    return spec


def pipeline_text(spec: PipelineSpec, yaml: bool = False) -> str:
    """The file content for ``spec`` (JSON, or YAML), with creation time and version."""
    from .. import __version__

    data = spec.to_dict()
    data["created"] = datetime.now(UTC).isoformat(timespec="seconds")
    data["napari_phenotyper"] = __version__
    if yaml:
        import yaml as pyyaml

        return str(pyyaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def save_pipeline(
    spec: PipelineSpec, path: str | os.PathLike, *, base: str | os.PathLike | None = None
) -> Path:
    """Write a pipeline file atomically (JSON; YAML for a ``.yaml``/``.yml`` path).

    Parameters
    ----------
    spec : PipelineSpec
        Checked with :meth:`PipelineSpec.validate` first.
    path : path-like
        Destination; its folder must exist.
    base : path-like, optional
        Folder that relative paths in ``spec`` are relative to (default: the current
        directory). Files inside the destination's folder are written relative to it.

    Returns
    -------
    pathlib.Path
        The written path.

    Raises
    ------
    PipelineError
        If the pipeline is invalid.
    FileNotFoundError, ValueError
        If the classifier or model file is missing, or differs from its recorded digest.
    """
    path = Path(path)
    spec.validate(str(path))
    spec = _with_digests(spec, Path(base) if base is not None else Path.cwd(), path.parent)
    return atomic_write_text(path, pipeline_text(spec, yaml=path.suffix.lower() in _YAML_SUFFIXES))


def _parse(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in _YAML_SUFFIXES:
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PipelineError([f"not valid YAML ({exc})."], str(path)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PipelineError(
            [f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}."], str(path)
        ) from None


def load_pipeline(path: str | os.PathLike, *, check_files: bool = True) -> PipelineSpec:
    """Read and validate a pipeline file.

    Parameters
    ----------
    path : path-like
        A file written by :func:`save_pipeline` (or by hand).
    check_files : bool
        Check that the classifier and model files exist and match their SHA-256
        (a missing digest is computed).

    Returns
    -------
    PipelineSpec
        With the classifier and model paths made absolute.

    Raises
    ------
    FileNotFoundError
        If ``path`` (or, with ``check_files``, a file it refers to) does not exist.
    PipelineError
        Listing every schema problem, each with its location (``segmenter.params`` ...).
    ValueError
        If a referenced file has changed since the pipeline was saved.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such pipeline file: {path}")
    spec = PipelineSpec.from_dict(_parse(path), str(path))
    folder = path.parent
    if check_files:
        return _with_digests(spec, folder, None)
    if spec.classifier is not None:
        spec = replace(
            spec, classifier=FileRef(str(_resolve(spec.classifier.path, folder)), spec.classifier.sha256)
        )
    if spec.model is not None and spec.model.path is not None:
        spec = replace(
            spec, model=ModelRef(path=str(_resolve(spec.model.path, folder)), sha256=spec.model.sha256)
        )
    return spec
