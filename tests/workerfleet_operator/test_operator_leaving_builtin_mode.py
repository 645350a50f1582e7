"""A pool leaving builtin mode takes the autoscaler's pod-deletion-cost annotations off its
pods, once, whether the operator watched the switch or started after it (API emulator)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.workerfleet_operator.conftest import NAMESPACE, OperatorRunner, QueueRedis, wait_until
from tests.workerfleet_operator.emulator import Emulator
from tests.workerfleet_operator.test_operator_autoscaling import (
    COST,
    _drain,
    given_four_pods_one_busy,
    replicas,
)

GROUP = "workerfleet.io"

OTHER_MODES = {
    "disabled": {"spec": {"autoscaling": {"mode": "disabled", "replicas": 3}}},
    "keda": {
        "spec": {
            "autoscaling": {"mode": "keda"},
            "queue": {"redis": {"keda": {"addressKey": "address"}}},
        }
    },
}


def costs(emu: Emulator) -> dict[str, str]:
    return {
        p["metadata"]["name"]: p["metadata"]["annotations"][COST]
        for p in emu.list("pods", NAMESPACE, labels="workerfleet.io/pool=emails")
        if COST in (p["metadata"].get("annotations") or {})
    }


def pod_requests(emu: Emulator) -> int:
    """Pod lists and writes so far (the removal's requests)."""
    return sum(
        1
        for m, p, _ in list(emu.request_log)
        if (m == "PATCH" and "/pods/" in p) or (m == "GET" and p.endswith("/pods"))
    )


def owners_of_costs(emu: Emulator) -> set[str]:
    """The field managers that own a deletion-cost annotation on one of the pool's pods."""
    return {
        entry["manager"]
        for p in emu.list("pods", NAMESPACE, labels="workerfleet.io/pool=emails")
        for entry in p["metadata"].get("managedFields") or ()
        if f"f:{COST}"
        in ((entry.get("fieldsV1") or {}).get("f:metadata", {}).get("f:annotations") or {})
    }


def observed_generation(emu: Emulator) -> tuple[int, int]:
    body = emu.get("workerpools", NAMESPACE, "emails", group=GROUP) or {}
    status = body.get("status") or {}
    return int(body["metadata"]["generation"]), int(status.get("observedGeneration") or 0)


def given_a_scale_in_that_ranked_the_pods(emu: Emulator, server: QueueRedis) -> None:
    """Pool ``emails`` in builtin mode scaled in from 4, its 4 pods carrying deletion costs."""
    given_four_pods_one_busy(emu, server)
    assert _drain(server, "emails") == 400
    wait_until(lambda: (replicas(emu, "emails") or 4) < 4, timeout=10, message="no scale-in")
    assert len(costs(emu)) == 4
    assert owners_of_costs(emu) == {"workerfleet-autoscaler"}


def switch_mode(emu: Emulator, mode: str) -> None:
    emu.patch("workerpools", NAMESPACE, "emails", OTHER_MODES[mode], group=GROUP)


@pytest.mark.parametrize("mode", sorted(OTHER_MODES))
def test_switching_out_of_builtin_mode_removes_the_deletion_costs_once(
    emulator: Emulator,
    queue_redis: QueueRedis,
    operator: Callable[..., OperatorRunner],
    mode: str,
) -> None:
    # Given a builtin pool whose autoscaler ranked its pods for a scale-in
    operator()
    given_a_scale_in_that_ranked_the_pods(emulator, queue_redis)
    # When the pool switches to another mode
    switch_mode(emulator, mode)
    # Then no pod keeps a deletion cost to steer the next owner's scale-ins
    wait_until(lambda: costs(emulator) == {}, timeout=10, message="deletion costs left on pods")
    # And no field manager is left owning one
    assert owners_of_costs(emulator) == set()
    # And the removal is done once: a later reconcile (a new spec) neither lists nor writes pods
    done = pod_requests(emulator)
    emulator.patch("workerpools", NAMESPACE, "emails", {"spec": {"concurrency": 5}}, group=GROUP)
    wait_until(
        lambda: (g := observed_generation(emulator))[0] == g[1] and g[0] > 2,
        timeout=10,
        message="the new spec was not reconciled",
    )
    assert pod_requests(emulator) == done


@pytest.mark.parametrize(
    ("mode", "handed_over"),
    [
        pytest.param(
            "disabled",
            lambda plural, obj: plural == "deployments" and obj["spec"].get("replicas") == 1,
            id="a_fixed_count_below_the_current_one",
        ),
        pytest.param(
            "keda", lambda plural, obj: plural == "scaledobjects", id="a_scaledobject_created"
        ),
    ],
)
def test_the_next_owner_of_the_replicas_never_sees_the_old_deletion_costs(
    emulator: Emulator,
    queue_redis: QueueRedis,
    operator: Callable[..., OperatorRunner],
    mode: str,
    handed_over: Callable[[str, dict[str, Any]], bool],
) -> None:
    # Given a builtin pool whose autoscaler ranked its pods for a scale-in
    operator()
    given_a_scale_in_that_ranked_the_pods(emulator, queue_redis)
    seen: list[dict[str, str]] = []

    def when_handed_over(plural: str, event: dict[str, Any]) -> None:
        # Called under the emulator's store lock, as the write commits: what the pods carry
        # at the moment the ReplicaSet controller (or KEDA's HPA) would choose whom to remove
        if not seen and event["type"] != "DELETED" and handed_over(plural, event["object"]):
            seen.append(costs(emulator))

    emulator.add_listener(when_handed_over)
    # When the pool switches to another mode (disabled at 1 replica: a scale-in at once)
    change = OTHER_MODES[mode]
    if mode == "disabled":
        change = {"spec": {"autoscaling": {"mode": "disabled", "replicas": 1}}}
    emulator.patch("workerpools", NAMESPACE, "emails", change, group=GROUP)
    # Then the replicas' next owner gets them with no deletion cost left on any pod
    wait_until(lambda: bool(seen), timeout=10, message="the replicas were not handed over")
    assert seen == [{}]


def test_an_operator_started_after_the_switch_removes_the_deletion_costs(
    emulator: Emulator,
    queue_redis: QueueRedis,
    operator: Callable[..., OperatorRunner],
) -> None:
    # Given a builtin pool whose autoscaler ranked its pods, and an operator that stops
    first = operator()
    given_a_scale_in_that_ranked_the_pods(emulator, queue_redis)
    first.stop()
    # When the pool switches to disabled mode while no operator runs, and one starts
    switch_mode(emulator, "disabled")
    operator()
    # Then it finds the costs from the status that still names builtin mode, and removes them
    wait_until(lambda: costs(emulator) == {}, timeout=10, message="deletion costs left on pods")
    wait_until(
        lambda: (
            (emulator.get("deployments", NAMESPACE, "emails", group="apps") or {})["spec"][
                "replicas"
            ]
            == 3
        ),
        message="the fixed count was not applied",
    )


def test_costs_a_removal_failed_to_take_off_are_still_removed_after_a_restart(
    emulator: Emulator,
    queue_redis: QueueRedis,
    operator: Callable[..., OperatorRunner],
) -> None:
    # Given a builtin pool whose autoscaler ranked its pods, switched to disabled mode while
    # the API server refuses to list its pods (the removal fails; the polls go on)
    first = operator()
    given_a_scale_in_that_ranked_the_pods(emulator, queue_redis)
    emulator.inject_failure("GET", r"/pods$", 403, count=1000, message="pods are off limits")
    switch_mode(emulator, "disabled")
    wait_until(
        lambda: any(
            c.get("type") == "Degraded" and c.get("status") == "True"
            for c in (emulator.get("workerpools", NAMESPACE, "emails", group=GROUP) or {})
            .get("status", {})
            .get("conditions", ())
        ),
        timeout=10,
        message="the failed removal was not reported",
    )
    pool = first.context.pools[(NAMESPACE, "emails")]
    wait_until(
        lambda: (
            (decision := pool.scaling.last_decision) is not None
            and "autoscaling disabled" in decision.reason
            and pool.scaling.poll_signature is not None
        ),
        timeout=10,
        message="no poll planned and wrote the status in disabled mode",
    )
    # When the operator restarts once the pods can be listed again
    first.stop()
    emulator.clear_failures()
    operator()
    # Then the new operator still knows the costs are there (the stored status names builtin
    # mode until they are off), and removes them
    wait_until(lambda: costs(emulator) == {}, timeout=10, message="deletion costs left on pods")
    # And then says disabled
    wait_until(
        lambda: (
            (emulator.get("workerpools", NAMESPACE, "emails", group=GROUP) or {})["status"][
                "autoscaling"
            ]["mode"]
            == "disabled"
        ),
        timeout=10,
        message="the status did not move to disabled mode",
    )
