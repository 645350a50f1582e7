"""A child whose CRD is being deleted is reported like one whose API is not installed, and
applied again once the CRD is back; a refusal by RBAC stays a failed reconcile (API emulator).

While a CRD is being deleted the API server refuses to create objects of its kind with a 403
that says so. The operator read it as any 403: an error logged on every resync, the pool
``Degraded=True ReconcileFailed`` (seen on a real cluster when the e2e suite removed the
PodMonitor CRD under a pool that asks for one).
"""

from __future__ import annotations

from collections.abc import Callable

from tests.workerfleet_operator import conftest
from tests.workerfleet_operator.emulator import Emulator

GROUP = "workerfleet.io"
MONITORING = "monitoring.coreos.com"
# What the API server answers an apply of a PodMonitor while its CRD is terminating ...
CRD_TERMINATING = (
    'podmonitors.monitoring.coreos.com "emails" is forbidden: '
    "create not allowed while custom resource definition is terminating"
)
# ... and what it answers when RBAC refuses the same write.
RBAC_REFUSAL = (
    'podmonitors.monitoring.coreos.com "emails" is forbidden: User '
    '"system:serviceaccount:workerfleet:workerfleet-operator" cannot create resource '
    '"podmonitors" in API group "monitoring.coreos.com" in the namespace "default"'
)
PODMONITOR_APPLY = r"/podmonitors/emails$"


def create_podmonitor_pool_refused(
    emu: Emulator,
    queue_redis: conftest.QueueRedis,
    operator: Callable[..., conftest.OperatorRunner],
    refusal: str,
    **config: object,
) -> conftest.OperatorRunner:
    """Start an operator (``config``) on an API server answering every apply of a PodMonitor
    with a 403 saying ``refusal``, and create pool ``emails`` asking for a PodMonitor."""
    emu.create("secrets", conftest.build_secret("redis-creds", queue_redis.url))
    runner = operator(**config)
    emu.inject_failure("PATCH", PODMONITOR_APPLY, 403, count=10_000, message=refusal)
    body = conftest.build_pool("emails", metrics={"podMonitor": True})
    emu.create("workerpools", body, group=GROUP)
    return runner


def refused_podmonitor_applies(emu: Emulator) -> int:
    return sum(
        1
        for m, p, code in list(emu.request_log)
        if m == "PATCH" and p.endswith("/podmonitors/emails") and code == 403
    )


def reconciles(runner: conftest.OperatorRunner, result: str) -> float:
    value = runner.metrics.registry.get_sample_value(
        "workerfleet_operator_reconcile_total",
        {"namespace": conftest.NAMESPACE, "pool": "emails", "result": result},
    )
    return value or 0.0


def test_a_child_whose_crd_is_being_deleted_is_reported_missing_and_applied_once_it_is_back(
    emulator: Emulator,
    queue_redis: conftest.QueueRedis,
    operator: Callable[..., conftest.OperatorRunner],
    captured_logs: list[str],
) -> None:
    # Given an operator resyncing often, and the PodMonitor CRD being deleted: the API server
    # refuses to create any PodMonitor
    # When a pool asks for a PodMonitor
    runner = create_podmonitor_pool_refused(
        emulator, queue_redis, operator, CRD_TERMINATING, resync_seconds=0.3
    )
    # Then the pool runs (Ready), and Degraded says the PodMonitor API is missing
    conftest.wait_for_condition(emulator, "emails", "Ready", message="not Ready")
    degraded = conftest.wait_for_condition(emulator, "emails", "Degraded", message="no Degraded")
    assert degraded["reason"] == "ChildAPIMissing", degraded
    assert "PodMonitor" in degraded["message"]
    # And over several resyncs, each refused again, one Warning says so, no reconcile failed
    # and nothing was logged as an error
    conftest.wait_until(
        lambda: refused_podmonitor_applies(emulator) >= 5,
        message="the operator did not resync",
    )
    warnings = [e for e in conftest.events_for(emulator, "emails") if e["type"] == "Warning"]
    assert [e["reason"] for e in warnings] == ["ChildAPIMissing"], warnings
    assert reconciles(runner, "error") == 0
    assert [line for line in captured_logs if line.startswith("ERROR")] == []
    # When the CRD is back (installed again)
    emulator.clear_failures()
    # Then the next resync creates the PodMonitor, and the pool is no longer Degraded
    conftest.wait_until(
        lambda: emulator.get("podmonitors", conftest.NAMESPACE, "emails", group=MONITORING),
        message="the PodMonitor was not applied once its CRD was back",
    )
    conftest.wait_until(
        lambda: (
            conftest.condition(
                emulator.get("workerpools", conftest.NAMESPACE, "emails", group=GROUP), "Degraded"
            ).get("status")
            == "False"
        ),
        message="still Degraded once the PodMonitor was applied",
    )


def test_a_child_refused_by_rbac_is_still_a_failed_reconcile(
    emulator: Emulator,
    queue_redis: conftest.QueueRedis,
    operator: Callable[..., conftest.OperatorRunner],
    captured_logs: list[str],
) -> None:
    # Given an operator whose RBAC does not let it create PodMonitors
    # When a pool asks for a PodMonitor
    runner = create_podmonitor_pool_refused(emulator, queue_redis, operator, RBAC_REFUSAL)
    # Then its reconcile fails: Degraded says so, and the refusal is logged as an error
    degraded = conftest.wait_for_condition(emulator, "emails", "Degraded", message="no Degraded")
    assert degraded["reason"] == "ReconcileFailed", degraded
    assert reconciles(runner, "error") >= 1
    assert any(
        line.startswith("ERROR") and "cannot create resource" in line for line in captured_logs
    ), captured_logs[-20:]
