"""The operator's read-only view of a pool's queue: one stats read per poll, clients cached.

Called by ``shell.scaler`` (the per-pool loop). Reads through the broker seam: each pool's queue
is a ``worker_runtime.brokers.base.QueueProbe`` (``fetch_stats``: one read-only round trip, errors
in the runtime's taxonomy), here the Redis broker on a client from
``worker_runtime.brokers.redis.connection`` (the URL in the pool's Secret). Clients are cached per
(Secret, key, resourceVersion) so that pools sharing a Secret share a connection pool and a rotated
Secret gets a new client (and new probes). The URL never leaves this module's memory: error texts
are scrubbed of it before they are returned.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from dataclasses import dataclass

from worker_runtime.brokers import base
from worker_runtime.brokers.redis import broker as redis_broker
from worker_runtime.brokers.redis import connection
from workerfleet_operator import autoscaling
from workerfleet_operator.shell import kube


@dataclass(frozen=True)
class ClientKey:
    namespace: str
    secret: str
    key: str
    resource_version: str


class InvalidRedisUrlError(ValueError):
    """The Secret's value is not a Redis URL we can use (the message never contains it)."""


def check_redis_url(value: str) -> None:
    """Raise :class:`InvalidRedisUrlError` unless ``value`` is a Redis URL the workers accept.

    The check is the runtime's own parser (``connection.parse_redis_url``), so the operator
    never holds a pool for a URL its workers would use (multi-host Sentinel URLs included).
    """
    try:
        connection.parse_redis_url(value)
    except connection.InvalidRedisURL as exc:
        raise InvalidRedisUrlError(str(exc)) from None


def identify_queue(url: str, queue: str) -> str:
    """Where a queue lives, without credentials: ``kind://host:port[,...]/[service/]db queue``.

    Queue keys carry no Kubernetes namespace (producers share a queue by name), so two pools
    with equal identities read the same keys. Read with the runtime's URL parser (default
    ports and db filled in, hosts lower-cased, TLS or not alike); two names for one server are
    not recognised. ``url`` has passed :func:`check_redis_url`.
    """
    target = connection.parse_redis_url(url)
    if target.kind == "unix":
        where = target.socket_path or ""
    else:
        where = ",".join(f"{host.lower()}:{port}" for host, port in target.hosts)
    service = f"{target.service_name}/" if target.service_name is not None else ""
    return f"{target.kind}://{where}/{service}{target.db} {queue}"


def redact(text: str, secret: kube.SecretValue | None) -> str:
    """Remove the URL and its password from an error text before it is logged or written."""
    if secret is None or not secret.value:
        return text
    text = text.replace(secret.value, "<redis-url>")
    try:
        password = urllib.parse.urlsplit(secret.value).password
    except ValueError:
        password = None
    if password:
        text = text.replace(password, "***")
        text = text.replace(urllib.parse.unquote(password), "***")
    return text


class QueueReader:
    """Redis clients keyed by Secret version, a queue probe per (client, queue), one stats call
    per poll."""

    def __init__(self, *, socket_timeout: float = 2.0) -> None:
        self._socket_timeout = socket_timeout
        self._clients: dict[ClientKey, connection.AsyncClient] = {}
        self._probes: dict[tuple[ClientKey, str], base.QueueProbe] = {}
        self._closing: set[asyncio.Future[None]] = set()

    def _fetch_client(self, key: ClientKey, secret: kube.SecretValue) -> connection.AsyncClient:
        client = self._clients.get(key)
        if client is None:
            for old in [
                k
                for k in self._clients
                if (k.namespace, k.secret, k.key) == (key.namespace, key.secret, key.key)
            ]:
                # a rotated Secret: close the old pool in the background, keep a reference
                stale = self._clients.pop(old)
                self._forget_probes(old)
                task = asyncio.ensure_future(stale.aclose())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            client = connection.fetch_client(secret.value, socket_timeout=self._socket_timeout)
            self._clients[key] = client
        return client

    def _probe(self, key: ClientKey, secret: kube.SecretValue, queue: str) -> base.QueueProbe:
        probe = self._probes.get((key, queue))
        if probe is None:
            client = self._fetch_client(key, secret)
            # The broker does not own the shared client: closing is this reader's job.
            probe = self._probes[(key, queue)] = redis_broker.RedisBroker(client, queue)
        return probe

    def _forget_probes(self, key: ClientKey) -> None:
        for probe_key in [k for k in self._probes if k[0] == key]:
            del self._probes[probe_key]

    async def fetch_observation(
        self, key: ClientKey, secret: kube.SecretValue, queue: str, *, deadline_seconds: float
    ) -> autoscaling.Observation:
        """Read the queue's stats in one round trip; a failure becomes an Observation error."""
        try:
            probe = self._probe(key, secret, queue)
            async with asyncio.timeout(deadline_seconds):
                queue_stats = await probe.fetch_stats()
        except Exception as exc:  # any failure is "metric unavailable" for the scaler
            return autoscaling.Observation(
                stats=None, error=redact(f"{type(exc).__name__}: {exc}", secret)
            )
        return autoscaling.Observation(stats=queue_stats, error=None)

    def open_client_count(self) -> int:
        """How many Redis clients (connection pools) are cached."""
        return len(self._clients)

    async def close_unused(self, in_use: set[ClientKey]) -> None:
        """Close and forget every client no pool uses any more (a deleted pool's, a rotated
        Secret's): an operator that outlives many pools keeps no connection pools for them."""
        for key in [k for k in self._clients if k not in in_use]:
            self._forget_probes(key)
            await self._clients.pop(key).aclose()

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        self._probes = {}
        for client in clients:
            await client.aclose()
