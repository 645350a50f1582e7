"""The chart's copies and the generated deploy/ files never drift from their sources.

Sources of truth: deploy/crds (generated from the operator's models), deploy/alerts, deploy/grafana.
The chart carries byte copies (Helm cannot read outside its directory); scripts/render_install.py
refreshes them, the fast alert variant and deploy/install.yaml, and `--check` fails when stale.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from packaging_support import CHART, ROOT, Render, load_manifests, of_kind, run

pytestmark = pytest.mark.chart

SCRIPT = ROOT / "scripts" / "render_install.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_install", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("source", "copy"),
    [(s, c) for s, c in load_script().COPIES],
    ids=["crd", "alerts", "dashboard"],
)
def test_the_chart_copy_is_byte_identical_to_its_source(source: str, copy: str) -> None:
    assert (CHART / copy).read_bytes() == (ROOT / source).read_bytes(), "run `make install-yaml`"


def test_render_install_check_finds_nothing_stale(helm: str) -> None:
    done = run([sys.executable, str(SCRIPT), "--check"])
    assert done.returncode == 0, done.stderr


def test_render_install_check_names_a_stale_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a checkout whose alert rules changed after the chart copy was made
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    shutil.copytree(CHART, tmp_path / "charts" / "workerfleet")
    rules = tmp_path / "deploy" / "alerts" / "workerfleet-alerts.yaml"
    rules.write_text(rules.read_text().replace("for: 15m", "for: 20m"))
    script = load_script()
    monkeypatch.setattr(script, "ROOT", tmp_path)
    monkeypatch.setattr(script, "CHART", tmp_path / "charts" / "workerfleet")
    # When the drift check runs
    code = script.main(["--check"])
    # Then it fails without writing anything
    assert code == 1
    assert (
        tmp_path / "charts/workerfleet/files/alerts/workerfleet-alerts.yaml"
    ).read_text() != rules.read_text()


def test_the_fast_rules_divide_every_window_by_twenty() -> None:
    script = load_script()
    fast = script.build_fast_rules("expr: rate(x[10m]) > 0\nfor: 15m\nfor: 0m\n")
    assert "rate(x[30s])" in fast and "for: 45s" in fast and "for: 0s" in fast


def test_the_prometheus_rule_is_the_rule_file(render: Render) -> None:
    (rule,) = of_kind(render(None, "--set", "prometheusRule.enabled=true"), "PrometheusRule")
    source = yaml.safe_load((ROOT / "deploy/alerts/workerfleet-alerts.yaml").read_text())
    assert rule["spec"] == source


def test_the_prometheus_rule_values_disable_label_and_relink_alerts(render: Render) -> None:
    (rule,) = of_kind(
        render(
            None,
            "--set", "prometheusRule.enabled=true",
            "--set", "prometheusRule.disabledAlerts={WorkerPoolDrainKilled}",
            "--set", "prometheusRule.additionalRuleLabels.team=platform",
            "--set", "prometheusRule.additionalRuleLabels.severity=info",
            "--set", "prometheusRule.runbookBaseURL=https://wiki.example/workerfleet",
        ),
        "PrometheusRule",
    )  # fmt: skip
    every = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    rules = {r["alert"]: r for r in every if "alert" in r}
    source = yaml.safe_load((ROOT / "deploy/alerts/workerfleet-alerts.yaml").read_text())
    alerts = [r for g in source["groups"] for r in g["rules"] if "alert" in r]
    assert "WorkerPoolDrainKilled" not in rules and len(rules) == len(alerts) - 1
    # Recording rules are kept, without the alert labels.
    assert all("labels" not in r for r in every if "record" in r)
    for name, r in rules.items():
        assert r["labels"]["team"] == "platform"
        assert r["labels"]["severity"] in {"warning", "critical"}  # the rule's own labels win
        assert r["annotations"]["runbook_url"] == f"https://wiki.example/workerfleet#{name.lower()}"


def test_the_dashboard_config_map_is_the_dashboard_file(render: Render) -> None:
    (config_map,) = of_kind(render(None, "--set", "grafanaDashboard.enabled=true"), "ConfigMap")
    text = (ROOT / "deploy/grafana/workerfleet-dashboard.json").read_text()
    assert config_map["data"]["workerfleet-dashboard.json"] == text.rstrip("\n")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_the_dashboard_queries_only_the_documented_series() -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/workerfleet-dashboard.json").read_text())
    architecture = (ROOT / "docs/architecture.md").read_text()
    metrics = architecture[architecture.index("## Metrics") :]
    metrics = metrics[: metrics.index("\n## ")]
    allowed = set(re.findall(r"`(workerfleet_[a-z_]+)", metrics)) | {"up"}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 10
    for expr in exprs:
        names = {
            re.sub(r"_(bucket|sum|count)$", "", n)
            for n in re.findall(r"\b(workerfleet_[a-z_]+|up)\b", expr)
        }
        assert names and names <= allowed, expr
    assert {p["title"] for p in dashboard["panels"]} >= {
        "DLQ size and alert threshold",
        "Replicas",
        "Failed attempts by task and outcome",
        "Dead letters by reason (5m)",
        "Leases lost (5m)",
        "Redis errors by operation",
    }
    # Worker series are filtered by the pool like the operator's (the PodMonitor adds the label).
    worker = [e for e in exprs if re.search(r"workerfleet_(jobs|job|dead|leases|redis)_", e)]
    assert worker and all('pool=~"$pool"' in e for e in worker)


def test_the_crd_template_is_the_generated_crd_kept_on_uninstall(render: Render) -> None:
    (crd,) = of_kind(render("default"), "CustomResourceDefinition")
    (source,) = load_manifests((ROOT / "deploy/crds/workerpools.workerfleet.io.yaml").read_text())
    assert crd["spec"] == source["spec"]
    assert crd["metadata"]["name"] == source["metadata"]["name"]
    assert source["metadata"]["labels"].items() <= crd["metadata"]["labels"].items()
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_install_yaml_says_it_is_generated_and_installs_the_default_chart() -> None:
    text = (ROOT / "deploy/install.yaml").read_text()
    assert text.startswith("# GENERATED by scripts/render_install.py from charts/workerfleet")
    kinds = [m["kind"] for m in load_manifests(text)]
    assert kinds[0] == "Namespace"
    assert {
        "CustomResourceDefinition",
        "Deployment",
        "Role",
        "RoleBinding",
        "ServiceAccount",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    } <= set(kinds)
    assert "ClusterRoleBinding" not in kinds  # namespaced by default
    assert "PrometheusRule" not in kinds  # needs the Prometheus Operator: chart only


@pytest.mark.parametrize(
    "doc", ["README.md", "docs/quickstart-kubernetes.md", "charts/workerfleet/README.md"]
)
def test_where_install_yaml_is_offered_the_doc_says_the_one_namespace_it_watches(doc: str) -> None:
    # deploy/install.yaml is the default chart: WorkerPools elsewhere are never reconciled.
    (deployment,) = of_kind(
        load_manifests((ROOT / "deploy/install.yaml").read_text()), "Deployment"
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    watched = env["WORKERFLEET_OPERATOR_NAMESPACES"]
    assert "," not in watched
    text = (ROOT / doc).read_text()
    offer = r"kubectl apply --server-side -f deploy/install\.yaml"
    offers = [m.start() for m in re.finditer(offer, text)]
    assert offers
    for start in offers:
        paragraph = text[start : text.find("\n\n", start)]
        assert re.search(rf"watches only\s+`?{watched}`?", paragraph), paragraph


@pytest.mark.parametrize("doc", ["README.md", "docs/quickstart-kubernetes.md"])
def test_the_kubectl_get_wp_output_shown_has_the_crds_printer_columns(doc: str) -> None:
    (crd,) = load_manifests((ROOT / "deploy/crds/workerpools.workerfleet.io.yaml").read_text())
    (version,) = crd["spec"]["versions"]
    shown_by_default = [
        c["name"].upper() for c in version["additionalPrinterColumns"] if not c.get("priority")
    ]
    text = (ROOT / doc).read_text()
    headers = re.findall(r"^(?:# )?(NAMESPACE +NAME +READY .*)$", text, re.MULTILINE)
    assert headers
    for header in headers:
        assert header.split() == ["NAMESPACE", "NAME", *shown_by_default]
        # every row shown under it has a value in each column
        rows = text[text.index(header) + len(header) :].split("\n")[1:]
        row = rows[0].removeprefix("# ")
        assert len(row.split()) == len(header.split()), row
