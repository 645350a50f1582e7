"""The rendered RBAC grants exactly what the operator needs (operator/workerfleet_operator/rbac.py).

Every install mode is rendered with the real helm; the (apiGroup, resource, verb) triples of its
rules must equal REQUIRED_PERMISSIONS for that mode: nothing missing, nothing beyond. The list is
then checked against the operator's own code (the kinds it reads and writes, the resources kopf
watches), so code, list and chart cannot drift apart.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import pytest
from packaging_support import CHART, NAMESPACE, ROOT, Manifest, Render, of_kind, run
from workerfleet_operator import rbac

pytestmark = pytest.mark.chart

ROLE_KINDS = ("ClusterRole", "Role")
FORBIDDEN_VERBS = {"*", "escalate", "bind", "impersonate"}
FORBIDDEN_RESOURCES = {
    "*",
    "pods/exec",
    "pods/attach",
    "pods/portforward",
    "nodes/proxy",
    "serviceaccounts/token",
}

MODES = {
    "default": (("default",), False, False),
    "cluster-wide": (("cluster-wide",), True, False),
    "namespaced": (("namespaced",), False, False),
    "cluster-wide-peering": (
        ("cluster-wide", "--set", "operator.peering.enabled=true"),
        True,
        True,
    ),
    "namespaced-peering": (
        ("namespaced", "--set", "operator.peering.enabled=true"),
        False,
        True,
    ),
}


CONSOLE_NEEDS = {
    ("workerfleet.io", "workerpools", "get"),
    ("workerfleet.io", "workerpools", "list"),
    ("", "secrets", "get"),
}
CONSOLE_MODES = {
    "cluster-wide": ("cluster-wide", "--set", "console.enabled=true", "--set",
                     "console.auth.existingSecret=t"),
    "namespaced": ("console",),
}  # fmt: skip
# Every render whose roles must be free of wildcards and escalation: each operator mode, and
# the console enabled in each scope.
ALL_RENDERS = {
    **{mode: args for mode, (args, _, _) in MODES.items()},
    **{f"console-{mode}": args for mode, args in CONSOLE_MODES.items()},
}


AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"


def is_user_role(role: Manifest) -> bool:
    """The view/edit ClusterRoles for people (aggregated into the built-in roles)."""
    return any(k.startswith(AGGREGATE) for k in role["metadata"].get("labels", {}))


def is_lease_role(role: Manifest) -> bool:
    """The (Role or RoleBinding) for the leader-election Lease (test_chart_leader_election.py)."""
    return bool(role["metadata"]["name"].endswith("-leader-election"))


def granted(manifests: list[Manifest], name: str | None = None) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every workload's (Cluster)Role, or of those called ``name``.

    The aggregated user roles are left out: they are bound to people, not to a workload.
    """
    out: set[tuple[str, str, str]] = set()
    for role in (m for m in manifests if m["kind"] in ROLE_KINDS and not is_user_role(m)):
        if name is not None and role["metadata"]["name"] != name:
            continue
        for rule in role["rules"]:
            assert "nonResourceURLs" not in rule and "resourceNames" not in rule
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        out.add((group, resource, verb))
    return out


@pytest.mark.parametrize("mode", MODES)
def test_the_rendered_rules_grant_exactly_the_permissions_the_operator_needs(
    render: Render, mode: str
) -> None:
    args, cluster_wide, peering = MODES[mode]
    manifests = render(*args)
    # Leader election is on by default (two replicas): its Lease Role comes with every mode.
    needed = rbac.build_permission_set(
        cluster_wide=cluster_wide, peering=peering, leader_election=True
    )
    have = granted(manifests)
    assert sorted(needed - have) == [], "missing"
    assert sorted(have - needed) == [], "beyond what the operator needs"


@pytest.mark.parametrize("mode", ALL_RENDERS)
def test_no_wildcards_no_escalation_and_secrets_only_get(render: Render, mode: str) -> None:
    have = granted(render(*ALL_RENDERS[mode]))
    assert have  # the rules rendered at all
    assert {v for _, _, v in have} & FORBIDDEN_VERBS == set()
    assert {r for _, r, _ in have} & FORBIDDEN_RESOURCES == set()
    assert "*" not in {g for g, _, _ in have}
    assert {v for _, r, v in have if r == "secrets"} == {"get"}


