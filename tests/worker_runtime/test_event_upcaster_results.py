"""An upcaster that returns no data (it changed its argument in place and forgot the return)
dead-letters the event naming that upcaster; the next step never runs on an empty dict.

Real worker, real redis-server. The history is what the handler ran with and the subscription's
dead letter.
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

import pydantic

from tests.support import memory_worker
from worker_runtime import App, config, events, worker
from worker_runtime.brokers import open_broker


class OrderPlacedV3(pydantic.BaseModel):
    event_version: ClassVar[int] = 3
    total_cents: int = 0
    currency: str = "EUR"


async def test_an_upcaster_returning_nothing_dead_letters_the_event_naming_it(
    redis_server: Any,
) -> None:
    # Given a handler reading version 3, an upcaster from 1 that edits its argument but
    # returns nothing, and a tolerant upcaster from 2
    topic = f"shop{uuid.uuid4().hex[:8]}.order.placed"
    queue = events.subscription_queue(topic, "billing")
    app = App(queue=queue)
    handled: list[OrderPlacedV3] = []

    @app.upcaster(topic, from_version=1)
    def cents(data: dict[str, Any]) -> dict[str, Any]:
        data["total_cents"] = round(data.pop("total") * 100)
        return None  # type: ignore[return-value]  # the mistake under test

    @app.upcaster(topic, from_version=2)
    def currency(data: dict[str, Any]) -> dict[str, Any]:
        return {"currency": "EUR", **data}

    @app.subscribe(topic, group="billing")
    async def bill(order: OrderPlacedV3) -> None:
        handled.append(order)

    broker: Any = await open_broker(redis_server.url, queue)
    try:
        await broker.subscribe(topic, "billing")
        publisher = App(queue="publisher")
        publisher.bind_broker(broker)
        # When a version 1 event is published and a worker handles it
        published = await publisher.publish(topic, {"total": 12.5}, version=1)
        settings = config.WorkerSettings(redis_url=redis_server.url, metrics_port=0)
        w = worker.Worker(app, settings, install_signal_handlers=False)

        async def settled() -> bool:
            return bool(handled) or await broker.count_dead_letters() > 0

        await memory_worker.run_until(w, settled, "the event to be handled or dead-lettered")
        letter = await broker.show_dead_letter(published.event_id)
    finally:
        await broker.close()
    # Then the handler never ran (not with a total of 0), and the dead letter names the step
    assert handled == []
    assert letter is not None and letter.reason == "unknown_event_version"
    assert "upcaster from version 1 returned NoneType, not a dict" in letter.history[-1].message
