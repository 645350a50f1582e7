"""The chart's opt-in web console: off by default; on, a restricted read-only Deployment.

Rendered with the real helm (ci/console-values.yaml: namespaced, token Secret;
ci/monitoring-values.yaml: cluster-wide, auth proxy header from trusted addresses, writes on,
NetworkPolicies admitting only the proxy). Its RBAC
is checked in test_chart_rbac.py; lint, kubernetes-validate and checkov run over both values sets
with the others; the unsafe combinations it refuses are in test_chart_lint.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from packaging_support import CHART, NAMESPACE, Manifest, Render, of_kind, read_value_docs

pytestmark = pytest.mark.chart

CONSOLE = "workerfleet-console"


def named(manifests: list[Manifest], kind: str, name: str = CONSOLE) -> list[Manifest]:
    return [m for m in of_kind(manifests, kind) if m["metadata"]["name"] == name]


def console_container(manifests: list[Manifest]) -> tuple[dict[str, Any], dict[str, Any]]:
    (deployment,) = named(manifests, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def test_the_console_is_off_by_default(render: Render) -> None:
    manifests = render("default")
    assert [m for m in manifests if "console" in m["metadata"]["name"]] == []


def test_the_console_runs_read_only_on_the_watched_namespaces_with_the_token_from_a_file(
    render: Render,
) -> None:
    pod, container = console_container(render("console"))
    args = container["args"]
    assert args[:2] == ["console", "--kube"]
    assert "--allow-writes" not in args  # read-only unless console.allowWrites
    namespaces = [args[i + 1] for i, a in enumerate(args) if a == "--namespace"]
    assert namespaces == ["team-a", "team-b"]
    assert args[args.index("--host") + 1] == "0.0.0.0"
    # The token: a file from the named Secret, never a value, an argument or an env variable.
    token_path = args[args.index("--token-file") + 1]
    assert "env" not in container
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == "workerfleet-console-token"
    assert volume["secret"]["items"] == [{"key": "token", "path": "token"}]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True and token_path == mount["mountPath"] + "/token"
    assert pod["serviceAccountName"] == CONSOLE
    assert pod["automountServiceAccountToken"] is False


def test_without_watched_namespaces_the_console_reads_the_release_namespace_as_its_doc_says(
    render: Render,
) -> None:
    # Given the namespaced default (clusterWide off, watchNamespaces empty), the console on
    args = ["--set", "console.enabled=true", "--set", "console.auth.existingSecret=t"]
    _, container = console_container(render("default", *args))
    # Then it reads the release namespace alone, as the operator watches it: not the cluster
    console_args = container["args"]
    namespaces = [console_args[i + 1] for i, a in enumerate(console_args) if a == "--namespace"]
    assert namespaces == [NAMESPACE]
    # And the value's doc (and the README table made from it) says so
    _, docs = read_value_docs((CHART / "values.yaml").read_text())
    assert "else the release namespace alone" in docs["console.enabled"]
    assert "empty: cluster-wide" not in docs["console.enabled"]


def test_the_console_pod_is_restricted_probed_and_bounded(render: Render) -> None:
    pod, container = console_container(render("console"))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_the_console_has_a_cluster_ip_service_and_its_own_service_account(render: Render) -> None:
    manifests = render("console")
    (service,) = named(manifests, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "console"
    (account,) = named(manifests, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    # The operator's selector never matches console pods (nor the console's the operator's).
    (operator,) = named(manifests, "Deployment", "workerfleet-operator")
    selector = operator["spec"]["selector"]["matchLabels"]
    assert selector["app.kubernetes.io/component"] == "operator"


def test_behind_an_auth_proxy_with_writes_on_the_flags_say_so(render: Render) -> None:
    pod, container = console_container(render("monitoring"))
    args = container["args"]
    assert args[args.index("--auth-proxy-header") + 1] == "X-Forwarded-User"
    # the header is believed only from the proxy's addresses
    assert [args[i + 1] for i, a in enumerate(args) if a == "--trusted-proxy"] == ["10.244.0.0/16"]
    assert "--allow-writes" in args
    assert "--namespace" not in args  # cluster-wide
    assert "--token-file" not in args
    assert not [v for v in pod["volumes"] if "secret" in v]


def test_the_network_policies_admit_people_to_the_console_and_the_console_to_redis(
    render: Render,
) -> None:
    policies = {p["metadata"]["name"]: p for p in of_kind(render("monitoring"), "NetworkPolicy")}
    console = policies[CONSOLE]
    assert console["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == (
        "console"
    )
    (ingress,) = console["spec"]["ingress"]
    assert ingress["ports"] == [{"port": 8080, "protocol": "TCP"}]
    # only the auth proxy's pods (networkPolicy.consoleFrom) reach it
    (proxy,) = ingress["from"]
    assert proxy["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "oauth2-proxy"}}
    egress_ports = sorted(p["port"] for rule in console["spec"]["egress"] for p in rule["ports"])
    assert egress_ports == [
        53,
        53,
        443,
        6379,
        6443,
        7000,
        26379,
    ]  # DNS, Redis + Sentinel + Cluster, API
    # the rule on the Redis ports (the other one admits the Redis pods among themselves)
    (redis_rule,) = [r for r in policies["workerfleet-redis"]["spec"]["ingress"] if "ports" in r]
    components = {
        peer["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component")
        for peer in redis_rule["from"]
    }
    assert "console" in components
