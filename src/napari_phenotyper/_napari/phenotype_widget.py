"""The "Phenotypes" dock widget: classes, key-press annotation, live retraining, next cell.

The dock is a view of one :class:`~napari_phenotyper.core.classify.session.PhenotypingSession`
(Qt-free; it holds the images, classes, annotations, model, quality and proposals).
A key press goes dock -> session (the answer, autosaved) -> worker (the retrain runs
the session's generator in a thread) -> session (the result) -> events -> views: the
layers' ``features`` and phenotype views (:class:`~.phenotype_layers.LayerBridge`), the
class list, quality and queue (:class:`~.phenotype_controls.PhenotypeControls`) and the
proposal ring. The dock keeps only what is about the screen: the timers that pace the
retrains, the workers, the keys and the mouse.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from napari.layers import Labels
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QFileDialog, QListWidgetItem

from ..core.classify.annotations import AnnotationStore
from ..core.classify.engine import Proposal, TrainResult
from ..core.classify.session import LIVE_TREES, PhenotypingSession, default_session_path
from .cell_why import CellWhy
from .docking import scroll_body, settle_when_docked
from .feedback import AnnotationFlash, KeyHelp
from .layers import cell_world_position, docked_widgets, fly_to_cell
from .params_form import compact_widths
from .phenotype_controls import DISPLAY_MODES, PhenotypeControls
from .phenotype_layers import LayerBridge, layer_key
from .proposal_ring import remove_ring, show_ring
from .selection import cell_diameter
from .workers import drive, start_job, user_message

if TYPE_CHECKING:
    import napari

__all__ = ["DISPLAY_MODES", "PhenotypeWidget", "default_session_path", "find_phenotypes", "layer_key"]

#: Milliseconds between the last annotation and the start of a retrain.
DEBOUNCE_MS = 150
#: Milliseconds without a new training before cross-validation starts.
QUALITY_DELAY_MS = 1000
CLASS_KEYS = [str(k) for k in range(1, 10)]
UNDO_KEYS = ("Control-Z", "Control-Shift-Z", "Control-Y")
#: A segmentation run that would lose more annotations than this asks first.
ASK_WHEN_LOSING = 3
_PAINT_MODES = ("paint", "erase", "fill", "polygon")


def find_phenotypes(viewer: Any) -> PhenotypeWidget | None:
    """The Phenotypes dock docked in ``viewer``'s window (its ``session`` is the viewer's
    phenotyping session), or ``None``: the other docks find the session this way."""
    return next((w for w in docked_widgets(viewer) if isinstance(w, PhenotypeWidget)), None)


class PhenotypeWidget(PhenotypeControls):
    """Teach a phenotype classifier by annotating cells; see the user guide."""

    def __init__(
        self, napari_viewer: napari.viewer.Viewer, session_path: str | os.PathLike | None = None
    ) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = PhenotypingSession(session_path or default_session_path())
        # where the cursor was when the camera flew to the proposal: until the mouse moves
        # away from there, class keys answer the proposal, not the cell under the resting mouse
        self._proposal_cursor: tuple[float, ...] | None = None
        self._quick: tuple[str, int] | None = None  # an answer shown before its retrain
        self._worker: Any = None
        self._quality_worker: Any = None
        self._pending = False
        self._quality_pending = False
        self._full = True
        self._bound: list[Any] = []  # keymap owners we bound keys on
        self._build()
        self._connect_controls()
        self._timer = self._single_shot(DEBOUNCE_MS, lambda: self.retrain())
        # cross-validation waits for a pause, so it never slows the next retrain
        self._quality_timer = self._single_shot(QUALITY_DELAY_MS, self.start_quality)
        self._refine_timer = self._single_shot(QUALITY_DELAY_MS, lambda: self.retrain(full=True))
        self.viewer.mouse_drag_callbacks.append(self._on_mouse)
        self.flash = AnnotationFlash(self.viewer, host=self)  # what a class key shows on the canvas
        # napari's status bar must not advertise <1> label eraser while 1-9 are class keys
        self.key_help = KeyHelp(self.viewer, {*CLASS_KEYS, "0", "Backspace", "n", "N", "x", "X"})
        self._bind_keys(self.viewer)
        self._connect_session()
        self.bridge = LayerBridge(
            self.viewer,
            self.session,
            self.display_mode,
            on_layer=self._bind_keys,
            on_forget=self.key_help.forget,
            host=self,
        )
        self.bridge.sync()
        self.why = CellWhy(self.viewer, self.session, self.bridge, self.why_label)
        self.show_classes()
        compact_widths(self)  # long layer names must not widen the dock
        scroll_body(self)  # fits a laptop screen
        settle_when_docked(self)

    def _single_shot(self, ms: int, slot: Callable[[], Any]) -> QTimer:
        timer = QTimer(self)
        timer.setSingleShot(True)
        timer.setInterval(ms)
        timer.timeout.connect(slot)
        return timer

    # ---- wiring ------------------------------------------------------------------------
    def _connect_controls(self) -> None:
        for button, slot in (
            (self.add_btn, self._ask_add_class),
            (self.rename_btn, self._ask_rename_class),
            (self.color_btn, self._ask_recolor_class),
            (self.delete_btn, self._ask_delete_class),
            (self.undo_btn, self.undo),
            (self.redo_btn, self.redo),
            (self.reattach_btn, self.reattach_under_points),
            (self.assign_btn, lambda: self.annotate_current(value=self.value.value())),
            (self.retrain_btn, lambda: self.retrain(full=True)),
            (self.next_btn, self.next_cell),
            (self.queue_btn, self.fill_queue),
            (self.save_session_btn, self._ask_save_session),
            (self.open_session_btn, self._ask_open_session),
            (self.save_clf_btn, self._ask_save_classifier),
            (self.load_clf_btn, self._ask_load_classifier),
        ):
            button.clicked.connect(lambda *_a, f=slot: f())
        self.mode.currentIndexChanged.connect(lambda _i: self.session.set_task(str(self.mode.currentData())))
        for w in (self.kind, self.strategy):
            w.currentIndexChanged.connect(self._settings_changed)
        for w in (self.trees, self.value_min, self.value_max):
            w.valueChanged.connect(self._settings_changed)
        for cb in self.groups.values():
            cb.toggled.connect(self._settings_changed)
        self.display.currentIndexChanged.connect(lambda _i: self.refresh_views())
        self.auto_next.toggled.connect(lambda on: setattr(self.session, "auto_next", bool(on)))
        self.queue.itemClicked.connect(self._on_queue_clicked)

    def _connect_session(self) -> None:
        ev = self.session.events
        ev.status.connect(self.show_status)
        ev.classes.connect(self.show_classes)
        ev.annotations.connect(self._on_annotations)
        ev.answered.connect(self._on_answered)
        ev.quality.connect(self.show_quality)
        ev.queue.connect(self.show_queue)
        ev.proposal.connect(self._on_proposal)
        ev.lost.connect(self._on_lost)
        ev.settings.connect(self.show_settings)
        ev.task.connect(lambda _t: self.show_settings())
        ev.inputs.connect(self._schedule)

    def _settings_changed(self, *_: Any) -> None:
        groups = self.ticked_groups()
        if not groups:
            show_error("Tick at least one feature group.")
            self.show_settings()  # the last valid settings come back
            return
        try:
            self.session.configure(
                classifier=str(self.kind.currentData()),
                trees=int(self.trees.value()),
                feature_groups=groups,
                strategy=str(self.strategy.currentData()),
                value_range=(self.value_min.value(), self.value_max.value()),
            )
        except ValueError as exc:
            show_error(str(exc))

    # ---- session events -> views -------------------------------------------------------
    def _on_annotations(self, keys: tuple[str, ...]) -> None:
        quick, self._quick = self._quick, None
        if quick is not None and keys == (quick[0],):
            return  # the cell is painted; the retrain that follows writes the table
        self.bridge.write(keys)

    def _on_answered(self, key: str, label: int, cls: object, what: str) -> None:
        layer = self.bridge.layer_of(key)
        if layer is None:
            return
        self.show_status(f"{layer.name}: cell {label} {what} (session saved to {self.session.store.path}).")
        self._flash(layer, label, cls if isinstance(cls, str) else None, what)
        excluding = what.startswith(("excluded", "taken back"))
        if self.auto.isChecked() and self.session.ready_to_train() is None and not excluding:
            # show the answer at once; the retrain that follows writes the table
            self.bridge.paint_cell(key, label, cls if isinstance(cls, str) else None)
            self._quick = (key, label)

    def _on_lost(self) -> None:
        self.bridge.show_lost()
        self.show_lost_count()

    def _on_proposal(self) -> None:
        current = self.current
        if current is None:
            self._proposal_cursor = None
            remove_ring(self.viewer)
            return
        layer, label = current
        table = self.session.images[self.key_of(layer)].table
        row = table.loc[table["label"].to_numpy() == label]
        diameter = (
            float(row["equivalent_diameter"].iloc[0]) if "equivalent_diameter" in row and len(row) else 20.0
        )
        world = fly_to_cell(self.viewer, layer, table, label, zoom_to=12 * max(diameter, 4.0))
        self._proposal_cursor = tuple(np.asarray(self.viewer.cursor.position, dtype=float))
        layer.selected_label = label
        show_ring(self.viewer, layer, world, diameter)

    def _flash(self, layer: Labels, label: int, cls: str | None, what: str) -> None:
        """Show the answer where the eyes are: the cell rings in its class colour for a
        moment and the canvas says the class's new count."""
        table = self.session.images[self.key_of(layer)].table
        world = cell_world_position(self.viewer, layer, table, label)
        size = 1.3 * max(cell_diameter(table, label), 4.0) * float(np.mean(np.abs(layer.scale[-2:])))
        text = f"cell {label} {what}"
        if cls is not None:
            text += f": {self.session.store.count(cls)} {cls} annotated"
        self.flash.show(world, size, self.session.colors().get(cls or ""), text)

    def refresh_views(self) -> None:
        """Repaint every phenotype view (after a display or colour change)."""
        self.bridge.write()

    # ---- the session's state, for the other docks and the tests ------------------------------
    @property
    def store(self) -> AnnotationStore:
        return self.session.store

    @property
    def result(self) -> TrainResult | None:
        return self.session.result

    @property
    def quality(self) -> dict[str, Any] | None:
        return self.session.quality

    @property
    def importances(self) -> pd.Series | None:
        return self.session.importances

    @property
    def lost(self) -> list[tuple[str, int, Any]]:
        return self.session.last_lost

    @property
    def task(self) -> str:
        return self.session.task

    @property
    def current(self) -> tuple[Labels, int] | None:
        """The proposed cell: its layer and label."""
        if self.session.current is None:
            return None
        layer = self.bridge.layer_of(self.session.current[0])
        return None if layer is None else (layer, self.session.current[1])

    def layers(self) -> list[Labels]:
        """The labels layers taking part: measured (a ``label`` column), not our views."""
        return self.bridge.layers()

    def key_of(self, layer: Labels) -> str:
        return self.bridge.key_of(layer)

    def would_lose(self, layer: Labels, new_labels: np.ndarray) -> tuple[int, int]:
        """How many of ``layer``'s annotations new labels would keep track of: returns
        ``(annotated, lost)`` (the Segment & measure dock asks before losing many)."""
        if not self.bridge.in_session(layer):
            return 0, 0
        return self.session.would_lose(self.key_of(layer), new_labels)

    def proposals(self, k: int = 1, diverse: bool = False) -> list[Proposal]:
        return self.session.proposals(k, diverse)

    # ---- classes -------------------------------------------------------------------------
    def add_class(self, name: str, color: str | None = None) -> None:
        self.session.add_class(name, color)

    def rename_class(self, old: str, new: str) -> None:
        self.session.rename_class(old, new)

    def recolor_class(self, name: str, color: str) -> None:
        self.session.recolor_class(name, color)

    def delete_class(self, name: str) -> int:
        return self.session.delete_class(name)

    # ---- keys, mouse and answers -----------------------------------------------------------
    def _bind_keys(self, owner: Any) -> None:
        """Class keys on the viewer and on every labels layer (whose own 1-7 mode keys they
        replace while this widget is open; E/P/F/L/Z still switch modes)."""
        for i, k in enumerate(CLASS_KEYS):
            owner.bind_key(k, self._key_handler(i + 1), overwrite=True)
        owner.bind_key("0", self._key_handler(0), overwrite=True)
        owner.bind_key("Backspace", self._key_handler(0), overwrite=True)
        owner.bind_key("n", lambda _o: self.next_cell(), overwrite=True)
        owner.bind_key("x", lambda _o: self.exclude_target(), overwrite=True)
        owner.bind_key("Control-Z", self._undo_key(redo=False), overwrite=True)
        owner.bind_key("Control-Shift-Z", self._undo_key(redo=True), overwrite=True)
        owner.bind_key("Control-Y", self._undo_key(redo=True), overwrite=True)
        self._bound.append(owner)
        if isinstance(owner, Labels):
            self.key_help.attach(owner)

    def _key_handler(self, number: int) -> Callable[[Any], None]:
        return lambda _owner: self.press(number)

    def _undo_key(self, redo: bool) -> Callable[[Any], None]:
        def handler(owner: Any) -> None:
            # while painting, Ctrl+Z stays napari's paint undo
            if isinstance(owner, Labels) and owner.mode in _PAINT_MODES:
                (owner.redo if redo else owner.undo)()
                return
            (self.redo if redo else self.undo)()

        return handler

    def _try(self, call: Callable[[], Any]) -> Any:
        """Run a session call; a refusal (no measurements, no such class) goes to the status."""
        try:
            return call()
        except (LookupError, ValueError) as exc:
            self.show_status(str(exc).strip("'\""))
            return None

    def press(self, number: int) -> None:
        """What key ``number`` does: 1-9 annotate the target cell, 0 clears it."""
        target = self.target_cell()
        if target is None:
            self.show_status("Point at a cell (or press N for a proposal) before pressing a class key.")
            return
        layer, label = target
        self._try(lambda: self.session.press(self.key_of(layer), label, number))

    def cell_under_cursor(self) -> tuple[Labels, int] | None:
        return self.bridge.cell_under_cursor()

    def target_cell(self) -> tuple[Labels, int] | None:
        """The cell a key press applies to.

        Right after a proposal (*Next cell*, a queue item) it is the proposed cell until the
        mouse actually moves: the camera flew under a resting mouse, so the cell that now
        happens to lie under it was never pointed at. Otherwise the cell under the cursor,
        else the proposed/selected one.
        """
        current = self.current
        if current is not None and self._proposal_cursor is not None:
            if tuple(np.asarray(self.viewer.cursor.position, dtype=float)) == self._proposal_cursor:
                return current
            self._proposal_cursor = None
        return self.cell_under_cursor() or current

    def exclude_target(self) -> None:
        """Key X: exclude the target cell (debris, a half cell) from proposals and
        training; X again takes it back in."""
        target = self.target_cell()
        if target is None:
            self.show_status("Point at a cell (or press N for a proposal) before pressing X.")
            return
        self.exclude(*target)

    def exclude(self, layer: Labels, label: int, excluded: bool | None = None) -> None:
        """Exclude a cell from proposals and training (``excluded=None``: toggle)."""
        self._try(lambda: self.session.exclude(self.key_of(layer), int(label), excluded))

    def annotate_current(self, cls: str | None = None, value: float | None = None) -> None:
        target = self.target_cell()
        if target is not None:
            self.annotate(target[0], target[1], cls, value=value)

    def annotate(
        self, layer: Labels, label: int, cls: str | None = None, *, value: float | str | None = "unset"
    ) -> None:
        """Give a cell a class (or, with ``value=``, a value); ``None`` clears it."""
        key = self.key_of(layer)
        if value != "unset":
            v = None if value is None else float(value)  # type: ignore[arg-type]
            self._try(lambda: self.session.set_value(key, int(label), v))
        else:
            self._try(lambda: self.session.annotate(key, int(label), cls))

    def annotate_many(self, layer: Labels, labels: list[int], cls: str | None) -> int:
        """Give many cells one class at once (e.g. a lasso selection in the Plots dock);
        ``None`` clears them. Saved once, retrained once. Returns how many changed."""
        n = self.session.annotate_many(self.key_of(layer), labels, cls)
        self.show_status(f"{layer.name}: {n} cells {'cleared' if cls is None else f'→ {cls}'}.")
        return n

    def undo(self) -> bool:
        """Take back the last annotation change (Ctrl+Z)."""
        return self.session.undo()

    def redo(self) -> bool:
        """Do again what Undo took back (Ctrl+Shift+Z)."""
        return self.session.redo()

    def reattach_under_points(self) -> int:
        """Put every lost annotation on the cell now under its point; returns how many."""
        return self.session.reattach_lost()

    def _on_mouse(self, viewer: Any, event: Any) -> Any:
        if not self.click_mode.isChecked() or event.button != 1 or event.modifiers:
            return
        yield
        dragged = False
        while event.type == "mouse_move":
            dragged = True
            yield
        if dragged:
            return
        hit = self.cell_under_cursor()
        if hit is None:
            return
        layer, label = hit
        if self.task == "regression":
            self.annotate(layer, label, None, value=self.value.value())
            return
        cls = self.selected_class()
        if cls is None:
            self.show_status("Add a class first.")
            return
        self._try(lambda: self.session.toggle(self.key_of(layer), label, cls))

    # ---- training: the session's generators in workers ---------------------------------------
    def _schedule(self) -> None:
        self._refine_timer.stop()
        self._quality_timer.stop()
        if self.auto.isChecked():
            self._timer.start()

    def retrain(self, full: bool = False) -> None:
        """Train on the annotations and predict every cell (in a thread).

        While the user annotates, each retrain is a *live* pass: a random forest is
        cut to :data:`~napari_phenotyper.core.classify.session.LIVE_TREES` trees, so that
        a cycle stays well under a second on 100,000 cells. After a pause of
        :data:`QUALITY_DELAY_MS` the *full* model is trained and predicts every cell
        again, then the cross-validation runs. Other models are always trained in full.
        """
        self._timer.stop()
        if not full:
            self._refine_timer.stop()
            self._quality_timer.stop()
        if self._worker is not None:
            self._pending = True
            return
        if self.session.ready_to_train() is not None:
            return  # the session has already cleared what depended on training
        self._pending = False
        self._full = full or not self.session.is_live_cut()
        self._worker = start_job(
            drive,
            self.session.iter_train(full=self._full),  # the inputs are taken here, on the GUI thread
            on_returned=self._on_trained,
            on_errored=self._on_train_error,
            on_finished=self._on_train_finished,
            on_aborted=lambda: None,  # only closing the dock stops a retrain
            title="Training",
        )

    def _on_trained(self, result: TrainResult) -> None:
        if not self.session.apply_result(result):
            return
        self.show_status(
            f"Trained on {result.n_train} cells in {result.seconds_train * 1e3:.0f} ms; predicted "
            f"{sum(len(p) for p in result.predictions.values())} cells in {result.seconds_predict * 1e3:.0f} ms"
            + (
                "."
                if self._full
                else f" (live forest of {LIVE_TREES} trees; the full forest follows after a pause)."
            )
        )
        (self._quality_timer if self._full else self._refine_timer).start()
        if self.session.wants_next() and not self._pending:
            self.session.next_proposal()

    def _on_train_error(self, exc: BaseException) -> None:
        self.bridge.write()  # answers shown before the retrain reach the tables
        self.quality_label.setText(f"Training failed: {user_message(exc)}")
        show_error(f"Training failed: {user_message(exc)}")

    def _on_train_finished(self) -> None:
        self._worker = None
        if self._pending:
            self._pending = False
            self.retrain()

    def start_quality(self) -> None:
        """Cross-validate in the background (once at a time; the latest annotations win)."""
        if self._quality_worker is not None:
            self._quality_pending = True
            return
        self._quality_pending = False
        self._quality_worker = start_job(
            drive,
            self.session.iter_quality(),
            on_returned=self.session.apply_quality,
            on_errored=lambda exc: self.quality_label.setText(
                f"Cross-validation failed: {user_message(exc)}"
            ),
            on_finished=self._on_quality_finished,
            on_aborted=lambda: None,
            title="Cross-validation",
        )

    def _on_quality_finished(self) -> None:
        self._quality_worker = None
        if self._quality_pending:
            self.start_quality()

    # ---- active learning -------------------------------------------------------------------
    def next_cell(self) -> Proposal | None:
        """Fly to the most informative unannotated cell and wait for a class key."""
        found = self.session.next_proposal()
        if found is None and self.session.result is None and self._worker is not None:
            self.session.ask_next()  # the proposal follows the running retrain
        return found

    def go_to(self, proposal: Proposal) -> None:
        self.session.propose_cell(proposal)

    def fill_queue(self) -> list[Proposal]:
        """Show the top proposals (a diverse batch) as a list to work through."""
        return self.session.fill_queue(self.queue_k.value())

    def _on_queue_clicked(self, item: QListWidgetItem) -> None:
        self.go_to(item.data(Qt.ItemDataRole.UserRole))

    # ---- files -----------------------------------------------------------------------------
    def save_session(self, path: str | os.PathLike) -> Path:
        """Save the session to ``path`` and keep autosaving there."""
        return self.session.save(path)

    def open_session(self, path: str | os.PathLike) -> None:
        """Restore classes and annotations (and keep autosaving to that file)."""
        self.session.open(path)

    def save_classifier(self, path: str | os.PathLike) -> Path:
        """Save the training set and settings (pickle-free, see :mod:`..io.classifier_io`)."""
        return self.session.save_classifier(path)

    def load_classifier(self, path: str | os.PathLike, channel_map: Mapping[str, str] | None = None) -> None:
        """Apply a saved classifier (or regressor) to every measured layer; see
        :meth:`~napari_phenotyper.core.classify.session.PhenotypingSession.load_classifier`."""
        self.session.load_classifier(path, channel_map)
        self.retrain(full=True)

    def _ask_load_classifier(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load classifier", "", "Classifier (*.zip)")
        if path:
            self._load_classifier_asking(path)

    def _load_classifier_asking(self, path: str) -> None:
        from ..core.channels import ChannelMismatch
        from .channel_dialog import ask_channel_map

        try:
            try:
                self.load_classifier(path)
            except ChannelMismatch as mismatch:
                chosen = ask_channel_map(mismatch, Path(path).name, self)
                if chosen is not None:
                    self.load_classifier(path, chosen)
        except (ValueError, FileNotFoundError) as exc:
            show_error(str(exc))

    # ---- teardown --------------------------------------------------------------------------
    def close_session(self) -> None:
        """Stop the timers and the running retrain or cross-validation (at its next step),
        unbind our keys and callbacks (called when the dock closes)."""
        for timer in (self._timer, self._refine_timer, self._quality_timer):
            timer.stop()
        self._pending = self._quality_pending = False
        for worker in (self._worker, self._quality_worker):
            if worker is not None:
                worker.quit()
        self.flash.close()
        self.why.close()
        self.auto.setChecked(False)
        for owner in self._bound:
            for k in [*CLASS_KEYS, "0", "Backspace", "n", "x", *UNDO_KEYS]:
                with contextlib.suppress(KeyError, ValueError):
                    owner.bind_key(k, None)
        self._bound.clear()
        self.key_help.detach_all()
        if self._on_mouse in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._on_mouse)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        self.close_session()
        super().closeEvent(event)
