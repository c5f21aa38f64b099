"""Batch image tasks on Dask: a local multi-process cluster or a running scheduler.

Only :mod:`distributed` is needed, and only when an executor is started; importing
this module costs nothing. One task per image; each task writes its own part files
(the output folder must be reachable by every worker, e.g. a shared file system for a
remote cluster) and returns a small record, so no table travels back to the client.
"""

from __future__ import annotations

import logging
import queue
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["DaskExecutor"]

_INSTALL = "Running on Dask needs the 'distributed' package: pip install distributed"

#: Dask settings for the local cluster, which shares this machine's cores with the tasks.
#: distributed's defaults suit a cluster with a scheduler machine of its own; here every
#: periodic callback takes the GIL from an image task or a core from the other worker.
#: Each worker's statistical profiler samples the task's thread every 10 ms; each server
#: (scheduler, nannies, workers) times its event loop every 20 ms; memory is read every
#: 100 ms in every worker and nanny; the scheduler looks for work to steal every 100 ms
#: (nothing to steal here: tasks wait in the scheduler's queue until a worker is free).
#: Turned down, 2 workers process 4-8% more images per second on 2 cores
#: (``benchmarks/batch_scaling.py``). Settings the user chose in their Dask config win.
LOCAL_CLUSTER_CONFIG: dict[str, Any] = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "500ms",
    "distributed.scheduler.work-stealing": False,
}

#: Worker arguments of the local cluster (``cluster_kwargs`` overrides them): a heartbeat
#: every 5 s instead of every second (the scheduler waits 5 minutes before it gives up on
#: a silent worker).
LOCAL_WORKER_KWARGS: dict[str, Any] = {"heartbeat_interval": "5s"}


