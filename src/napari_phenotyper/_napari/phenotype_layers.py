"""The phenotyping session's images as napari labels layers, both ways.

:class:`LayerBridge` watches the viewer's labels layers: a measured one (a ``label``
column in its ``features``) joins the session, a re-measured one is handed over again,
a painted or re-segmented one is relabelled in the session (its annotations move), a
closed one leaves. The other way, it writes the session's ``pheno_*`` columns into each
layer's ``features`` and paints the phenotype view and the lost-annotation marks.
It holds no phenotyping state of its own: only which layer shows which image key.

A closed layer is let go only after the canvas has drawn a frame without it. Removing
our view layer, or changing the dock, inside napari's own handling of a removal made
the next frame crash in Mesa's ``glDrawArrays`` (napari 0.9, llvmpipe): annotate a few
cells, close the segmentation, and napari died.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd
from napari.layers import Labels
from qtpy.QtCore import QTimer

from ..core.classify.session import PhenotypingSession
from .feedback import canvas_widget
from .layers import features_for_layer, source_of, table_of
from .lost_view import find_lost_layer, update_lost_layer
from .phenotype_view import VIEW_ROLE, find_view, update_view

__all__ = ["LayerBridge", "layer_key"]


def layer_key(layer: Labels) -> str:
    """The image key of a labels layer's annotations: the image file when known, else the name."""
    meta = source_of(layer)
    path = meta.get("source_path") or getattr(layer.source, "path", None)
    return str(path) if path else f"layer:{layer.name}"


def _is_measured(layer: Any) -> bool:
    if not isinstance(layer, Labels) or source_of(layer).get("role") == VIEW_ROLE:
        return False
    return "label" in layer.features.columns and len(layer.features) > 0


def _cell_pixels(data: np.ndarray, table: pd.DataFrame, label: int) -> tuple[np.ndarray, ...]:
    """Indices of ``label``'s pixels, searched in its bounding box when the table has one
    (a 10-megapixel scan costs ~25 ms, the box well under one)."""
    cols = ("bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x")
    if data.ndim == 2 and set(cols) <= set(table.columns):
        hit = np.flatnonzero(table["label"].to_numpy() == int(label))
        if len(hit):
            y0, x0, y1, x1 = (int(table[c].iloc[int(hit[0])]) for c in cols)
            ys, xs = np.nonzero(data[y0:y1, x0:x1] == label)
            return ys + y0, xs + x0
    return np.nonzero(data == label)


