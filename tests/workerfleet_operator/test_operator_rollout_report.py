"""A pool reports its Deployment's rollout when the rollout happens, not at its next poll.

Found by ``make bench-operator`` on the real API server: the controller woke on every status
change of its Deployment but neither reconciled nor re-planned its status (only a spec drift
marked it dirty), so a new pool whose Deployment rolled out after the first reconcile stayed
Ready=False until its next autoscaler poll or resync: up to ``pollingIntervalSeconds`` (300 s
for 9,000 of the benchmark's 10,000 pools) after it was ready.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.workerfleet_operator.conftest import (
    GROUP,
    NAMESPACE,
    OperatorRunner,
    QueueRedis,
    build_pool,
    condition,
    events_for,
    given_a_running_pool,
    wait_until,
)
from tests.workerfleet_operator.emulator import Emulator
from worker_runtime import producer


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
    # When the deployment controller reports the rollout done
    _report_rollout(emulator, "emails")
    # Then the pool says Ready without waiting five minutes for its next poll
    wait_until(
        lambda: condition(_pool(emulator, "emails"), "Ready").get("status") == "True",
        timeout=15,
        message="the pool did not report its rolled-out Deployment",
    )
    # and reporting it wrote nothing to the Deployment: still the creation's one apply
    assert _deployment_writes(emulator) == 1


def test_a_scale_step_stays_ready_when_the_creation_watch_event_outran_the_apply_answer(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a loaded API server: the watch event of the new Deployment reaches the operator a
    # second before the answer to the apply that created it (seen on the real API server
    # under CI load, where every later scale step then flipped Ready with a RollingOut Event)
    emulator.fake_deployment_controller = False
    emulator.delay_response("PATCH", r"/deployments/steps$", 1.0)
    body = build_pool(
        "steps",
        autoscaling={
            "minReplicas": 1,
            "maxReplicas": 4,
            "targetBacklogPerReplica": 10,
            "pollingIntervalSeconds": 1,
            "scaleUp": {"maxStepPercent": 1, "maxStepPods": 1},
        },
    )
    given_a_running_pool(emulator, queue_redis, operator, body)
    # ... whose one replica the deployment controller has rolled out: the pool is Ready
    _report_rollout(emulator, "steps")
    wait_until(
        lambda: condition(_pool(emulator, "steps"), "Ready").get("status") == "True",
        message="the pool never became Ready",
    )
    wait_until(lambda: "Ready" in _event_reasons(emulator, "steps"), message="no Ready Event")
    before = _event_reasons(emulator, "steps")
    # When a backlog makes the autoscaler take a step the deployment controller has not
    # observed yet (the generation moves, the pod template does not)
    _enqueue(queue_redis, "steps", 40)
    wait_until(
        lambda: "ScaledUp" in _event_reasons(emulator, "steps"),
        message="no scale step",
    )
    wait_until(
        lambda: _pool(emulator, "steps")["status"].get("desiredReplicas", 1) > 1,
        message="the step was never reported in status",
    )
    # Then the pool stayed Ready: a step is no rollout, and no RollingOut Event announced one
    assert condition(_pool(emulator, "steps"), "Ready").get("status") == "True"
    after = _event_reasons(emulator, "steps")
    assert after.count("RollingOut") == before.count("RollingOut"), after
    assert after.count("Ready") == before.count("Ready"), after


def _pool(emu: Emulator, name: str) -> dict[str, Any]:
    pool = emu.get("workerpools", NAMESPACE, name, group=GROUP)
    assert pool is not None
    return pool


def _event_reasons(emu: Emulator, name: str) -> list[str]:
    return [str(e.get("reason")) for e in events_for(emu, name)]


def _enqueue(server: QueueRedis, queue_name: str, count: int) -> None:
    jobs = [producer.JobSpec(task="t", payload={"n": i}) for i in range(count)]
    producer.SyncProducer(server.client(), queue_name).enqueue_many(jobs)


def _report_rollout(emu: Emulator, name: str) -> None:
    """Write the Deployment's status as its controller would once its pods are available."""
    deployment = emu.get("deployments", NAMESPACE, name, group="apps")
    assert deployment is not None
    replicas = deployment["spec"]["replicas"]
    emu.patch(
        "deployments",
        NAMESPACE,
        name,
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
