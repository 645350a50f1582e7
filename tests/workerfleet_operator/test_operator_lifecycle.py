"""The operator against the API emulator over real HTTP: create, update, drift, deletion."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from tests.workerfleet_operator.conftest import (
    NAMESPACE,
    OperatorRunner,
    QueueRedis,
    build_pool,
    build_secret,
    condition,
    events_for,
    given_a_running_pool,
    wait_for_condition,
    wait_until,
)
from tests.workerfleet_operator.emulator import Emulator
from worker_runtime import producer


def pool(emu: Emulator, name: str) -> dict | None:
    return emu.get("workerpools", NAMESPACE, name, group="workerfleet.io")


def deployment(emu: Emulator, name: str) -> dict | None:
    return emu.get("deployments", NAMESPACE, name, group="apps")


def test_a_new_workerpool_gets_an_owned_deployment_and_becomes_ready(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a Secret with the Redis URL and a running operator
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    operator()
    # When a WorkerPool is created
    created = emulator.create("workerpools", build_pool("emails"), group="workerfleet.io")
    # Then a Deployment owned by the pool exists
    dep = wait_until(lambda: deployment(emulator, "emails"), message="no Deployment")
    owner = dep["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == (
        "WorkerPool",
        created["metadata"]["uid"],
        True,
    )
    # And the pool reports Ready with observedGeneration following its generation
    wait_for_condition(emulator, "emails", "Ready", message="pool not Ready")
    status = pool(emulator, "emails")["status"]
    assert status["observedGeneration"] == 1


def _image(emu: Emulator, name: str) -> str | None:
    dep = deployment(emu, name)
    return dep["spec"]["template"]["spec"]["containers"][0]["image"] if dep else None


def change_image(emu: Emulator, tag: str) -> None:
    """An ordinary spec change of pool ``emails``: its image."""
    emu.patch(
        "workerpools",
        NAMESPACE,
        "emails",
        {"spec": {"image": f"registry.example/email-worker:{tag}"}},
        group="workerfleet.io",
    )


def test_a_spec_change_is_rolled_out_and_observed_generation_follows(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a converged pool
    given_a_running_pool(emulator, queue_redis, operator, until="Ready")
    # When its image changes
    change_image(emulator, "1.5.0")
    # Then the Deployment runs the new image and observedGeneration catches up with generation 2
    wait_until(
        lambda: _image(emulator, "emails") == "registry.example/email-worker:1.5.0",
        message="not rolled out",
    )
    wait_until(
        lambda: (pool(emulator, "emails") or {}).get("status", {}).get("observedGeneration") == 2,
        message="observedGeneration did not follow",
    )
    assert condition(pool(emulator, "emails"), "Ready")["observedGeneration"] == 2
    # And an ordinary spec change is not announced as drift (nobody edited the Deployment)
    reasons = [e["reason"] for e in events_for(emulator, "emails")]
    assert "DriftCorrected" not in reasons, reasons


def test_a_hand_edited_deployment_is_restored(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a converged pool
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    operator()
    emulator.create("workerpools", build_pool("emails"), group="workerfleet.io")
    original = wait_until(lambda: _image(emulator, "emails"), message="no Deployment")
    # When someone edits the Deployment's image by hand
    dep = deployment(emulator, "emails")
    containers = dep["spec"]["template"]["spec"]["containers"]
    containers[0]["image"] = "evil.example/miner:latest"
    emulator.patch(
        "deployments",
        NAMESPACE,
        "emails",
        {"spec": {"template": {"spec": {"containers": containers}}}},
        group="apps",
        manager="kubectl-edit",
    )
    # Then the operator puts the pool's image back, and says so
    wait_until(lambda: _image(emulator, "emails") == original, message="drift not corrected")
    wait_until(
        lambda: [e for e in events_for(emulator, "emails") if e["reason"] == "DriftCorrected"],
        message="no DriftCorrected Event",
    )


def test_a_deleted_deployment_is_recreated(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a converged pool
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    operator()
    emulator.create("workerpools", build_pool("emails"), group="workerfleet.io")
    first = wait_until(lambda: deployment(emulator, "emails"), message="no Deployment")
    # When the Deployment is deleted
    emulator.delete("deployments", NAMESPACE, "emails", group="apps")
    # Then a new one (another uid) is created
    again = wait_until(
        lambda: (
            (d := deployment(emulator, "emails"))
            and d["metadata"]["uid"] != first["metadata"]["uid"]
            and d
        ),
        message="Deployment not recreated",
    )
    assert again["metadata"]["ownerReferences"][0]["name"] == "emails"


def test_a_missing_secret_gives_ready_false_and_a_warning_then_recovers_when_created(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a running operator and no Secret
    operator()
    # When a pool references the missing Secret
    emulator.create("workerpools", build_pool("emails", secret="not-yet"), group="workerfleet.io")
    # Then Ready=False with reason SecretNotFound, a Warning Event, and no half-applied Deployment
    cond = wait_until(
        lambda: condition(pool(emulator, "emails"), "Ready"), message="no Ready condition"
    )
    assert (cond["status"], cond["reason"]) == ("False", "SecretNotFound")
    assert "not-yet" in cond["message"]
    warnings = wait_until(
        lambda: [e for e in events_for(emulator, "emails") if e["type"] == "Warning"],
        message="no Warning Event",
    )
    assert warnings[0]["reason"] == "SecretNotFound"
    assert deployment(emulator, "emails") is None
    # And retries are paced (no storm): a handful of Secret reads in a second, not hundreds
    before = sum(
        1 for m, p, _ in list(emulator.request_log) if m == "GET" and "/secrets/not-yet" in p
    )
    import time

    time.sleep(1.0)  # the subject here is the retry pace over time: one second of it
    after = sum(
        1 for m, p, _ in list(emulator.request_log) if m == "GET" and "/secrets/not-yet" in p
    )
    assert after - before <= 5
    # When the Secret is created
    emulator.create("secrets", build_secret("not-yet", queue_redis.url))
    # Then the pool recovers
    wait_for_condition(emulator, "emails", "Ready", timeout=15, message="did not recover")
    assert deployment(emulator, "emails") is not None


def test_a_rotated_secret_pointing_at_another_redis_is_picked_up(
    emulator: Emulator,
    queue_redis: QueueRedis,
    redis_factory: Callable[..., Any],
    operator: Callable[..., OperatorRunner],
) -> None:
    # Given a converged pool reading an empty queue
    given_a_running_pool(emulator, queue_redis, operator)
    # When the Secret is rotated to another Redis that holds a backlog
    other = redis_factory()
    other_url = f"redis://127.0.0.1:{other.port}/0"
    jobs = [producer.JobSpec(task="send-email", payload={"n": i}) for i in range(42)]
    producer.SyncProducer(redis.Redis.from_url(other_url), "emails").enqueue_many(jobs)
    emulator.patch(
        "secrets", NAMESPACE, "redis-creds", {"data": build_secret("x", other_url)["data"]}
    )
    # Then the operator reads the new server (the Deployment keeps its secretKeyRef unchanged)
    wait_until(
        lambda: (
            (pool(emulator, "emails") or {}).get("status", {}).get("queue", {}).get("backlog") == 42
        ),
        timeout=15,
        message="rotated Secret not used",
    )


def _users_pdb(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"maxUnavailable": 3, "selector": {"matchLabels": {"app": "theirs"}}},
    }


def _users_service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"selector": {"app": "theirs"}, "ports": [{"port": 80}]},
    }


def test_objects_named_like_children_but_not_owned_are_neither_deleted_nor_adopted(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given the user's own PDB "emails" and Service "emails-metrics" (no owner), and a pool
    # "emails" that wants a PDB but no metrics Service
    emulator.create("poddisruptionbudgets", _users_pdb("emails"), group="policy")
    emulator.create("services", _users_service("emails-metrics"))
    body = build_pool("emails", podDisruptionBudget={"enabled": True})
    given_a_running_pool(emulator, queue_redis, operator, body, until="Ready")
    # When the pool's spec changes (obsolete children are cleaned up after a change)
    change_image(emulator, "1.5.0")
    wait_until(
        lambda: (pool(emulator, "emails") or {}).get("status", {}).get("observedGeneration") == 2,
        message="generation 2 never reconciled",
    )
    # Then both are still there, exactly as the user wrote them (no ownerReference added)
    pdb = emulator.get("poddisruptionbudgets", NAMESPACE, "emails", group="policy")
    service = emulator.get("services", NAMESPACE, "emails-metrics")
    assert pdb is not None and service is not None
    assert "ownerReferences" not in pdb["metadata"]
    assert pdb["spec"]["maxUnavailable"] == 3
    # And the pool says which object it left alone
    degraded = wait_for_condition(emulator, "emails", "Degraded", message="not Degraded")
    assert degraded["reason"] == "ChildNotOwned"
    assert "PodDisruptionBudget emails" in degraded["message"]


def test_a_deployment_of_the_pools_name_owned_by_someone_else_is_not_adopted_or_scaled(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given someone else's Deployment "emails" at 2 replicas
    theirs = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "emails", "namespace": NAMESPACE},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "theirs"}},
            "template": {
                "metadata": {"labels": {"app": "theirs"}},
                "spec": {"containers": [{"name": "web", "image": "theirs:1"}]},
            },
        },
    }
    emulator.create("deployments", theirs, group="apps")
    # When a pool "emails" is created (its queue has a backlog the autoscaler would act on)
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    operator()
    emulator.create("workerpools", build_pool("emails"), group="workerfleet.io")
    producer.SyncProducer(queue_redis.client(), "emails").enqueue("send-email", {"n": 1})
    # Then the pool is not Ready and says why, and their Deployment is untouched
    wait_until(
        lambda: condition(pool(emulator, "emails"), "Ready").get("reason") == "ChildNotOwned",
        message="no ChildNotOwned",
    )
    dep = deployment(emulator, "emails")
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "theirs:1"
    assert "ownerReferences" not in dep["metadata"]
