"""The Fine-tune dock's controls: built once, read into a frozen job, and the live plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.types import FileDialogMode
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.layers import Image, Labels

from ..core.finetune import (
    FinetuneRequest,
    check_training_pairs,
    default_model_name,
    next_version_name,
)
from ..core.pipeline import select_channel
from ..core.progress import TrainProgress
from ..core.segment.models import ModelInfo, list_models, models_dir

if TYPE_CHECKING:
    pass


from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

from .finetune_parts import FinetuneJob, _created, _level0, _version_label

__all__ = ["FinetuneControls"]


class FinetuneControls:
    """The widgets of :class:`~.finetune_widget.FinetuneWidget`, what they ask for (a
    :class:`~.finetune_parts.FinetuneJob`) and the loss / validation plot (a mixin)."""

    def _build_controls(self, backends: list[tuple[str, str]]) -> None:
        """Make every control (``backends``: the installed ones, as ``(title, name)``)."""
        self.backend = ComboBox(
            label="backend",
            choices=backends,
            value=backends[0][1] if backends else None,
            tooltip="The deep-learning library to fine-tune (only installed ones are listed)",
        )
        self.base_box: Container[Any] = Container(labels=False, label="base model")
        self.base_box.margins = (0, 0, 0, 0)
        self.source = ComboBox(
            label="training data",
            choices=[
                ("(image, labels) layers in the viewer", "layers"),
                ("folders of images and masks", "folders"),
            ],
            value="layers",
        )
        self.pairs_box: Container[Any] = Container(labels=False)
        self.pairs_box.margins = (0, 0, 0, 0)
        self.add_pair = PushButton(text="Add a pair", tooltip="Train on one more (labels, image) pair")
        self.images_dir = FileEdit(
            mode=FileDialogMode.EXISTING_DIRECTORY, label="images folder", tooltip="Folder of training images"
        )
        self.masks_dir = FileEdit(
            mode=FileDialogMode.EXISTING_DIRECTORY,
            label="masks folder",
            tooltip="Folder of label masks, paired with the images by file name (a1.png <-> a1.tif or a1_mask.tif)",
        )
        self.val_labels = ComboBox(
            label="validation labels",
            choices=self._labels_choices,
            nullable=True,
            value=None,
            tooltip="Optional: corrected labels of an image NOT used for training; scored after every epoch (AP@0.5)",
        )
        self.val_image = ComboBox(
            label="validation image", choices=self._image_choices, nullable=True, value=None
        )
        self.val_images_dir = FileEdit(
            mode=FileDialogMode.EXISTING_DIRECTORY, label="validation images", tooltip="Optional folder"
        )
        self.val_masks_dir = FileEdit(
            mode=FileDialogMode.EXISTING_DIRECTORY, label="validation masks", tooltip="Optional folder"
        )
        self.epochs = SpinBox(label="epochs", min=1, max=100_000, value=20)
        self.learning_rate = LineEdit(label="learning rate", value="1e-4", tooltip="e.g. 1e-4")
        self.steps_per_epoch = SpinBox(
            label="steps per epoch", min=1, max=100_000, value=25, tooltip="Batches per epoch (StarDist)"
        )
        self.patch_size = SpinBox(
            label="patch size",
            min=16,
            max=4096,
            step=16,
            value=256,
            tooltip="Side of the square training patches, a multiple of 16 (not larger than the smallest image)",
        )
        self.batch_size = SpinBox(label="batch size", min=1, max=1024, value=4, tooltip="Patches per step")
        self.model_name = LineEdit(
            label="new model name", tooltip="Taken names get -v2, -v3...; nothing is overwritten"
        )
        self.name_hint = Label(value="")
        self.name_hint.native.setWordWrap(True)
        self.keep_best = CheckBox(
            text="keep the best so far if cancelled",
            value=False,
            tooltip="When you cancel after at least one epoch, save the best epoch's weights (marked 'cancelled')",
        )
        self.warning = Label(value="")
        self.warning.native.setWordWrap(True)
        self.start_button = PushButton(text="Start")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        buttons = Container(
            widgets=[self.start_button, self.cancel_button], layout="horizontal", labels=False
        )
        self.progress = ProgressBar(min=0, max=1000, value=0, label="progress")
        self.status = Label(value="Ready.")
        self.status.native.setWordWrap(True)

        # the live plot: training loss (left axis) and validation AP@0.5 (right axis) per epoch
        self.figure = Figure(figsize=(4.0, 2.8), dpi=100, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(220)
        self.ax = self.figure.add_subplot()
        self.ax_ap = self.ax.twinx()
        (self.loss_line,) = self.ax.plot([], [], "o-", color="tab:blue", label="training loss", ms=3)
        (self.val_loss_line,) = self.ax.plot([], [], "s--", color="tab:cyan", label="validation loss", ms=3)
        (self.ap_line,) = self.ax_ap.plot([], [], "D-", color="tab:orange", label="validation AP@0.5", ms=4)
        self._style_plot()
        plot_box: Container[Any] = Container(labels=False)
        plot_box.margins = (0, 0, 0, 0)
        plot_box.native.layout().addWidget(self.canvas)

        self.result_label = Label(value="")
        self.result_label.native.setWordWrap(True)
        self.versions = ComboBox(label="model versions", choices=[], nullable=True, value=None)
        self.versions.tooltip = (
            "Fine-tuned models of this backend, newest first (validation AP@0.5 of the kept epoch)"
        )
        self.skip_training = CheckBox(
            text="skip the training images",
            value=True,
            tooltip="Do not replace the labels you corrected and trained on with the model's prediction",
        )
        self.apply_button = PushButton(
            text="Apply to all images",
            tooltip="Re-segment every image layer with the chosen model; result layers are updated in place",
        )
        # napari docks a magicgui widget's ``native``, which for ``scrollable=True`` is the
        # inner widget without its scroll area (left behind, it kept resizing the inner widget
        # to its own 640 px, wider than the dock): the scroll area is ours, inside the dock.
        self.form: Container[Any] = Container(
            widgets=[
                self.backend,
                self.base_box,
                self.source,
                self.pairs_box,
                self.add_pair,
                self.images_dir,
                self.masks_dir,
                self.val_labels,
                self.val_image,
                self.val_images_dir,
                self.val_masks_dir,
                self.epochs,
                self.learning_rate,
                self.steps_per_epoch,
                self.patch_size,
                self.batch_size,
                self.model_name,
                self.name_hint,
                self.keep_best,
                self.warning,
                buttons,
                self.progress,
                self.status,
                plot_box,
                self.result_label,
                self.versions,
                self.skip_training,
                self.apply_button,
            ],
        )

    # ---- reading the controls --------------------------------------------------------------
    def _image_array(self, layer: Image, backend: str) -> np.ndarray:
        arr = np.array(_level0(layer), copy=True)
        if layer.rgb and backend == "cellpose":
            arr = select_channel(arr, -1, None)  # luminance: Cellpose fine-tunes on one channel
        return arr

    def _layer_pairs(
        self, backend: str
    ) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...], tuple[str, ...], list[Labels]]:
        images, masks, names, used = [], [], [], []
        rows = self.rows
        if not rows:
            raise ValueError("Add a training pair: a corrected labels layer and the image it was drawn on.")
        for i, row in enumerate(rows, 1):
            labels, image = row.labels_layer.value, row.image_layer.value
            if labels is None or image is None:
                raise ValueError(
                    f"Training pair {i}: choose a labels layer and its image (or remove the pair with ✕)."
                )
            images.append(self._image_array(image, backend))
            masks.append(np.array(_level0(labels), copy=True))
            names.append(f"{image.name} / {labels.name}")
            used.append(labels)
        return tuple(images), tuple(masks), tuple(names), used

    def _learning_rate(self) -> float | None:
        text = str(self.learning_rate.value).strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"Learning rate {text!r} is not a number (e.g. 1e-4).") from None
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"The learning rate must be a positive number, got {text}.")
        return value

    @staticmethod
    def _folder(edit: FileEdit) -> str | None:
        text = str(edit.line_edit.value).strip()
        return text or None

    def request(self) -> FinetuneJob:
        """The run as a frozen job; checks the pairs here so that errors show at once.

        Raises
        ------
        ValueError
            With a message for the user (bad pairs, missing folders, bad settings).
        """
        backend = self.backend.value
        if backend is None:
            raise ValueError("No fine-tuning backend is installed (StarDist or Cellpose).")
        base = (self.base.value or None) if self.base is not None else None
        patch = int(self.patch_size.value)
        if patch % 16:
            raise ValueError(f"The patch size must be a multiple of 16, got {patch}.")
        max_channels = 1 if backend == "cellpose" else 4
        common: dict[str, Any] = {
            "backend": backend,
            "base_model": base,
            "name": str(self.model_name.value).strip(),
            "epochs": int(self.epochs.value),
            "learning_rate": self._learning_rate(),
            "steps_per_epoch": int(self.steps_per_epoch.value) if self._has_steps else None,
            "patch_size": patch,
            "batch_size": int(self.batch_size.value),
            "keep_on_cancel": bool(self.keep_best.value),
        }
        if self.source.value == "folders":
            folders = {
                "images_dir": self._folder(self.images_dir),
                "masks_dir": self._folder(self.masks_dir),
                "val_images_dir": self._folder(self.val_images_dir),
                "val_masks_dir": self._folder(self.val_masks_dir),
            }
            if not folders["images_dir"] or not folders["masks_dir"]:
                raise ValueError("Choose a folder of training images and a folder of their masks.")
            if bool(folders["val_images_dir"]) != bool(folders["val_masks_dir"]):
                raise ValueError("For validation, choose both a folder of images and a folder of masks.")
            for key, folder in folders.items():
                if folder and not Path(folder).expanduser().is_dir():
                    raise ValueError(
                        f"The {key.replace('_dir', '').replace('_', ' ')} folder {folder} does not exist."
                    )
            self._training_layers = set()
            return FinetuneJob(FinetuneRequest(images=(), masks=(), **common), **folders)

        images, masks, names, used = self._layer_pairs(backend)
        check_training_pairs(images, masks, names, min_side=patch, max_channels=max_channels)
        val_images: tuple[np.ndarray, ...] = ()
        val_masks: tuple[np.ndarray, ...] = ()
        val_labels, val_image = self.val_labels.value, self.val_image.value
        if val_labels is not None:
            if val_image is None:
                raise ValueError(f"Choose the image of the validation labels {val_labels.name!r}.")
            if any(val_labels is lab for lab in used):
                raise ValueError(
                    f"The validation labels {val_labels.name!r} are also a training pair: validate on an "
                    "image the model does not train on (or choose no validation)."
                )
            val_images = (self._image_array(val_image, backend),)
            val_masks = (np.array(_level0(val_labels), copy=True),)
            check_training_pairs(
                val_images, val_masks, [val_image.name], what="validation", max_channels=max_channels
            )
            used = [*used, val_labels]
        self._training_layers = {str(lab.unique_id) for lab in used}
        return FinetuneJob(
            FinetuneRequest(
                images=images,
                masks=masks,
                image_names=names,
                val_images=val_images,
                val_masks=val_masks,
                **common,
            )
        )

    # ---- the live plot ------------------------------------------------------------------
    def _time_left(self, p: TrainProgress) -> float | None:
        done = [(t, e) for t, e in self._t_epochs if e > 0]
        if len(done) < 2 or p.epochs <= p.epoch:
            return None
        (t0, e0), (t1, e1) = done[0], done[-1]
        return (t1 - t0) / (e1 - e0) * (p.epochs - p.epoch) if e1 > e0 else None

    def _record(self, p: TrainProgress) -> None:
        for key in ("loss", "val_loss", "val_ap50"):
            value = p.metrics.get(key)
            if value is not None and math.isfinite(float(value)):
                self.history.setdefault(key, []).append((int(p.epoch), float(value)))
        self._draw_plot()

    def _style_plot(self) -> None:
        self.ax.set_xlabel("epoch")
        self.ax.set_ylabel("loss")
        self.ax_ap.set_ylabel("validation AP@0.5")
        self.ax_ap.set_ylim(0.0, 1.0)
        handles = [self.loss_line, self.val_loss_line, self.ap_line]
        self.ax.legend(handles=handles, loc="upper right", fontsize="small", frameon=False)

    def _clear_plot(self) -> None:
        self.history = {}
        self._draw_plot()

    def _draw_plot(self) -> None:
        for key, line in (
            ("loss", self.loss_line),
            ("val_loss", self.val_loss_line),
            ("val_ap50", self.ap_line),
        ):
            pts = self.history.get(key, [])
            line.set_data([e for e, _ in pts], [v for _, v in pts])
        self.ax.relim()
        self.ax.autoscale_view()
        self.ax_ap.set_ylim(0.0, 1.0)
        epochs = [e for pts in self.history.values() for e, _ in pts]
        if epochs:
            self.ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        self.canvas.draw_idle()

    # ---- the new model's name and the model versions ----------------------------------------
    def _on_name_edited(self, _value: str = "") -> None:
        if not self._setting_name:
            self._name_edited = bool(str(self.model_name.value).strip())
        self._update_name_hint()

    def _update_name_hint(self) -> None:
        backend = self.backend.value
        name = str(self.model_name.value).strip() or (
            default_model_name(self.base.value or None) if self.base else ""
        )
        if backend is None or not name:
            self.name_hint.value = ""
            return
        root = models_dir() / backend
        try:
            final = next_version_name(root, name)
        except OSError:
            final = name
        self.name_hint.value = (
            f"will be saved as {final} ({name} exists)" if final != name else f"will be saved in {root}"
        )

    def finetuned_models(self, backend: str | None = None) -> list[ModelInfo]:
        """The backend's fine-tuned models, newest first."""
        backend = backend or self.backend.value
        if backend is None:
            return []
        try:
            infos = [m for m in list_models(backend) if m.kind == "finetuned"]
        except (OSError, ValueError) as exc:
            self.status.value = f"Could not list the {backend} models: {exc}"
            return []
        return sorted(infos, key=_created, reverse=True)

    def refresh_versions(self, select: str | None = None) -> None:
        """List the fine-tuned models again (newest first) and choose ``select`` (default: keep)."""
        keep = select if select is not None else self.versions.value
        infos = self.finetuned_models()
        choices = [(_version_label(m), m.name) for m in infos]
        self.versions.choices = []  # magicgui keeps surviving items in place: clear to get this order
        self.versions.choices = choices
        names = [n for _, n in choices]
        self.versions.value = keep if keep in names else (names[0] if names else None)
