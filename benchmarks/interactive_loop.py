"""How long one annotate -> retrain -> predict all -> uncertainty -> recolour cycle takes.

A synthetic session the size of a large screen: 100,000 cells (10 x 10 px squares in
a 3,170 x 3,160 label image) with 60 features in 4 classes (scikit-learn's
``make_classification``, seeded), and 200 annotated cells. Each cycle adds one
annotation (cells 181..200), then:

``core``
    :func:`~napari_phenotyper.core.classify.engine.iter_train_predict` (the widget's
    live pass: a random forest of ``LIVE_TREES`` = 32 trees, all cores, feature
    matrix cached between cycles as the widget does), then the display codes
    (uncertainty), the label -> code lookup table and the painted code image. The
    same cycle with the full forest (``--trees``, default 100, what the widget
    trains after a 1 s pause in annotating) is timed too, as ``full_forest_ms_core``;
``viewer``
    the same through the Phenotypes widget in a real napari viewer (under Xvfb): the
    annotation goes into the store and the layer's ``features``, the retrain runs in
    the widget's thread worker, predictions are written back into ``features`` and
    the phenotype view layer is repainted and drawn. The widget's 150 ms debounce
    (it waits for a pause in key presses) is not counted: the cycle starts a retrain
    directly, as the debounce timer does when it fires. The widget trains a new
    session's default learner (``LoopSettings().classifier``, the self-trained logistic
    regression since it became the default; before, the forest);
``default_ms_core``
    the ``core`` cycle with that default learner (fed at most
    ``SELF_TRAIN_MAX_UNLABELLED`` unannotated cells).

The last line is::

    RESULT median_ms_core=<ms> median_ms_viewer=<ms> full_forest_ms_core=<ms> n_cells=100000 ...

Usage::

    xvfb-run -a python benchmarks/interactive_loop.py [--cells N] [--cycles C] [--trees T] [--no-viewer]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import make_classification

from napari_phenotyper._napari.phenotype_widget import LIVE_TREES
from napari_phenotyper.core.classify.display import cell_codes, label_lut, paint
from napari_phenotyper.core.classify.engine import MatrixCache, iter_train_predict
from napari_phenotyper.core.classify.model import ClassifierSettings
from napari_phenotyper.core.classify.session import LoopSettings
from napari_phenotyper.core.progress import run

CLASSES = ("interphase", "prophase", "metaphase", "anaphase")


def make_session(n_cells: int, n_features: int, seed: int = 0):
    """Labels (squares), a per-cell table and the true class of every cell."""
    X, y = make_classification(
        n_cells,
        n_features,
        n_informative=12,
        n_redundant=12,
        n_classes=4,
        n_clusters_per_class=2,
        class_sep=1.5,
        random_state=seed,
    )
    side = int(np.ceil(np.sqrt(n_cells)))
    ids = np.zeros(side * side, np.int32)
    ids[:n_cells] = np.arange(1, n_cells + 1)
    labels = np.kron(ids.reshape(side, side), np.ones((10, 10), np.int32))
    table = pd.DataFrame(X.astype(np.float32), columns=[f"feature_{i:02d}" for i in range(n_features)])
    table.insert(0, "label", np.arange(1, n_cells + 1))
    truth = np.array(CLASSES)[y]
    return labels, table, truth


def annotation_order(truth: np.ndarray, n: int, seed: int = 0) -> list[int]:
    """``n`` label ids, balanced over the classes, in a random order."""
    rng = np.random.default_rng(seed)
    per = n // len(CLASSES)
    picks = [rng.choice(np.flatnonzero(truth == c), per, replace=False) for c in CLASSES]
    order = np.concatenate(picks)
    rng.shuffle(order)
    return [int(i) + 1 for i in order]


def bench_core(labels, table, truth, order, cycles, settings) -> list[float]:
    start = len(order) - cycles
    ann = {lab: truth[lab - 1] for lab in order[:start]}
    cache = MatrixCache()
    out = np.empty(labels.shape, np.uint8)
    # warm-up cycle (imports, first matrix conversion), not timed
    run(iter_train_predict({"img": table}, {"img": ann}, settings, cache=cache, n_jobs=-1))
    times = []
    for lab in order[start:]:
        t0 = time.perf_counter()
        ann[lab] = truth[lab - 1]
        result = run(iter_train_predict({"img": table}, {"img": ann}, settings, cache=cache, n_jobs=-1))
        pred = result.predictions["img"]
        codes = cell_codes(pred, list(CLASSES), "uncertainty")
        paint(labels, label_lut(table["label"].to_numpy(), codes), out=out)
        times.append((time.perf_counter() - t0) * 1e3)
    acc = float((result.predictions["img"]["pheno_class"].astype(str).to_numpy() == truth).mean())
    print(f"core: accuracy on all cells after {len(ann)} annotations {acc:.3f}")
    return times


def bench_viewer(labels, table, truth, order, cycles, settings) -> list[float]:
    from qtpy.QtWidgets import QApplication

    import napari
    from napari_phenotyper._napari.layers import upsert_labels
    from napari_phenotyper._napari.phenotype_widget import PhenotypeWidget

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    image = viewer.add_image(np.zeros(labels.shape, np.uint8), name="image")
    layer = upsert_labels(viewer, image, labels, table, {"backend": "benchmark"})
    with tempfile.TemporaryDirectory() as tmp:
        widget = PhenotypeWidget(viewer, session_path=Path(tmp) / "session.json")
        viewer.window.add_dock_widget(widget)
        # each cycle starts the retrain itself instead of waiting for the debounce timer
        widget.trees.setValue(settings.trees)  # used when the user picks the forest
        for c in CLASSES:
            widget.add_class(c)
        widget.display.setCurrentIndex(widget.display.findData("uncertainty"))
        start = len(order) - cycles

        def wait_idle() -> None:
            while widget._worker is not None or widget._quality_worker is not None:
                app.processEvents()
                time.sleep(0.001)

        for lab in order[:start]:
            widget.store.annotate(widget.key_of(layer), lab, truth[lab - 1])
        widget.retrain()  # warm-up
        wait_idle()
        times = []
        for lab in order[start:]:
            t0 = time.perf_counter()
            widget.annotate(layer, lab, truth[lab - 1])
            widget.retrain()
            while widget._worker is not None:
                app.processEvents()
                time.sleep(0.0005)
            app.processEvents()  # draw
            times.append((time.perf_counter() - t0) * 1e3)
        assert widget.result is not None and widget.result.n_train == len(order)
        widget.close_session()
        widget._timer.stop()
        widget._quality_timer.stop()
        wait_idle()
    viewer.close()
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=int, default=100_000)
    ap.add_argument("--features", type=int, default=60)
    ap.add_argument("--annotations", type=int, default=200)
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--trees", type=int, default=ClassifierSettings().trees)
    ap.add_argument("--no-viewer", action="store_true", help="time the core loop only")
    args = ap.parse_args(argv)
    labels, table, truth = make_session(args.cells, args.features)
    order = annotation_order(truth, args.annotations)
    settings = ClassifierSettings(trees=args.trees)
    live = ClassifierSettings(trees=min(args.trees, LIVE_TREES))
    print(
        f"{args.cells} cells x {args.features} features, labels {labels.shape}, {args.annotations} annotations, "
        f"random forest with {args.trees} trees, {args.cycles} timed cycles"
    )
    core = bench_core(labels, table, truth, order, args.cycles, live)
    print(f"core ms per cycle, live forest ({live.trees} trees):", " ".join(f"{t:.0f}" for t in core))
    full = bench_core(labels, table, truth, order, max(3, args.cycles // 4), settings)
    print(f"core ms per cycle, full forest ({settings.trees} trees):", " ".join(f"{t:.0f}" for t in full))
    kind = LoopSettings().classifier  # what a new session trains
    default = bench_core(labels, table, truth, order, max(3, args.cycles // 4), ClassifierSettings(kind=kind))
    print(
        f"core ms per cycle, the session's default learner ({kind}):", " ".join(f"{t:.0f}" for t in default)
    )
    viewer_ms = float("nan")
    if not args.no_viewer:
        view = bench_viewer(labels, table, truth, order, args.cycles, settings)
        print("viewer ms per cycle:", " ".join(f"{t:.0f}" for t in view))
        viewer_ms = statistics.median(view)
    print(
        f"RESULT median_ms_core={statistics.median(core):.0f} median_ms_viewer={viewer_ms:.0f} "
        f"full_forest_ms_core={statistics.median(full):.0f} default_ms_core={statistics.median(default):.0f} "
        f"default_classifier={kind} n_cells={args.cells} n_features={args.features} "
        f"live_trees={live.trees} trees={settings.trees}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
