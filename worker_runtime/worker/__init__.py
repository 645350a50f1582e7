"""The worker process: fetch jobs into free slots, run handlers, settle them, drain on SIGTERM.

Started by ``workerfleet worker MODULE:APP`` (:mod:`worker_runtime.cli`) or by tests and the
local fleet through :func:`run_worker`. One room per concern:

* :mod:`~worker_runtime.worker.core`: :class:`Worker`, the state the rooms share and their wiring;
* :mod:`~worker_runtime.worker.fetching`: the fetch loop, acks batched with the next fetch, and
  adopting what a fetch with a lost reply leased to us;
* :mod:`~worker_runtime.worker.running`: running one job (async task, pool thread or child
  process) and the timeout watchdog;
* :mod:`~worker_runtime.worker.settling`: acking, retrying or dead-lettering an outcome;
* :mod:`~worker_runtime.worker.policy`: the retry-or-dead-letter decision, one replaceable object;
* :mod:`~worker_runtime.worker.drain`: stop fetching, finish or release in-flight jobs in budget;
* :mod:`~worker_runtime.worker.control`: the control thread (lease renewals, heartbeat, probes);
* :mod:`~worker_runtime.worker.pool`: the daemon-thread pool and the child-process pool;
* :mod:`~worker_runtime.worker.held`, :mod:`~worker_runtime.worker.signals`,
  :mod:`~worker_runtime.worker.transient`: the held-job record, signals that arrive before the
  loop runs, and which queue errors are survived.

Two threads: the **job loop** (main thread, asyncio) runs the fetch loop, the handlers and the
settles; the **control thread** (its own event loop and connection) renews the leases of all
held jobs and writes the heartbeat in one call every ``lease/3``, and serves ``/metrics``,
``/healthz``, ``/readyz``.

Counting and fencing: a job whose renewal reports it lost (the lease expired and the job was
handed to someone else) is never acknowledged; the engine rejects such a stale settle anyway.
"""

from __future__ import annotations

from worker_runtime.worker.core import Worker, run_worker
from worker_runtime.worker.policy import DeadLetter, DefaultRetryPolicy, RetryIn, RetryPolicy
from worker_runtime.worker.pool import DaemonThreadPool
from worker_runtime.worker.signals import _early_signals, install_early_signal_handlers

__all__ = [
    "DaemonThreadPool",
    "DeadLetter",
    "DefaultRetryPolicy",
    "RetryIn",
    "RetryPolicy",
    "Worker",
    "_early_signals",
    "install_early_signal_handlers",
    "run_worker",
]
