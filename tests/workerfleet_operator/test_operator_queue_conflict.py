"""Two WorkerPools on one queue: reported as QueueConflict, and only the first one scales.

Queue keys carry no Kubernetes namespace on purpose (a queue is a name producers share, and
they do not know about namespaces), so two pools naming the same queue on the same Redis would
each scale to the whole backlog and take each other's jobs. The operator sees every pool it
watches, detects the sharing, and lets the pool created first scale alone.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from workerfleet_operator.shell import scaler

from tests.workerfleet_operator.conftest import (
    GROUP,
    NAMESPACE,
    OperatorRunner,
    QueueRedis,
    build_pool,
    build_secret,
    condition,
    events_for,
    wait_until,
)
from tests.workerfleet_operator.emulator import Emulator
from tests.workerfleet_operator.test_operator_autoscaling import enqueue


def _pool(emu: Emulator, name: str, namespace: str = NAMESPACE) -> dict[str, Any] | None:
    return emu.get("workerpools", namespace, name, group=GROUP)


def _replicas(emu: Emulator, name: str, namespace: str = NAMESPACE) -> int:
    dep = emu.get("deployments", namespace, name, group="apps")
    return -1 if dep is None else int(dep["spec"]["replicas"])


def _conflict(emu: Emulator, name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
    return condition(_pool(emu, name, namespace), "QueueConflict")


def _create(emu: Emulator, name: str, namespace: str = NAMESPACE) -> None:
    body = build_pool(
        name,
        queue="emails",
        namespace=namespace,
        autoscaling={"targetBacklogPerReplica": 100, "targetUtilization": 0, "maxReplicas": 10},
    )
    emu.create("workerpools", body, group=GROUP)


def given_two_pools_in_conflict(
    emu: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> OperatorRunner:
    """The operator, pool "a-first" on queue "emails", then "b-second" on it too: both
    report QueueConflict=True, and "b-second" holds."""
    emu.create("secrets", build_secret("redis-creds", queue_redis.url))
    runner = operator()
    _create(emu, "a-first")
    wait_until(lambda: _replicas(emu, "a-first") == 0, message="first pool not created")
    _create(emu, "b-second")
    for name in ("a-first", "b-second"):
        wait_until(
            lambda name=name: _conflict(emu, name).get("status") == "True",
            message=f"no QueueConflict on {name}",
        )
    return runner


def test_two_pools_on_one_queue_report_the_conflict_and_only_the_first_one_scales(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given two pools reading queue "emails" on the same Redis: one in this namespace, one in
    # another namespace through its own Secret with the same URL
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url, namespace="team-b"))
    operator()
    _create(emulator, "a-first")
    wait_until(lambda: _replicas(emulator, "a-first") == 0, message="first pool not created")
    _create(emulator, "b-second", namespace="team-b")
    # Then both report QueueConflict=True, naming the other pool, with a Warning Event each
    first = wait_until(
        lambda: (c := _conflict(emulator, "a-first")).get("status") == "True" and c,
        message="no QueueConflict on the first pool",
    )
    second = wait_until(
        lambda: (c := _conflict(emulator, "b-second", "team-b")).get("status") == "True" and c,
        message="no QueueConflict on the second pool",
    )
    assert first["reason"] == second["reason"] == "QueueShared"
    assert "team-b/b-second" in first["message"]
    assert f"{NAMESPACE}/a-first" in second["message"] and "holds" in second["message"]
    wait_until(
        lambda: [e for e in events_for(emulator, "a-first") if e["reason"] == "QueueShared"],
        message="no Warning Event on the first pool",
    )
    # When 600 jobs arrive on the shared queue
    enqueue(queue_redis, "emails", 600)
    # Then only the first pool scales for them; the second holds instead of doubling the workers
    wait_until(lambda: _replicas(emulator, "a-first") == 4, message="first pool did not scale")
    wait_until(lambda: _replicas(emulator, "a-first") == 6, message="first pool did not scale")
    assert _replicas(emulator, "b-second", "team-b") == 0


def test_a_pool_that_holds_for_another_on_its_queue_still_scales_down_but_never_up(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given two pools in conflict on queue "emails" ("b-second" holds), "b-second" coming down
    # as soon as its queue is idle (no scale-down window, no step limit)
    given_two_pools_in_conflict(emulator, queue_redis, operator)
    at_once = {
        "autoscaling": {"scaleDown": {"stabilizationWindowSeconds": 0, "maxStepPercent": 100}}
    }
    emulator.patch("workerpools", NAMESPACE, "b-second", {"spec": at_once}, group=GROUP)
    # When "b-second" runs 4 replicas on the idle queue, as its first poll after an operator
    # restart may leave it (it scaled for the whole backlog before "a-first" recorded itself
    # again); here they are set by hand
    four = {"spec": {"replicas": 4}}
    emulator.patch("deployments", NAMESPACE, "b-second", four, group="apps", manager="kubectl")
    # Then it scales down to 0 (before: held at 4 for as long as the conflict lasted)
    wait_until(lambda: _replicas(emulator, "b-second") == 0, message="the holding pool stayed up")
    # And a backlog still scales only the first pool: the holding one never goes up
    enqueue(queue_redis, "emails", 600)
    wait_until(lambda: _replicas(emulator, "a-first") == 6, message="first pool did not scale")
    assert _replicas(emulator, "b-second") == 0


def test_the_conflict_clears_when_the_other_pool_is_deleted(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given two pools in conflict on queue "emails"
    given_two_pools_in_conflict(emulator, queue_redis, operator)
    # When the second pool is deleted
    emulator.delete("workerpools", NAMESPACE, "b-second", group=GROUP)
    # Then the first pool's condition turns False
    cleared = wait_until(
        lambda: (c := _conflict(emulator, "a-first")).get("status") == "False" and c,
        message="QueueConflict stayed True",
    )
    assert cleared["reason"] == "QueueNotShared"


def test_a_pool_recorded_while_another_pool_polls_its_queue_leaves_no_lasting_conflict(
    emulator: Emulator,
    queue_redis: QueueRedis,
    operator: Callable[..., OperatorRunner],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A poll reads which pools share its queue, then reads the queue (an await), then plans;
    # an unchanged poll skips planning. Given an operator where "b-second"'s polls wait until a
    # poll of "a-first" is reading the queue, that read lasts until "b-second" has recorded
    # itself, and the test can hold "a-first"'s later polls (a held poll is one not due yet)
    armed = threading.Event()
    a_reading = threading.Event()
    hold = threading.Event()
    held_polls_done: list[str] = []
    real_poll = scaler.poll_queue
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    runner = operator()
    ctx = runner.context
    real_fetch = ctx.queues.fetch_observation

    async def poll_in_order(controller: Any, policy: Any) -> None:
        deadline = time.monotonic() + 10
        while controller.name == "b-second" and not a_reading.is_set():
            assert time.monotonic() < deadline, "a-first never read its queue"
            await asyncio.sleep(0.01)
        if controller.name == "a-first" and hold.is_set():
            return
        was_armed = controller.name == "a-first" and armed.is_set()
        await real_poll(controller, policy)
        if was_armed and not armed.is_set():
            held_polls_done.append(controller.name)
            hold.set()  # "a-first" polls no more until the test lets it

    async def fetch_until_b_recorded(*args: Any, **kwargs: Any) -> Any:
        task = asyncio.current_task()
        if armed.is_set() and task is not None and task.get_name().endswith("/a-first"):
            armed.clear()
            a_reading.set()
            deadline = time.monotonic() + 10
            while ctx.find_queue_sharing((NAMESPACE, "b-second")) is None:
                assert time.monotonic() < deadline, "b-second never recorded itself"
                await asyncio.sleep(0.01)
        return await real_fetch(*args, **kwargs)

    monkeypatch.setattr(scaler, "poll_queue", poll_in_order)
    monkeypatch.setattr(ctx.queues, "fetch_observation", fetch_until_b_recorded)
    # When "a-first" and "b-second" on queue "emails" are created, and "b-second" records
    # itself during the first poll of "a-first" (one that plans: nothing to compare it with)
    armed.set()
    _create(emulator, "a-first")
    _create(emulator, "b-second")
    wait_until(lambda: held_polls_done, message="the poll of a-first was not held")
    # and "b-second" is deleted before "a-first" polls again
    emulator.delete("workerpools", NAMESPACE, "b-second", group=GROUP)
    wait_until(
        lambda: (NAMESPACE, "b-second") not in ctx.pools, message="b-second's loop did not stop"
    )
    hold.clear()
    # Then "a-first" reports no conflict: the poll planned with the sharing it remembered, so
    # no conflict it planned can outlive the pool that caused it
    cleared = wait_until(
        lambda: (c := _conflict(emulator, "a-first")).get("status") == "False" and c,
        message="QueueConflict stayed True",
    )
    assert cleared["reason"] == "QueueNotShared"


def test_a_conflict_the_reconcile_wrote_clears_at_the_next_poll_once_the_other_pool_is_gone(
    emulator: Emulator,
    queue_redis: QueueRedis,
    operator: Callable[..., OperatorRunner],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an operator whose polls of pool "a-first" the test can hold (a held poll is one
    # that is not due yet), counted as they run
    hold = threading.Event()
    polls: list[str] = []
    real_poll = scaler.poll_queue

    async def held_poll(controller: Any, policy: Any) -> None:
        if controller.name == "a-first" and hold.is_set():
            return
        await real_poll(controller, policy)
        polls.append(controller.name)

    monkeypatch.setattr(scaler, "poll_queue", held_poll)
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    runner = operator()
    # and "a-first" alone on queue "emails", polled until its status settled (two polls after
    # its first QueueConflict=False), then no more
    _create(emulator, "a-first")
    wait_until(
        lambda: _conflict(emulator, "a-first").get("status") == "False",
        message="no QueueConflict=False on the lone pool",
    )
    settled = polls.count("a-first") + 2
    wait_until(lambda: polls.count("a-first") >= settled, message="a-first did not poll")
    hold.set()
    # and "b-second" on the same queue, which has read it
    _create(emulator, "b-second")
    wait_until(
        lambda: _conflict(emulator, "b-second").get("status") == "True",
        message="no QueueConflict on the second pool",
    )
    # When "a-first" is reconciled (not polled): its status now says QueueConflict=True
    first = runner.context.pools[(NAMESPACE, "a-first")]
    assert first.task is not None

    def reconcile_now() -> None:
        first.dirty = True
        first.wake.set()

    first.task.get_loop().call_soon_threadsafe(reconcile_now)
    wait_until(
        lambda: _conflict(emulator, "a-first").get("status") == "True",
        message="the reconcile did not report the conflict",
    )
    # and "b-second" is deleted, and "a-first" is polled again
    emulator.delete("workerpools", NAMESPACE, "b-second", group=GROUP)
    wait_until(
        lambda: (NAMESPACE, "b-second") not in runner.context.pools,
        message="b-second's loop did not stop",
    )
    hold.clear()
    # Then that poll clears the condition, though nothing it reads differs from its last plan
    cleared = wait_until(
        lambda: (c := _conflict(emulator, "a-first")).get("status") == "False" and c,
        message="QueueConflict stayed True",
    )
    assert cleared["reason"] == "QueueNotShared"


def test_pools_on_different_queues_or_different_redis_databases_do_not_conflict(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given pool "emails" on db 0 and pool "emails-db1" on the same queue name but db 1
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    db1 = queue_redis.url.rsplit("/", 1)[0] + "/1"
    emulator.create("secrets", build_secret("redis-db1", db1))
    operator()
    _create(emulator, "a-first")
    other = build_pool("emails-db1", queue="emails", secret="redis-db1")
    emulator.create("workerpools", other, group=GROUP)
    # Then neither reports a conflict
    for name in ("a-first", "emails-db1"):
        found = wait_until(
            lambda name=name: (
                (c := _conflict(emulator, name)).get("status") in ("True", "False") and c
            ),
            message=f"no QueueConflict condition on {name}",
        )
        assert found["status"] == "False", found
