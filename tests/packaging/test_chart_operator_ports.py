"""The operator's health and metrics ports are two ports, or the render fails naming both.

The operator starts its Prometheus server on metricsPort and then kopf's liveness server on
healthPort (shell/main.py); on one port the second bind fails (address already in use) and the
operator never runs. The schema checks each port alone, so the template compares them.
"""

from __future__ import annotations

import pytest
from packaging_support import CHART, Render, of_kind, run

pytestmark = pytest.mark.chart


@pytest.mark.parametrize(
    "args",
    [
        ["--set", "operator.healthPort=9090"],
        ["--set", "operator.metricsPort=8080"],
        ["--set", "operator.healthPort=7000", "--set", "operator.metricsPort=7000"],
    ],
    ids=["health-on-the-default-metrics-port", "metrics-on-the-default-health-port", "both-set"],
)
def test_one_port_for_health_and_metrics_is_refused_naming_both_values(
    helm: str, args: list[str]
) -> None:
    # When the chart is rendered with the operator's two servers on one port
    done = run([helm, "template", "workerfleet", str(CHART), *args])
    # Then it fails naming both values, instead of an operator that cannot start
    assert done.returncode != 0
    assert "operator.healthPort" in done.stderr and "operator.metricsPort" in done.stderr, (
        done.stderr
    )


def test_two_different_ports_reach_the_container_and_its_policy(render: Render) -> None:
    manifests = render(
        "default", "--set", "operator.healthPort=7001", "--set", "operator.metricsPort=7002"
    )
    (deployment,) = of_kind(manifests, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "health": 7001,
        "metrics": 7002,
    }
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["WORKERFLEET_OPERATOR_HEALTH_PORT"], env["WORKERFLEET_OPERATOR_METRICS_PORT"]) == (
        "7001",
        "7002",
    )
