"""A pool deleted while the operator's watch missed it stops, instead of living on as a ghost.

kopf lists again after a watch expired (410 Gone) and sends no DELETED event for a pool deleted
in the gap. Its controller then ran on: garbage collection deleted the pool's Deployment, that
DELETED event woke the pool, the reconcile created the Deployment again (owned by the dead uid,
its workers taking jobs until the next collection), its status writes were answered 404 and
ignored, and it kept its place among its queue's readers, holding any other pool on that queue.

The API emulator plays the missed event: the operator's open WorkerPool watch (or every watch)
is made silent, connected but dropping events, before the pool is deleted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.workerfleet_operator.conftest import (
    GROUP,
    NAMESPACE,
    OperatorRunner,
    QueueRedis,
    build_pool,
    build_secret,
    wait_for_condition,
    wait_until,
)
from tests.workerfleet_operator.emulator import Emulator
from tests.workerfleet_operator.test_operator_autoscaling import enqueue
from tests.workerfleet_operator.test_operator_queue_conflict import (
    _conflict,
    _replicas,
    given_two_pools_in_conflict,
)


class SilencingEmulator(Emulator):
    """The API emulator, able to silence the open watches of one kind only."""

    def stall_watches_of(self, plural: str, group: str = "") -> int:
        """Make the open watches of ``plural`` silent: connected, events dropped."""
        with self._lock:
            queues = [id(q) for _, q in self._watchers[(group, plural)]]
            self._stalled.update(queues)
            return len(queues)


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with SilencingEmulator() as emu:
        yield emu


def _record_deployments_created(emu: Emulator) -> list[tuple[str, str]]:
    """(name, owner uid) of every Deployment created from now on, as the API server saw it."""
    created: list[tuple[str, str]] = []

    def listen(plural: str, event: dict[str, Any]) -> None:
        if plural == "deployments" and event["type"] == "ADDED":
            meta = event["object"]["metadata"]
            owners = [ref["uid"] for ref in meta.get("ownerReferences") or []]
            created.append((meta["name"], owners[0] if owners else ""))

    emu.add_listener(listen)
    return created


def _requests(emu: Emulator, method: str, path_end: str, code: int | None = None) -> int:
    return sum(
        1
        for m, p, c in list(emu.request_log)
        if m == method and p.endswith(path_end) and (code is None or c == code)
    )


def test_a_pool_deleted_unseen_stops_when_its_deployment_goes_and_frees_its_queue(
    emulator: SilencingEmulator,
    queue_redis: QueueRedis,
    operator: Callable[..., OperatorRunner],
) -> None:
    # Given two pools on queue "emails": "a-first" scales it, "b-second" holds (QueueConflict)
    runner = given_two_pools_in_conflict(emulator, queue_redis, operator)
    # and the operator's WorkerPool watch silent: the next DELETED of a pool never reaches it
    assert emulator.stall_watches_of("workerpools", GROUP) >= 1
    created = _record_deployments_created(emulator)
    # When "a-first" is deleted (garbage collection deletes its Deployment, and that is seen)
    emulator.delete("workerpools", NAMESPACE, "a-first", group=GROUP)
    # Then the operator stops the pool, and "b-second" reads the queue alone: its conflict clears
    wait_until(
        lambda: (NAMESPACE, "a-first") not in runner.context.pools,
        message="the deleted pool's controller lives on",
    )
    cleared = wait_until(
        lambda: (c := _conflict(emulator, "b-second")).get("status") == "False" and c,
        message="the second pool is still held by the deleted one",
    )
    assert cleared["reason"] == "QueueNotShared"
    # and "b-second" scales for a backlog, as the only pool of the queue
    enqueue(queue_redis, "emails", 600)
    wait_until(lambda: _replicas(emulator, "b-second") >= 4, message="second pool did not scale")
    # and the deleted pool's Deployment was never created again
    assert [name for name, _ in created if name == "a-first"] == []
    assert emulator.get("deployments", NAMESPACE, "a-first", group="apps") is None


def test_a_pool_deleted_and_created_again_unseen_gets_no_deployment_of_the_dead_uid(
    emulator: SilencingEmulator,
    queue_redis: QueueRedis,
    operator: Callable[..., OperatorRunner],
) -> None:
    # Given a converged pool, its operator's watches reconnecting every 2 s
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    runner = operator(watch_server_timeout_seconds=2)
    first = emulator.create("workerpools", build_pool("emails"), group=GROUP)
    wait_for_condition(emulator, "emails", "Ready", message="not Ready")
    # and its WorkerPool watch silent until it reconnects
    assert emulator.stall_watches_of("workerpools", GROUP) >= 1
    created = _record_deployments_created(emulator)
    # When the pool is deleted and created again under its name (another uid), unseen
    emulator.delete("workerpools", NAMESPACE, "emails", group=GROUP)
    second = emulator.create("workerpools", build_pool("emails"), group=GROUP)
    # Then the new pool gets its Deployment once the watch is back, owned by the new uid
    new_uid = second["metadata"]["uid"]
    wait_until(lambda: ("emails", new_uid) in created, message="no Deployment for the new pool")
    wait_for_condition(emulator, "emails", "Ready", message="the new pool is not Ready")
    # and none was ever created for the deleted one (its controller was stopped when its
    # Deployment went, not left to create it again)
    assert ("emails", first["metadata"]["uid"]) not in created, created
    assert runner.context.pools[(NAMESPACE, "emails")].pool_facts.uid == new_uid


def test_a_pool_deleted_while_every_watch_was_silent_stops_at_its_first_status_write(
    emulator: SilencingEmulator,
    queue_redis: QueueRedis,
    operator: Callable[..., OperatorRunner],
) -> None:
    # Given pool "emails" (one fixed replica) and pool "witness" on a Secret of its own, both
    # polling their queues every second (each poll reads its Secret), converged
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    emulator.create("secrets", build_secret("witness-creds", queue_redis.url))
    runner = operator()
    body = build_pool("emails")
    body["spec"]["autoscaling"] = {"mode": "disabled", "replicas": 1, "pollingIntervalSeconds": 1}
    emulator.create("workerpools", body, group=GROUP)
    emulator.create("workerpools", build_pool("witness", secret="witness-creds"), group=GROUP)
    for name in ("emails", "witness"):
        wait_for_condition(emulator, name, "QueueReachable", message=f"{name} never read")
    # and every watch of the operator silent: neither the pool's DELETED nor its Deployment's
    # ever reaches it
    emulator.stall_open_watches()
    status = "/workerpools/emails/status"
    written = _requests(emulator, "PATCH", status)
    # When the pool is deleted, and jobs arrive on its queue (its next poll has news to write)
    emulator.delete("workerpools", NAMESPACE, "emails", group=GROUP)
    enqueue(queue_redis, "emails", 5)
    # Then its status write is answered 404, and the operator stops the pool there
    wait_until(lambda: _requests(emulator, "PATCH", status, 404) >= 1, message="no 404")
    wait_until(
        lambda: (NAMESPACE, "emails") not in runner.context.pools,
        message="the deleted pool's controller lives on",
    )
    # and three polls of the witness later, the deleted pool has read its Secret and written
    # its status no more
    reads = _requests(emulator, "GET", "/secrets/redis-creds")
    witness = _requests(emulator, "GET", "/secrets/witness-creds")
    wait_until(
        lambda: _requests(emulator, "GET", "/secrets/witness-creds") >= witness + 3,
        message="the witness did not poll",
    )
    assert _requests(emulator, "GET", "/secrets/redis-creds") == reads
    assert _requests(emulator, "PATCH", status) == written + 1
    # and its Redis client is closed: only the witness's is left
    assert runner.context.queues.open_client_count() == 1
