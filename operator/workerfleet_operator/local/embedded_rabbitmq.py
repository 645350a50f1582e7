"""An embedded rabbitmq-server for the local fleet: a private node on loopback, stopped by PID.

Started by ``workerfleet run`` for a pool on RabbitMQ and by ``workerfleet demo --broker
rabbitmq`` (:mod:`workerfleet_operator.local.brokers`), and by the tests' private brokers
(tests/support/rabbitmq_server.py subclasses it). Each node has its own Erlang node name, AMQP,
management and distribution ports (all bound to 127.0.0.1, epmd too) and its own directory
(mnesia, logs, config, Erlang cookie), so it never meets a system broker or another node.

Facts of Debian's package this works with (3.10, Erlang 25):

- ``/usr/sbin/rabbitmq-server`` is a wrapper that only root or the ``rabbitmq`` user may run
  (root is switched to ``rabbitmq``); the script it wraps,
  ``/usr/lib/rabbitmq/bin/rabbitmq-server``, runs as any user given a ``HOME`` for the cookie,
  so that is the one started here, as the caller, with ``HOME`` in the node's directory.
- That script is not the broker: the broker runs on as ``beam.smp`` (its PID lands in
  ``RABBITMQ_PID_FILE``), with an ``epmd`` daemon shared by every node of the machine. Stopping
  means signalling that PID (SIGTERM shuts down cleanly, SIGKILL is a crash).
- Boot takes ~10-20 s here. Readiness is the management API answering (the autoscaler reads it)
  and the AMQP port accepting.
- The management API samples its numbers; here every 0.5 s (the default is 5 s), so the local
  autoscaler polling each second sees a backlog soon after it forms. The numbers stay samples
  (docs/brokers.md).

A node whose directory the user gave keeps its node name there (``node-name``), so a durable
queue's messages are found again by the next ``workerfleet run --data-dir`` on that directory.
"""

from __future__ import annotations

import base64
import contextlib
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from typing import Self

from workerfleet_operator.local import embedded, embedded_redis, lifeline

SCRIPT_PATHS = ("/usr/lib/rabbitmq/bin/rabbitmq-server",)
"""Where the node's own start script lives (Debian); else ``rabbitmq-server`` on the PATH."""
START_TIMEOUT_SECONDS = 90.0
START_ATTEMPTS = 3
"""Boots tried when a port picked for the node was taken meanwhile (see ``start``)."""
STOP_TIMEOUT_SECONDS = 30.0
USER = "guest"
PASSWORD = "guest"  # RabbitMQ lets guest in from loopback only; the node listens nowhere else
STATISTICS_INTERVAL_MS = 500
QUORUM_TICK_MS = 500
INSTALL_HINT = (
    "run `make demo-deps DEMO_ARGS='--broker rabbitmq'` or `make deps` "
    "(they install Debian's rabbitmq-server)"
)


def find_server_script() -> str:
    """The rabbitmq-server start script that runs as this user (EmbeddedServerError if none)."""
    for path in SCRIPT_PATHS:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("rabbitmq-server")
    if found is None or found.startswith(("/usr/sbin/", "/sbin/")):
        # Debian's /usr/sbin wrapper without its script behind it is a broken install
        raise embedded.EmbeddedServerError(f"rabbitmq-server is not installed: {INSTALL_HINT}")
    return found


