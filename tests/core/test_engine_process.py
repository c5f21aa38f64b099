"""The engine process: jobs, progress, arrays, errors, cancel, crashes, shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from napari_phenotyper.core.engine import (
    EngineBusy,
    EngineCancelled,
    EngineCrashed,
    EngineError,
    EngineProcess,
    _selftest,
    func_path_of,
)
from napari_phenotyper.core.engine._wire import OUT_OF_BAND_BYTES, RefusedObject, parent_may_load, recv, send
from napari_phenotyper.core.progress import Progress, run

P = "napari_phenotyper.core.engine._selftest:"
STARTING = "Starting the engine process"

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX process checks"),
]


@pytest.fixture(scope="module")
def engine():
    """One engine for the module (tests that break it leave it restartable)."""
    with EngineProcess(grace_period=1.0) as eng:
        yield eng


def _records(gen):
    seen = []
    result = run(gen, seen.append)
    return result, [p for p in seen if p.total > 0]  # without the engine's own notices


def _gone(pid: int) -> bool:
    """True when ``pid`` is neither running nor a zombie (it was reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_progress_is_relayed_in_order_and_result_returned(engine):
    result, seen = _records(engine.run(P + "count", 5))
    assert result == 5
    assert [(p.step, p.total) for p in seen] == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    assert seen[-1].message == "step 5 of 5" and all(isinstance(p, Progress) for p in seen)


def test_runs_in_another_process_that_stays_alive(engine):
    first = run(engine.run(P + "info"))
    second = run(engine.run(P + "info"))
    assert first["pid"] == second["pid"] == engine.pid != os.getpid()
    assert engine.alive and not engine.busy


def test_first_job_reports_the_start():
    with EngineProcess() as eng:
        assert not eng.alive and eng.pid is None
        seen = []
        assert run(eng.run(P + "count", 1), seen.append) == 1
        assert seen[0] == Progress(0, 0, STARTING)
        assert eng.alive
        # A running engine starts no more.
        seen.clear()
        run(eng.run(P + "count", 1), seen.append)
        assert [p.message for p in seen] == ["step 1 of 1"]


def test_function_objects_are_sent_by_name(engine):
    assert func_path_of(_selftest.count) == P + "count"
    assert run(engine.run(_selftest.count, 2)) == 2


def test_large_array_round_trip_is_fast_and_writable(engine):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2**31, size=(2048, 2048), dtype=np.uint32)
    run(engine.run(P + "echo_array", labels[:64, :64]))  # numpy imported in the child
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        out = run(engine.run(P + "echo_array", labels))
        times.append(time.perf_counter() - t0)
    print(f"\n2048 x 2048 uint32 (16 MiB) there and back, doubled: best {min(times) * 1000:.1f} ms")
    assert out.dtype == np.uint32 and out.shape == labels.shape
    np.testing.assert_array_equal(out, labels * 2)
    assert out.flags.writeable  # a labels layer must be paintable
    assert labels.nbytes > OUT_OF_BAND_BYTES
    assert min(times) < 2.0  # ~10-30 ms here; pickled in-band it is 5-10 x slower


def test_small_odd_and_non_contiguous_values_round_trip(engine):
    strided = np.arange(200_000, dtype=np.float64).reshape(400, 500)[:, ::2]
    out = run(engine.run(P + "echo_array", strided))
    np.testing.assert_array_equal(out, strided * 2)
    tiny = np.array([1, 2, 3], dtype=np.int16)
    np.testing.assert_array_equal(run(engine.run(P + "echo_array", tiny)), [2, 4, 6])


