"""workerfleet's worker runtime: at-least-once background jobs on Redis.

Application code imports this package to declare tasks and enqueue jobs; every worker pod runs
it. It knows nothing of Kubernetes or of the operator.

    from worker_runtime import App, JobContext, Retry, Priority, CircuitBreaker

The broker seam (:mod:`worker_runtime.brokers.base`), the Redis engine
(:mod:`worker_runtime.brokers.redis.queue`), the worker loop (:mod:`worker_runtime.worker`) and
the read-only stats (:mod:`worker_runtime.brokers.redis.stats`) are imported by their module names.
"""

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
