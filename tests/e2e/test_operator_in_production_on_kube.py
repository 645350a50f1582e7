"""The operator against what a real cluster does to it: rotated tokens, exec plugins, throttling,
and the loss of its leader (on the real control plane of tests/e2e/kubecluster.py).

Each test runs `workerfleet operator` as a local process under the chart's ServiceAccount (as the
shared `operator` fixture does) but with its own kubeconfig, watching its own namespace. The
API server's audit log (writes of workerfleet-system accounts, with their user agent
``workerfleet-operator/<pid>``) says which process wrote what, and when.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import datetime
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import kubecluster
from tests.e2e import workerfleet_support as wf
from tests.support.redis_servers import RedisServer

pytestmark = pytest.mark.e2e

IMAGE_1 = "registry.example/e2e-worker:1.0.0"
IMAGE_2 = "registry.example/e2e-worker:2.0.0"
# The operator's leader-election defaults (kubebuilder's): lease 15 s, retry period 2 s.
LEASE, RETRY = 15.0, 2.0


# ------------------------------------------------------------------------------------ helpers


def create_redis_secret(cluster: kubecluster.KubeCluster, namespace: str, url: str) -> None:
    cluster.kubectl(
        "create", "secret", "generic", "redis", "-n", namespace, f"--from-literal=url={url}"
    )


def create_pool(cluster: kubecluster.KubeCluster, namespace: str, name: str) -> None:
    pool = wf.build_pool(name, f"e2e-{name}", {"minReplicas": 1, "maxReplicas": 1})
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pool))


def fetch_image(cluster: kubecluster.KubeCluster, namespace: str, name: str) -> str | None:
    found = cluster.kubectl("get", "deploy", name, "-n", namespace, "-o", "json", check=False)
    if found.returncode != 0:
        return None
    body = json.loads(found.stdout)
    return str(body["spec"]["template"]["spec"]["containers"][0]["image"])


def change_image(cluster: kubecluster.KubeCluster, namespace: str, name: str, image: str) -> None:
    patch = json.dumps({"spec": {"image": image}})
    cluster.kubectl("patch", "wp", name, "-n", namespace, "--type=merge", "-p", patch)


def wait_for_image(
    cluster: kubecluster.KubeCluster, namespace: str, name: str, image: str, timeout: float = 60.0
) -> None:
    kubecluster.poll_until(
        f"Deployment {namespace}/{name} with {image}",
        lambda: fetch_image(cluster, namespace, name),
        lambda found: found == image,
        timeout_seconds=timeout,
        interval=0.2,
    )


def bound_token(cluster: kubecluster.KubeCluster, account: str, secret: str) -> str:
    """A token of `account` bound to Secret `secret`: deleting the Secret revokes the token."""
    cluster.kubectl(
        "create", "secret", "generic", secret, "-n", wf.SYSTEM_NAMESPACE, "--from-literal=k=v"
    )
    return cluster.kubectl(
        "create", "token", account, "-n", wf.SYSTEM_NAMESPACE, "--duration=3600s",
        "--bound-object-kind=Secret", f"--bound-object-name={secret}",
    ).stdout.strip()  # fmt: skip


def fetch_status_code(cluster: kubecluster.KubeCluster, token: str) -> int:
    """What the API server answers `token` on a plain read (200, or 401 once revoked)."""
    context = ssl.create_default_context(cafile=str(cluster.ca_file))
    request = urllib.request.Request(
        f"{cluster.server}/apis/workerfleet.io/v1alpha1/workerpools",
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def reasons_of(cluster: kubecluster.KubeCluster, namespace: str, name: str) -> set[str]:
    stored = cluster.fetch_json("wp", name, "-n", namespace)
    status: dict[str, Any] = stored.get("status") or {}  # type: ignore[assignment]
    return {str(c.get("reason")) for c in status.get("conditions", [])}


def writes_by(
    cluster: kubecluster.KubeCluster, pid: int, since: datetime.datetime | None = None
) -> list[dict[str, Any]]:
    """Audited writes sent by operator process `pid` (its user agent), after `since`."""
    agent = f"workerfleet-operator/{pid}"
    found = []
    for event in cluster.fetch_audit_events():
        if event.get("stage") != "ResponseComplete" or event.get("userAgent") != agent:
            continue
        received = parse_time(str(event["requestReceivedTimestamp"]))
        if since is None or received >= since:
            found.append(event)
    return found


def parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


# ------------------------------------------------------------------------------------ tokens


def test_the_operator_keeps_reconciling_after_its_token_is_replaced_and_revoked(
    kube_cluster: kubecluster.KubeCluster,
    workerfleet_chart: str,
    namespace: str,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    # Given the operator logged in with a token bound to Secret tok-1, reconciling a pool
    create_redis_secret(kube_cluster, namespace, redis_server.url)
    suffix = namespace.removeprefix("e2e-")
    old = bound_token(kube_cluster, workerfleet_chart, f"tok-1-{suffix}")
    kubeconfig = kube_cluster.write_kubeconfig(tmp_path / "kubeconfig", old, workerfleet_chart)
    operator = wf.start_operator(
        kube_cluster, workerfleet_chart, (namespace,), tmp_path / "op", kubeconfig=kubeconfig
    )
    try:
        create_pool(kube_cluster, namespace, "rotated")
        wait_for_image(kube_cluster, namespace, "rotated", IMAGE_1)
        # When the kubeconfig gets a new token and the old one is revoked (its Secret deleted)
        new = bound_token(kube_cluster, workerfleet_chart, f"tok-2-{suffix}")
        kube_cluster.write_kubeconfig(kubeconfig, new, workerfleet_chart)
        kube_cluster.kubectl("delete", "secret", f"tok-1-{suffix}", "-n", wf.SYSTEM_NAMESPACE)
        kubecluster.poll_until(
            "the old token refused",
            lambda: fetch_status_code(kube_cluster, old),
            lambda code: code == 401,
            timeout_seconds=30,
        )
        assert fetch_status_code(kube_cluster, new) == 200
        # And the pool changes
        change_image(kube_cluster, namespace, "rotated", IMAGE_2)
        # Then the operator writes the change with the new token, and no reconcile failed
        wait_for_image(kube_cluster, namespace, "rotated", IMAGE_2)
        assert "ReconcileFailed" not in reasons_of(kube_cluster, namespace, "rotated")
        assert operator.process.poll() is None
        log = operator.log()
        assert "401" in log, "the operator never met the revoked token"
    finally:
        operator.stop()


PLUGIN = """
import json, sys
token_file, calls_file = sys.argv[1], sys.argv[2]
with open(calls_file, "a") as calls:
    calls.write("called\\n")