@pytest.mark.parametrize(
    ("kind", "builtin"),
    [
        ("value", ValueError),
        ("import", ImportError),
        ("file", FileNotFoundError),
        ("memory", MemoryError),
        ("type", TypeError),
    ],
)
def test_builtin_errors_keep_their_type_and_message(engine, kind, builtin):
    pid = engine.pid
    with pytest.raises(builtin, match=r"^bad input$") as info:
        run(engine.run(P + "fail", kind, "bad input"))
    exc = info.value
    assert isinstance(exc, EngineError)
    assert exc.type_name == builtin.__name__
    assert "in fail\n    raise errors[kind](message)" in exc.remote_traceback
    assert "Traceback in the engine process" in str(exc.__cause__)
    assert engine.pid == pid  # an error does not cost the process


def test_key_error_message_is_its_first_argument(engine):
    with pytest.raises(KeyError) as info:
        run(engine.run(P + "fail", "key", "unknown model 'x'"))
    assert info.value.args == ("unknown model 'x'",)


def test_other_errors_are_engine_errors_naming_the_type(engine):
    with pytest.raises(EngineError, match=r"^ZeroDivisionError: nope$") as info:
        run(engine.run(P + "fail", "zero", "nope"))
    assert not isinstance(info.value, ValueError)
    with pytest.raises(EngineError, match=r"^SelfTestError: custom$") as info:
        run(engine.run(P + "fail", "custom", "custom"))
    assert info.value.type_name == "napari_phenotyper.core.engine._selftest.SelfTestError"


@pytest.mark.parametrize(
    "path",
    [
        "os:system",
        "subprocess:run",
        "napari_phenotyper_evil:run",
        "napari_phenotyper._napari.layers:find_result_layer",
        "napari_phenotyper.core.engine._selftest:__init__",
        "napari_phenotyper.core.engine._selftest:count.__globals__",
        "napari_phenotyper.core.engine._selftest",
        "napari_phenotyper.core.engine._selftest:count:x",
    ],
)
def test_refused_paths_never_reach_the_process(path):
    eng = EngineProcess()
    with pytest.raises(ValueError, match=r"Refusing|'module:function'"):
        eng.run(path)
    assert not eng.alive  # nothing was started


@pytest.mark.parametrize(
    ("path", "why"),
    [
        # imported into one of our modules, defined elsewhere (multiprocessing.connection.wait)
        ("napari_phenotyper.core.engine.process:wait", "not a function defined in"),
        ("napari_phenotyper.core.engine._selftest:SelfTestError", "not a function defined in"),
        ("napari_phenotyper.core.engine._selftest:missing", "not a function defined in"),
    ],
)
def test_the_process_checks_what_it_imports(engine, path, why):
    with pytest.raises(ValueError, match=why):
        run(engine.run(path))


def test_missing_module_is_an_import_error(engine):
    with pytest.raises(ImportError, match=r"napari_phenotyper\.core\.no_such_module"):
        run(engine.run("napari_phenotyper.core.no_such_module:f"))


def test_unpicklable_arguments_fail_here_and_leave_the_engine_usable(engine):
    with pytest.raises(Exception, match="pickle"):
        run(engine.run(P + "echo_array", lambda: 1))
    assert not engine.busy
    assert run(engine.run(P + "count", 1)) == 1


def test_cancel_stops_at_the_next_yield(engine):
    pid = engine.pid or run(engine.run(P + "info"))["pid"]
    gen = engine.run(P + "count", 500, 0.02)
    seen = [next(gen), next(gen), next(gen)]
    t0 = time.perf_counter()
    assert engine.cancel()
    with pytest.raises(EngineCancelled, match="count was cancelled"):
        seen.append(next(gen))
    waited = time.perf_counter() - t0
    assert [p.step for p in seen] == [1, 2, 3]  # nothing relayed after the cancel
    assert waited < 0.5  # the next yield comes 20 ms later
    assert engine.pid == pid and not engine.busy  # cooperative: same process
    assert not engine.cancel()  # nothing to cancel
    assert run(engine.run(P + "count", 2)) == 2


