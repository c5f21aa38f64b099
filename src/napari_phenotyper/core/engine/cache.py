"""Model caches that :meth:`EngineProcess.clear_cache` can empty.

The engine process lives across jobs, so a model loaded by one job stays loaded for
the next one. Backends cache their loaded models with :func:`model_cache` (a
:func:`functools.lru_cache` that also registers its ``cache_clear``), or register any
other clean-up with :func:`register_cache_clearer`. :func:`clear_caches` runs every
hook, collects garbage and asks torch to hand its cached GPU memory back.

The hooks are per process by nature (as the caches are): in the engine process they
empty the engine's caches; in-process (CLI, tests) they empty that process's caches.
"""

from __future__ import annotations

import functools
import gc
import sys
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["clear_caches", "model_cache", "register_cache_clearer"]

F = TypeVar("F", bound=Callable[..., Any])

#: Clean-up hooks of this process (append-only; a registry like ``atexit``'s).
_CLEARERS: list[Callable[[], object]] = []


def register_cache_clearer(func: Callable[[], object]) -> Callable[[], object]:
    """Register ``func`` to be called by :func:`clear_caches`; returns ``func``.

    Registering the same function twice has no effect. Usable as a decorator.
    """
    if func not in _CLEARERS:
        _CLEARERS.append(func)
    return func


def model_cache(maxsize: int | None = 2) -> Callable[[F], F]:
    """:func:`functools.lru_cache` whose ``cache_clear`` is registered for :func:`clear_caches`.

    Parameters
    ----------
    maxsize : int or None
        Models kept at once (each can hold GPU memory, so keep it small).

    Examples
    --------
    >>> @model_cache(maxsize=2)
    ... def load_model(name: str, device: str) -> object:
    ...     return object()  # the expensive load, done once per (name, device)
    """

    def decorate(func: F) -> F:
        cached = functools.lru_cache(maxsize=maxsize)(func)
        register_cache_clearer(cached.cache_clear)
        return cached  # type: ignore[return-value]

    return decorate


def clear_caches() -> int:
    """Run every registered hook, collect garbage, release torch's cached GPU memory.

    TensorFlow keeps the GPU memory it once reserved until its process ends; restart
    the engine (:meth:`EngineProcess.restart`) to give that back.

    Returns
    -------
    int
        The number of hooks run.
    """
    for clear in list(_CLEARERS):
        clear()
    gc.collect()
    torch = sys.modules.get("torch")  # never import it just to clear it
    if torch is not None:
        cuda = getattr(torch, "cuda", None)
        if cuda is not None and cuda.is_available() and cuda.is_initialized():
            cuda.empty_cache()
    return len(_CLEARERS)
