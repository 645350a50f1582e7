"""Instruments of the operator benchmark on the real control plane (bench/operator_scale.py).

What each one measures from OUTSIDE the operator (never from its own counters):

- :func:`apply_chart_and_namespace` is the set-up both real-cluster benchmarks share
  (bench/operator_soak.py too): the chart, the namespace and the pools' Redis Secret.
- :class:`PoolCreator` POSTs WorkerPools to the real kube-apiserver from a few threads (keep-alive
  HTTPS, the cluster admin's token), so 10,000 pools are created in seconds, not the minutes
  ``kubectl apply`` takes one object at a time.
- :class:`ReadyWatch` follows one WATCH of the namespace's WorkerPools and keeps the names whose
  ``Ready`` condition is ``True``: no listing of 10,000 objects every few seconds.
- :func:`build_audit_policy` / :class:`AuditLog`: the API server's audit log, restricted to the
  operator's ServiceAccount group, counts every request the operator made by verb and resource
  in a window (writes = create/update/patch/delete).
- :class:`RedisMonitor` runs ``MONITOR`` on the pools' Redis for a window and counts the
  commands clients sent (a script's own commands, tagged ``lua``, are counted apart): with the
  polls the window must contain, that is Redis round trips per pool per poll (a pipeline of k
  commands would count k, so the figure is an upper bound on round trips).
"""

from __future__ import annotations

import http.client
import json
import shutil
import ssl
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
from workerfleet_operator.local import embedded_redis

from tests.e2e import kubecluster, workerfleet_support

GROUP_PATH = "/apis/workerfleet.io/v1alpha1"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


def _connect(cluster: kubecluster.KubeCluster, timeout: float) -> http.client.HTTPSConnection:
    where = urlsplit(cluster.server)
    context = ssl.create_default_context(cafile=str(cluster.ca_file))
    return http.client.HTTPSConnection(
        where.hostname or "127.0.0.1", where.port, context=context, timeout=timeout
    )


class PoolCreator:
    """Creates WorkerPools in one namespace from ``threads`` keep-alive connections."""

    def __init__(self, cluster: kubecluster.KubeCluster, namespace: str, threads: int = 6) -> None:
        self._cluster = cluster
        self._path = f"{GROUP_PATH}/namespaces/{namespace}/workerpools"
        self._threads = threads
        self._local = threading.local()

    def _post(self, body: dict[str, Any]) -> int:
        conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
        for attempt in range(5):
            if conn is None:
                conn = self._local.conn = _connect(self._cluster, 60)
            try:
                conn.request(
                    "POST",
                    self._path,
                    body=json.dumps(body),
                    headers={
                        "Authorization": f"Bearer {self._cluster.admin_token}",
                        "Content-Type": "application/json",
                    },
                )
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = self._local.conn = None
                time.sleep(0.2 * (attempt + 1))
                continue
            if response.status == 429 or response.status >= 500:
                time.sleep(0.2 * (attempt + 1))
                continue
            return response.status
        return 0

    def create_all(self, bodies: Sequence[dict[str, Any]]) -> Counter[int]:
        """POST every body; the HTTP status codes seen (201 = created)."""
        with ThreadPoolExecutor(self._threads) as pool:
            return Counter(pool.map(self._post, bodies))


