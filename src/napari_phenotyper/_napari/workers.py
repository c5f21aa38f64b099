"""Run core progress generators in napari thread workers.

The GUI thread only receives signals: progress records, the result, or an error.
Cancelling asks the generator to stop at its next ``yield``; nothing it produced
is applied, so the previous result stays intact.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils.notifications import show_error, show_info

from ..core.pipeline import (
    MeasureParams,
    SegmentResult,
    iter_segment_and_measure,
    select_channel,
)
from ..core.progress import Progress
from ..core.segment.registry import BUILTIN
from .layers import warm_up_labels

__all__ = ["ENGINE_SEGMENT", "Latest", "SegmentRequest", "segment_job", "start_job", "user_message"]

#: The core function an engine process runs to segment (estimate + segment).
ENGINE_SEGMENT = "napari_phenotyper.core.pipeline:iter_segment_auto"

logger = logging.getLogger(__name__)


class Latest:
    """Call ``fn`` with the latest of many values, at most once per ``interval_ms``.

    Progress can arrive hundreds of times a second (a batch of small images); each
    update repaints a progress bar and a label, and napari's main window processes the
    events of each. The first value is shown at once, later ones at most every
    ``interval_ms``, and the last one always (a timer delivers it).
    """

    def __init__(self, fn: Callable[[Any], None], interval_ms: int = 100) -> None:
        from qtpy.QtCore import QTimer

        self.fn = fn
        self._value: Any = None
        self._pending = False
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._flush)

    def __call__(self, value: Any) -> None:
        self._value, self._pending = value, True
        if not self._timer.isActive():
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._pending = False
            self._timer.start()  # the next one waits at least the interval
            self.fn(self._value)

    def flush(self) -> None:
        """Deliver a waiting value now (e.g. before the result is shown)."""
        self._timer.stop()
        self._flush()
        self._timer.stop()


def user_message(exc: BaseException) -> str:
    """The text shown to the user for a failed job.

    Our own validation errors (``ValueError``, ``ImportError``, ``KeyError``...) already
    say what to do; anything else is reported with its type so it can be searched for.
    """
    from ..core.engine.errors import EngineError

    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    if isinstance(exc, EngineError):  # already "Type: message" from the engine process
        return str(exc)
    if isinstance(exc, ValueError | ImportError | FileNotFoundError | MemoryError | TypeError):
        text = str(exc) or type(exc).__name__
        if isinstance(exc, MemoryError):
            text = "Out of memory. Try a smaller image, fewer feature groups, or close other layers."
        return text
    return f"{type(exc).__name__}: {exc}"


def drive(gen: Generator[Progress, None, Any]) -> Generator[Progress, None, Any]:
    """A generator function over a generator already made: ``start_job(drive, gen)``
    runs a generator whose inputs were taken on the GUI thread (e.g. a session's
    :meth:`~napari_phenotyper.core.classify.session.PhenotypingSession.iter_train`)."""
    return (yield from gen)


def start_job(
    gen_func: Callable[..., Generator[Progress, None, Any]],
    *args: Any,
    on_progress: Callable[[Progress], None] | None = None,
    on_returned: Callable[[Any], None] | None = None,
    on_errored: Callable[[BaseException], None] | None = None,
    on_finished: Callable[[], None] | None = None,
    on_aborted: Callable[[], None] | None = None,
    title: str = "Job",
    **kwargs: Any,
) -> GeneratorWorker:
    """Start ``gen_func(*args, **kwargs)`` in a thread worker and wire its signals.

    Parameters
    ----------
    gen_func : callable
        A core generator function yielding :class:`Progress` and returning a result.
    on_progress, on_returned, on_finished, on_aborted : callable, optional
        Called in the GUI thread.
    on_errored : callable, optional
        Called with the exception; by default the error is shown as a napari
        notification with :func:`user_message`.
    title : str
        Name of the job in log and notification messages.

    Returns
    -------
    GeneratorWorker
        Call ``worker.quit()`` to cancel at the next yield.
    """
    # errors reach the user once, through ``errored``; without _ignore_errors superqt
    # would also re-raise them in the GUI thread as a second, raw traceback
    kwargs.setdefault("_ignore_errors", True)
    worker = create_worker(gen_func, *args, _start_thread=False, **kwargs)
    if not isinstance(worker, GeneratorWorker):  # pragma: no cover - programming error
        raise TypeError(f"{gen_func!r} is not a generator function")

    if on_progress is not None:
        worker.yielded.connect(lambda p: on_progress(p) if isinstance(p, Progress) else None)
    if on_returned is not None:
        worker.returned.connect(on_returned)

    def _errored(exc: BaseException) -> None:
        logger.error("%s failed", title, exc_info=(type(exc), exc, exc.__traceback__))
        if on_errored is not None:
            on_errored(exc)
        else:
            show_error(f"{title} failed: {user_message(exc)}")

    worker.errored.connect(_errored)
    if on_aborted is not None:
        worker.aborted.connect(on_aborted)
    else:
        worker.aborted.connect(lambda: show_info(f"{title} cancelled; previous results were kept."))
    if on_finished is not None:
        worker.finished.connect(on_finished)
    worker.start()
    return worker


@dataclass(frozen=True)
class SegmentRequest:
    """Everything one "Segment & measure" run needs, read from the widget's controls."""

    image: Any  # array-like (numpy, dask, zarr); loaded in the worker thread
    rgb: bool
    segmenter: str
    params: Any
    channel: int | None
    intensities: tuple[tuple[str, Any, bool], ...]  # (name, data, rgb)
    measure: MeasureParams
    auto_diameter: bool = False  # estimate the diameter on the image first (in the worker)
    #: channel name -> the layer it was read from (provenance: columns name channels, not layers)
    channel_layers: tuple[tuple[str, str], ...] = ()


