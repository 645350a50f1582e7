"""Where sync handlers run: a bounded pool of daemon threads, or the App's pool of child processes.

The runner (:mod:`worker_runtime.worker.running`) owns one :class:`DaemonThreadPool` sized to the
worker's concurrency, and one :class:`worker_runtime.processes.ProcessPool` (started here) when a
task of the App runs with ``executor="process"``.
"""

from __future__ import annotations

import queue as stdlib_queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from worker_runtime import config, logs, metrics

if TYPE_CHECKING:
    from worker_runtime import processes

log = logs.get_logger("worker")


class DaemonThreadPool:
    """A bounded pool of daemon threads running fire-and-forget calls (sync handlers).

    ``ThreadPoolExecutor`` joins its threads at interpreter exit, so one stuck sync handler
    would keep a drained worker alive past its grace period; daemon threads do not. Threads
    are started on demand, up to ``max_workers``; calls must not raise (the worker's wrapper
    catches everything).
    """

    def __init__(self, max_workers: int, name: str = "wf-sync") -> None:
        self._max = max_workers
        self._name = name
        self._work: stdlib_queue.SimpleQueue[Callable[[], None] | None] = stdlib_queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._shutdown = False

    def run(self, call: Callable[[], None]) -> None:
        """Run ``call`` on a pool thread (queued while all threads are busy)."""
        with self._lock:
            if self._shutdown:
                msg = "pool is shut down"
                raise RuntimeError(msg)
            if self._idle > 0:
                self._idle -= 1
            elif len(self._threads) < self._max:
                t = threading.Thread(
                    target=self._loop, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(t)
                t.start()
        self._work.put(call)

    def _loop(self) -> None:
        while True:
            call = self._work.get()
            if call is None:
                return
            call()
            with self._lock:
                self._idle += 1

    @property
    def size(self) -> int:
        """Threads started so far (never more than ``max_workers``)."""
        return len(self._threads)

    def shutdown(self) -> None:
        """Let idle threads exit; busy ones finish their call first (they are daemons)."""
        with self._lock:
            self._shutdown = True
            for _ in self._threads:
                self._work.put(None)


def start_process_pool(
    settings: config.WorkerSettings, concurrency: int, worker_metrics: metrics.WorkerMetrics
) -> processes.ProcessPool:
    """The child-process pool for ``executor="process"`` tasks (children start on demand)."""
    # Deferred for cold start: multiprocessing loads only for an App with a process task.
    from worker_runtime import processes

    s = settings
    return processes.ProcessPool(
        s.process_pool_size or processes.default_size(concurrency),
        max_jobs_per_child=s.process_max_jobs_per_child,
        max_memory_growth_bytes=int(s.process_max_memory_growth_mb * 1024 * 1024),
        log=(s.log_level, s.log_format),
        on_child_retired=worker_metrics.child_exited,
    )


async def prestart_children(pool: processes.ProcessPool) -> None:
    """Boot the children while the first fetch runs; a failure here is only logged.

    The jobs themselves start children on demand and fail (and retry) with the reason.
    """
    try:
        await pool.prestart()
    except Exception as exc:
        log.error("starting the process pool failed", extra={"error": repr(exc)})
    else:
        log.info("process pool started", extra={"children": pool.size, "pids": pool.pids})