class EmbeddedRabbitMQ(embedded.ServerProcess):
    """One private RabbitMQ node; ``start()``/``close()`` or a context manager.

    ``kill()`` is SIGKILL of the broker process (a crash); ``start()`` after ``stop()`` or
    ``kill()`` boots it again on the same node name, ports and directory (durable queues and
    persistent messages survive).
    """

    def __init__(self, data_dir: pathlib.Path | None = None) -> None:
        self.script = find_server_script()
        self._given_dir = data_dir
        if data_dir is not None:
            data_dir.mkdir(parents=True, exist_ok=True)
            self.dir = data_dir
        else:
            self.dir = pathlib.Path(tempfile.mkdtemp(prefix="workerfleet-rabbitmq-"))
        self.node = self._read_node_name()
        self.port = embedded_redis.fetch_free_port()
        self.management_port = embedded_redis.fetch_free_port()
        self.dist_port = embedded_redis.fetch_free_port()
        self.pid: int | None = None
        self.wrapper: subprocess.Popen[bytes] | None = None
        self._booted = False  # once booted, a restart keeps the client-facing ports
        for sub in ("mnesia", "log", "home"):
            (self.dir / sub).mkdir(exist_ok=True)
        (self.dir / "enabled_plugins").write_text("[rabbitmq_management].\n", encoding="utf-8")
        self._write_config()

    def _write_config(self) -> None:
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            f"management.tcp.port = {self.management_port}\n"
            "management.tcp.ip = 127.0.0.1\n"
            f"collect_statistics_interval = {STATISTICS_INTERVAL_MS}\n",
            encoding="utf-8",
        )

    def _read_node_name(self) -> str:
        path = self.dir / "node-name"
        with contextlib.suppress(OSError):
            name = path.read_text(encoding="utf-8").strip()
            if name:
                return name
        name = f"wf{uuid.uuid4().hex[:10]}@localhost"
        path.write_text(name + "\n", encoding="utf-8")
        return name

    # -- addresses ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The AMQP URL of the default vhost (an AMQP client's)."""
        return f"amqp://{USER}:{PASSWORD}@127.0.0.1:{self.port}/"

    @property
    def broker_url(self) -> str:
        """The URL workerfleet's broker opens: AMQP plus the management port the probe reads."""
        return f"{self.url}?management_port={self.management_port}"

    @property
    def management_url(self) -> str:
        return f"http://{USER}:{PASSWORD}@127.0.0.1:{self.management_port}"

    @property
    def data_dir(self) -> pathlib.Path:
        return self.dir

    @property
    def pid_file(self) -> pathlib.Path:
        return self.dir / "rabbitmq.pid"

    def describe(self) -> str:
        return f"embedded rabbitmq-server 127.0.0.1:{self.port} (data in {self.dir})"

    def build_env(self) -> dict[str, str]:
        """The node's environment: its name, ports, loopback binds and directories."""
        return {
            **os.environ,
            "HOME": str(self.dir / "home"),  # the Erlang cookie, private to this node
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            # the Erlang distribution listener binds every interface unless told otherwise
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}"
            f" -rabbit quorum_tick_interval {QUORUM_TICK_MS}",
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
        }

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> Self:
        """Boot the node and wait (bounded) until AMQP and the management API answer.

        The ports are free ones picked beforehand, from the range the kernel also hands out to
        outgoing connections: one can be taken by the time the node binds it. The node's
        distribution port is its own affair, so a boot that found it taken
        (``dist_port_already_used``, seen in a CI run) is retried on another; so is a first
        boot whose AMQP or management port was taken (a restart keeps those: clients know
        them)."""
        for attempt in range(1, START_ATTEMPTS + 1):
            problem = self._boot()
            if problem is None:
                self._booted = True
                return self
            tail = self.log()
            if attempt < START_ATTEMPTS and "dist_port_already_used" in tail:
                self.dist_port = embedded_redis.fetch_free_port()
                continue
            if attempt < START_ATTEMPTS and not self._booted and "eaddrinuse" in tail:
                self.port = embedded_redis.fetch_free_port()
                self.management_port = embedded_redis.fetch_free_port()
                self._write_config()
                continue
            raise embedded.EmbeddedServerError(
                f"rabbitmq-server {self.node} did not start ({problem}); log: {tail}"
            )
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _boot(self) -> str | None:
        """One boot of the node; None once it answers, else why not (the node is stopped)."""
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        self.pid = None
        with (self.dir / "wrapper.log").open("ab") as out:
            self.wrapper = subprocess.Popen(
                lifeline.build_tied_command([self.script]),
                env=self.build_env(),
                cwd=str(self.dir),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C reaches the fleet, which stops this last
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        problem = "timed out"
        while time.monotonic() < deadline:
            if self.wrapper.poll() is not None and not self._read_pid():
                problem = f"exited with code {self.wrapper.returncode}"
                break
            if self._read_pid() and self._amqp_accepts() and self.management_answers(timeout=1):
                return None
            time.sleep(0.2)
        self.stop()
        return problem

    def _read_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            self.pid = int(self.pid_file.read_text(encoding="utf-8").strip())
        return self.pid

    def _amqp_accepts(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def management_answers(self, *, timeout: float = 30.0) -> bool:
        """True once the management API answers (it starts a moment after AMQP)."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.management_port}/api/overview")
        auth = f"{USER}:{PASSWORD}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(auth).decode())
        deadline = time.monotonic() + timeout
        while True:
            if embedded.fetch_http_ok(request, timeout=2.0):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)

    def running(self) -> bool:
        return self.pid is not None and embedded.pid_alive(self.pid)

    def _reap_wrapper(self) -> None:
        if self.wrapper is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.wrapper.wait(10)

    def kill(self) -> None:
        """SIGKILL of the broker process: no shutdown, what a crash looks like."""
        if self.pid is not None:
            embedded.signal_and_wait(self.pid, signal.SIGKILL, 10.0)
        self._reap_wrapper()

    def stop(self) -> None:
        """A clean shutdown (SIGTERM to ``beam.smp``), SIGKILL when it hangs."""
        if self.pid is None:
            self._read_pid()
        if self.pid is not None:
            embedded.stop_pid(self.pid, STOP_TIMEOUT_SECONDS)
        elif self.wrapper is not None and self.wrapper.poll() is None:
            # no broker PID yet: the start script is still booting it; end the script's group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.wrapper.pid, signal.SIGKILL)
        self._reap_wrapper()

    def log(self) -> str:
        """The tail of the node's log (or of the start script's output before it logs)."""
        text = embedded.read_tail(self.dir / "log" / f"{self.node}.log")
        return text or embedded.read_tail(self.dir / "wrapper.log")
