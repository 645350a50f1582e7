"""The operator's reliability promises on the API emulator: idempotence, restarts, GC, conflicts.

Covers reliability items 10-15 of shared/briefs/reliability-security.md.
"""

from __future__ import annotations

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
    wait_until,
)
from tests.workerfleet_operator.emulator import Emulator
from worker_runtime import producer


def pool(emu: Emulator, name: str) -> dict[str, Any] | None:
    return emu.get("workerpools", NAMESPACE, name, group="workerfleet.io")


def deployments(emu: Emulator) -> list[dict[str, Any]]:
    return emu.list("deployments", NAMESPACE, group="apps")


def ready(emu: Emulator, name: str) -> bool:
    return condition(pool(emu, name), "Ready").get("status") == "True"


def versions(emu: Emulator) -> dict[str, str]:
    """resourceVersion of every child object the operator writes, plus the pools."""
    result = {}
    for plural, group in (("deployments", "apps"), ("workerpools", "workerfleet.io")):
        for obj in emu.list(plural, NAMESPACE, group=group):
            result[f"{plural}/{obj['metadata']['name']}"] = obj["metadata"]["resourceVersion"]
    return result


def stable_versions(
    emu: Emulator, quiet_seconds: float = 1.5, timeout: float = 15.0
) -> dict[str, str]:
    """Wait until no resourceVersion changed for ``quiet_seconds``; return them."""
    import time

    deadline = time.monotonic() + timeout
    last = versions(emu)
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = versions(emu)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_seconds:
            return now
    raise AssertionError(f"resourceVersions kept changing for {timeout}s: {last}")


def _queue_status(emu: Emulator, name: str) -> dict[str, Any]:
    queue: dict[str, Any] = ((pool(emu, name) or {}).get("status") or {}).get("queue") or {}
    return queue


