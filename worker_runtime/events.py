"""Events: the immutable event envelope, its naming rule, versions and upcasters, and lineage.

Called by :mod:`worker_runtime.app` (``App.publish``, ``@app.subscribe``, ``@app.upcaster``) and
by the brokers' topic side (:class:`worker_runtime.brokers.base.Topics`), which stores one job
per subscription whose payload is an :class:`EventEnvelope`. docs/events.md is the user guide.

An event is a fact that happened, named ``domain.entity.past_tense_verb`` (``user.account.
created``): lower case, three dotted words, the last one a past tense. Its envelope is frozen:
``type``, schema ``version``, ``id`` (unique; the dedup key of idempotent handlers and of a
re-sent publish), ``occurred_at`` (epoch seconds), ``correlation_id`` (the whole chain of work
one request started) and ``causation_id`` (the job or event that directly caused this one).

Lineage: while a handler runs, the worker binds its job for logging
(:func:`worker_runtime.logs.bind_job`, a context variable). :func:`lineage_of_current_job`
reads it, so a job enqueued or an event published inside a handler inherits the correlation id
and names the running job as its cause, without the handler passing anything.
"""

from __future__ import annotations

import contextvars
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic

from worker_runtime import envelope, errors, logs
from worker_runtime.brokers import base

EVENT_TYPE_PATTERN = r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$"
"""``domain.entity.past_tense_verb``: three lower-case dotted words (digits and ``_`` inside)."""

GROUP_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
"""A subscription group: lower case, digits, ``-`` and ``_``; at most 63 characters."""

IRREGULAR_PAST = frozenset(
    {
        "become",
        "been",
        "begun",
        "bid",
        "bought",
        "bound",
        "broken",
        "brought",
        "built",
        "caught",
        "chosen",
        "come",
        "cut",
        "dealt",
        "done",
        "drawn",
        "driven",
        "dug",
        "eaten",
        "fallen",
        "fed",
        "felt",
        "fled",
        "forgotten",
        "found",
        "frozen",
        "given",
        "gone",
        "got",
        "gotten",
        "ground",
        "grown",
        "held",
        "hidden",
        "hit",
        "hung",
        "kept",
        "known",
        "led",
        "left",
        "lost",
        "made",
        "meant",
        "met",
        "overridden",
        "overwritten",
        "paid",
        "put",
        "quit",
        "read",
        "rebuilt",
        "rerun",
        "resent",
        "reset",
        "rewritten",
        "ridden",
        "risen",
        "run",
        "rung",
        "sat",
        "seen",
        "sent",
        "set",
        "shot",
        "shown",
        "shut",
        "slept",
        "sold",
        "sought",
        "sped",
        "spent",
        "split",
        "spoken",
        "stolen",
        "stood",
        "struck",
        "sung",
        "sunk",
        "swept",
        "swum",
        "taken",
        "taught",
        "thought",
        "thrown",
        "told",
        "understood",
        "undone",
        "upheld",
        "withdrawn",
        "withheld",
        "woken",
        "won",
        "wound",
        "written",
    }
)
"""Past tenses that do not end in ``-ed``, accepted as the verb of an event type."""

CAUSATION_HEADER = "causation_id"
"""The job-envelope header naming the job or event that caused a job (lineage)."""

_TYPE = re.compile(EVENT_TYPE_PATTERN)
_GROUP = re.compile(GROUP_PATTERN)


class InvalidEventType(errors.ConfigError):
    """An event type that breaks the naming rule (:data:`EVENT_TYPE_PATTERN`, past tense)."""


class EventVersionError(errors.WorkerfleetError):
    """An event whose version this consumer cannot read: newer than it knows, or no upcaster
    chain reaches its version. The subscription dead-letters it with this reason."""


def validate_event_type(name: str) -> str:
    """Return ``name`` when it is ``domain.entity.past_tense_verb``, else raise
    :class:`InvalidEventType` saying what is wrong."""
    if not isinstance(name, str) or not _TYPE.match(name):
        raise InvalidEventType(
            f"event type {name!r} must be domain.entity.past_tense_verb: three lower-case "
            f"words joined by dots, e.g. 'user.account.created' (pattern {EVENT_TYPE_PATTERN})"
        )
    verb = name.rsplit(".", 1)[1]
    if not (verb.endswith("ed") or verb in IRREGULAR_PAST):
        raise InvalidEventType(
            f"event type {name!r} must end in a past tense verb (an event is a fact that "
            f"happened): {verb!r} is not one; e.g. 'created', 'placed', 'sent'"
        )
    return name


def validate_group(group: str) -> str:
    """Return ``group`` when it matches :data:`GROUP_PATTERN`, else raise ``ConfigError``."""
    if not isinstance(group, str) or not _GROUP.match(group):
        raise errors.ConfigError(f"subscription group {group!r} must match {GROUP_PATTERN}")
    return group


def subscription_queue(topic: str, group: str) -> str:
    """The queue of one subscription: ``<topic>:<group>`` (an ordinary queue: its own pool,
    retries, DLQ and stats). It is also the task name its jobs carry."""
    return base.validate_queue_name(f"{validate_event_type(topic)}:{validate_group(group)}")


def parse_subscription_queue(queue: str) -> tuple[str, str] | None:
    """``(topic, group)`` when ``queue`` is a subscription's queue name (``<topic>:<group>``,
    both parts valid), else None. The inverse of :func:`subscription_queue`: the operator and
    the local fleet label a pool's lag series with them, the CLI's ``queue stats`` shows them.
    A queue named so is that subscription's queue (the keys are the same), registered or not."""
    topic, sep, group = queue.rpartition(":")
    if not sep:
        return None
    try:
        validate_event_type(topic)
        validate_group(group)
    except errors.ConfigError:
        return None
    return topic, group


