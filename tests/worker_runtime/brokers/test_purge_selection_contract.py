"""The broker contract for what a purge deletes: exactly one selection (job ids, an age, or
everything), refused with ValueError otherwise, on every broker.

Each test takes ``contract`` (tests/worker_runtime/brokers/conftest.py), so it runs on the
memory broker, Redis, a Redis Cluster, RabbitMQ and SQS. Before, a purge given two selections
read differently on each: ids and an age deleted the ids whatever their age on Redis and the
memory broker, "everything" and an age deleted only the old ones on Redis and everything on
the memory broker, and RabbitMQ and SQS refused both.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import brokers as support
from tests.support.brokers import request


@pytest.mark.needs("dead_letter_by_id")
@pytest.mark.parametrize(
    "selection",
    [
        {"job_ids": "FIRST", "older_than_seconds": 3600.0},
        {"job_ids": "FIRST", "everything": True},
        {"older_than_seconds": 3600.0, "everything": True},
        {"job_ids": "FIRST", "older_than_seconds": 3600.0, "everything": True},
        {},
    ],
    ids=["ids+age", "ids+everything", "age+everything", "all three", "none"],
)
async def test_a_purge_given_other_than_one_selection_is_refused_and_deletes_nothing(
    contract: support.Contract, selection: dict[str, Any]
) -> None:
    # Given two dead letters from now
    broker = await contract.open()
    ids = sorted(r.job_id for r in await broker.enqueue_many([request(), request()]))
    for d in await broker.fetch("w1", 2):
        await broker.dead_letter(d, "non_retryable")
    # When a purge is given two selections at once (or none), in one call and in steps
    kwargs = {k: [ids[0]] if v == "FIRST" else v for k, v in selection.items()}
    with pytest.raises(ValueError, match="job_ids"):
        await broker.purge_dead_letters(**kwargs)
    steps = getattr(broker, "purge_dead_letters_in_steps", None)
    if steps is not None:
        with pytest.raises(ValueError, match="job_ids"):
            async for _ in steps(**kwargs):
                pass
    # Then it is refused, and both dead letters are still there
    assert sorted(d.job_id for d in await broker.list_dead_letters()) == ids
