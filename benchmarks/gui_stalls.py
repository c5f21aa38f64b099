"""How long napari's GUI thread stalls while our docks work (a 10 ms timer on the GUI thread).

A real viewer (under Xvfb: ``xvfb-run -a -s "-screen 0 1280x800x24"``) with the Segment &
measure, Phenotypes and Batch docks open. A ``QTimer`` fires every 10 ms on the GUI thread
and records the gap between consecutive ticks; a stall is a gap (in ms) minus the 10 ms
period. Scenarios, each measured from the click to one second after the result is shown:

``segment_sample``
    Segment & measure on the built-in 512x512 nuclei sample (classical segmenter, all
    feature groups); the first run adds the labels layer, a second run updates it in place;
``segment_2048``
    the same on a 2048x2048 image (the sample tiled 4x4; ~2,000 nuclei), first run and rerun;
``retrain``
    20 annotations (10 per class, through the widget as key presses do, one every
    ``KEY_INTERVAL_MS`` as a fast annotator types) on the 2048x2048 segmentation, then the
    live retrain + predict all + recolour and the full forest;
``batch``
    a Batch of 5 images (512x512 TIFFs) run in napari's process, with the profile table.

Each scenario's largest stall and 99th percentile are printed, then one line::

    RESULT max_stall_ms=<ms> p99_stall_ms=<ms> worst=<scenario> segment_sample_ms=... ...

``max_stall_ms`` is the largest stall over all scenarios; the target is under 100 ms.
What napari itself costs (creating a Labels layer, a first draw of a big layer) is
measured apart with ``--napari-only`` (the same timer around ``viewer.add_labels`` and
``layer.data = ...`` of a ready array, no work of ours).

Usage::

    xvfb-run -a -s "-screen 0 1280x800x24" python benchmarks/gui_stalls.py [--only a,b] [--napari-only]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

#: Milliseconds between two class-key presses in the retrain scenario (a fast annotator).
KEY_INTERVAL_MS = 150


def _app() -> Any:
    from qtpy.QtWidgets import QApplication

    return QApplication.instance()


class StallSampler:
    """Samples the GUI thread's stack while it stalls (``--profile``): what blocks it."""

    def __init__(self, meter: StallMeter, threshold_ms: float = 30.0) -> None:
        import threading

        self.meter = meter
        self.threshold = threshold_ms / 1000.0
        self.main = threading.main_thread().ident
        self.samples: list[tuple[str, ...]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import traceback

        while not self._stop.wait(0.005):
            last = self.meter._last
            if last is None or time.perf_counter() - last < self.threshold:
                continue
            frame = sys._current_frames().get(self.main)
            if frame is None:
                continue
            stack = traceback.extract_stack(frame)
            self.samples.append(
                tuple(
                    f"{'/'.join(Path(f.filename).parts[-2:])}:{f.lineno} {f.name}"
                    for f in stack
                    if any(k in f.filename for k in ("napari", "vispy", "superqt", "magicgui", "psygnal"))
                    and "gui_stalls" not in f.filename
                )
            )

    def start(self) -> None:
        self._thread.start()

    def report(self, top: int = 12) -> str:
        from collections import Counter

        self._stop.set()
        if not self.samples:
            return "  (no stall samples)"
        counts: Counter[str] = Counter()
        for stack in self.samples:
            for frame in set(stack[-6:]):  # the innermost frames of napari, vispy, Qt wrappers, ours
                counts[frame] += 1
        n = len(self.samples)
        lines = [f"  {n} samples of 5 ms during stalls; frames on the stack:"]
        lines += [f"  {c / n:5.0%} {f}" for f, c in counts.most_common(top)]
        return "\n".join(lines)


class StallMeter:
    """Gaps between the ticks of a 10 ms QTimer on the GUI thread."""

    def __init__(self, period_ms: int = 10) -> None:
        from qtpy.QtCore import QTimer

        self.period = period_ms
        self.timer = QTimer()
        self.timer.setInterval(period_ms)
        self.timer.timeout.connect(self._tick)
        self.gaps: list[float] = []
        self._last: float | None = None

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.gaps.append((now - self._last) * 1000.0)
        self._last = now

    def start(self) -> None:
        self.gaps.clear()
        self._last = time.perf_counter()  # work done right after start (a click's handler) counts
        self.timer.start()

    def stop(self) -> np.ndarray:
        self.timer.stop()
        self._tick()
        return np.maximum(np.asarray(self.gaps, dtype=float) - self.period, 0.0)


def pump(seconds: float) -> None:
    """Run the event loop for ``seconds``."""
    app = _app()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.001)