@pytest.mark.parametrize(
    ("values_set", "namespaces"), [("namespaced", ["team-a", "team-b"]), ("default", [NAMESPACE])]
)
def test_a_namespaced_install_renders_roles_only_in_the_watched_namespaces(
    render: Render, values_set: str, namespaces: list[str]
) -> None:
    # The default install is namespaced: the release namespace alone.
    manifests = render(values_set)
    assert of_kind(manifests, "ClusterRoleBinding") == []
    assert all(is_user_role(r) for r in of_kind(manifests, "ClusterRole"))
    # (the leader-election Role for the Lease lives in the release namespace, in every mode)
    roles = [r for r in of_kind(manifests, "Role") if not is_lease_role(r)]
    bindings = [b for b in of_kind(manifests, "RoleBinding") if not is_lease_role(b)]
    assert sorted(r["metadata"]["namespace"] for r in roles) == namespaces
    assert sorted(b["metadata"]["namespace"] for b in bindings) == namespaces
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "workerfleet-operator", "namespace": NAMESPACE}
        ]
    # Cluster-scoped: the CRD, the user roles and the admission policy; nothing for the operator.
    cluster_scoped = {m["kind"] for m in manifests if "namespace" not in m["metadata"]}
    assert cluster_scoped == {
        "CustomResourceDefinition",
        "ClusterRole",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    (deployment,) = of_kind(manifests, "Deployment")
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["WORKERFLEET_OPERATOR_NAMESPACES"] == ",".join(namespaces)


def test_cluster_wide_is_an_explicit_choice_that_excludes_a_namespace_list(helm: str) -> None:
    done = run(
        [helm, "template", "wf", str(CHART), "--set", "clusterWide=true",
         "--set", "watchNamespaces={team-a}"]
    )  # fmt: skip
    assert done.returncode != 0
    assert "clusterWide: true watches every namespace" in done.stderr


@pytest.mark.parametrize("values_set", ["default", "cluster-wide"])
def test_people_get_view_and_edit_roles_aggregated_into_the_builtin_ones(
    render: Render, values_set: str
) -> None:
    roles = {r["metadata"]["name"]: r for r in of_kind(render(values_set), "ClusterRole")}
    view, edit = roles["workerfleet-view"], roles["workerfleet-edit"]
    assert {k for k, v in view["metadata"]["labels"].items() if k.startswith(AGGREGATE)} == {
        AGGREGATE + "view",
        AGGREGATE + "edit",
        AGGREGATE + "admin",
    }
    assert {k for k, v in edit["metadata"]["labels"].items() if k.startswith(AGGREGATE)} == {
        AGGREGATE + "edit",
        AGGREGATE + "admin",
    }
    assert granted([{**view, "metadata": {"name": "v"}}]) == {
        ("workerfleet.io", r, v)
        for r in ("workerpools", "workerpools/status")
        for v in ("get", "list", "watch")
    }
    edit_grants = granted([{**edit, "metadata": {"name": "e"}}])
    assert {r for _, r, _ in edit_grants} == {"workerpools"}  # never status: the operator's
    assert {v for _, _, v in edit_grants} == {"create", "update", "patch", "delete",
                                              "deletecollection"}  # fmt: skip
    # Nothing binds them: they reach people only through the built-in roles' bindings.
    names = {"workerfleet-view", "workerfleet-edit"}
    for binding in [m for m in render(values_set) if m["kind"].endswith("RoleBinding")]:
        assert binding["roleRef"]["name"] not in names


def test_a_cluster_wide_install_binds_the_cluster_role_to_the_operator_only(render: Render) -> None:
    manifests = render("cluster-wide")
    assert [r for r in of_kind(manifests, "Role") if not is_lease_role(r)] == []
    (binding,) = of_kind(manifests, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "workerfleet-operator", "namespace": NAMESPACE}
    ]


