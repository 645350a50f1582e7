"""The demo's history: the jobs it enqueued, the runs its tasks recorded, the DLQ it read.

Called by :mod:`workerfleet_operator.local.demo` at the end of a run, on every broker. The demo
judges ``lost`` from this history, never from the queue's counters: RabbitMQ keeps no completed
or dead-lettered totals and its numbers, like SQS's, are samples (docs/brokers.md), and a count
the code under test keeps itself proves nothing about it anyway.

- enqueued: the ids the broker answered for (publisher confirms on RabbitMQ), kept by the load
  generator;
- runs: one receipt per handler run, written by the demo's task (examples/demo_tasks.py) with a
  single ``write`` on an ``O_APPEND`` file of its process in ``$DEMO_RECEIPTS_DIR``;
- dead letters: the job ids read from the DLQ itself (``DeadLetters.list_dead_letters``).

A job is *completed* when a run of it succeeded, *dead-lettered* when it is in the DLQ, *pending*
when the broker still holds it (ready, delayed or in flight), read by its id after the fleet
drained, and *lost* when it is none of these. No count excuses a missing id: a re-sent batch's
jobs, RabbitMQ's and SQS's approximate numbers or any other job in the queue would make up for a
job that is gone. A broker that cannot list the ids it holds (RabbitMQ, SQS: reading a message
takes it) leaves its missing ids *unchecked*, and the summary says so.
"""

from __future__ import annotations

import json
import pathlib
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

RECEIPTS_ENV = "DEMO_RECEIPTS_DIR"
"""The environment variable naming the directory the demo's task writes its receipts to."""


@dataclass(frozen=True)
class Run:
    """One handler run of a job, as its receipt recorded it."""

    job_id: str
    attempt: int
    ok: bool


@dataclass(frozen=True)
class Outcome:
    """What the history says happened to the enqueued jobs."""

    enqueued: int
    completed: int
    dead_lettered: int
    retried: int  # runs after a failed run of the same job
    pending: int  # missing ids the broker still holds; its own count when it cannot list them
    lost: int  # missing ids the broker does not hold
    missing: tuple[str, ...]  # some of the lost ids (of the unchecked ones when not checked)
    checked: bool = True  # the broker listed the ids it holds
    unchecked: int = 0  # missing ids not checked: the broker cannot list the ids it holds
    held: tuple[str, ...] = ()  # the missing ids the broker still holds, all of them


def read_runs(directory: pathlib.Path) -> list[Run]:
    """Every receipt in ``directory`` (a torn last line of a killed process is skipped)."""
    runs: list[Run] = []
    for path in sorted(directory.glob("receipts-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                runs.append(Run(str(entry["job_id"]), int(entry["attempt"]), bool(entry["ok"])))
            except (ValueError, KeyError, TypeError):
                continue
    return runs


def judge_history(
    enqueued: Iterable[str],
    runs: Iterable[Run],
    dead_letters: Iterable[str],
    held: Collection[str] | None,
    *,
    held_count: int = 0,
) -> Outcome:
    """Completed, dead-lettered, retried, pending and lost from the history (pure).

    ``held`` is the ids the broker still holds (ready, delayed, in flight), or None when it
    cannot list them; only those ids excuse a missing job. ``held_count`` (the broker's own
    count) is reported as ``pending`` when the ids are not known, and excuses nothing.
    """
    enqueued_ids = set(enqueued)
    run_list = [r for r in runs if r.job_id in enqueued_ids]
    completed = {r.job_id for r in run_list if r.ok}
    dead = set(dead_letters) & enqueued_ids
    per_job = Counter(r.job_id for r in run_list)
    failed = {r.job_id for r in run_list if not r.ok}
    retried = sum(per_job[job] - 1 for job in failed)
    missing = enqueued_ids - completed - dead
    if held is None:
        still_held: set[str] = set()
        lost: list[str] = []
        shown = sorted(missing)
    else:
        still_held = missing & set(held)
        lost = sorted(missing - still_held)
        shown = lost
    return Outcome(
        enqueued=len(enqueued_ids),
        completed=len(completed),
        dead_lettered=len(dead),
        retried=retried,
        pending=held_count if held is None else len(still_held),
        lost=len(lost),
        missing=tuple(shown[:20]),
        checked=held is not None,
        unchecked=len(missing) if held is None else 0,
        held=tuple(sorted(still_held)),
    )


def write_history(
    path: pathlib.Path,
    enqueued: Sequence[str],
    receipts: pathlib.Path,
    dead_letters: Iterable[str],
    outcome: Outcome,
) -> pathlib.Path:
    """Keep the history behind the demo's counts (``history.json`` in its output directory), so
    that anyone, a test among them, can judge it again without the demo's own arithmetic."""
    runs = read_runs(receipts)
    document = {
        "enqueued": list(enqueued),
        "runs": [{"job_id": r.job_id, "attempt": r.attempt, "ok": r.ok} for r in runs],
        "dead_lettered": sorted(dead_letters),
        "pending": outcome.pending,
        # the ids that excused missing jobs (null: the broker cannot list them, none did)
        "held": list(outcome.held) if outcome.checked else None,
        "lost": outcome.lost,
        "unchecked": outcome.unchecked,
    }
    path.write_text(json.dumps(document), encoding="utf-8")
    return path
