"""WorkerPools on a real node: real containers, real probes, the kubelet's own SIGTERM and SIGKILL.

Everything here runs on `real_node` (kubelet v1.35 + containerd + runc, tests/e2e/kubenode.py)
beside the kwok nodes. The operator is the chart's Deployment running the operator image (a
second release of the chart, namespaced to `node_namespace`, its pod reaching the API server
through the bridge gateway); worker pods run the example worker image with the tests' tasks
added (tests/e2e/node_tasks.py), against a Redis on the bridge gateway. Each task writes its own
history (started/finished, pod, deliveries, wall-clock time) to Redis, so what happened to a job
is judged by that history, by the queue's counters and by the kubelet's log and pod status —
never by counters the worker keeps about itself.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.e2e import kubecluster, kubenode
from tests.e2e import workerfleet_support as wf
from tests.support.redis_servers import RedisServer
from worker_runtime import producer
from worker_runtime.brokers.redis import keys, stats

pytestmark = pytest.mark.e2e

NODE_NAMESPACE = "e2e-node"
NODE_RELEASE = "wfnode"
OPERATOR_IMAGE = "docker.io/workerfleet/workerfleet-operator:0.1.0"
WORKER_IMAGE = "docker.io/workerfleet/e2e-worker:0.1.0"
KLOG_STAMP = re.compile(r"^[IWEF](\d{2})(\d{2}) (\d{2}):(\d{2}):(\d{2})\.(\d{6})")


@pytest.fixture(scope="module")
def node_namespace(
    kube_cluster: kubecluster.KubeCluster,
    real_node: kubenode.RealNode,
    node_redis: RedisServer,
    workerfleet_chart: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """A namespace watched by the chart's operator running as a pod on the real node.

    The first release (`workerfleet_chart`) owns the CRD; this one installs only the operator,
    namespaced, from the image built by scripts/build-images.sh (never pulled).
    """
    kube_cluster.kubectl("create", "namespace", NODE_NAMESPACE)
    pod_url = f"redis://{kubenode.GATEWAY_IP}:{node_redis.port}/0"
    kube_cluster.kubectl(
        "create",
        "secret",
        "generic",
        "redis",
        "-n",
        NODE_NAMESPACE,
        f"--from-literal=url={pod_url}",
    )
    # The chart's default admission policy: WorkerPools may name only Secrets labelled usable.
    kube_cluster.kubectl(
        "label", "secret", "redis", "-n", NODE_NAMESPACE, f"{wf.USABLE_LABEL}=true"
    )
    api_port = int(kube_cluster.server.rsplit(":", 1)[1])
    forwarded = real_node.forward(api_port)
    values = {
        "crds": {"enabled": False},
        "watchNamespaces": [NODE_NAMESPACE],
        "image": {
            "repository": OPERATOR_IMAGE.rsplit(":", 1)[0],
            "tag": OPERATOR_IMAGE.rsplit(":", 1)[1],
            "pullPolicy": "Never",
        },
        "operator": {
            # One pod on the one real node (the chart's default is two, elected).
            "replicas": 1,
            "nodeSelector": dict([kubenode.REAL_NODE_LABEL]),
            "tolerations": [build_real_node_toleration()],
            # In-cluster config reads these; there is no Service proxy on this node, so they
            # name the forwarder on the bridge gateway (the API server's certificate has it).
            "extraEnv": [
                {"name": "KUBERNETES_SERVICE_HOST", "value": kubenode.GATEWAY_IP},
                {"name": "KUBERNETES_SERVICE_PORT", "value": str(forwarded)},
            ],
        },
    }
    values_file = tmp_path_factory.mktemp("node-chart") / "values.json"
    values_file.write_text(json.dumps(values))
    kube_cluster.helm(
        "install", NODE_RELEASE, str(wf.CHART), "-n", NODE_NAMESPACE, "-f", str(values_file),
        "--wait", "--timeout", "180s", timeout=240,
    )  # fmt: skip
    try:
        yield NODE_NAMESPACE
    finally:
        # The operator pod's log outlives the session next to the node's own logs.
        logs = real_node.workdir / "logs"
        for previous in ("--previous=false", "--previous=true"):
            result = kube_cluster.kubectl(
                "logs", "-n", NODE_NAMESPACE, "-l", f"app.kubernetes.io/instance={NODE_RELEASE}",
                "--tail=-1", previous, check=False,
            )  # fmt: skip
            name = "operator-pod-previous.log" if previous.endswith("true") else "operator-pod.log"
            (logs / name).write_text(result.stdout + result.stderr)
        kube_cluster.kubectl("delete", "wp", "--all", "-n", NODE_NAMESPACE, "--wait=false")
        kube_cluster.helm("uninstall", NODE_RELEASE, "-n", NODE_NAMESPACE, "--wait", check=False)
        kube_cluster.kubectl("delete", "namespace", NODE_NAMESPACE, "--wait=false", check=False)


def build_real_node_toleration() -> dict[str, str]:
    key, value, effect = kubenode.REAL_NODE_TAINT
    return {"key": key, "operator": "Equal", "value": value, "effect": effect}


def build_node_pool(
    name: str, autoscaling: dict[str, Any], drain_seconds: float, secret: str = "redis"
) -> dict[str, Any]:
    """A pool of the e2e worker image on the real node: one job per pod, a 6 s lease."""
    pool = wf.build_pool(name, name, {"pollingIntervalSeconds": 1, **autoscaling}, secret)
    pool["spec"].update(
        {
            "image": WORKER_IMAGE,
            "imagePullPolicy": "Never",
            "app": "node_tasks:app",
            "concurrency": 1,
            "leaseSeconds": 6,
            "jobTimeoutSeconds": 600,
            "drain": {"timeoutSeconds": drain_seconds},
            "resources": {
                "requests": {"cpu": "10m", "memory": "64Mi"},
                "limits": {"memory": "256Mi"},
            },
            "scheduling": {
                "nodeSelector": dict([kubenode.REAL_NODE_LABEL]),
                "tolerations": [build_real_node_toleration()],
            },
        }
    )
    return pool


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = pod["status"].get("conditions", [])
    return "deletionTimestamp" not in pod["metadata"] and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conditions
    )


def fetch_ready_pods(
    cluster: kubecluster.KubeCluster, namespace: str, pool: str, count: int
) -> list[dict[str, Any]]:
    """Wait until exactly `count` of the pool's pods are Ready (the kubelet's readiness probe)."""
    return kubecluster.poll_until(
        f"{count} Ready pods of {pool}",
        lambda: [p for p in wf.fetch_pods(cluster, namespace, pool) if is_ready(p)],
        lambda pods: len(pods) == count,
        timeout_seconds=180,
    )


def fetch_history(client: redis.Redis, queue: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in client.lrange(f"e2e-history:{queue}", 0, -1)]


def fetch_counter(client: redis.Redis, queue: str, name: str) -> int:
    value = client.hget(keys.build_keys(queue).counters, name)
    return int(value or 0)


def parse_klog_time(line: str) -> float | None:
    """The wall-clock time of a kubelet log line (klog: `I1202 13:50:01.123456 ...`, UTC)."""
    match = KLOG_STAMP.match(line)
    if match is None:
        return None
    month, day, hour, minute, second, micros = (int(g) for g in match.groups())
    year = datetime.datetime.now(datetime.UTC).year
    stamp = datetime.datetime(year, month, day, hour, minute, second, micros, datetime.UTC)
    return stamp.timestamp()


def fetch_kubelet_times(node: kubenode.RealNode, pod: str, container_id: str) -> dict[str, float]:
    """When the kubelet sent the container SIGTERM and when it saw the container die."""
    found: dict[str, float] = {}
    log = (node.workdir / "logs" / "kubelet.log").read_text(errors="replace")
    for line in log.splitlines():
        if f'pod="{NODE_NAMESPACE}/{pod}"' not in line:
            continue
        at = parse_klog_time(line)
        if at is None:
            continue
        if "Killing container with a grace period" in line and "sigterm" not in found:
            found["sigterm"] = at
        if "ContainerDied" in line and container_id in line and "died" not in found:
            found["died"] = at
    return found


class PodWatch:
    """`kubectl get pods -w -o json` in the background: the last status seen of every pod.

    A deleted pod vanishes from the API once its containers stopped; the watch still saw its
    final status (exit code, reason, finishedAt).
    """

    def __init__(self, cluster: kubecluster.KubeCluster, namespace: str, pool: str) -> None:
        self.last: dict[str, dict[str, Any]] = {}
        args = ["get", "pods", "-n", namespace, "-l", f"{wf.POOL_LABEL}={pool}", "-w", "-o", "json"]
        exe = kubecluster.TOOLS_BIN / "kubectl"
        self.process = subprocess.Popen(
            [str(exe), "--kubeconfig", str(cluster.kubeconfig), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            preexec_fn=kubecluster.build_parent_death_signal(),
        )
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()

    def read(self) -> None:
        assert self.process.stdout is not None
        decoder = json.JSONDecoder()
        buffer = ""
        for chunk in iter(lambda: self.process.stdout.readline(), ""):  # type: ignore[union-attr]
            buffer += chunk
            while buffer.strip():
                try:
                    pod, end = decoder.raw_decode(buffer.lstrip())
                except json.JSONDecodeError:
                    break
                buffer = buffer.lstrip()[end:]
                self.last[pod["metadata"]["name"]] = pod

    def terminated(self, name: str) -> dict[str, Any] | None:
        """The worker container's `terminated` state, once the kubelet reported it."""
        pod = self.last.get(name, {})
        for status in pod.get("status", {}).get("containerStatuses", []):
            state = status.get("state", {}).get("terminated")
            if status["name"] == "worker" and state:
                found: dict[str, Any] = state
                return found
        return None

    def stop(self) -> None:
        kubecluster.stop_process(self.process)  # type: ignore[arg-type]


