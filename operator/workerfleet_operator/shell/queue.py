"""The operator's read-only view of a pool's queue: one stats read per poll, probes cached.

Called by ``shell.scaler`` (the per-pool loop) and ``shell.pool`` (the Secret check). Reads
through the broker seam: each pool's queue is a ``worker_runtime.brokers.base.QueueProbe``
(``fetch_stats``: one read-only round trip, errors in the runtime's taxonomy) on the URL in the
pool's Secret. On Redis the probe is the Redis broker on a client from
``worker_runtime.brokers.redis.connection``, cached per (Secret, key, resourceVersion) so that
pools sharing a Secret share a connection pool; on any other broker it is the broker
``worker_runtime.brokers.open_broker`` opens for the URL's scheme (RabbitMQ's reads the
management HTTP API and never opens an AMQP connection for it). A rotated Secret gets new
clients and probes, the old ones are closed. The URL never leaves this module's memory: error
texts are scrubbed of it before they are returned.

Reads through one Secret version wait for a slot (at most :data:`READS_PER_CLIENT` at once):
redis-py's connection pool does not queue callers, it raises ``MaxConnectionsError`` past its
size (100), and a thousand pools sharing a Secret poll in step. The wait for a slot is not part
of a read's deadline: a busy operator is not an unreachable broker.

Its one write: a pool serving an event subscription (``spec.queue.subscription``) has the
subscription registered through the same broker's ``Topics.subscribe`` (idempotent; see
:meth:`QueueReader.ensure_subscription`), so events reach the queue even at zero replicas.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Awaitable
from dataclasses import dataclass

from worker_runtime import brokers, errors
from worker_runtime import envelope as envelope_mod
from worker_runtime.brokers import base
from worker_runtime.brokers.rabbitmq import parse_url as parse_rabbitmq_url
from worker_runtime.brokers.redis import broker as redis_broker
from worker_runtime.brokers.redis import connection
from worker_runtime.brokers.sqs import settings as sqs_settings
from workerfleet_operator import autoscaling, plan
from workerfleet_operator.shell import kube

BLOCK_SCHEMES: dict[str, frozenset[str]] = {
    "redis": frozenset(brokers.REDIS_SCHEMES),
    "rabbitmq": frozenset({"amqp", "amqps"}),
}
"""The URL schemes each broker block of ``spec.queue`` accepts."""

PROBE_OPEN_SECONDS = 10.0
"""Bound of opening a pool's probe (lookups included); a stats read has the poll's deadline."""


@dataclass(frozen=True)
class ClientKey:
    namespace: str
    secret: str
    key: str
    resource_version: str


class InvalidBrokerUrlError(ValueError):
    """The Secret's value is not a URL of the pool's broker we can use (the message never
    contains it)."""


def check_broker_url(value: str, broker: str) -> None:
    """Raise :class:`InvalidBrokerUrlError` unless ``value`` is a URL of ``broker`` (the name of
    the pool's broker block) that the workers accept.

    The checks are the runtime's own parsers (``connection.parse_redis_url``, the RabbitMQ
    package's ``parse_url``), so the operator never holds a pool for a URL its workers would
    refuse (multi-host Sentinel URLs included).
    """
    try:
        scheme = brokers.scheme_of(value)
    except errors.ConfigError as exc:
        raise InvalidBrokerUrlError(str(exc)) from None
    accepted = BLOCK_SCHEMES.get(broker, frozenset())
    if scheme not in accepted:
        raise InvalidBrokerUrlError(
            f"queue.{broker} needs a URL starting with "
            + " or ".join(f"{s}://" for s in sorted(accepted))
            + f", not {scheme}://"
        )
    try:
        if scheme in brokers.REDIS_SCHEMES:
            connection.parse_redis_url(value)
        else:
            parse_rabbitmq_url(value)
    except (connection.InvalidRedisURL, errors.ConfigError) as exc:
        raise InvalidBrokerUrlError(str(exc)) from None


def identify_queue(url: str, queue: str) -> str:
    """Where a queue lives, without credentials: ``kind://host:port[,...]/[service/]db queue`` on
    Redis, ``amqp://host:port/vhost queue`` on RabbitMQ, ``sqs://endpoint-or-region sqs-name`` on
    SQS.

    Queue names carry no Kubernetes namespace (producers share a queue by name), so two pools
    with equal identities read the same queue. Read with the runtime's URL parsers (default
    ports filled in, hosts lower-cased, TLS or not alike); two names for one server are not
    recognised. ``url`` has passed :func:`check_broker_url`.
    """
    scheme = brokers.scheme_of(url)
    if scheme == "sqs":
        # the SQS queue the normal priority lands in names the set (prefix, .fifo included)
        sqs = sqs_settings.parse_sqs_url(url)
        names = sqs_settings.build_queue_names(queue, sqs)
        server = sqs.endpoint_url or f"aws:{sqs.region or ''}"
        return f"sqs://{server} {names.for_priority(envelope_mod.Priority.NORMAL)}"
    if scheme in brokers.REDIS_SCHEMES:
        target = connection.parse_redis_url(url)
        if target.kind == "unix":
            where = target.socket_path or ""
        else:
            where = ",".join(f"{host.lower()}:{port}" for host, port in target.hosts)
        service = f"{target.service_name}/" if target.service_name is not None else ""
        return f"{target.kind}://{where}/{service}{target.db} {queue}"
    parsed = urllib.parse.urlsplit(parse_rabbitmq_url(url)[0])
    port = parsed.port or (5671 if parsed.scheme.lower() == "amqps" else 5672)
    vhost = urllib.parse.unquote(parsed.path[1:]) or "/"
    return f"amqp://{(parsed.hostname or '').lower()}:{port}/{vhost} {queue}"


def redact(text: str, secret: kube.SecretValue | None) -> str:
    """Remove the URL and its password from an error text before it is logged or written."""
    if secret is None or not secret.value:
        return text
    text = text.replace(secret.value, "<broker-url>")
    try:
        password = urllib.parse.urlsplit(secret.value).password
    except ValueError:
        password = None
    if password:
        text = text.replace(password, "***")
        text = text.replace(urllib.parse.unquote(password), "***")
    return text


READS_PER_CLIENT = 50
"""Stats reads in flight per Secret version; below redis-py's pool size (100), which raises
rather than waits past it."""


class QueueReader:
    """Queue probes per (Secret version, queue): shared Redis clients keyed by Secret version,
    brokers opened for any other scheme; one stats call per poll."""

    def __init__(self, *, socket_timeout: float = 2.0) -> None:
        self._socket_timeout = socket_timeout
        self._clients: dict[ClientKey, connection.AsyncClient] = {}
        self._probes: dict[tuple[ClientKey, str], base.QueueProbe] = {}
        # Indexes, so that a first read, a rotation and a forget touch only their own Secret:
        # the versions of each Secret (namespace, name, key) with a client or a probe, and the
        # queues probed per version. A first read used to scan every client and probe to find
        # a rotated version: quadratic in the pools (10,000 pools on one Secret: 50 million
        # key comparisons while they converged).
        self._versions: dict[tuple[str, str, str], set[ClientKey]] = {}
        self._queues: dict[ClientKey, set[str]] = {}
        # probes this reader opened itself (not on a shared client): closing them is its job
        self._opened: dict[tuple[ClientKey, str], base.Broker] = {}
        self._slots: dict[ClientKey, asyncio.Semaphore] = {}
        self._closing: set[asyncio.Future[object]] = set()

    def _close_in_background(self, closing: Awaitable[object]) -> None:
        task = asyncio.ensure_future(closing)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _retire_rotated(self, key: ClientKey) -> None:
        """A rotated Secret: forget and close (in the background) what the old version opened."""
        versions = self._versions.get((key.namespace, key.secret, key.key), set())
        for old in [k for k in versions if k != key]:
            for closing in self._forget(old):
                self._close_in_background(closing)

    def _index(self, key: ClientKey, queue: str) -> None:
        """Record that ``key`` holds something for ``queue`` (a probe on its shared client, or
        a broker opened for it), so that ``_forget`` finds it."""
        self._versions.setdefault((key.namespace, key.secret, key.key), set()).add(key)
        self._queues.setdefault(key, set()).add(queue)

    def _known_keys(self) -> set[ClientKey]:
        return {k for versions in self._versions.values() for k in versions}

    def _forget_probe(self, key: ClientKey, queue_name: str) -> list[Awaitable[object]]:
        """Drop the probe of ``queue_name`` through ``key`` (its client stays); return the
        coroutine that closes it, if this reader opened it."""
        probe_key = (key, queue_name)
        self._probes.pop(probe_key, None)
        opened = self._opened.pop(probe_key, None)
        return [] if opened is None else [opened.close()]

    def _forget(self, key: ClientKey) -> list[Awaitable[object]]:
        """Drop every probe and client of ``key``; return the coroutines that close them."""
        closings: list[Awaitable[object]] = []
        self._slots.pop(key, None)
        for queue_name in self._queues.pop(key, set()):
            closings += self._forget_probe(key, queue_name)
        client = self._clients.pop(key, None)
        if client is not None:
            closings.append(client.aclose())
        ident = (key.namespace, key.secret, key.key)
        versions = self._versions.get(ident)
        if versions is not None:
            versions.discard(key)
            if not versions:
                del self._versions[ident]
        return closings

    def _fetch_client(self, key: ClientKey, secret: kube.SecretValue) -> connection.AsyncClient:
        client = self._clients.get(key)
        if client is None:
            client = connection.build_client(secret.value, socket_timeout=self._socket_timeout)
            self._clients[key] = client
        return client

    async def _probe(self, key: ClientKey, secret: kube.SecretValue, queue: str) -> base.QueueProbe:
        cached = self._probes.get((key, queue))
        if cached is not None:
            return cached
        self._retire_rotated(key)
        probe: base.QueueProbe
        if brokers.scheme_of(secret.value) in brokers.REDIS_SCHEMES:
            client = self._fetch_client(key, secret)
            self._index(key, queue)
            # The broker does not own the shared client: closing is this reader's job.
            probe = redis_broker.RedisBroker(client, queue)
        else:
            opened = await brokers.open_broker(
                secret.value,
                queue,
                socket_timeout=self._socket_timeout,
                # read-only: the SQS probe looks queues up and never creates or changes one
                # (opened otherwise it reset the workers' visibility timeout and redrive limit)
                role=base.QueueRole.READER,
            )
            self._opened[(key, queue)] = opened
            self._index(key, queue)  # closed by _forget, whether it can be a probe or not
            if not isinstance(opened, base.QueueProbe):
                raise errors.CapabilityMissing("this broker cannot report queue statistics")
            probe = opened
        self._probes[(key, queue)] = probe
        return probe

    async def fetch_observation(
        self, key: ClientKey, secret: kube.SecretValue, queue: str, *, deadline_seconds: float
    ) -> autoscaling.Observation:
        """Read the queue's stats in one round trip; a failure becomes an Observation error.

        A broker that declares it cannot measure the oldest job's age
        (``Capabilities.oldest_job_age``) says so in the Observation, so the autoscaler turns
        its oldest-age reaction off and the status explains why.
        """
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = asyncio.Semaphore(READS_PER_CLIENT)
        try:
            async with slots:
                # Opening has a bound of its own, longer than a read's: the SQS probe looks its
                # queues up on open, and an open cut short by the read deadline would start over
                # at every poll on a slow link and never finish.
                async with asyncio.timeout(max(deadline_seconds, PROBE_OPEN_SECONDS)):
                    probe = await self._probe(key, secret, queue)
                async with asyncio.timeout(deadline_seconds):
                    queue_stats = await probe.fetch_stats()
        except Exception as exc:  # any failure is "metric unavailable" for the scaler
            return autoscaling.Observation(
                stats=None, error=redact(f"{type(exc).__name__}: {exc}", secret)
            )
        capabilities = getattr(probe, "capabilities", None)
        if capabilities is not None and not capabilities.oldest_job_age:
            scheme = brokers.scheme_of(secret.value)
            return autoscaling.Observation(
                stats=queue_stats, error=None, age_unavailable=plan.describe_age_unavailable(scheme)
            )
        return autoscaling.Observation(stats=queue_stats, error=None)

    async def ensure_subscription(
        self,
        key: ClientKey,
        secret: kube.SecretValue,
        queue: str,
        topic: str,
        group: str,
        *,
        deadline_seconds: float,
    ) -> str | None:
        """Register subscription ``group`` of ``topic`` (whose queue is ``queue``) in the broker
        holding it; idempotent. None when it is registered, else why not (scrubbed text): the
        broker is unreachable, or it has no topics (Redis Cluster, SQS today)."""
        try:
            async with asyncio.timeout(deadline_seconds):
                probe = await self._probe(key, secret, queue)
                if not isinstance(probe, base.Topics):
                    raise errors.CapabilityMissing(
                        f"the {type(probe).__name__} has no topics", operation="subscribe"
                    )
                await probe.subscribe(topic, group)
        except Exception as exc:  # reported by the caller; retried at the next poll
            return redact(f"{type(exc).__name__}: {exc}", secret)
        return None

    def open_client_count(self) -> int:
        """How many clients (Redis connection pools, brokers opened for a pool) are cached."""
        return len(self._clients) + len(self._opened)

    async def close_unused(self, in_use: set[tuple[ClientKey, str]]) -> None:
        """Close and forget every probe and client no pool uses any more: ``in_use`` holds the
        (Secret version, queue) of every running pool. An operator that outlives many pools
        keeps no connection pools for them.

        By queue too, not only by Secret version: a deleted pool's probe stayed open for as
        long as another pool read through the same Secret (a RabbitMQ probe holds its HTTP
        session, and an AMQP connection once it registered a subscription).
        """
        keys = {key for key, _ in in_use}
        for key in self._known_keys() - keys:
            for closing in self._forget(key):
                await closing
        for key in keys:
            queues = self._queues.get(key, set())
            for queue_name in [q for q in queues if (key, q) not in in_use]:
                queues.discard(queue_name)
                for closing in self._forget_probe(key, queue_name):
                    await closing

    async def close(self) -> None:
        for key in self._known_keys():
            for closing in self._forget(key):
                await closing