def test_a_job_ignoring_cancel_is_terminated_after_the_grace_period():
    with EngineProcess(grace_period=0.5) as eng:
        job = eng.job(P + "stall", 30)
        gen = job.steps()
        assert next(gen).message == STARTING
        assert next(gen).message == "Stalling"
        pid = eng.pid
        t0 = time.perf_counter()
        assert job.cancel()
        with pytest.raises(EngineCancelled, match="terminated"):
            next(gen)
        waited = time.perf_counter() - t0
        assert 0.45 < waited < 4.0
        assert job.done and not eng.busy and not eng.alive
        assert _gone(pid)
        assert run(eng.run(P + "count", 2)) == 2
        assert eng.pid not in (None, pid)


def test_watchdog_terminates_an_abandoned_job():
    """Cancelled and no longer iterated (a thread worker that quit at a yield)."""
    with EngineProcess(grace_period=0.3) as eng:
        job = eng.job(P + "stall", 30)
        gen = iter(job)
        next(gen), next(gen)
        pid = eng.pid
        job.cancel()
        deadline = time.monotonic() + 5
        while eng.busy and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not eng.busy and _gone(pid)
        assert run(eng.run(P + "count", 1)) == 1


def test_closing_the_generator_cancels_and_the_next_job_waits_for_it(engine):
    gen = engine.run(P + "count", 500, 0.02)
    while next(gen).step < 2:
        pass
    pid = engine.pid
    gen.close()  # GeneratorExit: the child is told to stop
    assert engine.busy  # until the child acknowledges
    _, seen = _records(engine.run(P + "count", 2))
    assert [p.step for p in seen] == [1, 2]
    assert engine.pid == pid


def test_second_concurrent_job_is_refused(engine):
    first = engine.run(P + "count", 500, 0.02)
    next(first)
    with pytest.raises(EngineBusy, match="count"):
        run(engine.run(P + "info"))
    first.close()
    assert run(engine.run(P + "count", 1)) == 1


def test_a_cancelled_job_never_starts():
    eng = EngineProcess()
    job = eng.job(P + "count", 3)
    assert job.cancel()
    with pytest.raises(EngineCancelled):
        run(iter(job))
    assert not eng.alive


def test_a_job_runs_once(engine):
    job = engine.job(P + "count", 1)
    assert run(iter(job)) == 1
    with pytest.raises(EngineError, match="already run"):
        run(iter(job))


def test_crash_is_reported_and_the_next_job_gets_a_fresh_process(engine):
    pid = engine.pid or run(engine.run(P + "info"))["pid"]
    with pytest.raises(EngineCrashed, match=r"unexpectedly \(exit code 3\) while running .*crash") as info:
        run(engine.run(P + "crash", 3))
    assert info.value.exitcode == 3
    assert not engine.busy and not engine.alive and _gone(pid)
    assert run(engine.run(P + "info"))["pid"] not in (pid, os.getpid())


def test_killed_process_is_reported_with_its_signal(engine):
    gen = engine.run(P + "stall", 30)
    while next(gen).message != "Stalling":
        pass
    os.kill(engine.pid, signal.SIGKILL)
    with pytest.raises(EngineCrashed, match="SIGKILL") as info:
        next(gen)
    assert info.value.exitcode == -signal.SIGKILL
    assert run(engine.run(P + "count", 1)) == 1


