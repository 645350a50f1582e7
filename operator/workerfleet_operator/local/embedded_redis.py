"""An embedded redis-server for the local fleet: the Debian binary on a free loopback port.

Started by :mod:`workerfleet_operator.local.runner` when the pool's Redis is not reachable, and
by the local-fleet tests. Append-only file on (``appendfsync everysec``), so an accepted job
survives a crash of this server like it would in production; the data lives in a temporary
directory (removed on stop) or in a directory the user gives (kept). The server runs in its own
session so a Ctrl-C in the terminal reaches only the fleet, which stops Redis last, after the
workers have drained.
"""

from __future__ import annotations

import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Self

import redis

from workerfleet_operator.local import embedded, lifeline

REDIS_SERVER = "redis-server"
START_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 10.0


class EmbeddedRedisError(embedded.EmbeddedServerError):
    """redis-server is missing or did not come up; the message says how to fix it."""


def fetch_free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fetch_reachable(url: str, *, timeout: float = 1.0) -> str | None:
    """``None`` if a Redis at ``url`` answers PING, else why not."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


class EmbeddedRedis(embedded.ServerProcess):
    """One redis-server process; use as a context manager or call start()/stop()."""

    def __init__(self, data_dir: pathlib.Path | None = None, port: int | None = None) -> None:
        self._given_dir = data_dir
        self._port = port
        self._dir: pathlib.Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedRedisError("not started")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def broker_url(self) -> str:
        return self.url

    def describe(self) -> str:
        return f"embedded 127.0.0.1:{self.port} (AOF in {self.data_dir})"

    @property
    def data_dir(self) -> pathlib.Path:
        if self._dir is None:
            raise EmbeddedRedisError("not started")
        return self._dir

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> Self:
        """Start the server and wait (bounded) until it answers PING."""
        binary = shutil.which(REDIS_SERVER)
        if binary is None:
            raise EmbeddedRedisError(
                "redis-server not found: run `make deps` (installs the Debian redis-server)"
            )
        if self._given_dir is not None:
            self._given_dir.mkdir(parents=True, exist_ok=True)
            self._dir = self._given_dir
        else:
            self._dir = pathlib.Path(tempfile.mkdtemp(prefix="workerfleet-redis-"))
        last_error = ""
        for _ in range(3):  # a free port can be taken between our probe and redis' bind
            port = self._port or fetch_free_port()
            self._process = self._spawn(binary, port)
            last_error = self._wait_until_up(port)
            if not last_error:
                self._port = port
                return self
            self._terminate()
            if self._port is not None:
                break
        log = embedded.read_tail(self._dir / "redis.log")
        # a directory of our own goes with the failed start (each one left a workerfleet-redis-*
        # in /tmp), so the log's end is said here; a given directory keeps it
        self.stop()
        raise EmbeddedRedisError(f"redis-server did not start: {last_error}; log: {log}")

    def _spawn(self, binary: str, port: int) -> subprocess.Popen[bytes]:
        assert self._dir is not None
        log = (self._dir / "redis.log").open("ab")
        try:
            return subprocess.Popen(
                lifeline.build_tied_command(
                    [
                        binary,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--protected-mode",
                        "yes",
                        "--dir",
                        str(self._dir),
                        "--appendonly",
                        "yes",
                        "--appendfsync",
                        "everysec",
                        "--save",
                        "",
                        "--daemonize",
                        "no",
                        "--logfile",
                        "",
                    ]
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()

    def _wait_until_up(self, port: int) -> str:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        error = "timed out"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return f"exited with code {self._process.returncode}"
            problem = fetch_reachable(f"redis://127.0.0.1:{port}/0", timeout=0.5)
            if problem is None:
                return ""
            error = problem
            time.sleep(0.05)
        return error

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)  # redis flushes the AOF and exits
        try:
            process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_SECONDS)

    def stop(self) -> None:
        """Stop the server (AOF flushed); remove the data directory unless it was given."""
        self._terminate()
        if self._given_dir is None and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def close(self) -> None:
        """:meth:`stop` (the name every embedded server of the local fleet answers to)."""
        self.stop()
