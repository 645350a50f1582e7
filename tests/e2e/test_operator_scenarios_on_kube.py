"""The operator scenarios of the emulator suite (tests/workerfleet_operator), on a real cluster.

Same promises as test_operator_lifecycle/resilience/autoscaling/secrets, but the API server,
the garbage collector, the ReplicaSet controller and kwok's pods are real, and the operator
runs as the chart's ServiceAccount: rollouts, drift repair, recreation, a missing Secret, an
unreachable Redis, a restart that rewrites nothing, and a password that never leaks.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.e2e import kubecluster
from tests.e2e import workerfleet_support as wf
from tests.support.redis_servers import RedisServer

pytestmark = pytest.mark.e2e

POLL_SECONDS = 1


def apply_pool(cluster: kubecluster.KubeCluster, namespace: str, pool: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pool))


def create_secret(cluster: kubecluster.KubeCluster, namespace: str, name: str, url: str) -> None:
    cluster.kubectl(
        "create", "secret", "generic", name, "-n", namespace, f"--from-literal=url={url}"
    )


def wait_condition(
    cluster: kubecluster.KubeCluster,
    namespace: str,
    pool: str,
    ctype: str,
    status: str,
    *,
    timeout_seconds: float = 60,
) -> dict[str, Any]:
    """Wait (bounded) until the pool's condition ``ctype`` has ``status``; return it."""
    return kubecluster.poll_until(
        f"{pool} {ctype}={status}",
        lambda: wf.fetch_condition(cluster, namespace, pool, ctype),
        lambda c: c.get("status") == status,
        timeout_seconds=timeout_seconds,
    )


def wait_ready(cluster: kubecluster.KubeCluster, namespace: str, pool: str) -> dict[str, Any]:
    return wait_condition(cluster, namespace, pool, "Ready", "True", timeout_seconds=90)


def wait_running_pods(
    cluster: kubecluster.KubeCluster, namespace: str, pool: str, count: int
) -> list[dict[str, Any]]:
    """Wait (bounded) until exactly ``count`` of the pool's pods are Running."""
    pods: list[dict[str, Any]] = kubecluster.poll_until(
        f"{count} Running pod(s) of {pool}",
        lambda: wf.fetch_running_pods(cluster, namespace, pool),
        lambda ps: len(ps) == count,
        timeout_seconds=90,
    )
    return pods


def fetch_image(cluster: kubecluster.KubeCluster, namespace: str, name: str) -> str:
    return cluster.kubectl(
        "get", "deploy", name, "-n", namespace,
        "-o", "jsonpath={.spec.template.spec.containers[0].image}", check=False,
    ).stdout  # fmt: skip


def fetch_snapshot(cluster: kubecluster.KubeCluster, namespace: str) -> dict[str, str]:
    """What a rewrite would change: every Deployment's and pool's generation, spec, labels
    and annotations, and the names of the ReplicaSets and Pods (a rollout replaces them).

    Not resourceVersions: a server-side apply that only moves field ownership (managedFields)
    bumps the resourceVersion without touching the object, and the API emulator has no
    managedFields, so its stricter check does not carry over.
    """
    listing = cluster.fetch_json("deploy,wp,rs,pods", "-n", namespace)
    items: list[dict[str, Any]] = listing["items"]  # type: ignore[assignment]
    snapshot = {}
    for o in items:
        meta = o["metadata"]
        key = f"{o['kind']}/{meta['name']}"
        if o["kind"] in ("Deployment", "WorkerPool"):
            kept = [meta["generation"], o["spec"], meta.get("labels"), meta.get("annotations")]
            snapshot[key] = json.dumps(kept, sort_keys=True)
        else:
            snapshot[key] = meta["uid"]
    return snapshot


def fetch_stable_snapshot(
    cluster: kubecluster.KubeCluster, namespace: str, quiet_seconds: float = 3.0
) -> dict[str, str]:
    """Wait until the snapshot has not changed for `quiet_seconds`; return it."""
    deadline = time.monotonic() + 60
    last, since = fetch_snapshot(cluster, namespace), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = fetch_snapshot(cluster, namespace)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_seconds:
            return now
    raise AssertionError(f"the objects kept changing for 60 s: {last}")