class DaskExecutor:
    """Run batch tasks on Dask workers (see :class:`~napari_phenotyper.core.batch.BatchExecutor`).

    Parameters
    ----------
    n_workers : int
        Worker processes of the local cluster (ignored with ``address``).
    address : str, optional
        A running scheduler (``tcp://host:8786``) instead of a local cluster.
    poll_s : float
        How often the waiting loop comes back to its caller (progress, cancellation).
    threads_per_worker : int
        Threads per local worker (1: image tasks are single-threaded, processes scale).
    cluster_kwargs : dict, optional
        More arguments for :class:`distributed.LocalCluster`.

    Examples
    --------
    >>> with DaskExecutor(n_workers=2) as ex:  # doctest: +SKIP
    ...     result = run(iter_batch(jobs, pipeline, options, executor=ex))
    """

    def __init__(
        self,
        n_workers: int = 2,
        address: str | None = None,
        *,
        poll_s: float = 0.2,
        threads_per_worker: int = 1,
        cluster_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if address is None and int(n_workers) < 1:
            raise ValueError("A local Dask cluster needs at least one worker.")
        self.n_workers = int(n_workers)
        self.address = address
        self.poll_s = float(poll_s)
        self.threads_per_worker = int(threads_per_worker)
        self.cluster_kwargs = dict(cluster_kwargs or {})
        self.client: Any = None
        self.cluster: Any = None

    def __enter__(self) -> DaskExecutor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the local cluster (or connect to the scheduler); idempotent."""
        if self.client is not None:
            return
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise ImportError(_INSTALL) from None
        if self.address:
            try:
                self.client = Client(self.address, timeout="20s")
            except OSError as exc:
                raise OSError(
                    f"Cannot reach the Dask scheduler at {self.address} ({exc}); start it "
                    "(dask scheduler) or check the address."
                ) from None
            self._warm_up()
            return
        kwargs: dict[str, Any] = {
            "n_workers": self.n_workers,
            "threads_per_worker": self.threads_per_worker,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": "127.0.0.1:0",  # no fixed port (8787 may be taken); no dashboard page without bokeh
            "silence_logs": logging.ERROR,
            **LOCAL_WORKER_KWARGS,
        }
        kwargs.update(self.cluster_kwargs)
        with _local_cluster_config():
            self.cluster = LocalCluster(**kwargs)
        self.client = Client(self.cluster)
        self._warm_up()

    def _warm_up(self) -> None:
        """Import the pipeline and run it once on a tiny image in every worker, all at once.

        Otherwise each worker's first image also pays for importing scikit-image, SciPy and
        pandas' lazy parts (about a second), one after the other while the scheduler waits.
        """
        try:
            self.client.run(warm_up_worker)
        except Exception:  # an optimisation only: the tasks import what they need anyway
            logging.getLogger(__name__).debug("worker warm-up failed", exc_info=True)

    @property
    def description(self) -> dict[str, Any]:
        """Mode, scheduler address and worker count (for the manifest)."""
        info: dict[str, Any] = {"mode": "dask", "scheduler": self.address or "local"}
        if self.client is not None:
            try:
                workers = self.client.scheduler_info().get("workers", {})
                info["workers"] = len(workers)
                info["threads"] = int(sum(w.get("nthreads", 0) for w in workers.values()))
            except Exception:  # informational only
                info["workers"] = self.n_workers
        try:
            import distributed

            info["distributed"] = distributed.__version__
        except ImportError:  # pragma: no cover - start() would have failed
            pass
        return info

    def run(
        self,
        fn: Callable[..., dict[str, Any]],
        jobs: Sequence[Any],
        ctx: Any,
    ) -> Iterator[tuple[Any, Any] | None]:
        """Submit one task per job and yield ``(job, record or exception)`` as they finish.

        Yields ``None`` every ``poll_s`` seconds while nothing finished. Closing the
        iterator cancels the remaining tasks.
        """
        self.start()
        client = self.client
        [ctx_future] = client.scatter([ctx], broadcast=True, hash=False)
        tag = uuid.uuid4().hex[:8]
        futures = {
            client.submit(
                fn, job, ctx_future, key=f"phenotyper-{tag}-{job.index}", pure=False, retries=1
            ): job
            for job in jobs
        }
        pending = set(futures)
        # Each future reports itself on a queue when it ends (distributed calls done
        # callbacks in a thread of its own), so the loop wakes as soon as a task is done
        # instead of at the next poll, and still comes back every poll_s for progress and
        # cancellation. (Repeated distributed.wait(timeout=...) calls leave dangling
        # waiters in distributed.)
        done: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for fut in futures:
            fut.add_done_callback(done.put)
        try:
            while pending:
                try:
                    fut = done.get(timeout=self.poll_s)
                except queue.Empty:
                    yield None
                    continue
                if fut not in pending:  # already handled
                    continue
                pending.discard(fut)
                job = futures[fut]
                if fut.status == "finished":
                    value: Any = fut.result()
                else:
                    value = fut.exception() if fut.status == "error" else RuntimeError(f"task {fut.status}")
                fut.release()
                yield job, value
        finally:
            if pending:
                client.cancel(list(pending))
            ctx_future.release()

    def close(self) -> None:
        """Close the client and the local cluster (if this executor started one)."""
        log = logging.getLogger("distributed")
        level = log.level
        log.setLevel(logging.ERROR)  # closing a cluster logs every nanny and comm at INFO
        try:
            if self.client is not None:
                self.client.close()
                self.client = None
            if self.cluster is not None:
                self.cluster.close()
                self.cluster = None
        finally:
            log.setLevel(level)


def _local_cluster_config() -> Any:
    """``dask.config.set`` of :data:`LOCAL_CLUSTER_CONFIG`, except what the user configured.

    The nannies hand the configuration in force when they are created to their worker
    processes, so it must be set around the cluster's creation.
    """
    import dask.config

    ours: dict[str, Any] = {}
    for key, value in LOCAL_CLUSTER_CONFIG.items():
        current = dask.config.get(key, default=None)
        default = _default_of(key)
        if current is None or current == default:
            ours[key] = value
    return dask.config.set(ours)


def _default_of(key: str) -> Any:
    """distributed's shipped default for ``key`` (from its ``distributed.yaml``)."""
    import dask.config
    import distributed.config  # noqa: F401  (registers distributed's defaults)

    return dask.config.get(key, default=None, config=dask.config.merge(*dask.config.defaults))


def warm_up_worker() -> int:
    """Segment and measure a small synthetic image (imports and first-call set-up); returns its cell count."""
    import numpy as np

    from .pipeline import iter_segment_and_measure
    from .progress import run as run_sync

    yy, xx = np.mgrid[:64, :64]
    image = np.zeros((64, 64), np.float32)
    for cy, cx in ((16, 16), (40, 44)):
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < 49] = 100.0
    result = run_sync(iter_segment_and_measure(image, "classical"))
    return len(result.features)
