"""A pool reports its Deployment's rollout when the rollout happens, not at its next poll.

Found by ``make bench-operator`` on the real API server: the controller woke on every status
change of its Deployment but neither reconciled nor re-planned its status (only a spec drift
marked it dirty), so a new pool whose Deployment rolled out after the first reconcile stayed
Ready=False until its next autoscaler poll or resync: up to ``pollingIntervalSeconds`` (300 s
for 9,000 of the benchmark's 10,000 pools) after it was ready.
"""

from __future__ import annotations

from collections.abc import Callable

from tests.workerfleet_operator.conftest import (
    GROUP,
    NAMESPACE,
    OperatorRunner,
    QueueRedis,
    build_pool,
    condition,
    given_a_running_pool,
    wait_until,
)
from tests.workerfleet_operator.emulator import Emulator


def test_a_deployment_rolled_out_after_the_first_reconcile_makes_the_pool_ready_before_a_poll(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a pool polling every five minutes, whose Deployment the deployment controller has not
    # acted on yet (no fake controller: status stays empty until this test writes it)
    emulator.fake_deployment_controller = False
    body = build_pool("emails", autoscaling={"minReplicas": 1, "pollingIntervalSeconds": 300})
    given_a_running_pool(emulator, queue_redis, operator, body)
    pool = emulator.get("workerpools", NAMESPACE, "emails", group=GROUP)
    assert condition(pool, "Ready").get("status") == "False"
    deployment = emulator.get("deployments", NAMESPACE, "emails", group="apps")
    assert deployment is not None
    # When the deployment controller reports the rollout done
    replicas = deployment["spec"]["replicas"]
    emulator.patch(
        "deployments",
        NAMESPACE,
        "emails",
        {
            "status": {
                "observedGeneration": deployment["metadata"]["generation"],
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
            }
        },
        group="apps",
        subresource="status",
        manager="kube-controller-manager",
    )
    # Then the pool says Ready without waiting five minutes for its next poll
    wait_until(
        lambda: (
            condition(emulator.get("workerpools", NAMESPACE, "emails", group=GROUP), "Ready").get(
                "status"
            )
            == "True"
        ),
        timeout=15,
        message="the pool did not report its rolled-out Deployment",
    )
    # and reporting it wrote nothing to the Deployment: still the creation's one apply
    assert _deployment_writes(emulator) == 1


def _deployment_writes(emu: Emulator) -> int:
    return sum(
        1 for m, p, _ in list(emu.request_log) if m == "PATCH" and p.endswith("/deployments/emails")
    )


def test_a_new_pool_writes_its_deployment_once_and_the_autoscaler_takes_the_count_over_later(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a new builtin pool starting at 2 replicas (its minimum), converged
    body = build_pool("emails", autoscaling={"minReplicas": 2})
    given_a_running_pool(emulator, queue_redis, operator, body, until="Ready")
    # Then its Deployment was written once (the apply), owned by the pool, at 2 replicas
    assert _deployment_writes(emulator) == 1
    deployment = emulator.get("deployments", NAMESPACE, "emails", group="apps")
    assert deployment is not None
    assert deployment["metadata"]["ownerReferences"][0]["name"] == "emails"
    assert deployment["spec"]["replicas"] == 2
    # When its spec changes (the next apply no longer sends spec.replicas)
    emulator.patch("workerpools", NAMESPACE, "emails", {"spec": {"concurrency": 6}}, group=GROUP)
    wait_until(
        lambda: (
            (d := emulator.get("deployments", NAMESPACE, "emails", group="apps"))
            and d["metadata"]["generation"] > deployment["metadata"]["generation"]
        ),
        message="the new spec was never applied",
    )
    # Then the count stayed 2 (never the API default of 1), now owned by the autoscaler's manager
    after = emulator.get("deployments", NAMESPACE, "emails", group="apps")
    assert after is not None and after["spec"]["replicas"] == 2
    owners = {
        m["manager"]
        for m in after["metadata"]["managedFields"]
        if "f:replicas" in m["fieldsV1"].get("f:spec", {})
    }
    assert "workerfleet-autoscaler" in owners
