"""build_envelope's plain path builds the envelope pydantic's validation would build.

For inputs of exactly the types the model stores, build_envelope skips pydantic and fills the
frozen model itself (the producer's hot path); everything else goes through pydantic. Each case
here builds the envelope both ways and compares the model, the fields it counts as set and its
stored bytes; inputs pydantic converts or refuses must still be converted or refused the
same way.
"""

from __future__ import annotations

import enum
import re
from typing import Any

import pydantic
import pytest

from worker_runtime import envelope, errors
from worker_runtime.envelope import JobEnvelope, Priority

NOW = 1_796_540_573.214049


def build_validated(task: Any, payload: Any, **options: Any) -> JobEnvelope:
    """The envelope as pydantic validation builds it (what build_envelope did before)."""
    return JobEnvelope(
        id=options.get("job_id") or "fixed-id",
        task=task,
        payload=envelope.build_payload(payload),
        priority=Priority(options.get("priority", Priority.NORMAL)),
        max_attempts=options.get("max_attempts"),
        correlation_id=options.get("correlation_id"),
        idempotency_key=options.get("idempotency_key"),
        enqueued_at=options.get("now", NOW),
        headers=dict(options.get("headers") or {}),
        expires_at=options.get("expires_at"),
    )


def build_both(task: Any, payload: Any, **options: Any) -> tuple[JobEnvelope, JobEnvelope]:
    options = {"job_id": "fixed-id", "now": NOW, **options}
    return envelope.build_envelope(task, payload, **options), build_validated(
        task, payload, **options
    )


def nested(depth: int) -> dict[str, Any]:
    """A payload ``depth`` dicts deep: {"a": {"a": ... {}}}."""
    top: dict[str, Any] = {}
    inner = top
    for _ in range(depth - 1):
        inner["a"] = {}
        inner = inner["a"]
    return top


PLAIN_CASES: list[tuple[str, Any, dict[str, Any]]] = [
    ("noop", None, {}),
    ("noop", {}, {}),
    ("noop", {"i": 1, "t": NOW}, {}),
    (
        "send-email",
        {"to": "a@example.test", "n": [1, 2.5, True, None, {"deep": ["x", {"y": -0.0}]}]},
        {"priority": "high", "max_attempts": 3, "correlation_id": "c-1"},
    ),
    ("noop", {"big": 2**70, "neg": -(2**63) - 1, "huge": 1e308}, {"priority": Priority.LOW}),
    ("noop", {"text": "snow \u2603 and a nul \x00"}, {"idempotency_key": "k-1"}),
    ("t" * 200, {"a": 1}, {"headers": {"traceparent": "00-abc", "x": ""}}),
    ("noop", {"a": 1}, {"expires_at": NOW + 60.0, "job_id": "order-42 (retry)"}),
]


def test_the_plain_path_copies_the_payload_so_later_changes_do_not_reach_the_job() -> None:
    # The memory broker keeps the envelope object itself: a caller reusing its dict after the
    # enqueue must not change the job (validation copies containers; so must the plain path).
    inner = {"items": [1, 2]}
    payload = {"order": inner}
    env = envelope.build_envelope("noop", payload, now=NOW)
    inner["items"].append(3)
    payload["extra"] = True  # type: ignore[assignment]
    assert env.payload == {"order": {"items": [1, 2]}}


def test_a_generated_job_id_is_new_for_every_envelope() -> None:
    a = envelope.build_envelope("noop", {"i": 1}, now=NOW)
    b = envelope.build_envelope("noop", {"i": 1}, now=NOW)
    assert a.id != b.id
    assert len(a.id) == 32
    assert a.model_dump(exclude={"id"}) == b.model_dump(exclude={"id"})


def test_the_plain_envelope_is_frozen_like_a_validated_one() -> None:
    env = envelope.build_envelope("noop", {"i": 1}, now=NOW)
    with pytest.raises(pydantic.ValidationError):
        env.task = "other"  # type: ignore[misc]


class Colour(enum.StrEnum):
    RED = "red"


class Order(pydantic.BaseModel):
    n: int


