"""What every embedded broker server of the local fleet shares: its error, and stopping by PID.

Used by :mod:`embedded_redis`, :mod:`embedded_rabbitmq` and :mod:`embedded_elasticmq` (the
servers ``workerfleet run`` and ``workerfleet demo`` start when no broker is given) and, through
them, by the tests' private broker servers. Each server binds 127.0.0.1 only, keeps its data in a
directory of its own and is stopped by the PID of the process that serves (not by a name: a
machine may run other brokers, the tests' own among them).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import time
import urllib.error
import urllib.request
from types import TracebackType
from typing import Protocol, Self, TypeVar


class EmbeddedServerError(RuntimeError):
    """A broker server is missing or did not come up; the message says how to fix it."""


class EmbeddedServer(Protocol):
    """What the local fleet needs of a server it started: where workers reach it, and an end."""

    @property
    def broker_url(self) -> str:
        """The broker URL the workers, the producer and the probe open (``open_broker``)."""
        ...

    @property
    def data_dir(self) -> pathlib.Path: ...

    def describe(self) -> str:
        """One line for the header of the view: kind, address and data directory."""
        ...

    def close(self) -> None:
        """Stop the server and remove its data directory unless the user gave it."""
        ...


class ServerProcess:
    """The life-cycle every embedded server shares around its own ``start()`` and ``stop()``:
    ``restart()`` in place, ``close()`` (stop, then remove the directory unless the user gave
    it), and use as a context manager (``with EmbeddedX(...) as server:``)."""

    _given_dir: pathlib.Path | None
    dir: pathlib.Path

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server; remove its directory unless the user gave it."""
        self.stop()
        if self._given_dir is None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return start_or_close(self)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(Exception):
            self.close()


class Startable(Protocol):
    """A server that is started, and closed (stopped, its own directory removed)."""

    def start(self) -> Self: ...

    def close(self) -> None: ...


StartableT = TypeVar("StartableT", bound=Startable)


def start_or_close(server: StartableT) -> StartableT:
    """``server.start()``; when that fails, ``server.close()`` before the error goes on: a
    server that did not start leaves no process and no temporary directory behind (each failed
    start left a workerfleet-redis-* or -rabbitmq-* directory in /tmp)."""
    try:
        return server.start()
    except BaseException:
        with contextlib.suppress(Exception):
            server.close()
        raise


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie child of ours counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][:1] != "Z"
    return True


def signal_and_wait(pid: int, sig: int, seconds: float) -> bool:
    """Send ``sig`` to ``pid`` and wait (bounded) until it is gone; False if it outlived it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + seconds
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop_pid(pid: int, seconds: float) -> None:
    """SIGTERM (a clean shutdown), then SIGKILL when the process hangs past ``seconds``."""
    if not signal_and_wait(pid, signal.SIGTERM, seconds):
        signal_and_wait(pid, signal.SIGKILL, 10.0)


def fetch_http_ok(request: urllib.request.Request | str, *, timeout: float = 1.0) -> bool:
    """True when an HTTP GET on loopback answers 200 (a readiness check; errors are False)."""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return int(reply.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def read_tail(path: pathlib.Path, chars: int = 2000) -> str:
    """The last ``chars`` of a server's log (empty when it has none yet)."""
    with contextlib.suppress(OSError), path.open(errors="replace") as f:
        return f.read()[-chars:]
    return ""
