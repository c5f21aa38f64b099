"""What a class key press shows: a short flash on the cell in its class colour and a
line on the canvas with the class's new count.

The dock's status line is far from where the biologist looks, and napari overwrites
its own status bar on the next mouse move; the flash and the canvas line are where
the eyes are. One Points layer (made on the first press, then only moved and shown)
and napari's text overlay; both hide again after :data:`FLASH_MS`.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import numpy as np
from napari.layers import Points
from qtpy.QtCore import QTimer

from .layers import META_KEY, source_of

__all__ = [
    "FLASH_MS",
    "FLASH_ROLE",
    "AnnotationFlash",
    "KeyHelp",
    "find_flash_layer",
    "help_without_keys",
    "text_overlay",
]

#: How long the flash and the canvas line stay (ms).
FLASH_MS = 700
#: Role (in our metadata) of the display-only layer that flashes an annotated cell.
FLASH_ROLE = "annotation_flash"
_CLEARED_COLOR = "#B0B0B0"


def find_flash_layer(viewer: Any) -> Points | None:
    """The viewer's flash layer, if one was made."""
    for layer in viewer.layers:
        if isinstance(layer, Points) and source_of(layer).get("role") == FLASH_ROLE:
            return layer
    return None


def text_overlay(viewer: Any) -> Any:
    """napari's canvas text overlay (``viewer.canvas.overlays.text`` since 0.9)."""
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    text = getattr(overlays, "text", None)
    return text if text is not None else viewer.text_overlay


class AnnotationFlash:
    """Flash an annotated cell and say what changed on the canvas, for a moment."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(FLASH_MS)
        self._timer.timeout.connect(self.hide)
        self._text: str | None = None  # what we put on the text overlay (restored after)
        self._overlay_before: tuple[bool, str] | None = None

    def show(self, world: np.ndarray | None, size: float, color: str | None, text: str) -> None:
        """Ring the cell at ``world`` (``size`` world units across) in ``color``
        (``None``: cleared, grey) and show ``text`` on the canvas."""
        color = color or _CLEARED_COLOR
        if world is not None:
            point = (
                np.asarray([world[-2:]], dtype=float) if len(world) == 2 else np.asarray([world], dtype=float)
            )
            flash = find_flash_layer(self.viewer)
            if flash is None or flash.ndim != point.shape[1]:
                if flash is not None:
                    self.viewer.layers.remove(flash)
                active = self.viewer.layers.selection.active
                flash = Points(
                    point,
                    name="annotated cell",
                    symbol="ring",
                    size=size,
                    face_color=color,
                    border_width=0,
                    opacity=0.9,
                    metadata={META_KEY: {"role": FLASH_ROLE}},
                )
                flash.editable = False
                self.viewer.add_layer(flash)
                if active is not None and active in self.viewer.layers:  # adding made it active
                    self.viewer.layers.selection.active = active
            else:
                flash.data = point
                flash.size = size
                flash.face_color = color
                flash.visible = True
        overlay = text_overlay(self.viewer)
        if self._text is None:  # keep what someone else showed there
            self._overlay_before = (bool(overlay.visible), str(overlay.text))
        overlay.text = text
        overlay.visible = True
        self._text = text
        self._timer.start()

    def hide(self) -> None:
        """Hide the flash and give the text overlay back as it was."""
        self._timer.stop()
        flash = find_flash_layer(self.viewer)
        if flash is not None:
            flash.visible = False
        overlay = text_overlay(self.viewer)
        if self._text is not None and overlay.text == self._text and self._overlay_before is not None:
            overlay.visible, overlay.text = self._overlay_before
        self._text = None
        self._overlay_before = None

    @property
    def showing(self) -> bool:
        """Whether a flash is on screen now."""
        return self._text is not None


# ---- napari's status-bar help ------------------------------------------------------------
#: What the status bar says about our keys while the Phenotypes dock is open.
OUR_KEYS_HELP = (
    "use <1>-<9> to give the cell under the mouse a class (<0> clears it; <N> proposes the next cell)"
)
_ITEM = re.compile(r"use <([^>]+)> for ")


def help_without_keys(text: str, keys: set[str], ours: str = OUR_KEYS_HELP) -> str:
    """napari's ``"use <1> for activate the label eraser, ..."`` help with the items of
    ``keys`` (now ours) removed and ``ours`` said first."""
    text = text.replace(ours, "")  # said once, first, whatever napari did with it
    items = [item for item in text.split(", ") if item.strip()] if text else []
    kept = [item for item in items if not ((m := _ITEM.match(item)) and m.group(1) in keys)]
    return ", ".join([ours, *kept])


class KeyHelp:
    """Keeps napari's help text of labels layers true while our keys replace napari's
    number keys on them (napari writes it again on every mode change)."""

    def __init__(self, viewer: Any, keys: set[str]) -> None:
        self.viewer = viewer
        self.keys = set(keys)
        self._layers: list[Any] = []

    def attach(self, layer: Any) -> None:
        """Rewrite ``layer``'s help now and whenever napari changes it."""
        if any(lay is layer for lay in self._layers):
            return
        self._layers.append(layer)
        layer.events.help.connect(self._on_help)
        self._rewrite(layer)

    def _on_help(self, event: Any) -> None:
        self._rewrite(event.source)

    def _rewrite(self, layer: Any) -> None:
        text = help_without_keys(str(layer.help), self.keys)
        if text != layer.help:
            layer.help = text  # emits again; the second pass changes nothing
        if self.viewer.layers.selection.active is layer:
            self.viewer.help = text

    def forget(self, layer: Any) -> None:
        """Stop watching ``layer`` (it left the viewer)."""
        for lay in [lay for lay in self._layers if lay is layer]:
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                lay.events.help.disconnect(self._on_help)
            self._layers.remove(lay)

    def detach_all(self) -> None:
        """Give every layer napari's own help back (the dock closes)."""
        for layer in self._layers:
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                layer.events.help.disconnect(self._on_help)
            redo = getattr(type(self.viewer), "_layer_help_from_mode", None)
            if redo is not None:
                with contextlib.suppress(Exception):
                    redo(layer)
            if self.viewer.layers.selection.active is layer:
                self.viewer.help = layer.help
        self._layers.clear()
