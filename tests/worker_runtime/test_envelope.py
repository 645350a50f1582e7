"""The job envelope: JSON with a schema version; anything else is refused with a DLQ reason."""

from __future__ import annotations

import json

import pydantic
import pytest

from worker_runtime import envelope, errors


class Email(pydantic.BaseModel):
    to: str
    subject: str


def test_an_envelope_round_trips_through_json_with_its_typed_payload() -> None:
    env = envelope.build_envelope(
        "send-email",
        Email(to="a@b", subject="hi"),
        priority="high",
        correlation_id="c1",
        max_attempts=3,
        now=100.0,
    )
    parsed = envelope.parse_envelope(envelope.encode_envelope_text(env))
    assert parsed == env
    assert (parsed.v, parsed.priority, parsed.payload) == (
        1,
        envelope.Priority.HIGH,
        {"to": "a@b", "subject": "hi"},
    )
    assert Email.model_validate(parsed.payload) == Email(to="a@b", subject="hi")


def test_the_encoded_envelope_is_the_stored_json_as_utf8_bytes() -> None:
    env = envelope.build_envelope("t", {"name": "Zoë", "n": [1, 2.5, None]}, now=1.0)
    encoded = envelope.encode_envelope(env)
    assert encoded == envelope.encode_envelope_text(env).encode("utf-8")
    assert envelope.parse_envelope(encoded) == env


def test_new_job_ids_are_32_random_hex_digits_and_do_not_repeat() -> None:
    ids = {envelope.new_job_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("{not json", "unparseable_json"),
        (b"\xff\xfe", "invalid_envelope"),  # bytes that are not UTF-8
        (b'{"v": 1, "task": "caf\xe9"}', "invalid_envelope"),
        ("[1, 2]", "invalid_envelope"),
        (json.dumps({"v": 2, "id": "x", "task": "t", "enqueued_at": 1}), "unknown_schema_version"),
        (json.dumps({"id": "x", "task": "t", "enqueued_at": 1}), "unknown_schema_version"),
        (json.dumps({"v": 1, "id": "x", "enqueued_at": 1}), "invalid_envelope"),
        (
            json.dumps({"v": 1, "id": "x", "task": "t", "enqueued_at": 1, "priority": "urgent"}),
            "invalid_envelope",
        ),
    ],
)
def test_an_envelope_that_cannot_run_is_refused_with_a_reason(
    raw: str | bytes, reason: str
) -> None:
    with pytest.raises(envelope.EnvelopeError) as err:
        envelope.parse_envelope(raw)
    assert err.value.reason == reason


def test_a_payload_that_is_not_json_is_refused_at_enqueue_never_pickled() -> None:
    with pytest.raises(errors.PayloadNotJSON, match=r"^payload\.when holds a value of type object"):
        envelope.build_envelope("t", {"when": object()})


def test_job_ids_with_control_characters_are_refused() -> None:
    with pytest.raises(pydantic.ValidationError):
        envelope.build_envelope("t", {}, job_id="a\x1fb")


def test_unknown_fields_from_newer_producers_are_ignored() -> None:
    raw = json.dumps({"v": 1, "id": "x", "task": "t", "enqueued_at": 1, "future_field": 1})
    assert envelope.parse_envelope(raw).id == "x"
