"""Private ElasticMQ servers (an SQS-compatible server on the JVM) for the SQS broker's tests.

Used by the ``elasticmq_server`` / ``elasticmq_factory`` fixtures of tests/conftest.py. Each
server binds its SQS REST port and its statistics port to 127.0.0.1 on free ports (ElasticMQ's
own default is 0.0.0.0, so both are set in a generated config file), runs from the jars that
scripts/ensure-elasticmq.sh caches under ``$WORKERFLEET_CACHE/elasticmq/<version>/lib``, and is
stopped by its PID. With ``persistent=True`` queues and messages live in a data directory that a
``kill()`` + ``start()`` keeps (the server-restart fault scenario).

:class:`WholeSecondContract` is the contract suite's harness for SQS (see there).

A missing ``java`` or missing jars FAIL the run with the command that installs them: the SQS
tests never skip for want of a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from tests.support import brokers

ELASTICMQ_VERSION = "1.6.11"
STARTUP_SECONDS = 120.0
"""A JVM start: ~3 s on an idle machine, measured 30 s on this 2-core machine under load."""

JVM_OPTIONS = ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xmx256m", "-Xss512k")
"""Quick start and a small heap: a test server holds a few thousand messages at most."""


def elasticmq_lib_dir() -> str:
    """Where scripts/ensure-elasticmq.sh put the server's jars (fails the test when absent)."""
    cache = os.environ.get("WORKERFLEET_CACHE") or os.path.expanduser("~/.cache/workerfleet")
    lib = os.path.join(cache, "elasticmq", ELASTICMQ_VERSION, "lib")
    jar = os.path.join(lib, f"elasticmq-server_2.13-{ELASTICMQ_VERSION}.jar")
    if not os.path.exists(jar):
        pytest.fail(f"ElasticMQ {ELASTICMQ_VERSION} is not installed ({jar}): run `make deps`")
    if shutil.which("java") is None:
        pytest.fail("java is not installed: run `make deps` (the SQS tests need a real ElasticMQ)")
    return lib


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ElasticMQServer:
    """One ElasticMQ process of ours; ``kill()`` is SIGKILL, ``start()`` reuses ports and data."""

    def __init__(self, *, persistent: bool = False) -> None:
        self.lib = elasticmq_lib_dir()
        self.port = _free_port()
        self.stats_port = _free_port()
        self.dir = tempfile.mkdtemp(prefix="wf-elasticmq-")
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None
        self._write_config()

    @property
    def endpoint(self) -> str:
        """The SQS endpoint URL (what a client's ``endpoint_url`` is set to)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The broker URL of workerfleet's SQS broker for this server."""
        return f"sqs://127.0.0.1:{self.port}?region=us-east-1&secure=false"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _write_config(self) -> None:
        data = os.path.join(self.dir, "data")
        lines = [
            'include classpath("application.conf")',
            f'node-address {{ protocol = "http", host = "127.0.0.1", port = {self.port},'
            ' context-path = "" }',
            f'rest-sqs {{ enabled = true, bind-port = {self.port}, bind-hostname = "127.0.0.1",'
            " sqs-limits = strict }",
            f"rest-stats {{ enabled = true, bind-port = {self.stats_port},"
            ' bind-hostname = "127.0.0.1" }',
            "generate-node-address = false",
            'aws { region = "us-east-1", accountId = "000000000000" }',
        ]
        if self.persistent:
            lines += [
                # WRITE_DELAY=0: H2 otherwise commits its file up to ~1 s late, and a SIGKILL
                # inside that window loses queues and messages the server had acknowledged.
                "messages-storage { enabled = true,"
                f' uri = "jdbc:h2:{data}/messages;WRITE_DELAY=0" }}',
                f'queues-storage {{ enabled = true, path = "{data}/queues.conf" }}',
            ]
        with open(os.path.join(self.dir, "elasticmq.conf"), "w") as f:
            f.write("\n".join(lines) + "\n")

    def start(self) -> None:
        args = [
            "java",
            *JVM_OPTIONS,
            f"-Dconfig.file={os.path.join(self.dir, 'elasticmq.conf')}",
            "-cp",
            os.path.join(self.lib, "*"),
            "org.elasticmq.server.Main",
        ]
        log = open(os.path.join(self.dir, "elasticmq.log"), "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        log.close()
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"elasticmq exited with {self.proc.returncode}: {self.log()}")
            if self.answers():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"elasticmq on {self.port} did not start: {self.log()}")
            time.sleep(0.1)

    def answers(self) -> bool:
        """True when the SQS endpoint replies to a ListQueues."""
        try:
            with urllib.request.urlopen(f"{self.endpoint}/?Action=ListQueues", timeout=1.0) as r:
                return int(r.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def log(self) -> str:
        with contextlib.suppress(OSError), open(os.path.join(self.dir, "elasticmq.log")) as f:
            return f.read()[-3000:]
        return ""

    def kill(self) -> None:
        """SIGKILL: what a crashed server looks like."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(15)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


SQS_TIME_STRETCH = 2.5
"""How much longer the contract suite's waits last on SQS (see :class:`WholeSecondContract`)."""


@dataclasses.dataclass
class WholeSecondContract(brokers.Contract):
    """The contract suite's harness on SQS, whose visibility timeouts and delays are whole
    seconds: the suite's 0.4 s lease and 0.5 s delays last 1 s there, so every wait is
    stretched by :data:`SQS_TIME_STRETCH` (0.6 s after a 0.4 s lease becomes 1.5 s after SQS's
    1 s, a renew at 0.24 s becomes 0.6 s, still inside it). The assertions are unchanged."""

    async def advance(self, seconds: float) -> None:
        await asyncio.sleep(seconds * SQS_TIME_STRETCH)
