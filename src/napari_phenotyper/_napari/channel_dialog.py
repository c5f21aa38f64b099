"""The dialog that maps a saved classifier's channels onto the channels of the cells."""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QComboBox, QDialog, QDialogButtonBox, QFormLayout, QLabel, QVBoxLayout

from ..core.channels import ChannelMapping, ChannelMismatch

__all__ = ["ChannelMapDialog", "ask_channel_map"]


class ChannelMapDialog(QDialog):
    """One row per classifier channel: which of the cells' channels stands for it.

    Pre-filled with the pairs :func:`~napari_phenotyper.core.channels.suggest_channel_mapping`
    found; the rest start on the cells' channels not yet used, in order.
    """

    def __init__(
        self, mismatch: ChannelMismatch, classifier_name: str = "the classifier", parent: Any = None
    ):
        super().__init__(parent)
        self.setWindowTitle("Match the classifier's channels")
        layout = QVBoxLayout(self)
        intro = QLabel(
            f"{classifier_name} was trained on cells measured in channels "
            f"{', '.join(mismatch.needed)}; these cells were measured in "
            f"{', '.join(mismatch.available) or 'no intensity channels'}. "
            "Pick the channel that shows the same stain for each:"
        )
        intro.setWordWrap(True)
        layout.addWidget(intro)
        form = QFormLayout()
        self.combos: dict[str, QComboBox] = {}
        free = [a for a in mismatch.available if a not in mismatch.suggested.values()]
        for needed in mismatch.needed:
            combo = QComboBox()
            combo.addItems(mismatch.available)
            choice = mismatch.suggested.get(needed) or (free.pop(0) if free else None)
            if choice is not None:
                combo.setCurrentText(choice)
            form.addRow(f"{needed} ←", combo)
            self.combos[needed] = combo
        layout.addLayout(form)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.buttons = buttons

    def mapping(self) -> ChannelMapping:
        """Classifier channel -> the cells' channel, as chosen."""
        return ChannelMapping({n: c.currentText() for n, c in self.combos.items()})


def ask_channel_map(
    mismatch: ChannelMismatch, classifier_name: str, parent: Any = None
) -> ChannelMapping | None:
    """Show :class:`ChannelMapDialog`; the chosen mapping, or ``None`` when cancelled."""
    dialog = ChannelMapDialog(mismatch, classifier_name, parent)
    return dialog.mapping() if dialog.exec() == QDialog.DialogCode.Accepted else None
