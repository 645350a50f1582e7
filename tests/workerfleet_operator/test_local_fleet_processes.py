"""ProcessFleet supervision without Redis: crash loops back off like a kubelet."""

from __future__ import annotations

import pathlib
import shutil
import time

import local_fleet_support as support
from workerfleet_operator.local import fleet, manifest


def test_a_worker_that_keeps_crashing_is_restarted_with_a_growing_back_off(
    tmp_path: pathlib.Path,
) -> None:
    # Given a "worker" command that exits 1 at once
    false = shutil.which("false")
    assert false is not None
    pool = manifest.build_pool(support.build_manifest("crashloop"))
    procs = fleet.ProcessFleet(
        pool, "redis://127.0.0.1:1/0", log_dir=tmp_path / "logs", python=false
    )
    try:
        # When the fleet runs one replica for a few seconds
        procs.scale_to(1, (), 0.0, time.monotonic())
        deadline = time.monotonic() + 8
        while procs.counters.crashed < 4 and time.monotonic() < deadline:
            procs.reap(time.monotonic())
            time.sleep(0.02)
    finally:
        procs.stop_all(timeout=2)
    # Then every crash was seen, the pod kept its name, and the delays doubled
    crashes = [e for e in procs.events if e.kind == "Crashed"]
    assert len(crashes) >= 4
    assert {e.pod for e in crashes} == {"crashloop-0"}
    delays = [e.detail.rsplit("restart in ", 1)[1] for e in crashes[:4]]
    assert delays == ["0.5s", "1s", "2s", "4s"]
    assert procs.counters.restarted >= 3
    assert set(procs.counters.exit_codes) == {1}