class LogFollower:
    """`kubectl logs -f` of a pod's worker into a file: its JSON log outlives the pod."""

    def __init__(self, cluster: kubecluster.KubeCluster, namespace: str, pod: str, path: Path):
        exe = kubecluster.TOOLS_BIN / "kubectl"
        self.path = path
        with path.open("wb") as out:
            self.process = subprocess.Popen(
                [str(exe), "--kubeconfig", str(cluster.kubeconfig), "logs", "-f", pod,
                 "-n", namespace, "-c", "worker"],
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=kubecluster.build_parent_death_signal(),
            )  # fmt: skip

    def times(self, message: str) -> list[float]:
        """The `ts` of every JSON log line whose `msg` is `message`."""
        found = []
        for line in self.path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("msg") == message:
                    found.append(float(record["ts"]))
        return found

    def stop(self) -> None:
        kubecluster.stop_process(self.process)


class CounterWatch:
    """Polls a queue counter every 20 ms and records the wall-clock time of each increase."""

    def __init__(self, client: redis.Redis, queue: str, counter: str) -> None:
        self.client, self.queue, self.counter = client, queue, counter
        self.increases: list[float] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()

    def poll(self) -> None:
        seen = fetch_counter(self.client, self.queue, self.counter)
        deadline = time.monotonic() + 600
        while not self.stopped.is_set() and time.monotonic() < deadline:
            value = fetch_counter(self.client, self.queue, self.counter)
            if value > seen:
                self.increases.extend([time.time()] * (value - seen))
                seen = value
            time.sleep(0.02)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)


