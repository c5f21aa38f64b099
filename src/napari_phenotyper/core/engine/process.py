"""A persistent worker process for deep-learning backends.

:class:`EngineProcess` owns one child process (``multiprocessing``, spawn context),
started on first use and kept alive, so that models loaded by one job stay loaded for
the next (see :mod:`.cache`). A job is a core progress generator function named by its
import path; it runs in the child, and the parent relays its :class:`Progress` records
and returns its result::

    engine = EngineProcess()
    labels = yield from engine.run("napari_phenotyper.core.segment.x:segment", image, params)

Why a separate process: TensorFlow (StarDist) must never be imported into the napari
GUI process, GPU memory is returned when the child is restarted, a crash in a backend
kills the child (reported as :class:`EngineCrashed`) and not napari, and torch and
TensorFlow each get a process of their own if needed.

Threads: a job is supervised by whichever thread iterates it (the napari thread
worker, or the caller in tests and the CLI). :meth:`EngineProcess.cancel`,
:meth:`EngineJob.cancel`, :attr:`EngineProcess.alive` and :attr:`EngineProcess.pid`
never block and may be called from any thread (the GUI thread included).
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Callable, Generator
from multiprocessing.connection import wait
from multiprocessing.util import Finalize
from typing import Any

from ..progress import Progress
from ..progress import run as run_sync
from . import _child, _wire
from .errors import (
    EngineBusy,
    EngineCancelled,
    EngineCrashed,
    EngineError,
    describe_exit,
    remote_error,
)

__all__ = ["EngineJob", "EngineProcess", "func_path_of"]

logger = logging.getLogger(__name__)

_CLEAR_CACHES = "napari_phenotyper.core.engine.cache:clear_caches"

#: Held while ``__main__`` is hidden, so that two engines starting at once restore it right.
_SPAWN_LOCK = threading.Lock()


def _start_without_main(proc: Any) -> None:
    """Start a spawn-context process without it re-running the parent's main script.

    A spawned child normally imports the parent's ``__main__`` script again (as
    ``__mp_main__``). For a napari script without an ``if __name__ == "__main__":``
    guard that would open a second viewer in the engine process and never serve a job.
    The engine process only runs functions of this package, so it needs nothing from
    ``__main__``: an empty module stands in for it while the child's start data are
    gathered (a few milliseconds).
    """
    with _SPAWN_LOCK:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            proc.start()
        finally:
            if main is not None:
                sys.modules["__main__"] = main


def func_path_of(func: str | Callable[..., Any]) -> str:
    """The ``"module:function"`` path of a job, checked against the engine's rules.

    Parameters
    ----------
    func : str or callable
        ``"napari_phenotyper.core....:function"``, or a module-level function of this
        package (only its name is sent; the child imports it). Prefer the string when
        the function's module imports something heavy: passing the function object
        means its module was already imported in this process.

    Raises
    ------
    ValueError
        For a path outside ``napari_phenotyper`` (or inside its GUI subpackage), or a
        function that is not defined at module level.
    """
    if not isinstance(func, str):
        module = getattr(func, "__module__", None)
        qualname = getattr(func, "__qualname__", "")
        if not module or not qualname.isidentifier():
            raise ValueError(f"Engine jobs must be module-level functions, got {func!r}.")
        func = f"{module}:{qualname}"
    _child.check_func_path(func)
    return func


def _reap(proc: Any, conn: Any, send_lock: threading.Lock, graceful: bool, timeout: float) -> None:
    """Stop a child process and close its connection (never raises).

    Graceful: send ``("stop",)`` and wait ``timeout`` seconds for the child to exit
    (an idle child exits at once; a busy one at its job's next yield). Then terminate,
    then kill. Also the :class:`~multiprocessing.util.Finalize` callback that stops the
    child when the engine is garbage-collected or the interpreter exits.
    """
    try:
        if graceful and proc.is_alive() and send_lock.acquire(timeout=timeout):
            try:
                _wire.send(conn, ("stop",))
            except (OSError, EOFError, ValueError):
                pass
            finally:
                send_lock.release()
            proc.join(timeout)
        for stop in (proc.terminate, proc.kill):
            if proc.is_alive():
                stop()
                proc.join(2.0)
    except (OSError, ValueError):  # pragma: no cover - already closed
        pass
    # The child is gone, so a thread blocked sending to it fails at once and lets go.
    locked = send_lock.acquire(timeout=5.0)
    try:
        conn.close()
    except OSError:  # pragma: no cover
        pass
    finally:
        if locked:
            send_lock.release()


class EngineJob:
    """One job for an :class:`EngineProcess`; iterating it runs it (once).

    Create it with :meth:`EngineProcess.job`; ``result = yield from job`` (or
    ``napari_phenotyper.core.progress.run(iter(job))``) sends it to the engine, yields
    its progress records and returns its result. Keep the object to cancel exactly this
    job later (:meth:`cancel` never cancels another job).

    Attributes
    ----------
    id : int
        Unique within its engine.
    func_path : str
        ``"module:function"`` run in the engine process.
    """

    def __init__(self, engine: EngineProcess, job_id: int, func_path: str, args: tuple, kwargs: dict) -> None:
        self.engine = engine
        self.id = job_id
        self.func_path = func_path
        self._payload: tuple[tuple, dict] | None = (args, kwargs)
        self._progress: deque[Any] = deque()
        self._outcome: tuple[Any, ...] | None = None
        self._cancel_deadline: float | None = None
        self._cancel_sent = False
        self._iterated = False
        self._submitted = False

    def __repr__(self) -> str:
        state = "done" if self.done else "cancelling" if self.cancel_requested else "pending"
        return f"<EngineJob {self.id} {self.func_path} {state}>"

    @property
    def done(self) -> bool:
        """True once the job has a result, an error, or was cancelled or lost."""
        return self._outcome is not None

    @property
    def cancel_requested(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self._cancel_deadline is not None

    def cancel(self) -> bool:
        """Ask this job to stop at its next yield; never blocks.

        If it has not stopped after the engine's grace period, the engine process is
        terminated (a fresh one starts with the next job). A job cancelled before it
        was sent never runs.

        Returns
        -------
        bool
            False if the job had already ended.
        """
        return self.engine._cancel_job(self)

    def steps(self, should_cancel: Callable[[], bool] | None = None) -> Generator[Any, None, Any]:
        """Run the job: yield its progress records and return its result.

        Parameters
        ----------
        should_cancel : callable, optional
            Polled every ``poll_interval`` seconds while waiting for the engine; the job
            is cancelled as soon as it returns True (e.g. a thread worker's
            ``abort_requested``).

        Raises
        ------
        EngineError
            The job's exception (see :mod:`.errors`), :class:`EngineCrashed` if the
            engine process died, :class:`EngineBusy` if another job is running.
        EngineCancelled
            If the job was cancelled.
        """
        return self.engine._supervise(self, should_cancel)

    def __iter__(self) -> Generator[Any, None, Any]:
        return self.steps()


class EngineProcess:
    """A persistent engine process that runs core progress generators.

    The process starts with the first job (or :meth:`start`) and stays alive between
    jobs. One job runs at a time: starting a job while another runs raises
    :class:`EngineBusy`, unless that one was cancelled, in which case the new job waits
    for it to stop (at most the grace period). There is no module-level instance: the
    owner (a widget, the CLI) creates one, passes it around and shuts it down.

    Parameters
    ----------
    grace_period : float
        Seconds a cancelled job has to reach its next yield before the process is
        terminated.
    start_timeout : float
        Seconds the process has to start (import this package) before it is
        considered broken.
    poll_interval : float
        Seconds between checks for cancellation while waiting for the process.
    name : str
        Process name (shown by ``ps`` on some platforms and in log messages).

    Examples
    --------
    >>> from napari_phenotyper.core.progress import run
    >>> with EngineProcess() as engine:  # doctest: +SKIP
    ...     run(engine.run("napari_phenotyper.core.engine._selftest:count", 3))
    3
    """

    def __init__(
        self,
        *,
        grace_period: float = 5.0,
        start_timeout: float = 60.0,
        poll_interval: float = 0.05,
        name: str = "napari-phenotyper-engine",
    ) -> None:
        self.grace_period = float(grace_period)
        self.start_timeout = float(start_timeout)
        self.poll_interval = float(poll_interval)
        self.name = name
        self._ctx = multiprocessing.get_context("spawn")
        self._lock = threading.RLock()  # process state, job state, reading
        self._send_lock = threading.Lock()  # writing (cancel messages come from other threads)
        self._ids = itertools.count(1)
        self._proc: Any = None
        self._conn: Any = None
        self._finalizer: Finalize | None = None
        self._ready = False
        self._start_deadline = 0.0
        self._job: EngineJob | None = None

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.alive else "not running"
        job = f" running {self._job.func_path}" if self._job is not None else ""
        return f"<EngineProcess {self.name} {state}{job}>"

    def __enter__(self) -> EngineProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    # -- public API ------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Whether the engine process is running (started and not dead)."""
        proc = self._proc
        return proc is not None and proc.is_alive()

    @property
    def pid(self) -> int | None:
        """Process id of the engine process, or None when it is not running."""
        proc = self._proc
        return proc.pid if proc is not None and proc.is_alive() else None

    @property
    def busy(self) -> bool:
        """Whether a job is running in the engine process."""
        return self._job is not None

    def job(self, func: str | Callable[..., Any], /, *args: Any, **kwargs: Any) -> EngineJob:
        """Prepare a job; nothing is sent until it is iterated.

        Parameters
        ----------
        func : str or callable
            ``"module:function"`` of a generator function (or plain function) in this
            package; see :func:`func_path_of`.
        *args, **kwargs
            Passed to the function in the engine process (pickled; numpy arrays travel
            out of band, see :mod:`._wire`).

        Raises
        ------
        ValueError
            For a refused function path.
        """
        return EngineJob(self, next(self._ids), func_path_of(func), args, kwargs)

    def run(self, func: str | Callable[..., Any], /, *args: Any, **kwargs: Any) -> Generator[Any, None, Any]:
        """Run ``func(*args, **kwargs)`` in the engine process.

        Returns a generator yielding the job's :class:`Progress` records and returning
        its result, so ``result = yield from engine.run(...)`` works in a core
        generator and in a napari thread worker. See :meth:`EngineJob.steps` for the
        exceptions. The path is checked at once (``ValueError`` when refused).
        """
        return self.job(func, *args, **kwargs).steps()

    def cancel(self) -> bool:
        """Cancel the running job (see :meth:`EngineJob.cancel`); never blocks.

        Returns
        -------
        bool
            False if no job was running.
        """
        job = self._job
        return self._cancel_job(job) if job is not None else False

    def start(self) -> None:
        """Start the engine process if needed and wait until it is ready.

        Optional: the first job starts it. Useful to warm it up in a background thread.

        Raises
        ------
        EngineCrashed
            If it died or did not start within ``start_timeout``.
        """
        with self._lock:
            if not self.alive:
                self._start_locked()
            while not self._ready:
                if self._conn is None:
                    raise EngineCrashed("The engine process could not be started.")
                self._pump_locked(self.poll_interval, startup_error=True)

    def restart(self, *, timeout: float = 2.0) -> None:
        """Stop the engine process now (cancelling a running job); the next job starts a fresh one.

        Frees everything the process held: loaded models, GPU memory.

        Parameters
        ----------
        timeout : float
            Seconds a running job has to reach its next yield before the process is
            terminated.
        """
        self._stop(timeout, "the engine was restarted")

    def shutdown(self, *, timeout: float = 2.0) -> None:
        """Stop the engine process (cancelling a running job) and wait for it to exit.

        Called by the context manager, when the engine is garbage-collected and at
        interpreter exit. The engine can still be used afterwards: the next job starts
        a new process.

        Parameters
        ----------
        timeout : float
            Seconds a running job has to reach its next yield before the process is
            terminated.
        """
        self._stop(timeout, "the engine was shut down")

    def clear_cache(self) -> int:
        """Ask the engine process to drop its cached models (and torch's cached GPU memory).

        Runs :func:`napari_phenotyper.core.engine.cache.clear_caches` as a job and
        waits for it. Does nothing when the process is not running.

        Returns
        -------
        int
            Number of cache hooks run (0 if the process was not running).

        Raises
        ------
        EngineBusy
            If a job is running.
        """
        if not self.alive:
            return 0
        return int(run_sync(self.run(_CLEAR_CACHES)))

    # -- the child process -----------------------------------------------------------

    def _start_locked(self) -> None:
        if self._proc is not None:  # died while idle
            proc = self._proc
            logger.warning(
                "The engine process had stopped (%s); starting a new one", describe_exit(proc.exitcode)
            )
            self._discard_child_locked(graceful=False)
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_child.main, args=(child_conn,), name=self.name, daemon=False)
        _start_without_main(proc)
        child_conn.close()
        self._proc, self._conn = proc, parent_conn
        self._ready = False
        self._start_deadline = time.monotonic() + self.start_timeout
        # Stops the child when this engine is garbage-collected, and at interpreter exit
        # before multiprocessing joins its children (exitpriority >= 0).
        self._finalizer = Finalize(
            self, _reap, args=(proc, parent_conn, self._send_lock, True, 1.0), exitpriority=10
        )
        logger.info("Started the engine process (pid %s)", proc.pid)

    def _discard_child_locked(self, *, graceful: bool, timeout: float = 1.0) -> int | None:
        """Stop and forget the child; returns its exit code."""
        proc, conn, finalizer = self._proc, self._conn, self._finalizer
        self._proc = self._conn = self._finalizer = None
        self._ready = False
        if finalizer is not None:
            finalizer.cancel()
        if proc is None:
            return None
        _reap(proc, conn, self._send_lock, graceful, timeout)
        return proc.exitcode

    def _stop(self, timeout: float, why: str) -> None:
        with self._lock:
            job = self._job
            if job is not None and job._cancel_deadline is None:
                job._cancel_deadline = time.monotonic()
            self._discard_child_locked(graceful=True, timeout=timeout)
            if job is not None:
                # The child may have answered before exiting; that answer is lost with it.
                job._outcome = ("cancelled", job.id, why)
                self._job = None

    def _crashed_locked(self, reason: str | None = None) -> None:
        proc = self._proc
        if proc is not None and reason is None:
            proc.join(1.0)
        exitcode = self._discard_child_locked(graceful=False)
        job, self._job = self._job, None
        if reason is None:
            reason = f"The engine process stopped unexpectedly ({describe_exit(exitcode)})"
        if job is not None:
            job._outcome = ("crashed", job.id, exitcode, f"{reason} while running {job.func_path}.")
        else:
            logger.warning("%s.", reason)

    # -- reading ---------------------------------------------------------------------

    def _pump_locked(self, timeout: float, startup_error: bool = False) -> None:
        """Handle at most one message from the child, waiting up to ``timeout`` s."""
        conn, proc = self._conn, self._proc
        if conn is None:
            if self._job is not None:  # pragma: no cover - defensive
                self._crashed_locked("The engine process is gone")
            return
        try:
            ready = wait([conn, proc.sentinel], timeout)
        except (OSError, ValueError):  # pragma: no cover - closed under us (interpreter exit)
            self._crashed_locked()
            return
        if conn in ready:
            try:
                msg = _wire.recv(conn, allowed=_wire.parent_may_load)
            except _wire.RefusedObject as exc:  # read whole: the stream is intact
                job = self._job
                if job is not None:
                    self._cancel_job(job)  # the child may still be running it
                    job._outcome = ("error", job.id, "TypeError", "TypeError", str(exc), "")
                    self._job = None
                return
            except (EOFError, OSError):
                self._crashed_locked()
                if startup_error:
                    raise EngineCrashed("The engine process stopped while starting.") from None
                return
            except BaseException:  # e.g. KeyboardInterrupt mid-message: the stream is lost
                self._crashed_locked("Reading from the engine process was interrupted")
                raise
            self._dispatch_locked(msg)
        elif ready:
            self._crashed_locked()
            if startup_error:
                raise EngineCrashed("The engine process stopped while starting.")
        elif not self._ready and time.monotonic() > self._start_deadline:
            reason = f"The engine process did not start within {self.start_timeout:g} s"
            self._crashed_locked(reason)
            if startup_error:
                raise EngineCrashed(reason + ".")

    def _dispatch_locked(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "ready":
            self._ready = True
            return
        job = self._job
        if job is None or msg[1] != job.id:
            return  # from a job that was already settled
        if kind == "progress":
            if job._cancel_deadline is None:
                job._progress.append(msg[2])
            return
        job._outcome = msg
        self._job = None

    def _pump(self, job: EngineJob) -> None:
        if not self._lock.acquire(timeout=self.poll_interval):
            return
        try:
            if job._outcome is None and not job._progress:
                self._pump_locked(self.poll_interval)
        finally:
            self._lock.release()

    # -- cancelling ------------------------------------------------------------------

    def _cancel_job(self, job: EngineJob) -> bool:
        if job._outcome is not None:
            return False
        if job._cancel_deadline is None:
            job._cancel_deadline = time.monotonic() + self.grace_period
            if not sys.is_finalizing():  # no new threads at interpreter exit (it would hang)
                timer = threading.Timer(self.grace_period, self._watchdog, args=(job,))
                timer.daemon = True
                timer.start()
        if self._send_lock.acquire(blocking=False):
            try:
                self._send_cancel(job)
            finally:
                self._send_lock.release()
        # else: whoever holds the lock (the job's submitter) sends it when done
        return True

    def _send_cancel(self, job: EngineJob) -> None:
        """Send the cancel message if due; the caller holds the send lock."""
        if job._cancel_deadline is None or job._cancel_sent or not job._submitted or job._outcome is not None:
            return
        conn = self._conn
        if conn is None:
            return
        try:
            _wire.send(conn, ("cancel", job.id))
        except (OSError, EOFError, ValueError):
            return  # the child is gone; the reader reports it
        job._cancel_sent = True

    def _flush_cancel(self, job: EngineJob) -> None:
        if job._cancel_deadline is not None and not job._cancel_sent and job._submitted:
            with self._send_lock:
                self._send_cancel(job)

    def _force_stop_locked(self, job: EngineJob) -> None:
        """The grace period is over: terminate the child if it still runs ``job``."""
        if job._outcome is not None:
            return
        if job is self._job:
            logger.warning(
                "%s did not stop within %g s of being cancelled; terminating the engine process",
                job.func_path,
                self.grace_period,
            )
            self._discard_child_locked(graceful=False)
            self._job = None
            job._outcome = ("cancelled", job.id, "the engine process was terminated")
        else:
            job._outcome = ("cancelled", job.id, "")

    def _watchdog(self, job: EngineJob) -> None:
        """Timer thread: enforce the grace period even if nobody iterates the job."""
        try:
            with self._lock:
                while job._outcome is None and job is self._job and self._conn is not None:
                    if not self._conn.poll(0):
                        break
                    self._pump_locked(0)
                if job._outcome is None and job._submitted:
                    self._force_stop_locked(job)
        except Exception:  # pragma: no cover - a timer thread must not raise
            logger.exception("Engine watchdog failed")

    # -- supervising a job -----------------------------------------------------------

    def _submit(self, job: EngineJob) -> bool:
        """Send ``job`` to the child (starting it if needed); True if it was started."""
        with self._lock:
            if self._job is not None:
                raise EngineBusy(
                    f"The engine is running {self._job.func_path}; cancel it or wait until it ends."
                )
            if job._cancel_deadline is not None:
                job._outcome = ("cancelled", job.id, "")
                return False
            started = not self.alive
            if started:
                self._start_locked()
            self._job = job
            conn = self._conn
        assert job._payload is not None
        args, kwargs = job._payload
        job._payload = None
        try:
            frame = _wire.encode(("job", job.id, job.func_path, args, kwargs))
        except BaseException:  # cannot pickle the arguments: nothing was sent
            with self._lock:
                if self._job is job:
                    self._job = None
                job._outcome = ("unsent", job.id)
            raise
        del args, kwargs
        failure: BaseException | None = None
        with self._send_lock:
            try:
                _wire.write(conn, frame)
                job._submitted = True
            except BaseException as exc:  # the child died or was stopped meanwhile, or an interrupt
                failure = exc
        del frame
        if failure is not None:
            # Part of the job may have been written: this connection is done for.
            with self._lock:
                if job._outcome is None:
                    if job is self._job and self._conn is conn:
                        interrupted = not isinstance(failure, OSError | EOFError)
                        self._crashed_locked("Sending the job was interrupted" if interrupted else None)
                    else:  # pragma: no cover - stopped by restart() meanwhile
                        job._outcome = ("cancelled", job.id, "")
            if not isinstance(failure, OSError | EOFError):
                raise failure
            return started
        self._flush_cancel(job)
        return started

    def _supervise(
        self, job: EngineJob, should_cancel: Callable[[], bool] | None
    ) -> Generator[Any, None, Any]:
        if job._iterated:
            raise EngineError(f"{job!r} was already run; create a new job.")
        job._iterated = True
        if should_cancel is not None and should_cancel():
            self._cancel_job(job)
        try:
            yield from self._wait_for_previous(job, should_cancel)
            if self._submit(job):
                yield Progress(0, 0, "Starting the engine process")
            while job._outcome is None or job._progress:
                if job._cancel_deadline is None and should_cancel is not None and should_cancel():
                    self._cancel_job(job)
                if job._cancel_deadline is not None:
                    job._progress.clear()
                    if job._outcome is not None:
                        break
                    self._flush_cancel(job)
                    if time.monotonic() >= job._cancel_deadline:
                        with self._lock:
                            self._force_stop_locked(job)
                        continue
                elif job._progress:
                    yield job._progress.popleft()
                    continue
                self._pump(job)
        finally:
            if job._outcome is None and job._submitted:
                self._cancel_job(job)  # closed early (e.g. GeneratorExit): stop the child's work
        return self._finish(job)

    def _wait_for_previous(
        self, job: EngineJob, should_cancel: Callable[[], bool] | None
    ) -> Generator[Progress, None, None]:
        prev = self._job
        if prev is None or prev._cancel_deadline is None:
            return  # idle, or busy (then _submit raises EngineBusy)
        yield Progress(0, 0, "Waiting for the cancelled job to stop")
        while prev._outcome is None:
            if should_cancel is not None and should_cancel():
                self._cancel_job(job)
            if job._cancel_deadline is not None:
                return  # this one is cancelled too: it will not be sent
            if time.monotonic() >= prev._cancel_deadline:
                with self._lock:
                    self._force_stop_locked(prev)
            else:
                self._flush_cancel(prev)
                self._pump(prev)

    def _finish(self, job: EngineJob) -> Any:
        outcome = job._outcome
        assert outcome is not None
        kind = outcome[0]
        if kind == "result":
            return outcome[2]
        if kind == "error":
            raise remote_error(*outcome[2:])
        if kind == "crashed":
            exc = EngineCrashed(f"{outcome[3]} A fresh engine process starts with the next job.")
            exc.exitcode = outcome[2]
            exc.type_name = "EngineCrashed"
            raise exc
        why = outcome[2] if len(outcome) > 2 and outcome[2] else ""
        raise EngineCancelled(f"{job.func_path} was cancelled" + (f" ({why})." if why else "."))
