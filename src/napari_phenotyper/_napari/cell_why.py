"""Why the cell under the mouse got its class, in a line of a dock.

The explanation (:meth:`PhenotypingSession.explain`) predicts the cell once per
feature, ~10-40 ms: it runs only after the mouse has rested on a cell for
:data:`REST_MS`, and only when that cell changed.
"""

from __future__ import annotations

import contextlib
from typing import Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QLabel

__all__ = ["REST_MS", "CellWhy"]

#: How long the mouse rests on a cell before its explanation is computed (ms).
REST_MS = 300


class CellWhy:
    """Shows ``session.explain`` of the cell under the mouse (found by the dock's
    :class:`~napari_phenotyper._napari.phenotype_layers.LayerBridge`) in ``label``."""

    def __init__(self, viewer: Any, session: Any, bridge: Any, label: QLabel) -> None:
        self.viewer, self.session, self.bridge, self.label = viewer, session, bridge, label
        self._last: tuple[str, int] | None = None
        self._timer = QTimer(label)
        self._timer.setSingleShot(True)
        self._timer.setInterval(REST_MS)
        self._timer.timeout.connect(self.update)
        viewer.mouse_move_callbacks.append(self._on_move)
        session.events.predictions.connect(self._forget)

    def _on_move(self, _viewer: Any, _event: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the dock was deleted
            self._timer.start()

    def _forget(self, *_: Any) -> None:
        self._last = None  # a new model: the same cell gets a new explanation

    def target(self) -> tuple[str, int] | None:
        hit = self.bridge.cell_under_cursor()
        return (self.bridge.key_of(hit[0]), int(hit[1])) if hit is not None else None

    def update(self) -> str:
        """Explain the cell under the mouse now (the timer calls it); returns the text shown."""
        cell = self.target()
        if cell is None or cell == self._last:
            return self.label.text()
        self._last = cell
        why = self.session.explain(*cell)
        text = why.text() if why is not None else ""
        with contextlib.suppress(RuntimeError):
            self.label.setText(text)
            self.label.setVisible(bool(text))
        return text

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            self.viewer.mouse_move_callbacks.remove(self._on_move)
        with contextlib.suppress(TypeError, ValueError, RuntimeError):
            self.session.events.predictions.disconnect(self._forget)
            self._timer.stop()