# ------------------------------------------------------------------------------ the console


@pytest.mark.parametrize("mode", CONSOLE_MODES)
def test_the_console_may_only_list_pools_and_get_secrets(render: Render, mode: str) -> None:
    manifests = render(*CONSOLE_MODES[mode])
    assert granted(manifests, "workerfleet-console") == CONSOLE_NEEDS
    # Enabling the console changes nothing the operator is granted.
    needed = rbac.build_permission_set(cluster_wide=mode == "cluster-wide", peering=False)
    assert granted(manifests, "workerfleet-operator") == needed


@pytest.mark.parametrize("mode", CONSOLE_MODES)
def test_the_console_role_is_bound_to_the_console_account_only_in_the_operator_scope(
    render: Render, mode: str
) -> None:
    manifests = render(*CONSOLE_MODES[mode])
    cluster_wide = mode == "cluster-wide"
    roles = [m for m in manifests if m["kind"] in ROLE_KINDS and "console" in m["metadata"]["name"]]
    bindings = [
        m
        for m in manifests
        if m["kind"] in ("ClusterRoleBinding", "RoleBinding") and "console" in m["metadata"]["name"]
    ]
    assert {r["kind"] for r in roles} == {"ClusterRole" if cluster_wide else "Role"}
    if not cluster_wide:
        assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
        assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert bindings
    for binding in bindings:
        assert binding["roleRef"]["name"] == "workerfleet-console"
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "workerfleet-console", "namespace": NAMESPACE}
        ]


def test_no_console_rbac_without_the_console(render: Render) -> None:
    for values_set in ("default", "namespaced"):
        names = {m["metadata"]["name"] for m in render(values_set)}
        assert "workerfleet-console" not in names


def test_every_rule_in_the_template_is_commented_with_what_needs_it() -> None:
    lines = (CHART / "templates" / "rbac.yaml").read_text().splitlines()
    rule_lines = [i for i, line in enumerate(lines) if line.strip().startswith("- apiGroups:")]
    assert len(rule_lines) >= len(rbac.REQUIRED_PERMISSIONS) - 1  # keda kinds may share a rule
    console = (CHART / "templates" / "console-rbac.yaml").read_text().splitlines()
    console_rules = [i for i, line in enumerate(console) if line.strip().startswith("- apiGroups:")]
    assert len(console_rules) == 2
    for i in console_rules:
        assert console[i - 1].strip().startswith("#"), f"console rule at line {i + 1}"
    for i in rule_lines:
        above = lines[i - 1].strip()
        assert above.startswith("#") or above.startswith("{{- if"), (
            f"rule at line {i + 1} has no comment"
        )


def test_every_permission_says_what_needs_it() -> None:
    for permission in rbac.REQUIRED_PERMISSIONS:
        assert len(permission.reason) > 20, permission


# ------------------------------------------------------------------ against the operator's code

SHELL = ROOT / "operator" / "workerfleet_operator" / "shell"
KOPF_INTERNAL = {("kopf.dev", "clusterkopfpeerings"), ("kopf.dev", "kopfpeerings")}


def _operator_kinds() -> dict[str, tuple[str, str]]:
    """kind -> (apiGroup, plural) of every kind the operator reads or writes (shell/kube.py)."""
    from workerfleet_operator.shell import kube

    return {
        kind: (api_version.rpartition("/")[0], plural)
        for kind, (api_version, plural) in kube.KINDS.items()
    }


def _kopf_watched() -> set[tuple[str, str]]:
    """(apiGroup, plural) of every resource a kopf handler in shell/ watches."""
    watched: set[tuple[str, str]] = set()
    for path in SHELL.glob("*.py"):
        tree = ast.parse(path.read_text())
        constants = {
            t.id: n.value.value
            for n in ast.walk(tree)
            if isinstance(n, ast.Assign)
            and isinstance(n.value, ast.Constant)
            and isinstance(n.value.value, str)
            for t in n.targets
            if isinstance(t, ast.Name)
        }
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and _is_kopf_on(node.func) and len(node.args) == 3):
                continue
            values = [_literal(a, constants) for a in node.args]
            if all(isinstance(v, str) for v in values):
                group = "" if values[0] in ("v1", "") else str(values[0])
                watched.add((group, str(values[2])))
    return watched