def test_a_spec_change_rolls_out_new_pods_and_observed_generation_follows(
    kube_cluster: kubecluster.KubeCluster, operator: wf.Operator, pools_namespace: str
) -> None:
    # Given a converged pool of one pod
    pool = wf.build_pool("rollout", "e2e-rollout", {"minReplicas": 1, "maxReplicas": 1})
    apply_pool(kube_cluster, pools_namespace, pool)
    wait_ready(kube_cluster, pools_namespace, "rollout")
    # When its image changes
    kube_cluster.kubectl(
        "patch", "wp", "rollout", "-n", pools_namespace, "--type=merge",
        "-p", json.dumps({"spec": {"image": "registry.example/e2e-worker:1.1.0"}}),
    )  # fmt: skip
    # Then the running pod is replaced by one with the new image
    pods = kubecluster.poll_until(
        "one Running pod with the new image",
        lambda: wf.fetch_running_pods(kube_cluster, pools_namespace, "rollout"),
        lambda ps: (
            [p["spec"]["containers"][0]["image"] for p in ps]
            == ["registry.example/e2e-worker:1.1.0"]
        ),
        timeout_seconds=90,
    )
    assert len(pods) == 1
    # And observedGeneration follows the generation
    stored = kubecluster.poll_until(
        "observedGeneration 2",
        lambda: kube_cluster.fetch_json("wp", "rollout", "-n", pools_namespace),
        lambda o: o.get("status", {}).get("observedGeneration") == 2,  # type: ignore[attr-defined]
        timeout_seconds=60,
    )
    assert stored["metadata"]["generation"] == 2  # type: ignore[index]
    assert operator.forbidden_lines() == []


def test_a_hand_edited_deployment_is_restored(
    kube_cluster: kubecluster.KubeCluster, operator: wf.Operator, pools_namespace: str
) -> None:
    # Given a converged pool
    pool = wf.build_pool("drift", "e2e-drift", {"minReplicas": 1, "maxReplicas": 1})
    apply_pool(kube_cluster, pools_namespace, pool)
    wait_ready(kube_cluster, pools_namespace, "drift")
    original = fetch_image(kube_cluster, pools_namespace, "drift")
    container = kube_cluster.kubectl(
        "get", "deploy", "drift", "-n", pools_namespace,
        "-o", "jsonpath={.spec.template.spec.containers[0].name}",
    ).stdout  # fmt: skip
    # When someone edits the Deployment's image with kubectl
    kube_cluster.kubectl(
        "set", "image", "deploy/drift", f"{container}=evil.example/miner:latest",
        "-n", pools_namespace,
    )  # fmt: skip
    # Then the operator puts the pool's image back
    restored = kubecluster.poll_until(
        "the pool's image back",
        lambda: fetch_image(kube_cluster, pools_namespace, "drift"),
        lambda image: image == original,
        timeout_seconds=90,
    )
    assert restored == "registry.example/e2e-worker:1.0.0"
    assert operator.forbidden_lines() == []


def test_a_deleted_deployment_is_recreated(
    kube_cluster: kubecluster.KubeCluster, operator: wf.Operator, pools_namespace: str
) -> None:
    # Given a converged pool
    pool = wf.build_pool("phoenix", "e2e-phoenix", {"minReplicas": 1, "maxReplicas": 1})
    apply_pool(kube_cluster, pools_namespace, pool)
    wait_ready(kube_cluster, pools_namespace, "phoenix")
    first = kube_cluster.fetch_json("deploy", "phoenix", "-n", pools_namespace)
    # When its Deployment is deleted
    kube_cluster.kubectl("delete", "deploy", "phoenix", "-n", pools_namespace, "--wait=false")
    # Then a new one (another uid), owned by the pool, runs its pod again
    again = kubecluster.poll_until(
        "a recreated Deployment",
        lambda: (
            kube_cluster.kubectl(
                "get", "deploy", "phoenix", "-n", pools_namespace, "-o", "json", check=False
            ).stdout
        ),
        lambda out: (
            bool(out)
            and json.loads(out)["metadata"]["uid"] != first["metadata"]["uid"]  # type: ignore[index]
            and "deletionTimestamp" not in json.loads(out)["metadata"]
        ),
        timeout_seconds=90,
    )
    assert json.loads(again)["metadata"]["ownerReferences"][0]["name"] == "phoenix"
    wait_running_pods(kube_cluster, pools_namespace, "phoenix", 1)
    assert operator.forbidden_lines() == []


