"""The job envelope: the JSON document stored for every job (schema version ``v`` = 1).

Built by the producer (:mod:`worker_runtime.producer`), parsed by the engine at fetch
(:mod:`worker_runtime.brokers.redis.queue`); an envelope that does not parse is dead-lettered with
its reason, never executed. JSON only: nothing is ever unpickled or imported because a message says
so.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Literal

import pydantic

from worker_runtime import errors

SCHEMA_VERSION = 1

MAX_WAIT_SECONDS = 3_650 * 86_400.0
"""The longest delay (or eta ahead of now), idempotency window and done-marker lifetime a job
may ask for: 3,650 days. Brokers keep these times in integer milliseconds: a delay of 1e308 s,
finite as a float, overflowed that and crashed the send (``OverflowError``), and no real job
waits ten years."""


class Priority(StrEnum):
    """Job priority; fetch serves high before normal before low."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class JobEnvelope(pydantic.BaseModel):
    """One job as stored in Redis (see docs/architecture.md, "Queue engine API")."""

    model_config = pydantic.ConfigDict(frozen=True, extra="ignore")

    v: Literal[1] = 1
    id: str = pydantic.Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")
    task: str = pydantic.Field(min_length=1, max_length=200)
    payload: pydantic.JsonValue = None
    priority: Priority = Priority.NORMAL
    max_attempts: int | None = pydantic.Field(default=None, ge=1)
    correlation_id: str | None = None
    idempotency_key: str | None = None
    enqueued_at: float
    headers: dict[str, str] = pydantic.Field(default_factory=dict)
    # Epoch seconds after which the job must not start (worker_runtime.expiry); None = never.
    expires_at: float | None = None


EnvelopeError = errors.EnvelopeError