print(json.dumps({
    "apiVersion": "client.authentication.k8s.io/v1",
    "kind": "ExecCredential",
    "status": {"token": open(token_file).read().strip()},
}))
"""


def write_exec_kubeconfig(
    cluster: kubecluster.KubeCluster, directory: Path, token: str, namespace: str
) -> tuple[Path, Path]:
    """A kubeconfig whose user is an exec plugin (a script printing an ExecCredential, as
    aws-iam-authenticator or gke-gcloud-auth-plugin do); returns it and the plugin's call log."""
    plugin, token_file, calls = directory / "plugin.py", directory / "token", directory / "calls"
    plugin.write_text(PLUGIN)
    token_file.write_text(token)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "e2e", "cluster": {"server": cluster.server, "certificate-authority-data":
                base64.b64encode(cluster.ca_file.read_bytes()).decode()}},
        ],
        "users": [{"name": "exec", "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(plugin), str(token_file), str(calls)],
            "interactiveMode": "Never",
        }}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "exec",
                                                "namespace": namespace}}],
        "current-context": "e2e",
    }  # fmt: skip
    path = directory / "exec.kubeconfig"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path, calls


def test_a_kubeconfig_with_an_exec_plugin_works_for_the_operator_and_for_workerfleet_pools(
    kube_cluster: kubecluster.KubeCluster,
    workerfleet_chart: str,
    namespace: str,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    # Given a kubeconfig with no token, only an exec plugin that prints one
    create_redis_secret(kube_cluster, namespace, redis_server.url)
    token = kube_cluster.fetch_service_account_token(wf.SYSTEM_NAMESPACE, workerfleet_chart)
    kubeconfig, calls = write_exec_kubeconfig(kube_cluster, tmp_path, token, namespace)
    # When the operator runs with it
    operator = wf.start_operator(
        kube_cluster, workerfleet_chart, (namespace,), tmp_path / "op", kubeconfig=kubeconfig
    )
    try:
        create_pool(kube_cluster, namespace, "plugged")
        # Then it reconciles the pool
        wait_for_image(kube_cluster, namespace, "plugged", IMAGE_1)
    finally:
        operator.stop()
    # And `workerfleet pools` lists it with the same kubeconfig (the context's namespace)
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    listed = subprocess.run(
        [str(wf.WORKERFLEET), "pools", "--kubeconfig", str(kubeconfig), "--json"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert "plugged" in listed.stdout
    assert len(calls.read_text().splitlines()) >= 2  # the operator's login and the CLI's


# ------------------------------------------------------------------------------------ leader


def grant_lease_rbac(cluster: kubecluster.KubeCluster) -> None:
    """The chart's Lease Role and RoleBinding (leaderElection.enabled), rendered and applied
    alone: the shared release stays as it is."""
    rendered = cluster.helm(
        "template", wf.RELEASE, str(wf.CHART), "-n", wf.SYSTEM_NAMESPACE,
        "--set", "operator.leaderElection.enabled=true", "--show-only", "templates/rbac.yaml",
    ).stdout  # fmt: skip
    documents = [d for d in rendered.split("\n---") if "-leader-election" in d]
    assert len(documents) == 2, rendered
    cluster.kubectl("apply", "-f", "-", input="\n---\n".join(documents))


def start_elected_operator(
    cluster: kubecluster.KubeCluster,
    account: str,
    namespace: str,
    workdir: Path,
    identity: str,
    lease: str,
) -> wf.Operator:
    env = {
        "WORKERFLEET_OPERATOR_LEADER_ELECTION": "true",
        "WORKERFLEET_OPERATOR_LEASE_NAME": lease,
        "WORKERFLEET_OPERATOR_LEASE_NAMESPACE": wf.SYSTEM_NAMESPACE,
        "WORKERFLEET_OPERATOR_LEADER_IDENTITY": identity,
    }
    return wf.start_operator(cluster, account, (namespace,), workdir, extra_env=env)


def fetch_lease(cluster: kubecluster.KubeCluster, lease: str) -> dict[str, Any]:
    found = cluster.kubectl(
        "get", "lease", lease, "-n", wf.SYSTEM_NAMESPACE, "-o", "json", check=False
    )
    if found.returncode != 0:
        return {}
    spec: dict[str, Any] = json.loads(found.stdout).get("spec") or {}
    return spec


@contextlib.contextmanager
def two_electing_operators(
    cluster: kubecluster.KubeCluster,
    account: str,
    namespace: str,
    redis_url: str,
    workdir: Path,
    pool: str,
) -> Iterator[tuple[wf.Operator, wf.Operator, str]]:
    """Given-step: op-a leading, op-b standing by, pool `pool` reconciled by op-a alone;
    yields both and the Lease's name; stops both afterwards."""
    grant_lease_rbac(cluster)
    create_redis_secret(cluster, namespace, redis_url)
    lease = f"lease-{namespace}"
    first = start_elected_operator(cluster, account, namespace, workdir / "a", "op-a", lease)
    second = None
    try:
        kubecluster.poll_until(
            "op-a leading",
            lambda: fetch_lease(cluster, lease).get("holderIdentity"),
            lambda holder: holder == "op-a",
            timeout_seconds=30,
        )
        second = start_elected_operator(cluster, account, namespace, workdir / "b", "op-b", lease)
        create_pool(cluster, namespace, pool)
        wait_for_image(cluster, namespace, pool, IMAGE_1)
        assert writes_by(cluster, first.process.pid), "the leader wrote nothing"
        # only the leader writes: the standby sent nothing but reads so far
        assert writes_by(cluster, second.process.pid) == []
        yield first, second, lease
    finally:
        if first.process.poll() is None:
            os.kill(first.process.pid, signal.SIGCONT)
        first.stop()
        if second is not None:
            second.stop()


def test_a_killed_leader_is_replaced_and_the_new_leader_writes_within_the_lease_time(
    kube_cluster: kubecluster.KubeCluster,
    workerfleet_chart: str,
    namespace: str,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    # Given two operators electing a leader (kubebuilder's 15/10/2 s), the first one leading
    with two_electing_operators(
        kube_cluster, workerfleet_chart, namespace, redis_server.url, tmp_path, "led"
    ) as (first, second, lease):
        # When the leader is killed (kill -9: no release) and the pool changes at once
        killed_at = datetime.datetime.now(datetime.UTC)
        started = time.monotonic()
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(10)
        change_image(kube_cluster, namespace, "led", IMAGE_2)
        # Then the standby takes the Lease and writes the change
        wait_for_image(kube_cluster, namespace, "led", IMAGE_2, timeout=60)
        failover = time.monotonic() - started
        spec = fetch_lease(kube_cluster, lease)
        assert spec["holderIdentity"] == "op-b"
        writes = writes_by(kube_cluster, second.process.pid, since=killed_at)
        deployment_writes = [
            w for w in writes if (w.get("objectRef") or {}).get("resource") == "deployments"
        ]
        assert deployment_writes, "no Deployment write by the new leader in the audit log"
        first_write = min(parse_time(str(w["requestReceivedTimestamp"])) for w in deployment_writes)
        takeover = parse_time(str(spec["acquireTime"]))
        print(
            f"\nleader kill -9 -> Lease taken by the standby: "
            f"{(takeover - killed_at).total_seconds():.1f}s; -> its first Deployment write "
            f"(audit): {(first_write - killed_at).total_seconds():.1f}s; "
            f"-> change seen on the Deployment: {failover:.1f}s"
        )
        # The protocol's bound: a lease duration after the standby last saw the Lease move (it
        # reads it every half retry period, +10 %), then one reconcile.
        assert (first_write - killed_at).total_seconds() <= LEASE + RETRY + 5.0
        assert "ReconcileFailed" not in reasons_of(kube_cluster, namespace, "led")


def test_a_leader_that_cannot_renew_stops_writing_before_the_standby_takes_over(
    kube_cluster: kubecluster.KubeCluster,
    workerfleet_chart: str,
    namespace: str,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    # Given two operators electing a leader, the first one leading
    with two_electing_operators(
        kube_cluster, workerfleet_chart, namespace, redis_server.url, tmp_path, "frozen"
    ) as (first, _second, lease):
        # When the leader is frozen (SIGSTOP: a stalled VM, a long GC, a partition) long enough
        # for the standby to take over, the pool changes, and the old leader wakes up
        os.kill(first.process.pid, signal.SIGSTOP)
        change_image(kube_cluster, namespace, "frozen", IMAGE_2)
        wait_for_image(kube_cluster, namespace, "frozen", IMAGE_2, timeout=60)
        spec = fetch_lease(kube_cluster, lease)
        assert spec["holderIdentity"] == "op-b"
        takeover = parse_time(str(spec["acquireTime"]))
        os.kill(first.process.pid, signal.SIGCONT)
        # Then the old leader exits (it lost the Lease) ...
        code = first.process.wait(30)
        assert code == 1, first.log()[-2000:]
        # ... and the API server received no write from it after the takeover
        late = writes_by(kube_cluster, first.process.pid, since=takeover)
        assert late == [], late
        assert "lost the Lease" in first.log()


# ------------------------------------------------------------------------------------ throttling


def build_throttle(account: str, name: str) -> str:
    """API Priority and Fairness config for `account`: a priority level with no seats of its own,
    none to borrow, and rejection instead of a queue. APF still runs one request at a time there
    (so a level cannot starve), and rejects with 429 whatever arrives while one runs."""
    level = {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "PriorityLevelConfiguration",
        "metadata": {"name": name},
        "spec": {
            "type": "Limited",
            "limited": {
                "nominalConcurrencyShares": 0,
                "lendablePercent": 0,
                "borrowingLimitPercent": 0,
                "limitResponse": {"type": "Reject"},
            },
        },
    }
    schema = {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": name},
        "spec": {
            "priorityLevelConfiguration": {"name": name},
            "matchingPrecedence": 300,
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [
                {
                    "subjects": [
                        {
                            "kind": "ServiceAccount",
                            "serviceAccount": {"name": account, "namespace": wf.SYSTEM_NAMESPACE},
                        }
                    ],
                    "resourceRules": [
                        {
                            "verbs": ["*"],
                            "apiGroups": ["*"],
                            "resources": ["*"],
                            "namespaces": ["*"],
                            "clusterScope": True,
                        }
                    ],
                }
            ],
        },
    }
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": [level, schema]})


class BusyAccount:
    """Threads reading pods as `token` back to back: they keep the throttled level's one seat
    busy, so the operator's own requests (same account, same level) meet 429."""

    def __init__(self, cluster: kubecluster.KubeCluster, token: str, namespace: str) -> None:
        self.url = f"{cluster.server}/api/v1/namespaces/{namespace}/pods"
        self.token = token
        self.context = ssl.create_default_context(cafile=str(cluster.ca_file))
        self.stop = threading.Event()
        self.answers: collections.Counter[int] = collections.Counter()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(12)]

    def run(self) -> None:
        request = urllib.request.Request(
            self.url, headers={"Authorization": f"Bearer {self.token}"}
        )
        deadline = time.monotonic() + 120.0
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(request, timeout=5, context=self.context) as answer:
                    self.answers[answer.status] += 1
            except urllib.error.HTTPError as exc:
                self.answers[exc.code] += 1
            except OSError:
                self.answers[0] += 1

    def __enter__(self) -> BusyAccount:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)


def test_requests_throttled_with_429_are_retried_and_end_in_a_correct_deployment(
    kube_cluster: kubecluster.KubeCluster,
    workerfleet_chart: str,
    namespace: str,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    # Given the operator reconciling a pool, and API Priority and Fairness giving its account
    # one request at a time, rejecting the rest with 429
    create_redis_secret(kube_cluster, namespace, redis_server.url)
    operator = wf.start_operator(
        kube_cluster, workerfleet_chart, (namespace,), tmp_path / "op",
        extra_env={"WORKERFLEET_OPERATOR_LOG_LEVEL": "debug"},
    )  # fmt: skip
    name = f"throttle-{namespace}"
    try:
        create_pool(kube_cluster, namespace, "throttled")
        wait_for_image(kube_cluster, namespace, "throttled", IMAGE_1)
        kube_cluster.kubectl("apply", "-f", "-", input=build_throttle(workerfleet_chart, name))
        token = kube_cluster.fetch_service_account_token(wf.SYSTEM_NAMESPACE, workerfleet_chart)
        # When other clients of the same account keep its seat busy, and the pool changes
        with BusyAccount(kube_cluster, token, namespace) as busy:
            kubecluster.poll_until(
                "the throttle in force",
                lambda: busy.answers[429],
                lambda rejected: rejected > 0,
                timeout_seconds=30,
                interval=0.2,
            )
            change_image(kube_cluster, namespace, "throttled", IMAGE_2)
            # (until the operator's own requests are answered 429 and it backs off)
            kubecluster.poll_until(
                "the operator answered 429",
                lambda: [
                    line
                    for line in operator.log().splitlines()
                    if "429" in line and "retry" in line
                ],
                bool,
                timeout_seconds=30,
                interval=0.1,
            )
        # Then, the seat free again, the retried requests go through: the Deployment is the new
        # spec's, and no reconcile counted as failed
        wait_for_image(kube_cluster, namespace, "throttled", IMAGE_2)
        assert "ReconcileFailed" not in reasons_of(kube_cluster, namespace, "throttled")
        assert not [line for line in operator.log().splitlines() if "reconcile of" in line]
    finally:
        kube_cluster.kubectl(
            "delete", "flowschema,prioritylevelconfiguration", name, "--ignore-not-found"
        )
        operator.stop()


# ------------------------------------------------------------------------------------ conflicts


class DeploymentEditor:
    """Another writer of the pool's Deployment: an annotation patched back to back (as the
    cluster admin), so every resourceVersion the operator read is stale a moment later."""

    def __init__(self, cluster: kubecluster.KubeCluster, namespace: str, name: str) -> None:
        split = urllib.parse.urlsplit(cluster.server)
        self.host, self.port = str(split.hostname), int(split.port or 443)
        self.path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}"
        self.token = cluster.admin_token
        self.context = ssl.create_default_context(cafile=str(cluster.ca_file))
        self.stop = threading.Event()
        self.writes = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        connection = http.client.HTTPSConnection(self.host, self.port, context=self.context)
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Content-Type": "application/merge-patch+json",
        }
        deadline = time.monotonic() + 60.0
        while not self.stop.is_set() and time.monotonic() < deadline:
            body = json.dumps({"metadata": {"annotations": {"e2e/edit": str(self.writes)}}})
            connection.request("PATCH", self.path, body=body, headers=headers)
            answer = connection.getresponse()
            answer.read()
            self.writes += answer.status == 200
        connection.close()

    def __enter__(self) -> DeploymentEditor:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def test_conflicting_writers_end_in_the_decided_replicas_with_no_failed_reconcile(
    kube_cluster: kubecluster.KubeCluster,
    workerfleet_chart: str,
    namespace: str,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    # Given the operator scaling a pool to its minimum of 2 every second
    create_redis_secret(kube_cluster, namespace, redis_server.url)
    operator = wf.start_operator(kube_cluster, workerfleet_chart, (namespace,), tmp_path / "op")
    try:
        autoscaling = {"minReplicas": 2, "maxReplicas": 4, "pollingIntervalSeconds": 1}
        pool = wf.build_pool("contested", "e2e-contested", autoscaling)
        kube_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pool))
        wait_for_image(kube_cluster, namespace, "contested", IMAGE_1)
        started = datetime.datetime.now(datetime.UTC)
        # When someone scales its Deployment to 5 while another writer edits it non-stop
        with DeploymentEditor(kube_cluster, namespace, "contested") as editor:
            kube_cluster.kubectl("scale", "deploy", "contested", "-n", namespace, "--replicas=5")
            kubecluster.poll_until(
                "a replicas write of the operator answered 409",
                lambda: [
                    e
                    for e in writes_by(kube_cluster, operator.process.pid, since=started)
                    if (e.get("responseStatus") or {}).get("code") == 409
                ],
                bool,
                timeout_seconds=45,
                interval=0.5,
            )
        assert editor.writes > 10
        # Then the operator read again, decided again, and the Deployment ends at 2
        kubecluster.poll_until(
            "the Deployment back at 2 replicas",
            lambda: kube_cluster.fetch_json("deploy", "contested", "-n", namespace)["spec"],
            lambda spec: spec["replicas"] == 2,  # type: ignore[index]
            timeout_seconds=30,
        )
        assert "ReconcileFailed" not in reasons_of(kube_cluster, namespace, "contested")
    finally:
        operator.stop()
