"""Chart <-> code: every environment variable the chart sets is one the process reads, and every
setting the values document reaches the process.

The names the operator reads are taken from its code, not from a list kept here: the fields of
``shell.config.OperatorConfig`` under its ``env_prefix``, plus every ``WORKERFLEET_*`` literal the
operator package reads through ``os.environ``/``getenv``. The reverse direction changes each
scalar value under ``operator.*`` (one at a time, to another value the schema accepts) and looks at
what moved in the rendered operator container: a value that only moves an environment variable
nobody reads, or moves nothing at all, is a setting that does nothing.
"""

from __future__ import annotations

import ast
import functools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging_support import CHART, ROOT, VALUES_SETS, Manifest, Render, of_kind, run
from workerfleet_operator.shell import config

pytestmark = pytest.mark.chart

OPERATOR_PACKAGE = ROOT / "operator" / "workerfleet_operator"
# Read by the Kubernetes client libraries, not by workerfleet code; the chart sets none of them.
KUBERNETES_OWN = {"KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KUBECONFIG"}


def read_settings_names() -> set[str]:
    """WORKERFLEET_OPERATOR_* names pydantic-settings reads for OperatorConfig."""
    prefix = str(config.OperatorConfig.model_config.get("env_prefix", ""))
    assert prefix == "WORKERFLEET_OPERATOR_"
    return {prefix + name.upper() for name in config.OperatorConfig.model_fields}


def _environ_literals(tree: ast.AST) -> Iterator[str]:
    """String literals used as a key of os.environ / environ mappings / getenv in one module."""
    for node in ast.walk(tree):
        key: ast.expr | None = None
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = ast.unparse(func.value) if isinstance(func, ast.Attribute) else ""
            if name == "getenv" or (name in {"get", "pop"} and "environ" in owner):
                key = node.args[0]
        elif isinstance(node, ast.Subscript) and "environ" in ast.unparse(node.value):
            key = node.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            yield key.value


def read_code_names() -> set[str]:
    """Every environment variable the operator package reads (settings + literal look-ups)."""
    names = read_settings_names()
    for path in OPERATOR_PACKAGE.rglob("*.py"):
        names |= set(_environ_literals(ast.parse(path.read_text(), str(path))))
    return names


def container_env(manifests: list[Manifest], component: str) -> dict[str, Any]:
    """name -> value (or valueFrom) of the env of the `component` Deployment's first container."""
    (deployment,) = [
        d
        for d in of_kind(manifests, "Deployment")
        if d["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_the_code_scan_finds_the_names_the_operator_is_known_to_read() -> None:
    # The scanner itself: it must see the settings and a literal look-up, or the tests below
    # would pass by finding nothing.
    names = read_code_names()
    assert {"WORKERFLEET_OPERATOR_NAMESPACES", "WORKERFLEET_OPERATOR_LOG_LEVEL"} <= names
    assert "WORKERFLEET_REDIS_URL" in names  # console/cli.py reads it with os.environ.get
    assert "WORKERFLEET_LOG_LEVEL" not in names


# Each values set with each process it runs (the console only where console.enabled).
PROCESSES = [(values_set, "operator") for values_set in VALUES_SETS] + [
    ("console", "console"),
    ("monitoring", "console"),
]


@pytest.mark.parametrize(("values_set", "component"), PROCESSES)
def test_every_env_var_the_chart_sets_is_one_the_code_reads(
    render: Render, values_set: str, component: str
) -> None:
    manifests = render(values_set)
    unread = sorted(set(container_env(manifests, component)) - read_code_names() - KUBERNETES_OWN)
    assert unread == [], f"the chart sets environment variables nothing reads: {unread}"


# Kubernetes fields the chart copies into the pod verbatim: not settings of the process.
PASSED_THROUGH = {"resources", "podSecurityContext", "securityContext", "livenessProbe",
                  "readinessProbe"}  # fmt: skip


def _scalar_leaves(
    values: dict[str, Any], schema: dict[str, Any], path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], Any, dict[str, Any]]]:
    for key, value in values.items():
        sub = schema.get("properties", {}).get(key, {})
        if key in PASSED_THROUGH:
            continue
        if isinstance(value, dict):
            yield from _scalar_leaves(value, sub, (*path, key))
        elif isinstance(value, (str, int, bool)):
            yield (*path, key), value, sub


