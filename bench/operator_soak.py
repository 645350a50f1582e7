"""Operator soak on the real control plane: busy WorkerPools for minutes; writes, Events, log bytes.

Run by ``make bench-soak`` (needs the control plane ``make testbin`` builds; CPU-heavy, minutes
long, so it is not part of ``make test``). Starts the e2e harness's control plane
(tests/e2e/kubecluster.py: etcd, kube-apiserver, controller-manager, scheduler, kwok nodes), one
redis-server, installs the chart and runs ``workerfleet operator`` as its ServiceAccount (as the
e2e tests do). Creates N pools (default 50), each on its own queue with a backlog that keeps
growing (one job per pool every polling interval) and no worker draining it: kwok's pods run
nothing, so every pool's oldest job ages on every poll — the worst case for status writes.

After a warm-up (every pool has read its queue and reached maxReplicas), it measures a window
(default 5 minutes) from the API server's and the cluster's side, never from the operator's own
counters: status PATCHes of WorkerPools and other requests by verb/resource from the API
server's ``apiserver_request_total``, Events about WorkerPools listed from the cluster, and the
byte size of the operator's log. Prints them and ends with the line
``soak: pools=N minutes=M status_patches_per_pool_min=X events_per_pool=Y log_bytes_per_min=Z``;
the full result goes to ``bench/results/soak-<UTC time>.json``. Never asserts (house rule).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from workerfleet_operator.local import embedded_redis  # noqa: E402

from bench import kube_scale, operator_scale  # noqa: E402
from tests.e2e import kubecluster, workerfleet_support  # noqa: E402
from worker_runtime import producer  # noqa: E402

NAMESPACE = "soak"
POLL_SECONDS = 5.0
MAX_REPLICAS = 3
_REQUEST_TOTAL = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def fetch_request_totals(cluster: kubecluster.KubeCluster) -> Counter[str]:
    """The API server's request counters as "VERB resource[/subresource]" -> count."""
    text = cluster.kubectl("get", "--raw", "/metrics", timeout=60).stdout
    totals: Counter[str] = Counter()
    for line in text.splitlines():
        match = _REQUEST_TOTAL.match(line)
        if match is None:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        resource = labels.get("resource", "")
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        totals[f"{labels.get('verb', '')} {resource}"] += int(float(match["value"]))
    return totals


def fetch_pool_events(cluster: kubecluster.KubeCluster) -> list[dict[str, Any]]:
    listing = cluster.fetch_json(
        "events", "-n", NAMESPACE, "--field-selector", "involvedObject.kind=WorkerPool"
    )
    items: list[dict[str, Any]] = listing["items"]  # type: ignore[assignment]
    return items


def fetch_other_event_reasons(cluster: kubecluster.KubeCluster) -> Counter[str]:
    """Reasons of the Events about anything but WorkerPools (pods, ReplicaSets, nodes), by kind."""
    listing = cluster.fetch_json(
        "events", "-A", "--field-selector", "involvedObject.kind!=WorkerPool"
    )
    items: list[dict[str, Any]] = listing["items"]  # type: ignore[assignment]
    return Counter(
        f"{e.get('involvedObject', {}).get('kind')}/{e.get('reason')}"
        for e in items
        for _ in range(int(e.get("count") or 1))
    )


def fetch_pools(cluster: kubecluster.KubeCluster) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.fetch_json("wp", "-n", NAMESPACE)["items"]  # type: ignore[assignment]
    return items


def is_warm(pool: dict[str, Any]) -> bool:
    """It read its queue and its desired count reached maxReplicas."""
    status = pool.get("status") or {}
    reachable = any(
        c.get("type") == "QueueReachable" and c.get("status") == "True"
        for c in status.get("conditions") or ()
    )
    return reachable and status.get("desiredReplicas") == MAX_REPLICAS


