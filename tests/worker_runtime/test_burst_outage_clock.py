"""A burst worker's outage clock restarts when the broker answers an adoption.

A burst worker whose broker calls keep failing for longer than ``lease_seconds`` gives up and
exits 1 (``Worker.note_broker_failure``). The clock starts at the first failure and only an
answered call stops it. After a fetch that lost its reply the worker adopts what it may have
leased (``FetchLoop.adopt_orphans``) and then runs those jobs without fetching; that adoption
is an answer. Without counting it, one more brief failure long after would have ended the burst
as an outage of that whole length, releasing the jobs the worker held.
"""

from __future__ import annotations

import types
from typing import Any

from worker_runtime import health
from worker_runtime.worker import core, fetching


class StandInQueue:
    """Answers an adoption with no job."""

    async def recover(self, worker_id: str, held: list[Any]) -> list[Any]:
        return []


async def test_an_answered_adoption_ends_the_outage_a_failed_fetch_began() -> None:
    # Given a burst worker whose last fetch failed without a reply (its outage clock running)
    registered_again: list[bool] = []  # a subscription's worker registers it after an outage
    w: Any = types.SimpleNamespace(
        burst=True,
        burst_failed=None,
        _failing_since=None,
        _broker_failed=False,
        _register_subscription_again=lambda: registered_again.append(True),
        last_broker_error="",
        settings=types.SimpleNamespace(lease_seconds=30.0),
        health=health.HealthState(stale_after_seconds=30.0),
        q=StandInQueue(),
        worker_id="w1",
        held={},
        runner=types.SimpleNamespace(start=lambda jobs: None),
    )
    w.note_broker_failure = types.MethodType(core.Worker.note_broker_failure, w)
    w.note_broker_ok = types.MethodType(core.Worker.note_broker_ok, w)
    w.note_broker_failure(ConnectionError("reply cut"))
    assert w._failing_since is not None
    loop = fetching.FetchLoop(w)
    loop.unsure = True
    # When the adoption that follows is answered
    assert await loop.adopt_orphans() is True
    # Then the outage is over: a later failure starts a new clock instead of ending the burst
    assert w._failing_since is None
    assert w.health.fetch_failing_since is None  # and /readyz counts the job loop answered
    assert loop.unsure is False
    assert registered_again == [True]