def test_a_missing_secret_gives_ready_false_and_a_warning_then_recovers_when_created(
    kube_cluster: kubecluster.KubeCluster,
    operator: wf.Operator,
    pools_namespace: str,
    redis_server: RedisServer,
) -> None:
    # Given a pool whose Secret does not exist yet
    pool = wf.build_pool("orphan", "e2e-orphan", {"minReplicas": 1, "maxReplicas": 1}, "not-yet")
    apply_pool(kube_cluster, pools_namespace, pool)
    # Then Ready=False with reason SecretNotFound, a Warning Event, and no Deployment
    condition = wait_condition(kube_cluster, pools_namespace, "orphan", "Ready", "False")
    assert condition["reason"] == "SecretNotFound"
    assert "not-yet" in condition["message"]
    warnings = kubecluster.poll_until(
        "a Warning Event",
        lambda: [
            e
            for e in wf.fetch_events(kube_cluster, pools_namespace, "orphan")
            if e["type"] == "Warning"
        ],
        lambda found: bool(found),
        timeout_seconds=30,
    )
    assert warnings[0]["reason"] == "SecretNotFound"
    assert fetch_image(kube_cluster, pools_namespace, "orphan") == ""
    # When the Secret is created
    create_secret(kube_cluster, pools_namespace, "not-yet", redis_server.url)
    # Then the pool recovers and runs its pod
    wait_ready(kube_cluster, pools_namespace, "orphan")
    wait_running_pods(kube_cluster, pools_namespace, "orphan", 1)
    assert operator.forbidden_lines() == []


def test_when_redis_is_unreachable_replicas_are_held_and_queue_reachable_is_false(
    kube_cluster: kubecluster.KubeCluster,
    operator: wf.Operator,
    pools_namespace: str,
    redis_factory: Callable[..., RedisServer],
) -> None:
    # Given a pool of 2 pods on its own Redis
    own = redis_factory()
    create_secret(kube_cluster, pools_namespace, "redis-outage", own.url)
    autoscaling = {"minReplicas": 2, "maxReplicas": 4, "pollingIntervalSeconds": POLL_SECONDS}
    apply_pool(
        kube_cluster,
        pools_namespace,
        wf.build_pool("outage", "e2e-outage", autoscaling, "redis-outage"),
    )
    wait_ready(kube_cluster, pools_namespace, "outage")
    wait_running_pods(kube_cluster, pools_namespace, "outage", 2)  # Ready needs only one
    # When that Redis goes away
    own.stop()
    # Then QueueReachable turns False with a Warning Event
    condition = wait_condition(kube_cluster, pools_namespace, "outage", "QueueReachable", "False")
    assert condition["reason"] == "QueueUnreachable"
    kubecluster.poll_until(
        "a QueueUnreachable Event",
        lambda: [e["reason"] for e in wf.fetch_events(kube_cluster, pools_namespace, "outage")],
        lambda reasons: "QueueUnreachable" in reasons,
        timeout_seconds=30,
    )
    # And over several polling intervals the replicas are held, with the pods still Running
    time.sleep(3 * POLL_SECONDS)  # the subject is "held over time": three polls of it
    replicas = kube_cluster.kubectl(
        "get", "deploy", "outage", "-n", pools_namespace, "-o", "jsonpath={.spec.replicas}"
    ).stdout
    assert replicas == "2"
    assert len(wf.fetch_running_pods(kube_cluster, pools_namespace, "outage")) == 2
    assert operator.forbidden_lines() == []


