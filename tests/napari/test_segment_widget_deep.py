""" "Segment & measure" with the deep-learning segmenters, clicked through with real engine processes.

Each backend runs in its own engine process (as in the widget: TensorFlow and torch never
share one, and neither loads here), shared by the tests of this module. The models are the
small ones the core tests train and cache (``tests/core/test_stardist.py``: StarDist
``pheno_test_stardist``; ``tests/core/test_cellpose.py``: cellpose 3 ``test_nuclei``), copied
into a temporary models folder (``NAPARI_PHENOTYPER_MODELS``), offline
(``NAPARI_PHENOTYPER_OFFLINE=1``), with empty Keras and Cellpose caches. When a model is
not cached yet (run those core tests once) or its library is missing, the tests skip.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from napari_phenotyper._napari.layers import META_KEY, find_result_layer
from napari_phenotyper._napari.segment_widget import SegmentWidget
from napari_phenotyper.core.engine import EngineProcess
from napari_phenotyper.core.segment.cellpose_models import cellpose_version

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
    # engine start-up (TensorFlow or torch imported there) lands on the first test of a backend
    pytest.mark.timeout(600),
]


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def _cache_root() -> Path:
    """Where the core tests cache their trained models (``$NAPARI_PHENOTYPER_TEST_CACHE`` overrides)."""
    env = os.environ.get("NAPARI_PHENOTYPER_TEST_CACHE", "")
    return Path(env).expanduser() if env.strip() else Path.home() / ".cache" / "napari-phenotyper-tests"


def _cached_model(pattern: str) -> Path | None:
    """The newest cached model folder matching ``pattern`` (it has a ``model.json``)."""
    found = [p for p in _cache_root().glob(pattern) if (p / "model.json").is_file()]
    return max(found, key=lambda p: (p / "model.json").stat().st_mtime) if found else None


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str  # segmenter name
    model: str  # the test model's name in the models folder
    source_pattern: str  # where the core tests cache it
    modules: tuple[str, ...]

    def skip_reason(self) -> str | None:
        if not _installed(*self.modules):
            return f"{' and '.join(self.modules)} not installed"
        if self.name == "cellpose" and (cellpose_version() or (0,))[0] != 3:
            return "the cached cellpose test model is a cellpose 3 model"
        if _cached_model(self.source_pattern) is None:
            return f"no cached {self.name} test model under {_cache_root()}: run tests/core/test_{self.name}.py once"
        return None


BACKENDS = {
    "stardist": Backend(
        "stardist", "pheno_test_stardist", "stardist-*/pheno_test_stardist", ("stardist", "tensorflow")
    ),
    "cellpose": Backend("cellpose", "test_nuclei", "cellpose3-*/cellpose/test_nuclei", ("cellpose", "torch")),
}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def models_env(tmp_path_factory):
    """A models folder with every cached test model, offline, empty library caches (module-wide)."""
    root = tmp_path_factory.mktemp("deep")
    models = root / "models"
    for b in BACKENDS.values():
        src = _cached_model(b.source_pattern)
        if src is not None and _installed(*b.modules):
            shutil.copytree(src, models / b.name / b.model)
    (root / "cellpose_models").mkdir()
    with pytest.MonkeyPatch.context() as mp:  # engine processes inherit this environment
        mp.setenv("NAPARI_PHENOTYPER_MODELS", str(models))
        mp.setenv("NAPARI_PHENOTYPER_HOME", str(root / "home"))
        mp.setenv("NAPARI_PHENOTYPER_OFFLINE", "1")
        mp.setenv("KERAS_HOME", str(root / "keras"))
        mp.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(root / "cellpose_models"))
        # one torch / TensorFlow thread each on the shared 2-core test machines (as the core tests)
        mp.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
        yield models


@pytest.fixture(scope="module")
def engines(models_env):
    """One engine process per backend, shared by this module's tests (models stay loaded)."""
    made = {name: EngineProcess(start_timeout=180, name=f"test-{name}") for name in BACKENDS}
    yield made
    for engine in made.values():
        engine.shutdown()


@pytest.fixture(params=list(BACKENDS))
def backend(request) -> Backend:
    b = BACKENDS[request.param]
    reason = b.skip_reason()
    if reason:
        pytest.skip(reason)
    return b


@pytest.fixture(scope="module")
def images(shared_data):
    """A 256 x 256 crop of the StarDist sample, and a 12-plane stack of such crops (a longer job)."""
    import tifffile

    sample = tifffile.imread(shared_data / "stardist_sample" / "img2d.tif")
    crop = np.ascontiguousarray(sample[:256, :256])
    offsets = [(y, x) for y in (0, 128, 256) for x in (0, 96, 192, 256)]
    return crop, np.stack([sample[y : y + 256, x : x + 256] for y, x in offsets])


@pytest.fixture
def errors(monkeypatch):
    """Error notifications the widget showed."""
    shown: list[str] = []
    monkeypatch.setattr("napari_phenotyper._napari.segment_widget.show_error", shown.append)
    return shown


def _widget(viewer, engines, backend: Backend) -> SegmentWidget:
    widget = SegmentWidget(viewer, engines={backend.name: engines[backend.name]})
    viewer.window.add_dock_widget(widget)
    widget.segmenter.value = backend.name
    for g in ("texture", "neighbors"):
        widget.groups[g].value = False  # keep measuring quick
    return widget


def _wait(qtbot, widget, timeout=240_000) -> None:
    qtbot.waitUntil(lambda: widget._worker is None, timeout=timeout)


def _n_objects(labels) -> int:
    return len(np.unique(np.asarray(labels))) - 1


# --------------------------------------------------------------------------- tests


