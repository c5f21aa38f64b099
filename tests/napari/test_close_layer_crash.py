"""Closing an annotated segmentation must not crash napari's next frame.

Removing our phenotype view (and updating the dock) inside napari's own handling of a
layer removal made the next frame die in Mesa's ``glDrawArrays`` (napari 0.9,
llvmpipe): annotate a few cells, close the segmentation, napari segfaulted. A crash
would take the test session with it, so the viewer runs in a child process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import faulthandler, sys, time
    faulthandler.enable()
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication
    from cellgrid import grid_cells
    from napari_phenotyper._napari.layers import upsert_labels
    from napari_phenotyper._napari.phenotype_view import find_view
    from napari_phenotyper._napari.phenotype_widget import PhenotypeWidget
    from napari_phenotyper.core.features import compute_features

    def pump(ms):
        end = time.perf_counter() + ms / 1000
        while time.perf_counter() < end:
            QApplication.processEvents()

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1280, 800)
    image, labels, kinds = grid_cells(6, 8, 30, 0)
    img = viewer.add_image(image, name="cells")
    lab = upsert_labels(viewer, img, labels, compute_features(labels, {"image": image}), {"backend": "test"})
    widget = PhenotypeWidget(viewer, session_path=sys.argv[1])
    viewer.window.add_dock_widget(widget)
    widget.auto.setChecked(False)
    widget.add_class("small")
    widget.add_class("big")
    pump(500)
    for cell in (1, 2, 3, 4, 10, 11):
        widget.annotate(lab, cell, kinds[cell])
    pump(500)
    assert find_view(viewer, lab) is not None
    viewer.layers.remove(lab)
    pump(1500)
    viewer.window._qt_window.resize(1000, 700)
    pump(500)
    names = [layer.name for layer in viewer.layers]
    assert names == ["cells"], names
    assert widget.session.images == {}, list(widget.session.images)
    print("SURVIVED", flush=True)
    widget.close_session()
    viewer.close()
    """
)


def test_closing_an_annotated_segmentation_does_not_crash_napari(tmp_path):
    env = {**os.environ, "NAPARI_PHENOTYPER_HOME": str(tmp_path / "home")}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__) + "/..", env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "session.json")],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert out.returncode == 0 and "SURVIVED" in out.stdout, (
        out.returncode,
        out.stdout[-2000:],
        out.stderr[-3000:],
    )
