"""The queue, dlq and enqueue commands work through the broker protocols, on any broker URL.

Run in-process on ``memory://NAME`` (the memory broker's store is shared inside one process, so
the test's own broker sees what the command did): the commands open the broker with
``open_broker`` and use only ``QueueProbe``, ``DeadLetters``, ``Broker.enqueue`` and the
optional ``InFlightJobs`` / ``DeadLetterSteps``. A broker without an optional protocol gives a
one-line CapabilityMissing error naming the broker and what it lacks, or (a purge) runs without
the steps. The same commands on real Redis are tests/worker_runtime/test_cli_commands.py and
tests/workerfleet_operator/test_cli_basics.py.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import brokers as support
from worker_runtime import brokers, cli
from worker_runtime import envelope as envelope_mod
from worker_runtime.brokers import base, memory

pytestmark = pytest.mark.timeout(60)

OPEN_BROKER = brokers.open_broker
"""The real one: the test's own view of the queue, even where a test replaces it for the CLI."""


@pytest.fixture
def store_url() -> Iterator[str]:
    """A fresh in-process queue store per test."""
    yield f"memory://cli-{uuid.uuid4().hex[:8]}"
    memory.forget_stores()


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _seed(url: str, queue: str) -> dict[str, str]:
    """Dead letters of two tasks and error types, one job held by a worker, one waiting."""

    async def go() -> dict[str, str]:
        broker = await OPEN_BROKER(url, queue)
        ids: dict[str, str] = {}
        try:
            for name, task, error in (
                ("charge", "charge_card", "ValueError"),
                ("mail", "send_email", "TimeoutError"),
                ("mail2", "send_email", "TimeoutError"),
            ):
                env = envelope_mod.build_envelope(task, {"n": name})
                await broker.enqueue(base.EnqueueRequest(envelope=env))
                (d,) = await broker.fetch("w-seed", 1)
                failure = base.Failure(error, f"{name} failed", "Traceback: here", "w-seed")
                assert await broker.dead_letter(d, "max_attempts", failure=failure)
                ids[name] = d.id
            env = envelope_mod.build_envelope("resize", {"n": 1})
            await broker.enqueue(base.EnqueueRequest(envelope=env))
            (held,) = await broker.fetch("w-busy", 1)
            ids["running"] = held.id
        finally:
            await broker.close()
        return ids

    return asyncio.run(go())


def _stats(url: str, queue: str) -> base.QueueStats:
    async def go() -> base.QueueStats:
        broker = await OPEN_BROKER(url, queue)
        try:
            assert isinstance(broker, base.QueueProbe)
            return await broker.fetch_stats()
        finally:
            await broker.close()

    return asyncio.run(go())