def _is_kopf_on(func: ast.expr) -> bool:
    return (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Attribute)
        and func.value.attr == "on"
        and isinstance(func.value.value, ast.Name)
        and func.value.value.id == "kopf"
        and func.attr in {"event", "create", "update", "delete", "resume", "field"}
    )


def _literal(node: ast.expr, constants: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "api"
    ):
        # The API's vocabulary is defined once (workerfleet_operator.api) and named from there.
        from workerfleet_operator import api

        return getattr(api, node.attr, None)
    return None


def _built_kinds() -> set[tuple[str, str]]:
    """(apiGroup, plural) of every child object the pure core builds (manifests.py dict literals).

    Children are written by server-side apply and deleted when no longer wanted (plan.obsolete).
    """
    tree = ast.parse((SHELL.parent / "manifests.py").read_text())
    built: set[tuple[str, str]] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Dict):
            continue
        fields = {
            k.value: v.value
            for k, v in zip(node.keys, node.values, strict=True)
            if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)
        }
        if isinstance(fields.get("apiVersion"), str) and isinstance(fields.get("kind"), str):
            if "name" in fields:  # a reference (scaleTargetRef, fieldRef), not an object
                continue
            group = str(fields["apiVersion"]).rpartition("/")[0]
            built.add((group, str(fields["kind"]).lower() + "s"))
    return built


def _http_verbs_used() -> set[str]:
    source = (SHELL / "kube.py").read_text()
    return set(re.findall(r'request\(\s*"(GET|POST|PATCH|PUT|DELETE)"', source))


def test_every_kind_the_operator_touches_is_granted() -> None:
    needed = rbac.build_permission_set(cluster_wide=True, peering=False, leader_election=True)
    resources = {(g, r) for g, r, _ in needed}
    missing = sorted(
        kind for kind, group_plural in _operator_kinds().items() if group_plural not in resources
    )
    assert missing == []


def test_every_resource_kopf_watches_can_be_listed_and_watched() -> None:
    needed = rbac.build_permission_set(cluster_wide=True, peering=False)
    watched = _kopf_watched()
    assert ("workerfleet.io", "workerpools") in watched  # the scan found the handlers
    for group, plural in watched:
        assert {(group, plural, "list"), (group, plural, "watch")} <= needed, (group, plural)


def test_the_kinds_the_operator_writes_allow_server_side_apply_and_status() -> None:
    needed = rbac.build_permission_set(cluster_wide=True, peering=False)
    assert "PATCH" in _http_verbs_used()  # server-side apply, status and pod annotations
    assert ("workerfleet.io", "workerpools/status", "patch") in needed
    assert ("", "pods", "patch") in needed
    assert ("", "events", "create") in needed  # apply_event POSTs core/v1 Events
    assert ("", "secrets", "get") in needed  # fetch_secret_value


def test_every_child_the_operator_builds_can_be_applied_read_and_removed() -> None:
    needed = rbac.build_permission_set(cluster_wide=True, peering=False)
    built = _built_kinds()
    assert ("apps", "deployments") in built  # the scan found the builders
    for group, plural in built:
        # get: reconcile.py reads each child by name before and after applying it
        for verb in ("get", "create", "patch", "delete"):
            assert (group, plural, verb) in needed, (group, plural, verb)


def _listed_by_the_operator() -> set[tuple[str, str]]:
    """(apiGroup, plural) of every kind the operator's own code lists (kube.fetch_objects).

    Each call names its kind as build_ref("<Kind>", ...), except fetch_replicas_controllers,
    which loops over kube.REPLICAS_CONTROLLER_KINDS; a call the scan cannot resolve fails."""
    from workerfleet_operator.shell import kube

    kinds = _operator_kinds()
    listed = {kinds[k] for k in kube.REPLICAS_CONTROLLER_KINDS}
    for path in SHELL.glob("*.py"):
        text = path.read_text()
        calls = re.findall(r"fetch_objects\(\s*client,\s*(?:kube\.)?build_ref\((\w+|\"\w+\")", text)
        assert len(calls) == len(re.findall(r"(?<!def )fetch_objects\(", text)), path
        for kind in calls:
            if kind == "kind" and path.name == "kube.py":
                continue  # the REPLICAS_CONTROLLER_KINDS loop
            listed.add(kinds[kind.strip('"')])
    return listed


