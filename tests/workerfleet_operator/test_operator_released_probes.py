"""A deleted pool's queue probe is closed, even while another pool reads through its Secret.

The operator's queue reader keeps a probe per (Secret version, queue), and a deleted pool's
probe used to be closed only with its whole Secret version: while another pool read through the
same Secret, it stayed open (on RabbitMQ a broker with its HTTP session, and an AMQP connection
once it registered a subscription; on Redis memory growing with pool churn).

The operator in a thread, the API emulator, a real rabbitmq-server; each probe the reader opens
records when it is closed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.workerfleet_operator.conftest import (
    GROUP,
    NAMESPACE,
    OperatorRunner,
    build_pool,
    build_secret,
    wait_for_condition,
    wait_until,
)
from tests.workerfleet_operator.emulator import Emulator
from tests.workerfleet_operator.test_queue_reader_rabbitmq import _url, record_probes
from tests.workerfleet_operator.test_subscription_lag_metrics import _enqueue_on_rabbitmq


def _backlog(emu: Emulator, name: str) -> int | None:
    pool = emu.get("workerpools", NAMESPACE, name, group=GROUP) or {}
    backlog: int | None = ((pool.get("status") or {}).get("queue") or {}).get("backlog")
    return backlog


def test_a_deleted_pools_probe_is_closed_while_another_pool_reads_through_its_secret(
    emulator: Emulator,
    operator: Callable[..., OperatorRunner],
    rabbitmq_server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given RabbitMQ pools "orders" and "invoices" reading their queues through one Secret
    opened, closed = record_probes(monkeypatch)
    url = _url(rabbitmq_server)
    emulator.create("secrets", build_secret("rabbit-creds", url))
    operator()
    queues = {name: f"{name}-{uuid.uuid4().hex[:8]}" for name in ("orders", "invoices")}
    for name, queue in queues.items():
        body = build_pool(name, queue=queue)
        body["spec"]["queue"] = {
            "name": queue,
            "rabbitmq": {"urlSecretRef": {"name": "rabbit-creds", "key": "url"}},
        }
        emulator.create("workerpools", body, group=GROUP)
    for name in queues:
        wait_for_condition(emulator, name, "QueueReachable", timeout=30)
    assert sorted(opened) == sorted(queues.values()) and closed == []
    # When "invoices" is deleted
    emulator.delete("workerpools", NAMESPACE, "invoices", group=GROUP)
    # Then the probe of its queue is closed, and only that one
    wait_until(
        lambda: closed == [queues["invoices"]], message="the deleted pool's probe is still open"
    )
    # And "orders" reads on through the probe it had: it sees jobs arrive, opening nothing new
    asyncio.run(_enqueue_on_rabbitmq(rabbitmq_server.url, queues["orders"], 3))
    wait_until(lambda: _backlog(emulator, "orders") == 3, timeout=30, message="no backlog")
    assert sorted(opened) == sorted(queues.values())
    assert closed == [queues["invoices"]]
