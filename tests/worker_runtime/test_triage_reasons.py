"""Every dead-letter reason is explained in words where an on-call engineer reads it."""

from __future__ import annotations

import dataclasses

from worker_runtime import triage
from worker_runtime.brokers import base


def _letter(reason: str, lost: int = 0) -> base.DeadLetter:
    return base.DeadLetter(
        job_id="j1",
        task="t",
        reason=reason,
        priority="normal",
        dead_lettered_at=0.0,
        attempts=0,
        deliveries=lost,
        lost=lost,
        worker_id="w1",
        correlation_id=None,
        first_failure_at=None,
        last_failure_at=None,
        history=(),
        envelope_raw="{}",
    )


def test_every_reason_a_broker_records_has_a_meaning() -> None:
    assert {str(r) for r in base.DeadLetterReason} == set(triage.REASON_MEANINGS)


def test_a_poison_job_is_explained_by_how_many_deliveries_ended_without_a_result() -> None:
    # a max_deliveries letter has no failure history: the sentence is all the reader gets
    said = triage.explain_reason(_letter("max_deliveries", lost=3))
    assert said.startswith("its deliveries ended without a result 3 time(s): the worker")
    assert "OOM kill" in said


def test_a_reason_this_runtime_does_not_know_is_named_as_it_is() -> None:
    letter = dataclasses.replace(_letter("max_attempts"), reason="from_a_newer_runtime")
    assert triage.explain_reason(letter) == "reason 'from_a_newer_runtime'"


def test_the_last_error_of_a_poison_job_says_its_deliveries_had_no_result() -> None:
    # dlq ls showed an empty "last error" cell for it
    assert triage.describe_last_error(_letter("max_deliveries", lost=2)) == (
        "(no result from 2 deliveries: worker died?)"
    )
    assert triage.describe_last_error(_letter("expired")) == ""
