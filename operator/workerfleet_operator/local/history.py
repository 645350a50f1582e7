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

A job is *completed* when a run of it succeeded, *dead-lettered* when it is in the DLQ, and
*lost* when it is neither and the queue does not still hold it (the queue's final backlog, in
flight and delayed, read after the fleet drained, is the only number taken from the broker).
"""

from __future__ import annotations

import json
import pathlib
from collections import Counter
from collections.abc import Iterable, Sequence
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
    pending: int  # still in the queue at the end, by the broker's final numbers
    lost: int
    missing: tuple[str, ...]  # ids neither completed nor dead-lettered (pending or lost)


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
    enqueued: Iterable[str], runs: Iterable[Run], dead_letters: Iterable[str], pending: int
) -> Outcome:
    """Completed, dead-lettered, retried and lost from the history (pure).

    ``pending`` (jobs the queue still holds) can only excuse missing ids, never add to them:
    ``lost`` is how many enqueued jobs are neither completed, dead-lettered nor pending.
    """
    enqueued_ids = set(enqueued)
    run_list = [r for r in runs if r.job_id in enqueued_ids]
    completed = {r.job_id for r in run_list if r.ok}
    dead = set(dead_letters) & enqueued_ids
    per_job = Counter(r.job_id for r in run_list)
    failed = {r.job_id for r in run_list if not r.ok}
    retried = sum(per_job[job] - 1 for job in failed)
    missing = sorted(enqueued_ids - completed - dead)
    return Outcome(
        enqueued=len(enqueued_ids),
        completed=len(completed),
        dead_lettered=len(dead),
        retried=retried,
        pending=pending,
        lost=max(0, len(missing) - max(0, pending)),
        missing=tuple(missing[:20]),
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
        "lost": outcome.lost,
    }
    path.write_text(json.dumps(document), encoding="utf-8")
    return path
