"""The chart's NetworkPolicies for SQS WorkerPools: off by default, and when on, the operator,
the workers and the console may reach the SQS API (and STS for IRSA) on its ports only."""

from __future__ import annotations

import pytest
from packaging_support import Render, of_kind

pytestmark = pytest.mark.chart

WORKERS = ("--set", "networkPolicy.workers.enabled=true",
           "--set", "networkPolicy.workers.namespaces={team-a}")  # fmt: skip


def _egress_ports(policy: dict) -> list[list[int]]:
    return [[p["port"] for p in rule["ports"]] for rule in policy["spec"]["egress"]]


def test_no_policy_opens_a_port_for_sqs_unless_asked(render: Render) -> None:
    # (the operator's API server rule is [443, 6443], never 443 alone)
    for policy in of_kind(render("default", *WORKERS), "NetworkPolicy"):
        assert [443] not in _egress_ports(policy), policy["metadata"]["name"]


def test_sqs_egress_reaches_port_443_anywhere_or_only_the_peers_given(render: Render) -> None:
    # When the SQS egress is on with its defaults
    policies = {
        p["metadata"]["name"]: p
        for p in of_kind(
            render("default", *WORKERS, "--set", "networkPolicy.sqs.enabled=true"),
            "NetworkPolicy",
        )
    }
    # Then the operator and the workers may reach port 443 anywhere (AWS's addresses change)
    for name in ("workerfleet-operator", "workerfleet-workers"):
        (rule,) = [r for r in policies[name]["spec"]["egress"] if r["ports"] == [
            {"port": 443, "protocol": "TCP"}]]  # fmt: skip
        assert "to" not in rule, name
    # When an in-cluster ElasticMQ's port and namespace are given instead
    policies = {
        p["metadata"]["name"]: p
        for p in of_kind(
            render(
                "default", *WORKERS,
                "--set", "networkPolicy.sqs.enabled=true",
                "--set", "networkPolicy.sqs.ports={9324}",
                "--set", "networkPolicy.sqs.peers[0].namespaceSelector.matchLabels.team=queues",
            ),
            "NetworkPolicy",
        )
    }  # fmt: skip
    # Then that port goes only there, for the operator and the workers alike
    for name in ("workerfleet-operator", "workerfleet-workers"):
        (rule,) = [r for r in policies[name]["spec"]["egress"]
                   if r["ports"] == [{"port": 9324, "protocol": "TCP"}]]  # fmt: skip
        assert rule["to"] == [{"namespaceSelector": {"matchLabels": {"team": "queues"}}}]
        assert [443] not in _egress_ports(policies[name])