def test_after_convergence_and_a_restart_children_are_neither_duplicated_nor_rewritten(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given three converged pools
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    first = operator()
    for name in ("a", "b", "c"):
        emulator.create("workerpools", build_pool(name), group="workerfleet.io")
    wait_until(lambda: all(ready(emulator, n) for n in "abc"), message="pools not Ready")
    # (the measured rates join the status about two polls in: wait for them before calling it
    # converged, or the restarted operator's first write of them would look like a rewrite)
    wait_until(
        lambda: all("arrivalRate" in _queue_status(emulator, n) for n in "abc"),
        message="no rates measured",
    )
    converged = stable_versions(emulator)
    # When the operator is stopped and started again
    first.stop()
    operator()
    # Then, after it has seen every pool again, nothing was rewritten and nothing duplicated
    wait_until(
        lambda: emulator.request_counts["WATCH"] >= 4, message="restarted operator did not watch"
    )
    after = stable_versions(emulator)
    assert after == converged
    assert sorted(d["metadata"]["name"] for d in deployments(emulator)) == ["a", "b", "c"]


def test_three_spec_changes_while_the_operator_is_down_apply_only_the_latest(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a converged pool and a stopped operator
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    runner = operator()
    emulator.create("workerpools", build_pool("emails"), group="workerfleet.io")
    wait_until(lambda: ready(emulator, "emails"), message="not Ready")
    runner.stop()
    # When the spec changes three times
    for version in ("1.5.0", "1.6.0", "1.7.0"):
        emulator.patch(
            "workerpools",
            NAMESPACE,
            "emails",
            {"spec": {"image": f"registry.example/email-worker:{version}"}},
            group="workerfleet.io",
        )
    writes_before = sum(
        1 for m, p, _ in list(emulator.request_log) if m == "PATCH" and "/deployments/emails" in p
    )
    generation_before = emulator.get("deployments", NAMESPACE, "emails", group="apps")["metadata"][
        "generation"
    ]
    # And the operator starts again
    operator()
    # Then the latest spec is applied in a single write, and observedGeneration == generation
    wait_until(
        lambda: (pool(emulator, "emails") or {}).get("status", {}).get("observedGeneration") == 4,
        message="observedGeneration did not reach 4",
    )
    dep = emulator.get("deployments", NAMESPACE, "emails", group="apps")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":1.7.0")
    assert pool(emulator, "emails")["metadata"]["generation"] == 4
    assert dep["metadata"]["generation"] == generation_before + 1
    writes = sum(
        1 for m, p, _ in list(emulator.request_log) if m == "PATCH" and "/deployments/emails" in p
    )
    # (plus, this once, the autoscaler's manager taking the count the creation apply wrote:
    # it changes no spec, so no generation)
    assert writes - writes_before == 2
    owners = {
        m["manager"]
        for m in dep["metadata"]["managedFields"]
        if "f:replicas" in m["fieldsV1"].get("f:spec", {})
    }
    assert owners == {"workerfleet-autoscaler"}


def test_deleting_a_pool_removes_its_children_and_keeps_its_queue_data(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a converged pool with jobs waiting in Redis
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    operator()
    emulator.create(
        "workerpools", build_pool("emails", autoscaling={"maxReplicas": 2}), group="workerfleet.io"
    )
    wait_until(lambda: ready(emulator, "emails"), message="not Ready")
    producer.SyncProducer(queue_redis.client(), "emails").enqueue(
        "send-email", {"to": "a@example.com"}
    )
    keys_before = sorted(queue_redis.client().keys("*"))
    # When the pool is deleted
    emulator.delete("workerpools", NAMESPACE, "emails", group="workerfleet.io")
    # Then its Deployment is garbage-collected, nothing stays Terminating (no finalizer) ...
    wait_until(lambda: not deployments(emulator), message="Deployment left behind")
    assert pool(emulator, "emails") is None
    # ... and the queue's data is still in Redis
    assert keys_before
    assert set(keys_before) <= set(queue_redis.client().keys("*"))


def test_a_deleted_pools_redis_client_and_secret_value_are_released_with_its_last_user(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given two pools reading their queues through the same Secret
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    runner = operator()
    for name in ("emails", "invoices"):
        emulator.create("workerpools", build_pool(name), group="workerfleet.io")
    for name in ("emails", "invoices"):
        wait_until(lambda n=name: _queue_status(emulator, n), message=f"{name} never read")
    ctx = runner.context
    assert ctx.queues.open_client_count() == 1 and len(ctx.secrets) == 1
    # When one pool is deleted, the shared client and value stay for the other
    emulator.delete("workerpools", NAMESPACE, "emails", group="workerfleet.io")
    wait_until(lambda: ("default", "emails") not in ctx.pools, message="emails never stopped")
    assert ctx.queues.open_client_count() == 1 and len(ctx.secrets) == 1
    # When the last one goes, its Redis client is closed and the decoded URL is forgotten
    emulator.delete("workerpools", NAMESPACE, "invoices", group="workerfleet.io")
    wait_until(
        lambda: ctx.queues.open_client_count() == 0 and not ctx.secrets,
        message="the Redis client or the Secret value outlived every pool using it",
    )


def test_children_a_held_generation_made_obsolete_are_deleted_after_a_restart(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a pool in keda mode, with its ScaledObject and TriggerAuthentication
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    first = operator()
    body = build_pool("emails", autoscaling={"mode": "keda"})
    body["spec"]["queue"]["redis"]["keda"] = {"addressKey": "address"}
    emulator.create("workerpools", body, group="workerfleet.io")
    wait_until(
        lambda: emulator.get("scaledobjects", NAMESPACE, "emails", group="keda.sh"),
        message="no ScaledObject",
    )
    # When its Secret is deleted and it switches to builtin: generation 2 is held (nothing
    # applied, nothing deleted), though its status observes generation 2
    emulator.delete("secrets", NAMESPACE, "redis-creds")
    emulator.patch(
        "workerpools",
        NAMESPACE,
        "emails",
        {"spec": {"autoscaling": {"mode": "builtin"}}},
        group="workerfleet.io",
    )
    wait_until(
        lambda: (
            condition(stored := pool(emulator, "emails"), "Ready").get("reason") == "SecretNotFound"
            and (stored or {})["status"]["observedGeneration"] == 2
        ),
        message="generation 2 not held",
    )
    # and the operator restarts, holds the pool again, and then the Secret is back
    first.stop()
    second = operator()
    wait_until(
        lambda: (
            (held := second.context.pools.get((NAMESPACE, "emails"))) is not None
            and held.spec_problem is not None
        ),
        message="the restarted operator did not hold the pool",
    )
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    # Then generation 2 is applied and the KEDA objects it no longer wants are deleted (before:
    # kept for good, and the ScaledObject's HPA held the builtin autoscaler)
    wait_until(lambda: ready(emulator, "emails"), message="generation 2 never applied")
    wait_until(
        lambda: not emulator.list("scaledobjects", NAMESPACE, group="keda.sh"),
        message="ScaledObject left behind",
    )
    assert not emulator.list("triggerauthentications", NAMESPACE, group="keda.sh")


def test_conflicts_and_server_errors_are_retried_before_a_reconcile_counts_as_failed(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given the API server answers the first applies of the Deployment with 409, 500 and 503,
    # and the first status write with 409
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    emulator.inject_failure("PATCH", r"/deployments/emails$", 409, count=1)
    emulator.inject_failure("PATCH", r"/deployments/emails$", 500, count=1)
    emulator.inject_failure("PATCH", r"/deployments/emails$", 503, count=1)
    emulator.inject_failure("PATCH", r"/workerpools/emails/status$", 409, count=1)
    reasons: list[str] = []  # every condition reason the pool ever carried
    emulator.add_listener(
        lambda plural, event: (
            reasons.extend(
                str(c.get("reason"))
                for c in ((event.get("object") or {}).get("status") or {}).get("conditions") or []
            )
            if plural == "workerpools"
            else None
        )
    )
    runner = operator()
    # When a pool is created
    emulator.create("workerpools", build_pool("emails"), group="workerfleet.io")
    # Then it converges, every injected failure was consumed, and the operator is still running
    wait_until(
        lambda: ready(emulator, "emails"), timeout=20, message="did not converge after conflicts"
    )
    assert emulator.injected_failures_left() == 0
    assert runner.thread.is_alive() and not runner.errors

    # And no reconcile failed: the 5xx were retried by the client, the 409s read again and
    # decided again; Degraded=ReconcileFailed was never written
    def results() -> dict[str, float]:
        return {
            str(s.labels.get("result")): s.value
            for m in runner.metrics.reconcile_total.collect()
            for s in m.samples
            if s.name.endswith("_total")
        }

    counted = wait_until(
        lambda: (r := results()).get("success", 0) >= 1 and r, message="no success"
    )
    assert counted.get("error", 0) == 0, counted
    assert reasons and "ReconcileFailed" not in reasons


def test_a_request_refused_with_422_still_counts_as_invalid_input(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given the API server refuses the first apply of the Deployment as written (422)
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    emulator.inject_failure("PATCH", r"/deployments/emails$", 422, count=1)
    runner = operator()
    # When a pool is created
    emulator.create("workerpools", build_pool("emails"), group="workerfleet.io")
    # Then it converges after counting the refusal as invalid input (not retried blindly)
    wait_until(lambda: ready(emulator, "emails"), timeout=20, message="did not converge")
    counts = {
        str(s.labels.get("result")): s.value
        for m in runner.metrics.reconcile_total.collect()
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert counts.get("invalid", 0) >= 1, counts


def test_a_reconcile_that_keeps_failing_stays_degraded_with_one_warning_and_keeps_its_backoff(
    emulator: Emulator,
    queue_redis: QueueRedis,
    operator: Callable[..., OperatorRunner],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an operator that retries a failed reconcile after 30 s, whose autoscaler polls are
    # counted, and a running pool polling its queue every second
    polls = count_polls(monkeypatch)
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    operator(retry_base_seconds=30.0, retry_max_seconds=60.0)
    emulator.create("workerpools", build_pool("emails"), group="workerfleet.io")
    wait_until(lambda: ready(emulator, "emails"), message="not Ready")
    # and a record of the Degraded condition of every status the pool is written with
    degraded: list[tuple[str, str]] = []

    def record_degraded(plural: str, event: dict[str, Any]) -> None:
        found = condition(event.get("object"), "Degraded")
        if plural == "workerpools" and found:
            degraded.append((str(found.get("status")), str(found.get("reason"))))

    emulator.add_listener(record_degraded)
    # When its spec changes and every apply of its Deployment is forbidden (a 403 of RBAC: no
    # verdict on the spec, an error the reconcile cannot get past)
    forbidden = (
        'deployments.apps "emails" is forbidden: User "system:serviceaccount:ops:workerfleet" '
        'cannot patch resource "deployments" in API group "apps" in the namespace "default"'
    )
    emulator.inject_failure("PATCH", r"/deployments/emails$", 403, count=1000, message=forbidden)
    emulator.patch(
        "workerpools", NAMESPACE, "emails", {"spec": {"concurrency": 8}}, group="workerfleet.io"
    )
    wait_until(
        lambda: condition(pool(emulator, "emails"), "Degraded").get("reason") == "ReconcileFailed",
        message="never ReconcileFailed",
    )
    # Then over the next four polls it stays Degraded=True ReconcileFailed: no poll flips it
    # back to AsExpected (its status write woke the failing reconcile at once, past its backoff)
    failed_at = polls.count("emails")
    wait_until(lambda: polls.count("emails") >= failed_at + 4, message="the pool stopped polling")
    first = degraded.index(("True", "ReconcileFailed"))
    assert set(degraded[first:]) == {("True", "ReconcileFailed")}, degraded[first:]
    # And the Deployment was tried once (the next try is 30 s away), with one Warning
    tries = [c for m, p, c in list(emulator.request_log) if m == "PATCH" and c == 403]
    assert len(tries) == 1, tries
    warnings = [e for e in events_for(emulator, "emails") if e["reason"] == "ReconcileFailed"]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"
    stored = pool(emulator, "emails") or {}
    assert stored["status"]["observedGeneration"] == 1


def test_a_pool_held_by_a_foreign_finalizer_gets_no_writes_while_terminating(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a converged pool carrying another controller's finalizer
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    operator()
    body = build_pool("emails")
    body["metadata"]["finalizers"] = ["backup.example.com/keep"]
    emulator.create("workerpools", body, group="workerfleet.io")
    wait_until(lambda: ready(emulator, "emails"), message="not Ready")
    stable_versions(emulator)
    # When it is deleted (it stays, Terminating, until that finalizer goes) and a backlog arrives
    emulator.delete("workerpools", NAMESPACE, "emails", group="workerfleet.io")
    stable_versions(emulator)  # the operator hears of the deletion before the backlog comes
    producer.SyncProducer(queue_redis.client(), "emails").enqueue_many(
        [producer.JobSpec(task="send-email", payload={"n": i}) for i in range(300)]
    )
    # Then the operator writes nothing more to it or its Deployment
    after = stable_versions(emulator, quiet_seconds=2.5)
    assert emulator.get("deployments", NAMESPACE, "emails", group="apps")["spec"]["replicas"] == 0
    assert pool(emulator, "emails")["metadata"]["deletionTimestamp"]
    assert after == versions(emulator)
    # And once the finalizer is removed, garbage collection removes the children
    emulator.patch(
        "workerpools",
        NAMESPACE,
        "emails",
        {"metadata": {"finalizers": None}},
        group="workerfleet.io",
    )
    wait_until(lambda: not deployments(emulator), message="Deployment left behind")
