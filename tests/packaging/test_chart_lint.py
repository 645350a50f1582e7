"""helm lint --strict, the strict values schema, the chart's guard rails and its documentation."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging_support import (
    CHART,
    NAMESPACE,
    VALUES_SETS,
    Render,
    helm_template,
    of_kind,
    read_value_docs,
    run,
    values_file,
)

pytestmark = pytest.mark.chart


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_helm_lint_strict_is_clean_for_every_values_set(helm: str, values_set: str) -> None:
    done = run(
        [
            helm,
            "lint",
            "--strict",
            str(CHART),
            "-f",
            str(values_file(values_set)),
            "--namespace",
            NAMESPACE,
        ]
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout


@pytest.mark.parametrize(
    ("bad_values", "message"),
    [
        (
            {"operator": {"replica": 2}},
            "at '/operator': additional properties 'replica' not allowed",
        ),
        ({"watchNamespaces": "team-a"}, "at '/watchNamespaces': got string, want array"),
        (
            {
                "operator": {
                    "securityContext": {
                        "readOnlyRootFilesystem": False,
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    }
                }
            },
            "at '/operator/securityContext/readOnlyRootFilesystem': value must be true",
        ),
        ({"image": {"digest": "sha256:short"}}, "at '/image/digest'"),
        # Two replicas need leader election (kopf peering is not: a paused peer's loops write)
        (
            {"operator": {"replicas": 2, "leaderElection": {"enabled": False}}},
            "at '/operator/leaderElection/enabled': value must be true",
        ),
        (
            {
                "operator": {
                    "replicas": 2,
                    "leaderElection": {"enabled": False},
                    "peering": {"enabled": True},
                }
            },
            "at '/operator/leaderElection/enabled': value must be true",
        ),
        (
            {"prometheusRule": {"disabledAlerts": ["NoSuchAlert"]}},
            "at '/prometheusRule/disabledAlerts/0'",
        ),
        (
            {"metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}},
            "at '/metrics'",
        ),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "writable-root-fs",
        "bad-digest",
        "two-operator-replicas",
        "two-operator-replicas-with-peering",
        "unknown-alert",
        "service-and-pod-monitor",
    ],
)
def test_a_values_file_violating_the_schema_fails_with_a_clear_message(
    helm: str, tmp_path: Path, bad_values: dict[str, Any], message: str
) -> None:
    # Given a values file that breaks the schema
    bad = tmp_path / "bad-values.yaml"
    bad.write_text(yaml.safe_dump(bad_values))
    # When the chart is rendered with it
    done = run([helm, "template", "workerfleet", str(CHART), "-f", str(bad)])
    # Then helm refuses, naming the schema and the offending path
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr
    assert message in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "image.tag=latest"], 'image.tag must not be "latest"'),
        (
            [
                "--set",
                "metrics.serviceMonitor.enabled=true",
                "--set",
                "metrics.service.enabled=false",
            ],
            "metrics.serviceMonitor.enabled needs metrics.service.enabled",
        ),
        (["--set", "console.enabled=true"], "console.enabled needs console.auth.existingSecret"),
        (
            [
                "--set",
                "console.enabled=true",
                "--set",
                "console.allowWrites=true",
                "--set",
                "console.auth.proxyHeader=X-Forwarded-User",
            ],
            "console.auth.proxyHeader needs console.auth.trustedProxies (the IPs or CIDRs of the "
            "auth proxy that sets X-Forwarded-User): the console believes the header only from "
            "those addresses, and without them any pod that reaches the console could claim any "
            "user and replay or purge dead letters (console.allowWrites)",
        ),
        (
            ["--set", "console.enabled=true", "--set", "console.auth.proxyHeader=X-Forwarded-User"],
            "console.auth.proxyHeader needs console.auth.trustedProxies",
        ),
        (
            [
                "--set",
                "console.enabled=true",
                "--set",
                "console.auth.proxyHeader=X-Forwarded-User",
                "--set",
                "console.auth.trustedProxies={ingress-nginx}",
            ],
            "/console/auth/trustedProxies/0",
        ),
        (
            ["--set", "console.enabled=true", "--set", "console.auth.token=abc"],
            "additional properties 'token' not allowed",
        ),
        (
            [
                "--set",
                "console.enabled=true",
                "--set",
                "console.auth.existingSecret=t",
                "--set",
                "console.securityContext.readOnlyRootFilesystem=false",
            ],
            "readOnlyRootFilesystem",
        ),
    ],
    ids=[
        "latest-tag",
        "servicemonitor-without-service",
        "console-without-authentication",
        "console-proxy-header-with-writes-from-any-peer",
        "console-proxy-header-from-any-peer",
        "console-trusted-proxy-not-an-address",
        "console-token-as-a-value",
        "console-writable-root-filesystem",
    ],
)
def test_unsafe_combinations_are_refused_with_the_reason(
    helm: str, args: list[str], message: str
) -> None:
    done = run([helm, "template", "workerfleet", str(CHART), *args])
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


def test_the_operator_runs_restricted_elected_replicas_with_probes_and_resources(
    render: Render,
) -> None:
    (deployment,) = of_kind(render("default"), "Deployment")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert spec["replicas"] == 2  # elected (test_chart_availability.py)
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] >= 10000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert set(container["resources"]) == {"requests", "limits"}
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["WORKERFLEET_OPERATOR_NAMESPACES"] == NAMESPACE  # namespaced by default
    assert env["WORKERFLEET_OPERATOR_HEALTH_PORT"] == "8080"
    assert env["WORKERFLEET_OPERATOR_METRICS_PORT"] == "9090"
    assert "WORKERFLEET_OPERATOR_PEERING" not in env  # unset = standalone
    # No automounted token; the projected one expires and lands where client libraries look.
    assert pod["automountServiceAccountToken"] is False
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/var/run/secrets/kubernetes.io/serviceaccount" in mounts


def test_the_namespaced_install_passes_its_namespaces_to_the_operator(render: Render) -> None:
    (deployment,) = of_kind(render("namespaced"), "Deployment")
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["WORKERFLEET_OPERATOR_NAMESPACES"] == "team-a,team-b"


def test_the_image_defaults_to_the_app_version_and_a_digest_pins_it(render: Render) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    (default,) = of_kind(render("default"), "Deployment")
    assert (
        default["spec"]["template"]["spec"]["containers"][0]["image"]
        == f"workerfleet/operator:{chart['appVersion']}"
    )
    # The operator and (in these values) the console: one image, pinned for both.
    pinned = of_kind(render("monitoring"), "Deployment")
    assert len(pinned) == 2
    for deployment in pinned:
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        assert re.fullmatch(r"workerfleet/operator@sha256:[0-9a-f]{64}", image)


def test_the_crd_is_kept_on_uninstall_and_can_be_left_out(render: Render) -> None:
    (crd,) = of_kind(render("default"), "CustomResourceDefinition")
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert (
        of_kind(render("default", "--set", "crds.enabled=false"), "CustomResourceDefinition") == []
    )


def test_monitoring_objects_are_off_by_default_and_on_behind_their_flags(render: Render) -> None:
    # (ServiceMonitor and PodMonitor are alternatives: never both, see the schema test)
    optional = ("ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap")
    default = render("default")
    assert [k for k in optional if of_kind(default, k)] == []
    # The operator's own NetworkPolicy is on by default; the workers' and Redis' are opt-in.
    policies = [p["metadata"]["name"] for p in of_kind(default, "NetworkPolicy")]
    assert policies == ["workerfleet-operator"]
    monitoring = render("monitoring")
    assert [k for k in optional if not of_kind(monitoring, k)] == ["PodMonitor"]
    pod_monitor = render(
        "monitoring",
        "--set", "metrics.serviceMonitor.enabled=false",
        "--set", "metrics.podMonitor.enabled=true",
    )  # fmt: skip
    assert of_kind(pod_monitor, "PodMonitor") and not of_kind(pod_monitor, "ServiceMonitor")
    (sm,) = of_kind(monitoring, "ServiceMonitor")
    (endpoint,) = sm["spec"]["endpoints"]
    # The pools' own namespace label must survive the scrape, and the rules select this job.
    assert endpoint["honorLabels"] is True
    assert {"targetLabel": "job", "replacement": "workerfleet-operator"} in endpoint["relabelings"]
    (dashboard,) = of_kind(monitoring, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"


# ci/monitoring-values.yaml: Redis, Sentinel and a Redis Cluster port range, in namespace redis.
REDIS_PORTS = [
    {"port": 6379, "protocol": "TCP"},
    {"port": 26379, "protocol": "TCP"},
    {"port": 7000, "endPort": 7005, "protocol": "TCP"},
]
REDIS_NAMESPACE = {
    "namespaceSelector": {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["redis"]}
        ]
    }
}


def test_the_network_policies_limit_redis_to_the_operator_and_the_workers(render: Render) -> None:
    policies = {p["metadata"]["name"]: p for p in of_kind(render("monitoring"), "NetworkPolicy")}
    redis = policies["workerfleet-redis"]
    assert redis["metadata"]["namespace"] == "redis"
    rule, _among_themselves = redis["spec"]["ingress"]
    assert rule["ports"] == REDIS_PORTS
    sources = [peer["podSelector"] for peer in rule["from"]]
    assert {
        "matchLabels": {
            "app.kubernetes.io/component": "operator",
            "app.kubernetes.io/instance": "workerfleet",
            "app.kubernetes.io/name": "workerfleet",
        }
    } in sources
    assert {"matchExpressions": [{"key": "workerfleet.io/pool", "operator": "Exists"}]} in sources
    workers = policies["workerfleet-workers"]
    assert workers["metadata"]["namespace"] == "team-a"
    assert workers["spec"]["policyTypes"] == ["Ingress", "Egress"]
    egress_ports = sorted(p["port"] for rule in workers["spec"]["egress"] for p in rule["ports"])
    assert egress_ports == [53, 53, 6379, 7000, 26379]  # DNS and Redis, nothing else by default
    # Redis, Sentinel and the Cluster ports, only towards the Redis namespace
    (to_redis,) = [r for r in workers["spec"]["egress"] if r["ports"] == REDIS_PORTS]
    assert to_redis["to"] == [REDIS_NAMESPACE]
    (to_redis,) = [r for r in policies["workerfleet-operator"]["spec"]["egress"]
                   if r["ports"] == REDIS_PORTS]  # fmt: skip
    assert to_redis["to"] == [REDIS_NAMESPACE]


PRODUCERS = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}},
    "podSelector": {"matchLabels": {"app": "api"}},
}


def test_the_redis_policy_admits_the_redis_pods_among_themselves_and_the_listed_producers(
    render: Render,
) -> None:
    # Given the Redis policy on, with the producers of namespace shop listed in extraFrom
    manifests = render(
        "default",
        "--set", "networkPolicy.redis.enabled=true",
        "--set", "watchNamespaces={team-a}",
        "--set-json", f"networkPolicy.redis.extraFrom=[{json.dumps(PRODUCERS)}]",
    )  # fmt: skip
    (redis,) = [
        p
        for p in of_kind(manifests, "NetworkPolicy")
        if p["metadata"]["name"] == "workerfleet-redis"
    ]
    clients, among_themselves = redis["spec"]["ingress"]
    # Then the producers reach the Redis and Sentinel ports, like the operator and the workers
    assert PRODUCERS in clients["from"]
    assert [p["port"] for p in clients["ports"]] == [6379, 26379]
    # And the Redis pods reach each other on any port (replication, Sentinel, the Cluster bus)
    assert among_themselves == {
        "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "redis"}}}]
    }
    assert redis["metadata"]["labels"]["app.kubernetes.io/component"] == "redis"


def test_the_redis_policy_goes_where_redis_runs(render: Render) -> None:
    on = ("--set", "networkPolicy.redis.enabled=true")

    def namespaces(*args: str) -> list[str]:
        return [
            p["metadata"]["namespace"]
            for p in of_kind(render("default", *on, *args), "NetworkPolicy")
            if p["metadata"]["name"] == "workerfleet-redis"
        ]

    # Without a namespace of its own: the release namespace, or each of redisNamespaces
    assert namespaces() == [NAMESPACE]
    assert namespaces("--set", "networkPolicy.redisNamespaces={redis,cache}") == ["redis", "cache"]
    assert namespaces(
        "--set", "networkPolicy.redisNamespaces={redis,cache}",
        "--set", "networkPolicy.redis.namespace=data",
    ) == ["data"]  # fmt: skip


class _KeyCountingLoader(yaml.SafeLoader):
    """A SafeLoader that records every mapping key written twice (PyYAML keeps the last)."""

    repeated: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        self.repeated += sorted({str(k) for k in keys if keys.count(k) > 1})
        return super().construct_mapping(node, deep=deep)


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_no_rendered_manifest_writes_a_key_twice(helm: str, values_set: str) -> None:
    # A repeated key (e.g. two app.kubernetes.io/component labels) is refused by strict YAML
    # readers and silently collapsed by the others.
    text = helm_template(
        helm, values_file(values_set),
        "--set", "networkPolicy.workers.enabled=true",
        "--set", "networkPolicy.workers.namespaces={team-a}",  # a cluster-wide set needs them
        "--set", "networkPolicy.redis.enabled=true",
    )  # fmt: skip
    _KeyCountingLoader.repeated = []
    list(yaml.load_all(text, Loader=_KeyCountingLoader))
    assert _KeyCountingLoader.repeated == []


def test_the_operators_redis_egress_is_open_on_the_redis_and_sentinel_ports_by_default(
    render: Render,
) -> None:
    (policy,) = of_kind(render("default"), "NetworkPolicy")
    ports = [[p["port"] for p in rule["ports"]] for rule in policy["spec"]["egress"]]
    assert ports == [[53, 53], [6379, 26379], [443, 6443]]
    assert all("to" not in rule for rule in policy["spec"]["egress"][1:])


def test_rabbitmq_egress_opens_the_management_api_to_the_operator_and_amqp_to_the_workers(
    render: Render,
) -> None:
    # Given RabbitMQ egress on, towards the rabbitmq namespace, with the worker policies on
    manifests = render(
        "default",
        "--set", "networkPolicy.rabbitmq.enabled=true",
        "--set", "networkPolicy.rabbitmq.namespaces[0]=rabbitmq",
        "--set", "networkPolicy.workers.enabled=true",
        "--set", "networkPolicy.workers.namespaces[0]=team-a",
    )  # fmt: skip
    policies = {p["metadata"]["name"]: p for p in of_kind(manifests, "NetworkPolicy")}
    to_rabbitmq = {
        "namespaceSelector": {
            "matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["rabbitmq"]}
            ]
        }
    }

    def rabbitmq_ports(name: str) -> list[int]:
        (rule,) = [r for r in policies[name]["spec"]["egress"] if r.get("to") == [to_rabbitmq]]
        return [p["port"] for p in rule["ports"]]

    # Then the operator reads queue numbers over the management API only (never AMQP)
    assert rabbitmq_ports("workerfleet-operator") == [15672, 15671]
    # And the workers reach AMQP (the queue) and the management API (the CLI in a worker pod)
    assert rabbitmq_ports("workerfleet-workers") == [5672, 5671, 15672, 15671]
    # And by default no RabbitMQ port is open at all
    (default,) = of_kind(render("default"), "NetworkPolicy")
    opened = {p["port"] for rule in default["spec"]["egress"] for p in rule["ports"]}
    assert not opened & {5672, 5671, 15672, 15671}


# ----------------------------------------------------------------------------- documentation


def _documented_paths(values_text: str) -> tuple[set[str], set[str]]:
    """Return (all key paths, key paths preceded by a `# --` comment) of values.yaml."""
    paths, docs = read_value_docs(values_text)
    return paths, set(docs)


def _leaf_paths(node: Any, prefix: str = "") -> set[str]:
    if isinstance(node, dict) and node:
        out: set[str] = set()
        for key, value in node.items():
            out |= _leaf_paths(value, f"{prefix}.{key}" if prefix else key)
        return out
    return {prefix}


def test_every_value_is_documented_with_a_helm_docs_comment() -> None:
    text = (CHART / "values.yaml").read_text()
    _, documented = _documented_paths(text)
    leaves = _leaf_paths(yaml.safe_load(text))
    # A leaf is documented by its own `# --` or by the `# --` of the object it belongs to.
    undocumented = sorted(
        leaf
        for leaf in leaves
        if not any(leaf == d or leaf.startswith(d + ".") for d in documented)
    )
    assert undocumented == []


def _schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}.{key}" if prefix else key
        out.add(path)
        out |= _schema_paths(sub, path)
    return out


def test_the_schema_is_strict_and_covers_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(node: dict[str, Any], where: str) -> None:
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{where or '/'} is not strict"
            for key, sub in node["properties"].items():
                walk(sub, f"{where}.{key}")

    walk(schema, "")
    all_paths, _ = _documented_paths((CHART / "values.yaml").read_text())
    schema_paths = _schema_paths(schema)
    free_form = _free_form(schema)
    # Every key of values.yaml has a schema entry, or sits inside a free-form map / Kubernetes
    # object the schema leaves open (labels, resources, affinity).
    missing = sorted(
        p
        for p in all_paths
        if p not in schema_paths and not any(p.startswith(f + ".") for f in free_form)
    )
    assert missing == []


def _free_form(schema: dict[str, Any], prefix: str = "") -> set[str]:
    """Schema paths whose content is a free-form map or a Kubernetes object (no properties)."""
    out: set[str] = set()
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}.{key}" if prefix else key
        if "properties" not in sub:
            out.add(path)
        out |= _free_form(sub, path)
    return out


def test_the_readme_values_table_lists_every_documented_value() -> None:
    readme = (CHART / "README.md").read_text()
    _, documented = _documented_paths((CHART / "values.yaml").read_text())
    listed = set(re.findall(r"^\| `([^`]+)` \|", readme, re.MULTILINE))
    assert sorted(documented - listed) == []
    assert sorted(listed - documented) == []


def test_a_latest_tag_is_refused_by_the_template_even_past_the_schema_as_its_doc_says(
    helm: str,
) -> None:
    # When the chart is rendered with image.tag=latest and no schema check
    done = run(
        [helm, "template", "workerfleet", str(CHART), "--set", "image.tag=latest",
         "--skip-schema-validation"]
    )  # fmt: skip
    # Then the template refuses it, naming the value
    assert done.returncode != 0
    assert 'image.tag must not be "latest"' in done.stderr, done.stderr
    # And the value's doc (and the README table made from it) names the template, not the schema
    _, docs = read_value_docs((CHART / "values.yaml").read_text())
    assert "refused by the template" in docs["image.tag"]
    assert "refused by the schema" not in docs["image.tag"]


def test_the_template_refuses_a_service_monitor_and_a_pod_monitor_together(helm: str) -> None:
    # Even past the schema (helm template --skip-schema-validation): both would scrape the
    # operator twice and double every pool series.
    done = run(
        [
            helm, "template", "wf", str(CHART),
            "--skip-schema-validation",
            "--set", "metrics.serviceMonitor.enabled=true",
            "--set", "metrics.podMonitor.enabled=true",
        ]
    )  # fmt: skip
    assert done.returncode != 0
    assert "enable one of metrics.serviceMonitor and metrics.podMonitor, not both" in done.stderr


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_every_object_name_is_valid_even_with_a_63_character_fullname(
    helm: str, values_set: str
) -> None:
    # Given the longest fullname Helm allows (the operator's metrics Service came out at 71
    # characters, which the API server refuses for a Service)
    text = helm_template(
        helm, values_file(values_set), "--set", "fullnameOverride=" + "w" * 63
    )  # fmt: skip
    manifests = [m for m in yaml.safe_load_all(text) if m]
    # Then every Service name is a DNS label (63 at most) and every other name a subdomain
    for m in manifests:
        name = m["metadata"]["name"]
        limit = 63 if m["kind"] == "Service" else 253
        assert len(name) <= limit and re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name), (
            m["kind"],
            name,
        )


def test_worker_policies_of_a_cluster_wide_operator_need_their_namespaces_named(
    helm: str, render: Render
) -> None:
    # Given a cluster-wide operator (no list of watched namespaces) with worker policies on
    flags = ("--set", "clusterWide=true", "--set", "networkPolicy.workers.enabled=true")
    # When rendered without naming the namespaces with WorkerPools, it fails saying so (it
    # rendered no worker policy at all, without a word)
    done = run([helm, "template", "wf", str(CHART), *flags])
    assert done.returncode != 0
    assert "name them in networkPolicy.workers.namespaces" in done.stderr
    # And with them named, each gets its policy
    named = render("default", *flags, "--set", "networkPolicy.workers.namespaces={team-a,team-b}")
    workers = [
        p for p in of_kind(named, "NetworkPolicy") if p["metadata"]["name"].endswith("-workers")
    ]
    assert sorted(p["metadata"]["namespace"] for p in workers) == ["team-a", "team-b"]
