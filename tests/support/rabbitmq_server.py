"""Private rabbitmq-server processes for the tests: one broker per instance, on loopback only.

Used by the RabbitMQ fixtures (``rabbitmq_server``/``rabbitmq_factory`` in tests/conftest.py, the
contract suite's among them). Each :class:`RabbitMQServer` has its own Erlang node name, AMQP,
management and distribution ports, and its own mnesia/log directories, so brokers of parallel tests
never meet each other or a system broker.

Facts of Debian's package this works with (3.10, Erlang 25):

- ``rabbitmq-server`` is a wrapper that drops to the ``rabbitmq`` user (``su``, environment
  kept), so the directories handed to it must be owned by ``rabbitmq``.
- The wrapper is not the broker: the broker runs on as ``beam.smp`` (its PID lands in
  ``RABBITMQ_PID_FILE``), with an ``epmd`` daemon shared by every node of the machine. Stopping
  means signalling that PID (SIGTERM shuts down cleanly, SIGKILL is a crash) or ``rabbitmqctl
  -n NODE stop``; killing the wrapper leaves the broker running.
- Boot takes ~10-20 s here.

A missing ``rabbitmq-server`` FAILS the test (``make deps`` installs it), never skips.
"""

from __future__ import annotations

import base64
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid

import pytest

STARTUP_SECONDS = 90.0
STOP_SECONDS = 30.0
USER = "guest"
PASSWORD = "guest"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary(name: str) -> str:
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None
    )
    if path is None:
        pytest.fail(f"{name} is not installed: run `make deps` (the tests need a real RabbitMQ)")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours is dead for our purposes
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][:1] != "Z"
    return True


class RabbitMQServer:
    """A rabbitmq-server of our own on 127.0.0.1 with the management plugin.

    ``kill()`` is SIGKILL of the broker process (a crash), ``restart()`` boots it again on the
    same node name, ports and data directory (durable queues and persistent messages survive).
    """

    def __init__(self) -> None:
        self.rabbitmq_server = _binary("rabbitmq-server")
        self.rabbitmqctl = _binary("rabbitmqctl")
        try:
            self.owner = pwd.getpwnam("rabbitmq")
        except KeyError:
            pytest.fail("the rabbitmq user is missing: run `make deps` (rabbitmq-server's package)")
        self.node = f"wf{uuid.uuid4().hex[:10]}@localhost"
        self.port = _free_port()
        self.management_port = _free_port()
        self.dist_port = _free_port()
        self.dir = tempfile.mkdtemp(prefix="wf-rabbitmq-")
        self.pid: int | None = None
        self.wrapper: subprocess.Popen[bytes] | None = None
        for sub in ("mnesia", "log"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        with open(os.path.join(self.dir, "enabled_plugins"), "w") as f:
            f.write("[rabbitmq_management].\n")
        with open(os.path.join(self.dir, "rabbitmq.conf"), "w") as f:
            f.write(
                f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
                f"management.tcp.port = {self.management_port}\n"
                "management.tcp.ip = 127.0.0.1\n"
                # the management API's numbers are sampled: every 0.5 s, not 5 s, for tests
                "collect_statistics_interval = 500\n"
            )
        os.chmod(self.dir, 0o755)
        for root, dirs, files in os.walk(self.dir):
            for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                os.chown(name, self.owner.pw_uid, self.owner.pw_gid)

    # -- addresses ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The AMQP URL of the default vhost."""
        return f"amqp://{USER}:{PASSWORD}@127.0.0.1:{self.port}/"

    @property
    def management_url(self) -> str:
        return f"http://{USER}:{PASSWORD}@127.0.0.1:{self.management_port}"

    @property
    def pid_file(self) -> str:
        return os.path.join(self.dir, "rabbitmq.pid")

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            # the Erlang distribution listener binds every interface unless told otherwise
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_MNESIA_BASE": os.path.join(self.dir, "mnesia"),
            "RABBITMQ_LOG_BASE": os.path.join(self.dir, "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(self.dir, "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": os.path.join(self.dir, "rabbitmq.conf"),
            "RABBITMQ_PID_FILE": self.pid_file,
        }

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pid_file)
        out = open(os.path.join(self.dir, "wrapper.log"), "ab")  # noqa: SIM115 - owned by the process
        # the wrapper cds to /var/lib/rabbitmq itself; its own stdout is only the banner
        self.wrapper = subprocess.Popen(
            [self.rabbitmq_server], env=self.env(), stdout=out, stderr=subprocess.STDOUT
        )
        out.close()
        deadline = time.monotonic() + STARTUP_SECONDS
        while not self._read_pid():
            if self.wrapper.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rabbitmq-server {self.node} did not start: {self.log()}")
            time.sleep(0.2)
        remaining = max(1.0, deadline - time.monotonic())
        done = subprocess.run(
            [
                self.rabbitmqctl,
                "-n",
                self.node,
                "-q",
                "await_startup",
                "--timeout",
                str(int(remaining)),
            ],
            capture_output=True,
            timeout=remaining + 10,
            check=False,
        )
        if done.returncode != 0 or not self.management_answers():
            raise RuntimeError(
                f"rabbitmq-server {self.node} did not become ready: "
                f"{done.stderr.decode(errors='replace')[-500:]} {self.log()}"
            )

    def _read_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError), open(self.pid_file) as f:
            self.pid = int(f.read().strip())
            return self.pid
        return None

    def management_answers(self) -> bool:
        """True once the management API answers (it starts a moment after AMQP)."""
        deadline = time.monotonic() + 30
        request = urllib.request.Request(f"http://127.0.0.1:{self.management_port}/api/overview")
        auth = f"{USER}:{PASSWORD}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(auth).decode())
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(request, timeout=2) as reply,
            ):
                if reply.status == 200:
                    return True
            time.sleep(0.2)
        return False

    def running(self) -> bool:
        return self.pid is not None and _pid_alive(self.pid)

    def _signal_and_wait(self, sig: int, seconds: float) -> bool:
        if self.pid is None:
            return True
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
        deadline = time.monotonic() + seconds
        while _pid_alive(self.pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        if self.wrapper is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.wrapper.wait(10)
        return True

    def kill(self) -> None:
        """SIGKILL of the broker process: no shutdown, what a crash looks like."""
        self._signal_and_wait(signal.SIGKILL, 10)

    def stop(self) -> None:
        """A clean shutdown (SIGTERM to beam.smp), SIGKILL when it hangs."""
        if not self._signal_and_wait(signal.SIGTERM, STOP_SECONDS):
            self.kill()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        path = os.path.join(self.dir, "log", f"{self.node}.log")
        with contextlib.suppress(OSError), open(path, errors="replace") as f:
            return f.read()[-2000:]
        with (
            contextlib.suppress(OSError),
            open(os.path.join(self.dir, "wrapper.log"), errors="replace") as f,
        ):
            return f.read()[-2000:]
        return ""
