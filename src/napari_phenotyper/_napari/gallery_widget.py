"""The Gallery dock: answer many cells from a page of thumbnails, one key each.

One more view of the viewer's :class:`~napari_phenotyper.core.classify.session.PhenotypingSession`
(found through the Phenotypes dock): it shows a page chosen by
:func:`napari_phenotyper.core.gallery.page_tiles`, turns keys into session calls and
follows the session's events. What a page shows and how a thumbnail is made live in
:mod:`napari_phenotyper.core.gallery`; this module only draws them.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import numpy as np
from napari.layers import Image
from qtpy.QtCore import QPoint, QRect, QSize, Qt, QTimer
from qtpy.QtGui import QColor, QImage, QPainter, QPen, QPixmap
from qtpy.QtWidgets import (
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QRubberBand,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

import napari

from ..core.classify.workflow import PAGE_SIZE
from ..core.gallery import ORDERS, SOURCES, Channel, Tile, cell_plane, crop_box, page_tiles, thumbnail
from .docking import settle_when_docked
from .layers import fly_to_cell
from .phenotype_widget import PhenotypeWidget, find_phenotypes

__all__ = ["GalleryWidget"]

#: How often the dock looks for the viewer's Phenotypes dock (ms) while it has none.
POLL_MS = 500
_KEYS = {getattr(Qt.Key, f"Key_{i}"): i for i in range(10)}


def _warm_up_kmeans() -> None:
    """Import scikit-learn's k-means and fit it once, off the GUI thread: the first page of
    proposals otherwise paid ~190 ms for the import and the thread-pool probe."""
    with contextlib.suppress(Exception):
        from sklearn.cluster import KMeans

        KMeans(n_clusters=2, n_init=1, random_state=0).fit(np.arange(8.0).reshape(4, 2))


class _Tile(QWidget):
    """One thumbnail: the picture, its answer as a coloured frame, a selection mark."""

    def __init__(self, parent: QWidget, tile: Tile, pixmap: QPixmap, size: int) -> None:
        super().__init__(parent)
        self.tile = tile
        self.pixmap = pixmap
        self.answer: str | None = None
        self.color: QColor | None = None
        self.selected = False
        self.hovered = False
        self.setFixedSize(QSize(size + 8, size + 8))
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)  # the grid handles the mouse
        self.setToolTip(f"cell {tile.label} {tile.note}".strip())

    def paintEvent(self, _event: Any) -> None:  # noqa: N802 (Qt's name)
        p = QPainter(self)
        p.drawPixmap(4, 4, self.pixmap)
        if self.color is not None:
            p.setPen(QPen(self.color, 4))
            p.drawRect(QRect(2, 2, self.width() - 4, self.height() - 4))
        if self.selected or self.hovered:
            pen = QPen(
                QColor("white"),
                2,
                Qt.PenStyle.DashLine if self.hovered and not self.selected else Qt.PenStyle.SolidLine,
            )
            p.setPen(pen)
            p.drawRect(QRect(5, 5, self.width() - 11, self.height() - 11))
        if self.answer:
            p.setPen(QColor("white"))
            p.drawText(
                QRect(6, self.height() - 22, self.width() - 12, 16), Qt.AlignmentFlag.AlignLeft, self.answer
            )
        p.end()


class _Grid(QWidget):
    """The page: tiles in rows; the mouse hovers, clicks, ctrl/shift-clicks and drags a band."""

    def __init__(self, gallery: GalleryWidget) -> None:
        super().__init__()
        self.gallery = gallery
        self.layout_ = QGridLayout(self)
        self.layout_.setSpacing(2)
        self.layout_.setContentsMargins(2, 2, 2, 2)
        self.layout_.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)  # rows packed
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self._band = QRubberBand(QRubberBand.Shape.Rectangle, self)
        self._origin: QPoint | None = None
        self._dragging = False

    def tile_at(self, pos: QPoint) -> int | None:
        for i, t in enumerate(self.gallery.tiles):
            if t.geometry().contains(pos):
                return i
        return None

    def mousePressEvent(self, event: Any) -> None:  # noqa: N802
        self.setFocus()
        self._origin = event.position().toPoint() if hasattr(event, "position") else event.pos()
        self._band.setGeometry(QRect(self._origin, QSize()))
        self._dragging = False

    def mouseMoveEvent(self, event: Any) -> None:  # noqa: N802
        pos = event.position().toPoint() if hasattr(event, "position") else event.pos()
        if self._origin is not None and (pos - self._origin).manhattanLength() > 6:
            self._band.setGeometry(QRect(self._origin, pos).normalized())
            self._band.show()
            self._dragging = True
        self.gallery.hover(self.tile_at(pos))

    def mouseReleaseEvent(self, event: Any) -> None:  # noqa: N802
        pos = event.position().toPoint() if hasattr(event, "position") else event.pos()
        mods = event.modifiers()
        if self._dragging:
            self._dragging = False
            rect = self._band.geometry()
            self._band.hide()
            hits = [i for i, t in enumerate(self.gallery.tiles) if rect.intersects(t.geometry())]
            self.gallery.select(hits, add=bool(mods & Qt.KeyboardModifier.ControlModifier))
        else:
            hit = self.tile_at(pos)
            if hit is not None:
                self.gallery.click(hit, mods)
        self._origin = None

    def leaveEvent(self, _event: Any) -> None:  # noqa: N802
        self.gallery.hover(None)

    def keyPressEvent(self, event: Any) -> None:  # noqa: N802
        if not self.gallery.key(event.key(), event.modifiers()):
            super().keyPressEvent(event)


class GalleryWidget(QWidget):
    """Sort cells into classes from pages of thumbnails (see the user guide)."""

    def __init__(
        self, napari_viewer: napari.viewer.Viewer, phenotypes: PhenotypeWidget | None = None
    ) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._phenotypes = phenotypes
        self.session: Any = None
        self.tiles: list[_Tile] = []
        self.shown: set[tuple[str, int]] = set()  # cells of this source's earlier pages
        self._hover: int | None = None
        self._anchor: int | None = None
        self._build()
        self._why = QTimer(self)  # the hovered cell's explanation, once the mouse rests
        self._why.setSingleShot(True)
        self._why.setInterval(300)
        self._why.timeout.connect(self.explain_hovered)
        self._poll = QTimer(self)
        self._poll.setInterval(POLL_MS)
        self._poll.timeout.connect(self._follow_session)
        self._poll.start()
        threading.Thread(target=_warm_up_kmeans, name="gallery-warm-up", daemon=True).start()
        self._follow_session()
        settle_when_docked(self)  # a tab beside our other docks, not a split of the side

    # ---- widgets -------------------------------------------------------------------
    def _build(self) -> None:
        # compact: the dock often shares the right side with the Phenotypes dock, and the
        # tiles need the height (each control row keeps its height: nothing is squashed)
        outer = QVBoxLayout(self)
        outer.setSpacing(4)
        self.source = QComboBox()
        for k, name in SOURCES.items():
            self.source.addItem(name, k)
        self.source.setToolTip("Which cells the pages show")
        outer.addWidget(self.source)
        which = QHBoxLayout()
        self.cls = QComboBox()
        self.cls.setToolTip("The class: predicted as / annotated as")
        self.as_cls = QComboBox()  # the confused source: cross-validated as this class
        self.as_cls.setToolTip("…that the cross-validation called this class")
        self.order = QComboBox()
        for k, name in ORDERS.items():
            self.order.addItem(name, k)
        self.order.setToolTip("Order of the predicted cells")
        for w in (self.cls, self.as_cls):
            w.setMinimumContentsLength(6)
            which.addWidget(w, 1)
        # its names in full ("uncertain first" was clipped); the class combos share the rest
        self.order.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        which.addWidget(self.order)
        outer.addLayout(which)
        row = QHBoxLayout()
        self.size = QSpinBox()
        self.size.setRange(32, 256)
        self.size.setValue(96)
        self.size.setSuffix(" px")
        self.size.setToolTip("Thumbnail size")
        self.per_page = QSpinBox()
        self.per_page.setRange(1, 96)
        self.per_page.setValue(PAGE_SIZE)  # the page the workflow benchmark measures
        self.per_page.setSuffix(" / page")
        self.per_page.setToolTip("Thumbnails per page")
        self.show_btn = QPushButton("Show")
        self.next_btn = QPushButton("Next page")
        for w in (self.size, self.per_page, self.show_btn, self.next_btn):
            row.addWidget(w)
        outer.addLayout(row)
        self.status = QLabel("Open the Phenotypes dock and add classes, then press Show.")
        self.status.setWordWrap(True)
        outer.addWidget(self.status)
        self.grid = _Grid(self)
        self.grid.setToolTip(
            "Keys 1-9 give the selected (else the hovered) cells a class, 0 clears, Ctrl+Z undoes, "
            "Ctrl+A selects the page. Click selects and shows the cell in the viewer; "
            "Ctrl/Shift+click or drag select many."
        )
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setWidget(self.grid)
        self.scroll.setMinimumHeight(120)
        outer.addWidget(self.scroll, 1)
        help_ = QLabel("1-9 class · 0 clear · Ctrl+Z undo · click / Ctrl / Shift / drag select")
        help_.setWordWrap(True)
        outer.addWidget(help_)
        for w in (self.source, self.cls, self.size, self.show_btn, help_):
            w.setMinimumHeight(w.sizeHint().height())  # a squeezed dock scrolls, never overlaps
        self.show_btn.clicked.connect(lambda: self.show_page(fresh=True))
        self.next_btn.clicked.connect(lambda: self.show_page(fresh=False))
        self.source.currentIndexChanged.connect(self._source_changed)
        self._source_changed()

    def _source_changed(self, *_: Any) -> None:
        src = self.source.currentData()
        self.cls.setEnabled(src in ("predicted", "annotated", "confused"))
        self.as_cls.setEnabled(src == "confused")
        self.order.setEnabled(src == "predicted")

    # ---- the session ---------------------------------------------------------------
    def phenotypes(self) -> PhenotypeWidget | None:
        return self._phenotypes if self._phenotypes is not None else find_phenotypes(self.viewer)

    def _follow_session(self) -> None:
        pheno = self.phenotypes()
        session = pheno.session if pheno is not None else None
        if session is self.session:
            return
        if self.session is not None:
            self._disconnect()
        self.session = session
        if session is not None:
            ev = session.events
            ev.annotations.connect(self._restyle)
            ev.classes.connect(self._on_classes)
            ev.predictions.connect(self._on_predictions)
            ev.images.connect(self._on_images)
            ev.review.connect(self.review)
        self._on_classes()

    def _disconnect(self) -> None:
        ev = self.session.events
        for sig, slot in (
            (ev.annotations, self._restyle),
            (ev.classes, self._on_classes),
            (ev.predictions, self._on_predictions),
            (ev.images, self._on_images),
            (ev.review, self.review),
        ):
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                sig.disconnect(slot)

    def _on_classes(self, *_: Any) -> None:
        names = self.session.classes if self.session is not None else []
        for combo in (self.cls, self.as_cls):
            current = combo.currentText()
            if [combo.itemText(i) for i in range(combo.count())] != names:
                combo.blockSignals(True)
                combo.clear()
                combo.addItems(names)
                if current in names:
                    combo.setCurrentText(current)
                combo.blockSignals(False)
        self._restyle()
        if not self.tiles:  # no page yet: say what is missing, if anything
            if self.session is None:
                hint = "Open the Phenotypes dock and add classes, then press Show."
            elif not names:
                hint = "Add classes in the Phenotypes dock, then press Show."
            else:
                hint = f"Press Show for a page of cells: {self.source.currentText().lower()}."
            self.status.setText(hint)

    def review(self, true: str, predicted: str) -> list[Tile]:
        """Show the cells annotated ``true`` that the cross-validation called ``predicted``
        (a click on the confusion matrix), and bring the dock to the front."""
        self.source.setCurrentIndex(self.source.findData("confused"))
        self.cls.setCurrentText(true)
        self.as_cls.setCurrentText(predicted)
        dock = self.parentWidget()
        while dock is not None and not hasattr(dock, "setFloating"):
            dock = dock.parentWidget()
        if dock is not None:
            dock.show()
            dock.raise_()
        return self.show_page(fresh=True)

    def _on_predictions(self, *_: Any) -> None:
        """A retrain finished: a page waiting for a model, or all answered, gets new cells."""
        if self.tiles and not all(t.answer for t in self.tiles):
            return
        if self.source.currentData() in ("proposals", "predicted") and self.isVisible():
            self.show_page(fresh=False)

    def _on_images(self, *_: Any) -> None:
        keep = [t for t in self.tiles if self.session is not None and t.tile.key in self.session.images]
        if len(keep) != len(self.tiles):
            self._place([t.tile for t in keep])

    # ---- pages ---------------------------------------------------------------------
    def show_page(self, fresh: bool = True) -> list[Tile]:
        """Show a page of the chosen source (``fresh``: forget the cells shown before)."""
        self._follow_session()
        if self.session is None:
            self.status.setText("Open the Phenotypes dock first: the gallery shows its session.")
            self._place([])
            return []
        if fresh:
            self.shown.clear()
        src = str(self.source.currentData())
        try:
            tiles = page_tiles(
                self.session,
                src,
                self.per_page.value(),
                cls=self.cls.currentText() or None,
                order=str(self.order.currentData()),
                predicted_as=self.as_cls.currentText() or None,
                exclude=self.shown if src != "proposals" else (),
            )
        except ValueError as err:
            self.status.setText(str(err))
            self._place([])
            return []
        if not tiles and not fresh and self.shown and src != "proposals":
            self.shown.clear()  # the source is exhausted: start over
            return self.show_page(fresh=True)
        self.shown.update((t.key, t.label) for t in tiles)
        self._place(tiles)
        if not tiles:
            empty = {
                "proposals": self.session.ready_to_train()
                or "No proposals yet: the model is training, or every cell is answered.",
                "predicted": "No unannotated cell is predicted as this class (train first).",
                "unannotated": "Every cell is annotated.",
                "annotated": "No cell is annotated as this class yet.",
                "confused": "No such cell in the last cross-validation (it runs after a pause).",
            }
            self.status.setText(empty[src])
        else:
            cls, called = self.cls.currentText(), self.as_cls.currentText()
            what = {
                "proposals": "the most informative",
                "predicted": f"predicted {cls}, {self.order.currentText()}",
                "unannotated": "unannotated, at random",
                "annotated": f"annotated {cls}",
                "confused": f"annotated {cls}, cross-validated as {called}",
            }[src]
            self.status.setText(f"{len(tiles)} cells: {what}.")
        return tiles

    def _channels(self, labels: Any, z: int | None = None) -> list[Channel]:
        """The image layers shown with ``labels``: visible ones of its shape (else any)."""
        shape = tuple(labels.data.shape[-2:])
        images = [
            lay
            for lay in self.viewer.layers
            if isinstance(lay, Image)
            and tuple((lay.data[0] if lay.multiscale else lay.data).shape[-3 if lay.rgb else -2 :][:2])
            == shape
        ]
        shown = [lay for lay in images if lay.visible] or images[:1]
        out = []
        for lay in shown:
            data = self._plane(lay.data[0] if lay.multiscale else lay.data, rgb=lay.rgb, z=z)
            lut = None if lay.rgb else np.asarray(lay.colormap.map(np.linspace(0, 1, 256)))[:, :3]
            out.append(Channel(data, tuple(lay.contrast_limits), lut, float(lay.gamma)))
        return out

    def _plane(self, data: Any, rgb: bool = False, z: int | None = None) -> Any:
        """The 2-D plane (or RGB plane) of ``data`` the viewer shows now (lazy for dask);
        with ``z``, that plane of the last stack axis (a 3-D cell's middle plane)."""
        lead = data.ndim - (3 if rgb else 2)
        if lead <= 0:
            return data
        step = tuple(int(v) for v in self.viewer.dims.current_step)
        idx = list(step[-(lead + 2) : -2] if len(step) >= lead + 2 else (0,) * lead)
        if z is not None:
            idx[-1] = min(max(0, z), data.shape[lead - 1] - 1)
        return data[tuple(idx)]

    def _render(self, tile: Tile, size: int, cache: dict[str, Any]) -> QPixmap:
        """One thumbnail; ``cache`` keeps, per image key, its layer's channels and labels
        (looked up once per page, not once per tile)."""
        entry = self.session.images.get(tile.key)
        z = None if entry is None else cell_plane(entry.table, tile.label)  # 3-D: the middle plane
        if (tile.key, z) not in cache:
            pheno = self.phenotypes()
            layer = pheno.bridge.layer_of(tile.key) if pheno is not None else None
            found = None if layer is None else (self._channels(layer, z), self._plane(layer.data, z=z))
            cache[(tile.key, z)] = found
        cache[tile.key] = cache[(tile.key, z)]
        if cache[tile.key] is None or entry is None:
            pix = QPixmap(size, size)
            pix.fill(QColor("black"))
            return pix
        channels, labels = cache[tile.key]
        box = crop_box(entry.table, tile.label, labels.shape)
        rgb = np.ascontiguousarray(thumbnail(channels, labels, tile.label, box, size=size))
        img = QImage(rgb.data, size, size, 3 * size, QImage.Format.Format_RGB888)
        return QPixmap.fromImage(img.copy())

    def _place(self, tiles: list[Tile]) -> None:
        for t in self.tiles:
            self.grid.layout_.removeWidget(t)
            t.deleteLater()
        self.tiles = []
        self._hover = self._anchor = None
        size = self.size.value()
        cols = max(1, (self.scroll.viewport().width() - 4) // (size + 10))
        cache: dict[str, Any] = {}
        for i, tile in enumerate(tiles):
            w = _Tile(self.grid, tile, self._render(tile, size, cache), size)
            self.grid.layout_.addWidget(w, i // cols, i % cols)
            self.tiles.append(w)
        self.grid.layout_.activate()  # tile geometry now, for the mouse (also while hidden)
        self._restyle()

    # ---- answers -------------------------------------------------------------------
    def _restyle(self, *_: Any) -> None:
        """Each tile's frame says its answer (in its class's colour); cheap: no re-render."""
        if self.session is None:
            return
        colors = self.session.colors()
        for t in self.tiles:
            cls = self.session.store.get(t.tile.key, t.tile.label)
            answer = cls if isinstance(cls, str) else None
            if answer != t.answer:
                t.answer = answer
                t.color = QColor(colors[answer]) if answer in colors else None
                t.update()

    def targets(self) -> list[_Tile]:
        """The tiles a key answers: the selected ones, else the one under the mouse."""
        chosen = [t for t in self.tiles if t.selected]
        if chosen:
            return chosen
        return [self.tiles[self._hover]] if self._hover is not None and self._hover < len(self.tiles) else []

    def answer(self, number: int) -> int:
        """Give the target tiles class ``number`` (1-9; 0 clears). Returns how many changed."""
        if self.session is None:
            return 0
        names = self.session.classes
        if number and number > len(names):
            self.status.setText(f"No class {number}: add it in the Phenotypes dock.")
            return 0
        cls = names[number - 1] if number else None
        targets = self.targets()
        if not targets:
            self.status.setText(
                "Select cells (click, Ctrl/Shift+click, drag) or point at one, then press its class key."
            )
            return 0
        by_key: dict[str, list[int]] = {}
        for t in targets:
            by_key.setdefault(t.tile.key, []).append(t.tile.label)
        n = 0
        if len(targets) == 1:  # one cell: the Phenotypes dock's key path (repaints one cell)
            t = targets[0].tile
            before = self.session.store.get(t.key, t.label)
            self.session.annotate(t.key, t.label, cls)
            n = int(before != cls)
        else:  # many: one autosave, one undo step, one retrain
            for key, labels in by_key.items():
                n += self.session.annotate_many(key, labels, cls)
        for t in targets:
            t.selected = False
            t.update()
        cells = "1 cell" if len(targets) == 1 else f"{len(targets)} cells"
        self.status.setText(f"{cells} {'cleared' if cls is None else f'→ {cls}'}.")
        if self.tiles and all(t.answer for t in self.tiles):
            QTimer.singleShot(0, lambda: self.show_page(fresh=False))  # the page is done
        return n

    def key(self, key: int, mods: Any) -> bool:
        """A key pressed in the gallery; ``True`` when it was ours."""
        ctrl = bool(mods & Qt.KeyboardModifier.ControlModifier)
        if ctrl and key == Qt.Key.Key_Z and self.session is not None:
            (self.session.redo if mods & Qt.KeyboardModifier.ShiftModifier else self.session.undo)()
            return True
        if key in _KEYS and not ctrl:
            self.answer(_KEYS[key])
            return True
        if key == Qt.Key.Key_A and ctrl:
            self.select(list(range(len(self.tiles))))
            return True
        return False

    # ---- mouse ---------------------------------------------------------------------
    def hover(self, index: int | None) -> None:
        if index == self._hover:
            return
        for i in (self._hover, index):
            if i is not None and i < len(self.tiles):
                self.tiles[i].hovered = i == index
                self.tiles[i].update()
        self._hover = index
        if index is not None:
            self._why.start()

    def explain_hovered(self) -> str:
        """Say in the status line why the hovered cell has its predicted class."""
        if self._hover is None or self._hover >= len(self.tiles) or self.session is None:
            return ""
        tile = self.tiles[self._hover].tile
        why = self.session.explain(tile.key, tile.label)
        if why is not None:
            self.status.setText(why.text())
        return why.text() if why is not None else ""

    def select(self, indices: list[int], add: bool = False) -> None:
        for i, t in enumerate(self.tiles):
            sel = (t.selected and add) or i in indices
            if sel != t.selected:
                t.selected = sel
                t.update()

    def click(self, index: int, mods: Any) -> None:
        """Click: select one and show it in the viewer; Ctrl toggles; Shift selects a run."""
        if mods & Qt.KeyboardModifier.ShiftModifier and self._anchor is not None:
            lo, hi = sorted((self._anchor, index))
            self.select(list(range(lo, hi + 1)), add=True)
        elif mods & Qt.KeyboardModifier.ControlModifier:
            t = self.tiles[index]
            t.selected = not t.selected
            t.update()
        else:
            self.select([index])
        self._anchor = index
        self.fly_to(index)

    def fly_to(self, index: int) -> None:
        tile = self.tiles[index].tile
        pheno = self.phenotypes()
        layer = pheno.bridge.layer_of(tile.key) if pheno is not None else None
        if layer is not None and tile.key in self.session.images:
            fly_to_cell(self.viewer, layer, self.session.images[tile.key].table, tile.label)

    def closeEvent(self, event: Any) -> None:  # noqa: N802
        self._poll.stop()
        if self.session is not None:
            self._disconnect()
        super().closeEvent(event)
