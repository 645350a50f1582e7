"""The builtin autoscaler end to end: real Redis backlog, operator, API emulator (issue 4 #2)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio

from tests.workerfleet_operator.conftest import (
    NAMESPACE,
    OperatorRunner,
    QueueRedis,
    build_pool,
    build_secret,
    condition,
    events_for,
    wait_for_condition,
    wait_until,
)
from tests.workerfleet_operator.emulator import Emulator
from worker_runtime import producer
from worker_runtime.brokers.redis import queue as engine

POLL = 1.0
COST = "controller.kubernetes.io/pod-deletion-cost"


def pool(emu: Emulator, name: str) -> dict[str, Any] | None:
    return emu.get("workerpools", NAMESPACE, name, group="workerfleet.io")


def replicas(emu: Emulator, name: str) -> int | None:
    dep = emu.get("deployments", NAMESPACE, name, group="apps")
    return None if dep is None else int(dep["spec"]["replicas"])


def enqueue(server: QueueRedis, queue_name: str, count: int) -> None:
    jobs = [producer.JobSpec(task="send-email", payload={"n": i}) for i in range(count)]
    producer.SyncProducer(server.client(), queue_name).enqueue_many(jobs)


def start_pool(emu: Emulator, server: QueueRedis, name: str, **autoscaling: Any) -> None:
    emu.create("secrets", build_secret("redis-creds", server.url))
    settings = {
        "pollingIntervalSeconds": POLL,
        "targetBacklogPerReplica": 100,
        "maxReplicas": 10,
        "scaleUp": {"stabilizationWindowSeconds": 0, "maxStepPercent": 100, "maxStepPods": 4},
    }
    settings.update(autoscaling)
    emu.create("workerpools", build_pool(name, autoscaling=settings), group="workerfleet.io")
    wait_for_condition(emu, name, "QueueReachable", message="pool never read its queue")


def scale_up_to_four(emu: Emulator, server: QueueRedis, name: str) -> None:
    enqueue(server, name, 400)
    wait_until(lambda: replicas(emu, name) == 4, timeout=10, message="no scale-up to 4")


def test_a_burst_of_jobs_raises_replicas_within_one_polling_interval(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given an idle pool at zero replicas polling its queue every second
    operator()
    start_pool(emulator, queue_redis, "emails")
    assert replicas(emulator, "emails") == 0
    # When 450 jobs arrive (one script call: a poll cannot see half of them)
    started = time.monotonic()
    enqueue(queue_redis, "emails", 450)
    # Then replicas are raised within one polling interval (plus scheduling slack on a busy box)
    wait_until(
        lambda: (replicas(emulator, "emails") or 0) > 0,
        timeout=5,
        interval=0.05,
        message="no scale-up",
    )
    reaction = time.monotonic() - started
    assert reaction <= POLL + 1.0, f"reaction {reaction:.2f}s"
    # And the decision is explained in status and in a ScaledUp Event
    wait_until(
        lambda: [e for e in events_for(emulator, "emails") if e["reason"] == "ScaledUp"],
        message="no Event",
    )
    scaled = next(e for e in events_for(emulator, "emails") if e["reason"] == "ScaledUp")
    assert "0→4" in scaled["message"] and "450" in scaled["message"]
    status = wait_until(
        lambda: (
            (s := pool(emulator, "emails")["status"]).get("queue", {}).get("backlog") == 450 and s
        ),
        message="status.queue not updated",
    )
    assert status["desiredReplicas"] == 4 and status["autoscaling"]["chosen"] in (
        "backlog",
        "capacity",
    )
    assert status["autoscaling"]["rawDesired"] > 4 and status["autoscaling"]["clampedBy"]


def create_pods(emu: Emulator, name: str, suffixes: Sequence[str]) -> list[str]:
    """Pods carrying the pool Deployment's template labels (the emulator runs no ReplicaSet)."""
    dep = emu.get("deployments", NAMESPACE, name, group="apps")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    pods = [f"{name}-7c9f-{suffix}" for suffix in suffixes]
    for pod in pods:
        emu.create(
            "pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod, "namespace": NAMESPACE, "labels": labels},
                "spec": {"containers": [{"name": "worker", "image": "x"}]},
            },
        )
    return pods


def given_four_pods_one_busy(emu: Emulator, server: QueueRedis) -> list[str]:
    """Pool ``emails`` scaled to 4 by a backlog (a 1 s scale-down window, 50 % steps), with 4
    pods whose workers heartbeat: one busy (2 jobs, the oldest 20 s old), three idle."""
    start_pool(
        emu, server, "emails", scaleDown={"stabilizationWindowSeconds": 1, "maxStepPercent": 50}
    )
    scale_up_to_four(emu, server, "emails")
    pods = create_pods(emu, "emails", ("busy0", "idle1", "idle2", "idle3"))
    now = time.time()
    _heartbeats(
        server,
        "emails",
        [
            engine.WorkerBeat(
                worker_id=f"w-{name}",
                pod_name=name,
                concurrency=4,
                in_flight=2 if "busy" in name else 0,
                processed=10,
                busy_seconds=5.0,
                started_at=now - 60,
                oldest_job_started_at=now - 20 if "busy" in name else None,
                draining=False,
                ttl_seconds=120,
            )
            for name in pods
        ],
    )
    return pods


