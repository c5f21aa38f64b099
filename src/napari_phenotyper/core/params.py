"""Building parameter dataclasses from user input (command line, files, widgets)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

__all__ = ["FieldSpec", "field_specs", "params_from_mapping"]


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """A parameter field as a front end needs it.

    ``kind`` is one of ``bool``, ``int``, ``float``, ``str``, ``choice``; ``optional``
    means ``None`` is allowed (shown as "auto"); ``choices`` lists the values of a
    ``Literal`` field.
    """

    name: str
    kind: str
    default: Any
    optional: bool = False
    choices: tuple[Any, ...] = ()
    doc: str = ""
    metadata: typing.Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _unwrap(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) == 1:
            return args[0], optional
        if all(a in (int, float) for a in args):
            return float, optional
        return str, optional
    return tp, False


def field_specs(params_type: type) -> list[FieldSpec]:
    """Describe every field of a parameters dataclass (type, default, choices)."""
    hints = typing.get_type_hints(params_type)
    out = []
    for f in dataclasses.fields(params_type):
        if not f.init:
            continue
        tp, optional = _unwrap(hints[f.name])
        choices: tuple[Any, ...] = ()
        if typing.get_origin(tp) is typing.Literal:
            kind, choices = "choice", typing.get_args(tp)
        elif tp is bool:
            kind = "bool"
        elif tp is int:
            kind = "int"
        elif tp is float:
            kind = "float"
        else:
            kind = "str"
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        out.append(
            FieldSpec(f.name, kind, default, optional, choices, str(f.metadata.get("doc", "")), f.metadata)
        )
    return out


def _coerce(spec: FieldSpec, value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if spec.optional and text.lower() in ("none", "auto", ""):
            return None
        if spec.kind == "bool":
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{spec.name} must be true or false, not {value!r}.")
        if spec.kind == "int":
            return int(text)
        if spec.kind == "float":
            return float(text)
        if spec.kind == "choice":
            for c in spec.choices:
                if str(c) == text:
                    return c
            raise ValueError(
                f"{spec.name} must be one of {', '.join(map(str, spec.choices))}, not {value!r}."
            )
        return text
    if value is None and spec.optional:
        return None
    if spec.kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def params_from_mapping(params_type: type, values: typing.Mapping[str, Any] | None = None) -> Any:
    """Build ``params_type`` from defaults overridden by ``values``.

    String values (command line, text files) are converted to each field's type.

    Raises
    ------
    ValueError
        For an unknown parameter name (the message lists the valid ones) or a value
        that cannot be converted.
    """
    specs = {s.name: s for s in field_specs(params_type)}
    kwargs = {}
    for key, value in (values or {}).items():
        if key not in specs:
            raise ValueError(f"Unknown parameter {key!r}; valid parameters are: {', '.join(specs)}.")
        try:
            kwargs[key] = _coerce(specs[key], value)
        except ValueError as exc:
            raise ValueError(f"Bad value for {key}: {exc}") from None
    return params_type(**kwargs)
