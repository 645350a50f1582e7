"""A TCP proxy on loopback that the fault suite puts between one worker and Redis.

Used by tests/chaos/harness.py: each worker of a network scenario talks to Redis through its
own proxy, so one worker can be partitioned while the others work. Faults are switched at run
time and apply to connections that exist and to new ones:

* ``latency``: every chunk waits this many seconds before it is forwarded (both directions);
* ``drop_reply_share``: that share of the client's requests reach Redis (which runs them) but
  their reply never comes back: the connection is cut instead (or, with ``drop_hangs``, left
  silent until the client's own timeout);
* ``partition``: nothing is forwarded either way and new connections hang (packets dropped,
  no reset); when it is healed the stalled connections are closed, so clients reconnect;
* ``blackhole_marker``: a connection that sends these bytes (the renewal script's SHA) is
  blackholed from then on, while every other connection works — an asymmetric cut where
  renewals fail while fetches succeed.

Listens on 127.0.0.1 only; every thread is a daemon and :meth:`FaultProxy.close` closes every
socket it opened.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time


class _Pipe:
    """One client connection and its upstream connection to Redis."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.black = False  # forwards nothing (partition or blackholed renewals)
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for s in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


class FaultProxy:
    """Forward 127.0.0.1:<port> to a Redis port, with switchable faults (see the module doc)."""

    def __init__(self, target_port: int, *, seed: int = 0) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.latency = 0.0
        self.drop_reply_share = 0.0
        self.drop_hangs = False  # a dropped reply leaves the connection open: the client times out
        self.partitioned = False
        self.blackhole_marker: bytes | None = None
        self.dropped_replies = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._pipes: list[_Pipe] = []
        self._stop = False
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def retarget(self, port: int) -> None:
        """Send new connections to another Redis and cut every existing one (a failover)."""
        self.target_port = port
        self._close_all()

    def partition(self) -> None:
        """Drop everything from now on (existing and new connections)."""
        self.partitioned = True
        with self._lock:
            for p in self._pipes:
                p.black = True

    def heal(self) -> None:
        """End a partition and a blackhole: stalled connections are closed, new ones work."""
        self.partitioned = False
        self.blackhole_marker = None
        with self._lock:
            stalled = [p for p in self._pipes if p.black]
        for p in stalled:
            p.close()

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self.listener.close()
        self._close_all()

    def _close_all(self) -> None:
        with self._lock:
            pipes, self._pipes = self._pipes, []
        for p in pipes:
            p.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()  # Redis is down: the client sees a refused connection
                continue
            upstream.settimeout(None)
            pipe = _Pipe(client, upstream)
            pipe.black = self.partitioned
            with self._lock:
                self._pipes.append(pipe)
            threading.Thread(target=self._up, args=(pipe,), daemon=True).start()
            threading.Thread(target=self._down, args=(pipe,), daemon=True).start()

    def _up(self, pipe: _Pipe) -> None:
        with contextlib.suppress(OSError):
            while data := pipe.client.recv(65536):
                marker = self.blackhole_marker
                if marker is not None and marker in data:
                    pipe.black = True
                if pipe.black:
                    continue
                if self.latency:
                    time.sleep(self.latency)
                if self.drop_reply_share and self._rng.random() < self.drop_reply_share:
                    pipe.black = True  # the reply, whenever it comes, is not forwarded
                    pipe.upstream.sendall(data)
                    time.sleep(0.05)  # Redis runs the command meanwhile
                    self.dropped_replies += 1
                    if self.drop_hangs:
                        continue  # nothing more is forwarded; the client gives up on its own
                    break
                pipe.upstream.sendall(data)
        pipe.close()

    def _down(self, pipe: _Pipe) -> None:
        with contextlib.suppress(OSError):
            while data := pipe.upstream.recv(65536):
                if pipe.black:
                    continue
                if self.latency:
                    time.sleep(self.latency)
                pipe.client.sendall(data)
        pipe.close()