class EventEnvelope(pydantic.BaseModel):
    """One event, immutable: what every subscription's job carries as its payload."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    type: str
    version: int = pydantic.Field(ge=1)
    id: str = pydantic.Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f|]+$")
    occurred_at: float
    correlation_id: str
    causation_id: str | None = None
    data: pydantic.JsonValue = None

    @pydantic.field_validator("type")
    @classmethod
    def _type_follows_the_naming_rule(cls, value: str) -> str:
        try:
            return validate_event_type(value)
        except InvalidEventType as exc:
            raise ValueError(str(exc)) from None


@dataclass(frozen=True)
class Lineage:
    """Where new work comes from: the correlation id it joins and the id of its cause."""

    correlation_id: str | None
    causation_id: str | None


def lineage_of_current_job() -> Lineage:
    """The running handler's job as the cause of new work (both None outside a handler).

    A job without a correlation id starts one: its own id becomes its children's.
    """
    job = logs.current_job()
    if job is None:
        return Lineage(None, None)
    return Lineage(job.correlation_id or job.job_id, job.job_id)


def build_event(
    topic: str,
    data: pydantic.BaseModel | Mapping[str, Any] | None,
    *,
    version: int = 1,
    event_id: str | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    occurred_at: float | None = None,
) -> EventEnvelope:
    """A new event; outside a handler it starts a correlation (its own id), inside one it
    joins the handler's and names the running job as its cause (unless given explicitly)."""
    lineage = lineage_of_current_job()
    new_id = event_id or uuid.uuid4().hex
    body = envelope.build_payload(data, name="data")
    return EventEnvelope(
        type=topic,
        version=version,
        id=new_id,
        occurred_at=time.time() if occurred_at is None else occurred_at,
        correlation_id=correlation_id or lineage.correlation_id or new_id,
        causation_id=causation_id if causation_id is not None else lineage.causation_id,
        data=body,
    )


Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
"""Turns an event's data at version ``n`` into its data at version ``n + 1``."""


def upcast_data(
    event: EventEnvelope, target: int, upcasters: Mapping[tuple[str, int], Upcaster]
) -> Any:
    """``event.data`` brought to version ``target`` through the chain of upcasters, or
    :class:`EventVersionError` when the event is newer than ``target``, a step is missing or
    a step returns something other than a dict."""
    if event.version > target:
        raise EventVersionError(
            f"{event.type} version {event.version} is newer than this consumer's {target}"
        )
    data: Any = event.data
    for version in range(event.version, target):
        step = upcasters.get((event.type, version))
        if step is None:
            raise EventVersionError(
                f"{event.type} version {event.version} cannot reach version {target}: "
                f"no upcaster from version {version}"
            )
        data = step(dict(data) if isinstance(data, Mapping) else {})
        if not isinstance(data, Mapping):
            # an upcaster that edited its argument and forgot the return gives None: the next
            # step (or the handler's defaults) would run on nothing, silently
            raise EventVersionError(
                f"{event.type} version {event.version} cannot reach version {target}: the "
                f"upcaster from version {version} returned {type(data).__name__}, not a dict"
            )
    return data


def version_of(model: Any) -> int:
    """The schema version a payload model declares (``event_version`` class attribute; 1)."""
    version = getattr(model, "event_version", 1)
    if not isinstance(version, int) or version < 1:
        raise errors.ConfigError(f"{model!r}: event_version must be an int >= 1")
    return version


_current_event: contextvars.ContextVar[EventEnvelope | None] = contextvars.ContextVar(
    "workerfleet_current_event", default=None
)


def current_event() -> EventEnvelope | None:
    """The event whose subscription handler is running in this context (its id, version,
    correlation and causation ids), or None outside one."""
    return _current_event.get()


def bind_event(event: EventEnvelope | None) -> contextvars.Token[EventEnvelope | None]:
    """Make ``event`` the current one (the subscription handler wrapper calls this)."""
    return _current_event.set(event)


def unbind_event(token: contextvars.Token[EventEnvelope | None]) -> None:
    """Undo :func:`bind_event`."""
    _current_event.reset(token)


def render_trace_tree(entries: Sequence[base.TraceEntry]) -> list[str]:
    """The trace as indented lines, each under its cause (``workerfleet trace``); an entry
    whose cause is not in the trace (trimmed, expired) is shown as a root, and so is the first
    entry of a loop of causes, which no root reaches. Every entry is printed once, however deep
    its chain (a job that enqueues the next page of its work builds one as long as the trace)."""
    ids = {e.id for e in entries}
    children: dict[str | None, list[base.TraceEntry]] = {}
    unique: dict[str, base.TraceEntry] = {}
    for e in entries:
        if e.id in unique:
            continue
        unique[e.id] = e
        parent = e.parent if e.parent in ids and e.parent != e.id else None
        children.setdefault(parent, []).append(e)
    lines: list[str] = []
    printed: set[str] = set()

    def walk(root: base.TraceEntry) -> None:
        # Depth first with a stack of its own: a chain as long as the trace (1,000 entries)
        # is deeper than Python's recursion limit allows.
        stack = [(root, 0)]
        while stack:
            e, depth = stack.pop()
            if e.id in printed:
                continue  # a loop of causes comes back to an entry already printed
            printed.add(e.id)
            lines.append(f"{'  ' * depth}{e.kind} {e.name} {e.id}")
            stack.extend((c, depth + 1) for c in reversed(children.get(e.id, [])))

    for root in children.get(None, []):
        walk(root)
    for e in unique.values():  # entries in a loop of causes: no root leads to them
        if e.id not in printed:
            walk(e)
    return lines