def test_pick_the_model_run_and_provenance(make_napari_viewer, qtbot, engines, backend, images, errors):
    crop, _stack = images
    viewer = make_napari_viewer()
    image = viewer.add_image(crop, name="nuclei")
    widget = _widget(viewer, engines, backend)
    chooser = widget.model_chooser
    assert chooser is not None and widget.form.editors["model"] is chooser
    assert backend.model in chooser.names()  # the models folder is listed
    info = chooser.info(backend.model)
    assert info is not None and info.kind == "finetuned" and info.available
    assert "auto" in widget.device_text() or "CPU" in widget.device_text()  # nothing loaded here
    chooser.value = backend.model
    assert widget.form.params().model == backend.model
    assert "fine-tuned" in chooser.detail.value and "on this computer" in chooser.detail.value
    widget.image.value = image

    widget.run()
    assert not widget.run_button.enabled and widget.cancel_button.enabled
    _wait(qtbot, widget)
    assert errors == []
    layer = find_result_layer(viewer, image)
    assert layer is not None and layer.data.shape == crop.shape
    n = _n_objects(layer.data)
    assert 10 <= n <= 120, n  # about 30 nuclei in this crop
    assert len(layer.features) == n
    meta = layer.metadata[META_KEY]
    assert meta["backend"] == backend.name and meta["params"]["model"] == backend.model
    mi = meta["model_info"]
    assert mi["name"] == backend.model and mi["kind"] == "finetuned" and mi["backend"] == backend.name
    assert Path(mi["path"]).is_relative_to(os.environ["NAPARI_PHENOTYPER_MODELS"])
    assert isinstance(mi["sha256"], str) and len(mi["sha256"]) == 64
    assert backend.name in mi["versions"] and mi["trained_with"]
    assert "CPU" in meta["device"]
    assert f"{n} cells" in widget.status.value and backend.model in widget.status.value
    assert "CPU" in widget.device_text()  # what the engine reported
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_cancel_keeps_the_previous_layer(make_napari_viewer, qtbot, engines, backend, images, errors):
    _crop, stack = images
    viewer = make_napari_viewer()
    image = viewer.add_image(stack[:2], name="stack")
    widget = _widget(viewer, engines, backend)
    widget.model_chooser.value = backend.model
    widget.image.value = image
    widget.run()
    _wait(qtbot, widget)
    layer = find_result_layer(viewer, image)
    assert layer is not None and errors == []
    before, before_meta = layer.data.copy(), dict(layer.metadata[META_KEY])
    before_features = layer.features.copy()

    image.data = stack  # 12 planes now: a job long enough to cancel half-way
    widget.run()
    worker = widget._worker
    qtbot.waitUntil(lambda: "plane 2/" in widget.status.value, timeout=240_000)
    with qtbot.waitSignal(worker.aborted, timeout=60_000):
        widget.cancel()
    _wait(qtbot, widget, 30_000)
    assert find_result_layer(viewer, image) is layer
    assert np.array_equal(layer.data, before) and layer.features.equals(before_features)
    assert layer.metadata[META_KEY]["created"] == before_meta["created"]
    assert "Cancelled" in widget.status.value and errors == []
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_killed_engine_is_reported_and_the_next_run_works(
    make_napari_viewer, qtbot, engines, backend, images, errors
):
    crop, stack = images
    engine = engines[backend.name]
    viewer = make_napari_viewer()
    image = viewer.add_image(
        np.concatenate([stack, stack]), name="stack"
    )  # 24 planes: killed long before the end
    widget = _widget(viewer, engines, backend)
    widget.model_chooser.value = backend.model
    widget.image.value = image

    # killed during a run: the error reaches the user, the buttons come back
    widget.run()
    qtbot.waitUntil(lambda: engine.busy and engine.pid is not None, timeout=60_000)
    pid = engine.pid
    os.kill(pid, signal.SIGKILL)
    _wait(qtbot, widget, 60_000)
    assert errors and "Segmentation failed" in errors[-1] and "engine process" in errors[-1]
    assert widget.status.value.startswith("Failed") and "engine process" in widget.status.value
    assert find_result_layer(viewer, image) is None
    assert widget.run_button.enabled and not widget.cancel_button.enabled

    # the next run starts a fresh engine process and works
    n_errors = len(errors)
    image = viewer.add_image(crop, name="crop")
    widget.image.value = image
    widget.run()
    _wait(qtbot, widget)
    assert len(errors) == n_errors, errors
    layer = find_result_layer(viewer, image)
    assert layer is not None and _n_objects(layer.data) >= 10
    assert engine.pid not in (None, pid)
    assert "cells" in widget.status.value


def test_listing_models_loads_no_deep_learning_library(models_env):
    """Building the deep segmenters' forms and choosers, in a fresh process, imports neither torch nor TensorFlow."""
    code = textwrap.dedent(
        """
        import sys
        from qtpy.QtWidgets import QApplication
        app = QApplication([])
        from napari_phenotyper._napari.params_form import ModelChooser, ParamsForm
        from napari_phenotyper.core.segment.registry import available
        from napari_phenotyper.core.segment import get_segmenter
        for name in ("stardist", "cellpose"):
            if name not in available():
                continue
            seg = get_segmenter(name)
            chooser = []
            form = ParamsForm(seg.params_type, editors={"model": lambda s: chooser.append(ModelChooser(name, s.default, optional=s.optional)) or chooser[-1]})
            form.params()
            print(name, chooser[0].names())
        heavy = sorted(m for m in ("torch", "tensorflow", "cellpose.models", "stardist.models") if m in sys.modules)
        print("HEAVY", heavy)
        """
    )
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=180, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout, out.stdout