class ReadyWatch:
    """One WATCH of the namespace's WorkerPools in a daemon thread: who is Ready=True now."""

    def __init__(self, cluster: kubecluster.KubeCluster, namespace: str) -> None:
        self._cluster = cluster
        self._path = f"{GROUP_PATH}/namespaces/{namespace}/workerpools"
        self._ready: set[str] = set()
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ready-watch", daemon=True)

    def start(self) -> ReadyWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def counts(self) -> tuple[int, int]:
        """(pools seen, pools Ready=True)."""
        with self._lock:
            return len(self._seen), len(self._ready)

    def _run(self) -> None:
        version = ""
        while not self._stop.is_set():
            conn = _connect(self._cluster, 120)
            try:
                query = "?watch=1&allowWatchBookmarks=true&timeoutSeconds=600"
                if version:
                    query += f"&resourceVersion={version}"
                conn.request(
                    "GET",
                    self._path + query,
                    headers={"Authorization": f"Bearer {self._cluster.admin_token}"},
                )
                response = conn.getresponse()
                while not self._stop.is_set():
                    line = response.readline()
                    if not line:
                        break
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if event.get("type") == "ERROR":
                        version = ""  # expired: start again from a fresh state
                        break
                    if event.get("type") == "BOOKMARK":
                        continue
                    self._record(event.get("type", ""), obj)
            except (OSError, http.client.HTTPException, ValueError):
                time.sleep(0.5)
            finally:
                conn.close()

    def _record(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj.get("metadata", {}).get("name", "")
        if not name:
            return  # not a WorkerPool (e.g. a Status object the server sent)
        conditions = (obj.get("status") or {}).get("conditions") or ()
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        with self._lock:
            if kind == "DELETED":
                self._seen.discard(name)
                self._ready.discard(name)
                return
            self._seen.add(name)
            if ready:
                self._ready.add(name)
            else:
                self._ready.discard(name)


def apply_chart_and_namespace(
    cluster: kubecluster.KubeCluster, namespace: str, redis_url: str
) -> str:
    """Install the chart, create ``namespace`` with the ``redis`` Secret (key ``url``) every
    benchmark pool names; return the operator's ServiceAccount (for ``start_operator``)."""
    account = workerfleet_support.apply_chart(cluster)
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl(
        "create", "secret", "generic", "redis", "-n", namespace, f"--from-literal=url={redis_url}"
    )
    return account


def stop_all(
    operator: workerfleet_support.Operator | None,
    cluster: kubecluster.KubeCluster,
    server: embedded_redis.EmbeddedRedis | None,
    workdir: Path,
    *,
    keep: bool,
) -> None:
    """Stop what :func:`apply_chart_and_namespace`'s callers started, newest first."""
    if operator is not None:
        operator.stop()
    cluster.stop()
    if server is not None:
        server.stop()
    if keep:
        print("kept", workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def build_audit_policy(path: Path, user_group: str) -> Path:
    """An audit policy logging every request of ``user_group`` at Metadata level, nothing else."""
    policy = {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived", "ResponseStarted"],
        "rules": [{"level": "Metadata", "userGroups": [user_group]}, {"level": "None"}],
    }
    path.write_text(json.dumps(policy))
    return path


class AuditLog:
    """Reads the audit log (JSON lines) from a remembered offset: the requests of a window."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def mark(self) -> None:
        """Start a window here."""
        self._offset = self.path.stat().st_size if self.path.exists() else 0

    def requests_since_mark(self) -> Counter[str]:
        """``"verb resource[/subresource]"`` -> count of completed requests since :meth:`mark`."""
        counts: Counter[str] = Counter()
        if not self.path.exists():
            return counts
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            for raw in handle:
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue  # a line still being written
                ref = event.get("objectRef") or {}
                resource = ref.get("resource", event.get("requestURI", "?"))
                if ref.get("subresource"):
                    resource += "/" + ref["subresource"]
                counts[f"{event.get('verb', '?')} {resource}"] += 1
        return counts


def count_writes(requests: Counter[str]) -> int:
    return sum(n for key, n in requests.items() if key.split(" ", 1)[0] in WRITE_VERBS)


class RedisMonitor:
    """``MONITOR`` for a window in a thread: commands sent by clients, and by scripts, by name."""

    def __init__(self, url: str) -> None:
        self._url = url
        self.client_commands: Counter[str] = Counter()
        self.script_commands: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redis-monitor", daemon=True)

    def start(self) -> RedisMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        # The monitor blocks reading the next command (a read timeout would break its
        # connection): one PING of our own wakes it to see the flag; it is not counted.
        with redis.Redis.from_url(self._url) as waker:
            waker.ping()
        self._thread.join(10)

    def _run(self) -> None:
        # No read timeout (redis-py's default is 5 s): a timed-out read drops the connection.
        client = redis.Redis.from_url(self._url, socket_timeout=24 * 3600.0)
        with client.monitor() as monitor:
            while not self._stop.is_set():
                try:
                    seen = monitor.next_command()
                except redis.ConnectionError:
                    break
                if self._stop.is_set():
                    break
                name = str(seen.get("command", "")).split(" ", 1)[0].upper()
                if seen.get("client_type") == "lua":
                    self.script_commands[name] += 1
                else:
                    self.client_commands[name] += 1
