"""Validate a custom resource against a CRD roughly the way the API server does.

Used by the CRD, sample and rule tests. Steps, in the API server's order:

1. defaulting: every ``default`` of the structural schema is applied below objects that exist;
2. OpenAPI validation with ``jsonschema`` (Draft 4 semantics match OpenAPI v3.0's boolean
   ``exclusiveMinimum``), strict about unknown fields as ``kubectl apply`` (field validation
   ``Strict``) is, and enforcing ``x-kubernetes-list-type: map`` key uniqueness;
3. every ``x-kubernetes-validations`` rule evaluated with ``cel-python`` where it sits, once per
   instance (list items, map values), with ``self`` typed by the schema (``number`` is a CEL
   double even when written as ``5``) and ``oldSelf`` for transition rules on update.

Known gaps (toolchain brief): no pruning, no CEL cost budget, no Kubernetes CEL extensions.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import celpy
import jsonschema
from celpy import celtypes


@dataclass(frozen=True)
class Violation:
    """One reason the object would be refused."""

    path: str
    message: str
    rule: str | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def build_root_schema(crd: dict[str, Any], version: str | None = None) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of ``version`` (the storage version when not given)."""
    for v in crd["spec"]["versions"]:
        if (version is None and v.get("storage")) or v["name"] == version:
            return dict(v["schema"]["openAPIV3Schema"])
    raise KeyError(version)


# --- 1. defaulting -------------------------------------------------------------------------------


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """A copy of ``value`` with the schema's defaults filled in (the API server's defaulting)."""
    value = copy.deepcopy(value)
    _default(schema, value)
    return value


