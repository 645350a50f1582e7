"""The operator's availability in the chart: two elected replicas, spread, and a disruption budget.

Leader election itself (the Lease, its RBAC and env) is tested in test_chart_leader_election.py
and in the operator's tests; here: the chart's defaults run two replicas only with election on,
spread them over nodes, roll them without a gap (or, one node per replica, one at a time), and
keep one through a drain.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from packaging_support import CHART, Render, of_kind, run

pytestmark = pytest.mark.chart

SELECTOR = {
    "app.kubernetes.io/name": "workerfleet",
    "app.kubernetes.io/instance": "workerfleet",
    "app.kubernetes.io/component": "operator",
}


def operator_deployment(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [
        d for d in of_kind(manifests, "Deployment") if d["metadata"]["name"].endswith("-operator")
    ]
    return deployment


def test_the_default_runs_two_elected_replicas_spread_over_nodes_with_a_pdb(
    render: Render,
) -> None:
    manifests = render("default")
    spec = operator_deployment(manifests)["spec"]
    assert spec["replicas"] == 2
    env = {e["name"]: e.get("value") for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert env["WORKERFLEET_OPERATOR_LEADER_ELECTION"] == "true"
    # A rollout starts the new pod (a standby) before stopping an old one.
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    (term,) = spec["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"] == {
        "topologyKey": "kubernetes.io/hostname",
        "labelSelector": {"matchLabels": SELECTOR},
    }
    (pdb,) = of_kind(manifests, "PodDisruptionBudget")
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": SELECTOR}}


def test_hard_anti_affinity_requires_one_node_per_replica(render: Render) -> None:
    affinity = operator_deployment(render("default", "--set", "operator.podAntiAffinity=hard"))[
        "spec"
    ]["template"]["spec"]["affinity"]
    (term,) = affinity["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"


def test_with_hard_anti_affinity_a_rollout_stops_an_old_pod_before_starting_a_new_one(
    render: Render,
) -> None:
    # Given two elected replicas, each required on its own node: on two nodes a surge pod
    # (maxSurge 1, maxUnavailable 0) could never schedule and every upgrade would stall
    spec = operator_deployment(render("default", "--set", "operator.podAntiAffinity=hard"))["spec"]
    assert spec["template"]["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    # Then the rollout frees a node first (the standby takes the Lease if the leader stopped)
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }
    # And a user's own anti-affinity (the chart adds none then) keeps the surge
    own: dict[str, Any] = {
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}
    }
    args = [
        "--set",
        "operator.podAntiAffinity=hard",
        "--set-json",
        f"operator.affinity={json.dumps(own)}",
    ]
    assert operator_deployment(render("default", *args))["spec"]["strategy"]["rollingUpdate"] == {
        "maxSurge": 1,
        "maxUnavailable": 0,
    }


def test_a_users_own_anti_affinity_wins_and_other_affinity_is_kept(render: Render) -> None:
    own = {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "topology.kubernetes.io/zone",
         "labelSelector": {"matchLabels": {"team": "x"}}}]}  # fmt: skip
    args = ["--set-json", "operator.affinity=" + json.dumps({"podAntiAffinity": own})]
    affinity = operator_deployment(render("default", *args))["spec"]["template"]["spec"]["affinity"]
    assert affinity == {"podAntiAffinity": own}


def test_one_replica_has_no_pdb_and_no_anti_affinity(render: Render) -> None:
    manifests = render("default", "--set", "operator.replicas=1")
    assert of_kind(manifests, "PodDisruptionBudget") == []
    assert "affinity" not in operator_deployment(manifests)["spec"]["template"]["spec"]


def test_two_replicas_without_leader_election_are_refused(helm: str) -> None:
    # By the schema, and by the template past it: two unelected operators both write every pool.
    for extra in ([], ["--skip-schema-validation"]):
        done = run(
            [helm, "template", "wf", str(CHART), *extra,
             "--set", "operator.leaderElection.enabled=false"]
        )  # fmt: skip
        assert done.returncode != 0
        assert "leaderElection" in done.stderr
    done = run(
        [helm, "template", "wf", str(CHART), "--set", "operator.leaderElection.enabled=false",
         "--set", "operator.replicas=1"]
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "type: Recreate" in done.stdout
