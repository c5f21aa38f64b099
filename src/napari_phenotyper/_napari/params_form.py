"""A magicgui form generated from a parameters dataclass (no algorithm here)."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, LineEdit, SpinBox, Widget

from ..core.params import FieldSpec, field_specs

__all__ = ["ParamsForm"]


def _label(name: str) -> str:
    return name.replace("_", " ")


class _Optional(Container):
    """A value that may be "auto" (``None``): a checkbox next to the editor."""

    def __init__(self, editor: Widget, spec: FieldSpec) -> None:
        self.auto = CheckBox(text="auto", value=spec.default is None)
        self.editor = editor
        super().__init__(
            widgets=[self.auto, editor], layout="horizontal", labels=False, label=_label(spec.name)
        )
        self.margins = (0, 0, 0, 0)
        self.editor.enabled = not self.auto.value
        self.auto.changed.connect(lambda v: setattr(self.editor, "enabled", not v))

    @property
    def value(self) -> Any:
        return None if self.auto.value else self.editor.value

    @value.setter
    def value(self, v: Any) -> None:
        self.auto.value = v is None
        if v is not None:
            self.editor.value = v


def _editor(spec: FieldSpec) -> Widget:
    md = spec.metadata
    default = spec.default
    common: dict[str, Any] = {"label": _label(spec.name), "tooltip": spec.doc or None}
    if spec.kind == "bool":
        return CheckBox(value=bool(default), **common)
    if spec.kind == "choice":
        return ComboBox(
            choices=list(spec.choices),
            value=default if default in spec.choices else spec.choices[0],
            **common,
        )
    if spec.kind == "int":
        return SpinBox(
            value=int(default or 0),
            min=int(md.get("min", 0)),
            max=int(md.get("max", 10**9)),
            step=int(md.get("step", 1)),
            **common,
        )
    if spec.kind == "float":
        return FloatSpinBox(
            value=float(default or 0.0),
            min=float(md.get("min", 0.0)),
            max=float(md.get("max", 1e9)),
            step=float(md.get("step", 0.1)),
            **common,
        )
    return LineEdit(value=str(default or ""), **common)


class ParamsForm(Container):
    """Editors for every field of ``params_type``; :meth:`params` builds the dataclass.

    ``Optional`` fields get an "auto" checkbox (``None``); ``Literal`` fields a drop-down.
    Field ``metadata`` may give ``min``, ``max``, ``step`` and ``doc`` (tooltip).
    """

    def __init__(self, params_type: type) -> None:
        self.params_type = params_type
        self.specs = field_specs(params_type)
        self.editors: dict[str, Widget] = {}
        for spec in self.specs:
            ed = _editor(spec)
            if spec.optional:
                if spec.default is None and spec.kind in ("int", "float"):
                    ed.value = ed.min if ed.min > 0 else ed.value
                ed = _Optional(ed, spec)
                ed.tooltip = spec.doc or None
            self.editors[spec.name] = ed
        super().__init__(widgets=list(self.editors.values()))

    def values(self) -> dict[str, Any]:
        """Current values by field name."""
        return {name: ed.value for name, ed in self.editors.items()}

    def params(self) -> Any:
        """The frozen parameters dataclass (raises ``ValueError`` for invalid values)."""
        return self.params_type(**self.values())

    def set_value(self, name: str, value: Any) -> None:
        """Set one field's editor."""
        self.editors[name].value = value
