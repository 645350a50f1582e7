"""The chart's leader election: a Lease Role in the release namespace, and the operator's env.

With ``operator.leaderElection.enabled`` the chart grants exactly the Lease permissions of
operator/workerfleet_operator/rbac.py (condition ``leader-election``) in the release namespace,
in every install mode, and hands the operator the settings ``shell.config`` reads; timings that
``shell.config`` would refuse (out of retry < renew deadline < lease duration) fail the render.
"""

from __future__ import annotations

import pytest
from packaging_support import CHART, NAMESPACE, Render, of_kind, run
from workerfleet_operator import rbac
from workerfleet_operator.shell import config as config_module

pytestmark = pytest.mark.chart

ON = ("--set", "operator.leaderElection.enabled=true")
PREFIX = "operator.leaderElection"


@pytest.mark.parametrize("values_set", ["default", "namespaced"])
def test_the_lease_role_lives_in_the_release_namespace_and_grants_only_the_lease(
    render: Render, values_set: str
) -> None:
    manifests = render(values_set, *ON)
    (role,) = [
        r for r in of_kind(manifests, "Role") if r["metadata"]["name"].endswith("-leader-election")
    ]
    assert role["metadata"]["namespace"] == NAMESPACE
    have = {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    lease_only = rbac.build_permission_set(
        cluster_wide=True, peering=False, leader_election=True
    ) - rbac.build_permission_set(cluster_wide=True, peering=False)
    assert have == lease_only
    (binding,) = [
        b
        for b in of_kind(manifests, "RoleBinding")
        if b["metadata"]["name"].endswith("-leader-election")
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["kind"] == "ServiceAccount"


def test_without_leader_election_there_is_no_lease_role(render: Render) -> None:
    off = ("--set", "operator.leaderElection.enabled=false", "--set", "operator.replicas=1")
    names = [r["metadata"]["name"] for r in of_kind(render("default", *off), "Role")]
    assert not [n for n in names if n.endswith("-leader-election")]


def test_the_operator_gets_every_election_setting_under_a_name_it_reads(render: Render) -> None:
    (deployment,) = [
        d
        for d in of_kind(render("default", *ON), "Deployment")
        if "operator" in d["metadata"]["name"]
    ]
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    prefix = config_module.OperatorConfig.model_config["env_prefix"]
    fields = {
        "leader_election", "lease_name", "lease_namespace",
        "lease_duration_seconds", "renew_deadline_seconds", "retry_period_seconds",
    }  # fmt: skip
    for name in fields:
        assert name in config_module.OperatorConfig.model_fields
        assert f"{prefix}{name}".upper() in env, name
    assert env["WORKERFLEET_OPERATOR_LEADER_ELECTION"]["value"] == "true"
    # no fixed identity: hostname + a random suffix, so a restarted container is a new holder
    assert "WORKERFLEET_OPERATOR_LEADER_IDENTITY" not in env
    assert env["WORKERFLEET_OPERATOR_LEASE_DURATION_SECONDS"]["value"] == "15"


@pytest.mark.parametrize(
    "timings",
    [
        {"leaseDurationSeconds": 15, "renewDeadlineSeconds": 30, "retryPeriodSeconds": 2},
        {"leaseDurationSeconds": 15, "renewDeadlineSeconds": 15, "retryPeriodSeconds": 2},
        {"leaseDurationSeconds": 15, "renewDeadlineSeconds": 10, "retryPeriodSeconds": 10},
    ],
    ids=["renew-past-lease", "renew-equals-lease", "retry-equals-renew"],
)
def test_timings_the_operator_would_refuse_fail_the_render_naming_the_three_values(
    helm: str, timings: dict[str, int]
) -> None:
    # Given election timings out of the order the operator requires
    sets = [a for key, value in timings.items() for a in ("--set", f"{PREFIX}.{key}={value}")]
    # When the chart is rendered
    done = run([helm, "template", "wf", str(CHART), *sets])
    # Then it fails there, not later in a crash-looping operator
    assert done.returncode != 0
    assert (
        "operator.leaderElection needs retryPeriodSeconds < renewDeadlineSeconds < "
        "leaseDurationSeconds"
    ) in done.stderr
    got = f"(got {timings['retryPeriodSeconds']}, {timings['renewDeadlineSeconds']}, "
    assert got in done.stderr


def test_fractional_timings_in_order_render(render: Render) -> None:
    sets = (
        "--set-json", f"{PREFIX}.retryPeriodSeconds=0.5",
        "--set-json", f"{PREFIX}.renewDeadlineSeconds=1.5",
    )  # fmt: skip
    (deployment,) = [
        d
        for d in of_kind(render("default", *sets), "Deployment")
        if "operator" in d["metadata"]["name"]
    ]
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["WORKERFLEET_OPERATOR_RENEW_DEADLINE_SECONDS"]["value"] == "1.5"
