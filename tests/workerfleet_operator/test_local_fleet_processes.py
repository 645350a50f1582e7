"""ProcessFleet supervision without Redis: crash loops back off like a kubelet, and a stopped
worker takes what it forked with it."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import time

import local_fleet_support as support
import pytest
from workerfleet_operator.local import fleet, manifest


def _false() -> str:
    false = shutil.which("false")
    assert false is not None
    return false


def _fleet_running(tmp_path: pathlib.Path, name: str, command: str) -> fleet.ProcessFleet:
    """A fleet whose "worker" is ``command`` (it gets the worker's arguments and ignores them)."""
    pool = manifest.build_pool(support.build_manifest(name))
    return fleet.ProcessFleet(
        pool, "redis://127.0.0.1:1/0", log_dir=tmp_path / "logs", python=command
    )


def test_a_worker_that_keeps_crashing_is_restarted_with_a_growing_back_off(
    tmp_path: pathlib.Path,
) -> None:
    # Given a "worker" command that exits 1 at once
    procs = _fleet_running(tmp_path, "crashloop", _false())
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


def _drive(procs: fleet.ProcessFleet, pod: str, now: float) -> float:
    """Wait (really) for the pod's current process to exit, then let the fleet see it at ``now``."""
    process = procs.workers[pod].process
    assert process is not None
    process.wait(5)
    procs.reap(now)
    return now


def test_the_restart_back_off_starts_again_after_a_healthy_run(tmp_path: pathlib.Path) -> None:
    # Given a worker that has crashed three times in a row (back-off 0.5 s, 1 s, 2 s); the
    # fleet's clock is the test's, the processes are real
    procs = _fleet_running(tmp_path, "flaky", _false())
    try:
        procs.scale_to(1, (), 0.0, 0.0)
        now = 0.0
        for _ in range(3):
            now = _drive(procs, "flaky-0", now + 0.1)  # crashed
            restart_at = procs.workers["flaky-0"].restart_at
            assert restart_at is not None
            procs.reap(restart_at)  # restarted
            now = restart_at
        # When the next run lasts ten minutes (the kubelet's reset) before it crashes
        _drive(procs, "flaky-0", now + 600.0)
    finally:
        procs.stop_all(timeout=2)
    # Then the back-off starts again from its first step instead of going on to 4 s
    delays = [e.detail.rsplit("restart in ", 1)[1] for e in procs.events if e.kind == "Crashed"]
    assert delays == ["0.5s", "1s", "2s", "0.5s"]


def _alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_a_stopped_worker_takes_the_processes_it_forked_with_it(tmp_path: pathlib.Path) -> None:
    # Given a "worker" that forks a long-running child and exits 0 on SIGTERM
    child_pid_file = tmp_path / "child.pid"
    script = tmp_path / "forking-worker.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"sleep 300 &\necho $! > {child_pid_file}\n"
        "trap 'exit 0' TERM\n"
        "while :; do sleep 0.1; done\n"
    )
    script.chmod(0o755)
    procs = _fleet_running(tmp_path, "forks", str(script))
    child = 0
    try:
        procs.scale_to(1, (), 0.0, time.monotonic())
        deadline = time.monotonic() + 5
        while not child_pid_file.exists() or not child_pid_file.read_text().strip():
            assert time.monotonic() < deadline, "the worker never forked"
            time.sleep(0.02)
        child = int(child_pid_file.read_text())
        assert _alive(child)
        # When the fleet scales the pool to zero and the worker drains and exits
        procs.scale_to(0, (), 0.0, time.monotonic())
        deadline = time.monotonic() + 5
        while procs.workers and time.monotonic() < deadline:
            procs.reap(time.monotonic())
            time.sleep(0.02)
        assert not procs.workers
        assert procs.counters.stopped_cleanly == 1
        # Then its child is gone too, as when a container ends (bounded wait for the kernel)
        deadline = time.monotonic() + 3
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(child), f"the worker's child {child} outlived it"
    finally:
        if child and _alive(child):
            os.kill(child, signal.SIGKILL)
        procs.stop_all(timeout=2)


def test_a_worker_gets_the_pools_broker_url_and_never_one_left_in_the_shell(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a shell that still exports another broker URL (the worker reads
    # WORKERFLEET_BROKER_URL before WORKERFLEET_REDIS_URL), and a "worker" that records its env
    monkeypatch.setenv("WORKERFLEET_BROKER_URL", "amqp://guest:guest@127.0.0.1:1/")
    script = tmp_path / "record-env"
    script.write_text(f'#!/bin/sh\nenv > "{tmp_path}/env-$$"\n', encoding="utf-8")
    script.chmod(0o755)
    for name, block, url, wanted, unwanted in (
        ("on-redis", "redis", "redis://127.0.0.1:1/0", "WORKERFLEET_REDIS_URL", "BROKER"),
        ("on-rabbit", "rabbitmq", "amqp://127.0.0.1:2/", "WORKERFLEET_BROKER_URL", "REDIS"),
    ):
        document = support.build_manifest(name)
        document["spec"]["queue"] = {
            "name": name,
            block: {"urlSecretRef": {"name": "s", "key": "u"}},
        }
        procs = fleet.ProcessFleet(
            manifest.build_pool(document), url, log_dir=tmp_path / name, python=str(script)
        )
        # When the fleet starts one worker
        procs.scale_to(1, (), 0.0, time.monotonic())
        process = procs.workers[f"{name}-0"].process
        assert process is not None
        process.wait(5)
        procs.stop_all(timeout=2)
        # Then the worker's env names the pool's broker URL, as the operator's pod does, and
        # holds no other broker URL
        lines = (tmp_path / f"env-{process.pid}").read_text().splitlines()
        urls = {k: v for k, v in (ln.split("=", 1) for ln in lines if "_URL=" in ln)}
        assert urls.get(wanted) == url
        assert f"WORKERFLEET_{unwanted}_URL" not in urls
