"""The periodic resync of a converged pool: reads its children, writes only what was lost.

The Deployment is watched, its other children (Service, PodDisruptionBudget, ...) are not; every
``resync_seconds`` a converged pool reads them all and applies only one that was deleted or
edited. A fleet with nothing changing writes nothing (at 10,000 pools, re-applying each one
every 300 s was ~33 writes a second).
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
    wait_for_condition,
    wait_until,
)
from tests.workerfleet_operator.emulator import Emulator

GROUP = "workerfleet.io"
WRITES = ("POST", "PUT", "PATCH", "DELETE")
CHILD_PATHS = ("/deployments/emails", "/services/emails-metrics", "/poddisruptionbudgets/emails")


def _pool_with_children() -> dict[str, Any]:
    return build_pool(
        "emails",
        metrics={"service": True},
        podDisruptionBudget={"enabled": True, "maxUnavailable": 1},
    )


def _requests(emu: Emulator, methods: tuple[str, ...], path_end: str) -> int:
    return sum(1 for m, p, _ in list(emu.request_log) if m in methods and p.endswith(path_end))


def _recreated(emu: Emulator, plural: str, group: str, first: dict[str, Any]) -> dict[str, Any]:
    """Wait for ``first``'s name to exist again under another uid; the new object."""
    name = first["metadata"]["name"]

    def again() -> dict[str, Any] | None:
        now = emu.get(plural, NAMESPACE, name, group=group)
        return now if now and now["metadata"]["uid"] != first["metadata"]["uid"] else None

    return wait_until(again, message=f"{plural}/{name} not created again")


def _converged(
    emu: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    emu.create("secrets", build_secret("redis-creds", queue_redis.url))
    operator(resync_seconds=0.3)
    emu.create("workerpools", _pool_with_children(), group=GROUP)
    wait_for_condition(emu, "emails", "Ready", message="not Ready")
    wait_until(
        lambda: emu.get("poddisruptionbudgets", NAMESPACE, "emails", group="policy"),
        message="no PodDisruptionBudget",
    )


def test_resyncs_of_a_converged_pool_read_its_children_and_write_none_of_them(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a converged pool with a metrics Service and a PodDisruptionBudget, resyncing often
    _converged(emulator, queue_redis, operator)
    writes = {p: _requests(emulator, WRITES, p) for p in CHILD_PATHS}
    reads = _requests(emulator, ("GET",), "/deployments/emails")
    # When five resyncs go by
    wait_until(
        lambda: _requests(emulator, ("GET",), "/deployments/emails") >= reads + 5,
        message="the operator did not resync",
    )
    # Then each read the children, and none was written again
    assert _requests(emulator, ("GET",), "/poddisruptionbudgets/emails") >= 5
    assert {p: _requests(emulator, WRITES, p) for p in CHILD_PATHS} == writes


def test_an_edited_child_nobody_watches_is_put_back_at_the_next_resync(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a converged pool with a PodDisruptionBudget of maxUnavailable 1
    _converged(emulator, queue_redis, operator)
    # When someone edits it by hand
    emulator.patch(
        "poddisruptionbudgets",
        NAMESPACE,
        "emails",
        {"spec": {"maxUnavailable": 3}},
        group="policy",
        manager="kubectl-edit",
    )
    # Then a resync puts the pool's value back
    wait_until(
        lambda: (
            (emulator.get("poddisruptionbudgets", NAMESPACE, "emails", group="policy") or {})
            .get("spec", {})
            .get("maxUnavailable")
            == 1
        ),
        message="PodDisruptionBudget not put back",
    )


@pytest.mark.parametrize(
    ("plural", "group", "silence_watches", "spec"),
    [
        # the operator does not watch PodDisruptionBudgets
        pytest.param(
            "poddisruptionbudgets",
            "policy",
            False,
            {"maxUnavailable": 1},
            id="a_pdb_nobody_watches",
        ),
        # the Deployment is watched, but a watch can miss an event; it comes back at the pool's
        # minReplicas (0), not at the API's default of 1
        pytest.param(
            "deployments",
            "apps",
            True,
            {"replicas": 0},
            id="a_deployment_while_its_watch_was_silent",
        ),
    ],
)
def test_a_child_deleted_unseen_is_created_again_at_the_next_resync(
    emulator: Emulator,
    queue_redis: QueueRedis,
    operator: Callable[..., OperatorRunner],
    plural: str,
    group: str,
    silence_watches: bool,
    spec: dict[str, Any],
) -> None:
    # Given a converged pool (its operator's watch streams maybe silent: connected, no events)
    _converged(emulator, queue_redis, operator)
    first = emulator.get(plural, NAMESPACE, "emails", group=group)
    assert first is not None
    if silence_watches:
        emulator.stall_open_watches()
    # When the child is deleted, unseen
    emulator.delete(plural, NAMESPACE, "emails", group=group)
    # Then the resync's read finds it gone and the pool creates it again, its own
    again = _recreated(emulator, plural, group, first)
    assert again["metadata"]["ownerReferences"][0]["name"] == "emails"
    assert {k: again["spec"].get(k) for k in spec} == spec
