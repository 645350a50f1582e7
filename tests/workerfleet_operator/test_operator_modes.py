"""Autoscaling modes and replica ownership on the API emulator: keda, disabled, dry run, owners."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from tests.workerfleet_operator.conftest import (
    NAMESPACE,
    OperatorRunner,
    QueueRedis,
    build_pool,
    build_secret,
    condition,
    count_polls,
    events_for,
    given_a_running_pool,
    wait_until,
)
from tests.workerfleet_operator.emulator import Emulator
from worker_runtime import producer

GROUP = "workerfleet.io"


def pool(emu: Emulator, name: str) -> dict[str, Any] | None:
    return emu.get("workerpools", NAMESPACE, name, group=GROUP)


def replicas(emu: Emulator, name: str) -> int | None:
    dep = emu.get("deployments", NAMESPACE, name, group="apps")
    return None if dep is None else int(dep["spec"]["replicas"])


def autoscaler_writes(emu: Emulator) -> int:
    return sum(
        1 for m, p, _ in list(emu.request_log) if m == "PATCH" and p.endswith("/deployments/emails")
    )


def status_writes(emu: Emulator) -> int:
    return sum(
        1
        for m, p, _ in list(emu.request_log)
        if m == "PATCH" and p.endswith("/workerpools/emails/status")
    )


def scale_elsewhere(emu: Emulator, count: int) -> None:
    """Scale the Deployment as another manager would (an HPA, ``kubectl scale``)."""
    emu.patch(
        "deployments",
        NAMESPACE,
        "emails",
        {"spec": {"replicas": count}},
        group="apps",
        manager="kube-controller-manager",
    )


def replicas_owners(emu: Emulator) -> set[str]:
    dep = emu.get("deployments", NAMESPACE, "emails", group="apps") or {}
    return {
        m["manager"]
        for m in dep["metadata"]["managedFields"]
        if "f:replicas" in m["fieldsV1"].get("f:spec", {})
    }


def enqueue(server: QueueRedis, queue_name: str, count: int) -> None:
    jobs = [producer.JobSpec(task="send-email", payload={"n": i}) for i in range(count)]
    producer.SyncProducer(server.client(), queue_name).enqueue_many(jobs)


def test_mode_changes_create_and_remove_the_right_children(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a pool with a metrics Service, a PodMonitor and a PDB, in builtin mode
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    operator()
    body = build_pool(
        "emails",
        metrics={"service": True, "podMonitor": True},
        podDisruptionBudget={"enabled": True},
    )
    body["spec"]["queue"]["redis"]["keda"] = {"addressKey": "address"}
    emulator.create("workerpools", body, group=GROUP)
    wait_until(
        lambda: emulator.get("podmonitors", NAMESPACE, "emails", group="monitoring.coreos.com"),
        message="no PodMonitor",
    )
    # (applied in order: the budget comes after the PodMonitor)
    wait_until(
        lambda: emulator.get("poddisruptionbudgets", NAMESPACE, "emails", group="policy"),
        message="no PodDisruptionBudget",
    )
    assert emulator.list("services", NAMESPACE)
    # When the pool switches to keda mode
    emulator.patch(
        "workerpools", NAMESPACE, "emails", {"spec": {"autoscaling": {"mode": "keda"}}}, group=GROUP
    )
    # Then a ScaledObject and its TriggerAuthentication appear
    scaled = wait_until(
        lambda: emulator.get("scaledobjects", NAMESPACE, "emails", group="keda.sh"),
        message="no ScaledObject",
    )
    assert scaled["metadata"]["ownerReferences"][0]["kind"] == "WorkerPool"
    assert emulator.list("triggerauthentications", NAMESPACE, group="keda.sh")
    # When it switches to disabled mode with 3 fixed replicas and drops the PodMonitor
    emulator.patch(
        "workerpools",
        NAMESPACE,
        "emails",
        {
            "spec": {
                "autoscaling": {"mode": "disabled", "replicas": 3},
                "metrics": {"podMonitor": False},
            }
        },
        group=GROUP,
    )
    # Then replicas are 3 and the KEDA objects and the PodMonitor are gone
    wait_until(lambda: replicas(emulator, "emails") == 3, message="replicas not fixed at 3")
    wait_until(
        lambda: not emulator.list("scaledobjects", NAMESPACE, group="keda.sh"),
        message="ScaledObject left behind",
    )
    assert not emulator.list("triggerauthentications", NAMESPACE, group="keda.sh")
    assert not emulator.list("podmonitors", NAMESPACE, group="monitoring.coreos.com")


def test_keda_mode_never_writes_replicas(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a pool in keda mode (KEDA's HPA owns the replica count)
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    operator()
    body = build_pool("emails", autoscaling={"mode": "keda"})
    body["spec"]["queue"]["redis"]["keda"] = {"addressKey": "address"}
    emulator.create("workerpools", body, group=GROUP)
    wait_until(
        lambda: emulator.get("scaledobjects", NAMESPACE, "emails", group="keda.sh"),
        message="no ScaledObject",
    )
    dep = emulator.get("deployments", NAMESPACE, "emails", group="apps")
    # When KEDA's HPA scales to 2 and a backlog arrives
    scale_elsewhere(emulator, 2)
    enqueue(queue_redis, "emails", 700)
    wait_until(
        lambda: (
            (pool(emulator, "emails") or {}).get("status", {}).get("queue", {}).get("backlog")
            == 700
        ),
        message="queue not read",
    )
    # Then the operator never touched spec.replicas
    assert replicas(emulator, "emails") == 2
    assert replicas_owners(emulator) == {"kube-controller-manager"}
    assert "replicas" not in dep["spec"] or dep["spec"]["replicas"] == 1  # API default, not ours


def create_hpa(emu: Emulator, name: str = "emails-hpa") -> None:
    """A live HorizontalPodAutoscaler whose scale target is the pool's Deployment."""
    emu.create(
        "horizontalpodautoscalers",
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "emails"},
                "minReplicas": 1,
                "maxReplicas": 10,
            },
        },
        group="autoscaling",
    )


