"""The developer API: ``App``, task registration, ``JobContext`` and the control-flow exceptions.

Application code declares tasks on an :class:`App` and enqueues jobs through it; the worker
(:mod:`worker_runtime.worker`) looks tasks up by name in ``App.tasks``. Nothing here is imported
or resolved because a message says so: a job names a task, and only tasks registered with
``@app.task`` can run.

    app = App(queue="email-notifications")

    @app.task("send-email", retry=Retry(max_attempts=5), timeout=30)
    async def send_email(payload: Email, ctx: JobContext) -> None: ...

    await app.enqueue("send-email", Email(...), priority=Priority.HIGH)

Handlers take the validated payload (typed by the first parameter's annotation, usually a
pydantic model) and optionally a :class:`JobContext`. They finish normally (ack), raise
:class:`Reject` or a configured ``non_retryable`` type (straight to the DLQ), raise
:class:`RetryLater` (retry after the given delay or ``Retry-After``), or raise anything else
(retry with backoff until ``max_attempts``, then the DLQ).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import inspect
import logging
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Unpack, get_type_hints

from pydantic import BaseModel, TypeAdapter, ValidationError

from worker_runtime import backoff, envelope, errors, expiry, logs
from worker_runtime.brokers import base

if TYPE_CHECKING:
    import redis
    import redis.asyncio

    # Imported where events are used (enqueue, publish, subscribe), not here: its pydantic
    # EventEnvelope is not needed on a worker's start path (cold start).
    from worker_runtime import events
    from worker_runtime import producer as producer_mod
    from worker_runtime.brokers.redis import queue as queue_mod

_log = logs.get_logger("events")

Priority = envelope.Priority
HIGH = Priority.HIGH
NORMAL = Priority.NORMAL
LOW = Priority.LOW

Handler = Callable[..., Any]
F = TypeVar("F", bound=Handler)
Executor = Literal["thread", "process"]


class Reject(Exception):
    """Raise from a handler to send the job to the dead-letter queue now, without retries.

    ``dead_letter_reason`` is the reason its DLQ record carries (a
    :class:`~worker_runtime.brokers.base.DeadLetterReason` value; ``non_retryable`` unless a
    subclass says otherwise).
    """

    dead_letter_reason = "non_retryable"

    def __init__(self, reason: str = "rejected") -> None:
        super().__init__(reason)
        self.reason = reason


class RejectInvalidEvent(Reject):
    """A subscription job whose payload is not a readable event of its topic (or whose data
    does not validate at the handler's version): dead-lettered as ``invalid_payload``."""

    dead_letter_reason = "invalid_payload"


class RejectEventVersion(Reject):
    """An event this subscription cannot read (newer than it knows, or no upcaster chain to
    its version, or an upcaster that failed): dead-lettered as ``unknown_event_version``."""

    dead_letter_reason = "unknown_event_version"


class RetryLater(Exception):
    """Raise from a handler to retry after ``delay`` seconds (or an HTTP ``Retry-After`` value).

    The attempt counts toward ``max_attempts`` so a job that always asks for later still ends in
    the DLQ. Without a delay the task's backoff decides; a delay above the backoff's
    ``max_seconds`` waits ``max_seconds``. A non-finite delay, or a ``retry_after`` that is a
    naive ``datetime`` (no time zone), is refused with ``ValueError``.
    """

    def __init__(
        self,
        delay: float | None = None,
        *,
        retry_after: str | float | datetime.timedelta | datetime.datetime | None = None,
    ) -> None:
        if delay is None and isinstance(retry_after, datetime.datetime):
            # when to retry: an aware datetime; a naive one is refused as enqueue's eta is (it
            # was ignored, and the backoff decided without a word)
            delay = expiry.epoch_seconds_of(retry_after, "retry_after") - time.time()
        elif delay is None and retry_after is not None:
            # a header's text, or seconds or a timedelta: any form a client library hands
            # out (an int used to raise AttributeError in the handler)
            delay = backoff.seconds_of_retry_hint(retry_after)
        if delay is not None and not math.isfinite(delay):
            raise ValueError(f"RetryLater needs a finite delay in seconds, not {delay!r}")
        self.delay = None if delay is None else max(0.0, float(delay))
        super().__init__(f"retry requested in {self.delay}s" if self.delay is not None else "")


@dataclass(frozen=True)
class Retry:
    """Per-task retry policy; fields left ``None`` fall back to the worker settings."""

    max_attempts: int | None = None
    backoff: backoff.Backoff | None = None

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            msg = "max_attempts must be >= 1"
            raise ValueError(msg)


@dataclass(frozen=True)
class TaskSpec:
    """One registered task: what the worker needs to validate, run and settle its jobs."""

    name: str
    handler: Handler
    payload_adapter: TypeAdapter[Any]
    is_async: bool
    wants_context: bool
    retry: Retry | None
    timeout: float | None
    non_retryable: tuple[type[BaseException], ...]
    logger: logging.LoggerAdapter[logging.Logger]
    ttl: float | None = None
    on_expire: expiry.OnExpire = "dead_letter"
    executor: Executor = "thread"
    # (module, qualified name) a child process imports the handler by (process tasks only)
    handler_ref: tuple[str, str] | None = None


JOB_ID_DONE_KEY_PREFIX = "job-id:"
"""What a job without an idempotency key records done under, before its id
(:attr:`JobContext.default_done_key`)."""


class JobContext:
    """What a handler knows about the job it runs. One per delivery; cheap to create.

    ``attempt`` is 1 for the first run and grows with each recorded failure; ``deliveries``
    counts every hand-out (crashes and lease expiries too). ``lease_lost`` turns true when the
    worker learns the job was handed to someone else: a long handler can check it and stop,
    because its result will be discarded anyway.
    """

    __slots__ = (
        "_done_key",
        "_done_ttl",
        "_idempotency",
        "_loop",
        "attempt",
        "correlation_id",
        "deliveries",
        "enqueued_at",
        "headers",
        "idempotency_key",
        "job_id",
        "lease_lost",
        "leased_until",
        "logger",
        "priority",
        "queue",
        "task",
        "worker_id",
    )

    def __init__(
        self,
        *,
        job_id: str,
        task: str,
        queue: str,
        attempt: int,
        deliveries: int,
        correlation_id: str | None,
        idempotency_key: str | None,
        enqueued_at: float,
        headers: Mapping[str, str],
        priority: envelope.Priority,
        leased_until: float,
        worker_id: str,
        logger: logging.LoggerAdapter[logging.Logger],
        idempotency: Callable[[str], Awaitable[bool]] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.job_id = job_id
        self.task = task
        self.queue = queue
        self.attempt = attempt
        self.deliveries = deliveries
        self.correlation_id = correlation_id
        self.idempotency_key = idempotency_key
        self.enqueued_at = enqueued_at
        self.headers = headers
        self.priority = priority
        self.leased_until = leased_until
        self.worker_id = worker_id
        self.logger = logger
        self.lease_lost = False
        self._idempotency = idempotency
        self._loop = loop
        self._done_key: str | None = None
        self._done_ttl: float | None = None

    @property
    def default_done_key(self) -> str:
        """The key :meth:`already_done` and :meth:`mark_done_on_ack` use when given none: the
        job's idempotency key, else ``job-id:<job id>``.

        A job enqueued without an idempotency key (the default) keeps its id across retries
        and redeliveries, so the check finds what the ack of an earlier run recorded. Without
        this, ``already_done()`` answered False and ``mark_done_on_ack()`` raised after the
        side effect, failing the job: the documented idiom repeated its side effect on every
        attempt and ended in the DLQ. The prefix keeps it apart from the idempotency keys
        producers choose.
        """
        if self.idempotency_key is not None:
            return self.idempotency_key
        return JOB_ID_DONE_KEY_PREFIX + self.job_id

    async def already_done(self, key: str | None = None) -> bool:
        """Whether ``key`` (default: :attr:`default_done_key`) was recorded done by an ack."""
        if self._idempotency is None:
            return False
        return await self._idempotency(key if key is not None else self.default_done_key)

    def already_done_sync(self, key: str | None = None) -> bool:
        """:meth:`already_done` for sync handlers (they run in a worker thread)."""
        if self._loop is None:
            if self._idempotency is not None:
                # A process task's child: there is no worker loop here to ask Redis through.
                msg = "ctx.already_done_sync() is not available in a process task"
                raise RuntimeError(msg)
            return False
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            # Blocking here would wait for the very loop that has to answer.
            msg = "already_done_sync() is for sync handlers; use `await ctx.already_done()`"
            raise RuntimeError(msg)
        return asyncio.run_coroutine_threadsafe(self.already_done(key), self._loop).result(30.0)

    def mark_done_on_ack(self, key: str | None = None, *, ttl_seconds: float = 86_400.0) -> None:
        """Record ``key`` (default: :attr:`default_done_key`) as done atomically with this
        job's ack (only if the ack succeeds)."""
        key = key if key is not None else self.default_done_key
        if not key.strip():
            msg = "mark_done_on_ack needs a key that is not empty or blank"
            raise ValueError(msg)
        if not 0 < ttl_seconds <= envelope.MAX_WAIT_SECONDS:
            # inf failed the ack batch this job's ack rode in (every job in it), nan too; 0 was
            # taken as the default day
            msg = "ttl_seconds must be a number of seconds > 0, at most 3,650 days"
            raise ValueError(msg)
        self._done_key = key
        self._done_ttl = ttl_seconds

    @property
    def done_key(self) -> tuple[str | None, float | None]:
        """The idempotency key (and TTL) the ack should record, if the handler asked for one."""
        return self._done_key, self._done_ttl


def _payload_type(name: str, handler: Handler, param: str) -> Any:
    """The annotation of the handler's payload parameter (``Any`` when it has none)."""
    try:
        hints = get_type_hints(handler)
    except NameError as exc:
        # e.g. a model defined inside a function under `from __future__ import annotations`
        msg = f"task {name!r}: cannot resolve the payload annotation ({exc}); pass payload="
        raise TypeError(msg) from None
    return hints.get(param, Any)


def _first_param(handler: Handler) -> str:
    for p in inspect.signature(handler).parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            return p.name
    return ""


@dataclass(frozen=True)
class Subscription:
    """One ``@app.subscribe``: its topic, group, queue and the event version its handler reads."""

    topic: str
    group: str
    queue: str
    version: int


TASK_NAME_MAX_LENGTH = 200
"""The longest task name a job envelope carries (``JobEnvelope.task``)."""


def validate_task_name(name: object) -> None:
    """Refuse a name no job can carry: not a string, empty or blank, longer than 200 characters.

    A function in its place is ``@app.task`` written without the name: that registered nothing,
    silently, and the function itself was replaced by the decorator's inner function.
    """
    if callable(name):
        msg = 'App.task takes the task\'s name first: write @app.task("name") above the handler'
        raise TypeError(msg)
    if not isinstance(name, str):
        msg = f"a task name is a string, not {type(name).__name__}"
        raise TypeError(msg)
    if not name.strip() or len(name) > TASK_NAME_MAX_LENGTH:
        msg = f"task name {name!r} must be 1 to {TASK_NAME_MAX_LENGTH} characters, not blank"
        raise ValueError(msg)


# pydantic core-schema kinds that validate something other than a JSON object
_NOT_AN_OBJECT = frozenset(
    {
        "list", "tuple", "set", "frozenset", "generator", "int", "float", "decimal", "str",
        "bytes", "bool", "date", "datetime", "time", "timedelta", "literal", "enum", "uuid",
        "url", "multi-host-url", "complex",
    }
)  # fmt: skip


def _build_task_spec(
    name: str,
    handler: Handler,
    *,
    retry: Retry | None,
    timeout: float | None,
    non_retryable: Sequence[type[BaseException]],
    payload: type[Any] | None,
    ttl: float | None = None,
    on_expire: expiry.OnExpire = "dead_letter",
    executor: Executor = "thread",
) -> TaskSpec:
    params = [
        p
        for p in inspect.signature(handler).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if not 1 <= len(params) <= 2:
        msg = f"task {name!r}: handler must take (payload) or (payload, ctx)"
        raise TypeError(msg)
    if payload is None:
        payload = _payload_type(name, handler, params[0].name)
    if timeout is not None and not timeout > 0:  # NaN too: it compared false, never timing out
        msg = f"task {name!r}: timeout must be > 0 (math.inf for none)"
        raise ValueError(msg)
    if ttl is not None and not 0 < ttl < float("inf"):
        msg = f"task {name!r}: ttl must be a finite number of seconds > 0"
        raise ValueError(msg)
    if on_expire not in ("dead_letter", "drop"):
        msg = f"task {name!r}: on_expire must be 'dead_letter' or 'drop'"
        raise ValueError(msg)
    handler_ref = None
    if executor == "process":
        if inspect.iscoroutinefunction(handler):
            msg = f"task {name!r}: executor='process' is for sync handlers (CPU-bound work)"
            raise TypeError(msg)
        # Deferred for cold start: multiprocessing loads only for an App with a process task.
        from worker_runtime import processes

        handler_ref = processes.handler_reference(handler, name)
    elif executor != "thread":
        msg = f"task {name!r}: executor must be 'thread' or 'process'"
        raise ValueError(msg)
    adapter: TypeAdapter[Any] = TypeAdapter(payload)
    kind = adapter.core_schema.get("type")
    if kind in _NOT_AN_OBJECT:
        # a job's payload is a JSON object: such a task could be registered but never enqueued
        msg = (
            f"task {name!r}: the payload must be a JSON object (a pydantic model, a TypedDict or "
            f"a dict type), not {getattr(payload, '__name__', None) or payload!r}; wrap the "
            "value in a model, e.g. class Ids(BaseModel): ids: list[int]"
        )
        raise TypeError(msg)
    return TaskSpec(
        name=name,
        handler=handler,
        payload_adapter=adapter,
        is_async=inspect.iscoroutinefunction(handler),
        wants_context=len(params) == 2,
        retry=retry,
        timeout=timeout,
        non_retryable=tuple(non_retryable),
        logger=logs.get_logger(f"task.{name}"),
        ttl=ttl,
        on_expire=on_expire,
        executor=executor,
        handler_ref=handler_ref,
    )


@dataclass
class _Producers:
    # The async producer is bound to the event loop that created its client.
    loop: asyncio.AbstractEventLoop | None = None
    async_producer: producer_mod.Producer | None = None
    async_client: Any = None  # set only when this App opened the client (and must close it)
    sync_producer: producer_mod.SyncProducer | None = None
    sync_client: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    broker: Any = None  # the broker publish goes through (bound, or built on async_client)
    bound_client: Any = None  # a client given to bind(), which publish builds its broker on
    opened_broker: Any = None  # a non-Redis broker this App opened from its URL (and closes)
    # the queue a worker bound serves (WORKERFLEET_QUEUE may override the App's): every
    # producer this App makes, sync ones too, sends follow-up jobs there
    queue: str | None = None


class App:
    """A queue's task registry plus the producer API for it."""

    def __init__(self, queue: str, *, redis_url: str | None = None) -> None:
        # at import, where the mistake is: a bad name used to surface only at the first
        # enqueue, or in the worker
        self.queue = base.validate_queue_name(queue)
        self.redis_url = redis_url
        self.tasks: dict[str, TaskSpec] = {}
        self.subscriptions: dict[str, Subscription] = {}
        """Subscription queue name → subscription (its jobs carry that name as their task)."""
        self.upcasters: dict[tuple[str, int], events.Upcaster] = {}
        self._producers = _Producers()

    def task(
        self,
        name: str,
        *,
        retry: Retry | None = None,
        timeout: float | None = None,
        non_retryable: Sequence[type[BaseException]] = (),
        payload: type[Any] | None = None,
        ttl: float | None = None,
        on_expire: expiry.OnExpire = "dead_letter",
        executor: Executor = "thread",
    ) -> Callable[[F], F]:
        """Register a handler under ``name`` (the name jobs carry; never an import path).

        ``ttl``: seconds after enqueue past which a job of this task must not start (a job's
        own ``ttl``/``expires_at`` wins); ``on_expire``: such a job goes to the dead-letter
        queue with reason ``expired`` (default) or is dropped. ``executor="process"`` runs a
        sync handler in the worker's pool of child processes (:mod:`worker_runtime.processes`)
        instead of a thread: for CPU-bound work, which threads cannot spread over cores.
        """

        validate_task_name(name)

        def register(handler: F) -> F:
            if name in self.tasks:
                msg = f"task {name!r} is already registered"
                raise ValueError(msg)
            self.tasks[name] = _build_task_spec(
                name,
                handler,
                retry=retry,
                timeout=timeout,
                non_retryable=non_retryable,
                payload=payload,
                ttl=ttl,
                on_expire=on_expire,
                executor=executor,
            )
            return handler

        return register

    # ---- producing -------------------------------------------------------------------------

    def bind(self, client: redis.asyncio.Redis | Any, *, queue: str | None = None) -> None:
        """Use ``client`` (on the running loop) for ``enqueue``; the worker binds its own.

        ``queue`` is the queue the worker actually serves (``WORKERFLEET_QUEUE`` may override
        the App's), so follow-up jobs enqueued by handlers land where this pool works.
        """
        from worker_runtime import producer

        self._producers.loop = asyncio.get_running_loop()
        self._producers.queue = queue or self.queue
        self._producers.async_producer = producer.Producer(client, self._producers.queue)
        self._producers.async_client = None  # the caller owns it
        self._producers.broker = None
        self._producers.bound_client = client

    def bind_broker(self, broker: base.Broker) -> None:
        """Enqueue through ``broker`` (on the running loop): the worker binds its own.

        Follow-up jobs enqueued by handlers land on the queue the worker actually serves
        (``WORKERFLEET_QUEUE`` may override the App's), over whatever broker it runs on.
        """
        from worker_runtime import producer

        self._producers.loop = asyncio.get_running_loop()
        self._producers.queue = broker.queue
        self._producers.async_producer = producer.Producer.on_broker(broker)
        self._producers.async_client = None  # the caller owns it
        self._producers.broker = broker

    def _target_queue(self) -> str:
        """Where this App's producers send: the queue a bound worker serves, else the App's."""
        return self._producers.queue or self.queue

    def _url(self) -> str:
        # The same order as the worker's settings and the CLI: the broker URL the operator
        # sets on pools of every broker first, then the older Redis-only name.
        url = (
            self.redis_url
            or os.environ.get("WORKERFLEET_BROKER_URL")
            or os.environ.get("WORKERFLEET_REDIS_URL")
        )
        if not url:
            msg = (
                "no broker URL: pass App(redis_url=...) or set WORKERFLEET_BROKER_URL "
                "(or WORKERFLEET_REDIS_URL)"
            )
            raise RuntimeError(msg)
        return url

    async def _async_producer(self) -> producer_mod.Producer:
        from worker_runtime import brokers, producer
        from worker_runtime.brokers.redis import connection

        loop = asyncio.get_running_loop()
        p = self._producers
        if p.async_producer is None or p.loop is not loop:
            url = self._url()
            if brokers.scheme_of(url) in brokers.REDIS_SCHEMES:
                # Redis keeps its direct client: publish builds its broker on the same one.
                p.async_client = connection.build_client(url)
                p.async_producer = producer.Producer(p.async_client, self._target_queue())
                p.broker = None
            else:
                opened = await brokers.open_broker(url, self._target_queue())
                if p.async_producer is not None and p.loop is loop:
                    # a concurrent first call on this loop got there during the await
                    await opened.close()
                    return p.async_producer
                p.opened_broker = p.broker = opened
                p.async_producer = producer.Producer.on_broker(opened)
            p.loop = loop
        return p.async_producer

    def _sync_producer(self) -> producer_mod.SyncProducer:
        from worker_runtime import brokers, producer
        from worker_runtime.brokers.redis import connection

        p = self._producers
        with p.lock:
            if p.sync_producer is not None and p.sync_producer.queue != self._target_queue():
                # made before a worker bound this App to the queue it serves: send there now
                p.sync_producer = producer.SyncProducer(p.sync_client, self._target_queue())
            if p.sync_producer is None:
                url = self._url()
                scheme = brokers.scheme_of(url)
                if scheme not in brokers.REDIS_SCHEMES:
                    raise errors.CapabilityMissing(
                        f"enqueue_sync needs a Redis URL; on {scheme}:// use `await app.enqueue`",
                        operation="enqueue_sync",
                    )
                p.sync_client = connection.build_client_sync(url)
                p.sync_producer = producer.SyncProducer(p.sync_client, self._target_queue())
            return p.sync_producer

    def _checked_payload(
        self, task: str, payload: BaseModel | Mapping[str, Any] | None, allow_unregistered: bool
    ) -> Any:
        # When this process knows the task, a bad payload fails here, at the caller, not later
        # in a worker's dead-letter queue.
        spec = self.tasks.get(task)
        if spec is None:
            if not allow_unregistered:
                self._refuse_unregistered(task)
            return payload
        value = payload.model_dump(mode="json") if isinstance(payload, BaseModel) else payload
        validated = spec.payload_adapter.validate_python(value)
        return validated if isinstance(validated, BaseModel) else payload

    def _refuse_unregistered(self, task: str) -> None:
        """Raise :class:`errors.UnknownTask` when this App registers tasks for the queue its
        jobs go to and ``task`` is none of them: its worker would dead-letter the job as
        ``unknown_task`` (a typo used to return created=True and fail there, later)."""
        # An App that registers nothing there produces for another service's workers: any
        # name goes. A worker runs every task its App registers, whatever queue it serves;
        # the App's own queue is served by its plain tasks (subscriptions have queues of their
        # own), a subscription's queue by all of them.
        if self._target_queue() in self.subscriptions:
            served = sorted(self.tasks)
        else:
            served = sorted(name for name in self.tasks if name not in self.subscriptions)
        if not served:
            return
        import difflib  # only on the way to the error

        close = difflib.get_close_matches(task, served, n=1)
        suggestion = close[0] if close else None
        shown = ", ".join(repr(name) for name in served[:20])
        more = f" and {len(served) - 20} more" if len(served) > 20 else ""
        hint = f"did you mean {suggestion!r}? " if suggestion is not None else ""
        msg = (
            f"task {task!r} is not registered on this App (queue {self._target_queue()!r}, "
            f"tasks {shown}{more}): a worker would dead-letter it as unknown_task. {hint}"
            "If a worker registers it in a module this process does not import, import that "
            "module or pass allow_unregistered=True"
        )
        raise errors.UnknownTask(msg, task=task, known=tuple(served), suggestion=suggestion)

    def _checked_spec(
        self, spec: producer_mod.JobSpec, allow_unregistered: bool
    ) -> producer_mod.JobSpec:
        # enqueue_many's jobs get enqueue's checks (they skipped them: a bad payload or task
        # name reached the DLQ instead of failing the call)
        payload = self._checked_payload(spec.task, spec.payload, allow_unregistered)
        return spec if payload is spec.payload else dataclasses.replace(spec, payload=payload)

    async def enqueue(
        self,
        task: str,
        payload: BaseModel | Mapping[str, Any],
        *,
        allow_unregistered: bool = False,
        **options: Unpack[producer_mod.EnqueueOptions],
    ) -> queue_mod.EnqueueResult:
        """Enqueue one job; returns its id and whether it was created (False: deduplicated).

        Options (``delay``, ``eta``, ``priority``, ``idempotency_key``, ``idempotency_ttl``,
        ``correlation_id``, ``max_attempts``, ...): :class:`worker_runtime.producer.JobSpec`.
        A task this App registers gets its payload validated; a name it does not register is
        refused (:class:`errors.UnknownTask`) when the App registers other tasks for the
        queue, unless ``allow_unregistered`` (a task registered in a module not imported here).
        """
        checked = self._checked_payload(task, payload, allow_unregistered)
        options = _with_lineage(options)
        result = await (await self._async_producer()).enqueue(task, checked, **options)
        await self._record_job_trace(
            task, options.get("correlation_id"), options.get("headers"), result
        )
        return result

    async def enqueue_many(
        self, jobs: Sequence[producer_mod.JobSpec], *, allow_unregistered: bool = False
    ) -> list[queue_mod.EnqueueResult]:
        """Enqueue many jobs in pipelined batches; each is checked as :meth:`enqueue` checks
        it, all before any job is sent, and inherits the running handler's lineage as
        :meth:`enqueue`'s job does."""
        checked = [
            self._checked_spec(_spec_with_lineage(spec), allow_unregistered) for spec in jobs
        ]
        results = await (await self._async_producer()).enqueue_many(checked)
        traced = [
            (spec, result)
            for spec, result in zip(checked, results, strict=True)
            if spec.correlation_id is not None and result.created
        ]
        # a trace keeps its newest TRACE_KEEP entries: writing more would cost a round trip
        # each for entries trimmed at once
        for spec, result in traced[-base.TRACE_KEEP :]:
            await self._record_job_trace(spec.task, spec.correlation_id, spec.headers, result)
        return results

    async def _record_job_trace(
        self,
        task: str,
        correlation_id: str | None,
        headers: Mapping[str, str] | None,
        result: queue_mod.EnqueueResult,
    ) -> None:
        """The trace entry of a job just enqueued (none without a correlation id, or when the
        job was already there)."""
        from worker_runtime import events  # deferred for cold start (see the imports)

        if correlation_id is None or not result.created:
            return
        cause = (headers or {}).get(events.CAUSATION_HEADER)
        await self._record_trace(
            correlation_id, base.TraceEntry("job", result.job_id, cause, task, time.time())
        )

    def enqueue_sync(
        self,
        task: str,
        payload: BaseModel | Mapping[str, Any],
        *,
        allow_unregistered: bool = False,
        **options: Unpack[producer_mod.EnqueueOptions],
    ) -> queue_mod.EnqueueResult:
        """Blocking :meth:`enqueue` for sync code (web views, scripts)."""
        checked = self._checked_payload(task, payload, allow_unregistered)
        return self._sync_producer().enqueue(task, checked, **_with_lineage(options))

    # ---- events ----------------------------------------------------------------------------

    def upcaster(self, topic: str, *, from_version: int) -> Callable[[F], F]:
        """Register a function turning ``topic``'s data at ``from_version`` into the data of
        ``from_version + 1`` (a dict in, a dict out); subscriptions chain them up to the
        version their handler reads."""
        from worker_runtime import events  # deferred for cold start (see the imports)

        events.validate_event_type(topic)
        if from_version < 1:
            raise errors.ConfigError("from_version must be >= 1")

        def register(fn: F) -> F:
            if (topic, from_version) in self.upcasters:
                msg = f"an upcaster of {topic!r} from version {from_version} is already registered"
                raise ValueError(msg)
            self.upcasters[(topic, from_version)] = fn
            return fn

        return register

    def subscribe(
        self,
        topic: str,
        *,
        group: str,
        retry: Retry | None = None,
        timeout: float | None = None,
        non_retryable: Sequence[type[BaseException]] = (),
        payload: type[Any] | None = None,
        version: int | None = None,
    ) -> Callable[[F], F]:
        """Handle ``topic``'s events in subscription ``group``: an ordinary queue named
        ``<topic>:<group>`` (its own pool, retries, DLQ), whose worker runs the handler.

        The handler takes the event data (typed by its first parameter's annotation, usually
        a pydantic model) and optionally a :class:`JobContext`; ``events.current_event()``
        gives the whole envelope. It reads ``version`` of the event (default: the model's
        ``event_version``, else 1): older events are brought up by the registered upcasters;
        newer or unreachable ones are dead-lettered as ``unknown_event_version``.
        """
        from worker_runtime import events  # deferred for cold start (see the imports)

        queue = events.subscription_queue(topic, group)

        def register(handler: F) -> F:
            inner = _build_task_spec(
                queue,
                handler,
                retry=retry,
                timeout=timeout,
                non_retryable=non_retryable,
                payload=payload,
            )
            data_type = payload or _payload_type(queue, handler, _first_param(handler))
            target = version if version is not None else events.version_of(data_type)
            sub = Subscription(topic=topic, group=group, queue=queue, version=target)
            wrapper = _event_handler(inner, sub, self.upcasters)
            if queue in self.tasks:
                msg = f"subscription {queue!r} is already registered"
                raise ValueError(msg)
            self.tasks[queue] = dataclasses.replace(
                inner,
                handler=wrapper,
                payload_adapter=TypeAdapter(Any),
                wants_context=True,
            )
            self.subscriptions[queue] = sub
            return handler

        return register

    async def publish(
        self,
        topic: str,
        data: BaseModel | Mapping[str, Any] | None,
        *,
        version: int | None = None,
        event_id: str | None = None,
        correlation_id: str | None = None,
    ) -> base.PublishResult:
        """Publish one event: one job in every subscription of ``topic`` registered now, in one
        atomic step (all or none). Inside a handler the event joins the running job's
        correlation id and names it as its cause. Re-sending with the same ``event_id`` (after
        a lost reply) is deduplicated per subscription within its enqueue-dedup window."""
        from worker_runtime import events  # deferred for cold start (see the imports)

        events.validate_event_type(topic)
        if version is None:
            version = events.version_of(type(data)) if isinstance(data, BaseModel) else 1
        event = events.build_event(
            topic, data, version=version, event_id=event_id, correlation_id=correlation_id
        )
        headers = [("event_type", event.type), ("event_version", str(event.version))]
        if event.causation_id is not None:
            headers.append((events.CAUSATION_HEADER, event.causation_id))
        request = base.PublishRequest(
            topic=topic,
            event_id=event.id,
            payload=event.model_dump(mode="json"),
            correlation_id=event.correlation_id,
            headers=tuple(headers),
        )
        broker = await self._topic_broker()
        result: base.PublishResult = await broker.publish(request)
        await self._record_trace(
            event.correlation_id,
            base.TraceEntry("event", event.id, event.causation_id, topic, event.occurred_at),
        )
        return result

    async def _record_trace(self, correlation_id: str, entry: base.TraceEntry) -> None:
        # Best effort, after the work was stored: a failure here must not make the caller
        # send the enqueue or publish again, so it is logged, not raised.
        try:
            broker = await self._topic_broker()
        except errors.CapabilityMissing:
            return  # a broker without topics keeps no trace either
        try:
            await broker.record_trace(correlation_id, entry)
        except errors.CapabilityMissing:
            return  # a broker with topics but no trace index (RabbitMQ)
        except (errors.WorkerfleetError, OSError) as exc:
            error = errors.describe_error(exc)[:300]
            _log.warning("trace entry not recorded", extra={"error": error})

    async def register_subscriptions(self, queue: str | None = None) -> list[str]:
        """Register this App's subscriptions in the broker (only ``queue``'s when given):
        from then on every publish of their topic reaches them. Idempotent; the worker calls
        it for the subscription it serves when it starts."""
        broker = await self._topic_broker()
        done = []
        for name, sub in sorted(self.subscriptions.items()):
            if queue is None or name == queue:
                done.append(await broker.subscribe(sub.topic, sub.group))
        return done

    async def _topic_broker(self) -> Any:
        p = self._producers
        loop = asyncio.get_running_loop()
        if p.broker is None or p.loop is not loop:
            from worker_runtime.brokers.redis import broker as redis_broker

            if p.bound_client is not None and p.loop is loop:
                p.broker = redis_broker.RedisBroker(p.bound_client, self._target_queue())
            else:
                await self._async_producer()
                if p.broker is None:  # Redis (any other URL: the producer opened the broker)
                    p.broker = redis_broker.RedisBroker(p.async_client, self._target_queue())
        broker = p.broker
        if not isinstance(broker, base.Topics) or not p.broker.capabilities.topics:
            raise errors.CapabilityMissing(
                f"the {type(broker).__name__} of this App does not support topics",
                operation="publish",
            )
        return broker

    async def aclose(self) -> None:
        """Close the producer connections this App opened."""
        p = self._producers
        if p.async_client is not None:
            await p.async_client.aclose()
        if p.sync_client is not None:
            p.sync_client.close()
        if p.opened_broker is not None:
            await p.opened_broker.close()
        p.async_producer = p.sync_producer = p.async_client = p.sync_client = None
        p.broker = p.bound_client = p.opened_broker = None
        p.loop = None


def _with_lineage(options: Any) -> Any:
    """``options`` with the running handler's lineage filled in: the correlation id it carries
    (or its own id) and a ``causation_id`` header naming it, unless the caller gave them."""
    from worker_runtime import events  # deferred for cold start (see the imports)

    lineage = events.lineage_of_current_job()
    if lineage.causation_id is None:
        return options
    out = dict(options)
    if out.get("correlation_id") is None:
        out["correlation_id"] = lineage.correlation_id
    headers = dict(out.get("headers") or {})
    headers.setdefault(events.CAUSATION_HEADER, lineage.causation_id)
    out["headers"] = headers
    return out


def _spec_with_lineage(spec: producer_mod.JobSpec) -> producer_mod.JobSpec:
    """``spec`` with the running handler's lineage filled in, as :func:`_with_lineage` does
    for one enqueue's options (``enqueue_many`` used to send its jobs without it)."""
    options = {"correlation_id": spec.correlation_id, "headers": spec.headers}
    lineage = _with_lineage(options)
    if lineage is options:
        return spec
    return dataclasses.replace(
        spec, correlation_id=lineage["correlation_id"], headers=lineage["headers"]
    )


def _event_data(sub: Subscription, spec: TaskSpec, payload: Any, upcasters: Any) -> Any:
    """The handler's argument from a subscription job's payload: the event envelope checked,
    upcast to the version the handler reads and validated; an event it cannot read is
    rejected with the reason (to the DLQ, no retries)."""
    from worker_runtime import events  # deferred for cold start (see the imports)

    try:
        event = events.EventEnvelope.model_validate(payload)
    except ValidationError as exc:
        raise RejectInvalidEvent(f"not an event envelope: {str(exc)[:1000]}") from None
    if event.type != sub.topic:
        raise RejectInvalidEvent(f"event type {event.type!r} on subscription {sub.queue!r}")
    try:
        data = events.upcast_data(event, sub.version, upcasters)
    except events.EventVersionError as exc:
        raise RejectEventVersion(str(exc)) from None
    except Exception as exc:
        msg = f"upcasting {event.type} from version {event.version} failed: {exc!r}"
        raise RejectEventVersion(msg[:2000]) from exc
    try:
        return event, spec.payload_adapter.validate_python(data)
    except ValidationError as exc:
        msg = f"{event.type} data at version {sub.version} is invalid: {str(exc)[:1000]}"
        raise RejectInvalidEvent(msg) from None


def _event_handler(spec: TaskSpec, sub: Subscription, upcasters: Any) -> Handler:
    """The task handler of a subscription: reads the event, then calls the user's handler
    with the event bound (``events.current_event()``)."""
    from worker_runtime import events  # deferred for cold start (see the imports)

    if spec.is_async:

        async def run_async(payload: Any, ctx: JobContext) -> None:
            event, data = _event_data(sub, spec, payload, upcasters)
            token = events.bind_event(event)
            try:
                if spec.wants_context:
                    await spec.handler(data, ctx)
                else:
                    await spec.handler(data)
            finally:
                events.unbind_event(token)

        return run_async

    def run_sync(payload: Any, ctx: JobContext) -> None:
        event, data = _event_data(sub, spec, payload, upcasters)
        token = events.bind_event(event)
        try:
            if spec.wants_context:
                spec.handler(data, ctx)
            else:
                spec.handler(data)
        finally:
            events.unbind_event(token)

    return run_sync
