"""Every pod the chart renders meets the restricted Pod Security Standard, whatever values pass.

The values' doc says the security contexts "meet the restricted Pod Security Standard" and the
release namespace of deploy/install.yaml enforces it, so the schema must refuse any values that
would render a pod the API server then refuses there. Helm removes a key set to null before it
checks the schema, so `--set <key>=null` on each key of the security contexts is the way to
leave one out.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from packaging_support import CHART, Manifest, Render, of_kind, run

pytestmark = pytest.mark.chart

CONSOLE_ON = ("--set", "console.enabled=true", "--set", "console.auth.existingSecret=t")

# Every key of the pod and container security contexts of both pods (the defaults).
SECURITY_KEYS = [
    f"{pod}.{context}.{key}"
    for pod in ("operator", "console")
    for context, keys in (
        ("podSecurityContext", ("runAsNonRoot", "seccompProfile", "seccompProfile.type")),
        (
            "securityContext",
            (
                "allowPrivilegeEscalation",
                "runAsNonRoot",
                "capabilities",
                "capabilities.drop",
                "seccompProfile",
                "seccompProfile.type",
            ),
        ),
    )
    for key in keys
]


def _restricted_violations(pod_spec: dict[str, Any]) -> list[str]:
    """What a pod breaks of the restricted profile (the checks the chart's pods can fail)."""
    pod_sc = pod_spec.get("securityContext") or {}
    out = []
    for c in pod_spec["containers"]:
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if "ALL" not in (sc.get("capabilities") or {}).get("drop", []):
            out.append(f"{name}: capabilities.drop lacks ALL")
        if set((sc.get("capabilities") or {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: capabilities added")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            out.append(f"{name}: runAsNonRoot is not true")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile.type is {seccomp!r}")
    return out


def _pod_specs(manifests: list[Manifest]) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]
        for d in of_kind(manifests, "Deployment")
    }


def test_the_default_operator_and_console_pods_are_restricted(render: Render) -> None:
    pods = _pod_specs(render("default", *CONSOLE_ON))
    assert len(pods) == 2
    for name, spec in pods.items():
        assert _restricted_violations(spec) == [], name


@pytest.mark.parametrize("key", SECURITY_KEYS)
def test_leaving_out_a_security_setting_is_refused_or_still_renders_a_restricted_pod(
    helm: str, key: str
) -> None:
    # Given the chart with one key of a security context removed (helm drops null keys before
    # the schema check, as it does for a user's `key: null`)
    done = run([helm, "template", "workerfleet", str(CHART), *CONSOLE_ON, "--set", f"{key}=null"])
    # Then the schema refuses it, or every pod rendered still meets the restricted profile
    if done.returncode != 0:
        assert "values don't meet the specifications of the schema" in done.stderr, done.stderr
        return
    manifests = [m for m in yaml.safe_load_all(done.stdout) if m]
    for name, spec in _pod_specs(manifests).items():
        assert _restricted_violations(spec) == [], (key, name)
