"""The Kubernetes permissions the workerfleet operator needs: the ONE list.

Who reads it:
- the chart's RBAC templates (``charts/workerfleet/templates/rbac.yaml``) render exactly these
  rules, each commented by the reason given here; ``tests/packaging/test_chart_rbac.py`` renders the
  chart for a cluster-wide, a namespaced and a peering install and proves that the rendered
  rules grant every permission listed here and nothing beyond (no wildcards, secrets only
  ``get``, no exec/escalate/bind/impersonate);
- the operator's Kubernetes I/O (``workerfleet_operator.shell``) should import it and assert
  (in its own tests) that every API call it makes is covered, so code and chart cannot drift.

When the operator starts calling a new verb or resource, add it HERE first, then to the chart
(the packaging test fails until both agree).

Modes (see ``build_permission_set``); with leader election
(``WORKERFLEET_OPERATOR_LEADER_ELECTION``) every mode adds get/create/update on one Lease in the
operator's own namespace (``shell.leader``):
- cluster-wide (``WORKERFLEET_OPERATOR_NAMESPACES`` empty): one ClusterRole.
- namespaced (``WORKERFLEET_OPERATOR_NAMESPACES=a,b``): a Role per namespace and NOTHING
  cluster-scoped.
- peering (``WORKERFLEET_OPERATOR_PEERING`` set, only with more than one replica): kopf's
  ClusterKopfPeering (cluster-wide) or KopfPeering (namespaced) objects. kopf peering is not
  leader election; it only pauses standby operators, which is why one replica is the default.

In every mode the operator runs kopf with ``settings.scanning.disabled = True`` and exact namespace
names (``shell.handlers``): kopf then neither watches CRDs nor lists namespaces (see
``kopf._core.reactor.observation``), so no mode needs ``customresourcedefinitions`` or
``namespaces``. Children are written by server-side apply: creating an object that way is
authorized as both ``patch`` and ``create``; they are read by name (``get``), and only kopf's
watches (WorkerPools, Deployments) and the operator's own lists (pods, HPAs, ScaledObjects)
need ``list``/``watch``. Only the Lease is written by PUT (``update``); nothing
else is, and Events are only POSTed (``create``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Scope = Literal["namespaced", "cluster"]
Condition = Literal["always", "peering-cluster-wide", "peering-namespaced", "leader-election"]


@dataclass(frozen=True)
class Permission:
    """One RBAC rule the operator needs: verbs on one resource of one API group."""

    api_group: str  # "" is the core group
    resource: str  # plural name, "name/subresource" for subresources
    verbs: tuple[str, ...]
    reason: str  # what in the operator needs it; rendered as the rule's comment in the chart
    scope: Scope = "namespaced"  # "cluster": a cluster-scoped resource (always a ClusterRole)
    condition: Condition = "always"


REQUIRED_PERMISSIONS: tuple[Permission, ...] = (
    Permission(
        "workerfleet.io",
        "workerpools",
        ("get", "list", "watch", "patch"),
        "kopf watches WorkerPools; patch is for kopf's finalizer and handler-state annotations"
        " (today's handlers only watch: drop it if no change handler or finalizer ever comes)",
    ),
    Permission(
        "workerfleet.io",
        "workerpools/status",
        ("get", "patch"),
        "the operator writes status: replicas, queue stats, autoscaling signals, conditions",
    ),
    Permission(
        "apps",
        "deployments",
        ("get", "list", "watch", "create", "patch", "delete"),
        "each WorkerPool owns a worker Deployment; drift is restored, replicas are set by the"
        " builtin autoscaler, and the Deployment is removed when the pool is deleted",
    ),
    Permission(
        "",
        "services",
        ("get", "create", "patch", "delete"),
        "each WorkerPool owns a headless metrics Service for its workers",
    ),
    Permission(
        "policy",
        "poddisruptionbudgets",
        ("get", "create", "patch", "delete"),
        "each WorkerPool with more than one replica owns a PodDisruptionBudget",
    ),
    Permission(
        "",
        "serviceaccounts",
        ("get", "create", "patch", "delete"),
        "each SQS WorkerPool owns the ServiceAccount its workers run under (no API token; the"
        " identity IRSA or EKS Pod Identity gives an IAM role), never one it did not create",
    ),
    Permission(
        "",
        "pods",
        ("list", "patch"),
        "the builtin autoscaler marks idle worker pods cheapest to delete before a scale-in"
        " (controller.kubernetes.io/pod-deletion-cost annotation), and takes those marks off"
        " the pool's pods when it leaves builtin mode (KEDA, an HPA or a fixed count)",
    ),
    Permission(
        "",
        "secrets",
        ("get",),
        "the operator reads the broker URL from spec.queue.<broker>.urlSecretRef"
        " to fetch queue stats",
    ),
    Permission(
        "",
        "events",
        ("create",),
        "an Event per scaling decision and per handler outcome (kopf posts events too)",
    ),
    Permission(
        "autoscaling",
        "horizontalpodautoscalers",
        ("list",),
        "before each replicas write the builtin autoscaler looks for a live HPA targeting the"
        " pool's Deployment, and holds (ReplicasOwnedElsewhere) while one exists",
    ),
    Permission(
        "monitoring.coreos.com",
        "podmonitors",
        ("get", "create", "patch", "delete"),
        "spec.metrics.podMonitor: true makes the operator own a PodMonitor for the workers",
    ),
    Permission(
        "keda.sh",
        "scaledobjects",
        ("get", "list", "create", "patch", "delete"),
        "autoscaling.mode: keda makes the operator own a KEDA ScaledObject instead of scaling;"
        " the builtin autoscaler lists them and holds while one targets the pool's Deployment",
    ),
    Permission(
        "keda.sh",
        "triggerauthentications",
        ("get", "create", "patch", "delete"),
        "the KEDA ScaledObject reads the Redis URL's Secret through a TriggerAuthentication",
    ),
    Permission(
        "kopf.dev",
        "clusterkopfpeerings",
        ("get", "list", "watch", "patch"),
        "kopf peering between operator replicas (cluster-wide install)",
        scope="cluster",
        condition="peering-cluster-wide",
    ),
    Permission(
        "kopf.dev",
        "kopfpeerings",
        ("get", "list", "watch", "patch"),
        "kopf peering between operator replicas (namespaced install)",
        condition="peering-namespaced",
    ),
    Permission(
        "coordination.k8s.io",
        "leases",
        ("get", "create", "update"),
        "leader election between operator replicas: one Lease in the operator's own namespace"
        " (a Role there, whatever the install mode), renewed by PUT on its resourceVersion",
        condition="leader-election",
    ),
)


def build_permission_set(
    *, cluster_wide: bool, peering: bool, leader_election: bool = False
) -> frozenset[tuple[str, str, str]]:
    """Return the (apiGroup, resource, verb) triples an install mode needs.

    Pure; the packaging tests compare it with the rendered chart. ``leader_election``: the
    Lease rule (rendered as a Role in the operator's namespace, not per watched namespace).
    """
    wanted: set[Condition] = {"always"}
    if peering:
        wanted.add("peering-cluster-wide" if cluster_wide else "peering-namespaced")
    if leader_election:
        wanted.add("leader-election")
    return frozenset(
        (p.api_group, p.resource, verb)
        for p in REQUIRED_PERMISSIONS
        if p.condition in wanted
        for verb in p.verbs
    )
