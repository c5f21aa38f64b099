"""Drive napari through the user guide's steps on the built-in sample and save real screenshots.

Each step does what a user does (open the sample, segment and measure, annotate cells, open the
plots) through the same widgets, then saves the whole window as a PNG:

- ``segment-measure.png``: *Segment & measure* and the *Cell table* on the nuclei sample;
- ``phenotypes.png``: the *Phenotypes* dock with three classes, live predictions and the next
  proposed cell;
- ``plots.png``: the *Plots* dock, PCA of every cell coloured by predicted class, with a lasso
  selection outlined in the plot and its cells outlined in the viewer;
- ``gallery.png``: the *Gallery* dock reviewing the cells predicted "regular", most uncertain
  first, one answered "large" and two selected;
- ``finetune.png``: the *Fine-tune* dock after a short StarDist training on the sample (the
  labels as the corrected mask, the ground truth as the validation pair), with its loss and
  validation AP@0.5 plot. Without StarDist installed, the dock is shown filled in, untrained.

napari needs a display with OpenGL: run it under a virtual X server (``QT_QPA_PLATFORM=offscreen``
is not enough)::

    xvfb-run -a -s "-screen 0 1920x1200x24" python docs/make_screenshots.py [--out DIR] [--stardist-base DIR]

``--stardist-base DIR`` fine-tunes a StarDist model folder (copied into the temporary model folder,
e.g. the test model that ``tests/core/test_stardist.py`` caches) instead of training from scratch,
so that the plot shows a real validation AP; no model can be downloaded here.

The default output folder is ``docs/images``; the test suite runs it into a temporary folder
(``tests/napari/test_screenshots.py``) so that the script keeps working.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QApplication

import napari
from napari_phenotyper._napari.gallery_widget import GalleryWidget
from napari_phenotyper._napari.layers import camera, find_result_layer
from napari_phenotyper._napari.phenotype_widget import PhenotypeWidget
from napari_phenotyper._napari.plots_widget import PlotsWidget
from napari_phenotyper._napari.sample_data import nuclei_sample
from napari_phenotyper._napari.table_widget import FeatureTableWidget

IMAGES = ("segment-measure.png", "phenotypes.png", "plots.png", "gallery.png", "finetune.png")
WINDOW_SIZE = (1600, 1000)
CLASSES = (("regular", "#0072B2"), ("large", "#E69F00"), ("irregular", "#D55E00"))


def _wait(predicate: Callable[[], bool], timeout: float = 180.0) -> None:
    """Process Qt events until ``predicate()`` holds, then let the window repaint."""
    app = QApplication.instance()
    t0 = time.time()
    while not predicate():
        app.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout:
            raise TimeoutError("napari did not finish in time")
    for _ in range(20):
        app.processEvents()
        time.sleep(0.01)


def _save(viewer: napari.Viewer, path: Path) -> None:
    _wait(lambda: True)
    viewer.screenshot(str(path), canvas_only=False)
    print(f"wrote {path}", flush=True)


def _keep_in_image(viewer: napari.Viewer, shape: tuple[int, ...]) -> None:
    """Move the camera (not the zoom) so that the view shows as little outside the image as it can."""
    canvas = getattr(viewer, "canvas", None)  # napari >= 0.6: viewer.canvas.size; before: _canvas_size
    size = getattr(canvas, "size", None) or getattr(viewer, "_canvas_size", None)
    if size is None:
        return
    cam = camera(viewer)
    centre = list(cam.center)
    for axis, (extent, pixels) in enumerate(zip(shape[-2:], size[-2:], strict=True)):
        half = pixels / cam.zoom / 2
        i = len(centre) - 2 + axis
        centre[i] = extent / 2 if 2 * half >= extent else min(max(centre[i], half), extent - half)
    cam.center = tuple(centre)


def segment_and_measure(viewer: napari.Viewer, out: Path) -> tuple:
    """Segment the sample, show the cell table with one cell selected; return the labels layer."""
    _, seg = viewer.window.add_plugin_dock_widget("napari-phenotyper", "Segment & measure")
    table = FeatureTableWidget(viewer)
    viewer.window.add_dock_widget(table, name="Cell table (napari-phenotyper)", area="bottom")
    seg.image.value = viewer.layers["nuclei"]
    seg.run()
    _wait(lambda: seg._worker is None)
    labels = find_result_layer(viewer, viewer.layers["nuclei"])
    if labels is None or len(labels.features) == 0:
        raise RuntimeError("Segment & measure produced no cells")
    table.layer_combo.value = labels
    # the cell nearest the image centre, so that the zoomed view stays inside the image
    df = labels.features
    centre = (df["centroid_y"] - 256) ** 2 + (df["centroid_x"] - 256) ** 2
    cell = int(df.loc[centre.idxmin(), "label"])
    table.select_row(cell)
    table.show_cell(cell)
    camera(viewer).zoom = 1.8
    _save(viewer, out / "segment-measure.png")
    viewer.window.remove_dock_widget(table)
    viewer.window.remove_dock_widget(seg.native.parent() if hasattr(seg, "native") else seg)
    return labels


def phenotypes(viewer: napari.Viewer, labels, session: Path, out: Path) -> PhenotypeWidget:
    """Three classes, four example cells each, live predictions, then Next cell."""
    pheno = PhenotypeWidget(viewer, session_path=session)
    viewer.window.add_dock_widget(pheno, name="Phenotypes (napari-phenotyper)", area="right")
    for name, color in CLASSES:
        pheno.add_class(name, color)
    df = labels.features
    examples = {
        "large": df.nlargest(4, "area")["label"],
        "irregular": df.nsmallest(4, "solidity")["label"],
        "regular": df[(df["solidity"] > df["solidity"].median())].nsmallest(4, "eccentricity")["label"],
    }
    for name, labs in examples.items():
        for lab in labs:
            pheno.annotate(labels, int(lab), name)
    _wait(lambda: pheno.quality is not None and pheno._worker is None)
    pheno.next_cell()
    camera(viewer).zoom = 1.4
    _keep_in_image(viewer, labels.data.shape)
    _save(viewer, out / "phenotypes.png")
    return pheno


def lasso_around(points: np.ndarray, limits: np.ndarray, pad: float = 0.05) -> np.ndarray:
    """A closed, hand-drawn-looking lasso around ``points``, inside the axes ``limits``.

    ``limits`` is ``[[xmin, xmax], [ymin, ymax]]``; the lasso is the points' convex hull,
    rounded and padded by ``pad`` of the axes' size, as a user would trace it on screen.
    """
    from scipy.spatial import ConvexHull

    lo, size = limits[:, 0], np.diff(limits, axis=1).ravel()
    unit = (points - lo) / size  # screen-like coordinates: the axes are the unit square
    centre = unit.mean(axis=0)
    hull = unit[ConvexHull(unit).vertices] if len(unit) >= 3 else unit
    rel = hull - centre
    hull_angles = np.arctan2(rel[:, 1], rel[:, 0])
    order = np.argsort(hull_angles)
    angles = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    radius = np.interp(angles, hull_angles[order], np.hypot(rel[:, 0], rel[:, 1])[order], period=2 * np.pi)
    ring = centre + np.column_stack([np.cos(angles), np.sin(angles)]) * (radius + pad)[:, None]
    ring = np.clip(ring, 0.01, 0.99)
    return np.vstack([ring, ring[:1]]) * size + lo


def plots(viewer: napari.Viewer, labels, pheno: PhenotypeWidget, out: Path) -> PlotsWidget:
    """The Plots dock: PCA coloured by predicted class, a lasso selection in plot and viewer."""
    widget = PlotsWidget(viewer, phenotypes=pheno)
    viewer.window.add_dock_widget(widget, name="Plots (napari-phenotyper)", area="right", tabify=True)
    widget.set_layer(labels)
    widget.show_tab("scatter")
    widget.x_combo.setCurrentText("PCA 1")
    widget.y_combo.setCurrentText("PCA 2")
    widget.color_combo.setCurrentText("predicted class")
    _wait(lambda: widget.xy is not None and not widget.embedding_busy())
    # lasso the cells predicted "large": a user drawing around the orange group
    table, xy = widget.table, widget.xy
    chosen = (table["pheno_class"] == "large").to_numpy()
    if chosen.sum() < 3:
        chosen = np.zeros(len(table), bool)
        chosen[np.argsort(xy[:, 0])[-5:]] = True  # the five rightmost points
    lasso = lasso_around(xy[chosen], np.array([widget.ax.get_xlim(), widget.ax.get_ylim()]))
    widget.select_in_polygon(lasso)
    # LassoSelector hides its line on release: draw the traced path so that the picture shows it
    widget.ax.plot(lasso[:, 0], lasso[:, 1], color="#D62728", linewidth=1.0, linestyle="--", zorder=4)
    widget.plots["scatter"].canvas.draw()
    # the whole image, with the selected cells outlined in yellow
    proposed = [lyr for lyr in viewer.layers if lyr.name == "proposed cell"]
    for lyr in proposed:
        lyr.visible = False
    viewer.reset_view()
    _save(viewer, out / "plots.png")
    return widget


def gallery(viewer: napari.Viewer, pheno: PhenotypeWidget, out: Path) -> GalleryWidget:
    """The Gallery dock: review the cells predicted "regular", most uncertain first;
    answer one with the "large" key, select two more."""
    widget = GalleryWidget(viewer, phenotypes=pheno)
    viewer.window.add_dock_widget(widget, name="Gallery (napari-phenotyper)", area="right", tabify=True)
    widget.source.setCurrentIndex(widget.source.findData("predicted"))
    widget.cls.setCurrentText("regular")
    widget.size.setValue(80)
    widget.per_page.setValue(12)
    tiles = widget.show_page()
    if len(tiles) < 4:  # few cells predicted "regular": show the unannotated cells instead
        widget.source.setCurrentIndex(widget.source.findData("unannotated"))
        tiles = widget.show_page()
    widget.select([0])
    widget.answer(2)  # "large": its frame turns orange
    widget.select([1, 2])
    _save(viewer, out / "gallery.png")
    return widget


def finetune(viewer: napari.Viewer, labels, out: Path, base: str = "") -> None:
    """The Fine-tune dock: a few StarDist epochs on the sample, with the live plot.

    Models go to ``$NAPARI_PHENOTYPER_MODELS`` (a temporary folder, set by :func:`main`);
    ``base`` is the name of a model there to start from (empty: from scratch).
    """
    from napari_phenotyper._napari.finetune_widget import FinetuneWidget

    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune (napari-phenotyper)", area="right", tabify=True)
    image, truth = viewer.layers["nuclei"], viewer.layers["nuclei ground truth"]
    if not widget.rows:
        widget.add_row(labels, image)
    else:
        widget.rows[0].labels_layer.value = labels
        widget.rows[0].image_layer.value = image
    trainable = importlib.util.find_spec("stardist") is not None and "stardist" in widget.backend.choices
    if trainable:
        widget.backend.value = "stardist"
        if widget.base is not None:
            widget.base.value = base  # no model can be downloaded here
        widget.model_name.value = "sample-nuclei"
        widget.val_labels.value = truth
        widget.val_image.value = image
        widget.epochs.value = 4
        widget.steps_per_epoch.value = 4
        widget.patch_size.value = 128
        widget.batch_size.value = 2
        widget.start()
        _wait(lambda: widget._worker is None, timeout=240)
    labels.visible = True
    viewer.reset_view()
    _save(viewer, out / "finetune.png")
    widget.close_widget()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "images"), help="output folder (default: docs/images)"
    )
    parser.add_argument(
        "--stardist-base", default="", help="StarDist model folder to fine-tune (default: from scratch)"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    viewer = napari.Viewer(title="napari-phenotyper")
    viewer.window.resize(*WINDOW_SIZE)
    for data, kwargs, kind in nuclei_sample():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    labels = segment_and_measure(viewer, out)
    with tempfile.TemporaryDirectory() as tmp:
        pheno = phenotypes(viewer, labels, Path(tmp) / "session.json", out)
        widget = plots(viewer, labels, pheno, out)
        widget.close_widget()
        gal = gallery(viewer, pheno, out)
        gal.close()
        pheno.close_session()
        _wait(lambda: pheno._worker is None and pheno._quality_worker is None)
        os.environ["NAPARI_PHENOTYPER_MODELS"] = str(Path(tmp) / "models")  # the engine inherits it
        base = ""
        if args.stardist_base:
            src = Path(args.stardist_base)
            base = "nuclei-base"
            shutil.copytree(src, Path(tmp) / "models" / "stardist" / base)
        finetune(viewer, labels, out, base)
    viewer.close()


if __name__ == "__main__":
    main()
