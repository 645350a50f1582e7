"""Build asyncio (and blocking) Redis clients from a URL, with timeouts and reconnect backoff.

Called by the worker process, the CLI, the producer's users and the operator (read-only stats).
:func:`parse_redis_url` is the one URL parser of all of them (the operator checks a Secret's URL
with it before using it). Supported URLs: ``redis://``, ``rediss://`` (TLS;
``?ssl_cert_reqs=none``/``ssl_ca_certs=`` as redis-py accepts), ``unix:///path?db=N``, ACL
``user:password@``, ``redis+cluster://host:port`` (Redis Cluster, any node as seed;
``rediss+cluster://``) and ``redis+sentinel://[user:pass@]host:port[,host:port...]/service[/db]``
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
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.backoff
import redis.cluster
import redis.connection
import redis.exceptions
import redis.retry
import redis.sentinel

from worker_runtime import brokers, errors

AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster
SyncClient = redis.Redis | redis.cluster.RedisCluster


SCHEMES = brokers.REDIS_SCHEMES
"""Every URL scheme this parser accepts → (kind, TLS); defined with the other brokers' schemes."""

_DEFAULT_PORTS = {"single": 6379, "cluster": 6379, "sentinel": 26379}


class InvalidRedisURL(errors.InvalidBrokerURL):
    """A Redis URL that cannot work; the message says why and never contains the URL."""


@dataclass(frozen=True)
class RedisURL:
    """A parsed Redis URL (see the module docstring for the forms)."""

    kind: str  # single | unix | sentinel | cluster
    tls: bool
    hosts: tuple[tuple[str, int], ...]  # one for single/cluster, every Sentinel for sentinel
    username: str | None
    password: str | None
    db: int
    service_name: str | None = None  # sentinel only
    socket_path: str | None = None  # unix only


def _parse_host(item: str, default_port: int) -> tuple[str, int]:
    if item.startswith("["):  # an IPv6 literal: [::1]:7000
        host, _, rest = item[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else rest
    else:
        host, sep, port_text = item.rpartition(":")
        if not sep:
            host, port_text = item, ""
    if not host:
        raise InvalidRedisURL("the URL has no host (an empty entry in its host list?)")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65_536:
        raise InvalidRedisURL("the URL has a port that is not a number from 1 to 65535")
    return host, int(port_text)


def _parse_db(text: str) -> int:
    if not text.isdigit():
        raise InvalidRedisURL("the URL's database (its path /N or ?db=N) is not a number")
    return int(text)


def parse_redis_url(url: str) -> RedisURL:
    """Parse and check a Redis URL; the one parser of the runtime, the operator and the CLI.

    Raises :class:`InvalidRedisURL` (without echoing the URL) when it cannot work.
    """
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        shown = scheme if sep and scheme.replace("+", "").isalnum() and len(scheme) < 20 else "?"
        hint = " (Sentinel URLs are redis+sentinel://)" if shown == "sentinel" else ""
        raise InvalidRedisURL(
            f"unsupported URL scheme {shown!r}{hint}; expected one of "
            + ", ".join(f"{name}://" for name in SCHEMES)
        )
    kind, tls = SCHEMES[scheme.lower()]
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise InvalidRedisURL("the value is not a parseable URL") from exc
    query = parse_qs(parts.query)
    db_text = query.get("db", [""])[0]
    userinfo, _, netloc = parts.netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    if kind == "unix":
        if not parts.path:
            raise InvalidRedisURL("a unix:// URL needs the socket path: unix:///path/redis.sock")
        db = _parse_db(db_text or "0")
        return RedisURL(kind, tls, (), username, password, db, None, parts.path)
    items = netloc.split(",") if netloc else []
    if not items:
        raise InvalidRedisURL("the URL has no host")
    hosts = tuple(_parse_host(item, _DEFAULT_PORTS[kind]) for item in items)
    path = [p for p in parts.path.split("/") if p]
    if kind == "sentinel":
        if not path:
            raise InvalidRedisURL(
                "a Sentinel URL needs the service name: redis+sentinel://host:port[,host:port]/name"
            )
        db = _parse_db(path[1] if len(path) > 1 else db_text or "0")
        return RedisURL(kind, tls, hosts, username, password, db, path[0])
    if len(hosts) > 1:
        many = "one seed node" if kind == "cluster" else "one host"
        hint = "" if kind == "cluster" else " (several Sentinels: redis+sentinel://)"
        raise InvalidRedisURL(f"a {scheme}:// URL names {many}{hint}")
    db = _parse_db(path[0] if path else db_text or "0")
    return RedisURL(kind, tls, hosts, username, password, db)


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


def build_client(
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
    target = parse_redis_url(url)
    if target.kind == "sentinel":
        assert target.service_name is not None
        # No re-sends to one Sentinel: the next one in the list is the retry. (redis-py's
        # default, 3 retries with 1-10 s backoff, spent ~7 s on a dead first Sentinel per
        # discovery, longer than any caller's deadline, so a live second one was never asked.)
        sentinel_kwargs: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_timeout,
            "retry": redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 0),
        }
        if target.tls:
            opts["ssl"] = True
            sentinel_kwargs["ssl"] = True
        sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
            list(target.hosts),
            sentinel_kwargs=sentinel_kwargs,
            username=target.username,
            password=target.password,
            db=target.db,
            **opts,
        )
        master: AsyncClient = sentinel.master_for(target.service_name)
        return master
    if target.kind == "cluster":
        plain = url.replace("+cluster", "", 1)
        cluster_opts = {k: v for k, v in opts.items() if k not in ("retry_on_error",)}
        cluster_opts.pop("health_check_interval", None)
        cluster_opts["retry"] = redis.asyncio.retry.Retry(
            redis.backoff.ExponentialWithJitterBackoff(base=0.05, cap=2.0), retries
        )
        return redis.asyncio.cluster.RedisCluster.from_url(plain, **cluster_opts)
    pool = redis.asyncio.ConnectionPool.from_url(url, **opts)
    pool.connection_class = HIREDIS_PACKING.get(pool.connection_class, pool.connection_class)
    client: AsyncClient = redis.asyncio.Redis.from_pool(pool)
    return client