def _heartbeats(server: QueueRedis, queue_name: str, beats: list[engine.WorkerBeat]) -> None:
    async def run() -> None:
        client = redis.asyncio.Redis.from_url(server.url)
        try:
            engine_client = engine.QueueClient(client, queue_name)
            for beat in beats:
                await engine_client.heartbeat(beat)
        finally:
            await client.aclose()

    asyncio.run(run())


def _drain(server: QueueRedis, queue_name: str) -> int:
    async def run() -> int:
        client = redis.asyncio.Redis.from_url(server.url)
        done = 0
        try:
            engine_client = engine.QueueClient(client, queue_name)
            for _ in range(100):  # bounded: 100 batches of 100
                jobs = await engine_client.fetch("drainer", 100)
                if not jobs:
                    break
                await asyncio.gather(*(engine_client.ack(job) for job in jobs))
                done += len(jobs)
            await engine_client.aclose()
        finally:
            await client.aclose()
        return done

    return asyncio.run(run())


def test_after_the_queue_drains_it_scales_down_removing_idle_pods_first(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a pool scaled to 4 by a backlog, with 4 pods: one busy worker, three idle ones
    operator()
    pods = given_four_pods_one_busy(emulator, queue_redis)
    # When the queue is drained and the scale-down window has passed
    assert _drain(queue_redis, "emails") == 400
    wait_until(lambda: (replicas(emulator, "emails") or 4) < 4, timeout=10, message="no scale-down")
    # Then every idle pod was marked cheaper to delete than the busy one
    costs = {
        p["metadata"]["name"]: int(p["metadata"]["annotations"][COST])
        for p in emulator.list("pods", NAMESPACE, labels="workerfleet.io/pool=emails")
        if COST in (p["metadata"].get("annotations") or {})
    }
    assert set(costs) == set(pods)
    busy = costs["emails-7c9f-busy0"]
    assert all(costs[p] < busy for p in pods if "idle" in p)
    # And the annotations were written before replicas were lowered
    log = list(emulator.request_log)
    last_pod_patch = max(i for i, (m, p, _) in enumerate(log) if m == "PATCH" and "/pods/" in p)
    lowering = [
        i for i, (m, p, _) in enumerate(log) if m == "PATCH" and p.endswith("/deployments/emails")
    ]
    assert lowering and last_pod_patch < lowering[-1]
    wait_until(
        lambda: [e for e in events_for(emulator, "emails") if e["reason"] == "ScaledDown"],
        message="no ScaledDown Event",
    )


def test_a_wall_clock_step_neither_skips_the_scale_down_window_nor_hides_the_scale_time(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a pool scaled to 4 by a backlog, with a 6 s scale-down window
    window = 6.0
    runner = operator()
    start_pool(
        emulator,
        queue_redis,
        "emails",
        scaleDown={"stabilizationWindowSeconds": window, "maxStepPercent": 50},
    )
    scale_up_to_four(emulator, queue_redis, "emails")
    # When the wall clock steps an hour ahead (NTP, a resumed VM) and the queue drains
    runner.context.wall_clock = lambda: time.time() + 3600.0
    drained_at = time.monotonic()
    assert _drain(queue_redis, "emails") == 400
    # Then the pool still waits out the window before scaling down (a recommendation of 4
    # recorded up to one poll before the drain leaves the window at the earliest window - POLL
    # later; the step did not empty the window at once)
    wait_until(lambda: (replicas(emulator, "emails") or 4) < 4, timeout=20, message="no scale-down")
    assert time.monotonic() - drained_at >= window - POLL - 0.5

    # And the scale is recorded on the (stepped) wall clock, as people read status times (the
    # status is written after the replicas, so wait for that write rather than race it)
    def last_scale_time() -> float:
        shown = (pool(emulator, "emails") or {})["status"]["autoscaling"]["lastScaleTime"]
        parsed = dt.datetime.strptime(shown, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
        return parsed.timestamp()

    wait_until(
        lambda: last_scale_time() > time.time() + 3000.0,
        timeout=5,
        message="lastScaleTime not on the stepped wall clock",
    )


def test_when_redis_is_unreachable_replicas_are_held_and_queue_reachable_is_false(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a pool scaled to 4 by a backlog
    operator()
    start_pool(emulator, queue_redis, "emails")
    scale_up_to_four(emulator, queue_redis, "emails")
    # When Redis goes away
    queue_redis.stop()
    # Then QueueReachable turns False with a Warning Event ...
    cond = wait_until(
        lambda: (
            (c := condition(pool(emulator, "emails"), "QueueReachable")).get("status") == "False"
            and c
        ),
        timeout=10,
        message="QueueReachable stayed True",
    )
    assert cond["reason"] == "QueueUnreachable"
    wait_until(
        lambda: [e for e in events_for(emulator, "emails") if e["reason"] == "QueueUnreachable"],
        message="no Warning Event",
    )
    # ... and the decision says it holds, over several polls, without touching replicas
    wait_until(
        lambda: (
            "holding 4 replicas"
            in (pool(emulator, "emails")["status"]["autoscaling"]["reason"] or "")
        ),
        message="no hold decision recorded",
    )
    writes = sum(
        1
        for m, p, _ in list(emulator.request_log)
        if m == "PATCH" and p.endswith("/deployments/emails")
    )
    time.sleep(3 * POLL)  # the subject is "held over time": three polling intervals of it
    assert replicas(emulator, "emails") == 4
    assert writes == sum(
        1
        for m, p, _ in list(emulator.request_log)
        if m == "PATCH" and p.endswith("/deployments/emails")
    )
