"""Leader election on a Lease: one leader, a standby that takes over, and a fence on writes.

The electors talk to the API emulator (its Lease answers 409 to a PUT on a stale
resourceVersion, as the API server does); their clocks are fake, so "15 s later" is a number.
The last tests run two real operators against the emulator.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workerfleet_operator.shell import credentials, kube, leader

from tests.workerfleet_operator.conftest import (
    NAMESPACE,
    OperatorRunner,
    QueueRedis,
    build_pool,
    build_secret,
    wait_until,
)
from tests.workerfleet_operator.emulator import Emulator

TIMING = leader.LeaseTiming(15.0, 10.0, 2.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def elector(kubeconfig: Path, identity: str, clock: FakeClock) -> leader.LeaderElector:
    info = credentials.load_kubeconfig_login(str(kubeconfig))
    client = kube.KubeClient(info, retry=kube.RetryPolicy(attempts=1))
    return leader.LeaderElector(
        client, NAMESPACE, "workerfleet-operator", identity, TIMING, clock=clock
    )


async def given_a_leader(kubeconfig: Path, clock: FakeClock) -> leader.LeaderElector:
    """Replica "a", holding the Lease."""
    a = elector(kubeconfig, "a", clock)
    assert await a.try_acquire_or_renew()
    return a


async def given_a_leader_and_a_standby(
    kubeconfig: Path, clock: FakeClock
) -> tuple[leader.LeaderElector, leader.LeaderElector]:
    """Replica "a" holding the Lease, and "b" that has read it held."""
    a, b = await given_a_leader(kubeconfig, clock), elector(kubeconfig, "b", clock)
    assert not await b.try_acquire_or_renew()
    return a, b


def lease(emulator: Emulator) -> dict[str, Any]:
    found = emulator.get("leases", NAMESPACE, "workerfleet-operator", group="coordination.k8s.io")
    assert found is not None
    spec: dict[str, Any] = found["spec"]
    return spec


async def test_the_first_replica_takes_the_lease_and_the_second_waits(
    emulator: Emulator, kubeconfig: Path
) -> None:
    clock = FakeClock()
    a, b = elector(kubeconfig, "a", clock), elector(kubeconfig, "b", clock)
    try:
        # Given no Lease, when a tries, it creates it and leads
        assert await a.try_acquire_or_renew()
        assert a.may_write() and lease(emulator)["holderIdentity"] == "a"
        # When b tries while a renews every retry period, b never leads
        for _ in range(20):
            clock.now += TIMING.retry_period_seconds
            assert await a.try_acquire_or_renew()
            assert not await b.try_acquire_or_renew()
            assert not b.may_write()
        assert lease(emulator)["holderIdentity"] == "a"
    finally:
        await a.client.close()
        await b.client.close()


async def test_a_standby_takes_over_only_after_a_lease_duration_without_renewal(
    emulator: Emulator, kubeconfig: Path
) -> None:
    clock = FakeClock()
    a, b = elector(kubeconfig, "a", clock), elector(kubeconfig, "b", clock)
    try:
        assert await a.try_acquire_or_renew()
        assert not await b.try_acquire_or_renew()  # b observes a's record now
        # When a stops renewing (killed), b keeps trying
        clock.now += TIMING.lease_duration_seconds - 0.1
        assert not await b.try_acquire_or_renew()
        clock.now += 0.2
        # Then b takes over once the record has not moved for a lease duration
        assert await b.try_acquire_or_renew()
        assert lease(emulator)["holderIdentity"] == "b"
        assert lease(emulator)["leaseTransitions"] == 1
        # And a, had it survived, is fenced: its renew deadline passed before b could take over
        assert not a.may_write()
        assert TIMING.renew_deadline_seconds < TIMING.lease_duration_seconds
    finally:
        await a.client.close()
        await b.client.close()


async def test_the_leader_stops_writing_when_it_cannot_renew_within_the_deadline(
    emulator: Emulator, kubeconfig: Path
) -> None:
    clock = FakeClock()
    a = elector(kubeconfig, "a", clock)
    try:
        assert await a.try_acquire_or_renew()
        clock.now += TIMING.renew_deadline_seconds - 0.01
        assert a.may_write()
        # When the renewals fail (the API server refuses the Lease)
        emulator.inject_failure("GET", r"/leases/workerfleet-operator$", 503, count=5)
        assert not await a.try_acquire_or_renew()
        clock.now += 0.02
        # Then writes are refused from the deadline on, and stay refused
        assert not a.may_write()
        guarded = kube.KubeClient(
            credentials.load_kubeconfig_login(str(kubeconfig)), fence=a.may_write
        )
        try:
            body = build_secret("s", "redis://127.0.0.1:1/0")
            try:
                await kube.apply_object(guarded, body)
                raise AssertionError("a fenced write was sent")
            except kube.FencedError:
                pass
        finally:
            await guarded.close()
        assert emulator.get("secrets", NAMESPACE, "s") is None
    finally:
        await a.client.close()


async def test_a_released_lease_is_taken_at_the_next_try(
    emulator: Emulator, kubeconfig: Path
) -> None:
    clock = FakeClock()
    a, b = elector(kubeconfig, "a", clock), elector(kubeconfig, "b", clock)
    try:
        assert await a.try_acquire_or_renew()
        assert not await b.try_acquire_or_renew()
        # When a stops cleanly, it stops writing and empties the holder
        await a.release()
        assert not a.may_write() and lease(emulator)["holderIdentity"] == ""
        # Then b leads at its next try, without waiting a lease duration
        clock.now += TIMING.retry_period_seconds
        assert await b.try_acquire_or_renew()
    finally:
        await a.client.close()
        await b.client.close()


async def test_two_racing_standbys_cannot_both_lead(emulator: Emulator, kubeconfig: Path) -> None:
    clock = FakeClock()
    a, b, c = (elector(kubeconfig, n, clock) for n in "abc")
    try:
        assert await a.try_acquire_or_renew()
        assert not await b.try_acquire_or_renew()
        assert not await c.try_acquire_or_renew()
        clock.now += TIMING.lease_duration_seconds + 1
        results = await asyncio.gather(b.try_acquire_or_renew(), c.try_acquire_or_renew())
        assert sorted(results) == [False, True]
        assert lease(emulator)["holderIdentity"] in {"b", "c"}
    finally:
        for e in (a, b, c):
            await e.client.close()


def test_only_the_leader_reconciles_and_the_standby_takes_over_when_it_stops(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given two operators electing a leader on one Lease
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    election = {
        "leader_election": True,
        "lease_namespace": NAMESPACE,
        "lease_duration_seconds": 3.0,
        "renew_deadline_seconds": 2.0,
        "retry_period_seconds": 0.5,
    }
    first = operator(leader_identity="first", **election)
    wait_until(
        lambda: emulator.get(
            "leases", NAMESPACE, "workerfleet-operator", group="coordination.k8s.io"
        ),
        message="no Lease",
    )
    second = operator(leader_identity="second", **election)
    # When a pool is created
    emulator.create("workerpools", build_pool("emails"), group="workerfleet.io")
    wait_until(
        lambda: emulator.get("deployments", NAMESPACE, "emails", group="apps"),
        timeout=20,
        message="the leader made no Deployment",
    )

    def reconciles(runner: OperatorRunner) -> float:
        return sum(
            s.value
            for m in runner.metrics.reconcile_total.collect()
            for s in m.samples
            if s.name.endswith("_total")
        )

    # Then only the leader reconciled
    wait_until(lambda: reconciles(first) >= 1, message="the leader counted no reconcile")
    assert reconciles(second) == 0
    # When the leader stops (it releases the Lease) and the pool's spec changes
    first.stop()
    new_image = "registry.example/email-worker:1.5.0"
    patch = {"spec": {"image": new_image}}
    emulator.patch("workerpools", NAMESPACE, "emails", patch, group="workerfleet.io")
    # Then the standby leads and writes the change
    wait_until(lambda: lease_holder(emulator) == "second", timeout=10, message="no takeover")

    def image() -> str:
        dep = emulator.get("deployments", NAMESPACE, "emails", group="apps") or {}
        return str(dep["spec"]["template"]["spec"]["containers"][0]["image"])

    wait_until(lambda: image() == new_image, timeout=20, message="the new leader did not write")
    wait_until(lambda: reconciles(second) >= 1, message="the new leader counted no reconcile")


def lease_holder(emulator: Emulator) -> str:
    found = emulator.get("leases", NAMESPACE, "workerfleet-operator", group="coordination.k8s.io")
    return str(((found or {}).get("spec") or {}).get("holderIdentity"))


async def test_a_standby_reads_often_and_tries_right_when_the_lease_expires(
    emulator: Emulator, kubeconfig: Path
) -> None:
    clock = FakeClock()
    a, b = elector(kubeconfig, "a", clock), elector(kubeconfig, "b", clock)
    try:
        assert await a.try_acquire_or_renew()
        assert not await b.try_acquire_or_renew()
        # far from expiry: every half retry period (+ up to 10 %)
        assert 1.0 <= b.standby_delay() <= 1.1
        # close to expiry: no later than the expiry itself
        clock.now += TIMING.lease_duration_seconds - 0.3
        assert b.standby_delay() <= 0.31
        clock.now += b.standby_delay()
        assert await b.try_acquire_or_renew()
    finally:
        await a.client.close()
        await b.client.close()


async def test_a_standby_waits_out_the_lease_duration_the_leader_wrote_not_its_own(
    emulator: Emulator, kubeconfig: Path
) -> None:
    # Given a leader started with longer timings (lease 30 s, renew deadline 25 s) and a
    # standby of a newer rollout with the defaults (lease 15 s): a helm upgrade under way
    clock = FakeClock()
    longer = leader.LeaseTiming(30.0, 25.0, 2.0)
    a, b = elector(kubeconfig, "a", clock), elector(kubeconfig, "b", clock)
    a.timing = longer
    try:
        assert await a.try_acquire_or_renew()
        assert lease(emulator)["leaseDurationSeconds"] == 30
        assert not await b.try_acquire_or_renew()
        # When the leader stalls past the standby's own lease duration, within its deadline
        clock.now += TIMING.lease_duration_seconds + 1
        assert a.may_write()
        # Then the standby does not take over while the leader may still write
        assert not await b.try_acquire_or_renew()
        assert lease(emulator)["holderIdentity"] == "a"
        # and takes over once the duration the leader wrote has passed, the leader fenced
        clock.now += longer.lease_duration_seconds - TIMING.lease_duration_seconds
        assert not a.may_write()
        assert await b.try_acquire_or_renew()
        assert lease(emulator)["holderIdentity"] == "b"
    finally:
        await a.client.close()
        await b.client.close()


async def test_a_deleted_lease_is_not_taken_from_a_live_leader(
    emulator: Emulator, kubeconfig: Path
) -> None:
    # Given a leader renewing its Lease and a standby that saw it held
    clock = FakeClock()
    a, b = await given_a_leader_and_a_standby(kubeconfig, clock)
    try:
        # When the Lease is deleted (kubectl delete lease, a namespace clean-up)
        emulator.delete("leases", NAMESPACE, "workerfleet-operator", group="coordination.k8s.io")
        clock.now += TIMING.retry_period_seconds / 2
        # Then the standby does not create it and lead while the leader may still write
        assert not await b.try_acquire_or_renew()
        assert a.may_write() and not b.may_write()
        # and the leader, at its next renewal, creates it again and goes on leading
        clock.now += TIMING.retry_period_seconds / 2
        assert await a.try_acquire_or_renew()
        assert lease(emulator)["holderIdentity"] == "a"
        clock.now += TIMING.retry_period_seconds
        assert not await b.try_acquire_or_renew()
    finally:
        await a.client.close()
        await b.client.close()


async def test_a_leader_that_reads_another_holder_in_its_lease_stops_writing_at_once(
    emulator: Emulator, kubeconfig: Path
) -> None:
    # Given a leader
    clock = FakeClock()
    a = await given_a_leader(kubeconfig, clock)
    try:
        # When its Lease names another holder at its next renewal (written by hand, or taken
        # by a replica that judged it expired)
        patch = {"spec": {"holderIdentity": "b", "renewTime": leader.format_micro_time(5.0)}}
        emulator.patch(
            "leases", NAMESPACE, "workerfleet-operator", patch, group="coordination.k8s.io"
        )
        clock.now += TIMING.retry_period_seconds
        assert not await a.try_acquire_or_renew()
        # Then it stops writing now, not at its renew deadline 8 s later
        assert not a.may_write()
    finally:
        await a.client.close()