def container_id(pod: dict[str, Any]) -> str:
    (status,) = [s for s in pod["status"]["containerStatuses"] if s["name"] == "worker"]
    return str(status["containerID"]).split("://", 1)[1]


def apply_one_pod_pool(
    cluster: kubecluster.KubeCluster, namespace: str, name: str, drain_seconds: float
) -> dict[str, Any]:
    """A pool fixed at one pod (queue = pool name); returns that pod once Ready."""
    pool = build_node_pool(name, {"mode": "disabled", "replicas": 1}, drain_seconds)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pool))
    (pod,) = fetch_ready_pods(cluster, namespace, name, 1)
    return pod


def enqueue_and_wait_started(
    client: redis.Redis, queue: str, task: str, payload: dict[str, float]
) -> dict[str, Any]:
    """Enqueue one job and return its `started` record once a worker began it."""
    producer.SyncProducer(client, queue).enqueue(task, payload)
    (started,) = kubecluster.poll_until(
        "the job started",
        lambda: fetch_history(client, queue),
        lambda h: len(h) == 1,
        timeout_seconds=60,
    )
    return started


def wait_terminated(watch: PodWatch, name: str, grace: int) -> dict[str, Any]:
    """The worker container's final state, waiting up to its grace period and a margin."""
    terminated = kubecluster.poll_until(
        "the worker container terminated",
        lambda: watch.terminated(name),
        lambda t: t is not None,
        timeout_seconds=grace + 30,
    )
    assert terminated is not None
    return terminated


