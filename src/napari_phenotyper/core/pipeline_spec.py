"""A saved analysis pipeline: segmenter and parameters, channel, features, classifier.

A :class:`PipelineSpec` is what a batch run applies to every image. It is plain data
(JSON-able), validated here; :mod:`napari_phenotyper.io.pipeline_file` reads and
writes it as a versioned JSON or YAML file and checks the files it refers to.

Segmenters come from the registry (:mod:`napari_phenotyper.core.segment.registry`),
so a backend registered later (Cellpose, StarDist) works in pipelines unchanged. A
pipeline may name the segmenter's model by name (``{"name": "cyto3"}``) or by file
(``{"path": ..., "sha256": ...}``); it is handed to the segmenter's ``model``
parameter, which such backends define.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .features import DEFAULT_FEATURE_GROUPS, FEATURE_GROUPS, FEATURE_SETS
from .pipeline import MeasureParams

__all__ = [
    "PIPELINE_FORMAT",
    "PIPELINE_VERSION",
    "FileRef",
    "ModelRef",
    "PipelineError",
    "PipelineSpec",
]

PIPELINE_FORMAT = "napari-phenotyper-pipeline"
#: The newest pipeline format version this release reads and writes.
PIPELINE_VERSION = 1
_TOP_KEYS = {
    "format",
    "version",
    "name",
    "description",
    "segmenter",
    "channel",
    "measure",
    "classifier",
    "created",
    "napari_phenotyper",
}
_SEGMENTER_KEYS = {"name", "params", "auto_diameter", "model"}
_MEASURE_KEYS = {"groups", "texture_levels", "feature_set"}
_SHA256_LEN = 64


class PipelineError(ValueError):
    """An invalid pipeline; ``problems`` lists every fault found, each saying where."""

    def __init__(self, problems: list[str], source: str = "pipeline") -> None:
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} is not a valid napari-phenotyper pipeline:\n{lines}")


def _is_sha256(value: Any) -> bool:
    return (
        isinstance(value, str)
        and len(value) == _SHA256_LEN
        and all(c in "0123456789abcdef" for c in value.lower())
    )


@dataclass(frozen=True)
class FileRef:
    """A file the pipeline depends on, with the SHA-256 of its content.

    Parameters
    ----------
    path : str
        As written in the pipeline file (relative paths are relative to that file);
        absolute once loaded.
    sha256 : str, optional
        Hex digest; checked when the pipeline is loaded and before a run.
    """

    path: str
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"path": self.path, "sha256": self.sha256}


@dataclass(frozen=True)
class ModelRef:
    """A segmentation model by name (``cyto3``) or by file (path + SHA-256)."""

    name: str | None = None
    path: str | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        if (self.name is None) == (self.path is None):
            raise ValueError("A model is given by name or by path (exactly one of them).")

    @property
    def value(self) -> str:
        """What the segmenter's ``model`` parameter receives: the name, or the path."""
        return str(self.name if self.name is not None else self.path)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (only the fields that are set)."""
        if self.name is not None:
            return {"name": self.name}
        return {"path": self.path, "sha256": self.sha256}


@dataclass(frozen=True)
class PipelineSpec:
    """Everything a batch run does to each image.

    Parameters
    ----------
    segmenter : str
        Registered segmenter name.
    params : dict
        The segmenter's parameters (JSON values); missing ones take their defaults.
    auto_diameter : bool
        Estimate the object diameter on every image before segmenting it (like
        ``--diameter auto``); the estimate replaces ``params["diameter"]``.
    model : ModelRef, optional
        The segmenter's model, for backends with a ``model`` parameter.
    channel : int, optional
        Channel to segment in multi-channel images (default: luminance / mean).
    feature_groups : tuple of str
        Feature groups to measure.
    texture_levels : int
        Grey levels of the texture features.
    feature_set : str
        ``"default"`` or ``"cellprofiler"`` (see :class:`~napari_phenotyper.core.pipeline.MeasureParams`).
    classifier : FileRef, optional
        A saved classifier or regressor file applied to every cell.
    name, description : str
        Free text for people.
    """

    segmenter: str = "classical"
    params: dict[str, Any] = field(default_factory=dict)
    auto_diameter: bool = False
    model: ModelRef | None = None
    channel: int | None = None
    feature_groups: tuple[str, ...] = DEFAULT_FEATURE_GROUPS
    texture_levels: int = 32
    feature_set: str = "default"
    classifier: FileRef | None = None
    name: str = ""
    description: str = ""

    # ---- building the run's parameter objects --------------------------------------
    def segmenter_params(self) -> Any:
        """The segmenter's parameters dataclass (model included).

        Raises
        ------
        KeyError
            For an unknown segmenter.
        ImportError
            When the backend is not installed.
        ValueError
            For an unknown parameter or a bad value.
        """
        from .params import params_from_mapping
        from .segment import get_segmenter

        seg = get_segmenter(self.segmenter)
        values = dict(self.params)
        if self.model is not None:
            fields = {f.name for f in dataclasses.fields(seg.params_type)}
            if "model" not in fields:
                raise ValueError(f"The {self.segmenter} segmenter takes no model; remove 'model'.")
            values["model"] = self.model.value
        return params_from_mapping(seg.params_type, values)

    def measure_params(self) -> MeasureParams:
        """What to measure, as :class:`~napari_phenotyper.core.pipeline.MeasureParams`."""
        return MeasureParams(
            groups=tuple(self.feature_groups),
            texture_levels=int(self.texture_levels),
            feature_set=self.feature_set,
        )

    def validate(self, source: str = "pipeline") -> PipelineSpec:
        """Check that the segmenter, its parameters and the measurement are valid.

        Returns ``self``; raises :class:`PipelineError` listing every problem.
        """
        problems: list[str] = []
        try:
            self.segmenter_params()
        except KeyError as exc:
            problems.append(f"segmenter.name: {exc.args[0] if exc.args else exc}")
        except ImportError as exc:
            problems.append(f"segmenter.name: {exc}")
        except (TypeError, ValueError) as exc:
            problems.append(f"segmenter.params: {exc}")
        try:
            self.measure_params()
        except (TypeError, ValueError) as exc:
            problems.append(f"measure: {exc}")
        if self.channel is not None and (not isinstance(self.channel, int) or isinstance(self.channel, bool)):
            problems.append(f"channel: must be a whole number or null, not {self.channel!r}.")
        if problems:
            raise PipelineError(problems, source)
        return self

    # ---- JSON form -----------------------------------------------------------------
    def with_model_from_params(self) -> PipelineSpec:
        """Move a ``model`` parameter into :attr:`model` (a path that exists, else a name).

        Front ends that copy a segmenter's whole parameter form (which has a ``model``
        field for deep-learning backends) call this so that a model file or folder gets
        its SHA-256 recorded like a classifier's.
        """
        value = self.params.get("model")
        if not isinstance(value, str) or not value or self.model is not None:
            return self
        from pathlib import Path

        params = {k: v for k, v in self.params.items() if k != "model"}
        ref = ModelRef(path=str(Path(value).resolve())) if Path(value).exists() else ModelRef(name=value)
        return dataclasses.replace(self, params=params, model=ref)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written by :func:`napari_phenotyper.io.pipeline_file.save_pipeline`."""
        return {
            "format": PIPELINE_FORMAT,
            "version": PIPELINE_VERSION,
            "name": self.name,
            "description": self.description,
            "segmenter": {
                "name": self.segmenter,
                "params": dict(self.params),
                "auto_diameter": bool(self.auto_diameter),
                "model": None if self.model is None else self.model.to_dict(),
            },
            "channel": self.channel,
            "measure": {
                "groups": list(self.feature_groups),
                "texture_levels": int(self.texture_levels),
                # written only when not the default, so that older pipelines keep their digest
                **({"feature_set": self.feature_set} if self.feature_set != "default" else {}),
            },
            "classifier": None if self.classifier is None else self.classifier.to_dict(),
        }

    def sha256(self) -> str:
        """A digest of what the pipeline does (not its name or description).

        Two runs with equal digests treat an image the same way; the batch runner uses
        it to decide whether a finished image can be kept on a rerun.
        """
        d = self.to_dict()
        d.pop("name")
        d.pop("description")
        if d["classifier"] is not None:  # the content matters, not where the file lies
            d["classifier"] = {"sha256": d["classifier"]["sha256"]}
        if d["segmenter"]["model"] is not None and d["segmenter"]["model"].get("path") is not None:
            d["segmenter"]["model"] = {"sha256": d["segmenter"]["model"]["sha256"]}
        text = json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: Any, source: str = "pipeline", *, validate: bool = True) -> PipelineSpec:
        """Read the JSON form, checking its schema.

        Parameters
        ----------
        data : dict
            As parsed from a pipeline file.
        source : str
            Named in error messages (the file path).
        validate : bool
            Also build the segmenter's parameters (imports the backend).

        Raises
        ------
        PipelineError
            Listing every problem, each with its location (``segmenter.params`` ...).
        """
        problems: list[str] = []
        if not isinstance(data, Mapping):
            raise PipelineError(["the file must hold an object ({...}) at the top level."], source)
        if data.get("format") != PIPELINE_FORMAT:
            problems.append(f"format: must be {PIPELINE_FORMAT!r}, found {data.get('format')!r}.")
        version = data.get("version")
        if version != PIPELINE_VERSION or isinstance(version, bool):
            if isinstance(version, int) and not isinstance(version, bool) and version > PIPELINE_VERSION:
                problems.append(
                    f"version: {version} is newer than this napari-phenotyper reads "
                    f"({PIPELINE_VERSION}); update napari-phenotyper."
                )
            else:
                problems.append(f"version: must be {PIPELINE_VERSION}, found {version!r}.")
        unknown = sorted(set(data) - _TOP_KEYS)
        if unknown:
            problems.append(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_TOP_KEYS))}.")
        kwargs: dict[str, Any] = {}
        for key in ("name", "description"):
            value = data.get(key, "")
            if value is None:
                value = ""
            if not isinstance(value, str):
                problems.append(f"{key}: must be text.")
            kwargs[key] = str(value)

        seg = data.get("segmenter")
        if not isinstance(seg, Mapping):
            problems.append('segmenter: must be an object like {"name": "classical", "params": {...}}.')
        else:
            bad = sorted(set(seg) - _SEGMENTER_KEYS)
            if bad:
                problems.append(
                    f"segmenter: unknown key(s) {', '.join(bad)}; allowed: {', '.join(sorted(_SEGMENTER_KEYS))}."
                )
            name = seg.get("name")
            if not isinstance(name, str) or not name:
                problems.append("segmenter.name: give a registered segmenter name, e.g. 'classical'.")
            else:
                kwargs["segmenter"] = name
            params = seg.get("params", {})
            if params is None:
                params = {}
            if not isinstance(params, Mapping):
                problems.append("segmenter.params: must be an object of parameter names and values.")
            else:
                # a list of numbers is plain too: a voxel size (spacing: [2, 1, 1])
                nested = [
                    k
                    for k, v in params.items()
                    if isinstance(v, Mapping)
                    or (
                        isinstance(v, list)
                        and not all(isinstance(e, int | float) and not isinstance(e, bool) for e in v)
                    )
                ]
                if nested:
                    problems.append(
                        f"segmenter.params: {', '.join(map(str, nested))} must be plain values "
                        "(number, text, true/false, null, or a list of numbers)."
                    )
                kwargs["params"] = {str(k): v for k, v in params.items()}
            auto = seg.get("auto_diameter", False)
            if not isinstance(auto, bool):
                problems.append("segmenter.auto_diameter: must be true or false.")
            kwargs["auto_diameter"] = bool(auto)
            model = seg.get("model")
            if model is not None:
                kwargs["model"] = _model_ref(model, problems)

        channel = data.get("channel")
        if channel is not None and (not isinstance(channel, int) or isinstance(channel, bool) or channel < 0):
            problems.append(f"channel: must be a channel index (0, 1, ...) or null, not {channel!r}.")
        else:
            kwargs["channel"] = channel

        measure = data.get("measure", {})
        if measure is None:
            measure = {}
        if not isinstance(measure, Mapping):
            problems.append('measure: must be an object like {"groups": ["shape", "intensity"]}.')
        else:
            bad = sorted(set(measure) - _MEASURE_KEYS)
            if bad:
                problems.append(
                    f"measure: unknown key(s) {', '.join(bad)}; allowed: {', '.join(sorted(_MEASURE_KEYS))}."
                )
            groups = measure.get("groups", list(DEFAULT_FEATURE_GROUPS))
            if not (isinstance(groups, list) and groups and all(isinstance(g, str) for g in groups)):
                problems.append(
                    f"measure.groups: must list feature groups among {', '.join(FEATURE_GROUPS)}."
                )
            else:
                wrong = [g for g in groups if g not in FEATURE_GROUPS]
                if wrong:
                    problems.append(
                        f"measure.groups: unknown group(s) {', '.join(wrong)}; choose among {', '.join(FEATURE_GROUPS)}."
                    )
                kwargs["feature_groups"] = tuple(groups)
            levels = measure.get("texture_levels", 32)
            if not isinstance(levels, int) or isinstance(levels, bool) or not 2 <= levels <= 256:
                problems.append(
                    f"measure.texture_levels: must be a whole number from 2 to 256, not {levels!r}."
                )
            else:
                kwargs["texture_levels"] = levels
            feature_set = measure.get("feature_set", "default")
            if feature_set not in FEATURE_SETS:
                problems.append(
                    f"measure.feature_set: must be {' or '.join(map(repr, FEATURE_SETS))}, not {feature_set!r}."
                )
            else:
                kwargs["feature_set"] = feature_set

        clf = data.get("classifier")
        if clf is not None:
            if not isinstance(clf, Mapping) or not isinstance(clf.get("path"), str) or not clf.get("path"):
                problems.append(
                    'classifier: must be null or {"path": "my.phenotyper.zip", "sha256": "<64 hex digits>"}.'
                )
            else:
                bad = sorted(set(clf) - {"path", "sha256"})
                if bad:
                    problems.append(f"classifier: unknown key(s) {', '.join(bad)}; allowed: path, sha256.")
                digest = clf.get("sha256")
                if digest is not None and not _is_sha256(digest):
                    problems.append("classifier.sha256: must be 64 hexadecimal digits (or null).")
                kwargs["classifier"] = FileRef(
                    clf["path"], str(digest).lower() if _is_sha256(digest) else None
                )
        if problems:
            raise PipelineError(problems, source)
        spec = cls(**kwargs)
        return spec.validate(source) if validate else spec


def _model_ref(model: Any, problems: list[str]) -> ModelRef | None:
    if isinstance(model, str) and model:
        return ModelRef(name=model)
    if not isinstance(model, Mapping):
        problems.append(
            'segmenter.model: must be null, a name, {"name": ...} or {"path": ..., "sha256": ...}.'
        )
        return None
    bad = sorted(set(model) - {"name", "path", "sha256"})
    if bad:
        problems.append(f"segmenter.model: unknown key(s) {', '.join(bad)}; allowed: name, path, sha256.")
    name, path, digest = model.get("name"), model.get("path"), model.get("sha256")
    if (name is None) == (path is None):
        problems.append("segmenter.model: give either a model name or a model path (with its sha256).")
        return None
    if name is not None and (not isinstance(name, str) or not name):
        problems.append("segmenter.model.name: must be text.")
        return None
    if path is not None and (not isinstance(path, str) or not path):
        problems.append("segmenter.model.path: must be text.")
        return None
    if digest is not None and not _is_sha256(digest):
        problems.append("segmenter.model.sha256: must be 64 hexadecimal digits (or null).")
        digest = None
    return ModelRef(name=name, path=path, sha256=None if digest is None else digest.lower())