def scaling_limited_reason(emu: Emulator) -> str | None:
    return condition(pool(emu, "emails"), "ScalingLimited").get("reason")


def hold_with_a_live_hpa(emu: Emulator, server: QueueRedis) -> None:
    """A live HPA scales pool ``emails`` to 7, then a backlog makes the autoscaler want 10:
    wait until it holds (``ReplicasOwnedElsewhere``)."""
    create_hpa(emu)
    scale_elsewhere(emu, 7)
    enqueue(server, "emails", 400)
    wait_until(
        lambda: scaling_limited_reason(emu) == "ReplicasOwnedElsewhere",
        message="no ReplicasOwnedElsewhere",
    )


def test_a_live_hpa_is_not_fought_and_deleting_it_hands_the_replicas_back(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a builtin pool whose Deployment a live HPA scales to 7
    given_a_running_pool(emulator, queue_redis, operator)
    # When a backlog makes the autoscaler want its maximum (10)
    # Then it holds, says which HPA drives the replicas, and leaves its value alone
    hold_with_a_live_hpa(emulator, queue_redis)
    cond = condition(pool(emulator, "emails"), "ScalingLimited")
    assert cond["status"] == "True"
    assert "HorizontalPodAutoscaler emails-hpa" in cond["message"]
    assert "Delete it to hand the replicas back" in cond["message"]
    wait_until(
        lambda: [
            e for e in events_for(emulator, "emails") if e["reason"] == "ReplicasOwnedElsewhere"
        ],
        message="no Warning Event",
    )
    assert replicas(emulator, "emails") == 7
    # When the HPA is deleted (the documented way to hand the replicas back)
    emulator.delete("horizontalpodautoscalers", NAMESPACE, "emails-hpa", group="autoscaling")
    # Then the builtin autoscaler drives them again: 10 for the backlog, owned by its manager
    wait_until(lambda: replicas(emulator, "emails") == 10, message="replicas never handed back")
    assert "workerfleet-autoscaler" in replicas_owners(emulator)
    wait_until(
        lambda: scaling_limited_reason(emulator) != "ReplicasOwnedElsewhere",
        message="ReplicasOwnedElsewhere never cleared",
    )


def test_a_scale_held_by_a_live_hpa_moves_neither_last_scale_time_nor_the_status(
    emulator: Emulator,
    queue_redis: QueueRedis,
    operator: Callable[..., OperatorRunner],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an operator whose polls are counted, which writes the queue's numbers at most
    # every 5 minutes (other status changes at once), and whose wall clock jumps an hour at
    # every reading, so a lastScaleTime moved by a poll shows in the status at once
    polls = count_polls(monkeypatch)
    hours = itertools.count()
    runner = given_a_running_pool(
        emulator, queue_redis, lambda: operator(status_refresh_seconds=300.0)
    )
    runner.context.wall_clock = lambda: 1_800_000_000.0 + 3600.0 * next(hours)
    # and a builtin pool whose Deployment a live HPA scales to 7, with a backlog that makes the
    # autoscaler want 10: it holds (ReplicasOwnedElsewhere), settled for two polls
    hold_with_a_live_hpa(emulator, queue_redis)
    settled = polls.count("emails") + 2
    wait_until(lambda: polls.count("emails") >= settled, message="the pool stopped polling")
    written = status_writes(emulator)
    # When it polls three more times, wanting 10 each time and writing nothing
    wait_until(lambda: polls.count("emails") >= settled + 3, message="the pool stopped polling")
    # Then no scale is recorded (none happened) and its status was not written again
    shown = (pool(emulator, "emails") or {})["status"]
    assert shown["desiredReplicas"] == 10 and replicas(emulator, "emails") == 7
    assert "lastScaleTime" not in shown["autoscaling"], shown["autoscaling"]
    assert status_writes(emulator) == written


def test_a_one_off_kubectl_scale_does_not_switch_the_autoscaler_off(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a builtin pool that someone scaled to 2 once by hand (an Update owner of
    # spec.replicas in managedFields, for good), with no HPA
    given_a_running_pool(emulator, queue_redis, operator)
    scale_elsewhere(emulator, 2)
    # When a backlog makes the autoscaler want its maximum (10)
    enqueue(queue_redis, "emails", 400)
    # Then it scales: the hand-set count is not an owner to defer to
    wait_until(lambda: replicas(emulator, "emails") == 10, message="stuck at the hand-set 2")
    assert "workerfleet-autoscaler" in replicas_owners(emulator)
    assert scaling_limited_reason(emulator) != "ReplicasOwnedElsewhere"


def test_an_hpa_the_operator_has_not_yet_seen_is_not_overwritten(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a builtin pool whose operator's watches have gone silent (its cached Deployment
    # is stale), and an HPA then created that scales the Deployment to 7
    given_a_running_pool(emulator, queue_redis, operator)
    emulator.stall_open_watches()
    # When a backlog makes the autoscaler want more, judged on the stale copy
    # Then it finds the live HPA before writing and holds instead of taking the field
    hold_with_a_live_hpa(emulator, queue_redis)
    assert replicas(emulator, "emails") == 7
    assert replicas_owners(emulator) == {"kube-controller-manager"}


def test_dry_run_records_decisions_without_applying_them(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a builtin pool in dry-run mode
    given_a_running_pool(
        emulator, queue_redis, operator, build_pool("emails", autoscaling={"dryRun": True})
    )
    writes = autoscaler_writes(emulator)
    # When a backlog arrives
    enqueue(queue_redis, "emails", 400)
    # Then the decision is recorded in status and an Event, and replicas stay at 0
    status = wait_until(
        lambda: (s := pool(emulator, "emails")["status"]).get("desiredReplicas") == 4 and s,
        message="decision not recorded",
    )
    assert status["autoscaling"]["dryRun"] is True
    wait_until(
        lambda: [e for e in events_for(emulator, "emails") if e["reason"].startswith("DryRun")],
        message="no dry-run Event",
    )
    assert replicas(emulator, "emails") == 0
    assert autoscaler_writes(emulator) == writes


def test_switching_to_disabled_clears_the_builtin_decision_fields_from_status(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a builtin pool that has scaled on a backlog (its status shows the decision)
    given_a_running_pool(emulator, queue_redis, operator)
    enqueue(queue_redis, "emails", 400)
    wait_until(
        lambda: (
            (pool(emulator, "emails") or {})
            .get("status", {})
            .get("autoscaling", {})
            .get("lastScaleTime")
        ),
        message="no scale recorded",
    )
    # When the pool switches to disabled mode with 2 fixed replicas
    emulator.patch(
        "workerpools",
        NAMESPACE,
        "emails",
        {"spec": {"autoscaling": {"mode": "disabled", "replicas": 2}}},
        group=GROUP,
    )
    # Then status.autoscaling says disabled and keeps nothing of the builtin decision
    shown = wait_until(
        lambda: (
            (a := (pool(emulator, "emails") or {}).get("status", {}).get("autoscaling", {})).get(
                "mode"
            )
            == "disabled"
            and a
        ),
        message="status.autoscaling never switched to disabled",
    )
    left = {"signals", "chosen", "rawDesired", "clampedBy", "lastScaleTime"} & set(shown)
    assert not left, f"builtin fields left in status.autoscaling: {shown}"
    assert shown["reason"] == "autoscaling disabled: fixed replicas 2"


def test_switching_from_disabled_to_builtin_keeps_the_current_replicas(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a disabled pool pinned at 4 replicas, and a record of every replica count the
    # Deployment has from now on
    body = build_pool("emails", autoscaling={"mode": "disabled", "replicas": 4})
    given_a_running_pool(emulator, queue_redis, operator, body)
    wait_until(lambda: replicas(emulator, "emails") == 4, message="never at 4")
    counts: list[int] = []

    def record(plural: str, event: dict[str, Any]) -> None:
        if plural == "deployments" and event["object"]["metadata"]["name"] == "emails":
            counts.append(int(event["object"]["spec"].get("replicas", -1)))

    emulator.add_listener(record)
    # When it switches to builtin autoscaling (idle queue; the scale-down window is 120 s)
    emulator.patch(
        "workerpools",
        NAMESPACE,
        "emails",
        {"spec": {"autoscaling": {"mode": "builtin", "minReplicas": 0, "replicas": None}}},
        group=GROUP,
    )
    wait_until(
        lambda: (
            (pool(emulator, "emails") or {}).get("status", {}).get("autoscaling", {}).get("signals")
        ),
        message="the autoscaler never decided",
    )
    # Then the count was handed over as it was: never the API default of 1 in between
    assert replicas(emulator, "emails") == 4
    assert set(counts) <= {4}, counts
    # And the autoscaler's own manager now owns it
    assert "workerfleet-autoscaler" in replicas_owners(emulator)