class LayerBridge:
    """Keeps the session and the viewer's labels layers in step (see the module doc).

    Parameters
    ----------
    viewer : napari.Viewer
    session : PhenotypingSession
    display : callable
        Returns the phenotype view's mode and value range (read from the dock).
    on_layer : callable, optional
        Called with each labels layer the bridge starts watching (to bind keys on it).
    on_forget : callable, optional
        Called with each labels layer that left the viewer.
    host : QWidget, optional
        A widget in napari's window (the dock): how the canvas is found, to let go of a
        closed layer after the canvas's next frame (else after :data:`SETTLE_MS`).

    Call :meth:`sync` once to take the layers already in the viewer.
    """

    #: Longest wait after a layer closes before the session lets it go (no frame came).
    SETTLE_MS = 250
    #: How long an answer's repaint of the view waits, gathering the answers that follow
    #: (ms). The key's own feedback (the gallery tile, the flash) is painted first; the
    #: canvas, about 27 ms a frame with llvmpipe, then draws once for all of them.
    PAINT_MS = 40

    def __init__(
        self,
        viewer: Any,
        session: PhenotypingSession,
        display: Callable[[], tuple[str, tuple[float, float] | None]],
        on_layer: Callable[[Labels], None] | None = None,
        on_forget: Callable[[Labels], None] | None = None,
        host: Any = None,
    ) -> None:
        self.viewer = viewer
        self.session = session
        self._display = display
        self._on_layer = on_layer
        self._on_forget = on_forget
        self._watched: dict[int, Labels] = {}  # layer id -> every labels layer we watch
        self._keys: dict[int, str] = {}  # layer id -> image key (while in the session)
        self._bases: dict[str, pd.DataFrame] = {}  # key -> features with napari's index column
        self._writing = False
        self._host = host
        self._canvas: Any = None  # the canvas whose next frame we wait for
        self._settle = QTimer(host)  # dies with the dock: nothing fires into a deleted dock
        self._settle.setSingleShot(True)
        self._settle.setInterval(self.SETTLE_MS)
        self._settle.timeout.connect(self._settled)
        self._pending: dict[tuple[str, int], str | None] = {}  # cells to repaint in the view
        self._paint = QTimer(host)
        self._paint.setSingleShot(True)
        self._paint.setInterval(self.PAINT_MS)
        self._paint.timeout.connect(self.flush_paints)
        viewer.layers.events.inserted.connect(self.sync)
        viewer.layers.events.removed.connect(self._on_removed)

    def _on_removed(self, _event: Any = None) -> None:
        """A layer closed: let it go once the canvas has drawn without it (module doc)."""
        try:
            if self._settle.isActive():
                return
            self._settle.start()
        except RuntimeError:  # the dock (and its timer) was deleted: nothing to update
            return
        canvas = canvas_widget(self._host)
        if canvas is not None and hasattr(canvas, "frameSwapped"):
            canvas.frameSwapped.connect(self._settled)
            self._canvas = canvas

    def _stop_waiting(self) -> None:
        """Stop waiting for the frame after a removal (the timer and the canvas signal)."""
        with contextlib.suppress(RuntimeError):
            self._settle.stop()
        if self._canvas is not None:
            with contextlib.suppress(TypeError, RuntimeError):
                self._canvas.frameSwapped.disconnect(self._settled)
            self._canvas = None

    def _settled(self) -> None:
        self._stop_waiting()
        self.sync()

    # ---- which layer is which image ----------------------------------------------------
    def layers(self) -> list[Labels]:
        """The labels layers in the session (measured, not our views), still in the viewer."""
        present = {id(layer) for layer in self.viewer.layers}
        return [self._watched[lid] for lid in self._keys if lid in self._watched and lid in present]

    def key_of(self, layer: Labels) -> str:
        """The session key of ``layer`` (the key it would get when it is not in yet)."""
        return self._keys.get(id(layer)) or self._free_key(layer)

    def _free_key(self, layer: Labels) -> str:
        key = layer_key(layer)
        taken = {k for lid, k in self._keys.items() if lid != id(layer)}
        # two segmentations of one image file are two images of the session
        return key if key not in taken else f"{key}#{layer.name}"

    def layer_of(self, key: str) -> Labels | None:
        """The layer showing image ``key``; ``None`` once it left the viewer (even while
        the session has not let it go yet)."""
        for lid, k in self._keys.items():
            if k == key:
                layer = self._watched.get(lid)
                return layer if layer is not None and layer in self.viewer.layers else None
        return None

    def in_session(self, layer: Labels) -> bool:
        return id(layer) in self._keys

    # ---- viewer -> session -------------------------------------------------------------
    def sync(self, _event: Any = None) -> None:
        """Follow the viewer's layer list: watch new labels layers, drop closed ones."""
        present = {id(layer) for layer in self.viewer.layers}
        for lid in [lid for lid in self._watched if lid not in present]:
            layer = self._watched.pop(lid)
            self._unwatch(layer)
            for extra in (find_view(self.viewer, layer), find_lost_layer(self.viewer, layer)):
                if extra is not None and extra in self.viewer.layers:
                    self.viewer.layers.remove(extra)
            key = self._keys.pop(lid, None)
            if key is not None:
                self._bases.pop(key, None)
                self.session.remove_image(key)
            if self._on_forget is not None:
                self._on_forget(layer)
        for layer in list(self.viewer.layers):
            if id(layer) in self._watched:
                continue
            if isinstance(layer, Labels) and source_of(layer).get("role") != VIEW_ROLE:
                # watch every labels layer: one measured later joins then
                layer.events.features.connect(self._on_features)
                layer.events.data.connect(self._on_data)
                if hasattr(layer.events, "paint"):
                    layer.events.paint.connect(self._on_paint)
                self._watched[id(layer)] = layer
                if self._on_layer is not None:
                    self._on_layer(layer)
                self.adopt(layer)

    def _unwatch(self, layer: Labels) -> None:
        layer.events.features.disconnect(self._on_features)
        layer.events.data.disconnect(self._on_data)
        if hasattr(layer.events, "paint"):
            layer.events.paint.disconnect(self._on_paint)

    def adopt(self, layer: Labels) -> None:
        """Hand a (re)measured layer's table to the session (or take it out)."""
        if not _is_measured(layer):
            key = self._keys.pop(id(layer), None)
            if key is not None:
                self._bases.pop(key, None)
                self.session.remove_image(key)
            return
        key = self.key_of(layer)
        self._keys[id(layer)] = key
        table = table_of(layer)
        table = table.drop(columns=[c for c in table.columns if str(c).startswith("pheno_")])
        self._bases[key] = features_for_layer(table)
        self.session.set_image(
            key, table, layer.data, name=layer.name, path=source_of(layer).get("source_path")
        )

    def _on_features(self, event: Any) -> None:
        if not self._writing:
            self.adopt(event.source)

    def _on_data(self, event: Any) -> None:
        if not self._writing:
            self._relabel(event.source)

    def _on_paint(self, event: Any) -> None:
        self._relabel(event.source)

    def _relabel(self, layer: Labels) -> None:
        key = self._keys.get(id(layer))
        if key is not None:
            self.session.relabel(key, layer.data)

    # ---- session -> viewer -------------------------------------------------------------
    def write(self, keys: Iterable[str] | None = None) -> None:
        """Write the session's ``pheno_*`` columns into the layers of ``keys`` (all when
        ``None``) and repaint their phenotype views."""
        wanted = None if keys is None else set(keys)
        # the write paints every cell of those images: their waiting repaints are done
        self._pending = {k: v for k, v in self._pending.items() if wanted is not None and k[0] not in wanted}
        for layer in self.layers():
            key = self._keys[id(layer)]
            if (keys is not None and key not in keys) or key not in self.session.images:
                continue
            merged = pd.concat([self._bases[key], self.session.pheno_frame(key)], axis=1)
            self._writing = True
            try:
                layer.features = merged
                mode, value_range = self._display()
                update_view(
                    self.viewer,
                    layer,
                    merged,
                    [(c.name, c.color) for c in self.session.store.classes],
                    mode,
                    value_range=value_range,
                )
            finally:
                self._writing = False

    def paint_cell(self, key: str, label: int, cls: str | None) -> None:
        """Repaint one cell of the view (its answer), without touching the rest: within
        :data:`PAINT_MS`, with the answers that came meanwhile (:meth:`flush_paints`)."""
        self._pending[(str(key), int(label))] = cls
        with contextlib.suppress(RuntimeError):  # the dock (and its timer) was deleted
            if not self._paint.isActive():
                self._paint.start()

    def flush_paints(self) -> None:
        """Paint the answers waiting for the view now."""
        with contextlib.suppress(RuntimeError):
            self._paint.stop()
        pending, self._pending = self._pending, {}
        for (key, label), cls in pending.items():
            self._paint_cell(key, label, cls)

    def _paint_cell(self, key: str, label: int, cls: str | None) -> None:
        layer = self.layer_of(key)
        if layer is None:
            return
        view = find_view(self.viewer, layer)
        mode, _ = self._display()
        if view is None or mode not in ("predictions", "annotations"):
            return
        names = self.session.classes
        if cls is None:
            guess = self.session.predicted_class(key, label) if mode == "predictions" else None
            code = 1 + names.index(guess) if guess in names else 0
        else:
            code = 1 + len(names) + names.index(cls)
        where = _cell_pixels(np.asarray(layer.data), self.session.images[key].table, label)
        self._writing = True
        try:
            view.data_setitem(where, code)
        finally:
            self._writing = False

    def show_lost(self) -> None:
        """Mark every lost annotation (an x in its class colour) over its layer."""
        colors = self.session.colors()
        self._writing = True
        try:
            for layer in self.layers():
                update_lost_layer(self.viewer, layer, self.session.store.lost(self._keys[id(layer)]), colors)
        finally:
            self._writing = False

    def cell_under_cursor(self) -> tuple[Labels, int] | None:
        """The measured cell under the mouse (the active layer first)."""
        pos = self.viewer.cursor.position
        active = self.viewer.layers.selection.active
        for layer in sorted(self.layers(), key=lambda lay: lay is not active):
            if not layer.visible:
                continue
            value = layer.get_value(pos, world=True)
            if isinstance(value, tuple):  # multiscale: (level, value)
                value = value[-1]
            if value is not None and int(value) > 0:
                return layer, int(value)
        return None

    def close(self) -> None:
        """Stop watching the viewer."""
        self.viewer.layers.events.inserted.disconnect(self.sync)
        self.viewer.layers.events.removed.disconnect(self._on_removed)
        self._stop_waiting()
        for layer in self._watched.values():
            self._unwatch(layer)
        self._watched.clear()
