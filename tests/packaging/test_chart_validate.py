"""The rendered chart and deploy/install.yaml are valid Kubernetes for 1.30..1.35.

Built-in kinds go through `kubernetes-validate --strict` (unknown fields are errors). It cannot
validate custom resources, so the Prometheus Operator kinds get a minimal strict JSON schema of
the fields the chart renders, and the PrometheusRule's spec goes through `promtool check rules`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from packaging_support import ROOT, VALUES_SETS, Render, load_manifests, of_kind, run

pytestmark = pytest.mark.chart

KUBERNETES_VERSIONS = ("1.30.0", "1.31.0", "1.32.0", "1.33.0", "1.34.0", "1.35.0")
KUBERNETES_VALIDATE = ROOT / ".venv" / "bin" / "kubernetes-validate"
CUSTOM_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_values_set_and_install_yaml_pass_kubernetes_validate_strict(
    rendered_dir: Path, version: str
) -> None:
    files = [rendered_dir / f"{s}.yaml" for s in VALUES_SETS] + [ROOT / "deploy" / "install.yaml"]
    done = run([str(KUBERNETES_VALIDATE), "--strict", "-k", version, *map(str, files)])
    assert done.returncode == 0, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert "ERROR" not in output, output
    # Every built-in object was actually checked; only the custom kinds lack a schema.
    for path in files:
        for manifest in load_manifests(path.read_text()):
            if manifest["kind"] in CUSTOM_KINDS:
                continue
            name = f"{manifest['kind'].lower()}/{manifest['metadata']['name']}"
            assert f"{path} passed for resource {name}" in output, (
                f"{name} in {path.name} not validated"
            )
    unknown = set(re.findall(r"Couldn't find schema for kind (\w+)", output))
    assert unknown <= CUSTOM_KINDS


_ENDPOINT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["port"],
    "properties": {
        "port": {"type": "string"},
        "path": {"type": "string", "pattern": "^/"},
        "interval": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"},
        "scrapeTimeout": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"},
        "honorLabels": {"type": "boolean"},
        "relabelings": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "targetLabel": {"type": "string"},
                    "replacement": {"type": "string"},
                },
            },
        },
    },
}
_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
}
_NAMESPACE_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
}
_METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def _resource(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"type": "string"},
            "metadata": _METADATA,
            "spec": spec,
        },
    }


# The subset of the Prometheus Operator's v1 CRDs the chart uses, strict about unknown fields.
CUSTOM_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": _resource(
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": _SELECTOR,
                "namespaceSelector": _NAMESPACE_SELECTOR,
                "endpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
            },
        }
    ),
    "PodMonitor": _resource(
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "selector": _SELECTOR,
                "namespaceSelector": _NAMESPACE_SELECTOR,
                "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
            },
        }
    ),
    "PrometheusRule": _resource(
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string"},
                            "interval": {"type": "string"},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["expr"],
                                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "record": {"type": "string"},
                                        "expr": {"type": "string"},
                                        "for": {"type": "string"},
                                        "labels": {
                                            "type": "object",
                                            "additionalProperties": {"type": "string"},
                                        },
                                        "annotations": {
                                            "type": "object",
                                            "additionalProperties": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        },
                    },
                }
            },
        }
    ),
}


def test_the_prometheus_operator_resources_have_the_right_shape(
    rendered_dir: Path, render: Render
) -> None:
    # The monitoring set has the ServiceMonitor; the PodMonitor is its alternative.
    pod_monitor = render(
        "monitoring",
        "--set", "metrics.serviceMonitor.enabled=false",
        "--set", "metrics.podMonitor.enabled=true",
    )  # fmt: skip
    manifests = load_manifests((rendered_dir / "monitoring.yaml").read_text())
    manifests += of_kind(pod_monitor, "PodMonitor")
    seen = set()
    for manifest in manifests:
        if manifest["kind"] in CUSTOM_SCHEMAS:
            jsonschema.validate(manifest, CUSTOM_SCHEMAS[manifest["kind"]])
            seen.add(manifest["kind"])
    assert seen == CUSTOM_KINDS


def test_the_shape_check_rejects_a_misspelt_field(rendered_dir: Path) -> None:
    (monitor,) = of_kind(
        load_manifests((rendered_dir / "monitoring.yaml").read_text()), "ServiceMonitor"
    )
    monitor["spec"]["endpoints"][0]["honourLabels"] = True
    with pytest.raises(jsonschema.ValidationError, match="honourLabels"):
        jsonschema.validate(monitor, CUSTOM_SCHEMAS["ServiceMonitor"])


def test_the_rendered_prometheus_rule_passes_promtool_check_rules(
    rendered_dir: Path, promtool: str, tmp_path: Path
) -> None:
    (rule,) = of_kind(
        load_manifests((rendered_dir / "monitoring.yaml").read_text()), "PrometheusRule"
    )
    rule_file = tmp_path / "rendered-rules.yaml"
    rule_file.write_text(yaml.safe_dump(rule["spec"]))
    done = run([promtool, "check", "rules", str(rule_file)])
    assert done.returncode == 0, done.stdout + done.stderr
    source = yaml.safe_load((ROOT / "deploy/alerts/workerfleet-alerts.yaml").read_text())
    count = sum(len(group["rules"]) for group in source["groups"])
    assert f"SUCCESS: {count} rules found" in done.stdout