CONVERTED_CASES: list[tuple[str, Any, dict[str, Any]]] = [
    # pydantic converts (or takes) these: the envelope must hold what it held before
    ("noop", Order(n=3), {}),
    ("noop", {"colour": Colour.RED}, {}),
    ("noop", {"i": 1}, {"now": 1_796_540_573}),  # an int clock becomes a float
    ("noop", {"i": 1}, {"max_attempts": 2.0}),
    ("noop", {"i": 1}, {"expires_at": 1_796_540_600}),
    # 254 levels: the deepest pydantic accepts; the plain path hands deep payloads to it
    ("noop", nested(254), {}),
]


@pytest.mark.parametrize(("task", "payload", "options"), PLAIN_CASES + CONVERTED_CASES)
def test_build_envelope_builds_what_validation_builds(
    task: str, payload: Any, options: dict[str, Any]
) -> None:
    # The plain path for plain inputs; for the converted ones the plain path declines and
    # pydantic converts them as it always did
    fast, validated = build_both(task, payload, **options)
    assert fast == validated
    assert fast.model_dump() == validated.model_dump()
    assert fast.__pydantic_fields_set__ == validated.__pydantic_fields_set__
    assert envelope.encode_envelope(fast) == envelope.encode_envelope(validated)
    assert envelope.parse_envelope(envelope.encode_envelope(fast)) == validated


REFUSED_CASES: list[tuple[str, Any, dict[str, Any]]] = [
    ("", {"i": 1}, {}),
    ("t" * 201, {"i": 1}, {}),
    ("noop", {"t": float("nan")}, {}),
    ("noop", {"deep": [{"x": float("inf")}]}, {}),
    ("noop", ["not", "an", "object"], {}),
    ("noop", {"i": 1}, {"priority": "urgent"}),
    ("noop", {"i": 1}, {"max_attempts": 0}),
    ("noop", {"i": 1}, {"job_id": "line\nbreak"}),
    ("noop", {"i": 1}, {"job_id": "x" * 201}),
    ("noop", {"i": 1}, {"headers": {"n": 1}}),
    # a lone surrogate in a constrained string: pydantic refuses it (it could not be encoded)
    ("t\ud800", {"i": 1}, {}),
    ("noop", {"i": 1}, {"job_id": "\udcff"}),
    # nested deeper than pydantic's limit (254 levels)
    ("noop", "DEEP-300", {}),
    # an unhashable priority is a ValueError, as Priority(...) says
    ("noop", {"i": 1}, {"priority": ["high"]}),
]


@pytest.mark.parametrize(("task", "payload", "options"), REFUSED_CASES)
def test_inputs_pydantic_refuses_are_refused_with_the_same_error(
    task: str, payload: Any, options: dict[str, Any]
) -> None:
    options = {"job_id": "fixed-id", "now": NOW, **options}
    if payload == "DEEP-300":
        payload = nested(300)
    with pytest.raises((ValueError, TypeError)) as before:
        build_validated(task, payload, **options)
    with pytest.raises(type(before.value)) as now:
        envelope.build_envelope(task, payload, **options)
    assert str(now.value) == str(before.value)


NOT_JSON_CASES: list[tuple[Any, str]] = [
    ({1: "int key"}, "payload has the key 1 of type int"),
    ({"a": (1, 2)}, "payload.a holds a value of type tuple"),
    ({"a": {1, 2}}, "payload.a holds a value of type set"),
]


@pytest.mark.parametrize(("payload", "refusal"), NOT_JSON_CASES)
def test_values_json_cannot_carry_are_refused_where_pydantic_refuses_them_naming_where(
    payload: Any, refusal: str
) -> None:
    # pydantic's refusal ("1 validation error for JobEnvelope ...") now reads as the package's
    # PayloadNotJSON naming the value (tests/worker_runtime/test_payload_not_json.py)
    with pytest.raises(pydantic.ValidationError):
        build_validated("noop", payload, job_id="fixed-id")
    with pytest.raises(errors.PayloadNotJSON, match=rf"^{re.escape(refusal)}"):
        envelope.build_envelope("noop", payload, job_id="fixed-id", now=NOW)


@pytest.mark.timeout(10)
def test_a_payload_that_holds_itself_is_refused_at_once_not_walked_forever() -> None:
    # The finite-number check walked a cyclic payload forever (the producer hung)
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(ValueError, match="cyclic reference"):
        envelope.build_envelope("noop", {"items": cyclic}, now=NOW)
    looped: dict[str, Any] = {"x": float("nan")}
    looped["self"] = looped
    with pytest.raises(ValueError, match=r"payload\.x is nan"):
        envelope.build_envelope("noop", looped, now=NOW)