def _default(schema: dict[str, Any], value: Any) -> None:
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                _default(sub, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in list(value):
                if key not in (schema.get("properties") or {}):
                    _default(extra, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _default(schema["items"], item)


# --- 2. OpenAPI validation -----------------------------------------------------------------------


def build_jsonschema(node: dict[str, Any]) -> dict[str, Any]:
    """Translate a structural schema into Draft 4 JSON Schema, strict about unknown fields."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key == "properties":
            out[key] = {name: build_jsonschema(sub) for name, sub in value.items()}
        elif key == "items" or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = build_jsonschema(value)
        elif key == "anyOf":
            out[key] = [build_jsonschema(sub) for sub in value]
        else:
            out[key] = value
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _list_map_violations(schema: dict[str, Any], value: Any, path: str) -> Iterator[Violation]:
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, sub_value in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                yield from _list_map_violations(sub, sub_value, f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        if schema.get("x-kubernetes-list-type") == "map":
            keys = schema.get("x-kubernetes-list-map-keys") or []
            seen: set[tuple[Any, ...]] = set()
            for i, item in enumerate(value):
                ident = tuple(item.get(k) for k in keys) if isinstance(item, dict) else (item,)
                if ident in seen:
                    yield Violation(
                        f"{path}[{i}]".lstrip("."),
                        f"Duplicate value: {dict(zip(keys, ident, strict=True))}",
                    )
                seen.add(ident)
        for i, item in enumerate(value):
            yield from _list_map_violations(schema["items"], item, f"{path}[{i}]")


def _schema_violations(schema: dict[str, Any], value: Any) -> list[Violation]:
    validator = jsonschema.Draft4Validator(build_jsonschema(schema))
    found = [
        Violation(".".join(str(p) for p in error.absolute_path) or "<root>", error.message)
        for error in validator.iter_errors(value)
    ]
    found.extend(_list_map_violations(schema, value, ""))
    return found


# --- 3. CEL --------------------------------------------------------------------------------------


def build_cel_value(schema: dict[str, Any], value: Any) -> Any:
    """``value`` as a CEL value typed by ``schema`` (as the API server types ``self``)."""
    if value is None:
        return None
    if schema.get("x-kubernetes-int-or-string"):
        return celtypes.IntType(value) if isinstance(value, int) else celtypes.StringType(value)
    if schema.get("x-kubernetes-preserve-unknown-fields") and not schema.get("properties"):
        return celpy.json_to_cel(value)
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        if not props and not isinstance(extra, dict):
            # metadata: CEL sees only name and generateName.
            visible = {k: v for k, v in value.items() if k in ("name", "generateName")}
            return celpy.json_to_cel(visible)
        result = {}
        for key, sub_value in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                result[celtypes.StringType(key)] = build_cel_value(sub, sub_value)
        return celtypes.MapType(result)
    if kind == "array":
        return celtypes.ListType([build_cel_value(schema["items"], v) for v in value])
    if kind == "number":
        return celtypes.DoubleType(float(value))
    if kind == "integer":
        return celtypes.IntType(value)
    if kind == "boolean":
        return celtypes.BoolType(value)
    if kind == "string":
        return celtypes.StringType(value)
    raise TypeError(f"no CEL type for schema {schema!r}")


_ENV = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}


def evaluate_rule(rule: str, self_value: Any, old_value: Any = None) -> bool:
    """Evaluate one CEL rule; raises on compile or evaluation errors (a broken rule)."""
    program = _PROGRAMS.get(rule)
    if program is None:
        program = _ENV.program(_ENV.compile(rule))
        _PROGRAMS[rule] = program
    activation = {"self": self_value}
    if old_value is not None:
        activation["oldSelf"] = old_value
    result = program.evaluate(activation)
    if isinstance(result, Exception):
        raise RuntimeError(f"CEL rule {rule!r} failed: {result}")
    return bool(result)


def iter_rules(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every ``x-kubernetes-validations`` entry with the schema path where it sits."""
    for entry in schema.get("x-kubernetes-validations") or ():
        yield path, entry
    for name, sub in (schema.get("properties") or {}).items():
        yield from iter_rules(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from iter_rules(schema["items"], f"{path}[*]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from iter_rules(schema["additionalProperties"], f"{path}[*]")


def _cel_violations(schema: dict[str, Any], value: Any, old: Any, path: str) -> Iterator[Violation]:
    if value is None:
        return
    rules = schema.get("x-kubernetes-validations") or ()
    if rules:
        self_value = build_cel_value(schema, value)
        old_value = build_cel_value(schema, old) if old is not None else None
        for entry in rules:
            is_transition = "oldSelf" in entry["rule"]
            if is_transition and old_value is None:
                continue  # transition rules only run on update
            if not evaluate_rule(entry["rule"], self_value, old_value):
                where = path + entry.get("fieldPath", "")
                yield Violation(
                    where or "<root>", entry.get("message", entry["rule"]), entry["rule"]
                )
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, sub_value in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                sub_old = old.get(key) if isinstance(old, dict) else None
                yield from _cel_violations(sub, sub_value, sub_old, f"{path}.{key}".lstrip("."))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            # Kubernetes correlates list items for oldSelf only in map lists; we do not need it.
            yield from _cel_violations(schema["items"], item, None, f"{path}[{i}]")


def validate(
    crd: dict[str, Any], obj: dict[str, Any], *, old: dict[str, Any] | None = None
) -> list[Violation]:
    """Every reason the API server would refuse ``obj`` (empty: accepted)."""
    schema = build_root_schema(crd)
    defaulted = apply_defaults(schema, obj)
    found = _schema_violations(schema, defaulted)
    if found:
        return found  # CEL on a value of the wrong shape would only add noise
    old_defaulted = apply_defaults(schema, old) if old is not None else None
    return list(_cel_violations(schema, defaulted, old_defaulted, ""))


# --- shared by the API/CRD/manifest tests --------------------------------------------------------

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]
SAMPLES_DIR = REPO / "deploy" / "samples"
CRD_FILE = REPO / "deploy" / "crds" / "workerpools.workerfleet.io.yaml"
SAMPLE_NAMES = (
    "minimal",
    "full",
    "keda",
    "rabbitmq",
    "rabbitmq-keda",
    "subscription",
    "sqs",
)
KUBERNETES_VERSIONS = ("1.30.0", "1.31.0", "1.32.0", "1.33.0", "1.34.0", "1.35.0")


def load_sample(name: str) -> dict[str, Any]:
    """A sample WorkerPool from deploy/samples/ (a fresh copy each call)."""
    import yaml

    with open(SAMPLES_DIR / f"{name}.yaml") as handle:
        loaded = yaml.safe_load(handle)
    assert isinstance(loaded, dict)
    return loaded
