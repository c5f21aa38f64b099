"""What a class key press shows: a short flash on the cell in its class colour and a
line on the canvas with the class's new count.

The dock's status line is far from where the biologist looks, and napari overwrites
its own status bar on the next mouse move; the flash and the canvas line are where
the eyes are. Both are drawn by a transparent Qt widget over napari's canvas, not by
napari layers or overlays: a first Points layer or text overlay compiles GL shaders
on the GUI thread (measured 0.3-2 s with Mesa's llvmpipe), a Qt paint costs well
under a millisecond. They hide again after :data:`FLASH_MS` or when the camera moves.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt, QTimer
from qtpy.QtGui import QColor, QFont, QPainter, QPen
from qtpy.QtWidgets import QWidget

from .layers import camera as camera_of

__all__ = ["FLASH_MS", "AnnotationFlash", "KeyHelp", "canvas_widget", "help_without_keys"]

#: How long the flash and the canvas line stay (ms).
FLASH_MS = 700
_CLEARED_COLOR = "#B0B0B0"


def canvas_widget(host: QWidget | None) -> QWidget | None:
    """napari's canvas as a Qt widget: the largest OpenGL widget in ``host``'s window.

    Found through Qt, not through napari's private ``_qt_viewer`` (which napari warns
    plugins about); ``None`` when ``host`` is not in a window with a canvas yet.
    """
    if host is None:
        return None
    try:
        window = host.window()
    except RuntimeError:  # deleted
        return None
    from qtpy.QtOpenGLWidgets import QOpenGLWidget

    found = [w for w in window.findChildren(QOpenGLWidget) if not w.isHidden()]
    return max(found, key=lambda w: w.width() * w.height()) if found else None


class _Overlay(QWidget):
    """Transparent and click-through, over the canvas: the ring round a cell, or the
    line of text at the canvas's foot.

    Each is its own small widget, as large as what it draws: Qt repaints and composites
    (with napari's GL canvas) only the area of a widget that changed, so a canvas-sized
    overlay cost about 15 ms a key press on llvmpipe where these cost a few.
    """

    def __init__(self, parent: QWidget, kind: str) -> None:
        super().__init__(parent)
        self.kind = kind  # "ring" or "line"
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.setAttribute(Qt.WidgetAttribute.WA_NoSystemBackground)
        self.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.ring: tuple[float, float, float] | None = None  # x, y, radius in canvas pixels
        self.color = QColor(_CLEARED_COLOR)
        self.text = ""
        font = QFont(self.font())
        font.setPointSizeF(max(font.pointSizeF(), 11.0))
        self.setFont(font)
        self.hide()

    def _pen(self) -> float:
        return max(3.0, self.ring[2] * 0.15) if self.ring is not None else 3.0

    def place(self) -> None:
        """Fit the widget to what it draws (canvas pixels), and show it, or hide it when
        there is nothing to draw."""
        canvas = self.parentWidget()
        if self.kind == "ring":
            if self.ring is None:
                self.hide()
                return
            x, y, r = self.ring
            half = r + self._pen()
            self.setGeometry(int(x - half) - 1, int(y - half) - 1, int(2 * half) + 3, int(2 * half) + 3)
        else:
            if not self.text:
                self.hide()
                return
            metrics = self.fontMetrics()
            w, h = metrics.horizontalAdvance(self.text) + 20, metrics.height() + 10
            self.setGeometry(int((canvas.width() - w) / 2), canvas.height() - h - 12, w, h)
        self.show()
        self.raise_()
        self.update()

    def paintEvent(self, _event: Any) -> None:  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        if self.kind == "ring" and self.ring is not None:
            x, y, r = self.ring
            painter.setPen(QPen(self.color, self._pen()))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawEllipse(QPointF(x - self.x(), y - self.y()), r, r)
        elif self.kind == "line" and self.text:
            box = QRectF(0, 0, self.width(), self.height())
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(QColor(0, 0, 0, 170))
            painter.drawRoundedRect(box, 6, 6)
            painter.setPen(QColor("white"))
            painter.drawText(box, Qt.AlignmentFlag.AlignCenter, self.text)
        painter.end()


class AnnotationFlash:
    """Flash an annotated cell and say what changed on the canvas, for a moment.

    ``text``, ``color`` and ``ring`` (screen position and radius) say what is shown,
    for tests and scripts; ``showing`` whether it is on screen.
    """

    def __init__(self, viewer: Any, host: QWidget | None = None) -> None:
        self.viewer = viewer
        self.host = host  # a widget in napari's window (the dock): where the canvas is found
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(FLASH_MS)
        self._timer.timeout.connect(self.hide)
        self._overlays: tuple[_Overlay, _Overlay] | None = None  # the ring, the line
        self._canvas: QWidget | None = None  # napari's canvas, once found
        self.text = ""
        self.color: str | None = None
        self.ring: tuple[float, float, float] | None = None
        self.showing = False
        camera = camera_of(viewer)
        if camera is not None:
            camera.events.center.connect(self._on_camera)
            camera.events.zoom.connect(self._on_camera)

    def _find_canvas(self) -> QWidget | None:
        """napari's canvas (looked up once: a search of the window's widgets costs ~4 ms)."""
        canvas = self._canvas
        if canvas is not None:
            with contextlib.suppress(RuntimeError):  # deleted with its window
                canvas.isHidden()
                return canvas
        self._canvas = canvas_widget(self.host)
        return self._canvas

    def _get_overlays(self) -> tuple[_Overlay, _Overlay] | None:
        if self._overlays is not None:
            with contextlib.suppress(RuntimeError):  # their canvas was deleted
                for w in self._overlays:
                    w.isVisible()
                return self._overlays
            self._overlays = None
        canvas = self._find_canvas()
        if canvas is None:
            return None
        self._overlays = (_Overlay(canvas, "ring"), _Overlay(canvas, "line"))
        return self._overlays

    @property
    def _ring(self) -> _Overlay | None:
        return self._overlays[0] if self._overlays is not None else None

    @property
    def _line(self) -> _Overlay | None:
        return self._overlays[1] if self._overlays is not None else None

    def _screen(self, world: np.ndarray, size: float) -> tuple[float, float, float] | None:
        """Where ``world`` (y, x) is on the canvas, in widget pixels (2D views only)."""
        canvas = self._ring.parentWidget() if self._ring is not None else self._find_canvas()
        dims = getattr(self.viewer, "dims", None)
        if canvas is None or (dims is not None and int(getattr(dims, "ndisplay", 2)) != 2):
            return None
        camera = camera_of(self.viewer)
        cy, cx = (float(v) for v in tuple(camera.center)[-2:])
        zoom = float(camera.zoom)
        y, x = float(world[-2]), float(world[-1])
        sx = (x - cx) * zoom + canvas.width() / 2
        sy = (y - cy) * zoom + canvas.height() / 2
        return sx, sy, max(size * zoom / 2, 6.0)

    def show(self, world: np.ndarray | None, size: float, color: str | None, text: str) -> None:
        """Ring the cell at ``world`` (``size`` world units across) in ``color``
        (``None``: cleared, grey) and show ``text`` on the canvas."""
        self.text, self.color = text, color or _CLEARED_COLOR
        self.ring = None if world is None else self._screen(np.asarray(world, dtype=float), size)
        self.showing = True
        overlays = self._get_overlays()
        if overlays is not None:
            for w in overlays:
                w.ring, w.color, w.text = self.ring, QColor(self.color), text
                w.place()
        self._timer.start()

    def _on_camera(self, _event: Any = None) -> None:
        if self.showing and self.ring is not None:  # the ring would point at another cell
            self.ring = None
            if self._ring is not None:
                with contextlib.suppress(RuntimeError):
                    self._ring.ring = None
                    self._ring.place()

    def hide(self) -> None:
        """Take the flash and the line away."""
        self._timer.stop()
        self.showing = False
        for w in self._overlays or ():
            with contextlib.suppress(RuntimeError):
                w.hide()

    def close(self) -> None:
        """Hide and stop following the camera (the dock closes)."""
        self.hide()
        camera = camera_of(self.viewer)
        if camera is not None:
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                camera.events.center.disconnect(self._on_camera)
                camera.events.zoom.disconnect(self._on_camera)


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
