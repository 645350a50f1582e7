"""The operator with an SQS-backed WorkerPool, against the API emulator and a real ElasticMQ.

The operator reads an SQS pool's queue through the runtime's read-only probe (no Secret: the
``sqs://`` URL is composed from the spec, credentials come from the AWS chain, here dummy keys in
the environment), runs the pods under the pool's own token-less ServiceAccount, and never uses a
ServiceAccount of that name that the pool does not own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.support import elasticmq
from tests.workerfleet_operator.conftest import (
    GROUP,
    NAMESPACE,
    OperatorRunner,
    build_pool,
    condition,
    wait_for_condition,
    wait_until,
)
from tests.workerfleet_operator.emulator import Emulator


@pytest.fixture(autouse=True)
def _aws_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    # The chain's first source; IMDS off so a lookup never waits on a metadata server.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-elasticmq")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-elasticmq")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def build_sqs_pool(name: str, queue: str, server: elasticmq.ElasticMQServer) -> dict[str, Any]:
    # the latency signal on too: SQS gives it no oldest-job age, which the status must say
    autoscaling = {"targetUtilization": 0, "targetOldestJobAgeSeconds": 30}
    body = build_pool(name, queue=queue, autoscaling=autoscaling)
    body["spec"]["queue"] = {
        "name": queue,
        "sqs": {"region": "us-east-1", "endpoint": server.endpoint},
    }
    return body


def _pool(emu: Emulator, name: str) -> dict[str, Any]:
    return emu.get("workerpools", NAMESPACE, name, group=GROUP) or {}


def test_an_sqs_pool_reads_its_backlog_from_sqs_without_any_secret(
    emulator: Emulator,
    operator: Callable[..., OperatorRunner],
    elasticmq_server: elasticmq.ElasticMQServer,
) -> None:
    # Given 25 jobs waiting in an SQS queue and the operator running
    queue = f"op-{uuid.uuid4().hex[:10]}"
    asyncio.run(elasticmq.enqueue_jobs(elasticmq_server.url, queue, "t", 25))
    operator()
    # When an SQS pool for that queue is created
    emulator.create("workerpools", build_sqs_pool("emails", queue, elasticmq_server), group=GROUP)
    # Then the pool reads the backlog from SQS and says the age signal is unavailable there
    wait_for_condition(emulator, "emails", "QueueReachable", timeout=30)
    status = wait_until(
        lambda: (
            (s := _pool(emulator, "emails").get("status", {})).get("queue", {}).get("backlog") == 25
            and s
        ),
        timeout=30,
        message="backlog never read",
    )
    (unavailable,) = status["autoscaling"]["signalsUnavailable"]
    assert (unavailable["signal"], unavailable["reason"]) == ("latency", "OldestJobAgeUnavailable")
    assert "SQS broker does not report the oldest waiting job's age" in unavailable["message"]
    assert "oldestJobAgeSeconds" not in status["queue"]
    # and its pods run under the pool's own ServiceAccount, created without an API token
    account = emulator.get("serviceaccounts", NAMESPACE, "emails-worker")
    assert account is not None and account["automountServiceAccountToken"] is False
    assert account["metadata"]["ownerReferences"][0]["name"] == "emails"
    deployment = emulator.get("deployments", NAMESPACE, "emails", group="apps")
    assert deployment is not None
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "emails-worker"
    # and no Secret was ever read for it
    assert not [p for m, p, _ in emulator.request_log if "/secrets" in p]


def test_a_service_account_named_like_the_pools_but_not_its_own_is_never_used(
    emulator: Emulator,
    operator: Callable[..., OperatorRunner],
    elasticmq_server: elasticmq.ElasticMQServer,
) -> None:
    # Given someone else's ServiceAccount "emails-worker" (say, bound to a powerful IAM role)
    theirs = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": "emails-worker",
            "namespace": NAMESPACE,
            "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/admin"},
        },
    }
    emulator.create("serviceaccounts", theirs)
    operator()
    # When an SQS pool "emails" is created
    queue = f"op-{uuid.uuid4().hex[:10]}"
    emulator.create("workerpools", build_sqs_pool("emails", queue, elasticmq_server), group=GROUP)
    # Then no pod can run under it: no Deployment, and the pool says why
    ready = wait_until(
        lambda: (
            (c := condition(_pool(emulator, "emails"), "Ready")).get("reason") == "ApplyRejected"
            and c
        ),
        timeout=30,
        message="the pool never refused the foreign ServiceAccount",
    )
    assert "ServiceAccount emails-worker exists and is not this pool's" in ready["message"]
    assert emulator.get("deployments", NAMESPACE, "emails", group="apps") is None
    kept = emulator.get("serviceaccounts", NAMESPACE, "emails-worker")
    assert kept is not None and "ownerReferences" not in kept["metadata"]
    # When that ServiceAccount is removed, the pool makes its own and its workers start
    emulator.delete("serviceaccounts", NAMESPACE, "emails-worker")
    deployment = wait_until(
        lambda: emulator.get("deployments", NAMESPACE, "emails", group="apps"),
        timeout=60,
        message="no Deployment after the foreign ServiceAccount went",
    )
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "emails-worker"
    own = emulator.get("serviceaccounts", NAMESPACE, "emails-worker")
    assert own is not None and own["metadata"]["ownerReferences"][0]["name"] == "emails"
