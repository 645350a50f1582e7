"""``workerfleet run`` as a user runs it, and the embedded redis-server it starts."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import local_fleet_support as support
import pytest
import redis
from workerfleet_operator.local import embedded_redis

from tests.workerfleet_operator.conftest import wait_until
from worker_runtime import producer

pytestmark = pytest.mark.slow


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _run_cli(args: list[str], cwd: pathlib.Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(pathlib.Path(sys.executable).parent / "workerfleet"), "run", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


class Output:
    """Collects a process's output on a thread, so the test can wait for a line (bounded)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(process,), daemon=True)
        self._thread.start()

    def _pump(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.text)
            if match:
                return match
            time.sleep(0.05)
        pytest.fail(f"no {pattern!r} in output within {timeout}s:\n{self.text}")


def test_workerfleet_run_with_no_reachable_redis_embeds_one_and_ctrl_c_drains_cleanly(
    tmp_path: pathlib.Path,
) -> None:
    # Given a pool that keeps one worker, and a Redis URL nobody listens on
    manifest_path = support.write_manifest(tmp_path, support.build_manifest("cli", minReplicas=1))
    env = dict(
        os.environ, WORKERFLEET_REDIS_URL=f"redis://127.0.0.1:{embedded_redis.fetch_free_port()}/0"
    )
    process = _run_cli(
        [
            str(manifest_path),
            "--no-view",
            "--metrics-port",
            "0",
            "--app-path",
            str(support.HERE),
            "--poll-interval",
            "0.5",
            "--log-dir",
            str(tmp_path / "logs"),
        ],
        tmp_path,
        env,
    )
    output = Output(process)
    try:
        # When it starts, it embeds a redis-server and scales to the minimum
        port = int(output.wait_for(r"embedded 127\.0\.0\.1:(\d+)", 20).group(1))
        output.wait_for(r"ScaledUp 0→1", 20)
        client = redis.Redis(port=port)
        wait_until(
            lambda: client.config_get("appendonly").get("appendonly") == "yes",
            timeout=5,
            message="AOF on",
        )
        wait_until(
            lambda: client.keys("*cli*"), timeout=20, message="the worker registered in Redis"
        )
        client.close()
        # And Ctrl-C arrives
        process.send_signal(signal.SIGINT)
        output.wait_for(r"stopped; workers .*killed=\d+", 40)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    # Then the worker drained and exited 0, nothing was killed, and Redis is gone
    assert "started=1 stopped_cleanly=1 crashed=0 killed=0" in output.text
    assert not _port_open(port)


def test_workerfleet_run_uses_a_reachable_redis_url_as_given(tmp_path: pathlib.Path) -> None:
    with embedded_redis.EmbeddedRedis(tmp_path / "given") as server:
        manifest_path = support.write_manifest(tmp_path, support.build_manifest("given"))
        process = _run_cli(
            [
                str(manifest_path),
                "--redis-url",
                server.url,
                "--no-view",
                "--metrics-port",
                "-1",
                "--seconds",
                "2",
                "--app-path",
                str(support.HERE),
            ],
            tmp_path,
            dict(os.environ),
        )
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0, output
        assert "redis given URL" in output
        assert "metrics off" in output
        assert "Steady at 0" in output


def test_workerfleet_run_refuses_a_broker_url_flag_nobody_answers_at(
    tmp_path: pathlib.Path,
) -> None:
    # Given a pool and a --redis-url nobody listens on (the environment's URL may fall back
    # to an embedded server; a URL given as a flag is where the user's jobs are)
    manifest_path = support.write_manifest(tmp_path, support.build_manifest("flag"))
    url = f"redis://127.0.0.1:{embedded_redis.fetch_free_port()}/0"
    process = _run_cli(
        [str(manifest_path), "--redis-url", url, "--no-view", "--metrics-port", "-1",
         "--seconds", "2", "--app-path", str(support.HERE)],
        tmp_path,
        dict(os.environ),
    )  # fmt: skip
    output, _ = process.communicate(timeout=60)
    # Then it stops with one line saying so and how to run on an embedded server instead,
    # rather than running a fleet that would never see those jobs
    assert process.returncode == 1, output
    assert "the broker --redis-url names is not usable" in output
    assert "drop --redis-url to run on an embedded redis-server" in output
    assert "embedded 127.0.0.1" not in output


def test_workerfleet_run_says_why_a_worker_crashed_as_it_happens(tmp_path: pathlib.Path) -> None:
    # Given a pool whose App module does not exist, with a job waiting so a worker starts
    with embedded_redis.EmbeddedRedis(tmp_path / "given") as server:
        document = support.build_manifest("crashing")
        document["spec"]["app"] = "no_such_module:app"
        manifest_path = support.write_manifest(tmp_path, document)
        client = redis.Redis.from_url(server.url)
        producer.SyncProducer(client, "crashing").enqueue("t", {})
        client.close()
        # When it runs with plain output
        process = _run_cli(
            [str(manifest_path), "--redis-url", server.url, "--no-view", "--metrics-port",
             "-1", "--seconds", "4"],
            tmp_path,
            dict(os.environ),
        )  # fmt: skip
        output, _ = process.communicate(timeout=60)
    # Then each crash is a line of its own with the worker's last words (only the final
    # count said anything before: "crashed=4"), and the run exits 1 (it exited 0)
    assert process.returncode == 1, output
    assert "the workers' logs are in" in output
    crashes = [line for line in output.splitlines() if "crashing-0 Crashed: exit code 2" in line]
    assert crashes, output
    assert all("cannot import 'no_such_module'" in line for line in crashes), crashes
    assert all("--app-path DIR" in line for line in crashes), crashes  # the fix, under run
    assert "crashing-0 Restarted: restart 1" in output


