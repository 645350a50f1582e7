"""Autoscaler reaction benchmark: backlog appears in real Redis -> replica change written.

Run by ``make bench-autoscaler`` (and ``make bench``). Starts one real redis-server, the
Kubernetes API emulator of the test suite, and the real operator (its kopf handlers and pool
loops, in a thread of this process so that its stats reads can be counted). Creates N pools at
the product's default ``pollingIntervalSeconds`` (5 s), waits until every pool has read its queue
once, then for each pool, at an independent random moment inside one polling interval, enqueues a
burst of jobs and records the time until the emulator commits a higher ``spec.replicas`` for that
pool's Deployment. Reports p50/max beside KEDA's documented worst case with default settings
(30 s ScaledObject polling + 15 s HPA sync = 45 s), and the Redis cost: round trips per pool per
poll, measured as Redis's own ``INFO commandstats`` call counts over a quiet window divided by the
operator's stats reads in that window. Ends with the line
``autoscaler: reaction_p50_s=X reaction_max_s=Y redis_round_trips_per_poll=Z``.
Never asserts timing (house rule for benchmarks).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis
import redis.asyncio.connection

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workerfleet_operator.local import embedded_redis  # noqa: E402
from workerfleet_operator.shell import config as config_module  # noqa: E402
from workerfleet_operator.shell import context, main  # noqa: E402

from bench import harness as bench_harness  # noqa: E402
from tests.workerfleet_operator import conftest as fixtures  # noqa: E402
from worker_runtime import producer  # noqa: E402
from worker_runtime.brokers.redis import stats  # noqa: E402

NAMESPACE = fixtures.NAMESPACE
KEDA_POLLING_S = 30.0
HPA_SYNC_S = 15.0


def script_calls(client: redis.Redis) -> int:
    """Top-level script invocations Redis executed (EVALSHA/EVAL/FCALL), from INFO commandstats.

    Commands a script runs inside Redis are counted there too, under their own names, so only
    the script entry points say how many requests clients sent.
    """
    info = client.info("commandstats")
    names = (
        "cmdstat_evalsha",
        "cmdstat_eval",
        "cmdstat_fcall",
        "cmdstat_fcall_ro",
        "cmdstat_evalsha_ro",
    )
    return sum(int(info[k]["calls"]) for k in names if k in info)


def build_pool(name: str, interval: float) -> dict[str, Any]:
    return fixtures.build_pool(
        name,
        concurrency=8,
        autoscaling={"minReplicas": 0, "maxReplicas": 20, "pollingIntervalSeconds": interval},
    )


def queue_reachable(obj: dict[str, Any]) -> bool:
    return fixtures.condition(obj, "QueueReachable").get("status") == "True"


def main_bench() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24, help="pools, one burst each (>= 20)")
    parser.add_argument("--interval", type=float, default=5.0, help="pollingIntervalSeconds")
    parser.add_argument("--burst", type=int, default=500, help="jobs per burst")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    try:
        harness = bench_harness.start_harness("wf-bench-autoscaler-", NAMESPACE)
    except embedded_redis.EmbeddedRedisError as exc:
        print(exc, file=sys.stderr)
        return 2
    emu, kubeconfig, url = harness.emulator, harness.kubeconfig, harness.url
    client = redis.Redis.from_url(url)

    # A counting connection: every request the operator's asyncio Redis clients send (a pipeline
    # is one send, so this is the number of network round trips).
    sends = [0]
    connection_class = redis.asyncio.connection.AbstractConnection
    original_send = connection_class.send_packed_command

    async def counting_send(self: Any, command: Any, check_health: bool = True) -> None:
        sends[0] += 1
        await original_send(self, command, check_health)

    connection_class.send_packed_command = counting_send  # type: ignore[method-assign]

    # Count the operator's stats reads (one per pool per poll) at the runtime's API.
    reads = [0]
    original = stats.fetch_queue_stats

    async def counting(*a: Any, **kw: Any) -> stats.QueueStats:
        reads[0] += 1
        return await original(*a, **kw)

    stats.fetch_queue_stats = counting  # type: ignore[assignment]

    # The moment each pool's Deployment first gets more replicas, from the emulator's commits.
    scaled_at: dict[str, float] = {}

    def on_commit(plural: str, event: dict[str, Any]) -> None:
        if plural != "deployments":
            return
        obj = event["object"]
        name = obj["metadata"]["name"]
        if name not in scaled_at and int(obj.get("spec", {}).get("replicas", 0)) > 0:
            scaled_at[name] = time.monotonic()

    emu.add_listener(on_commit)

    cfg = config_module.OperatorConfig(
        kubeconfig=str(kubeconfig), health_port=0, metrics_port=0, log_level="warning"
    )
    stop, ready = threading.Event(), threading.Event()
    ctx = context.build_context(cfg)
    thread = threading.Thread(
        target=main.run_operator,
        kwargs={
            "cfg": cfg,
            "stop_flag": stop,
            "ready_flag": ready,
            "configure_logging": False,
            "context": ctx,
        },
        daemon=True,
    )
    thread.start()
    final_line = ""
    try:
        ready.wait(30)
        names = [f"pool-{i:02d}" for i in range(args.trials)]
        for name in names:
            emu.create("workerpools", build_pool(name, args.interval), group="workerfleet.io")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if emu.count("workerpools", queue_reachable, group="workerfleet.io") == len(names):
                break
            time.sleep(0.1)
        else:
            print("pools did not read their queues within 60 s", file=sys.stderr)
            return 1

        # Redis cost: a quiet window with only the operator polling.
        window = 3 * args.interval
        calls0, reads0, sends0 = script_calls(client), reads[0], sends[0]
        time.sleep(window)
        calls1, reads1, sends1 = script_calls(client), reads[0], sends[0]
        polls = max(reads1 - reads0, 1)
        round_trips = (sends1 - sends0) / polls
        scripts_per_poll = (calls1 - calls0) / polls

        # Trials: each pool gets one burst at a random phase of its polling cycle.
        offsets = sorted((rng.uniform(0, args.interval), name) for name in names)
        enqueued_at: dict[str, float] = {}
        sync = producer.SyncProducer
        start = time.monotonic()
        for offset, name in offsets:
            delay = start + offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            jobs = [
                producer.JobSpec(task="send-email", payload={"n": i}) for i in range(args.burst)
            ]
            sync(client, name).enqueue_many(jobs)
            enqueued_at[name] = time.monotonic()  # the backlog is fully there from now on
        deadline = time.monotonic() + 4 * args.interval + 10
        while len(scaled_at) < len(names) and time.monotonic() < deadline:
            time.sleep(0.05)
        reactions = sorted(
            scaled_at[n] - enqueued_at[n] for n in names if n in scaled_at and n in enqueued_at
        )
        missing = len(names) - len(reactions)
        p50 = statistics.median(reactions) if reactions else float("nan")
        worst = max(reactions) if reactions else float("nan")
        keda = KEDA_POLLING_S + HPA_SYNC_S
        print(
            f"trials={len(reactions)} (missing {missing}) burst={args.burst} jobs, "
            f"pollingIntervalSeconds={args.interval:g}"
        )
        print(
            f"reaction (backlog in Redis -> spec.replicas written): "
            f"p50={p50:.2f}s p90={reactions[int(0.9 * (len(reactions) - 1))]:.2f}s max={worst:.2f}s"
        )
        print(
            f"KEDA defaults, documented worst case: {KEDA_POLLING_S:g}s polling + {HPA_SYNC_S:g}s "
            f"HPA sync = {keda:g}s  ->  workerfleet max is {keda / worst:.1f}x faster, "
            f"p50 {keda / p50:.1f}x faster"
        )
        print(
            f"redis cost: {sends1 - sends0} requests sent for {polls} stats reads in {window:g}s "
            f"= {round_trips:.2f} round trips per pool per poll "
            f"(Redis saw {scripts_per_poll:.2f} script calls per poll)"
        )
        final_line = (
            f"autoscaler: reaction_p50_s={p50:.2f} reaction_max_s={worst:.2f} "
            f"redis_round_trips_per_poll={round_trips:.2f}"
        )
        return 0 if not missing else 1
    finally:
        stop.set()
        thread.join(30)
        client.close()
        harness.stop()
        if final_line:
            sys.stderr.flush()
            print(final_line, flush=True)  # after shutdown noise: the summary is the last line


if __name__ == "__main__":
    sys.exit(main_bench())