def test_list_and_watch_are_granted_only_where_the_operator_or_kopf_lists_and_watches() -> None:
    # kopf watches (list + watch) WorkerPools and Deployments, and its peering objects when on;
    # the operator itself lists pods (deletion costs), HPAs and ScaledObjects (who owns the
    # replicas) and WorkerPools (the console and `workerfleet pools`). Children it applies are
    # read by name (get), never listed or watched.
    watched = _kopf_watched() | KOPF_INTERNAL
    listed = _listed_by_the_operator() | watched
    assert ("", "pods") in listed and ("autoscaling", "horizontalpodautoscalers") in listed
    needed = rbac.build_permission_set(cluster_wide=True, peering=True, leader_election=True)
    assert sorted((g, r) for g, r, v in needed if v == "watch" and (g, r) not in watched) == []
    assert sorted((g, r) for g, r, v in needed if v == "list" and (g, r) not in listed) == []


def test_no_verb_is_granted_that_no_request_of_the_operator_or_kopf_makes() -> None:
    # HTTP method -> RBAC verbs it is authorized as (server-side apply PATCH may create).
    verbs_of = {
        "GET": {"get", "list", "watch"},
        "POST": {"create"},
        "PATCH": {"patch", "create"},
        "PUT": {"update"},
        "DELETE": {"delete"},
    }
    # kopf itself only GETs, watches, POSTs Events and PATCHes (kopf._cogs.clients.api).
    methods = _http_verbs_used() | {"GET", "POST", "PATCH"}
    possible = set().union(*(verbs_of[m] for m in methods))
    granted_verbs = {v for p in rbac.REQUIRED_PERMISSIONS for v in p.verbs}
    assert sorted(granted_verbs - possible) == []


def test_nothing_is_granted_that_the_operator_never_touches() -> None:
    touched = set(_operator_kinds().values()) | _kopf_watched() | _built_kinds() | KOPF_INTERNAL
    for permission in rbac.REQUIRED_PERMISSIONS:
        base = permission.resource.partition("/")[0]
        assert (permission.api_group, base) in touched, permission


def _comment_above(lines: list[str], resource: str) -> str:
    """The comment block right above the rule of ``resource`` in a rendered or template RBAC."""
    (at,) = [i for i, line in enumerate(lines) if line.strip() == f'resources: ["{resource}"]']
    above: list[str] = []
    for line in reversed(lines[: at - 1]):  # above the rule's `- apiGroups:` line
        if not line.strip().startswith("#"):
            break
        above.insert(0, line.strip().removeprefix("#").strip())
    return " ".join(above)


def test_the_pods_rule_says_the_scale_in_marks_are_taken_off_when_a_pool_leaves_builtin_mode() -> (
    None
):
    # The operator patches pods for two things: the pod-deletion-cost marks of a builtin
    # scale-in, and their removal when the pool leaves builtin mode. Whoever audits the rule (in
    # rbac.py, the chart, the chart's README, deploy/install.yaml) reads why it may patch pods.
    (pods,) = [p for p in rbac.REQUIRED_PERMISSIONS if p.resource == "pods"]
    template = (CHART / "templates" / "rbac.yaml").read_text().splitlines()
    install = (ROOT / "deploy" / "install.yaml").read_text().splitlines()
    (readme_row,) = [
        line
        for line in (CHART / "README.md").read_text().splitlines()
        if line.startswith('| "" | pods |')
    ]
    for said in (pods.reason, _comment_above(template, "pods"), _comment_above(install, "pods")):
        assert "pod-deletion-cost" in said, said
        assert "leaves builtin mode" in said, said
    assert "leaves builtin mode" in readme_row
