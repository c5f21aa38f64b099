"""Long layer names (microscope file names) must not make a dock wider than napari's right-hand area."""

from __future__ import annotations

import numpy as np
import pytest

LONG = "2026-11-21 plate 3 well B07 site 4 H2B-mCherry 20x confocal stack max projection"


@pytest.mark.parametrize(
    "name", ["Segment & measure", "Phenotypes", "Plots", "Gallery", "Fine-tune", "Batch"]
)
def test_dock_stays_narrow_with_long_layer_names(make_napari_viewer, name, monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_PHENOTYPER_HOME", str(tmp_path))
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64), np.float32), name=LONG)
    viewer.add_labels(np.zeros((64, 64), np.int32), name=LONG + " labels")
    dock, _widget = viewer.window.add_plugin_dock_widget("napari-phenotyper", name)
    # measured without the fix: Segment & measure 665 px, Plots 879 px
    assert dock.minimumSizeHint().width() <= 520