def test_stats_jobs_and_dlq_reads_work_on_the_memory_broker_through_broker_url(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a memory queue with three dead letters and one job held by a worker
    ids = _seed(store_url, "jobs")
    flags = ["--broker-url", store_url, "-q", "jobs"]
    # When the read commands run on it
    code, out, err = _run(["queue", "stats", "--json", *flags], capsys)
    # Then each reads the broker's own records
    assert code == 0, err
    stats = json.loads(out)
    assert (stats["in_flight"], stats["dead_letter"]) == (1, 3)
    code, out, err = _run(["queue", "jobs", "--in-flight", "--json", *flags], capsys)
    assert code == 0, err
    (job,) = json.loads(out)
    assert (job["job_id"], job["task"], job["worker_id"]) == (ids["running"], "resize", "w-busy")
    # (--in-flight is the default listing: the bare command lists the same)
    code, bare_out, err = _run(["queue", "jobs", "--json", *flags], capsys)
    assert code == 0 and [j["job_id"] for j in json.loads(bare_out)] == [ids["running"]], err
    code, out, err = _run(["dlq", "ls", "--json", "--task", "send_email", *flags], capsys)
    assert code == 0, err
    assert {d["job_id"] for d in json.loads(out)} == {ids["mail"], ids["mail2"]}
    code, out, err = _run(["dlq", "summary", "--json", *flags], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["total"] == 3
    assert {(g["reason"], g["error_type"], g["count"]) for g in summary["groups"]} == {
        ("max_attempts", "TimeoutError", 2),
        ("max_attempts", "ValueError", 1),
    }
    code, out, err = _run(["dlq", "show", ids["charge"], "--json", *flags], capsys)
    assert code == 0, err
    shown = json.loads(out)
    assert shown["envelope"]["payload"] == {"n": "charge"}
    assert [f["message"] for f in shown["history"]] == ["charge failed"]


def test_replay_dry_run_replay_purge_and_enqueue_change_the_memory_queue(
    store_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    # Given three dead letters on a memory queue
    ids = _seed(store_url, "jobs")
    flags = ["--broker-url", store_url, "-q", "jobs"]
    # When a filtered replay is dry-run, then run
    code, out, err = _run(["dlq", "replay", "--error", "TimeoutError", "--dry-run", "--json",
                           *flags], capsys)  # fmt: skip
    assert code == 0, err
    assert set(json.loads(out)["job_ids"]) == {ids["mail"], ids["mail2"]}
    assert _stats(store_url, "jobs").dead_letter == 3  # the dry run changed nothing
    code, out, err = _run(["dlq", "replay", "--error", "TimeoutError", "--json", *flags], capsys)
    assert code == 0, err
    assert json.loads(out)["replayed"] == 2
    # Then the two are back in the queue and one stays dead-lettered
    after = _stats(store_url, "jobs")
    assert (after.backlog, after.dead_letter) == (2, 1)
    # And a purge of everything needs --yes, then deletes the last one
    code, _out, err = _run(["dlq", "purge", "--all", *flags], capsys)
    assert code == 2 and "--yes" in err
    code, out, err = _run(["dlq", "purge", "--all", "--yes", "--json", *flags], capsys)
    assert code == 0, err
    assert json.loads(out) == {"purged": 1}
    assert _stats(store_url, "jobs").dead_letter == 0
    # And enqueue (one job, then a file of two) lands in the same queue
    code, out, err = _run(["enqueue", "resize", '{"w": 1}', "--json", *flags], capsys)
    assert code == 0, err
    assert json.loads(out)["created"] is True
    jobs = tmp_path / "jobs.ndjson"
    jobs.write_text('{"task": "a", "payload": {}}\n{"task": "b", "payload": {}}\n')
    code, out, err = _run(["enqueue", "--file", str(jobs), "--json", *flags], capsys)
    assert code == 0, err
    assert json.loads(out)["enqueued"] == 2
    assert _stats(store_url, "jobs").backlog == 5


def test_the_environment_names_the_broker_by_its_new_or_its_old_variable(
    store_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a queue with three dead letters, named only by the environment
    _seed(store_url, "jobs")
    monkeypatch.setenv("WORKERFLEET_QUEUE", "jobs")
    monkeypatch.delenv("WORKERFLEET_REDIS_URL", raising=False)
    monkeypatch.setenv("WORKERFLEET_BROKER_URL", store_url)
    # Then WORKERFLEET_BROKER_URL finds it, and so does the older WORKERFLEET_REDIS_URL
    code, out, err = _run(["dlq", "ls", "--json"], capsys)
    assert code == 0 and len(json.loads(out)) == 3, err
    monkeypatch.delenv("WORKERFLEET_BROKER_URL")
    monkeypatch.setenv("WORKERFLEET_REDIS_URL", store_url)
    code, out, err = _run(["dlq", "ls", "--json"], capsys)
    assert code == 0 and len(json.loads(out)) == 3, err
    # And both flags at once is a usage error
    code, _out, err = _run(["dlq", "ls", "--broker-url", store_url, "--redis-url", store_url],
                           capsys)  # fmt: skip
    assert code == 2 and "not both" in err


def _seed_two_ages(url: str, queue: str, *, days_old: float) -> dict[tuple[str, str], list[str]]:
    """Dead letters of two reasons: of each two ``days_old`` days old and one from now, made
    by a broker whose clock is set back (the command's own broker reads the real clock)."""
    clock = support.FakeClock(time.time() - days_old * 86400)

    async def go() -> dict[tuple[str, str], list[str]]:
        ids: dict[tuple[str, str], list[str]] = {}
        broker = await OPEN_BROKER(url, queue, clock=clock)
        try:
            for age, count in (("old", 2), ("new", 1)):
                for reason in ("unknown_task", "max_attempts"):
                    for _ in range(count):
                        env = envelope_mod.build_envelope("send_email", {"reason": reason})
                        await broker.enqueue(base.EnqueueRequest(envelope=env))
                        (d,) = await broker.fetch("w-seed", 1)
                        failure = base.Failure("KeyError", "no such task", "Traceback", "w-seed")
                        assert await broker.dead_letter(d, reason, failure=failure)
                        ids.setdefault((reason, age), []).append(d.id)
                clock.now = time.time()
        finally:
            await broker.close()
        return ids

    return asyncio.run(go())


def test_a_filtered_purge_with_an_age_deletes_only_the_matching_dead_letters_older_than_it(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given dead letters of two reasons on the memory broker, of each two from two days ago
    # and one from now
    ids = _seed_two_ages(store_url, "jobs", days_old=2)
    flags = ["--broker-url", store_url, "-q", "jobs"]
    code, out, err = _run(["dlq", "ls", "--json", *flags], capsys)
    assert code == 0, err
    before = json.loads(out)
    assert len(before) == 6
    # When the unknown_task ones older than a day are purged
    argv = ["dlq", "purge", "--reason", "unknown_task", "--older-than", "1d", "--yes", "--json"]
    code, out, err = _run([*argv, *flags], capsys)
    # Then exactly the two old unknown_task ones were deleted
    assert code == 0, err
    assert json.loads(out) == {"purged": 2}
    # And every other dead letter is still listed as before, with its full record
    code, out, err = _run(["dlq", "ls", "--json", *flags], capsys)
    assert code == 0, err
    gone = set(ids[("unknown_task", "old")])
    assert json.loads(out) == [d for d in before if d["job_id"] not in gone]
    # And a --since newer than the age can match nothing: refused, saying why
    argv = ["dlq", "purge", "--reason", "max_attempts", "--since", "3h", "--older-than", "1d"]
    code, out, err = _run([*argv, "--yes", *flags], capsys)
    assert (code, out) == (2, "")
    assert err.startswith("workerfleet: --since (3h) is after --older-than (1.0d): nothing")


def _listed(flags: list[str], capsys: pytest.CaptureFixture[str]) -> list[Any]:
    code, out, err = _run(["dlq", "ls", "--json", *flags], capsys)
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["--all", "--older-than", "1h"], "--all deletes every dead letter: pass it alone"),
        (["--all", "--reason", "max_attempts"], "--all deletes every dead letter: pass it alone"),
        (["--all", "JOB"], "--all deletes every dead letter: pass it alone"),
        (["JOB", "--older-than", "1h"], "name job ids or select with --older-than, not both"),
    ],
    ids=["all+age", "all+filter", "all+ids", "ids+age"],
)
def test_a_purge_told_what_to_delete_two_ways_is_refused_and_deletes_nothing(
    store_url: str, capsys: pytest.CaptureFixture[str], argv: list[str], why: str
) -> None:
    # Given three dead letters
    ids = _seed(store_url, "jobs")
    flags = ["--broker-url", store_url, "-q", "jobs"]
    before = _listed(flags, capsys)
    # When a confirmed purge selects with --all and something else, or with ids and an age
    argv = [ids["charge"] if a == "JOB" else a for a in argv]
    code, out, err = _run(["dlq", "purge", *argv, "--yes", *flags], capsys)
    # Then it is a usage error in one line, and every dead letter is still there
    assert (code, out) == (2, ""), err
    assert err.startswith(f"workerfleet: {why}") and err.count("\n") == 1, err
    assert _listed(flags, capsys) == before


def test_a_purge_by_age_asks_for_yes_and_deletes_nothing_without_it(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given three dead letters
    _seed(store_url, "jobs")
    flags = ["--broker-url", store_url, "-q", "jobs"]
    before = _listed(flags, capsys)
    # When every dead letter older than 0 s (all of them) is purged without --yes
    code, out, err = _run(["dlq", "purge", "--older-than", "0", *flags], capsys)
    # Then it asks for --yes, as --all does, and nothing is deleted
    assert (code, out) == (2, "")
    assert (
        err == "workerfleet: this deletes every dead letter older than 0.0s: add --yes to confirm\n"
    )
    assert _listed(flags, capsys) == before
    # And with --yes it deletes them
    code, out, err = _run(["dlq", "purge", "--older-than", "0", "--yes", "--json", *flags], capsys)
    assert (code, json.loads(out)) == (0, {"purged": 3}), err
    assert _listed(flags, capsys) == []


class _BareBroker:
    """A broker with the core protocols only (no InFlightJobs, no DeadLetterSteps), as a
    backend that has not implemented the extras is: every call goes to a memory broker."""

    def __init__(self, inner: Any, purge_calls: list[dict[str, Any]]) -> None:
        self._inner = inner
        self.queue = inner.queue
        self.purge_calls = purge_calls

    async def fetch_stats(self) -> base.QueueStats:
        return await self._inner.fetch_stats()  # type: ignore[no-any-return]

    async def count_dead_letters(self) -> int:
        return await self._inner.count_dead_letters()  # type: ignore[no-any-return]

    async def list_dead_letters(self, *, offset: int = 0, limit: int = 50) -> list[Any]:
        return await self._inner.list_dead_letters(offset=offset, limit=limit)  # type: ignore[no-any-return]

    async def show_dead_letter(self, job_id: str) -> Any:
        return await self._inner.show_dead_letter(job_id)

    async def replay_dead_letters(self, **kwargs: Any) -> list[str]:
        return await self._inner.replay_dead_letters(**kwargs)  # type: ignore[no-any-return]

    async def purge_dead_letters(self, **kwargs: Any) -> int:
        self.purge_calls.append(kwargs)
        return await self._inner.purge_dead_letters(**kwargs)  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self._inner.close()


@pytest.fixture
def bare(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """Every broker the commands open is a _BareBroker around the real memory broker."""
    calls: list[dict[str, Any]] = []

    async def open_bare(url: str, queue: str, **kwargs: Any) -> Any:
        return _BareBroker(await OPEN_BROKER(url, queue, **kwargs), calls)

    monkeypatch.setattr(brokers, "open_broker", open_bare)
    yield calls


def test_a_broker_without_an_in_flight_listing_says_so_naming_the_broker_and_the_capability(
    store_url: str, capsys: pytest.CaptureFixture[str], bare: list[dict[str, Any]]
) -> None:
    # Given a broker that cannot list its in-flight jobs
    _seed(store_url, "jobs")
    # When queue jobs --in-flight runs on it
    code, out, err = _run(["queue", "jobs", "--in-flight", "--broker-url", store_url,
                           "-q", "jobs"], capsys)  # fmt: skip
    # Then it fails in one line naming the broker and what it lacks (no traceback)
    assert code == 2 and out == ""
    assert err.strip() == (
        "workerfleet: the memory broker cannot list the jobs in flight "
        "(it does not implement InFlightJobs)"
    )
    # And the commands it can serve still work on it
    code, out, err = _run(["queue", "stats", "--json", "--broker-url", store_url, "-q", "jobs"],
                          capsys)  # fmt: skip
    assert code == 0 and json.loads(out)["dead_letter"] == 3, err


def test_a_broker_without_purge_steps_purges_by_age_in_one_call_and_counts_what_it_will_delete(
    store_url: str, capsys: pytest.CaptureFixture[str], bare: list[dict[str, Any]]
) -> None:
    # Given three dead letters on a broker without DeadLetterSteps
    _seed(store_url, "jobs")
    flags = ["--broker-url", store_url, "-q", "jobs"]
    # When a purge by age that spares them runs (an age written as --since takes it), then
    # one that covers them
    code, out, err = _run(["dlq", "purge", "--older-than", "1h", "--yes", *flags], capsys)
    assert code == 0, err
    assert "purging 0 dead letter(s)" in err and "purged 0 dead letter(s)" in out
    code, out, err = _run(["dlq", "purge", "--older-than", "0", "--yes", *flags], capsys)
    # Then the count (read from its list) is the number deleted, in one purge call
    assert code == 0, err
    assert "purging 3 dead letter(s)" in err and "purged 3 dead letter(s)" in out
    assert [c.get("older_than_seconds") for c in bare] == [3600.0, 0.0]
    assert _stats(store_url, "jobs").dead_letter == 0


def test_a_broker_that_refuses_a_purge_as_invalid_says_so_in_one_line_and_exits_2(
    store_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a broker whose purge refuses its arguments with ValueError (as RabbitMQ's and
    # SQS's refuse more than one selection)
    _seed(store_url, "jobs")

    class Refusing(_BareBroker):
        async def purge_dead_letters(self, **kwargs: Any) -> int:
            self.purge_calls.append(kwargs)
            raise ValueError("purge by job_ids, by older_than_seconds or everything: exactly one")

    calls: list[dict[str, Any]] = []

    async def open_refusing(url: str, queue: str, **kwargs: Any) -> Any:
        return Refusing(await OPEN_BROKER(url, queue, **kwargs), calls)

    monkeypatch.setattr(brokers, "open_broker", open_refusing)
    # When a purge reaches it
    code, out, err = _run(["dlq", "purge", "--all", "--yes", "--broker-url", store_url,
                           "-q", "jobs"], capsys)  # fmt: skip
    # Then the refusal is one line naming the broker, exit 2 (a usage error), no traceback
    assert calls == [{"everything": True}]
    assert (code, out) == (2, "")
    assert err.endswith(
        "\nworkerfleet: the memory broker refused the request: "
        "purge by job_ids, by older_than_seconds or everything: exactly one\n"
    )
    assert "Traceback" not in err
    assert _stats(store_url, "jobs").dead_letter == 3


def test_a_broker_with_no_dead_letter_queue_at_all_is_one_line_naming_it(
    store_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a broker that implements no DeadLetters protocol
    class StatsOnly:
        async def fetch_stats(self) -> None:
            raise AssertionError("not called")

        async def close(self) -> None:
            pass

    async def open_stats_only(url: str, queue: str, **kwargs: Any) -> Any:
        return StatsOnly()

    monkeypatch.setattr(brokers, "open_broker", open_stats_only)
    # When dlq ls runs on it
    code, _out, err = _run(["dlq", "ls", "--broker-url", store_url, "-q", "jobs"], capsys)
    # Then one line names the broker and the missing protocol
    assert code == 2
    assert "the memory broker cannot read or change its dead letters" in err
    assert "DeadLetters" in err and "Traceback" not in err


def test_an_unknown_scheme_is_one_line_listing_the_schemes_served(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _out, err = _run(["queue", "stats", "--broker-url", "kafka://h:1", "-q", "q"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "amqp://" in err and "sqs://" in err and "redis://" in err


def test_queue_ls_on_the_memory_broker_lists_its_store_s_queues(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a store whose queue "jobs" holds jobs (the seed), and nothing else
    _seed(store_url, "jobs")
    # When its queues are listed
    code, out, err = _run(["queue", "ls", "--json", "--broker-url", store_url], capsys)
    # Then "jobs" is the one, with its dead letters
    assert code == 0, err
    [listed] = json.loads(out)
    assert (listed["queue"], listed["dead_letter"]) == ("jobs", 3)
