"""An SQS pool whose queue name would share another queue's SQS queues is held, saying why.

The CRD's CEL rule refuses such a pool at ``kubectl apply``; a pool the API server did not check
(a CRD older than the operator) reaches the operator, whose parse holds it with the same
message as ``Ready=False reason InvalidSpec`` and applies nothing.
"""

from __future__ import annotations

import datetime as dt

import pytest
from workerfleet_operator import api, plan

from tests.workerfleet_operator import crd_validation, test_api_rules

T0 = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(("prefix", "name"), [("", "emails-high"), ("emails-", "dlq")])
def test_an_sqs_pool_named_like_another_queue_s_sqs_queue_is_held_as_invalid_spec_saying_so(
    prefix: str, name: str
) -> None:
    # Given the SQS sample pool renamed so that, with its prefix, it ends like a queue of "emails"
    body = crd_validation.load_sample("sqs")
    body["metadata"].update(namespace="team-a", uid="u", generation=3)
    body["spec"]["queue"]["name"] = name
    body["spec"]["queue"]["sqs"]["prefix"] = prefix
    # When the operator parses and plans it
    parsed = api.parse_pool(body)
    assert isinstance(parsed, api.InvalidPool)
    result = plan.plan(parsed, plan.Observed(now=T0, secret=plan.SecretCheck("ok")))
    # Then it is held with nothing applied, Ready=False/InvalidSpec saying which queues it
    # would share, not the characters-and-length message the runtime's check used to give
    assert result.hold and result.children == ()
    (ready,) = [c for c in result.status.conditions or () if c.type == "Ready"]
    assert (ready.status, ready.reason) == ("False", "InvalidSpec")
    assert ready.message == f"spec.queue: {test_api_rules.SQS_NAME_OF_ANOTHER_QUEUE}"
    assert "70 characters" not in ready.message
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "InvalidSpec")]
