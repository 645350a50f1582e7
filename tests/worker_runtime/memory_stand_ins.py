"""Serve a worker's brokers from a memory broker subclass that stands in for a real one.

Used by the worker tests whose broker answers as no memory broker does (a lost reply, a batch
applied in part: ``test_fate_check_at_shutdown.py``, ``test_partly_applied_batches.py``):
every broker the worker opens (its job loop's, its control thread's) and the App's producer is
one of that class, on one shared store.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from worker_runtime import brokers
from worker_runtime.brokers import base, memory


def open_brokers_as(
    monkeypatch: pytest.MonkeyPatch, broker_class: type[memory.MemoryBroker], name: str
) -> str:
    """Make ``open_broker`` return a ``broker_class`` on a fresh store; returns its URL."""
    store = f"{name}-{uuid.uuid4().hex[:8]}"

    async def open_broker(
        url: str, queue: str, *, options: base.QueueOptions | None = None, **_: Any
    ) -> base.Broker:
        return broker_class(queue, options, store=store)

    monkeypatch.setattr(brokers, "open_broker", open_broker)
    return f"memory://{store}"
