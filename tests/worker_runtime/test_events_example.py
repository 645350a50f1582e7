"""The events example's flow traced end to end: ``workerfleet trace`` prints its three levels.

A real redis-server, a real worker process running examples/events/shop_events.py for the
fulfilment subscription, an order published through ``App.publish`` as the storefront does,
and the ``workerfleet trace`` command as a user runs it.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from typing import Any

from tests.support import cli
from tests.worker_runtime import workerproc
from worker_runtime import App, brokers
from worker_runtime.brokers import base

EXAMPLE = workerproc.REPO / "examples" / "events"
TOPIC = "shop.order.placed"


async def test_workerfleet_trace_prints_the_three_levels_of_one_order_of_the_example(
    redis_factory: Callable[..., Any], tmp_path: Any
) -> None:
    # Given the example's three subscriptions registered on a real redis-server of their own,
    # and one worker of the fulfilment pool running the example's app
    server = redis_factory()
    admin = await brokers.open_broker(server.url, "shop.storefront")
    assert isinstance(admin, base.Topics)
    for group in ("email", "analytics", "fulfilment"):
        await admin.subscribe(TOPIC, group)
    python_path = os.pathsep.join(
        [str(EXAMPLE), str(workerproc.REPO), str(workerproc.REPO / "operator")]
    )
    worker = workerproc.WorkerProc(
        server.url,
        f"{TOPIC}:fulfilment",
        app="shop_events:app",
        log_dir=str(tmp_path),
        extra_env={"PYTHONPATH": python_path},
    )
    try:
        # When the storefront publishes an order (at schema version 1, which the handler
        # upcasts) under a correlation id, and the fulfilment pool picks and ships it
        storefront = App(queue="shop.storefront")
        storefront.bind_broker(admin)
        order = {"order_id": "o42", "customer": "ada@example.com", "items": 2, "total": 12.5}
        published = await storefront.publish(TOPIC, order, version=1, correlation_id="order-42")
        assert published.created == ("analytics", "email", "fulfilment")
        deadline = time.monotonic() + 60
        while len(await admin.fetch_trace("order-42")) < 3:
            assert worker.alive(), worker.logs()[-3000:]
            assert time.monotonic() < deadline, worker.logs()[-3000:]
            await asyncio.sleep(0.1)
        done = await asyncio.to_thread(cli.run_cli, "trace", "order-42", redis_url=server.url)
    finally:
        worker.stop()
        await admin.close()
    # Then the trace command prints the order's event, the ship-parcel job it caused, and
    # the shop.order.fulfilled event that job published: three levels
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(
        rf"event shop\.order\.placed {published.event_id}\n"
        r"  job ship-parcel [0-9a-f]+\n"
        r"    event shop\.order\.fulfilled fulfilled-o42\n",
        done.stdout,
    ), done.stdout