def wait_until(cond: Any, timeout: float = 600.0) -> None:
    app = _app()
    end = time.perf_counter() + timeout
    while not cond():
        if time.perf_counter() > end:
            raise TimeoutError("scenario did not finish in time")
        app.processEvents()
        time.sleep(0.001)


PROFILE = False


def measure(
    name: str, action: Any, done: Any, results: dict[str, np.ndarray], timeout: float = 600.0
) -> None:
    meter = StallMeter()
    pump(0.3)
    meter.start()
    sampler = StallSampler(meter) if PROFILE else None
    if sampler is not None:
        sampler.start()
    t0 = time.perf_counter()
    action()
    wait_until(done, timeout)
    took = time.perf_counter() - t0
    pump(1.0)
    stalls = meter.stop()
    results[name] = stalls
    big = np.sort(stalls)[::-1][:5]
    print(
        f"{name:<22} {took:7.1f} s  max stall {stalls.max():6.0f} ms  p99 {np.percentile(stalls, 99):5.0f} ms"
        f"  largest: {', '.join(f'{v:.0f}' for v in big)}",
        flush=True,
    )
    if sampler is not None:
        print(sampler.report(), flush=True)


def tiled_sample(reps: int = 4) -> np.ndarray:
    from napari_phenotyper._napari.sample_data import nuclei_sample

    data = next(d for d, _kw, kind in nuclei_sample() if kind == "image")
    return np.tile(np.asarray(data), (reps, reps))


def segment_scenarios(viewer: Any, seg: Any, results: dict[str, np.ndarray], only: set[str]) -> None:
    from napari_phenotyper._napari.sample_data import nuclei_sample

    def run_on(layer: Any, name: str) -> None:
        seg.image.value = layer
        seg.segmenter.value = "classical"
        measure(name, seg.run, lambda: seg._worker is None, results)

    if "segment_sample" in only:
        data, kwargs, _ = next(t for t in nuclei_sample() if t[2] == "image")
        layer = viewer.add_image(data, **kwargs)
        run_on(layer, "segment_sample")
        run_on(layer, "segment_sample_rerun")
    if only & {"segment_2048", "retrain"}:
        big = viewer.add_image(tiled_sample(), name="nuclei 2048")
        run_on(big, "segment_2048")
        if "segment_2048" in only:
            run_on(big, "segment_2048_rerun")


def retrain_scenario(viewer: Any, pheno: Any, results: dict[str, np.ndarray]) -> None:
    from napari_phenotyper._napari.layers import table_of

    labels = next(lay for lay in viewer.layers if lay.name == "nuclei 2048 labels")
    viewer.layers.selection.active = labels
    for name in ("small", "large"):
        if name not in pheno.store.classes:
            pheno.add_class(name)
    table = table_of(labels)
    order = table.sort_values("area")["label"].to_numpy()
    picks = [("small", int(lab)) for lab in order[50:60]] + [("large", int(lab)) for lab in order[-60:-50]]

    left = list(picks)

    def press_next() -> None:  # one key press per turn of the event loop, as a person types
        if left:
            cls, lab = left.pop(0)
            pheno.annotate(labels, lab, cls)

    from qtpy.QtCore import QTimer

    typing = QTimer()
    typing.setInterval(KEY_INTERVAL_MS)
    typing.timeout.connect(press_next)

    def idle() -> bool:
        done = not left and pheno._worker is None and not pheno._timer.isActive()
        return done and pheno._quality_worker is None

    measure("retrain_20", typing.start, idle, results)
    typing.stop()
    measure("retrain_full", lambda: pheno.retrain(full=True), idle, results)