def wait_kubelet_times(node: kubenode.RealNode, name: str, cid: str) -> dict[str, float]:
    return kubecluster.poll_until(
        "the kubelet's SIGTERM and ContainerDied log lines",
        lambda: fetch_kubelet_times(node, name, cid),
        lambda t: {"sigterm", "died"} <= set(t),
        timeout_seconds=30,
    )


def test_the_charts_operator_runs_as_a_pod_from_its_image_on_the_real_node(
    kube_cluster: kubecluster.KubeCluster, real_node: kubenode.RealNode, node_namespace: str
) -> None:
    # Given the chart installed with the operator image and the real node's toleration
    # Then its operator pod runs there, Ready through the kubelet's probe of /healthz
    listing = kube_cluster.fetch_json(
        "pods", "-n", node_namespace, "-l", f"app.kubernetes.io/instance={NODE_RELEASE}"
    )
    pods: list[dict[str, Any]] = listing["items"]  # type: ignore[assignment]
    assert len(pods) == 1
    pod = pods[0]
    assert pod["spec"]["nodeName"] == real_node.name
    assert is_ready(pod)
    (status,) = pod["status"]["containerStatuses"]
    assert status["image"] == OPERATOR_IMAGE and status["started"] is True
    # And it runs as the image's non-root user with a read-only root filesystem
    assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    uid = kube_cluster.kubectl("exec", "-n", node_namespace, pod["metadata"]["name"], "--",
                               "/usr/bin/id", "-u", check=False)  # fmt: skip
    assert uid.stdout.strip() == "10001", uid.stderr


def test_a_pools_pods_run_the_worker_image_and_the_kubelet_probes_them(
    kube_cluster: kubecluster.KubeCluster,
    real_node: kubenode.RealNode,
    node_namespace: str,
    node_redis: RedisServer,
) -> None:
    # Given a pool of 2 and a second pool whose Redis URL points at a closed port
    kube_cluster.kubectl(
        "create", "secret", "generic", "no-redis", "-n", node_namespace,
        f"--from-literal=url=redis://{kubenode.GATEWAY_IP}:1/0",
    )  # fmt: skip
    kube_cluster.kubectl(
        "label", "secret", "no-redis", "-n", node_namespace, f"{wf.USABLE_LABEL}=true"
    )
    fixed = {"mode": "disabled", "replicas": 2}
    for pool in (
        build_node_pool("probed", fixed, 10),
        build_node_pool("unreachable", {"mode": "disabled", "replicas": 1}, 10, "no-redis"),
    ):
        kube_cluster.kubectl("apply", "-n", node_namespace, "-f", "-", input=json.dumps(pool))
    # Then the operator pod reconciles both: the good pool's 2 pods run the worker image on the
    # real node and are Ready (startup and readiness probes answered by the worker)
    pods = fetch_ready_pods(kube_cluster, node_namespace, "probed", 2)
    for pod in pods:
        assert pod["spec"]["nodeName"] == real_node.name
        (status,) = pod["status"]["containerStatuses"]
        assert status["image"] == WORKER_IMAGE and status["started"] is True
    condition = wf.wait_for_condition(kube_cluster, node_namespace, "probed", "Ready")
    assert condition["status"] == "True"
    # And their workers registered in the real Redis under their pod names
    client = redis.Redis.from_url(node_redis.url)
    try:
        queue_stats = kubecluster.poll_until(
            "2 worker heartbeats",
            lambda: stats.fetch_queue_stats_sync(client, "probed"),
            lambda q: len(q.workers) == 2,
            timeout_seconds=60,
        )
        names = {w.pod_name for w in queue_stats.workers}
        assert names == {p["metadata"]["name"] for p in pods}
    finally:
        client.close()
    # And the pod that cannot reach Redis runs, but the kubelet's probes of it fail: the kubelet
    # itself reports them, and the pod is not Ready
    events = kubecluster.poll_until(
        "a failed-probe event from the kubelet",
        lambda: [
            e for e in kube_cluster.fetch_json("events", "-n", node_namespace)["items"]  # type: ignore[index]
            if e["reason"] == "Unhealthy" and e["involvedObject"]["name"].startswith("unreachable-")
        ],
        lambda found: len(found) > 0,
        timeout_seconds=90,
    )  # fmt: skip
    assert "probe failed" in events[0]["message"]
    assert events[0]["source"].get("component") == "kubelet"
    unready = kubecluster.poll_until(
        "the unreachable pod not Ready",
        lambda: wf.fetch_pods(kube_cluster, node_namespace, "unreachable"),
        lambda pods: len(pods) == 1 and not is_ready(pods[0]),
        timeout_seconds=60,
    )
    assert unready[0]["spec"]["nodeName"] == real_node.name
    kube_cluster.kubectl("delete", "wp", "unreachable", "probed", "-n", node_namespace)


