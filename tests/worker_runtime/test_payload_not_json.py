"""A payload value JSON cannot carry is refused naming where it is and what it is.

A ``datetime``, ``Decimal`` or ``set`` inside a dict payload raised pydantic's "1 validation
error for JobEnvelope / payload.dict.when / input was not a valid JSON value": about the
envelope, not the caller's value, and outside the package's errors. It is now
``errors.PayloadNotJSON`` (a ``ValueError``) naming the field's path and the value's type, and
saying how to send it. Valid payloads keep the plain path (test_envelope_plain_path.py).
"""

from __future__ import annotations

import datetime
import decimal
from typing import Any

import pytest
import redis.asyncio

from worker_runtime import App, errors
from worker_runtime.brokers.redis import stats


@pytest.mark.parametrize(
    ("payload", "path", "type_name"),
    [
        ({"when": datetime.datetime(2026, 1, 2, 3, 4, 5)}, "payload.when", "datetime.datetime"),
        ({"a": {"b": [1, decimal.Decimal("1.5")]}}, "payload.a.b[1]", "decimal.Decimal"),
        ({"tags": {"x", "y"}}, "payload.tags", "set"),
        ({"pairs": [[1, 2], (3, 4)]}, "payload.pairs[1]", "tuple"),
    ],
)
async def test_a_value_json_cannot_carry_is_refused_naming_its_path_and_type(
    redis_server: Any,
    redis_client: redis.asyncio.Redis,
    queue_name: str,
    payload: dict[str, Any],
    path: str,
    type_name: str,
) -> None:
    # Given an App that registers a task taking any dict (so its payload is sent as given)
    app = App(queue=queue_name, redis_url=redis_server.url)

    @app.task("report")
    async def report(data: dict[str, Any]) -> None:
        return None

    # When a payload holding such a value is enqueued
    with pytest.raises(errors.PayloadNotJSON) as refused:
        await app.enqueue("report", payload)
    # Then the error names where the value is and what it is, and how to send it
    assert (refused.value.path, refused.value.type_name) == (path, type_name)
    message = str(refused.value)
    assert message.startswith(f"{path} holds a value of type {type_name}, ")
    assert "pydantic payload model" in message and ".isoformat()" in message
    assert isinstance(refused.value, ValueError)  # as the producer's other refusals
    # And nothing was enqueued
    assert (await stats.fetch_queue_stats(redis_client, queue_name)).backlog == 0
    await app.aclose()


def test_a_key_that_is_not_a_string_is_refused_naming_the_object_it_is_in() -> None:
    app = App(queue="q", redis_url="redis://127.0.0.1:1/0")  # refused before anything is sent
    with pytest.raises(
        errors.PayloadNotJSON, match=r"^payload\.rows\[0\] has the key 7 of type int"
    ):
        app.enqueue_sync("report", {"rows": [{7: "seven"}]})
