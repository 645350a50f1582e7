"""An embedded ElasticMQ (an SQS-compatible server on the JVM) for the local fleet.

Started by ``workerfleet run`` for a pool on SQS and by ``workerfleet demo --broker sqs``
(:mod:`workerfleet_operator.local.brokers`), and by the SQS tests' private servers
(tests/support/elasticmq.py subclasses it). It runs from the jars scripts/ensure-elasticmq.sh
caches under ``$WORKERFLEET_CACHE/elasticmq/<version>/lib``; its SQS REST port and its statistics
port are bound to 127.0.0.1 on free ports (ElasticMQ's own default is 0.0.0.0, so both are set in
a generated config file), and it is stopped by its PID. With ``persistent=True`` (always when the
user gives a data directory) queues and messages live in an H2 store in that directory, which a
``kill()`` + ``start()`` keeps.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Self

from workerfleet_operator.local import embedded, embedded_redis, lifeline

ELASTICMQ_VERSION = "1.6.11"
START_TIMEOUT_SECONDS = 120.0
"""A JVM start: ~3 s on an idle machine, measured 30 s on a 2-core machine under load."""
STOP_TIMEOUT_SECONDS = 15.0
JVM_OPTIONS = ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xmx256m", "-Xss512k")
"""Quick start and a small heap: a local queue holds a few thousand messages at most."""
REGION = "us-east-1"
INSTALL_HINT = (
    "run `make demo-deps DEMO_ARGS='--broker sqs'` or `make deps` "
    "(they fetch ElasticMQ and install a Java runtime)"
)


def find_lib_dir() -> pathlib.Path:
    """Where scripts/ensure-elasticmq.sh put the server's jars (EmbeddedServerError if absent)."""
    cache = os.environ.get("WORKERFLEET_CACHE") or os.path.expanduser("~/.cache/workerfleet")
    lib = pathlib.Path(cache) / "elasticmq" / ELASTICMQ_VERSION / "lib"
    jar = lib / f"elasticmq-server_2.13-{ELASTICMQ_VERSION}.jar"
    if not jar.exists():
        raise embedded.EmbeddedServerError(
            f"ElasticMQ {ELASTICMQ_VERSION} is not installed ({jar}): {INSTALL_HINT}"
        )
    if shutil.which("java") is None:
        raise embedded.EmbeddedServerError(f"java is not installed: {INSTALL_HINT}")
    return lib


class EmbeddedElasticMQ(embedded.ServerProcess):
    """One ElasticMQ process of ours; ``kill()`` is SIGKILL, ``start()`` reuses ports and data."""

    def __init__(
        self, data_dir: pathlib.Path | None = None, *, persistent: bool | None = None
    ) -> None:
        self.lib = find_lib_dir()
        self._given_dir = data_dir
        if data_dir is not None:
            data_dir.mkdir(parents=True, exist_ok=True)
            self.dir = data_dir
        else:
            self.dir = pathlib.Path(tempfile.mkdtemp(prefix="workerfleet-elasticmq-"))
        self.persistent = data_dir is not None if persistent is None else persistent
        self.port = embedded_redis.fetch_free_port()
        self.stats_port = embedded_redis.fetch_free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._write_config()

    @property
    def endpoint(self) -> str:
        """The SQS endpoint URL (what a client's ``endpoint_url`` is set to)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The broker URL of workerfleet's SQS broker for this server."""
        return f"sqs://127.0.0.1:{self.port}?region={REGION}&secure=false"

    @property
    def broker_url(self) -> str:
        return self.url

    @property
    def data_dir(self) -> pathlib.Path:
        return self.dir

    @property
    def pid(self) -> int:
        if self.process is None:
            raise embedded.EmbeddedServerError("not started")
        return self.process.pid

    def describe(self) -> str:
        store = f"store in {self.dir}" if self.persistent else "in memory"
        return f"embedded ElasticMQ 127.0.0.1:{self.port} ({store})"

    def _write_config(self) -> None:
        data = self.dir / "data"
        lines = [
            'include classpath("application.conf")',
            f'node-address {{ protocol = "http", host = "127.0.0.1", port = {self.port},'
            ' context-path = "" }',
            f'rest-sqs {{ enabled = true, bind-port = {self.port}, bind-hostname = "127.0.0.1",'
            " sqs-limits = strict }",
            f"rest-stats {{ enabled = true, bind-port = {self.stats_port},"
            ' bind-hostname = "127.0.0.1" }',
            "generate-node-address = false",
            f'aws {{ region = "{REGION}", accountId = "000000000000" }}',
        ]
        if self.persistent:
            data.mkdir(exist_ok=True)
            lines += [
                # WRITE_DELAY=0: H2 otherwise commits its file up to ~1 s late, and a SIGKILL
                # inside that window loses queues and messages the server had acknowledged.
                "messages-storage { enabled = true,"
                f' uri = "jdbc:h2:{data}/messages;WRITE_DELAY=0" }}',
                f'queues-storage {{ enabled = true, path = "{data}/queues.conf" }}',
            ]
        (self.dir / "elasticmq.conf").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def start(self) -> Self:
        """Start the JVM and wait (bounded) until the SQS endpoint answers."""
        command = [
            "java",
            *JVM_OPTIONS,
            f"-Dconfig.file={self.dir / 'elasticmq.conf'}",
            "-cp",
            str(self.lib / "*"),
            "org.elasticmq.server.Main",
        ]
        with (self.dir / "elasticmq.log").open("ab") as log:
            self.process = subprocess.Popen(
                lifeline.build_tied_command(command),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(self.dir),
                start_new_session=True,  # a Ctrl-C reaches the fleet, which stops this last
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if self.process.poll() is not None:
                raise embedded.EmbeddedServerError(
                    f"elasticmq exited with {self.process.returncode}: {self.log()}"
                )
            if self.answers():
                return self
            if time.monotonic() > deadline:
                self.kill()
                raise embedded.EmbeddedServerError(
                    f"elasticmq on {self.port} did not start: {self.log()}"
                )
            time.sleep(0.1)

    def answers(self) -> bool:
        """True when the SQS endpoint replies to a ListQueues."""
        return embedded.fetch_http_ok(f"{self.endpoint}/?Action=ListQueues")

    def log(self) -> str:
        return embedded.read_tail(self.dir / "elasticmq.log", 3000)

    def kill(self) -> None:
        """SIGKILL: what a crashed server looks like."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT_SECONDS)

    def stop(self) -> None:
        """SIGTERM to the JVM (by its PID), SIGKILL when it hangs."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.kill()
