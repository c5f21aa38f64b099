"""Small jobs that exercise the engine process: its tests and the "check engine" diagnostic.

Each function runs in the engine process (``"napari_phenotyper.core.engine._selftest:<name>"``)
as well as in-process. :func:`check` runs in the caller's process and drives a few of
them through an engine to report that it works and how fast arrays travel.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from ..progress import Progress
from .cache import model_cache

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .process import EngineProcess

__all__ = [
    "cached_token",
    "check",
    "count",
    "crash",
    "echo_array",
    "fail",
    "foreign",
    "info",
    "modules",
    "stall",
]

_PATH = f"{__name__}:"


def count(n: int, delay: float = 0.0) -> Generator[Progress, None, int]:
    """Yield ``n`` progress records ``1/n .. n/n``, sleeping ``delay`` s before each; return ``n``."""
    for i in range(n):
        if delay:
            time.sleep(delay)
        yield Progress(i + 1, n, f"step {i + 1} of {n}")
    return n


def echo_array(arr: np.ndarray) -> Generator[Progress, None, np.ndarray]:
    """Return ``arr * 2`` (same dtype), proving the engine process received and computed it."""
    yield Progress(0, 1, "Doubling")
    out = arr * 2
    yield Progress(1, 1, "Doubled")
    return out


def fail(kind: str = "value", message: str = "it failed") -> Generator[Progress, None, None]:
    """Yield once, then raise: ``kind`` is ``"value"``, ``"import"``, ``"file"``, ``"memory"``,
    ``"key"``, ``"type"``, ``"zero"`` (``ZeroDivisionError``) or ``"custom"`` (a class of
    this module)."""
    errors: dict[str, type[BaseException]] = {
        "value": ValueError,
        "import": ImportError,
        "file": FileNotFoundError,
        "memory": MemoryError,
        "key": KeyError,
        "type": TypeError,
        "zero": ZeroDivisionError,
        "custom": SelfTestError,
    }
    yield Progress(0, 1, f"About to raise {kind}")
    raise errors[kind](message)


class SelfTestError(Exception):
    """An exception type that only exists in this package (for :func:`fail`)."""


def foreign(n: int = 1) -> Generator[Progress, None, Any]:
    """Return an object of a module the GUI process must not rebuild (``decimal``): the
    parent refuses it (see :func:`~napari_phenotyper.core.engine._wire.parent_may_load`)."""
    import decimal

    yield Progress(0, 1, "Making a foreign object")
    return decimal.Decimal(n)


def stall(seconds: float) -> Generator[Progress, None, float]:
    """Yield once, then block ``seconds`` without yielding (a job that ignores cancel)."""
    yield Progress(0, 1, "Stalling")
    time.sleep(seconds)
    yield Progress(1, 1, "Stalled")
    return seconds


def crash(code: int = 3) -> Generator[Progress, None, None]:
    """Yield once, then end the process at once with ``os._exit(code)`` (a backend crash)."""
    yield Progress(0, 1, "Crashing")
    os._exit(code)


@model_cache(maxsize=2)
def cached_token(key: str) -> tuple[int, int]:
    """Stand-in for a cached model load: ``(pid, load time in ns)``, computed once per ``key``.

    The same value comes back until the engine's caches are cleared
    (:meth:`EngineProcess.clear_cache`), which shows that models stay loaded between jobs.
    """
    return os.getpid(), time.perf_counter_ns()


def modules() -> list[str]:
    """Sorted top-level names of the modules loaded in this process."""
    return sorted({name.split(".")[0] for name in sys.modules})


def info() -> dict[str, Any]:
    """Process id, Python version and executable of this process."""
    return {"pid": os.getpid(), "python": sys.version.split()[0], "executable": sys.executable}


def check(engine: EngineProcess, size: int = 2048) -> Generator[Progress, None, dict[str, Any]]:
    """Health check: start ``engine``, relay progress, round-trip a ``size x size`` array.

    Runs in the caller's process (e.g. a "Check engine" button's thread worker).

    Returns
    -------
    dict
        ``pid``, ``python``, ``start_s`` (time to start and answer, 0 if it was
        running), ``roundtrip_ms`` (``uint32`` array there and back), ``progress_ok``,
        ``heavy_modules`` (TensorFlow, torch, napari, Qt loaded in the engine process).

    Raises
    ------
    EngineError
        If the engine misbehaves (wrong result, crash).
    """
    import numpy as np

    t0 = time.perf_counter()
    was_alive = engine.alive
    report: dict[str, Any] = dict((yield from engine.run(_PATH + "info")))
    report["start_s"] = 0.0 if was_alive else round(time.perf_counter() - t0, 3)
    seen: list[Any] = []
    yield from _recording(engine.run(_PATH + "count", 3), seen)
    report["progress_ok"] = [p.step for p in seen if p.total == 3] == [1, 2, 3]
    arr = np.arange(size * size, dtype=np.uint32).reshape(size, size)
    t0 = time.perf_counter()
    out = yield from engine.run(_PATH + "echo_array", arr)
    report["roundtrip_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    if not np.array_equal(out, arr * 2):
        from .errors import EngineError

        raise EngineError("The engine process returned a wrong array.")
    loaded = set((yield from engine.run(_PATH + "modules")))
    heavy = ("tensorflow", "torch", "napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6")
    report["heavy_modules"] = sorted(loaded.intersection(heavy))
    return report


def _recording(gen: Generator[Any, None, Any], seen: list[Any]) -> Generator[Any, None, Any]:
    """Re-yield ``gen``'s records, appending each to ``seen``; return its result."""
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        seen.append(p)
        yield p