def test_workerfleet_run_refuses_an_invalid_manifest_with_exit_code_2(
    tmp_path: pathlib.Path,
) -> None:
    document = support.build_manifest("bad", minReplicas=4, maxReplicas=2)
    process = _run_cli(
        [str(support.write_manifest(tmp_path, document))], tmp_path, dict(os.environ)
    )
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "minReplicas must not exceed maxReplicas" in output


def test_workerfleet_run_says_how_to_fix_a_metrics_port_in_use(tmp_path: pathlib.Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        manifest_path = support.write_manifest(tmp_path, support.build_manifest("busyport"))
        process = _run_cli(
            [str(manifest_path), "--metrics-port", str(port), "--no-view", "--seconds", "1"],
            tmp_path,
            dict(os.environ),
        )
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 1, output
    assert f"cannot serve metrics on 127.0.0.1:{port}" in output
    assert "--metrics-port 0" in output


def test_the_embedded_redis_keeps_accepted_jobs_across_a_restart_in_a_given_directory(
    tmp_path: pathlib.Path,
) -> None:
    data = tmp_path / "data"
    with embedded_redis.EmbeddedRedis(data) as first:
        client = redis.Redis.from_url(first.url)
        client.rpush("k", "accepted")
        client.close()
    assert (data / "appendonlydir").is_dir() or list(data.glob("*.aof*"))
    with embedded_redis.EmbeddedRedis(data) as second:
        client = redis.Redis.from_url(second.url)
        assert client.lrange("k", 0, -1) == [b"accepted"]
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        client.close()


def test_a_temporary_embedded_redis_removes_its_directory_on_stop() -> None:
    server = embedded_redis.EmbeddedRedis().start()
    directory, port = server.data_dir, server.port
    server.stop()
    assert not directory.exists()
    assert not _port_open(port)


def test_a_missing_redis_server_binary_is_reported_with_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(embedded_redis.EmbeddedRedisError, match="make deps"):
        embedded_redis.EmbeddedRedis().start()


def _worker_pids_in(app_dir: pathlib.Path) -> set[int]:
    """PIDs of worker processes whose working directory is ``app_dir`` (the fleet's app path)."""
    pids: set[int] = set()
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if b"worker_runtime\x00worker" in cmdline and cwd == str(app_dir):
            pids.add(int(entry.name))
    return pids


def test_a_killed_workerfleet_run_takes_its_workers_and_embedded_redis_with_it(
    tmp_path: pathlib.Path,
) -> None:
    # Given `workerfleet run` with an embedded Redis and two workers, started from a private
    # copy of the task module so its workers can be told apart from any other
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "local_fleet_tasks.py").write_bytes(
        (support.HERE / "local_fleet_tasks.py").read_bytes()
    )
    manifest_path = support.write_manifest(
        tmp_path, support.build_manifest("orphans", minReplicas=2)
    )
    env = dict(
        os.environ, WORKERFLEET_REDIS_URL=f"redis://127.0.0.1:{embedded_redis.fetch_free_port()}/0"
    )
    log_dir = tmp_path / "worker-logs"
    process = _run_cli(
        [
            str(manifest_path),
            "--no-view",
            "--metrics-port",
            "-1",
            "--app-path",
            str(app_dir),
            "--log-dir",
            str(log_dir),
        ],
        tmp_path,
        env,
    )
    output = Output(process)
    try:
        port = int(output.wait_for(r"embedded 127\.0\.0\.1:(\d+)", 20).group(1))
        # (as soon as both exist: a worker may still be in its setpriv prefix, the moment a
        # killed fleet once left a worker running for good)
        wait_until(lambda: len(_worker_pids_in(app_dir)) == 2, timeout=20, message="two workers")
        workers = _worker_pids_in(app_dir)
        # When the fleet process is killed outright (no chance to drain anything itself)
        process.kill()
        process.wait(10)
        # Then its workers get SIGTERM from the kernel (or never start) and exit, and Redis
        # shuts down
        try:
            wait_until(lambda: not (workers & _worker_pids_in(app_dir)), timeout=30)
        except pytest.fail.Exception:
            logs = {path.name: path.read_text()[-2000:] for path in log_dir.glob("*.log")}
            pytest.fail(f"workers outlived the fleet; their logs: {logs}")
        wait_until(lambda: not _port_open(port), timeout=15, message="Redis outlived it")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        for pid in _worker_pids_in(app_dir):  # only this test's workers (their cwd is app_dir)
            os.kill(pid, signal.SIGKILL)
