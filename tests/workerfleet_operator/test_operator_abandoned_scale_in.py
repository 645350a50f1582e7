"""A scale-in the autoscaler gives up on leaves no pod-deletion-cost behind (API emulator)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from workerfleet_operator.shell import kube

from tests.workerfleet_operator.conftest import NAMESPACE, OperatorRunner, QueueRedis, wait_until
from tests.workerfleet_operator.emulator import Emulator
from tests.workerfleet_operator.test_operator_autoscaling import (
    COST,
    _drain,
    given_four_pods_one_busy,
)


def test_a_scale_in_given_up_for_a_new_hpa_removes_the_deletion_costs_it_wrote(
    emulator: Emulator,
    queue_redis: QueueRedis,
    operator: Callable[..., OperatorRunner],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a pool scaled to 4 by a backlog, with 4 pods: one busy worker, three idle ones
    operator()
    given_four_pods_one_busy(emulator, queue_redis)
    # and an HPA that takes the Deployment over right after the autoscaler ranked the pods:
    # its replicas write meets a Deployment the HPA changed (409), and the check before the
    # second try finds the HPA
    checks: list[int] = []

    async def replicas_controllers(*args: Any, **kwargs: Any) -> list[str]:
        checks.append(1)
        return [] if len(checks) == 1 else ["HorizontalPodAutoscaler emails-hpa"]

    async def conflicting_write(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise kube.ApiError(409, "Conflict", "the object has been modified")

    monkeypatch.setattr(kube, "fetch_replicas_controllers", replicas_controllers)
    monkeypatch.setattr(kube, "apply_replicas", conflicting_write)
    # When the queue is drained and the autoscaler wants fewer replicas
    assert _drain(queue_redis, "emails") == 400
    wait_until(lambda: len(checks) >= 2, timeout=10, message="no scale-in attempted")

    # Then the scale-in it gave up leaves no pod ranked by a ranking nobody acted on (the
    # HPA's own scale-ins would otherwise delete the pods marked idle then, busy or not)
    assert_costs_taken_back_and_replicas_unchanged(emulator)


def test_a_scale_in_whose_replicas_write_fails_leaves_no_deletion_costs_on_the_pods(
    emulator: Emulator,
    queue_redis: QueueRedis,
    operator: Callable[..., OperatorRunner],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a pool scaled to 4 by a backlog, with 4 pods: one busy worker, three idle ones
    operator()
    given_four_pods_one_busy(emulator, queue_redis)
    # and an API server that refuses every scale-in's replicas write (an admission webhook's
    # denial, not retried) after the autoscaler ranked the pods for it
    refused: list[int] = []
    write_replicas = kube.apply_replicas

    async def refusing_scale_in(
        client: kube.KubeClient, namespace: str, name: str, replicas: int, **kwargs: Any
    ) -> dict[str, Any]:
        if replicas < 4:
            refused.append(replicas)
            raise kube.ApiError(403, "Forbidden", "admission webhook denied the request")
        return await write_replicas(client, namespace, name, replicas, **kwargs)

    monkeypatch.setattr(kube, "apply_replicas", refusing_scale_in)
    # When the queue is drained and the autoscaler tries to scale in, poll after poll
    assert _drain(queue_redis, "emails") == 400
    wait_until(lambda: len(refused) >= 2, timeout=10, message="no scale-in attempted")

    # Then no pod keeps a ranking the failed scale-ins wrote (a later scale-in made for
    # other reasons, by KEDA or an HPA, would remove the pods ranked idle back then)
    assert_costs_taken_back_and_replicas_unchanged(emulator)


def assert_costs_taken_back_and_replicas_unchanged(emulator: Emulator) -> None:
    """Wait (bounded) until no pod of ``emails`` carries a deletion cost, after some were
    written, with the Deployment still at the 4 replicas the scale-in did not change."""

    def costs() -> dict[str, str]:
        return {
            p["metadata"]["name"]: p["metadata"]["annotations"][COST]
            for p in emulator.list("pods", NAMESPACE, labels="workerfleet.io/pool=emails")
            if COST in (p["metadata"].get("annotations") or {})
        }

    wait_until(lambda: costs() == {}, timeout=5, message="deletion costs left on pods")
    assert any(m == "PATCH" and "/pods/" in p for m, p, _ in emulator.request_log)
    assert (emulator.get("deployments", NAMESPACE, "emails", group="apps") or {})["spec"][
        "replicas"
    ] == 4
