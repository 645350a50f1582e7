"""The operator benchmark stopped by SIGTERM stops what it started.

``bench/operator_scale.py`` starts an operator process and a redis-server (and, against the real
API server, a whole control plane). Stopped by SIGTERM, as a job runner or ``timeout`` stops it,
it used to exit at once and leave them running; they stop as they do on Ctrl-C now.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _children(pid: int) -> set[int]:
    """The live processes whose parent is ``pid``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def _is_alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _read_until(proc: subprocess.Popen[str], prefix: str, seconds: float) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:
            break  # it exited
        lines.append(line)
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"no line starting with {prefix!r} in {seconds} s: {lines[-10:]}")


def test_the_operator_bench_stopped_by_sigterm_leaves_no_operator_or_redis_running() -> None:
    # Given the operator bench creating pools against the emulator, its operator and Redis up
    bench = subprocess.Popen(
        [sys.executable, "bench/operator_scale.py", "--apiserver", "emulator", "--pools", "3000"],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _read_until(bench, "creating", 60.0)
        started = _children(bench.pid)
        assert len(started) >= 2, started  # the operator and redis-server
        # When it is sent SIGTERM
        bench.send_signal(signal.SIGTERM)
        bench.wait(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait(10)
    # Then what it started is stopped too (the operator is given up to 30 s to drain)
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline and any(_is_alive(pid) for pid in started):
        time.sleep(0.2)
    left = [pid for pid in started if _is_alive(pid)]
    for pid in left:  # the bench's own children, not to outlive a failed test either
        os.kill(pid, signal.SIGKILL)
    assert left == []
