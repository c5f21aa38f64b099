"""How our docks sit in napari's window: scrollable bodies, tabbed together, titles as typed.

napari stacks every plugin dock of one side on top of the other, so the Segment &
measure, Cell table and Phenotypes docks needed about 1,900 px of height and a
1200 px screen could reach neither the canvas bottom nor the dock buttons. Ours
open as tabs of one dock area instead (drag a tab out to put it beside), each with
a scrollable body so that no dock asks for more height than a laptop screen has.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtWidgets import QDockWidget, QFrame, QMainWindow, QScrollArea, QVBoxLayout, QWidget

_PLUGIN = "napari-phenotyper"
_MARK = "napari_phenotyper_dock"  # a Qt property on the inner widget of each of our docks


class _DockBody(QScrollArea):
    """Scrolls vertically; as wide as its widget needs (its minimum follows the widget)."""

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt's name)
        hint = super().minimumSizeHint()
        inner = self.widget()
        if inner is None:
            return hint
        bar = self.verticalScrollBar().sizeHint().width()
        return QSize(inner.minimumSizeHint().width() + bar, hint.height())


def scroll_body(widget: QWidget) -> QScrollArea:
    """Move ``widget``'s layout (and the widgets in it) into a vertically scrolling area.

    Call it once the layout is built. ``widget`` stays what napari docks and finds
    (``remove_dock_widget(widget)`` works); code that adds to the layout later still
    can, it now lives on the area's body. (napari docks a magicgui container's inner
    widget, not the scroll area of ``Container(scrollable=True)``, so that has no effect.)
    """
    body = QWidget()
    body.setLayout(widget.layout())  # Qt moves a layout and its widgets to the new owner
    area = _DockBody(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    # never a horizontal bar: the area's minimum width follows the body's (minimumSizeHint),
    # so a bar could only scroll the couple of pixels a style sheet's wider vertical bar takes
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setWidget(body)
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    return area


def escape_mnemonic(text: str) -> str:
    """``text`` as Qt shows it literally on tabs, buttons and menus (``&`` is a mnemonic)."""
    return text.replace("&", "&&")


def _dock_of(widget: QWidget) -> QDockWidget | None:
    parent: Any = widget.parent()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parent()
    return parent


def _is_ours(dock: QDockWidget) -> bool:
    inner = dock.widget()
    if inner is None:
        return False
    if inner.property(_MARK):
        return True
    return any(
        child.property(_MARK)
        for child in inner.findChildren(QWidget, options=Qt.FindChildOption.FindDirectChildrenOnly)
    )


def settle(widget: QWidget) -> bool:
    """Escape the ``&`` in the dock's tab and menu title and put it in a tab with our
    other docks of the same area. Returns whether ``widget`` is docked."""
    dock = _dock_of(widget)
    if dock is None:
        return False
    window = dock.parent()
    title = str(getattr(dock, "name", "") or dock.windowTitle())
    if not dock.property(_MARK):  # once: napari's title bar keeps its own text
        dock.setProperty(_MARK, True)
        # the tab shows the dock's window title: short (six tabs share one dock's
        # width) and with "&" shown as typed, not as a keyboard mnemonic
        dock.setWindowTitle(escape_mnemonic(title.removesuffix(f" ({_PLUGIN})")))
        dock.toggleViewAction().setText(escape_mnemonic(title))
    if not isinstance(window, QMainWindow) or dock.isFloating():
        return True
    area = window.dockWidgetArea(dock)
    others = [
        d
        for d in window.findChildren(QDockWidget)
        if d is not dock
        and _is_ours(d)
        and not d.isHidden()
        and not d.isFloating()
        and window.dockWidgetArea(d) == area
    ]
    if others and dock not in window.tabifiedDockWidgets(others[-1]):
        window.tabifyDockWidget(others[-1], dock)
        dock.show()
        dock.raise_()  # the dock just opened is the tab shown
    return True


def settle_when_docked(widget: QWidget) -> None:
    """Mark ``widget`` as one of our docks and :func:`settle` it once napari has docked it."""
    widget.setProperty(_MARK, True)
    tries = [0]

    def attempt() -> None:
        try:
            docked = settle(widget)
        except RuntimeError:  # deleted before it was docked
            return
        tries[0] += 1
        if not docked and tries[0] < 20:  # not docked yet (e.g. a test docks it later)
            QTimer.singleShot(50, attempt)

    QTimer.singleShot(0, attempt)