def batch_scenario(viewer: Any, batch: Any, results: dict[str, np.ndarray], root: Path) -> None:
    import tifffile

    from napari_phenotyper._napari.sample_data import nuclei_sample

    data = np.asarray(next(d for d, _kw, kind in nuclei_sample() if kind == "image"))
    folder = root / "batch_in"
    folder.mkdir()
    for i in range(5):
        tifffile.imwrite(folder / f"P1_A{i + 1:02d}_s0.tif", np.roll(data, 37 * i, axis=(0, 1)))
    out = root / "batch_out"
    out.mkdir()
    batch.inputs.value = str(folder)
    batch.out_dir.value = out
    batch.format.value = "csv"
    measure("batch_5", batch.run, lambda: batch._worker is None, results)


def napari_only(viewer: Any, results: dict[str, np.ndarray]) -> None:
    """What napari itself costs to show a ready 2048x2048 segmentation."""
    from napari_phenotyper.core.progress import run
    from napari_phenotyper.core.segment.classical import ClassicalParams, ClassicalSegmenter

    img = tiled_sample()
    labels = run(ClassicalSegmenter().segment(img, ClassicalParams(diameter=17.0)))
    holder: dict[str, Any] = {}
    small = np.arange(64, dtype=labels.dtype).reshape(8, 8)
    # napari's first labels layer in a process: numba compiling and vispy's first visuals
    measure("napari_first_labels_8x8", lambda: viewer.add_labels(small), lambda: True, results)
    measure(
        "napari_add_labels_2048",
        lambda: holder.setdefault("l", viewer.add_labels(labels)),
        lambda: True,
        results,
    )
    measure(
        "napari_set_data_2048", lambda: setattr(holder["l"], "data", labels.copy()), lambda: True, results
    )
    holder["l"].contour = 1
    pump(0.5)
    measure(
        "napari_set_data_2048_contour",
        lambda: setattr(holder["l"], "data", labels.copy()),
        lambda: True,
        results,
    )
    view = (labels % 5).astype(np.uint8)
    measure("napari_add_uint8_labels_2048", lambda: viewer.add_labels(view), lambda: True, results)
    measure("napari_add_uint8_image_2048", lambda: viewer.add_image(view), lambda: True, results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="segment_sample,segment_2048,retrain,batch")
    parser.add_argument("--napari-only", action="store_true", help="time napari's own layer costs only")
    parser.add_argument("--profile", action="store_true", help="sample the GUI thread's stack during stalls")
    args = parser.parse_args(argv)
    global PROFILE
    PROFILE = args.profile
    only = set(args.only.split(","))

    import napari
    from napari_phenotyper._napari.batch_widget import BatchWidget
    from napari_phenotyper._napari.phenotype_widget import PhenotypeWidget
    from napari_phenotyper._napari.segment_widget import SegmentWidget

    results: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        viewer = napari.Viewer(show=True)
        viewer.window._qt_window.resize(1280, 800)
        pump(1.0)
        if args.napari_only:
            napari_only(viewer, results)
        else:
            seg = SegmentWidget(viewer)
            viewer.window.add_dock_widget(seg, name="Segment & measure")
            pheno = PhenotypeWidget(viewer, session_path=root / "session.json")
            viewer.window.add_dock_widget(pheno, name="Phenotypes")
            pump(0.5)
            segment_scenarios(viewer, seg, results, only)
            if "retrain" in only:
                retrain_scenario(viewer, pheno, results)
            if "batch" in only:
                batch = BatchWidget(viewer)
                viewer.window.add_dock_widget(batch, name="Batch")
                batch_scenario(viewer, batch, results, root)
            pheno.close_session()
        viewer.close()
    everything = np.concatenate(list(results.values()))
    worst = max(results, key=lambda k: results[k].max())
    per = " ".join(f"{k}_ms={v.max():.0f}" for k, v in results.items())
    print(
        f"RESULT max_stall_ms={everything.max():.0f} p99_stall_ms={np.percentile(everything, 99):.0f} "
        f"worst={worst} {per}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
