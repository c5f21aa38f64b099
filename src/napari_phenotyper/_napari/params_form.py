"""A magicgui form generated from a parameters dataclass, and a model chooser (no algorithm here)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    SpinBox,
    Widget,
)
from qtpy.QtCore import QEvent, Qt
from qtpy.QtGui import QBrush, QPalette
from qtpy.QtWidgets import (
    QApplication,
    QComboBox,
    QFileDialog,
    QLabel,
    QSizePolicy,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QWidget,
)

from ..core.params import FieldSpec, field_specs
from ..core.segment.models import ModelInfo, list_models, models_dir

__all__ = ["EditorFactory", "ModelChooser", "ParamsForm", "model_summary"]

#: Builds the editor of one field (see :class:`ParamsForm`'s ``editors``).
EditorFactory = Callable[[FieldSpec], Widget]


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


def _start_value(spec: FieldSpec, lo: float, hi: float) -> tuple[float, float, float]:
    """The editor's first value and its (possibly widened) range.

    ``None`` (an "auto" field) starts at the value nearest 0 inside the range, so that a
    field whose minimum is above 0 (a diameter, an anisotropy) can be built at all; a
    default outside the declared range widens the range instead of changing the default.
    """
    default = spec.default
    if default is None or isinstance(default, bool) or not isinstance(default, int | float):
        return min(max(0.0, lo), hi), lo, hi
    value = float(default)
    return value, min(lo, value), max(hi, value)


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
        value, lo, hi = _start_value(spec, float(md.get("min", 0)), float(md.get("max", 10**9)))
        return SpinBox(value=int(value), min=int(lo), max=int(hi), step=int(md.get("step", 1)), **common)
    if spec.kind == "float":
        value, lo, hi = _start_value(spec, float(md.get("min", 0.0)), float(md.get("max", 1e9)))
        return FloatSpinBox(value=value, min=lo, max=hi, step=float(md.get("step", 0.1)), **common)
    return LineEdit(value=str(default or ""), **common)


class ParamsForm(Container):
    """Editors for every field of ``params_type``; :meth:`params` builds the dataclass.

    ``Optional`` fields get an "auto" checkbox (``None``); ``Literal`` fields a drop-down.
    Field ``metadata`` may give ``min``, ``max``, ``step`` and ``doc`` (tooltip).

    Parameters
    ----------
    params_type : type
        A parameters dataclass.
    editors : mapping of field name -> callable, optional
        Custom editors: ``factory(spec)`` returns a widget with a ``value`` (e.g. a
        :class:`ModelChooser` for a ``model`` field); it replaces the generated editor.
    """

    def __init__(self, params_type: type, editors: Mapping[str, EditorFactory] | None = None) -> None:
        self.params_type = params_type
        self.specs = field_specs(params_type)
        self.editors: dict[str, Widget] = {}
        custom = dict(editors or {})
        for spec in self.specs:
            factory = custom.get(spec.name)
            if factory is not None:
                ed = factory(spec)
                ed.label = _label(spec.name)
            else:
                ed = _editor(spec)
                if spec.optional:
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


# --------------------------------------------------------------------------- model chooser

#: Item data role holding the grey suffix shown after a model's name in the drop-down list.
SUFFIX_ROLE = int(Qt.ItemDataRole.UserRole) + 1

_KIND_WORDS = {"builtin": "built-in", "local": "local", "finetuned": "fine-tuned"}


def model_summary(info: ModelInfo) -> str:
    """A short line for a model: its kind and whether it works offline (e.g. ``"fine-tuned, on this computer"``)."""
    where = "on this computer" if info.available else "not downloaded (needs internet once)"
    return f"{_KIND_WORDS.get(info.kind, info.kind)}, {where}"


class _SuffixDelegate(QStyledItemDelegate):
    """Draws ``name — suffix`` in the drop-down list while the edit field shows the name alone."""

    def initStyleOption(self, option: QStyleOptionViewItem, index: Any) -> None:  # noqa: N802 (Qt API)
        super().initStyleOption(option, index)
        suffix = index.data(SUFFIX_ROLE)
        if suffix:
            option.text = f"{option.text}  —  {suffix}"


class ModelChooser(Container):
    """An editable drop-down of a backend's models, with a "Browse…" button.

    The list comes from :func:`~napari_phenotyper.core.segment.models.list_models`
    (built-in, local and fine-tuned models; nothing is downloaded and no deep-learning
    library is imported). Each entry says whether it is on this computer, so works
    offline; any other name or a path can be typed, or picked with "Browse…" (a model
    folder for StarDist, a weights file for Cellpose).

    Parameters
    ----------
    backend : str
        ``"stardist"`` or ``"cellpose"``.
    value : str or None
        The model to show first.
    optional : bool
        ``None`` is a valid value (the backend's default model): an empty field means
        ``None``.
    default_model : str, optional
        The model an empty optional field stands for (e.g. ``"cyto3"``), shown in it.
    """

    def __init__(
        self,
        backend: str,
        value: str | None = None,
        *,
        optional: bool = False,
        default_model: str | None = None,
        label: str = "model",
        tooltip: str | None = None,
    ) -> None:
        self.backend = backend
        self.optional = optional
        self.default_model = default_model
        self.infos: list[ModelInfo] = []
        self.combo = QComboBox()
        self.combo.setEditable(True)
        self.combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.combo.setMinimumContentsLength(12)
        self._delegate = _SuffixDelegate(self.combo)
        self.combo.setItemDelegate(self._delegate)
        line = self.combo.lineEdit()
        if line is not None:
            hint = f"default ({default_model})" if default_model else "default" if optional else ""
            line.setPlaceholderText(hint or "model name or path")
            line.setClearButtonEnabled(True)
        self.browse = PushButton(text="Browse…", tooltip=self._browse_tooltip())
        row = Container(widgets=[self.browse], layout="horizontal", labels=False)
        row.margins = (0, 0, 0, 0)
        row.native.layout().insertWidget(0, self.combo, 1)  # a plain Qt combo: magicgui never resets it
        self.detail = Label(value="")  # the current model's kind and availability (details: tooltip)
        self.detail.native.setWordWrap(True)
        super().__init__(widgets=[row, self.detail], labels=False, label=label, tooltip=tooltip)
        self.margins = (0, 0, 0, 0)
        self.combo.currentTextChanged.connect(self._on_text)
        self.browse.changed.connect(self._browse)
        self.refresh(select=value if value is not None else "")

    # ---- value ----------------------------------------------------------------------
    @property
    def value(self) -> str | None:
        """The model name or path in the field; ``None`` for an empty optional field."""
        text = self.combo.currentText().strip()
        if not text and self.optional:
            return None
        return text

    @value.setter
    def value(self, v: str | os.PathLike[str] | None) -> None:
        text = "" if v is None else os.fspath(v)
        index = self.combo.findText(text, Qt.MatchFlag.MatchExactly | Qt.MatchFlag.MatchCaseSensitive)
        if index >= 0:
            self.combo.setCurrentIndex(index)
        else:
            self.combo.setCurrentIndex(-1)
            self.combo.setEditText(text)
        self._on_text(self.combo.currentText())

    def names(self) -> list[str]:
        """The listed model names, in order."""
        return [self.combo.itemText(i) for i in range(self.combo.count())]

    def info(self, name: str | None = None) -> ModelInfo | None:
        """The listed model called ``name`` (default: the one in the field), if listed."""
        name = self.combo.currentText().strip() if name is None else name
        return next((m for m in self.infos if m.name == name), None)

    # ---- the list -------------------------------------------------------------------
    def refresh(self, select: str | os.PathLike[str] | None = None) -> None:
        """List the backend's models again; keep the field's text, or show ``select``.

        Cheap (reads folders only): call it after a model was saved, downloaded or
        copied into the models folder.
        """
        keep = self.combo.currentText() if select is None else os.fspath(select)
        try:
            infos = list_models(self.backend)
        except (OSError, ValueError) as exc:  # an unreadable models folder: say so, keep going
            infos = []
            self.detail.value = f"Could not list the {self.backend} models: {exc}"
        self.infos = infos
        self.combo.blockSignals(True)
        try:
            self.combo.clear()
            grey = self.combo.palette().color(QPalette.ColorRole.PlaceholderText)
            for i, info in enumerate(infos):
                self.combo.addItem(info.name, info.name)
                summary = model_summary(info)
                self.combo.setItemData(i, summary, SUFFIX_ROLE)
                tip = f"{info.name}: {summary}" + (f"\n{info.detail}" if info.detail else "")
                self.combo.setItemData(i, tip, Qt.ItemDataRole.ToolTipRole)
                if not info.available:
                    self.combo.setItemData(i, QBrush(grey), Qt.ItemDataRole.ForegroundRole)
        finally:
            self.combo.blockSignals(False)
        self.value = keep

    def reset_choices(self, *_: Any) -> None:
        """Called by napari when layers change: the models list does not depend on layers."""

    # ---- callbacks ------------------------------------------------------------------
    def _on_text(self, text: str) -> None:
        text = text.strip()
        info = self.info(text)
        tip = ""
        if info is not None:
            line = model_summary(info)
            tip = f"{info.name}: {line}" + (f"\n{info.detail}" if info.detail else "")
        elif not text and self.optional:
            default = self.info(self.default_model) if self.default_model else None
            line = "the default model" + (f": {model_summary(default)}" if default is not None else "")
        elif not text:
            line = "type a model name or a path, or Browse…"
        elif Path(text).expanduser().exists():
            line = "a model on disk (checked when you run)"
            tip = text
        else:
            line = "not in the list: checked when you run"
        self.detail.value = line
        self.detail.tooltip = tip or line
        self.combo.setToolTip(tip or line)

    def _browse_tooltip(self) -> str:
        what = "model folder (config.json + weights)" if self.backend == "stardist" else "weights file"
        return f"Pick a {self.backend} {what} anywhere on disk"

    def _ask_path(self) -> str:
        """Ask the user for a model folder (StarDist) or weights file (Cellpose); '' if cancelled."""
        start = models_dir() / self.backend
        start_dir = str(start if start.is_dir() else Path.home())
        if self.backend == "stardist":
            return QFileDialog.getExistingDirectory(self.native, "StarDist model folder", start_dir)
        path, _filter = QFileDialog.getOpenFileName(
            self.native, "Cellpose model (weights file, or a model folder's model.json)", start_dir
        )
        return path

    def _browse(self, _value: Any = None) -> None:
        path = self._ask_path()
        if not path:
            return
        chosen = Path(path)
        if chosen.name == "model.json":  # a fine-tuned model folder: the folder is the model
            chosen = chosen.parent
        self.value = str(chosen)


def compact_widths(root: QWidget, min_chars: int = 10) -> None:
    """Let a dock be narrow whatever the names it shows.

    Combo boxes size to ``min_chars`` characters instead of their longest item (layer
    names from a microscope, model paths: the full text stays in the drop-down), and
    word-wrapped labels wrap to the dock's width instead of widening it (an unbreakable
    path is cut at the edge; keep it in the label's tooltip too). Call again after
    adding widgets.
    """
    for combo in root.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        if combo.minimumContentsLength() == 0:
            combo.setMinimumContentsLength(min_chars)
        # Qt keeps the minimum size hint it computed from the items before; a style
        # change is what makes a combo box forget it
        QApplication.sendEvent(combo, QEvent(QEvent.Type.StyleChange))
        combo.updateGeometry()
    for label in root.findChildren(QLabel):
        if label.wordWrap():
            policy = label.sizePolicy()
            policy.setHorizontalPolicy(QSizePolicy.Policy.Ignored)
            label.setSizePolicy(policy)


#: The feature sets as the docks show them.
FEATURE_SET_CHOICES = (("default (fast)", "default"), ("CellProfiler 4", "cellprofiler"))


def feature_groups_box(boxes: Mapping[str, CheckBox]) -> Container:
    """The feature-group check boxes on two rows (one row is too wide for a laptop dock)."""
    items = list(boxes.values())
    half = (len(items) + 1) // 2
    rows = [
        Container(widgets=items[:half], layout="horizontal", labels=False),
        Container(widgets=items[half:], layout="horizontal", labels=False),
    ]
    for row in rows:
        row.margins = (0, 0, 0, 0)
    box = Container(widgets=rows, labels=False, label="features")
    box.margins = (0, 0, 0, 0)
    return box


def feature_set_combo() -> ComboBox:
    """Which definitions and column names to measure with."""
    return ComboBox(
        label="feature set",
        choices=FEATURE_SET_CHOICES,
        value="default",
        tooltip=(
            "default: this package's fast features. CellProfiler 4: its MeasureObjectSizeShape, "
            "MeasureObjectIntensity, MeasureTexture (scale 3, 256 levels) and MeasureObjectNeighbors "
            "(adjacent and within 5 px) definitions and column names (AreaShape_*, Intensity_*, ...), "
            "to compare with CellProfiler output"
        ),
    )
