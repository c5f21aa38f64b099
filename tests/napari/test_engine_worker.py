"""Engine-process jobs supervised by napari thread workers: progress, result, cancel, crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from napari_phenotyper._napari.engine_worker import start_engine_job
from napari_phenotyper._napari.workers import user_message
from napari_phenotyper.core.engine import EngineCrashed, EngineJob, EngineProcess

P = "napari_phenotyper.core.engine._selftest:"
GUI_AND_DL = {"napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy", "tensorflow"}

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


@pytest.fixture
def engine():
    with EngineProcess(grace_period=1.0) as eng:
        yield eng


class Recorder:
    """Callbacks for start_engine_job that record what the GUI thread received."""

    def __init__(self):
        self.progress = []
        self.events = []
        self.result = None
        self.error = None

    def kwargs(self):
        return {
            "on_progress": self.progress.append,
            "on_returned": self._returned,
            "on_errored": self._errored,
            "on_aborted": lambda: self.events.append("aborted"),
            "on_finished": lambda: self.events.append("finished"),
        }

    def _returned(self, value):
        self.events.append("returned")
        self.result = value

    def _errored(self, exc):
        self.events.append("errored")
        self.error = exc

    @property
    def finished(self):
        return "finished" in self.events

    def messages(self):
        return [p.message for p in self.progress]


def _run(qtbot, engine, func, *args, timeout=30_000, **kwargs):
    rec = Recorder()
    worker = start_engine_job(engine, func, *args, title="Engine test", **rec.kwargs(), **kwargs)
    qtbot.waitUntil(lambda: rec.finished, timeout=timeout)
    return rec, worker


def test_job_relays_progress_and_result_into_a_layer(make_napari_viewer, qtbot, engine):
    viewer = make_napari_viewer()
    labels = (np.arange(2048 * 2048, dtype=np.uint32) % 5000).reshape(2048, 2048)
    layer = viewer.add_labels(np.zeros_like(labels))
    rec, worker = _run(qtbot, engine, P + "echo_array", labels)
    assert rec.events == ["returned", "finished"]
    assert rec.messages() == ["Starting the engine process", "Doubling", "Doubled"]
    layer.data = rec.result
    np.testing.assert_array_equal(layer.data, labels * 2)
    assert layer.data.flags.writeable
    assert isinstance(worker.engine_job, EngineJob) and worker.engine_job.done
    assert engine.pid not in (None, os.getpid())


def test_quit_cancels_the_engine_job_and_keeps_the_layer(make_napari_viewer, qtbot, engine):
    viewer = make_napari_viewer()
    original = np.arange(64, dtype=np.uint32).reshape(8, 8)
    layer = viewer.add_labels(original.copy())
    rec = Recorder()
    worker = start_engine_job(engine, P + "count", 1000, 0.02, **rec.kwargs())
    qtbot.waitUntil(lambda: any(p.step >= 3 for p in rec.progress), timeout=30_000)
    pid = engine.pid
    worker.quit()  # the Cancel button
    qtbot.waitUntil(lambda: rec.finished, timeout=10_000)
    assert rec.events == ["aborted", "finished"]
    assert rec.result is None and rec.error is None
    np.testing.assert_array_equal(layer.data, original)  # nothing was applied
    assert max(p.step for p in rec.progress) < 100  # it stopped, long before the end
    assert worker.engine_job.cancel_requested
    # Cooperative cancel: the same process serves the next job.
    rec2, _ = _run(qtbot, engine, P + "count", 2)
    assert rec2.events == ["returned", "finished"] and rec2.result == 2
    assert engine.pid == pid


def test_quit_while_the_engine_starts(qtbot, engine):
    rec = Recorder()
    worker = start_engine_job(engine, P + "count", 1000, 0.02, **rec.kwargs())
    qtbot.waitUntil(lambda: "Starting the engine process" in rec.messages(), timeout=30_000)
    worker.quit()  # the worker stops at this yield; its ``aborted`` signal cancels the job
    qtbot.waitUntil(lambda: rec.finished, timeout=30_000)
    assert rec.events == ["aborted", "finished"]
    assert worker.engine_job.cancel_requested
    rec2, _ = _run(qtbot, engine, P + "count", 2)  # waits for the cancelled job to stop
    assert rec2.result == 2
    assert rec2.messages()[0] in ("Waiting for the cancelled job to stop", "step 1 of 2")
    assert max(p.step for p in rec.progress) < 100


def test_job_ignoring_cancel_is_terminated_and_the_next_run_works(qtbot, engine):
    rec = Recorder()
    worker = start_engine_job(engine, P + "stall", 60, **rec.kwargs())
    qtbot.waitUntil(lambda: "Stalling" in rec.messages(), timeout=30_000)
    pid = engine.pid
    worker.quit()
    qtbot.waitUntil(lambda: rec.finished, timeout=10_000)
    assert rec.events == ["aborted", "finished"]
    qtbot.waitUntil(lambda: not engine.busy, timeout=5_000)  # the grace period is 1 s
    rec2, _ = _run(qtbot, engine, P + "info")
    assert rec2.result["pid"] != pid


def test_engine_crash_gives_a_clear_error_and_the_next_run_works(qtbot, engine):
    rec = Recorder()
    start_engine_job(engine, P + "stall", 60, **rec.kwargs())
    qtbot.waitUntil(lambda: "Stalling" in rec.messages(), timeout=30_000)
    pid = engine.pid
    os.kill(pid, signal.SIGKILL)  # a backend taking the process down
    qtbot.waitUntil(lambda: rec.finished, timeout=10_000)
    assert rec.events == ["errored", "finished"]
    assert isinstance(rec.error, EngineCrashed) and rec.error.exitcode == -signal.SIGKILL
    message = user_message(rec.error)
    assert "engine process stopped unexpectedly" in message and "SIGKILL" in message
    assert "next job" in message
    rec2, _ = _run(qtbot, engine, P + "info")
    assert rec2.events == ["returned", "finished"]
    assert rec2.result["pid"] not in (pid, os.getpid())


def test_job_errors_reach_the_user_with_their_own_message(qtbot, engine):
    rec, _ = _run(qtbot, engine, P + "fail", "value", "Diameter must be positive.")
    assert rec.events == ["errored", "finished"]
    assert isinstance(rec.error, ValueError)
    assert user_message(rec.error) == "Diameter must be positive."
    rec, _ = _run(qtbot, engine, P + "fail", "file", "Model weights not found: x.h5")
    assert user_message(rec.error) == "Model weights not found: x.h5"


def test_gui_process_never_imports_tensorflow(qtbot, engine):
    """Deep-learning backends load in the engine process, never in napari's."""
    rec, _ = _run(qtbot, engine, P + "modules")
    child = set(rec.result)
    assert "napari_phenotyper" in child and not child & GUI_AND_DL
    here = {name.split(".")[0] for name in sys.modules}
    assert "napari" in here  # the probe sees GUI modules when they are loaded
    assert "tensorflow" not in here


GUI_IMPORTS = """
import importlib, pkgutil, sys
import napari_phenotyper._napari as gui
for m in pkgutil.walk_packages(gui.__path__, gui.__name__ + "."):
    importlib.import_module(m.name)
print("napari" in sys.modules, "tensorflow" in sys.modules)
"""


def test_gui_modules_do_not_import_tensorflow():
    """Every GUI module, imported in a fresh interpreter, leaves TensorFlow out."""
    out = subprocess.run([sys.executable, "-c", GUI_IMPORTS], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]
