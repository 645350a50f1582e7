"""Test helpers: real worker subprocesses, bounded polling, what the fixture tasks recorded.

Used by the worker, drain, CLI and chaos tests. Everything listens on 127.0.0.1, every wait has
a deadline, and every process started here is stopped by its own PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import redis
import redis.asyncio

from worker_runtime import producer as producer_mod
from worker_runtime.brokers.redis import dlq
from worker_runtime.brokers.redis import stats as stats_mod

REPO = Path(__file__).resolve().parents[2]
FIXTURE_APP = "tests.worker_runtime.tasks_fixture:app"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], timeout: float, message: str, interval: float = 0.05
) -> Any:
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` passes (then fail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for: {message}")
        time.sleep(interval)


class LinesRead:
    """The lines a subprocess writes to one of its pipes, read by a thread as they come: a test
    polls them while the process runs (a "said X" to wait for) and reads them all after."""

    def __init__(self, stream: IO[str] | None) -> None:
        assert stream is not None, "the process was started without this pipe"
        self.lines: list[str] = []
        self._thread = threading.Thread(target=lambda: self.lines.extend(iter(stream.readline, "")))
        self._thread.start()

    def said(self, text: str) -> int:
        """How many lines so far hold ``text``."""
        return sum(text in line for line in self.lines)

    def finish(self) -> str:
        """Everything read, once the pipe closed (the process ended)."""
        self._thread.join()
        return "".join(self.lines)


def end_process(proc: subprocess.Popen[str], timeout: float) -> None:
    """Wait up to ``timeout`` s for ``proc`` to end, then kill it if it has not (raising)."""
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class RedisLike(Protocol):
    """What the tests need of a redis-server (tests/support/redis_servers.py's RedisServer)."""

    @property
    def url(self) -> str: ...

    port: int


def sync_client(server: RedisLike) -> redis.Redis:
    return redis.Redis(port=server.port, decode_responses=True, socket_timeout=10)


def new_queue(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def worker_env(
    redis_url: str,
    queue: str,
    *,
    concurrency: int = 4,
    lease_seconds: float = 3.0,
    drain_timeout: float = 10.0,
    metrics_port: int = 0,
) -> dict[str, str]:
    """The environment of a test worker process: this checkout importable, fast retries."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "operator")]),
        "WORKERFLEET_REDIS_URL": redis_url,
        "WORKERFLEET_QUEUE": queue,
        "WORKERFLEET_CONCURRENCY": str(concurrency),
        "WORKERFLEET_LEASE_SECONDS": str(lease_seconds),
        "WORKERFLEET_DRAIN_TIMEOUT_SECONDS": str(drain_timeout),
        "WORKERFLEET_METRICS_PORT": str(metrics_port),
        "WORKERFLEET_METRICS_HOST": "127.0.0.1",
        "WORKERFLEET_LOG_FORMAT": "json",
        "WORKERFLEET_LOG_LEVEL": "info",
        "WORKERFLEET_RETRY_BACKOFF_BASE_SECONDS": "0.05",
        "WORKERFLEET_RETRY_BACKOFF_MAX_SECONDS": "0.5",
    }


class WorkerProc:
    """One ``python -m worker_runtime worker`` subprocess with its own log file."""

    def __init__(
        self,
        redis_url: str,
        queue: str,
        *,
        concurrency: int = 4,
        lease_seconds: float = 3.0,
        drain_timeout: float = 10.0,
        metrics_port: int = 0,
        extra_env: dict[str, str] | None = None,
        app: str = FIXTURE_APP,
        log_dir: str | None = None,
    ) -> None:
        self.queue = queue
        self.metrics_port = metrics_port
        env = {
            **worker_env(
                redis_url,
                queue,
                concurrency=concurrency,
                lease_seconds=lease_seconds,
                drain_timeout=drain_timeout,
                metrics_port=metrics_port,
            ),
            **(extra_env or {}),
        }
        self.log_path = Path(log_dir or tempfile.mkdtemp(prefix="wf-worker-")) / (
            f"worker-{uuid.uuid4().hex[:6]}.log"
        )
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker_runtime", "worker", app],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.proc.pid

    def send(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def logs(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def drained_seconds(self) -> float:
        """Seconds from the drain's start (its ``draining`` line) to the last line the worker
        logged before it ended, by the worker's own clock: a drain timed from outside also
        counts the signal's delivery and the process's exit, seconds on a loaded machine."""
        stamps = [float(r["ts"]) for r in self.log_records() if "ts" in r]
        (started,) = [float(r["ts"]) for r in self.log_records() if r.get("msg") == "draining"]
        return max(stamps) - started

    def http(self, path: str) -> tuple[int, dict[str, Any] | str]:
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                body = resp.read().decode()
                status = resp.status
        except urllib.error.HTTPError as exc:
            body = exc.read().decode()
            status = exc.code
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        self._log.close()


@contextlib.contextmanager
def workers(*procs: WorkerProc) -> Iterator[tuple[WorkerProc, ...]]:
    try:
        yield procs
    finally:
        for p in procs:
            p.stop()


@dataclass(frozen=True)
class Testbed:
    """One test's queue on the shared redis-server, a producer, and a way to start workers.

    The ``wf`` fixture (tests/worker_runtime/conftest.py); its methods are the Given/Then
    steps the worker tests share (what the queue, the fixture tasks and the DLQ say now).
    """

    redis: RedisLike
    queue: str
    client: redis.Redis
    producer: producer_mod.SyncProducer
    spawn: Callable[..., WorkerProc]

    def stats(self) -> stats_mod.QueueStats:
        return stats_mod.fetch_queue_stats_sync(self.client, self.queue)

    def events(self) -> list[dict[str, Any]]:
        return events(self.client, self.queue)

    def starts(self) -> list[dict[str, Any]]:
        """The fixture tasks' ``start`` events, in order."""
        return [e for e in self.events() if e["event"] == "start"]

    def done_counts(self) -> dict[str, int]:
        return done_counts(self.client, self.queue)

    def dead_letter(self, job_id: str) -> dlq.DeadLetter | None:
        async def go() -> dlq.DeadLetter | None:
            client = redis.asyncio.Redis.from_url(self.redis.url, decode_responses=True)
            try:
                return await dlq.fetch_dead_letter(client, self.queue, job_id)
            finally:
                await client.aclose()

        return asyncio.run(go())


def events(client: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """What the fixture tasks recorded, in order."""
    return [json.loads(e) for e in client.lrange(f"test:{queue}:events", 0, -1)]


def done_counts(client: redis.Redis, queue: str) -> dict[str, int]:
    return {k: int(v) for k, v in client.hgetall(f"test:{queue}:done").items()}


def registered_pids(client: redis.Redis, queue: str) -> set[int]:
    """PIDs of the workers with a live heartbeat (worker ids end in ``-<pid>-<random>``)."""
    pids = set()
    for w in stats_mod.fetch_queue_stats_sync(client, queue).workers:
        with contextlib.suppress(ValueError, IndexError):
            pids.add(int(w.worker_id.rsplit("-", 2)[1]))
    return pids
