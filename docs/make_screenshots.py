"""Drive napari through the getting-started steps and save real screenshots.

Run under a display (or Xvfb): ``xvfb-run -a python docs/make_screenshots.py [--out docs/images]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from qtpy.QtWidgets import QApplication

import napari
from napari_phenotyper._napari.layers import camera, find_result_layer
from napari_phenotyper._napari.sample_data import nuclei_sample


def _wait(predicate, timeout=120.0):
    app = QApplication.instance()
    t0 = time.time()
    while not predicate():
        app.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout:
            raise TimeoutError("napari did not finish in time")
    for _ in range(20):
        app.processEvents()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(Path(__file__).parent / "images"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    viewer = napari.Viewer(title="napari-phenotyper")
    viewer.window.resize(1500, 980)
    for data, kwargs, kind in nuclei_sample():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    _, seg = viewer.window.add_plugin_dock_widget("napari-phenotyper", "Segment & measure")
    from napari_phenotyper._napari.table_widget import FeatureTableWidget

    table = FeatureTableWidget(viewer)
    viewer.window.add_dock_widget(table, name="Cell table (napari-phenotyper)", area="bottom")
    seg.image.value = viewer.layers["nuclei"]
    seg.run()
    _wait(lambda: seg._worker is None)
    labels = find_result_layer(viewer, viewer.layers["nuclei"])
    table.layer_combo.value = labels
    # the cell nearest the image centre, so that the zoomed view stays inside the image
    df = labels.features
    centre = (df["centroid_y"] - 256) ** 2 + (df["centroid_x"] - 256) ** 2
    cell = int(df.loc[centre.idxmin(), "label"])
    table.select_row(cell)
    table.show_cell(cell)
    camera(viewer).zoom = 1.8
    _wait(lambda: True)
    path = out / "segment-measure.png"
    viewer.screenshot(str(path), canvas_only=False)
    print(f"wrote {path}")

    # Phenotypes: three classes, a few example cells each, live predictions, Next cell
    from napari_phenotyper._napari.phenotype_widget import PhenotypeWidget

    viewer.window.remove_dock_widget(table)
    viewer.window.remove_dock_widget(seg.native.parent() if hasattr(seg, "native") else seg)
    with tempfile.TemporaryDirectory() as tmp:
        pheno = PhenotypeWidget(viewer, session_path=Path(tmp) / "session.json")
        viewer.window.add_dock_widget(pheno, name="Phenotypes (napari-phenotyper)", area="right")
        for name, color in (("regular", "#0072B2"), ("large", "#E69F00"), ("irregular", "#D55E00")):
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
        _wait(lambda: True)
        path = out / "phenotypes.png"
        viewer.screenshot(str(path), canvas_only=False)
        print(f"wrote {path}")
        pheno.close_session()
        _wait(lambda: pheno._worker is None and pheno._quality_worker is None)
    viewer.close()


if __name__ == "__main__":
    main()
