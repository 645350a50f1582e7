"""The fault suite (``make chaos``): Redis and worker processes under faults, judged by history.

Each scenario runs its own redis-server and worker fleet (tests/chaos/harness.py), enqueues a
mix of jobs (quick, transiently failing, poison; half of them leave an ack marker) while it
injects one kind of fault, waits until every job has ended, and hands the recorded history to
the checker (tests/chaos/history.py). Every scenario must show lost=0, wrongly_dead=0, no
phantom, no double ack, and duplicates that its faults explain within their bound. The table
and the ``chaos: ...`` line are printed at the end (tests/chaos/conftest.py).

Sizes: ``CHAOS_JOBS`` (default 6,000) is shared among the scenarios by weight.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.chaos import harness, history

pytestmark = pytest.mark.chaos

TOTAL_JOBS = int(os.environ.get("CHAOS_JOBS", "6000"))


def _jobs(share: float) -> int:
    return max(100, int(TOTAL_JOBS * share))


def run_scenario(
    config: harness.Config,
    redis_factory: Callable[..., Any],
    tmp_path: Path,
    faults: Callable[[harness.Bed], None],
) -> tuple[harness.Bed, history.Verdict]:
    """Run one scenario to its end, record its row, and assert every promise held."""
    server = redis_factory(**config.redis_config)
    bed = harness.Bed(config, server, tmp_path)
    try:
        bed.start()
        bed.run_until_settled(faults)
        bed.stop_workers()
        verdict = bed.verdict()
        timeline = bed.describe_jobs(verdict) if verdict.violations else ""
    finally:
        bed.close()
    bed.record_row(verdict)
    print(f"\n{config.name}: {verdict.describe()} kills={bed.kills} faults={len(bed.faults)}")
    assert verdict.violations == 0, f"{verdict.describe()}\n{timeline}"
    assert verdict.enqueued > 0 and verdict.completed > 0
    return bed, verdict


def _every(bed: harness.Bed, seconds: float, act: Callable[[int], None], most: int) -> int:
    """Call ``act(i)`` every ``seconds`` while the scenario is busy, at most ``most`` times."""
    done = 0
    while done < most and bed.busy():
        time.sleep(seconds)
        act(done)
        done += 1
    return done


# ---- worker faults ---------------------------------------------------------------------------


def test_worker_kill_9_every_second_and_a_half(
    redis_factory: Callable[..., Any], tmp_path: Path
) -> None:
    # Given three workers (concurrency 8) and a stream of quick, failing and poison jobs
    config = harness.Config("worker-kill-9", jobs=_jobs(0.25), enqueue_seconds=8.0)

    # When a random worker is SIGKILLed every 1.5 s (and replaced) while they run
    def faults(bed: harness.Bed) -> None:
        _every(bed, 1.5, lambda _: bed.kill_worker(bed.rng.choice(bed.slots)), 40)

    # Then nothing is lost or wrongly dead, and each re-run is explained by a kill
    bed, _ = run_scenario(config, redis_factory, tmp_path, faults)
    assert bed.kills >= 3


def test_worker_sigstop_past_its_lease_with_free_slots(
    redis_factory: Callable[..., Any], tmp_path: Path
) -> None:
    # Given two workers of 8 slots running slow jobs at a rate that keeps slots free
    config = harness.Config(
        "worker-sigstop-free-slots",
        jobs=_jobs(0.05),
        workers=2,
        lease_seconds=1.5,
        work_ms=(100.0, 600.0),
        enqueue_seconds=10.0,
        enqueue_batch=5,
    )

    # When one of them is SIGSTOPped for twice its lease, then continued, again and again
    def faults(bed: harness.Bed) -> None:
        _every(bed, 1.0, lambda i: bed.stop_worker(bed.slots[i % 2], 3.0), 4)

    # Then its jobs ran elsewhere; its own late results were discarded (no double ack)
    run_scenario(config, redis_factory, tmp_path, faults)


def test_sigterm_drains_mixed_with_kills(redis_factory: Callable[..., Any], tmp_path: Path) -> None:
    # Given three workers with a short drain budget and jobs of up to 1.2 s
    config = harness.Config(
        "drains-and-kills",
        jobs=_jobs(0.1),
        work_ms=(10.0, 1200.0),
        drain_timeout=2.0,
        enqueue_seconds=8.0,
    )

    # When workers are drained with SIGTERM (unfinished jobs released) and killed in turn
    def faults(bed: harness.Bed) -> None:
        def act(i: int) -> None:
            slot = bed.slots[i % len(bed.slots)]
            (bed.drain_worker if i % 2 == 0 else bed.kill_worker)(slot)

        _every(bed, 1.0, act, 12)

    # Then released and killed jobs ran again, within the bound, and nothing was lost
    run_scenario(config, redis_factory, tmp_path, faults)


# ---- Redis faults ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fsync", "loses_writes"), [("always", False), ("everysec", True)], ids=["always", "everysec"]
)
def test_redis_kill_9_and_restart_on_its_aof(
    fsync: str, loses_writes: bool, redis_factory: Callable[..., Any], tmp_path: Path
) -> None:
    # Given Redis with an append-only file (fsync always / every second) under a steady load
    config = harness.Config(
        f"redis-kill-9-aof-{fsync}",
        jobs=_jobs(0.08),
        enqueue_seconds=8.0,
        redis_config={"appendonly": "yes", "appendfsync": fsync},
    )

    # When Redis is SIGKILLed twice while jobs are enqueued and run, and restarted on its AOF
    def faults(bed: harness.Bed) -> None:
        _every(bed, 2.5, lambda _: bed.kill_redis(down_seconds=0.5, loses_writes=loses_writes), 2)

    # Then with fsync always no acknowledged write is lost; with everysec any loss is
    # reported apart and lies inside the fsync window before a kill (checked by the history)
    _, verdict = run_scenario(config, redis_factory, tmp_path, faults)
    if not loses_writes:
        assert verdict.writes_lost_to_fault == 0


@pytest.mark.parametrize("how", ["sigstop"])
def test_redis_stalled_longer_than_the_lease_under_long_jobs(
    how: str, redis_factory: Callable[..., Any], tmp_path: Path
) -> None:
    # Given three workers holding jobs that outlast the lease (renewals keep them alive)
    config = harness.Config(
        f"redis-{how.replace('_', '-')}",
        jobs=_jobs(0.03),
        lease_seconds=1.5,
        work_ms=(1000.0, 2500.0),
        enqueue_seconds=6.0,
        enqueue_batch=10,
    )

    # When Redis stalls for twice the lease (every lease looks expired when it resumes)
    def faults(bed: harness.Bed) -> None:
        _every(bed, 2.0, lambda _: bed.pause_redis(3.0, how=how), 2)

    # Then every job ends once, re-runs are within the fleet's held jobs, none is lost
    run_scenario(config, redis_factory, tmp_path, faults)
