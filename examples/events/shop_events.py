"""The events example: one ``shop.order.placed`` event feeding three independent pools.

Every worker of the example runs ``shop_events:app``; the queue it serves
(``WORKERFLEET_QUEUE``, set from the pool's ``spec.queue``) decides which subscription it
works for, so the three WorkerPools in this directory share one image and one module:

- ``shop.order.placed:email``: the confirmation e-mail. Moderate work; the mail server is
  sometimes busy on a first attempt (a transient error: retried with exponential backoff).
- ``shop.order.placed:analytics``: counts the order. Very fast, and a duplicate delivery
  is skipped by the event id (``ctx.already_done``).
- ``shop.order.placed:fulfilment``: picks the order in the warehouse. Slow; the warehouse
  sometimes asks to come back later (``RetryLater``). It then enqueues a ``ship-parcel`` job on
  its own queue, and that job publishes ``shop.order.fulfilled``: with the order's event
  that is a three-level trace (``workerfleet trace <correlation id>``).

``workerfleet demo --scenario events`` runs the three pools locally and publishes orders; its
witness of what ran is the history below, not the runtime's counters: when
``SHOP_EVENTS_HISTORY_DIR`` is set, every handler that finished an event appends one JSON line
(group, event id, attempt) to a file of its own process, in one ``write`` on an ``O_APPEND``
descriptor. Production code would leave it unset.

The failure behaviour is decided by the order id (a hash), not by chance, so a run is
reproducible and a retried attempt behaves like the first one would on a healthy day.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from worker_runtime import App, Backoff, JobContext, Retry, RetryLater, events

ORDER_PLACED = "shop.order.placed"
ORDER_FULFILLED = "shop.order.fulfilled"
GROUPS = ("email", "analytics", "fulfilment")
SHIP_PARCEL = "ship-parcel"

app = App(
    queue=os.environ.get("WORKERFLEET_QUEUE", events.subscription_queue(ORDER_PLACED, "email"))
)


class OrderPlaced(BaseModel):
    """An order was placed (version 2: the total in cents; version 1 had euros as a float)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    event_version: ClassVar[int] = 2

    order_id: str = Field(min_length=1, max_length=64)
    customer: str = Field(min_length=3, max_length=254, description="e-mail address")
    items: int = Field(ge=1, le=1000)
    total_cents: int = Field(ge=0)


class OrderFulfilled(BaseModel):
    """The order left the warehouse."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    event_version: ClassVar[int] = 1

    order_id: str
    parcel_id: str


class ParcelToShip(BaseModel):
    """The ``ship-parcel`` job: hand a picked order to the carrier."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    order_id: str
    items: int


class MailServerBusy(RuntimeError):
    """The mail server refused the message for now (worth a retry)."""


@app.upcaster(ORDER_PLACED, from_version=1)
def total_in_cents(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 carried ``total`` in euros (a float); version 2 carries ``total_cents``."""
    out = {k: v for k, v in data.items() if k != "total"}
    out["total_cents"] = round(float(data.get("total", 0)) * 100)
    return out


def share_of(order_id: str, salt: str) -> float:
    """A number in [0, 1) fixed by the order id: which orders misbehave, reproducibly."""
    digest = hashlib.sha256(f"{salt}:{order_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32


@app.subscribe(
    ORDER_PLACED,
    group="email",
    retry=Retry(max_attempts=5, backoff=Backoff(base_seconds=0.3, max_seconds=3.0)),
    timeout=30,
)
async def send_confirmation(order: OrderPlaced, ctx: JobContext) -> None:
    """E-mail the customer; about one order in eight finds the mail server busy at first."""
    if await ctx.already_done():  # a redelivery after an ack whose reply was lost
        return
    await asyncio.sleep(0.15 + 0.2 * share_of(order.order_id, "mail-time"))
    if ctx.attempt == 1 and share_of(order.order_id, "mail-busy") < 0.125:
        raise MailServerBusy(f"order {order.order_id}: 421 try again later")
    ctx.logger.info("confirmation sent", extra={"order_id": order.order_id})
    ctx.mark_done_on_ack()
    record_run("email", ctx)


@app.subscribe(ORDER_PLACED, group="analytics", timeout=10)
async def count_order(order: OrderPlaced, ctx: JobContext) -> None:
    """Count the order: a few milliseconds, and a duplicate delivery counts nothing."""
    if await ctx.already_done():
        return
    await asyncio.sleep(0.005)
    ctx.mark_done_on_ack()
    record_run("analytics", ctx)


@app.subscribe(
    ORDER_PLACED,
    group="fulfilment",
    retry=Retry(max_attempts=6, backoff=Backoff(base_seconds=1.0, max_seconds=5.0)),
    timeout=60,
)
async def pick_order(order: OrderPlaced, ctx: JobContext) -> None:
    """Pick the order (slow), then hand it to shipping as a job of this pool's queue."""
    if await ctx.already_done():
        return
    if ctx.attempt == 1 and share_of(order.order_id, "warehouse-busy") < 0.05:
        raise RetryLater(1.0)  # the warehouse asked us to come back in a second
    await asyncio.sleep(1.0 + 1.0 * share_of(order.order_id, "pick-time"))
    # Inherits the event's correlation id and names the event as its cause (no arguments
    # needed); the idempotency key makes a retried pick enqueue the parcel only once.
    await app.enqueue(
        SHIP_PARCEL,
        ParcelToShip(order_id=order.order_id, items=order.items),
        idempotency_key=f"ship:{order.order_id}",
    )
    ctx.mark_done_on_ack()
    record_run("fulfilment", ctx)


@app.task(SHIP_PARCEL, timeout=30)
async def ship_parcel(parcel: ParcelToShip, ctx: JobContext) -> None:
    """Book the carrier and announce the fulfilment as an event of its own."""
    await asyncio.sleep(0.05)
    await app.publish(
        ORDER_FULFILLED,
        OrderFulfilled(order_id=parcel.order_id, parcel_id=f"parcel-{parcel.order_id}"),
        event_id=f"fulfilled-{parcel.order_id}",  # a re-run announces the same event
    )


_history_fd: int | None = None


def record_run(group: str, ctx: JobContext) -> None:
    """Append what this handler finished to ``$SHOP_EVENTS_HISTORY_DIR`` (the demo's witness)."""
    global _history_fd
    directory = os.environ.get("SHOP_EVENTS_HISTORY_DIR")
    if not directory:
        return
    if _history_fd is None:
        path = os.path.join(directory, f"runs-{os.getpid()}.jsonl")
        _history_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    event = events.current_event()
    line = {
        "group": group,
        "event": event.id if event is not None else ctx.job_id,
        "attempt": ctx.attempt,
        "pid": os.getpid(),
        "t": time.time(),
    }
    os.write(_history_fd, (json.dumps(line) + "\n").encode())