def test_after_a_restart_the_operator_rewrites_nothing_and_duplicates_nothing(
    kube_cluster: kubecluster.KubeCluster,
    workerfleet_chart: str,
    namespace: str,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    # Given an operator of its own on this namespace, and two converged pools
    create_secret(kube_cluster, namespace, "redis", redis_server.url)
    first = wf.start_operator(kube_cluster, workerfleet_chart, (namespace,), tmp_path / "first")
    try:
        for name in ("left", "right"):
            pool = wf.build_pool(name, f"e2e-{name}", {"minReplicas": 1, "maxReplicas": 1})
            apply_pool(kube_cluster, namespace, pool)
        for name in ("left", "right"):
            wait_ready(kube_cluster, namespace, name)
        converged = fetch_stable_snapshot(kube_cluster, namespace)
    finally:
        first.stop()
    # When the operator starts again (at debug level, whose log has kopf's per-object lines)
    second = wf.start_operator(
        kube_cluster,
        workerfleet_chart,
        (namespace,),
        tmp_path / "second",
        extra_env={"WORKERFLEET_OPERATOR_LOG_LEVEL": "debug"},
    )
    try:
        # Then, once it has handled both pools again, nothing was rewritten, rolled out or
        # duplicated
        kubecluster.poll_until(
            "the restarted operator handling both pools",
            lambda: second.log().count("workerpool_event' succeeded"),
            lambda count: count >= 2,
            timeout_seconds=60,
        )
        after = fetch_stable_snapshot(kube_cluster, namespace)
    finally:
        second.stop()
    assert after == converged
    assert sorted(k for k in after if k.startswith("Deployment/")) == [
        "Deployment/left",
        "Deployment/right",
    ]
    assert first.forbidden_lines() == []
    assert second.forbidden_lines() == []


def test_the_redis_password_never_appears_in_pools_children_events_or_the_log(
    kube_cluster: kubecluster.KubeCluster,
    operator: wf.Operator,
    pools_namespace: str,
    redis_factory: Callable[..., RedisServer],
) -> None:
    # Given a Redis with a password, a Secret with its URL, and one with an unusable URL
    canary = f"canary-{secrets.token_hex(8)}"
    guarded = redis_factory()
    # Set after start: the fixture's readiness ping does not authenticate.
    with redis.Redis(port=guarded.port) as admin:
        admin.config_set("requirepass", canary)
    url = f"redis://:{canary}@127.0.0.1:{guarded.port}/0"
    create_secret(kube_cluster, pools_namespace, "redis-canary", url)
    create_secret(
        kube_cluster, pools_namespace, "redis-bad-url", f"http://u:{canary}@127.0.0.1:1/0"
    )
    one = {"minReplicas": 1, "maxReplicas": 1, "pollingIntervalSeconds": POLL_SECONDS}
    # When pools use them and that Redis goes away
    apply_pool(
        kube_cluster, pools_namespace, wf.build_pool("canary", "e2e-canary", one, "redis-canary")
    )
    apply_pool(
        kube_cluster, pools_namespace, wf.build_pool("badurl", "e2e-badurl", one, "redis-bad-url")
    )
    reachable = wait_condition(kube_cluster, pools_namespace, "canary", "QueueReachable", "True")
    assert reachable["reason"] == "QueueRead"
    bad = wait_condition(kube_cluster, pools_namespace, "badurl", "Ready", "False")
    assert bad["reason"] == "InvalidRedisURL"
    guarded.stop()
    wait_condition(kube_cluster, pools_namespace, "canary", "QueueReachable", "False")
    # Then the password is nowhere the cluster or the operator shows it
    for where, args in (
        ("pools", ("wp", "-n", pools_namespace)),
        ("deployments", ("deploy", "-n", pools_namespace)),
        ("pods", ("pods", "-n", pools_namespace)),
        ("events", ("events", "-n", pools_namespace)),
    ):
        assert canary not in json.dumps(kube_cluster.fetch_json(*args)), f"leaked into {where}"
    assert canary not in operator.log(), "leaked into the operator's log"
    assert operator.forbidden_lines() == []


def test_three_spec_changes_while_the_operator_is_down_are_applied_as_one_rollout(
    kube_cluster: kubecluster.KubeCluster,
    workerfleet_chart: str,
    namespace: str,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    # Given a converged pool and its operator stopped
    create_secret(kube_cluster, namespace, "redis", redis_server.url)
    first = wf.start_operator(kube_cluster, workerfleet_chart, (namespace,), tmp_path / "first")
    try:
        pool = wf.build_pool("batch", "e2e-batch", {"minReplicas": 1, "maxReplicas": 1})
        apply_pool(kube_cluster, namespace, pool)
        wait_ready(kube_cluster, namespace, "batch")
        before = kube_cluster.fetch_json("deploy", "batch", "-n", namespace)["metadata"]
    finally:
        first.stop()
    # When the spec changes three times
    for version in ("1.5.0", "1.6.0", "1.7.0"):
        kube_cluster.kubectl(
            "patch", "wp", "batch", "-n", namespace, "--type=merge",
            "-p", json.dumps({"spec": {"image": f"registry.example/e2e-worker:{version}"}}),
        )  # fmt: skip
    # And the operator starts again
    second = wf.start_operator(kube_cluster, workerfleet_chart, (namespace,), tmp_path / "second")
    try:
        # Then the pool's latest generation is observed and only the latest image is applied,
        # in a single Deployment write (its generation moves by one: one rollout, not three)
        kubecluster.poll_until(
            "observedGeneration 4",
            lambda: kube_cluster.fetch_json("wp", "batch", "-n", namespace),
            lambda o: o.get("status", {}).get("observedGeneration") == 4,  # type: ignore[attr-defined]
            timeout_seconds=60,
        )
        after = kube_cluster.fetch_json("deploy", "batch", "-n", namespace)
    finally:
        second.stop()
    image = after["spec"]["template"]["spec"]["containers"][0]["image"]  # type: ignore[index]
    assert image == "registry.example/e2e-worker:1.7.0"
    generation = after["metadata"]["generation"]  # type: ignore[index]
    assert generation == before["generation"] + 1  # type: ignore[index]
    assert first.forbidden_lines() == []
    assert second.forbidden_lines() == []