class _HiredisPacking:
    """Packs each command with hiredis (C), as redis-py's blocking client does when hiredis is
    installed; its asyncio connections pack in Python. Same bytes, same DataError for a value
    that is not str, bytes, int or float. Packing a script call's ~28 arguments cost the
    worker ~22 us per call in Python and ~4.5 us in hiredis."""

    _packer = redis.connection.HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        packed: list[bytes] = self._packer.pack(*args)
        return packed


class HiredisConnection(_HiredisPacking, redis.asyncio.Connection):
    """``redis://`` with hiredis packing."""


class HiredisSSLConnection(_HiredisPacking, redis.asyncio.SSLConnection):
    """``rediss://`` with hiredis packing."""


class HiredisUnixConnection(_HiredisPacking, redis.asyncio.UnixDomainSocketConnection):
    """``unix://`` with hiredis packing."""


HIREDIS_PACKING: dict[type[Any], type[Any]] = {
    redis.asyncio.Connection: HiredisConnection,
    redis.asyncio.SSLConnection: HiredisSSLConnection,
    redis.asyncio.UnixDomainSocketConnection: HiredisUnixConnection,
}
"""The connection class build_client uses for each one redis-py picks from the URL's scheme
(Sentinel and Cluster keep redis-py's own)."""


def build_client_sync(url: str, *, socket_timeout: float = 5.0, retries: int = 3) -> SyncClient:
    """A blocking client for ``url`` (CLI and sync producers); same URL forms as build_client."""
    opts: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "decode_responses": True,
        "retry": redis.retry.Retry(
            redis.backoff.ExponentialWithJitterBackoff(base=0.05, cap=2.0), retries
        ),
    }
    target = parse_redis_url(url)
    if target.kind == "sentinel":
        assert target.service_name is not None
        if target.tls:
            opts["ssl"] = True
        sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
            list(target.hosts),
            sentinel_kwargs={
                "socket_timeout": socket_timeout,
                "socket_connect_timeout": socket_timeout,
                "ssl": target.tls,
                "retry": redis.retry.Retry(redis.backoff.NoBackoff(), 0),  # as build_client
            },
            username=target.username,
            password=target.password,
            db=target.db,
            **opts,
        )
        sync_master: SyncClient = sentinel.master_for(  # type: ignore[no-untyped-call, unused-ignore]
            target.service_name
        )
        return sync_master
    if target.kind == "cluster":
        return redis.cluster.RedisCluster.from_url(url.replace("+cluster", "", 1), **opts)
    return redis.Redis.from_url(url, **opts)
