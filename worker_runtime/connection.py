"""Build asyncio (and blocking) Redis clients from a URL, with timeouts and reconnect backoff.

Called by the worker process, the CLI, the producer's users and the operator (read-only stats).
Supported URLs: ``redis://``, ``rediss://`` (TLS; ``?ssl_cert_reqs=none``/``ssl_ca_certs=`` as
redis-py accepts), ACL ``user:password@``, ``redis+cluster://host:port`` (Redis Cluster, any node
as seed) and ``redis+sentinel://[user:pass@]host:port[,host:port...]/service_name[/db]``
(``rediss+sentinel://`` for TLS). Blocking reads in the engine are bounded well below
``socket_timeout``.

Automatic retries (``retries=``): redis-py re-sends a command whose connection failed or whose
reply timed out, with exponential backoff. That is right for idempotent calls (stats, renewals,
the CLI's reads) and wrong for a non-idempotent script: a re-sent ``fetch`` leases a second
batch while the first one's jobs, leased by the call whose reply was lost, are held by nobody
until their lease expires. The worker's job loop therefore uses ``retries=0`` and handles
errors itself (backoff, reconnect, then ``QueueClient.adopt`` to take those jobs back).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.backoff
import redis.cluster
import redis.exceptions
import redis.retry
import redis.sentinel

AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster
SyncClient = redis.Redis | redis.cluster.RedisCluster


@dataclass(frozen=True)
class SentinelTarget:
    """A parsed ``redis+sentinel://`` URL."""

    hosts: tuple[tuple[str, int], ...]
    service_name: str
    db: int
    username: str | None
    password: str | None
    tls: bool


def build_sentinel_target(url: str) -> SentinelTarget:
    """Parse ``redis+sentinel://[user:pass@]h1:p1[,h2:p2]/service[/db]`` (pure)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    username: str | None = None
    password: str | None = None
    if "@" in netloc:
        creds, netloc = netloc.rsplit("@", 1)
        if ":" in creds:
            user, pw = creds.split(":", 1)
            username, password = (unquote(user) or None), unquote(pw)
        else:
            password = unquote(creds)
    hosts: list[tuple[str, int]] = []
    for item in netloc.split(","):
        host, _, port = item.rpartition(":")
        if not host:
            host, port = item, "26379"
        hosts.append((host, int(port or 26379)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("a sentinel URL needs the service name: redis+sentinel://host:port/name")
    db = int(path[1]) if len(path) > 1 else 0
    return SentinelTarget(
        hosts=tuple(hosts),
        service_name=path[0],
        db=db,
        username=username,
        password=password,
        tls=parts.scheme.startswith("rediss"),
    )


def build_client_options(
    *,
    socket_timeout: float,
    health_check_interval: float,
    retries: int,
) -> dict[str, Any]:
    """Keyword arguments shared by every client: timeouts, keepalive checks, retry policy."""
    return {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "health_check_interval": health_check_interval,
        "decode_responses": True,
        "retry": redis.asyncio.retry.Retry(
            redis.backoff.ExponentialWithJitterBackoff(base=0.05, cap=2.0), retries
        ),
        "retry_on_error": [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
    }


def fetch_client(
    url: str,
    *,
    socket_timeout: float = 5.0,
    health_check_interval: float = 15.0,
    retries: int = 3,
) -> AsyncClient:
    """An asyncio client for ``url`` (connections are opened lazily, on first use).

    ``retries``: automatic re-sends after a connection error or timeout; pass 0 for a client
    that sends non-idempotent scripts (see the module docstring).
    """
    opts = build_client_options(
        socket_timeout=socket_timeout,
        health_check_interval=health_check_interval,
        retries=retries,
    )
    scheme = urlsplit(url).scheme
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        target = build_sentinel_target(url)
        sentinel_kwargs: dict[str, Any] = {"socket_timeout": socket_timeout}
        if target.tls:
            opts["ssl"] = True
            sentinel_kwargs["ssl"] = True
        sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(target.hosts),
            sentinel_kwargs=sentinel_kwargs,
            username=target.username,
            password=target.password,
            db=target.db,
            **opts,
        )
        master: AsyncClient = sentinel.master_for(target.service_name)
        return master
    if scheme in ("redis+cluster", "rediss+cluster"):
        plain = url.replace("+cluster", "", 1)
        cluster_opts = {k: v for k, v in opts.items() if k not in ("retry_on_error",)}
        cluster_opts.pop("health_check_interval", None)
        cluster_opts["retry"] = redis.asyncio.retry.Retry(
            redis.backoff.ExponentialWithJitterBackoff(base=0.05, cap=2.0), retries
        )
        return redis.asyncio.cluster.RedisCluster.from_url(plain, **cluster_opts)
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"unsupported Redis URL scheme {scheme!r}")
    return redis.asyncio.Redis.from_url(url, **opts)


def fetch_client_sync(url: str, *, socket_timeout: float = 5.0, retries: int = 3) -> SyncClient:
    """A blocking client for ``url`` (CLI and sync producers); same URL forms as fetch_client."""
    opts: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "decode_responses": True,
        "retry": redis.retry.Retry(
            redis.backoff.ExponentialWithJitterBackoff(base=0.05, cap=2.0), retries
        ),
    }
    scheme = urlsplit(url).scheme
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        target = build_sentinel_target(url)
        if target.tls:
            opts["ssl"] = True
        sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(target.hosts),
            sentinel_kwargs={"socket_timeout": socket_timeout, "ssl": target.tls},
            username=target.username,
            password=target.password,
            db=target.db,
            **opts,
        )
        sync_master: SyncClient = sentinel.master_for(  # type: ignore[no-untyped-call]
            target.service_name
        )
        return sync_master
    if scheme in ("redis+cluster", "rediss+cluster"):
        return redis.cluster.RedisCluster.from_url(url.replace("+cluster", "", 1), **opts)
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"unsupported Redis URL scheme {scheme!r}")
    return redis.Redis.from_url(url, **opts)
