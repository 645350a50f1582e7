"""The local fleet: a WorkerPool run on one machine (``workerfleet run``, ``workerfleet demo``).

Local worker processes stand in for pods, an embedded redis-server for the cluster's Redis, and
the operator's own autoscaler (:func:`workerfleet_operator.autoscaling.decide`) drives them.

Public names are resolved lazily so that registering the ``run`` command (which imports
``local.cli``) stays cheap for every ``workerfleet`` invocation, worker pods included.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workerfleet_operator.local.embedded_redis import EmbeddedRedis, EmbeddedRedisError
    from workerfleet_operator.local.fleet import ProcessFleet
    from workerfleet_operator.local.manifest import (
        LocalPool,
        ManifestError,
        build_pool,
        fetch_pool,
    )
    from workerfleet_operator.local.runner import FleetRunner, Snapshot

_EXPORTS = {
    "EmbeddedRedis": "embedded_redis",
    "EmbeddedRedisError": "embedded_redis",
    "ProcessFleet": "fleet",
    "LocalPool": "manifest",
    "ManifestError": "manifest",
    "build_pool": "manifest",
    "fetch_pool": "manifest",
    "FleetRunner": "runner",
    "Snapshot": "runner",
}

__all__ = [
    "EmbeddedRedis",
    "EmbeddedRedisError",
    "FleetRunner",
    "LocalPool",
    "ManifestError",
    "ProcessFleet",
    "Snapshot",
    "build_pool",
    "fetch_pool",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