def test_scale_in_on_the_real_node_deletes_the_idle_pod_and_the_busy_one_finishes_its_job(
    kube_cluster: kubecluster.KubeCluster, node_namespace: str, node_redis: RedisServer
) -> None:
    # Given a pool held at 2 pods by minReplicas, scaling on the backlog alone
    autoscaling = {
        "minReplicas": 2,
        "maxReplicas": 2,
        "targetBacklogPerReplica": 10,
        "targetUtilization": 0,
        "scaleDown": {"stabilizationWindowSeconds": 0},
    }
    pool = build_node_pool("scalein", autoscaling, 30)
    kube_cluster.kubectl("apply", "-n", node_namespace, "-f", "-", input=json.dumps(pool))
    fetch_ready_pods(kube_cluster, node_namespace, "scalein", 2)
    client = redis.Redis.from_url(node_redis.url)
    try:
        # And one of them busy with a 25 s job, its worker's heartbeat (what the operator ranks
        # the pods by) saying so: a scale-in decided on a record older than the job sees two
        # idle pods, and then the ReplicaSet picks either
        busy = enqueue_and_wait_started(client, "scalein", "work", {"seconds": 25})["pod"]
        kubecluster.poll_until(
            "the busy pod's heartbeat showing its job in flight",
            lambda: stats.fetch_queue_stats_sync(client, "scalein").workers,
            lambda workers: any(w.pod_name == busy and w.in_flight == 1 for w in workers),
            timeout_seconds=30,
        )
        # When minReplicas drops to 1
        patch = {"spec": {"autoscaling": {"minReplicas": 1}}}
        kube_cluster.kubectl("patch", "wp", "scalein", "-n", node_namespace, "--type=merge",
                             "-p", json.dumps(patch))  # fmt: skip
        # Then the idle pod is the one deleted, and the busy one keeps its job to the end
        survivors = kubecluster.poll_until(
            "1 pod left",
            lambda: wf.fetch_pods(kube_cluster, node_namespace, "scalein"),
            lambda pods: len(pods) == 1,
            timeout_seconds=120,
        )
        assert survivors[0]["metadata"]["name"] == busy
        history = kubecluster.poll_until(
            "the job finished",
            lambda: fetch_history(client, "scalein"),
            lambda h: len(h) == 2,
            timeout_seconds=60,
        )
        assert [(e["event"], e["pod"], e["deliveries"]) for e in history] == [
            ("started", busy, 1),
            ("finished", busy, 1),
        ]
        assert fetch_counter(client, "scalein", "completed") == 1
    finally:
        client.close()
    kube_cluster.kubectl("delete", "wp", "scalein", "-n", node_namespace)