def test_a_process_that_died_while_idle_is_replaced(engine):
    pid = run(engine.run(P + "info"))["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while engine.alive and time.monotonic() < deadline:
        time.sleep(0.02)
    assert run(engine.run(P + "info"))["pid"] != pid


def test_models_stay_cached_until_cleared(engine):
    a = run(engine.run(P + "cached_token", "model-a"))
    assert run(engine.run(P + "cached_token", "model-a")) == a  # loaded once
    assert engine.clear_cache() >= 1
    b = run(engine.run(P + "cached_token", "model-a"))
    assert b != a and b[0] == a[0]  # reloaded in the same process


def test_clear_cache_and_restart_when_not_running():
    eng = EngineProcess()
    assert eng.clear_cache() == 0 and not eng.alive
    eng.restart()
    eng.shutdown()
    assert not eng.alive


def test_restart_gives_a_fresh_process(engine):
    pid = run(engine.run(P + "info"))["pid"]
    engine.restart()
    assert not engine.alive and _gone(pid)
    assert run(engine.run(P + "info"))["pid"] != pid


def test_shutdown_reaps_the_process_and_the_engine_can_start_again():
    eng = EngineProcess()
    eng.start()
    pid = eng.pid
    assert pid is not None and eng.alive
    eng.shutdown()
    assert not eng.alive and eng.pid is None
    assert _gone(pid)  # not left as a zombie
    assert run(eng.run(P + "count", 1)) == 1
    eng.shutdown()


def test_shutdown_stops_a_running_job():
    eng = EngineProcess()
    gen = eng.run(P + "stall", 30)
    while next(gen).message != "Stalling":
        pass
    pid = eng.pid
    t0 = time.perf_counter()
    eng.shutdown(timeout=0.2)
    assert time.perf_counter() - t0 < 4.0
    assert _gone(pid)
    with pytest.raises(EngineCancelled, match="shut down"):
        next(gen)


def test_health_check(engine):
    report = run(_selftest.check(engine, size=512))
    assert report["progress_ok"] is True
    assert report["pid"] == engine.pid != os.getpid()
    assert report["heavy_modules"] == []  # nothing GUI or deep-learning was loaded
    assert report["roundtrip_ms"] > 0


def test_child_does_not_load_gui_modules(engine):
    loaded = set(run(engine.run(P + "modules")))
    assert "napari_phenotyper" in loaded
    assert not loaded & {"napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "tensorflow"}


EXIT_SCRIPT = """
import sys
from napari_phenotyper.core.engine import EngineProcess
from napari_phenotyper.core.progress import run

P = "napari_phenotyper.core.engine._selftest:"
idle = EngineProcess()
run(idle.run(P + "count", 1))
busy = EngineProcess()
gen = busy.run(P + "stall", 60)
while next(gen).message != "Stalling":
    pass
print(idle.pid, busy.pid, flush=True)
# exit without shutting anything down, one engine idle and one in a job that never yields
"""


def test_interpreter_exit_stops_engines_without_hanging(tmp_path):
    script = tmp_path / "exit_script.py"
    script.write_text(textwrap.dedent(EXIT_SCRIPT))
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30)
    elapsed = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr
    pids = [int(x) for x in out.stdout.split()]
    assert len(pids) == 2
    assert elapsed < 15  # the busy child is terminated after a short wait
    deadline = time.monotonic() + 5
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(pid) for pid in pids)


def test_parent_rebuilds_only_known_kinds_of_objects():
    assert parent_may_load("numpy._core.multiarray", "_reconstruct")
    assert parent_may_load("pandas.core.frame", "DataFrame")
    assert parent_may_load("napari_phenotyper.core.progress", "Progress")
    assert parent_may_load("builtins", "set")
    for module, name in [
        ("builtins", "getattr"),
        ("builtins", "eval"),
        ("os", "system"),
        ("tensorflow.python.framework.ops", "EagerTensor"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("napari_phenotyper._napari.layers", "upsert_labels"),
    ]:
        assert not parent_may_load(module, name), (module, name)


def test_a_refused_message_leaves_the_connection_usable():
    import decimal
    import multiprocessing

    a, b = multiprocessing.Pipe()
    send(a, {"value": decimal.Decimal(2), "big": np.ones(OUT_OF_BAND_BYTES, np.uint8)})
    send(a, ("next", np.arange(3)))
    with pytest.raises(RefusedObject, match=r"decimal\.Decimal"):
        recv(b, allowed=parent_may_load)
    kind, arr = recv(b, allowed=parent_may_load)
    assert kind == "next" and arr.tolist() == [0, 1, 2]


def test_a_foreign_result_is_refused_and_the_engine_goes_on(engine):
    with pytest.raises(TypeError, match="does not load"):
        run(engine.run(P + "foreign", 3))
    assert run(engine.run(P + "count", 2)) == 2
