"""JobSpec's hand-written constructor builds what the dataclass's generated one built.

JobSpec sets its fields with one update of the instance's dict (the generated __init__ of a
frozen dataclass cost 4 us per job on the producer's hot path). These tests hold that
constructor to the declared fields: same parameters in the same order with the same defaults,
frozen, a headers mapping of its own per spec, and the dataclass's equality, repr and replace.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from worker_runtime import envelope, producer
from worker_runtime.producer import JobSpec


def test_the_constructor_takes_every_field_in_order_with_its_default() -> None:
    params = list(inspect.signature(JobSpec).parameters.values())
    fields = dataclasses.fields(JobSpec)
    assert [p.name for p in params] == [f.name for f in fields]
    for p, f in zip(params, fields, strict=True):
        if f.default_factory is not dataclasses.MISSING:
            assert p.default is None  # headers: a fresh mapping per spec, as the factory made
        elif f.default is dataclasses.MISSING:
            assert p.default is inspect.Parameter.empty
        else:
            assert p.default == f.default, f.name


def test_a_spec_holds_what_it_was_given_positionally_or_by_name() -> None:
    values = dict(
        task="send-email", payload={"to": "a@b"}, delay=1.5, eta=None, priority="high",
        idempotency_key="k", idempotency_ttl=60.0, correlation_id="c", max_attempts=3,
        job_id="j-1", headers={"h": "v"}, ttl=30.0, expires_at=None,
    )  # fmt: skip
    by_name = JobSpec(**values)  # type: ignore[arg-type]
    by_position = JobSpec(*values.values())  # type: ignore[arg-type]
    assert dataclasses.asdict(by_name) == values
    assert by_position == by_name


def test_a_spec_is_frozen_and_its_defaults_are_the_fields_defaults() -> None:
    spec = JobSpec("noop")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.task = "other"  # type: ignore[misc]
    assert spec.priority is envelope.Priority.NORMAL
    assert spec.idempotency_ttl == 86_400.0
    assert spec.headers == {}
    assert JobSpec("noop").headers is not spec.headers  # never one dict shared by every spec
    assert spec == JobSpec("noop") and spec != JobSpec("other")
    assert repr(spec).startswith("JobSpec(task='noop', payload=None, delay=None,")
    assert dataclasses.replace(spec, delay=2.0) == JobSpec("noop", delay=2.0)


def test_a_spec_enqueues_as_before() -> None:
    request = producer.build_request(JobSpec("noop", {"i": 1}, priority="low"), now=1_000.0)
    assert request.envelope.task == "noop"
    assert request.envelope.payload == {"i": 1}
    assert request.envelope.priority is envelope.Priority.LOW
