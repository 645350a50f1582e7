"""A TCP proxy on loopback that, once armed, loses the reply of the next matching command.

Used by the lost-reply tests (``test_fetch_reply_lost.py``: a fetch; ``test_enqueue_resent.py``:
an enqueue). It forwards the command that carries one of ``markers`` (e.g. a script's SHA),
lets the server run it, then closes that client connection without forwarding the reply: the
command ran, the client never hears of it and (if it re-sends) reconnects through the proxy,
which is disarmed by then. Everything else passes through. Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class CuttingProxy:
    """Forward 127.0.0.1:<port> to a redis-server; ``armed`` cuts the next matching reply.

    ``hold``: when given, the cut connection stays open (the client waits for its reply)
    until the test sets it (bounded: 10 s) — time to act between the command and its re-send.
    """

    def __init__(
        self,
        target_port: int,
        markers: tuple[bytes, ...],
        *,
        hold: threading.Event | None = None,
    ) -> None:
        self.target_port = target_port
        self.markers = markers
        self.hold = hold
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.armed = threading.Event()
        self.cut_done = threading.Event()  # set once a reply was lost and its connection closed
        self.cuts = 0
        self.matched = 0  # matching commands that went through to the server
        self._sockets: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            cut = threading.Event()
            threading.Thread(target=self._up, args=(client, upstream, cut), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, cut), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket, cut: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                matches = any(marker in data for marker in self.markers)
                self.matched += matches
                if self.armed.is_set() and matches:
                    self.armed.clear()
                    cut.set()  # from now on nothing goes back to this client
                    upstream.sendall(data)
                    # counted before the wait: a client whose socket timed out may have re-sent
                    # and finished while this thread still holds the cut connection
                    self.cuts += 1
                    if self.hold is not None:
                        self.hold.wait(10.0)
                    else:
                        threading.Event().wait(0.3)  # the server runs the command meanwhile
                    break
                upstream.sendall(data)
        _close(client, upstream)
        if cut.is_set():
            self.cut_done.set()

    def _down(self, upstream: socket.socket, client: socket.socket, cut: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while (data := upstream.recv(65536)) and not cut.is_set():
                client.sendall(data)
        _close(client, upstream)

    def close(self) -> None:
        self._stop = True
        self.listener.close()
        _close(*self._sockets)


def _close(*socks: socket.socket) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()
