"""Exceptions raised in the GUI process for what happened in the engine process.

A job's exception is never unpickled in the parent: that could import the module that
defined it (TensorFlow, for one) into the GUI process. The child sends the type name,
the message and the traceback text; the parent raises an :class:`EngineError`. For the
built-in types that carry a message meant for the user (``ValueError``,
``ImportError``, ``FileNotFoundError``, ``MemoryError``, ``KeyError``, ``TypeError``)
it raises a subclass of both, e.g. :class:`EngineValueError`, so ``except ValueError``
and :func:`napari_phenotyper._napari.workers.user_message` treat it like the original.
"""

from __future__ import annotations

import signal
from types import MappingProxyType

__all__ = [
    "EngineBusy",
    "EngineCancelled",
    "EngineCrashed",
    "EngineError",
    "EngineFileNotFoundError",
    "EngineImportError",
    "EngineKeyError",
    "EngineMemoryError",
    "EngineTypeError",
    "EngineValueError",
    "RemoteTraceback",
    "builtin_kind",
    "describe_exit",
    "remote_error",
]


class EngineError(Exception):
    """A job failed in the engine process, or the engine could not run it.

    Attributes
    ----------
    type_name : str
        Qualified name of the original exception type (e.g. ``"ZeroDivisionError"``,
        ``"tensorflow.errors.ResourceExhaustedError"``), or of this class.
    remote_traceback : str
        The traceback text from the engine process ("" when there is none).
    """

    type_name: str = ""
    remote_traceback: str = ""


class EngineBusy(EngineError):
    """Another job is running in this engine (one job at a time); cancel it or wait."""


class EngineCrashed(EngineError):
    """The engine process died (or never started); the next job starts a fresh one.

    Attributes
    ----------
    exitcode : int or None
        The process's exit code; negative for a signal (``-9`` = killed), None if unknown.
    """

    exitcode: int | None = None


class EngineCancelled(Exception):
    """The job was cancelled (it stopped at a yield, or the process was terminated).

    Not an :class:`EngineError`: cancelling is not a failure.
    """


class EngineValueError(EngineError, ValueError):
    """A ``ValueError`` (or subclass) raised by the job."""


class EngineTypeError(EngineError, TypeError):
    """A ``TypeError`` raised by the job."""


class EngineKeyError(EngineError, KeyError):
    """A ``KeyError`` raised by the job; ``args[0]`` is its message."""


class EngineImportError(EngineError, ImportError):
    """An ``ImportError`` (e.g. a missing backend package) raised by the job."""


class EngineFileNotFoundError(EngineError, FileNotFoundError):
    """A ``FileNotFoundError`` (e.g. missing model weights) raised by the job."""


class EngineMemoryError(EngineError, MemoryError):
    """Out of memory in the job: ``MemoryError``, or a GPU out-of-memory error by name."""


class RemoteTraceback(Exception):
    """Carries the engine process's traceback text as the ``__cause__`` of an error."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


#: Built-in exception kinds kept across the process boundary -> parent class.
_KINDS: MappingProxyType[str, type[EngineError]] = MappingProxyType(
    {
        "ValueError": EngineValueError,
        "TypeError": EngineTypeError,
        "KeyError": EngineKeyError,
        "ImportError": EngineImportError,
        "FileNotFoundError": EngineFileNotFoundError,
        "MemoryError": EngineMemoryError,
    }
)

#: Out-of-memory errors of GPU frameworks, recognised by class name only.
_OOM_NAMES = frozenset({"OutOfMemoryError", "ResourceExhaustedError"})


def builtin_kind(exc: BaseException) -> str:
    """The kept built-in kind of ``exc`` (a key of the table above), or "".

    Runs in the engine process. ``FileNotFoundError`` is checked before ``ImportError``
    and ``ValueError`` so that the most specific kind wins; GPU out-of-memory errors
    (``torch.cuda.OutOfMemoryError``, TensorFlow's ``ResourceExhaustedError``) count as
    ``MemoryError``.
    """
    if type(exc).__name__ in _OOM_NAMES or isinstance(exc, MemoryError):
        return "MemoryError"
    for kind, base in (
        ("FileNotFoundError", FileNotFoundError),
        ("ImportError", ImportError),
        ("KeyError", KeyError),
        ("ValueError", ValueError),
        ("TypeError", TypeError),
    ):
        if isinstance(exc, base):
            return kind
    return ""


def remote_error(kind: str, type_name: str, message: str, traceback_text: str) -> EngineError:
    """Build the parent-side exception for an error reported by the engine process.

    Parameters
    ----------
    kind : str
        :func:`builtin_kind` of the original exception.
    type_name : str
        Qualified name of the original exception type.
    message : str
        ``str()`` of the original exception (``args[0]`` for a ``KeyError``).
    traceback_text : str
        The formatted traceback in the engine process.

    Returns
    -------
    EngineError
        With ``__cause__`` set to a :class:`RemoteTraceback` holding the traceback.
    """
    cls = _KINDS.get(kind)
    exc: EngineError
    if cls is not None:
        exc = cls(message)
    else:
        short = type_name.rsplit(".", 1)[-1]
        exc = EngineError(f"{short}: {message}" if message else short)
    exc.type_name = type_name
    exc.remote_traceback = traceback_text
    if traceback_text:
        exc.__cause__ = RemoteTraceback(f"\n\nTraceback in the engine process:\n{traceback_text}")
    return exc


def describe_exit(exitcode: int | None) -> str:
    """Human-readable cause of a child's exit, e.g. ``"killed by signal SIGKILL"``."""
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = str(-exitcode)
        hint = " (possibly out of memory)" if name == "SIGKILL" else ""
        return f"killed by signal {name}{hint}"
    return f"exit code {exitcode}"