def test_a_pod_deleted_mid_job_drains_under_the_kubelets_sigterm_and_exits_in_its_grace(
    kube_cluster: kubecluster.KubeCluster,
    real_node: kubenode.RealNode,
    node_namespace: str,
    node_redis: RedisServer,
    tmp_path: Path,
) -> None:
    # Given a one-pod pool with a 30 s drain budget and its pod busy with a 10 s job
    pod = apply_one_pod_pool(kube_cluster, node_namespace, "drain", 30)
    name, grace = pod["metadata"]["name"], pod["spec"]["terminationGracePeriodSeconds"]
    cid = container_id(pod)
    client = redis.Redis.from_url(node_redis.url)
    watch = PodWatch(kube_cluster, node_namespace, "drain")
    acks = CounterWatch(client, "drain", "completed")
    log = LogFollower(kube_cluster, node_namespace, name, tmp_path / "worker.log")
    try:
        enqueue_and_wait_started(client, "drain", "work", {"seconds": 10})
        # When the pod is deleted (the kubelet sends SIGTERM to the worker, PID 1)
        kube_cluster.kubectl("delete", "pod", name, "-n", node_namespace, "--wait=false")
        # Then the worker exits by itself with code 0 ...
        terminated = wait_terminated(watch, name, grace)
        assert terminated["exitCode"] == 0, terminated
        # ... after its job finished on it exactly once (never lost, never run twice)
        history = fetch_history(client, "drain")
        assert [(e["event"], e["pod"], e["deliveries"]) for e in history] == [
            ("started", name, 1),
            ("finished", name, 1),
        ]
        assert fetch_counter(client, "drain", "completed") == 1
        assert fetch_counter(client, "drain", "released") == 0
        # ... and inside the grace period, measured from the kubelet's own SIGTERM
        times = wait_kubelet_times(real_node, name, cid)
        assert acks.increases, "the queue never counted the job completed"
        sigterm, last_ack, died = times["sigterm"], acks.increases[-1], times["died"]
        (draining,) = log.times("draining")
        (stopped,) = log.times("worker stopped")
        # The ack itself is seen by polling, so only its lower bound is certain here.
        assert sigterm < draining < history[1]["at"] < stopped < died
        assert history[1]["at"] < last_ack
        assert died - sigterm < grace
        real_node.reports.append(
            f"drain of {name} (grace {grace}s; its 10 s job started "
            f"{sigterm - history[0]['at']:.2f}s before SIGTERM): SIGTERM (kubelet log) +0.00s"
            f" -> draining (worker log) +{draining - sigterm:.2f}s -> job finished"
            f" +{history[1]['at'] - sigterm:.2f}s -> last ack seen +{last_ack - sigterm:.2f}s"
            f" (polled every 20 ms: an upper bound) -> worker stopped +{stopped - sigterm:.2f}s"
            f" -> container died +{died - sigterm:.2f}s (kubelet PLEG, relists every 1 s),"
            " exit code 0"
        )
        print(real_node.reports[-1])
    finally:
        log.stop()
        acks.stop()
        watch.stop()
        client.close()
    kube_cluster.kubectl("delete", "wp", "drain", "-n", node_namespace)


def test_a_worker_that_ignores_its_drain_budget_is_sigkilled_and_its_job_returns_by_lease(
    kube_cluster: kubecluster.KubeCluster,
    real_node: kubenode.RealNode,
    node_namespace: str,
    node_redis: RedisServer,
) -> None:
    # Given a one-pod pool with a 2 s drain budget whose pod runs a job that blocks its event
    # loop, so the SIGTERM handler never runs
    pod = apply_one_pod_pool(kube_cluster, node_namespace, "stubborn", 2)
    name, grace = pod["metadata"]["name"], pod["spec"]["terminationGracePeriodSeconds"]
    cid = container_id(pod)
    client = redis.Redis.from_url(node_redis.url)
    watch = PodWatch(kube_cluster, node_namespace, "stubborn")
    try:
        enqueue_and_wait_started(client, "stubborn", "stubborn", {"seconds": 300})
        # When the pod is deleted
        kube_cluster.kubectl("delete", "pod", name, "-n", node_namespace, "--wait=false")
        # Then the kubelet kills it at the end of the grace period: exit 137 (SIGKILL)
        terminated = wait_terminated(watch, name, grace)
        assert terminated["exitCode"] == 137, terminated
        times = wait_kubelet_times(real_node, name, cid)
        assert times["died"] - times["sigterm"] >= grace - 1
        # And after its lease expires the replacement pod runs the job again and finishes it
        history = kubecluster.poll_until(
            "the job finished on a second delivery",
            lambda: fetch_history(client, "stubborn"),
            lambda h: [e["event"] for e in h] == ["started", "started", "finished"],
            timeout_seconds=120,
        )
        assert history[0]["pod"] == name and history[0]["deliveries"] == 1
        assert history[1]["pod"] != name and history[1]["deliveries"] == 2
        assert history[2]["pod"] == history[1]["pod"]
        assert fetch_counter(client, "stubborn", "completed") == 1
        real_node.reports.append(
            f"budget ignored by {name} (grace {grace}s): SIGKILL exit 137 "
            f"{times['died'] - times['sigterm']:.2f}s after SIGTERM; job re-run by "
            f"{history[1]['pod']} {history[1]['at'] - times['died']:.2f}s after the kill"
        )
        print(real_node.reports[-1])
    finally:
        watch.stop()
        client.close()
    kube_cluster.kubectl("delete", "wp", "stubborn", "-n", node_namespace)
