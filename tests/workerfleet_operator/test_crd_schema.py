"""The generated CRD is a valid, structural, fully described Kubernetes API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import celpy
import kubernetes_validate
import pytest
from workerfleet_operator import api
from workerfleet_operator.api import crd as crd_mod

from tests.workerfleet_operator import crd_validation

CRD = api.build_crd()
ROOT = crd_validation.build_root_schema(CRD)


def _walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[*]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{*}}")


@pytest.mark.parametrize("version", crd_validation.KUBERNETES_VERSIONS)
def test_the_crd_passes_kubernetes_validate_strict(version: str) -> None:
    kubernetes_validate.validate(CRD, version, strict=True)


def test_the_crd_names_the_workerpool_api() -> None:
    spec = CRD["spec"]
    assert CRD["metadata"]["name"] == "workerpools.workerfleet.io"
    assert spec["group"] == "workerfleet.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "WorkerPool"
    assert spec["names"]["plural"] == "workerpools"
    assert spec["names"]["shortNames"] == ["wp"]
    assert spec["names"]["categories"] == ["workerfleet"]
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_kubectl_get_shows_ready_replicas_bounds_backlog_in_flight_oldest_dlq_paused_and_age() -> (
    None
):
    columns = CRD["spec"]["versions"][0]["additionalPrinterColumns"]
    default_columns = [c["name"] for c in columns if not c.get("priority")]
    assert default_columns == [
        "Ready",
        "Replicas",
        "Desired",
        "Min",
        "Max",
        "Backlog",
        "In-Flight",
        "Oldest",
        "DLQ",
        "Paused",
        "Age",
    ]
    wide_columns = [c["name"] for c in columns if c.get("priority")]
    assert wide_columns == ["Mode", "Queue", "Reason", "Degraded"]
    paths = {c["name"]: c["jsonPath"] for c in columns}
    assert paths["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert paths["DLQ"] == ".status.queue.deadLetter"
    # Every column points at a field the status schema defines.
    status_props = ROOT["properties"]["status"]["properties"]
    assert {"replicas", "desiredReplicas", "queue", "conditions"} <= set(status_props)
    assert {"backlog", "deadLetter", "inFlight", "oldestJobAgeSeconds"} <= set(
        status_props["queue"]["properties"]
    )
    assert paths["Paused"] == '.status.conditions[?(@.type=="Paused")].status'
    assert paths["Degraded"] == '.status.conditions[?(@.type=="Degraded")].status'
    spec_autoscaling = ROOT["properties"]["spec"]["properties"]["autoscaling"]["properties"]
    assert {"minReplicas", "maxReplicas"} <= set(spec_autoscaling)


def test_the_schema_is_structural_without_refs_or_free_form_unions() -> None:
    for path, node in _walk(ROOT):
        assert "$ref" not in node and "$defs" not in node and "allOf" not in node, path
        assert "title" not in node, path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string") is True, path
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            assert "type" not in node, path
        elif path != ".metadata":
            assert node.get("type") in {"object", "array", "string", "integer", "number", "boolean"}
        assert node.get("additionalProperties") is not False, path
        assert not ("properties" in node and "additionalProperties" in node), path


def test_nothing_in_the_schema_preserves_unknown_fields() -> None:
    preserved = [p for p, n in _walk(ROOT) if n.get("x-kubernetes-preserve-unknown-fields")]
    assert preserved == []


def test_nullable_values_exist_only_in_status() -> None:
    nullable = [p for p, n in _walk(ROOT) if n.get("nullable")]
    assert nullable and all(p.startswith(".status.") for p in nullable)


def test_every_spec_and_status_field_has_a_description() -> None:
    missing = [
        p
        for p, n in _walk(ROOT)
        if p.startswith((".spec", ".status"))
        and "{*}" not in p
        and not (p.endswith("[*]") and n.get("type") != "object")  # scalar list items
        and not n.get("description")
    ]
    assert missing == []


def test_list_map_keys_are_required_in_their_items() -> None:
    for path, node in _walk(ROOT):
        if node.get("x-kubernetes-list-type") == "map":
            required = set(node["items"].get("required", []))
            assert set(node["x-kubernetes-list-map-keys"]) <= required, path
            assert "maxItems" in node, path  # bounds the CEL cost of item rules


def test_the_spec_cannot_reach_pod_security_settings_volumes_or_service_accounts() -> None:
    forbidden = {
        "volumes",
        "volumeMounts",
        "hostPath",
        "hostNetwork",
        "hostPID",
        "hostIPC",
        "privileged",
        "securityContext",
        "capabilities",
        "serviceAccountName",
        "serviceAccount",
        "automountServiceAccountToken",
        "containers",
        "initContainers",
        "command",
        "args",
        "podSpec",
        "template",
        "configMapKeyRef",
        "fieldRef",
        "resourceFieldRef",
        "runtimeClassName",
    }
    names = {p.rsplit(".", 1)[-1] for p, _ in _walk(ROOT["properties"]["spec"], "spec")}
    assert names & forbidden == set()


def test_env_values_come_only_from_plain_strings_or_secret_keys() -> None:
    item = ROOT["properties"]["spec"]["properties"]["env"]["items"]
    assert set(item["properties"]) == {"name", "value", "valueFrom"}
    assert set(item["properties"]["valueFrom"]["properties"]) == {"secretKeyRef"}


def test_every_cel_rule_compiles_and_has_a_message() -> None:
    env = celpy.Environment()
    rules = list(crd_validation.iter_rules(ROOT))
    assert len(rules) >= 10
    for path, entry in rules:
        env.compile(entry["rule"])
        assert entry["message"], path


def test_field_paths_of_rules_name_real_fields() -> None:
    for path, entry in crd_validation.iter_rules(ROOT):
        if "fieldPath" not in entry:
            continue
        node = ROOT
        for part in [p for p in path.split(".") if p] + entry["fieldPath"].split(".")[1:]:
            node = node["items"] if part == "[*]" else node["properties"][part.replace("[*]", "")]
            if part.endswith("[*]"):
                node = node["items"]
        assert node.get("type") or node.get("x-kubernetes-int-or-string"), (path, entry)


def test_crd_defaults_equal_the_model_defaults() -> None:
    # Given the minimal sample, defaulted by the CRD the way the API server would do it
    minimal = crd_validation.load_sample("minimal")
    defaulted = crd_validation.apply_defaults(ROOT, minimal)["spec"]
    # Then the model reads the same spec from the defaulted and the raw object
    from_crd = api.WorkerPoolSpec.model_validate(defaulted)
    from_model = api.WorkerPoolSpec.model_validate(minimal["spec"])
    assert from_crd == from_model
    # And every defaulted object of the model appears in the stored spec
    assert {"autoscaling", "retry", "deadLetter", "drain", "metrics"} <= set(defaulted)
    assert defaulted["autoscaling"]["scaleDown"]["stabilizationWindowSeconds"] == 120.0


def test_the_evaluator_runs_transition_rules_only_on_update() -> None:
    # Given a CRD with a transition rule (a stand-in for the WorkerPool's own queue rule)
    crd = api.build_crd()
    queue = crd_validation.build_root_schema(crd)["properties"]["spec"]["properties"]["queue"]
    queue["x-kubernetes-validations"] = [
        {"rule": "self.name == oldSelf.name", "message": "queue.name is immutable"}
    ]
    new = crd_validation.load_sample("minimal")
    old = crd_validation.load_sample("minimal")
    old["spec"]["queue"]["name"] = "other"
    # Then a create passes, an update changing the name does not
    assert crd_validation.validate(crd, new) == []
    messages = [v.message for v in crd_validation.validate(crd, new, old=old)]
    assert messages == ["queue.name is immutable"]


def test_the_name_rule_is_stated_once_for_cel_and_python() -> None:
    (rule,) = crd_mod.ROOT_RULES
    assert rule.check({"metadata": {"name": "emails"}})
    assert not rule.check({"metadata": {"name": "x" * 56}})
