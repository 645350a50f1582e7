"""Each run of a local fleet starts its workers' logs fresh in a log directory kept across runs
(the demo's ``demo-out/worker-logs``, ``workerfleet run --log-dir``): pods are named from 0 again
in every run and their logs are opened for append, so an earlier run's lines came first."""

from __future__ import annotations

import pathlib

from workerfleet_operator.local import demo, fleet, manifest


def test_a_new_fleet_removes_its_pool_s_earlier_worker_logs_and_nothing_else(
    tmp_path: pathlib.Path,
) -> None:
    # Given the log directory an earlier run of the demo's pool left, shared with another pool
    pool = manifest.fetch_pool(demo.DEFAULT_POOL)
    logs = tmp_path / "worker-logs"
    logs.mkdir()
    for name in (f"{pool.name}-0.log", f"{pool.name}-12.log"):
        (logs / name).write_text("a line of the earlier run\n")
    kept = [f"{pool.name}-notes.log", "other-0.log", "README"]
    for name in kept:
        (logs / name).write_text("not this pool's worker log\n")
    # When this run's fleet starts
    fleet.ProcessFleet(pool, "redis://127.0.0.1:1/0", log_dir=logs)
    # Then the earlier run's worker logs are gone, and nothing else is
    assert sorted(p.name for p in logs.iterdir()) == sorted([*kept, "worker-targets.json"])