def change_value(value: Any, schema: dict[str, Any]) -> Any:
    """Another value the schema accepts (an enum's other member, a flipped bool, int +/- 1)."""
    if "enum" in schema:
        return next(v for v in schema["enum"] if v != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1 if value + 1 <= schema.get("maximum", value + 1) else value - 1
    return value + "x" if value else "x"


DEFAULTS: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())


def operator_scalar_settings() -> list[tuple[tuple[str, ...], Any, dict[str, Any]]]:
    schema = json.loads((CHART / "values.schema.json").read_text())
    return list(
        _scalar_leaves(DEFAULTS["operator"], schema["properties"]["operator"], ("operator",))
    )


SETTINGS = operator_scalar_settings()


def nest(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {path[-1]: value}
    for key in reversed(path[:-1]):
        out = {key: out}
    return out


@pytest.mark.parametrize(
    ("path", "default", "schema"), SETTINGS, ids=[".".join(p) for p, _, _ in SETTINGS]
)
def test_every_documented_operator_setting_reaches_something_the_operator_reads(
    render: Render, tmp_path: Path, path: tuple[str, ...], default: Any, schema: dict[str, Any]
) -> None:
    # Given a setting that sits under a feature switch (peering.name), that switch turned on
    parent = functools.reduce(lambda d, k: d[k], path[:-1], DEFAULTS)
    switched = "enabled" in parent and path[-1] != "enabled"
    base_values: dict[str, Any] = nest((*path[:-1], "enabled"), True) if switched else {}
    if path == ("operator", "leaderElection", "enabled"):
        base_values = {"operator": {"replicas": 1}}  # one replica may run unelected
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(base_values))
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(nest(path, change_value(default, schema))))
    # When only this value changes
    before = render("default", "-f", str(base))
    after = render("default", "-f", str(base), "-f", str(changed))
    # Then the render moved, and every environment variable that moved is one the code reads
    env_before, env_after = container_env(before, "operator"), container_env(after, "operator")
    moved = {
        n for n in env_before.keys() | env_after.keys() if env_before.get(n) != env_after.get(n)
    }
    assert before != after, f"{'.'.join(path)} changes nothing in the rendered chart"
    assert sorted(moved - read_code_names()) == [], (
        f"{'.'.join(path)} only sets environment variables the operator does not read"
    )


def test_the_log_settings_reach_the_operator_as_the_names_it_reads(
    render: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the environment the chart gives the operator container (and nothing else of ours)
    env = container_env(render("default", "--set", "operator.logLevel=debug"), "operator")
    for name in [n for n in os.environ if n.startswith("WORKERFLEET_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if isinstance(value, str):
            monkeypatch.setenv(name, value)
    # When the operator reads its settings as at start-up
    settings = config.OperatorConfig()
    # Then it logs at the level the values asked for
    assert (settings.log_level, settings.log_format) == ("debug", "json")


@pytest.mark.parametrize(
    "name", ["WORKERFLEET_OPERATOR_NAMESPACES", "WORKERFLEET_OPERATOR_LOG_LEVEL"]
)
def test_extra_env_that_would_shadow_a_setting_the_chart_makes_is_refused_naming_the_value(
    helm: str, render: Render, name: str
) -> None:
    # Given operator.extraEnv naming a variable the chart sets from its own values
    sets = ("--set", f"operator.extraEnv[0].name={name}", "--set", "operator.extraEnv[0].value=x")
    # When rendered, it fails naming the value to set instead (the Deployment had two
    # entries of one name, and which one the operator saw was up to the kubelet)
    done = run([helm, "template", "wf", str(CHART), *sets])
    assert done.returncode != 0
    assert f"operator.extraEnv sets {name}, which the chart sets from" in done.stderr
    # And an extra variable of the operator's own (a proxy, say) is passed on as it is
    proxied = render(
        "default", "--set", "operator.extraEnv[0].name=HTTPS_PROXY",
        "--set", "operator.extraEnv[0].value=http://proxy:3128",
    )  # fmt: skip
    (deployment,) = [
        d for d in of_kind(proxied, "Deployment") if "operator" in d["metadata"]["name"]
    ]
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "HTTPS_PROXY", "value": "http://proxy:3128"} in env