def _as_plane_array(data: Any, rgb: bool) -> np.ndarray:
    arr = np.asarray(data)
    return select_channel(arr, -1, None) if rgb else arr


def segment_job(
    request: SegmentRequest,
    engine: Any = None,
    should_cancel: Callable[[], bool] | None = None,
) -> Generator[Progress, None, SegmentResult]:
    """Load the request's arrays in this (worker) thread, then run the core pipeline.

    Segmenters registered with ``engine=True`` (deep learning) segment in ``engine``, an
    :class:`~napari_phenotyper.core.engine.EngineProcess`; measuring stays here.
    ``should_cancel`` is polled while the engine works (the Cancel button).
    """
    yield Progress(0, 1, "Loading image")
    image = np.asarray(request.image)
    intensities = {name: _as_plane_array(data, rgb) for name, data, rgb in request.intensities} or None
    step: Callable[..., Any] | None = None
    if BUILTIN.get(request.segmenter) is not None and BUILTIN[request.segmenter].engine:
        if engine is None:
            raise RuntimeError(
                f"The {request.segmenter} segmenter runs in the engine process; none was given."
            )
        from .engine_worker import engine_job

        def in_engine(plane: Any, segmenter: str, params: Any, auto: bool) -> Any:
            job = engine.job(ENGINE_SEGMENT, plane, segmenter, params, auto)
            return engine_job(job, should_cancel)

        step = in_engine

    result = yield from iter_segment_and_measure(
        image,
        request.segmenter,
        request.params,
        channel_axis=-1 if request.rgb else None,
        channel=request.channel,
        intensities=intensities,
        measure=request.measure,
        auto_diameter=request.auto_diameter,
        segment_step=step,
    )
    if request.channel_layers:
        result.provenance["channels"] = dict(request.channel_layers)
    yield Progress(1, 1, "Preparing the display")
    warm_up_labels(result.labels.dtype)  # napari's first-use compiling, here and not in the GUI
    return result
