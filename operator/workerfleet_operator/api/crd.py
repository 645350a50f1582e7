"""Generate the WorkerPool CustomResourceDefinition from the pydantic models.

Who calls it: ``scripts/gen_crd.py`` (``make crd``) writes ``deploy/crds/`` from
:func:`build_crd_yaml`; a test fails when that file drifts from the models; the tests validate
sample WorkerPools against :func:`build_crd`'s schema and CEL rules.

The converter turns pydantic's JSON Schema (draft 2020-12, ``$ref``/``$defs``, ``anyOf`` with
``null`` for optional fields) into a Kubernetes *structural* schema (OpenAPI v3.0 subset): every
``$ref`` is inlined, optional fields become plain absent-able properties, numeric exclusive
bounds become ``minimum`` + ``exclusiveMinimum: true``, ``int | str`` quantities keep the
``x-kubernetes-int-or-string`` form, and pydantic's ``title``/``additionalProperties: false``
are dropped (the API server prunes unknown fields instead).
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from workerfleet_operator.api import spec as spec_mod
from workerfleet_operator.api import status as status_mod

GROUP = "workerfleet.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "WorkerPool"
LIST_KIND = "WorkerPoolList"
PLURAL = "workerpools"
SINGULAR = "workerpool"
SHORT_NAMES: tuple[str, ...] = ("wp",)
CATEGORIES: tuple[str, ...] = ("workerfleet",)
CRD_NAME = f"{PLURAL}.{GROUP}"

NAME_MAX_LENGTH = 55
"""Children are named ``<pool>`` and ``<pool>-metrics``; Service names are DNS-1035 labels."""
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"

ROOT_RULES: tuple[spec_mod.Rule, ...] = (
    spec_mod.Rule(
        cel=(
            f"self.metadata.name.size() <= {NAME_MAX_LENGTH} && "
            f"self.metadata.name.matches('{NAME_PATTERN}')"
        ),
        message=(
            f"metadata.name must be a DNS-1035 label of at most {NAME_MAX_LENGTH} characters "
            "(it names the pool's Deployment and Service)"
        ),
        check=lambda body: _name_is_valid(str(body.get("metadata", {}).get("name", ""))),
    ),
)
"""Rules on the whole object (only ``metadata.name`` is visible to CEL there)."""


def _name_is_valid(name: str) -> bool:
    import re

    return len(name) <= NAME_MAX_LENGTH and re.match(NAME_PATTERN, name) is not None


_DROPPED_KEYS = frozenset({"title", "$defs"})


def build_structural_schema(json_schema: dict[str, Any]) -> dict[str, Any]:
    """Convert a pydantic JSON Schema into a Kubernetes structural OpenAPI v3 schema."""
    defs = json_schema.get("$defs", {})
    return _convert(json_schema, defs)


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline ``$ref`` (and single-element ``allOf``), letting the referring node's keys win."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        target = copy.deepcopy(defs[name])
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return _resolve({**target, **rest}, defs)
    if "allOf" in node and len(node["allOf"]) == 1:
        rest = {k: v for k, v in node.items() if k != "allOf"}
        return _resolve({**node["allOf"][0], **rest}, defs)
    return node


def _convert(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    node = _resolve(node, defs)
    nullable = False
    if "anyOf" in node:
        branches = node["anyOf"]
        non_null = [b for b in branches if b != {"type": "null"}]
        if node.get("x-kubernetes-int-or-string"):
            pass
        elif len(non_null) == 1:
            # Optional[X]: with a None default the field is simply absent-able; elsewhere (map
            # values) null is a real value and the schema says so.
            nullable = len(non_null) != len(branches) and "default" not in node
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            node = _resolve({**non_null[0], **rest}, defs)
        else:
            raise ValueError(f"cannot express anyOf {branches!r} in a structural schema")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "default" and value is None:
            continue
        if key == "properties":
            out["properties"] = {name: _convert(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out["items"] = _convert(value, defs)
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out["additionalProperties"] = _convert(value, defs)
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        else:
            out[key] = value
    if nullable:
        out["nullable"] = True
    return _order(out)


_KEY_ORDER = (
    "description",
    "type",
    "format",
    "enum",
    "default",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "nullable",
    "anyOf",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-preserve-unknown-fields",
    "items",
    "additionalProperties",
    "required",
    "properties",
    "x-kubernetes-validations",
)


def _order(node: dict[str, Any]) -> dict[str, Any]:
    # A stable, readable key order keeps the generated YAML diff-friendly.
    rank = {k: i for i, k in enumerate(_KEY_ORDER)}
    return dict(sorted(node.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


def build_spec_schema() -> dict[str, Any]:
    """The structural schema of ``spec``."""
    raw = spec_mod.WorkerPoolSpec.model_json_schema(by_alias=True, mode="validation")
    return build_structural_schema(raw)


def build_status_schema() -> dict[str, Any]:
    """The structural schema of ``status``."""
    raw = status_mod.WorkerPoolStatus.model_json_schema(by_alias=True, mode="validation")
    return build_structural_schema(raw)


def build_openapi_schema() -> dict[str, Any]:
    """The whole ``openAPIV3Schema`` of the WorkerPool."""
    return {
        "description": (
            "A WorkerPool runs worker_runtime workers for one Redis queue as a Deployment and "
            "scales it on the queue's depth."
        ),
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"description": "API version of the object.", "type": "string"},
            "kind": {"description": "Kind of the object.", "type": "string"},
            "metadata": {"type": "object"},
            "spec": build_spec_schema(),
            "status": build_status_schema(),
        },
        "x-kubernetes-validations": [rule.build_validation() for rule in ROOT_RULES],
    }


def _condition_column(name: str, condition: str, field: str, priority: int = 0) -> dict[str, Any]:
    column: dict[str, Any] = {
        "name": name,
        "type": "string",
        "jsonPath": f'.status.conditions[?(@.type=="{condition}")].{field}',
    }
    if priority:
        column["priority"] = priority
    return column


PRINTER_COLUMNS: tuple[dict[str, Any], ...] = (
    # What on-call asks first: is it up, how many and within which bounds, how far behind
    # (waiting, running, the oldest job's age, dead letters), is someone holding it.
    _condition_column("Ready", status_mod.READY, "status"),
    {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
    {"name": "Desired", "type": "integer", "jsonPath": ".status.desiredReplicas"},
    {"name": "Min", "type": "integer", "jsonPath": ".spec.autoscaling.minReplicas"},
    {"name": "Max", "type": "integer", "jsonPath": ".spec.autoscaling.maxReplicas"},
    {"name": "Backlog", "type": "integer", "jsonPath": ".status.queue.backlog"},
    {"name": "In-Flight", "type": "integer", "jsonPath": ".status.queue.inFlight"},
    {"name": "Oldest", "type": "number", "jsonPath": ".status.queue.oldestJobAgeSeconds"},
    {"name": "DLQ", "type": "integer", "jsonPath": ".status.queue.deadLetter"},
    _condition_column("Paused", status_mod.PAUSED, "status"),
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Mode", "type": "string", "jsonPath": ".spec.autoscaling.mode", "priority": 1},
    {"name": "Queue", "type": "string", "jsonPath": ".spec.queue.name", "priority": 1},
    _condition_column("Reason", status_mod.READY, "reason", priority=1),
    _condition_column("Degraded", status_mod.DEGRADED, "status", priority=1),
)


def build_crd() -> dict[str, Any]:
    """The ``apiextensions.k8s.io/v1`` CustomResourceDefinition of WorkerPool."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {
                "app.kubernetes.io/name": "workerfleet",
                "app.kubernetes.io/part-of": "workerfleet",
                "app.kubernetes.io/component": "crd",
            },
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": LIST_KIND,
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [dict(c) for c in PRINTER_COLUMNS],
                    "schema": {"openAPIV3Schema": build_openapi_schema()},
                }
            ],
        },
    }


CRD_HEADER = (
    "# GENERATED by `make crd` (scripts/gen_crd.py) from operator/workerfleet_operator/api/.\n"
    "# Do not edit: change the pydantic models and regenerate; a test fails on drift.\n"
)


def build_crd_yaml() -> str:
    """The CRD as the YAML text stored in ``deploy/crds/workerpools.workerfleet.io.yaml``."""
    body = yaml.safe_dump(build_crd(), sort_keys=False, width=100, allow_unicode=True)
    return CRD_HEADER + "---\n" + body
