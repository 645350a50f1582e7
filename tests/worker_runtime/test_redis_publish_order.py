"""A publish does not depend on the server ordering group names the way the client does.

``publish.lua`` checks that the caller's list of subscriptions is the registered set before it
writes. It compared them by sorting the set inside Redis, where Lua orders strings with
``strcoll`` under the server's LC_COLLATE: on a redis-server started with e.g. en_US.UTF-8,
"audit" sorts before "Billing" while the client sorted by code point, and every publish to such
a topic came back "stale" until it gave up. The groups here are handed over in an order no
collation gives (reverse code point), which is what such a server saw.
"""

from __future__ import annotations

import redis.asyncio

from worker_runtime.brokers import base
from worker_runtime.brokers.redis import keys, scripts, topics


async def test_a_publish_whose_groups_are_ordered_unlike_the_server_still_reaches_them_all(
    redis_client: redis.asyncio.Redis, queue_name: str
) -> None:
    # Given a topic with two subscriptions
    topic = f"t-{queue_name}"
    for group in ("audit", "billing"):
        await topics.apply_subscribe(redis_client, topic, group)
    # When a publish names them in an order the server would not sort them in
    request = base.PublishRequest(topic=topic, event_id="ev-1", payload={"n": 1})
    call_keys, args = topics.build_publish_call(request, ["billing", "audit"], dedup_seconds=0)
    reply = await scripts.PUBLISH(redis_client, call_keys, args)
    # Then it is applied, not refused as stale, and each subscription's queue holds the event
    assert [str(x) for x in reply] == ["ok", "1", "1"]
    for group in ("audit", "billing"):
        k = keys.build_keys(base.subscription_queue_name(topic, group))
        assert await redis_client.hexists(k.env, "ev-1")
        assert await redis_client.xlen(k.ready[1]) == 1
