"""workerfleet's worker runtime: at-least-once background jobs on Redis.

Application code imports this package to declare tasks and enqueue jobs; every worker pod runs
it. It knows nothing of Kubernetes or of the operator.

    from worker_runtime import App, JobContext, Retry, Priority, CircuitBreaker

The broker seam (:mod:`worker_runtime.brokers.base`), the Redis engine
(:mod:`worker_runtime.brokers.redis.queue`), the worker loop (:mod:`worker_runtime.worker`) and
the read-only stats (:mod:`worker_runtime.brokers.redis.stats`) are imported by their module names.

The public names are resolved lazily, on first use: importing a submodule (the operator's stats
reads, ``python -m worker_runtime``) does not load the developer API with it, so the ``worker``
command can pause the garbage collector before anything heavy is imported (cold start, see
:mod:`worker_runtime.startup`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker_runtime.app import (
        HIGH,
        LOW,
        NORMAL,
        App,
        JobContext,
        Priority,
        Reject,
        Retry,
        RetryLater,
        TaskSpec,
    )
    from worker_runtime.backoff import Backoff
    from worker_runtime.circuit import CircuitBreaker, CircuitOpenError
    from worker_runtime.config import WorkerSettings

_EXPORTS = {
    "HIGH": "app",
    "LOW": "app",
    "NORMAL": "app",
    "App": "app",
    "JobContext": "app",
    "Priority": "app",
    "Reject": "app",
    "Retry": "app",
    "RetryLater": "app",
    "TaskSpec": "app",
    "Backoff": "backoff",
    "CircuitBreaker": "circuit",
    "CircuitOpenError": "circuit",
    "WorkerSettings": "config",
}

__all__ = [
    "HIGH",
    "LOW",
    "NORMAL",
    "App",
    "Backoff",
    "CircuitBreaker",
    "CircuitOpenError",
    "JobContext",
    "Priority",
    "Reject",
    "Retry",
    "RetryLater",
    "TaskSpec",
    "WorkerSettings",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    # The public names are listed before their first use, as when they were imported eagerly.
    return sorted({*globals(), *__all__})
