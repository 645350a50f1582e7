"""The worker's small HTTP server: ``/metrics``, ``/healthz`` and ``/readyz``.

Started by the worker loop on ``WORKERFLEET_METRICS_PORT`` (0 disables it). It runs on the
worker's control thread (the one that also renews leases), not on the event loop that runs
handlers, so a handler that blocks its loop cannot make the probes hang; instead ``/healthz``
reports the stalled loop. Kubelet probes and Prometheus scrapes are its only clients.

``/healthz`` is green only while the last successful Redis round trip (of either connection: the
job loop's or the control thread's) and the last tick of the job loop are both recent (see
:class:`HealthState`). ``/readyz`` says whether the worker can take jobs: the job loop's own
broker calls (fetches) have been answered, and the last of them was; not while draining. The
control thread's renewals do not count there: they travel on a connection of their own, and a
worker whose fetches fail takes no job however well it renews.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from worker_runtime import metrics

_MAX_REQUEST_BYTES = 8192


@dataclass(frozen=True)
class HealthReport:
    """What ``/healthz`` answers."""

    healthy: bool
    redis_age_seconds: float | None
    loop_age_seconds: float
    draining: bool
    detail: str


class HealthState:
    """Thread-safe liveness facts written by the worker and read by the probes.

    Plain float assignments are atomic under the GIL, so writers on the hot path pay one
    attribute store; readers tolerate a value that is a few microseconds stale.
    """

    def __init__(self, stale_after_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.stale_after_seconds = stale_after_seconds
        self._clock = clock
        self.started_at = clock()
        self.last_redis_ok: float | None = None
        self.last_loop_tick = self.started_at
        # The job loop's fetch calls (readiness): answered at least once, and since when its
        # calls have failed without one answered (None while the last one was answered).
        self.fetch_answered = False
        self.fetch_failing_since: float | None = None
        self.draining = False
        self.stopped = False

    def redis_ok(self) -> None:
        """Record a successful Redis round trip now."""
        self.last_redis_ok = self._clock()

    def fetch_ok(self) -> None:
        """Record that a call of the job loop's fetch lane was answered now."""
        self.fetch_answered = True
        self.fetch_failing_since = None

    def fetch_failed(self) -> None:
        """Record that a call of the job loop's fetch lane (or opening its broker) failed now."""
        if self.fetch_failing_since is None:
            self.fetch_failing_since = self._clock()

    def loop_tick(self) -> None:
        """Record that the job loop is alive now."""
        self.last_loop_tick = self._clock()

    def build_report(self) -> HealthReport:
        """Decide liveness from the recorded facts."""
        now = self._clock()
        redis_age = None if self.last_redis_ok is None else now - self.last_redis_ok
        loop_age = now - self.last_loop_tick
        # Before the first round trip the worker gets one staleness window of grace.
        effective_redis_age = now - self.started_at if redis_age is None else redis_age
        problems = []
        if effective_redis_age > self.stale_after_seconds:
            problems.append(f"no successful Redis round trip for {effective_redis_age:.1f}s")
        if loop_age > self.stale_after_seconds:
            problems.append(f"job loop stalled for {loop_age:.1f}s")
        return HealthReport(
            healthy=not problems,
            redis_age_seconds=redis_age,
            loop_age_seconds=loop_age,
            draining=self.draining,
            detail="; ".join(problems) or "ok",
        )

    def ready(self) -> bool:
        """Ready means: the job loop's fetches were answered, the last one too, not draining,
        and healthy.

        Liveness has a grace window before the first round trip; readiness has none, or a pod
        with a wrong Redis URL would be counted available by a rollout. Only the job loop's own
        calls count: the control thread's renewals succeeding say nothing of whether this
        worker can fetch a job (its connection may be broken while theirs works).
        """
        return (
            self.fetch_answered
            and self.fetch_failing_since is None
            and not self.draining
            and not self.stopped
            and self.build_report().healthy
        )


class HealthServer:
    """An asyncio HTTP/1.1 server (one request per connection) for probes and scrapes."""

    def __init__(
        self, state: HealthState, worker_metrics: metrics.WorkerMetrics, host: str, port: int
    ) -> None:
        self.state = state
        self.metrics = worker_metrics
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self.bound_port: int | None = None

    async def start(self) -> None:
        """Listen; ``bound_port`` tells the real port when 0 was not asked for but chosen."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.bound_port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close the socket."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5.0)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            writer.close()
            return
        try:
            if len(head) > _MAX_REQUEST_BYTES:
                await self._respond(writer, 431, b"request too large\n", "text/plain")
                return
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split(" ")
            method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
            path = path.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                await self._respond(writer, 405, b"method not allowed\n", "text/plain")
            elif path == "/metrics":
                body = self.metrics.exposition()
                await self._respond(writer, 200, body, "text/plain; version=0.0.4; charset=utf-8")
            elif path == "/healthz":
                report = self.state.build_report()
                body = json.dumps(
                    {
                        "healthy": report.healthy,
                        "detail": report.detail,
                        "redis_age_seconds": report.redis_age_seconds,
                        "loop_age_seconds": round(report.loop_age_seconds, 3),
                        "draining": report.draining,
                    }
                ).encode()
                await self._respond(
                    writer, 200 if report.healthy else 503, body, "application/json"
                )
            elif path == "/readyz":
                ready = self.state.ready()
                body = json.dumps({"ready": ready, "draining": self.state.draining}).encode()
                await self._respond(writer, 200 if ready else 503, body, "application/json")
            else:
                await self._respond(writer, 404, b"not found\n", "text/plain")
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _respond(writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str) -> None:
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Unavailable"}.get(
            status, "Error"
        )
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode("latin-1")
        writer.write(head + body)
        await writer.drain()
