"""The Redis fetch's fast Job builder makes the same Job as the dataclass's own __init__."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from worker_runtime import envelope as envelope_mod
from worker_runtime.brokers.redis import queue


def test_a_job_built_from_a_fetch_reply_equals_the_one_init_builds_field_for_field() -> None:
    # Given the values of one fetched job
    env = envelope_mod.build_envelope("send-email", {"to": "a@example.com"})
    values: dict[str, Any] = {
        "id": "job-1",
        "receipt": "ab12cd34ef56:7",
        "envelope": env,
        "attempts": 2,
        "deliveries": 3,
        "lease_deadline": 1_800_000_030.5,
        "lost": 1,
        "fetched_at": 1_800_000_000.25,
    }

    # When the fetch's builder and the dataclass's __init__ each build it
    fast = queue.Job.from_reply(
        "job-1", "ab12cd34ef56:7", env, 2, 3, 1_800_000_030.5, 1, 1_800_000_000.25
    )
    slow = queue.Job(**values)

    # Then every field is set, to the same value, and the two are equal
    assert {f.name for f in dataclasses.fields(queue.Job)} == set(values)
    assert vars(fast) == values
    assert fast == slow
    assert fast.token == "ab12cd34ef56:7" and fast.leased_until == 1_800_000_030.5


def test_a_job_built_from_a_fetch_reply_is_still_frozen() -> None:
    env = envelope_mod.build_envelope("t", {})
    job = queue.Job.from_reply("j", "e:1", env, 0, 1, 1.0, 0, 0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.attempts = 5  # type: ignore[misc]
    assert job.attempts == 0
