"""The engine process: deep-learning backends run in a persistent child process.

See :class:`EngineProcess` and ``docs/engine.md``. Importing this package is light (no
numpy, no backend): the engine process imports it first at every start.
"""

from __future__ import annotations

from .cache import clear_caches, model_cache, register_cache_clearer
from .errors import (
    EngineBusy,
    EngineCancelled,
    EngineCrashed,
    EngineError,
    EngineFileNotFoundError,
    EngineImportError,
    EngineKeyError,
    EngineMemoryError,
    EngineTypeError,
    EngineValueError,
)
from .process import EngineJob, EngineProcess, func_path_of

__all__ = [
    "EngineBusy",
    "EngineCancelled",
    "EngineCrashed",
    "EngineError",
    "EngineFileNotFoundError",
    "EngineImportError",
    "EngineJob",
    "EngineKeyError",
    "EngineMemoryError",
    "EngineProcess",
    "EngineTypeError",
    "EngineValueError",
    "clear_caches",
    "func_path_of",
    "model_cache",
    "register_cache_clearer",
]
