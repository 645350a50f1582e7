"""A replay or purge that the broker fails part-way says what it did before the failure.

Run in-process on ``memory://NAME`` (its store is shared inside one process), with the broker's
replay or purge call failing from its second call on, as when Redis goes away mid-replay.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from tests.support import memory_dead_letters
from tests.support.memory_dead_letters import store_url  # noqa: F401 (a fixture)
from worker_runtime import cli, errors
from worker_runtime.brokers import memory

pytestmark = pytest.mark.timeout(60)


def _run_with_the_second_call_failing(
    method: str, argv: Sequence[str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, Any, str]:
    """``cli.main(argv)`` with the memory broker's ``method`` working once, then raising
    BrokerUnavailable; exit code, JSON output and stderr."""
    real = getattr(memory.MemoryBroker, method)
    calls = [0]

    async def flaky(self: memory.MemoryBroker, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] > 1:
            raise errors.BrokerUnavailable(f"no connection for {method}", operation=method)
        return await real(self, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(memory.MemoryBroker, method, flaky)
        code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, json.loads(out.out), out.err


@pytest.mark.parametrize(
    ("command", "method", "count", "selection", "summary", "done"),
    [
        ("replay", "replay_dead_letters", 250, ["--all", "--rate", "1000"],
         "replayed 100 of 250 job(s) onto jobs", 100),
        ("purge", "purge_dead_letters", 2500, ["--task", "charge", "--yes"],
         "purged 1000 of 2500 dead letter(s) from jobs", 1000),
    ],
)  # fmt: skip
def test_a_replay_or_purge_cut_by_the_broker_says_what_it_did_before_and_exits_1(
    store_url: str,  # noqa: F811 (the fixture)
    capsys: pytest.CaptureFixture[str],
    command: str,
    method: str,
    count: int,
    selection: list[str],
    summary: str,
    done: int,
) -> None:
    # Given dead letters
    dead = memory_dead_letters.dead_letter_many(store_url, "jobs", count)
    # When they are replayed or purged (oldest first, 100 or 1,000 a call), and the broker
    # fails the second call
    argv = ["dlq", command, "--broker-url", store_url, "-q", "jobs", *selection, "--json"]
    code, result, err = _run_with_the_second_call_failing(method, argv, capsys)
    # Then it exits 1 saying what the first call did, and the error
    assert (code, result["replayed" if command == "replay" else "purged"]) == (
        1,
        done,
    ) and "no connection" in result["error"]
    assert f"{summary}, then: no connection" in err
    # And exactly the oldest it reported are gone from the DLQ (a replay's back on the queue)
    assert memory_dead_letters.fetch_dead_letter_ids(store_url, "jobs") == set(dead[done:])
    ready = memory_dead_letters.fetch_ready_ids(store_url, "jobs", 1000)
    assert sorted(ready) == sorted(dead[:done] if command == "replay" else [])
    if command == "replay":
        assert sorted(result["job_ids"]) == sorted(dead[:done])
