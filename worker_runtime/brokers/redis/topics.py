"""Topics on Redis: the subscription registry, the atomic fan-out of a publish, subscription lag
and the trace index of correlation ids.

Called by :class:`~worker_runtime.brokers.redis.broker.RedisBroker` (its ``Topics`` methods).
The keys are defined in :mod:`worker_runtime.brokers.redis.keys` (``{wft:T}:subscriptions``
and each subscription's queue keys); the fan-out is one ``publish.lua`` call, which checks
that the groups it was given are exactly the registered ones and otherwise writes nothing and
returns the current list, so a publish never misses a subscription registered meanwhile.
"""

from __future__ import annotations

import time
from typing import Any

from worker_runtime.brokers import base
from worker_runtime.brokers.redis import keys, scripts, stats

STALE_RETRIES = 20
"""Times a publish re-reads the subscriptions when they change under it before giving up."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def apply_subscribe(client: Any, topic: str, group: str) -> str:
    """Register ``group`` on ``topic`` (SADD; idempotent); returns the subscription queue."""
    name = base.subscription_queue_name(topic, group)
    await client.sadd(keys.build_topic_key(topic), group)
    return name


async def apply_unsubscribe(client: Any, topic: str, group: str) -> bool:
    """Remove ``group`` from ``topic``'s registry; False when it was not there."""
    return bool(await client.srem(keys.build_topic_key(topic), group))


async def fetch_subscriptions(client: Any, topic: str) -> list[str]:
    """The groups subscribed to ``topic``, sorted."""
    return sorted(_text(g) for g in await client.smembers(keys.build_topic_key(topic)))


def build_publish_call(
    request: base.PublishRequest, groups: list[str], *, dedup_seconds: float
) -> tuple[list[str], list[scripts.Arg]]:
    """KEYS and ARGV of ``publish.lua`` for ``groups`` (sorted as the script sorts them)."""
    now = time.time()
    call_keys = [keys.build_topic_key(request.topic)]
    envelopes: list[scripts.Arg] = []
    for group in groups:
        queue = base.subscription_queue_name(request.topic, group)
        call_keys.extend(keys.build_publish_keys(queue))
        job = base.build_subscription_envelope(request, group, now=now)
        envelopes.append(job.model_dump_json())
    args: list[scripts.Arg] = [
        request.event_id,
        int(dedup_seconds * 1000),
        len(groups),
        *groups,
        *envelopes,
    ]
    return call_keys, args


async def apply_publish(
    client: Any, request: base.PublishRequest, *, dedup_seconds: float
) -> base.PublishResult:
    """Fan the event out to every registered subscription in one script call (all or none)."""
    groups = await fetch_subscriptions(client, request.topic)
    for _ in range(STALE_RETRIES):
        call_keys, args = build_publish_call(request, groups, dedup_seconds=dedup_seconds)
        reply = await scripts.PUBLISH(client, call_keys, args)
        if _text(reply[0]) == "ok":
            flags = [int(f) for f in reply[1:]]
            created = tuple(g for g, f in zip(groups, flags, strict=True) if f)
            duplicate = tuple(g for g, f in zip(groups, flags, strict=True) if not f)
            return base.PublishResult(request.event_id, created, duplicate)
        groups = sorted(_text(g) for g in reply[1:])
    msg = f"the subscriptions of {request.topic!r} kept changing during {STALE_RETRIES} tries"
    raise RuntimeError(msg)


async def fetch_topic_lag(client: Any, topic: str) -> list[base.SubscriptionLag]:
    """Each subscription's lag from its queue's stats (one read-only round trip per group)."""
    out = []
    for group in await fetch_subscriptions(client, topic):
        queue = base.subscription_queue_name(topic, group)
        out.append(
            base.SubscriptionLag.of(topic, group, await stats.fetch_queue_stats(client, queue))
        )
    return out


async def apply_trace_entry(client: Any, correlation_id: str, entry: base.TraceEntry) -> None:
    """Append to the bounded, expiring trace list (one MULTI: push, trim, expire)."""
    key = keys.build_trace_key(correlation_id)
    pipe = client.pipeline(transaction=True)
    pipe.rpush(key, entry.encode())
    pipe.ltrim(key, -base.TRACE_KEEP, -1)
    pipe.expire(key, int(base.TRACE_TTL_SECONDS))
    await pipe.execute()


async def fetch_trace(client: Any, correlation_id: str) -> list[base.TraceEntry]:
    """The trace of ``correlation_id``, oldest first."""
    raw = await client.lrange(keys.build_trace_key(correlation_id), 0, -1)
    return [base.TraceEntry.decode(r) for r in raw]
