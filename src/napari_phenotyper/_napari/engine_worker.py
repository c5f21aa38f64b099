"""Run engine-process jobs from widgets.

A napari thread worker supervises the job: it sends it to the engine process, relays
its progress records to the progress bar and receives the result. Cancelling the worker
(``worker.quit()``, the Cancel button) cancels the job in the engine process, within
``engine.poll_interval`` seconds; if the job does not reach its next yield within the
engine's grace period, the process is terminated and a fresh one starts with the next
job. Either way the worker emits ``aborted``, not ``returned``, so the previous layer
stays intact. A crash of the engine process arrives as an
:class:`~napari_phenotyper.core.engine.EngineCrashed` through ``errored``.

Usage in a widget (the widget owns the :class:`EngineProcess` and shuts it down when
it is closed)::

    self._worker = start_engine_job(
        self.engine,
        "napari_phenotyper.core.segment.stardist:segment_job",
        request,
        on_progress=self._show_progress,
        on_returned=self._apply,
        title="Segment",
    )
    ...
    self._worker.quit()  # Cancel button
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Generator
from typing import Any

from napari.qt.threading import GeneratorWorker

from ..core.engine import EngineCancelled, EngineJob, EngineProcess
from ..core.progress import Progress
from .workers import start_job

__all__ = ["engine_job", "start_engine_job"]


def engine_job(job: EngineJob, should_cancel: Callable[[], bool] | None = None) -> Generator[Any, None, Any]:
    """Run ``job`` in its engine process; a generator function for :func:`start_job`.

    Parameters
    ----------
    job : EngineJob
        From :meth:`EngineProcess.job`.
    should_cancel : callable, optional
        Polled while the engine works; True cancels the job (e.g. the thread worker's
        ``abort_requested``, see :func:`start_engine_job`).

    Returns
    -------
    object
        The job's result.

    Raises
    ------
    EngineCancelled
        Only when the job was cancelled by someone other than the thread worker (a
        worker that asked to quit emits ``aborted`` instead).
    """
    try:
        return (yield from job.steps(should_cancel))
    except EngineCancelled:
        # One more yield so that a worker that asked to quit sees its request here and
        # emits ``aborted`` (it never resumes this generator). If nobody asked the
        # worker to quit, the job was cancelled elsewhere: report that.
        yield Progress(0, 0, "Cancelled")
        raise


def start_engine_job(
    engine: EngineProcess,
    func: str | Callable[..., Any],
    *args: Any,
    on_progress: Callable[[Progress], None] | None = None,
    on_returned: Callable[[Any], None] | None = None,
    on_errored: Callable[[BaseException], None] | None = None,
    on_finished: Callable[[], None] | None = None,
    on_aborted: Callable[[], None] | None = None,
    title: str = "Job",
    **kwargs: Any,
) -> GeneratorWorker:
    """Start ``func(*args, **kwargs)`` in ``engine``, supervised by a thread worker.

    Like :func:`~napari_phenotyper._napari.workers.start_job` (same callbacks, same
    error notifications), with the job running in the engine process. Keyword
    arguments named like the callbacks or ``title`` cannot be passed to ``func``: pack
    parameters in a dataclass.

    Parameters
    ----------
    engine : EngineProcess
        Owned by the widget; started here on first use.
    func : str or callable
        ``"module:function"`` in ``napari_phenotyper`` (see
        :func:`~napari_phenotyper.core.engine.func_path_of`).

    Returns
    -------
    GeneratorWorker
        ``worker.quit()`` cancels the job in the engine process too. The job is
        ``worker.engine_job`` (an :class:`EngineJob`).
    """
    job = engine.job(func, *args, **kwargs)
    worker_ref: list[weakref.ReferenceType[GeneratorWorker]] = []

    def should_cancel() -> bool:
        # A weak reference, so that the worker -> generator -> closure chain is no cycle.
        worker = worker_ref[0]() if worker_ref else None
        return worker is not None and worker.abort_requested

    worker = start_job(
        engine_job,
        job,
        should_cancel,
        on_progress=on_progress,
        on_returned=on_returned,
        on_errored=on_errored,
        on_finished=on_finished,
        on_aborted=on_aborted,
        title=title,
    )
    worker_ref.append(weakref.ref(worker))
    # The worker may stop at a yield before the poll above sees its request: cancel then.
    worker.aborted.connect(job.cancel)
    worker.engine_job = job  # type: ignore[attr-defined]
    return worker
