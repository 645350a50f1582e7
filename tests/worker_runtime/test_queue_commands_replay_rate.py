"""``dlq replay --rate`` replays at the rate asked for, above 100 jobs a second too.

Run in-process on ``memory://NAME`` (the memory broker's store is shared inside one process).
The rate is the command's own pacing between broker calls (an interruptible wait on the event
loop's clock), so the test bounds the wall time of a whole replay, with a wide margin on each
side: a replay capped at 100 jobs a second takes five times as long as the one asked for.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.support import memory_dead_letters
from tests.support.memory_dead_letters import store_url  # noqa: F401 (a fixture)
from worker_runtime import cli

pytestmark = pytest.mark.timeout(60)


def test_a_replay_at_500_per_second_takes_about_a_second_for_500_dead_letters(
    store_url: str,  # noqa: F811 (the fixture)
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given 500 dead letters
    dead = memory_dead_letters.dead_letter_many(store_url, "jobs", 500)
    # When all are replayed at 500 a second
    started = time.monotonic()
    code = cli.main(
        ["dlq", "replay", "--broker-url", store_url, "-q", "jobs", "--all", "--rate", "500",
         "--json"]
    )  # fmt: skip
    took = time.monotonic() - started
    # Then each of them is back on the queue once, in about a second (at 100 a second, the
    # cap it had, five)
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert sorted(result["job_ids"]) == sorted(dead)
    assert sorted(memory_dead_letters.fetch_ready_ids(store_url, "jobs", 1000)) == sorted(dead)
    assert 0.7 <= took < 3.0, took
