"""Queue backends behind one seam, and :func:`open_broker`: a broker from a URL.

The worker, the producer, the CLI and the operator program against the protocols of
:mod:`worker_runtime.brokers.base`; each backend lives in its own module or subpackage and is
imported only when a URL asks for it (:data:`SCHEMES`), so an installation without aio-pika or
botocore runs Redis, and the operator's pure core never imports a client library. This
``__init__`` imports none itself (the backend is imported by name, inside :func:`open_broker`).

A backend module offers one coroutine, ``open_from_url(url, queue, *, options, **settings)``,
returning an object that implements ``Broker``, ``QueueProbe`` and ``DeadLetters``.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from worker_runtime import errors
from worker_runtime.brokers import base

REDIS_SCHEMES: dict[str, tuple[str, bool]] = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "unix": ("unix", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
"""Every Redis URL scheme → (kind, TLS); ``brokers/redis/connection.py`` parses exactly these."""

_REDIS = "worker_runtime.brokers.redis.broker"

SCHEMES: dict[str, str] = {
    **dict.fromkeys(REDIS_SCHEMES, _REDIS),
    "memory": "worker_runtime.brokers.memory",
    "amqp": "worker_runtime.brokers.rabbitmq",
    "amqps": "worker_runtime.brokers.rabbitmq",
    "sqs": "worker_runtime.brokers.sqs",
}
"""Every broker URL scheme workerfleet knows → the module that serves it. The docs name these."""

_EXTRAS = {
    # aio-pika is one of workerfleet's own dependencies: there is no rabbitmq extra
    "worker_runtime.brokers.rabbitmq": "reinstall workerfleet, which depends on aio-pika",
    "worker_runtime.brokers.sqs": "install workerfleet[sqs]",
}


def scheme_of(url: str) -> str:
    """The URL's scheme, lower-cased, when a broker serves it; else
    :class:`~worker_runtime.errors.UnsupportedScheme` (the URL itself is never echoed)."""
    scheme, sep, _ = url.partition("://")
    if sep and scheme.lower() in SCHEMES:
        return scheme.lower()
    shown = scheme if sep and scheme.replace("+", "").isalnum() and len(scheme) < 20 else "?"
    raise errors.UnsupportedScheme(
        f"unsupported URL scheme {shown!r}; expected one of "
        + ", ".join(f"{name}://" for name in SCHEMES)
    )


def backend_module(url: str) -> Any:
    """Import and return the module serving ``url``'s scheme.

    Raises :class:`~worker_runtime.errors.BrokerNotInstalled` when the scheme is known but its
    module or client package is missing here (saying which to install).
    """
    name = SCHEMES[scheme_of(url)]
    extra = _EXTRAS.get(name)
    hint = f"; {extra}" if extra else ""
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        missing = exc.name or name
        raise errors.BrokerNotInstalled(
            f"the {scheme_of(url)}:// broker is not available here ({missing} is not installed"
            f"{hint})"
        ) from exc
    # a broker package imports without its client library (the operator's pure core reads its
    # settings and names); it declares what a broker needs, checked before one is opened
    for package in getattr(module, "CLIENT_PACKAGES", ()):
        if importlib.util.find_spec(package) is None:
            raise errors.BrokerNotInstalled(
                f"the {scheme_of(url)}:// broker is not available here ({package} is not "
                f"installed{hint})"
            )
    return module


async def open_broker(
    url: str,
    queue: str,
    *,
    options: base.QueueOptions | None = None,
    role: base.QueueRole | str | None = None,
    **settings: Any,
) -> base.Broker:
    """The broker for ``queue`` at ``url``: Redis, memory, RabbitMQ or SQS by the URL's scheme.

    ``settings`` are the backend's own (for Redis: ``socket_timeout``, ``retries``...). The
    caller owns the result and ends it with ``await broker.close()``. Raises
    :class:`~worker_runtime.errors.ConfigError` subclasses for a URL or queue name that cannot
    work, before any connection is attempted.

    ``role`` (:class:`~worker_runtime.brokers.base.QueueRole`) says whether this opener may set
    the queue's settings: only the consumer does. Unsaid, a caller that passes ``options`` is
    the consumer (it states the queue's settings) and one that does not is a producer (it has
    none to impose, and must not reset the workers' to the defaults).
    """
    base.validate_queue_name(queue)
    module = backend_module(url)
    if role is None:
        role = base.QueueRole.PRODUCER if options is None else base.QueueRole.CONSUMER
    broker: base.Broker = await module.open_from_url(
        url, queue, options=options or base.QueueOptions(), role=base.QueueRole(role), **settings
    )
    return broker


def describe_target(url: str) -> str:
    """``scheme://host:port/db`` of a Redis URL (``scheme://host:port/path`` of another
    broker's): never its user, password or query (an SQS URL may carry keys there). What the
    console's pages and the worker's start-up line show of a broker URL."""
    import urllib.parse

    scheme = url.partition("://")[0].lower()
    if scheme not in REDIS_SCHEMES:
        try:
            parts = urllib.parse.urlsplit(url)
            host = parts.hostname or ""
            port = f":{parts.port}" if parts.port else ""
        except ValueError:
            return "(unusable broker URL)"
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}{port}{parts.path}"
    from worker_runtime.brokers.redis import connection

    try:
        parsed = connection.parse_redis_url(url)
    except connection.InvalidRedisURL:
        return "(unusable Redis URL)"
    scheme = url.partition("://")[0].lower()
    if parsed.kind == "unix":
        return f"{scheme}://{parsed.socket_path}"
    hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in parsed.hosts)
    tail = f"/{parsed.service_name}" if parsed.service_name else ""
    return f"{scheme}://{hosts}{tail}/{parsed.db}"
