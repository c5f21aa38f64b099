"""The engine process's main loop (runs in the spawned child, never in the GUI process).

Kept light on purpose: a spawned child imports this module first, so anything imported
here is paid at every engine start. numpy and the backends are imported by the jobs.

Messages from the parent::

    ("job", job_id, "module:function", args, kwargs)
    ("cancel", job_id)      stop that job at its next yield (ignored if it is not running)
    ("stop",)               leave the loop (also: the parent closed the connection)

Messages to the parent::

    ("ready", pid)
    ("progress", job_id, record)
    ("result", job_id, value)
    ("error", job_id, kind, type_name, message, traceback_text)
    ("cancelled", job_id)
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import signal
import traceback
from collections.abc import Callable
from typing import Any

from . import _wire
from .errors import builtin_kind

__all__ = ["PACKAGE", "check_func_path", "main", "resolve"]

#: Only functions of this package can be run in the engine.
PACKAGE = "napari_phenotyper"
_GUI_PACKAGE = f"{PACKAGE}._napari"
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def check_func_path(func_path: str) -> tuple[str, str]:
    """Validate ``"module:function"`` without importing anything; return both parts.

    The module must be :data:`PACKAGE` or one of its submodules, outside its GUI
    subpackage (``napari_phenotyper._napari``, which would load Qt into the engine);
    the function must be a plain name, not a dunder.

    Raises
    ------
    ValueError
        With a message naming the refused path.
    """
    if not isinstance(func_path, str) or func_path.count(":") != 1:
        raise ValueError(f"Engine jobs are given as 'module:function', got {func_path!r}.")
    module, name = func_path.split(":")
    if (
        not _MODULE.match(module)
        or not (module == PACKAGE or module.startswith(PACKAGE + "."))
        or module == _GUI_PACKAGE
        or module.startswith(_GUI_PACKAGE + ".")
    ):
        raise ValueError(
            f"Refusing to run {func_path!r} in the engine process: only functions of the "
            f"{PACKAGE} package (outside {_GUI_PACKAGE}) can be run there."
        )
    if not _NAME.match(name) or (name.startswith("__") and name.endswith("__")):
        raise ValueError(f"Refusing to run {func_path!r}: {name!r} is not a function name.")
    return module, name


def resolve(func_path: str) -> Callable[..., Any]:
    """Import and return the function named by ``"module:function"``.

    Besides :func:`check_func_path`, the object must be a callable that is not a class
    and was defined inside :data:`PACKAGE` (so ``from subprocess import run`` in one of
    our modules does not make ``subprocess.run`` reachable).

    Raises
    ------
    ValueError
        For a refused path or object.
    ImportError
        If the module cannot be imported.
    """
    module_name, name = check_func_path(func_path)
    module = importlib.import_module(module_name)
    func = getattr(module, name, None)
    defined_in = getattr(func, "__module__", None) or ""
    if (
        func is None
        or not callable(func)
        or inspect.isclass(func)
        or not (defined_in == PACKAGE or defined_in.startswith(PACKAGE + "."))
    ):
        raise ValueError(f"Refusing to run {func_path!r}: not a function defined in {PACKAGE}.")
    return func


class _Stopped(Exception):
    """The parent asked the child to exit (or went away) in the middle of a job."""


class _Child:
    """State of the engine process's loop: the connection and a stop flag."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.stopping = False

    def send(self, msg: tuple[Any, ...]) -> None:
        try:
            _wire.send(self.conn, msg)
        except (OSError, EOFError) as exc:  # the parent is gone
            raise _Stopped from exc

    def cancel_requested(self, job_id: int) -> bool:
        """Read the messages that arrived during the job; True if it must stop."""
        try:
            while self.conn.poll():
                msg = _wire.recv(self.conn)
                if msg[0] == "stop":
                    self.stopping = True
                    return True
                if msg[0] == "cancel" and msg[1] == job_id:
                    return True
        except (OSError, EOFError):
            self.stopping = True
            return True
        return False

    def run_job(self, job_id: int, func_path: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            out = resolve(func_path)(*args, **kwargs)
            if inspect.isgenerator(out):
                # Check at each yield, before relaying the record: once the parent has a
                # record, a cancel it sends is seen at the following yield, not before.
                cancelled = self.cancel_requested(job_id)
                while not cancelled:
                    try:
                        record = next(out)
                    except StopIteration as stop:
                        result = stop.value
                        break
                    cancelled = self.cancel_requested(job_id)
                    if not cancelled:
                        self.send(("progress", job_id, record))
                if cancelled:
                    out.close()
                    self.send(("cancelled", job_id))
                    return
            else:
                result = out
            self.send(("result", job_id, result))
        except _Stopped:
            raise
        except BaseException as exc:  # report everything, SystemExit included
            self.send(
                (
                    "error",
                    job_id,
                    builtin_kind(exc),
                    _type_name(exc),
                    _message(exc),
                    "".join(traceback.format_exception(exc)),
                )
            )

    def loop(self) -> None:
        self.send(("ready", os.getpid()))
        while not self.stopping:
            try:
                msg = _wire.recv(self.conn)
            except (OSError, EOFError):
                return
            if msg[0] == "stop":
                return
            if msg[0] == "job":
                self.run_job(*msg[1:])
            # a "cancel" for a job that already ended is ignored


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        return str(exc.args[0])
    return str(exc)


def main(conn: Any) -> None:
    """Entry point of the engine process: serve jobs until told to stop.

    Ctrl+C in a terminal reaches the whole process group; the GUI process handles it
    and stops this process, so the child ignores SIGINT.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _Child(conn).loop()
    except _Stopped:
        pass
    finally:
        conn.close()