def enqueue_each(client: redis.Redis, pools: int, count: int) -> None:
    for i in range(pools):
        jobs = [producer.JobSpec(task="noop", payload={"n": n}) for n in range(count)]
        producer.SyncProducer(client, f"soak-{i:03d}").enqueue_many(jobs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the measured window")
    parser.add_argument("--backlog", type=int, default=200, help="jobs per queue at the start")
    parser.add_argument(
        "--operator-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra operator environment, e.g. WORKERFLEET_OPERATOR_STATUS_REFRESH_SECONDS=0",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.operator_env)

    workdir = Path(tempfile.mkdtemp(prefix="wf-bench-soak-"))
    print(f"starting the control plane in {workdir} ...")
    (workdir / "kube").mkdir()
    cluster = kubecluster.start_kube_cluster(workdir / "kube")
    server: embedded_redis.EmbeddedRedis | None = None
    operator: workerfleet_support.Operator | None = None
    try:
        server = embedded_redis.EmbeddedRedis(data_dir=workdir / "redis").start()
        account = kube_scale.apply_chart_and_namespace(cluster, NAMESPACE, server.url)
        client = redis.Redis.from_url(server.url)
        enqueue_each(client, args.pools, args.backlog)
        autoscaling = {
            "maxReplicas": MAX_REPLICAS,
            "pollingIntervalSeconds": POLL_SECONDS,
            "targetOldestJobAgeSeconds": 60,
        }
        manifest = {
            "apiVersion": "v1",
            "kind": "List",
            "items": [
                workerfleet_support.build_pool(f"soak-{i:03d}", f"soak-{i:03d}", autoscaling)
                for i in range(args.pools)
            ],
        }
        cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(manifest))
        operator = workerfleet_support.start_operator(
            cluster, account, (NAMESPACE,), workdir / "operator", extra_env=extra_env
        )
        started = time.monotonic()
        print(f"{args.pools} pools created; warming up (every pool at {MAX_REPLICAS} replicas) ...")
        warm = 0
        while time.monotonic() - started < 180:
            warm = sum(1 for p in fetch_pools(cluster) if is_warm(p))
            if warm >= args.pools:
                break
            enqueue_each(client, args.pools, 1)
            time.sleep(POLL_SECONDS)
        warm_s = time.monotonic() - started
        print(f"warm: {warm}/{args.pools} pools after {warm_s:.0f}s")

        # The window: the backlog keeps growing by one job per pool per polling interval.
        requests_before = fetch_request_totals(cluster)
        events_seen = fetch_pool_events(cluster)
        events_before = len(events_seen)
        reasons_before = Counter(str(e.get("reason")) for e in events_seen)
        others_before = fetch_other_event_reasons(cluster)
        log_before = operator.log_path.stat().st_size
        _, _, cpu_before = operator_scale.proc_stats(operator.process.pid)
        window = args.minutes * 60.0
        opened = time.monotonic()
        while time.monotonic() - opened < window:
            enqueue_each(client, args.pools, 1)
            time.sleep(POLL_SECONDS)
        elapsed_min = (time.monotonic() - opened) / 60.0
        requests = fetch_request_totals(cluster) - requests_before
        events = fetch_pool_events(cluster)
        log_bytes = operator.log_path.stat().st_size - log_before
        rss, peak, cpu_after = operator_scale.proc_stats(operator.process.pid)

        status_patches = requests["PATCH workerpools/status"]
        window_events = len(events) - events_before
        reasons = Counter(str(e.get("reason")) for e in events)
        others = fetch_other_event_reasons(cluster) - others_before
        lines = operator.log().splitlines()
        loggers = Counter(_logger_of(line) for line in lines)
        per_pool_min = status_patches / args.pools / elapsed_min
        result = {
            "pools": args.pools,
            "window_minutes": round(elapsed_min, 2),
            "warm_pools": warm,
            "warm_seconds": round(warm_s, 1),
            "operator_env": extra_env,
            "status_patches": status_patches,
            "status_patches_per_pool_per_minute": round(per_pool_min, 3),
            "events_in_window": window_events,
            "events_in_window_per_pool": round(window_events / args.pools, 3),
            "events_total_per_pool": round(len(events) / args.pools, 3),
            "event_reasons_in_window": dict((reasons - reasons_before).most_common()),
            "event_reasons_total": dict(reasons.most_common()),
            "other_components_event_reasons_in_window": dict(others.most_common(10)),
            "log_bytes_in_window": log_bytes,
            "log_bytes_per_minute": round(log_bytes / elapsed_min),
            "log_lines_total": len(lines),
            "log_lines_by_logger": dict(loggers.most_common(8)),
            "operator_cpu_cores_in_window": round((cpu_after - cpu_before) / (elapsed_min * 60), 3),
            "operator_rss_mb": round(rss),
            "operator_peak_rss_mb": round(peak),
            "requests_in_window": dict(
                sorted(((k, v) for k, v in requests.items() if v > 0), key=lambda kv: -kv[1])[:15]
            ),
        }
        print(json.dumps(result, indent=2))
        out = ROOT / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        (out / f"soak-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(
            f"soak: pools={args.pools} minutes={elapsed_min:.1f} "
            f"status_patches_per_pool_min={per_pool_min:.2f} "
            f"events_per_pool={window_events / args.pools:.2f} "
            f"log_bytes_per_min={log_bytes / elapsed_min:.0f}"
        )
        return 0
    finally:
        kube_scale.stop_all(operator, cluster, server, workdir, keep=args.keep)


def _logger_of(line: str) -> str:
    try:
        return str(json.loads(line).get("logger", "?"))
    except ValueError:
        return "(not json)"


if __name__ == "__main__":
    sys.exit(main())