def parse_envelope(raw: str | bytes) -> JobEnvelope:
    """Parse stored JSON into an envelope, or raise :class:`EnvelopeError` with a DLQ reason."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            detail = f"the envelope is not UTF-8 ({exc.reason} at byte {exc.start})"
            raise EnvelopeError("invalid_envelope", detail) from None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EnvelopeError("unparseable_json", str(exc)[:200]) from None
    if not isinstance(data, dict):
        raise EnvelopeError("invalid_envelope", "the envelope is not a JSON object")
    version = data.get("v")
    if version != SCHEMA_VERSION:
        raise EnvelopeError("unknown_schema_version", f"schema version {version!r} is not known")
    try:
        return JobEnvelope.model_validate(data)
    except pydantic.ValidationError as exc:
        raise EnvelopeError("invalid_envelope", str(exc)[:500]) from None


def build_payload(
    payload: pydantic.BaseModel | Mapping[str, Any] | None, *, name: str = "payload"
) -> pydantic.JsonValue:
    """A JSON-ready payload from a pydantic model or a JSON-able mapping (a job's payload, an
    event's ``data``); a NaN or infinite number in it is a ``ValueError`` naming where."""
    if payload is None:
        return None
    if isinstance(payload, pydantic.BaseModel):
        dumped: pydantic.JsonValue = payload.model_dump(mode="json")
    elif isinstance(payload, (dict, Mapping)):  # dict first: the common case, no ABC check
        # JobEnvelope validates it as a JSON value (no pickling fallback, ever)
        dumped = dict(payload)
    else:
        msg = (
            f"{name} must be a JSON object (a mapping or a pydantic model), "
            f"not {type(payload).__name__}"
        )
        raise TypeError(msg)
    validate_finite_numbers(dumped, name=name)
    return dumped


def validate_finite_numbers(value: object, *, name: str = "payload") -> None:
    """Refuse NaN and infinity anywhere in a JSON-ready value.

    JSON has no form for them: serialized they became ``null``, so the handler got ``None`` (or
    the job was dead-lettered as ``invalid_payload``) for a number the producer sent.
    """
    stack = [value]
    seen: set[int] = set()  # containers walked: a payload holding itself must not loop forever
    while stack:
        v = stack.pop()
        if type(v) is float:
            if v - v != 0.0:  # nan or ±inf (finite - itself is 0.0)
                where = _path_of_non_finite(value, name, set()) or name
                msg = f"{where} is {v}: JSON has no NaN or infinity (it would arrive as null)"
                raise ValueError(msg)
        elif isinstance(v, dict | list | tuple):
            if id(v) in seen:
                continue  # walked already (a shared or cyclic reference; pydantic refuses a cycle)
            seen.add(id(v))
            stack.extend(v.values() if isinstance(v, dict) else v)


def _path_of_non_finite(value: object, path: str, seen: set[int]) -> str | None:
    # Only on the way to an error: where the first NaN or infinity is, as payload.a[2].b.
    if isinstance(value, float) and value - value != 0.0:
        return path
    if id(value) in seen:
        return None
    seen.add(id(value))
    items: list[tuple[str, object]] = []
    if isinstance(value, dict):
        items = [(f"{path}.{k}", v) for k, v in value.items()]
    elif isinstance(value, list | tuple):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
    for sub, v in items:
        found = _path_of_non_finite(v, sub, seen)
        if found is not None:
            return found
    return None


def new_job_id() -> str:
    """A new random job id: 128 random bits as 32 hex digits."""
    # Drawn from os.urandom as uuid4() is (which fixes 6 of its 128 bits), at a quarter of the
    # cost: building the UUID object was 2.1 of a producer's ~16 us of CPU per job.
    return os.urandom(16).hex()


def build_envelope(
    task: str,
    payload: pydantic.BaseModel | Mapping[str, Any] | None,
    *,
    priority: Priority | str = Priority.NORMAL,
    max_attempts: int | None = None,
    correlation_id: str | None = None,
    idempotency_key: str | None = None,
    job_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    now: float | None = None,
    expires_at: float | None = None,
) -> JobEnvelope:
    """A validated envelope for a new job."""
    at = time.time() if now is None else now
    plain = _build_plain_envelope(
        task,
        payload,
        _known_priority(priority),
        max_attempts,
        correlation_id,
        idempotency_key,
        job_id,
        headers,
        at,
        expires_at,
    )
    if plain is not None:
        return plain
    data = build_payload(payload)
    try:
        return JobEnvelope(
            id=job_id or new_job_id(),
            task=task,
            payload=data,
            priority=Priority(priority),
            max_attempts=max_attempts,
            correlation_id=correlation_id,
            idempotency_key=idempotency_key,
            enqueued_at=at,
            headers=dict(headers or {}),
            expires_at=expires_at,
        )
    except pydantic.ValidationError as exc:
        refused = _payload_not_json(exc, data)
        if refused is None:
            raise
        raise refused from None


def _payload_not_json(
    exc: pydantic.ValidationError, payload: object
) -> errors.PayloadNotJSON | None:
    # Only on the way to an error. pydantic words a datetime in a dict payload as "1 validation
    # error for JobEnvelope / payload.dict.when / input was not a valid JSON value": about the
    # envelope, not the caller's value. Its loc is ("payload", kind, key, kind, key, ...), and
    # ends in "[key]" when a key is not a string: follow it to the value and say what it is.
    # None: any other error (a cycle, too deep, a field besides the payload): pydantic's
    # error stands.
    problems = exc.errors()
    if not all(p["loc"][:1] == ("payload",) for p in problems):
        return None
    loc = problems[0]["loc"][1:]
    bad_key = loc[-1:] == ("[key]",)
    if problems[0]["type"] != ("string_type" if bad_key else "invalid-json-value"):
        return None
    steps = loc[:-3] if bad_key else loc
    if len(steps) % 2:
        return None  # not a (kind, key) path: a shape this reading does not know
    path, value = "payload", payload
    for kind, step in zip(steps[::2], steps[1::2], strict=True):
        try:
            value = value[step]  # type: ignore[index]
        except (LookupError, TypeError):
            return None
        path = f"{path}[{step}]" if kind == "list" else f"{path}.{step}"
    if bad_key:
        key = loc[-2]
        type_name = _type_name(key)
        msg = f"{path} has the key {key!r} of type {type_name}: JSON object keys are strings"
        return errors.PayloadNotJSON(msg, path=path, type_name=type_name)
    type_name = _type_name(value)
    msg = (
        f"{path} holds a value of type {type_name}, which a job's JSON payload cannot carry: "
        "give the task a pydantic payload model (it converts datetime, Decimal, set, ... when "
        "the job is enqueued) and enqueue the model, or convert the value first (e.g. "
        ".isoformat() for a datetime, str() for a Decimal, a list for a set or tuple)"
    )
    return errors.PayloadNotJSON(msg, path=path, type_name=type_name)


def _type_name(value: object) -> str:
    kind = type(value)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


# The producer's hot path. Validating an envelope with pydantic costs ~4 us whatever it holds,
# a sixth of the producer's CPU per job; for inputs of exactly the types the model stores (a
# dict of JSON values, str, int, float, bool, None) validation changes nothing, so the plain
# path checks those types and the fields' constraints itself and fills the frozen model's
# __dict__ directly. Anything else (a pydantic payload, a str subclass, a NaN, a tuple, a
# too-long task, a job id of the caller's) returns None and goes through pydantic, which
# converts or refuses it exactly as before. tests/worker_runtime/test_envelope_plain_path.py
# holds the two paths to the same model, fields set and bytes.
_PRIORITIES: dict[object, Priority] = {p.value: p for p in Priority}
_SET_BY_BUILD = frozenset(JobEnvelope.model_fields) - {"v"}
# pydantic refuses a lone surrogate in a constrained string (the job id, the task), which
# could not be encoded anyway; a payload nested deeper than its limit (254 levels) too.
_JOB_ID_TEXT = re.compile(r"[^\x00-\x1f\ud800-\udfff]{1,200}")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_MAX_PLAIN_DEPTH = 200


def _known_priority(priority: object) -> Priority | None:
    # Priority(priority) refuses an unhashable value with a ValueError: the slow path says so.
    try:
        return _PRIORITIES.get(priority)
    except TypeError:
        return None


class _NotPlain(Exception):
    """A value outside the plain path's types: pydantic validates it instead."""


def _copy_plain_json(value: object, depth: int = 0) -> object:
    # A copy (as validation makes one) of a tree of exactly-typed JSON values; raises _NotPlain
    # at anything else, at NaN or infinity (build_payload then names where it is), and past
    # _MAX_PLAIN_DEPTH levels (pydantic decides; a cycle is refused there).
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        if value - value != 0.0:  # type: ignore[operator]
            raise _NotPlain
        return value
    if depth >= _MAX_PLAIN_DEPTH and (kind is dict or kind is list):
        raise _NotPlain
    if kind is dict:
        out = {}
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is not str:
                raise _NotPlain
            out[key] = _copy_plain_json(item, depth + 1)
        return out
    if kind is list:
        return [_copy_plain_json(item, depth + 1) for item in value]  # type: ignore[attr-defined]
    raise _NotPlain


def _build_plain_envelope(
    task: object,
    payload: object,
    priority: Priority | None,
    max_attempts: object,
    correlation_id: object,
    idempotency_key: object,
    job_id: object,
    headers: object,
    at: object,
    expires_at: object,
) -> JobEnvelope | None:
    # The envelope pydantic would build from these inputs, when it would keep them unchanged;
    # None otherwise.
    if (
        priority is None
        or type(task) is not str
        or not 1 <= len(task) <= 200
        or _SURROGATE.search(task) is not None
        or type(at) is not float
        or not (expires_at is None or type(expires_at) is float)
        or not (max_attempts is None or (type(max_attempts) is int and max_attempts >= 1))
        or not (correlation_id is None or type(correlation_id) is str)
        or not (idempotency_key is None or type(idempotency_key) is str)
    ):
        return None
    if job_id is None or job_id == "":
        job_id = new_job_id()
    elif type(job_id) is not str or _JOB_ID_TEXT.fullmatch(job_id) is None:
        return None
    if not headers:  # None or empty: the slow path's dict(headers or {}) is {} too
        headers = {}
    elif type(headers) is dict and all(
        type(k) is str and type(v) is str for k, v in headers.items()
    ):
        headers = dict(headers)
    else:
        return None
    try:
        data = None if payload is None else _copy_plain_json(payload)
    except _NotPlain:
        return None
    if not (data is None or type(data) is dict):
        return None
    env = JobEnvelope.__new__(JobEnvelope)
    # What pydantic's own constructor sets: the fields (in declaration order), the names the
    # call passed, no extras (extra="ignore") and no private attributes.
    object.__setattr__(
        env,
        "__dict__",
        {
            "v": 1,
            "id": job_id,
            "task": task,
            "payload": data,
            "priority": priority,
            "max_attempts": max_attempts,
            "correlation_id": correlation_id,
            "idempotency_key": idempotency_key,
            "enqueued_at": at,
            "headers": headers,
            "expires_at": expires_at,
        },
    )
    object.__setattr__(env, "__pydantic_fields_set__", set(_SET_BY_BUILD))
    object.__setattr__(env, "__pydantic_extra__", None)
    object.__setattr__(env, "__pydantic_private__", None)
    return env


def encode_envelope_text(envelope: JobEnvelope) -> str:
    """The stored form of an envelope."""
    return envelope.model_dump_json(exclude_defaults=False)


def encode_envelope(envelope: JobEnvelope) -> bytes:
    """The stored form of an envelope as UTF-8 bytes (what brokers send)."""
    # The same bytes as encode_envelope_text(...).encode(), without the str in between.
    return JobEnvelope.__pydantic_serializer__.to_json(envelope)
