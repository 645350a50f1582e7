"""The key schema: one hash tag per queue, safe queue names."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from worker_runtime.brokers.redis import keys


def test_every_key_of_a_queue_shares_its_hash_tag_and_slot() -> None:
    k = keys.build_keys("emails")
    names = [*k.script_keys(), k.idempotency("x"), k.done("y")]
    assert all(n.startswith("{wf:emails}:") for n in names)
    assert len({key_slot(n.encode()) for n in names}) == 1
    assert len(set(names)) == len(names)


def test_two_queues_never_share_a_key() -> None:
    a, b = keys.build_keys("a"), keys.build_keys("b")
    assert not set(a.script_keys()) & set(b.script_keys())


@pytest.mark.parametrize("name", ["", "a}b", "{x}", "a b", "x" * 129, "-lead", "a\nb"])
def test_queue_names_that_would_break_the_schema_are_refused(name: str) -> None:
    with pytest.raises(keys.InvalidQueueName):
        keys.build_keys(name)


def test_the_priorities_are_fetched_most_urgent_first() -> None:
    assert keys.PRIORITIES == ("high", "normal", "low")
    assert keys.build_keys("q").ready[0].endswith(":ready:high")
