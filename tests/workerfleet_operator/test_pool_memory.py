"""What a pool's controller keeps in memory of the objects it watches, times thousands of pools.

``make bench-operator`` on the real API server: the operator's RSS grows with every pool that
converges (~100 KB of Python objects per pool measured on the emulator), and a tenth of that was
``managedFields``: a tree of small dicts per field and per manager that nothing reads except the
owners of ``spec.replicas`` (the hand-over to the autoscaler's manager).
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import gc
import json
import tracemalloc
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml
from workerfleet_operator import api, plan
from workerfleet_operator.shell import config as config_module
from workerfleet_operator.shell import context, drift, kube, metrics, pool, reconcile, scaler

from tests.workerfleet_operator import conftest
from tests.workerfleet_operator import test_operator_autoscaling as autoscaling_test
from tests.workerfleet_operator.conftest import NAMESPACE, OperatorRunner, QueueRedis
from tests.workerfleet_operator.emulator import Emulator
from worker_runtime.brokers import base

UID = "0f6c1a52-0000-4000-8000-000000000001"
ROOT = Path(__file__).resolve().parents[2]


def _entry(manager: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "manager": manager,
        "operation": "Apply",
        "apiVersion": "apps/v1",
        "time": "2026-12-02T22:00:00Z",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:spec": spec},
    }


def _deployment() -> dict[str, Any]:
    template = {"f:template": {"f:spec": {"f:containers": {'k:{"name":"worker"}': {".": {}}}}}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "emails",
            "namespace": "team-a",
            "resourceVersion": "12",
            "generation": 1,
            "ownerReferences": [
                {
                    "apiVersion": "workerfleet.io/v1alpha1",
                    "kind": "WorkerPool",
                    "name": "emails",
                    "uid": UID,
                    "controller": True,
                },
            ],
            "managedFields": [
                _entry(kube.FIELD_MANAGER, {"f:replicas": {}, **template}),
                _entry(kube.REPLICAS_FIELD_MANAGER, {"f:replicas": {}}),
                _entry("kube-controller-manager", {"f:revisionHistoryLimit": {}}),
            ],
        },
        "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "worker"}]}}},
        "status": {"observedGeneration": 1, "replicas": 2},
    }


def _controller() -> pool.PoolController:
    ctx = context.build_context(config_module.OperatorConfig())
    controller = pool.PoolController(ctx, "team-a", "emails")
    controller.observe(
        {
            "apiVersion": "workerfleet.io/v1alpha1",
            "kind": "WorkerPool",
            "metadata": {
                "name": "emails",
                "namespace": "team-a",
                "uid": UID,
                "generation": 1,
                "resourceVersion": "10",
                "managedFields": [_entry("kubectl", {"f:queue": {}})],
            },
            "spec": {},
        }
    )
    return controller


def _kept_after_a_watch_event(live: dict[str, Any]) -> dict[str, Any]:
    """What a new pool controller keeps of its Deployment ``live`` after its watch event."""
    controller = _controller()
    controller.observe_deployment(live, deleted=False)
    assert controller.deployment is not None
    return controller.deployment


async def test_a_watched_deployment_is_kept_with_only_the_owners_of_its_replicas() -> None:
    # Given a pool's controller, when its Deployment's watch event arrives
    live = _deployment()
    kept = _kept_after_a_watch_event(live)
    # Then it keeps the Deployment without the managedFields nobody reads, but still knows who
    # owns spec.replicas (the hand-over to the autoscaler's manager depends on it)
    assert kube.owners_of_replicas(kept) == [kube.FIELD_MANAGER, kube.REPLICAS_FIELD_MANAGER]
    assert all(set(e) == {"manager", "fieldsV1"} for e in kept["metadata"]["managedFields"])
    assert kept["spec"] == live["spec"] and kept["status"] == live["status"]
    assert kept["metadata"]["ownerReferences"] == live["metadata"]["ownerReferences"]
    # and kopf's body is left as it was
    assert len(live["metadata"]["managedFields"]) == 3


async def test_a_watched_pool_is_kept_without_managed_fields() -> None:
    # Given a pool's controller that observed its pool (whose managedFields own no replicas)
    controller = _controller()
    # Then the body it keeps has no managedFields at all, and the rest as observed
    assert controller.body is not None
    assert "managedFields" not in controller.body["metadata"]
    assert controller.body["metadata"]["uid"] == UID


def _traced_bytes_per_item(build: Callable[[], object], count: int) -> float:
    """Python memory still held per item after building ``count`` of them (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [build() for _ in range(count)]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(kept) == count
    return held / count


def test_a_pools_metric_series_cost_about_a_kilobyte_not_a_child_object_per_series() -> None:
    # Given the operator's metrics and a poll's stats (every per-pool series gets a value)
    registry = prometheus_client.CollectorRegistry()
    operator_metrics = metrics.OperatorMetrics(registry)
    queue_stats = base.QueueStats(
        queue="q", now=1000.0, backlog=5, due_delayed=0, future_delayed=1, in_flight=2,
        dead_letter=3, oldest_job_age_seconds=4.0, enqueued_total=9, completed_total=4,
        failed_total=3, retried_total=0, dead_lettered_total=3, cancelled_total=0,
        workers_lost_total=0, workers_expired=0, workers=(), maxmemory_policy="noeviction",
    )  # fmt: skip
    names = iter(range(10**6))

    def bind_and_record() -> object:
        series = operator_metrics.bind_pool(("team-a", f"pool-{next(names)}", "q"))
        series.record_poll(
            queue_stats, desired=1, max_replicas=3, alert_threshold=1, oldest_job_age_target=0.0
        )
        series.record_replicas(1, 1)
        series.record_conditions([("Ready", "True", "Idle"), ("Degraded", "False", "AsExpected")])
        return series

    # When 500 pools are bound and polled
    per_pool = _traced_bytes_per_item(bind_and_record, 500)
    # Then each costs a record of numbers (~30 labelled prometheus children took ~14 KB), and
    # a scrape still shows every series of every pool
    assert per_pool < 3_000, per_pool
    scraped = prometheus_client.generate_latest(registry).decode()
    assert scraped.count('workerfleet_pool_backlog{namespace="team-a"') == 500
    assert scraped.count("workerfleet_pool_condition{") == 1000


def _full_sample_deployment() -> tuple[api.Pool, dict[str, Any]]:
    """The sample pool with every field (deploy/samples/full.yaml), parsed, and its Deployment."""
    body = yaml.safe_load((ROOT / "deploy" / "samples" / "full.yaml").read_text())
    body["metadata"].update(namespace="team-a", uid=UID, generation=1)
    parsed = api.parse_pool(body)
    assert isinstance(parsed, api.Pool)
    return parsed, plan.build_children(parsed, replicas=None)[0]


def test_a_kept_drift_reference_is_compact_and_still_tells_drift() -> None:
    # Given the drift reference of a full worker Deployment (the sample pool's)
    parsed, deployment = _full_sample_deployment()
    reference = drift.build_drift_reference(deployment, parsed)
    as_dicts = _traced_bytes_per_item(lambda: json.loads(json.dumps(reference)), 50)
    # When the controller keeps it between rounds
    kept_bytes = _traced_bytes_per_item(lambda: drift.PackedJSON(reference), 50)
    kept = drift.PackedJSON(reference)
    # Then it takes a fraction of the same reference as dicts
    assert kept_bytes < as_dicts / 3, (kept_bytes, as_dicts)
    # and still says whether a Deployment keeps every field we own
    assert drift.is_subset(kept, copy.deepcopy(deployment))
    edited = copy.deepcopy(deployment)
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = "someone/else:1"
    assert not drift.is_subset(kept, edited)
    assert kept == drift.PackedJSON(copy.deepcopy(reference))


async def test_between_rounds_a_pool_keeps_its_bodies_packed_and_reads_them_as_seen() -> None:
    # Given a pool's controller that kept its Deployment from a watch event
    controller = _controller()
    live = _deployment()
    controller.observe_deployment(live, deleted=False)
    # When its loop goes back to waiting
    controller.forget_round_state()
    # Then it holds both bodies as packed JSON only, no dicts
    assert controller.kept_body.view is None and controller.kept_deployment.view is None
    assert isinstance(controller.kept_body.packed, drift.PackedJSON)
    assert isinstance(controller.kept_deployment.packed, drift.PackedJSON)
    # and the next round reads them as they were seen (less the managedFields)
    assert controller.deployment is not None and controller.body is not None
    assert controller.deployment["spec"] == live["spec"]
    assert controller.body["metadata"]["uid"] == UID
    # so an unchanged template is still no rollout, and a changed one is
    unchanged = {**live, "metadata": {**live["metadata"], "generation": 2}}
    assert drift.track_rollout_generation(1, controller.deployment, unchanged) == 1
    changed = copy.deepcopy(unchanged)
    changed["spec"]["template"]["spec"]["containers"][0]["image"] = "worker:2"
    assert drift.track_rollout_generation(1, controller.deployment, changed) == 2


def test_kept_bodies_take_a_fraction_of_the_same_bodies_as_dicts() -> None:
    # Given a full worker Deployment (the sample pool's), as a watch event brings it
    _, deployment = _full_sample_deployment()
    as_dicts = _traced_bytes_per_item(lambda: json.loads(json.dumps(deployment)), 50)
    # When a controller keeps it between rounds
    controller = _controller()

    def kept() -> object:
        controller.deployment = json.loads(json.dumps(deployment))
        controller.forget_round_state()
        return controller.kept_deployment.packed

    # Then it takes a fraction of the dicts
    assert _traced_bytes_per_item(kept, 50) < as_dicts / 3


def test_between_rounds_a_running_pool_holds_no_parsed_spec_and_keeps_its_policy(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a running pool polling its queue every second
    runner = operator()
    autoscaling_test.start_pool(emulator, queue_redis, "emails", pollingIntervalSeconds=1.0)
    controller = runner.context.pools[(NAMESPACE, "emails")]
    # When it waits between rounds
    # Then it holds no parsed spec (~9 KB of pydantic models per pool), only its scaling
    # policy, which each poll reads without parsing the spec again
    conftest.wait_until(
        lambda: controller.parsed is None and controller.policy is not None,
        timeout=10,
        message="the parsed spec is still held between rounds",
    )
    assert controller.policy is not None
    assert controller.policy.polling_interval_seconds == 1.0


def test_an_unchanged_poll_unpacks_no_kept_body_and_parses_no_spec(
    emulator: Emulator,
    queue_redis: QueueRedis,
    operator: Callable[..., OperatorRunner],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an operator whose polls, body unpacks and spec parses are recorded in order
    happened: list[str] = []
    real_poll, real_unpack, real_parse = scaler.poll_queue, drift.PackedJSON.unpack, api.parse_pool

    async def recorded_poll(*args: Any) -> None:
        await real_poll(*args)
        happened.append("poll")

    def recorded_unpack(self: drift.PackedJSON) -> Any:
        happened.append("unpack")
        return real_unpack(self)

    def recorded_parse(body: dict[str, Any]) -> api.Pool | api.InvalidPool:
        happened.append("parse")
        return real_parse(body)

    monkeypatch.setattr(scaler, "poll_queue", recorded_poll)
    monkeypatch.setattr(drift.PackedJSON, "unpack", recorded_unpack)
    monkeypatch.setattr(api, "parse_pool", recorded_parse)
    operator()
    # When its pool, converged on an idle queue, polls every second
    autoscaling_test.start_pool(emulator, queue_redis, "emails", pollingIntervalSeconds=1.0)

    def three_quiet_polls() -> bool:
        polls = [i for i, what in enumerate(happened) if what == "poll"]
        return len(polls) >= 4 and all(w == "poll" for w in happened[polls[-4] :])

    # Then polls that find nothing changed read the facts kept beside the packed bodies (a
    # worker Deployment unpacks in ~60 µs, a spec parses in ~50): three in a row touch neither
    conftest.wait_until(
        three_quiet_polls, timeout=30, message=f"every poll unpacked or parsed: {happened[-12:]}"
    )


def _observed(ctx: context.OperatorContext, name: str, uid: str) -> pool.PoolController:
    """A controller of pool ``name`` (the test suite's sample spec) that observed it once."""
    controller = pool.PoolController(ctx, NAMESPACE, name)
    body = conftest.build_pool(name)
    body["metadata"].update(uid=uid, generation=1, resourceVersion="10")
    controller.observe(body)
    return controller


def test_the_scaling_policy_is_parsed_once_per_spec_change(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a pool's controller that parsed its spec once, then dropped it between rounds
    controller = _observed(context.build_context(config_module.OperatorConfig()), "emails", UID)
    body = controller.body
    assert body is not None
    parses: list[object] = []
    real_parse = api.parse_pool

    def counting_parse(body: dict[str, Any]) -> api.Pool | api.InvalidPool:
        parses.append(body)
        return real_parse(body)

    monkeypatch.setattr(api, "parse_pool", counting_parse)
    first = controller.scaling_policy()
    assert first is not None
    controller.forget_round_state()
    # When the next rounds ask for the scaling policy
    again = [controller.scaling_policy() for _ in range(3)]
    # Then it is the one kept, not parsed again
    assert len(parses) == 1 and all(p is first for p in again)
    # and a new generation of the spec is parsed anew
    controller.observe({**body, "metadata": {**body["metadata"], "generation": 2}})
    controller.scaling_policy()
    assert len(parses) == 2


async def test_a_burst_of_new_pools_is_reconciled_a_few_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an operator that reconciles at most two pools at once, and a reconcile that takes
    # a while (a loaded API server)
    ctx = context.build_context(config_module.OperatorConfig(max_concurrent_reconciles=2))
    running: list[str] = []
    most = 0
    reconciled: list[str] = []
    unpacked_while_waiting: list[str] = []
    controllers: list[pool.PoolController] = []

    async def slow_reconcile(controller: pool.PoolController) -> None:
        nonlocal most
        running.append(controller.name)
        most = max(most, len(running))
        await asyncio.sleep(0.02)
        unpacked_while_waiting.extend(
            c.name for c in controllers if c.name not in running and c.kept_body.view is not None
        )
        running.remove(controller.name)
        reconciled.append(controller.name)

    monkeypatch.setattr(reconcile, "reconcile", slow_reconcile)
    for i in range(6):
        controllers.append(_observed(ctx, f"pool-{i}", f"uid-{i}"))
    # When six new pools start at once
    for controller in controllers:
        controller.start()
    try:
        for _ in range(200):
            if len(reconciled) == 6:
                break
            await asyncio.sleep(0.01)
    finally:
        for controller in controllers:
            await controller.stop()
    # Then every pool was reconciled, never more than two at once
    assert sorted(reconciled) == [f"pool-{i}" for i in range(6)]
    assert most == 2
    # and the others, waiting for their turn or done, held their pool packed, nothing unpacked
    assert unpacked_while_waiting == []


_KOPF_CAUSE: contextvars.ContextVar[object] = contextvars.ContextVar("kopf_cause")


async def test_a_pools_loop_does_not_keep_the_event_that_started_it_alive() -> None:
    # Given kopf's handler of a pool's first event, whose context variables hold that event
    # (kopf sets its cause, with the whole body, patch and logger, while a handler runs)
    class Cause:
        pass

    cause = Cause()
    gone = weakref.ref(cause)
    controller = _controller()

    def handler(event_cause: object) -> None:
        _KOPF_CAUSE.set(event_cause)
        controller.start()  # what the WorkerPool event handler does

    # When the handler starts the pool's loop and returns
    contextvars.copy_context().run(handler, cause)
    del cause
    await asyncio.sleep(0)
    gc.collect()
    try:
        # Then the running loop keeps nothing of that event
        assert controller.task is not None and not controller.task.done()
        assert gone() is None
    finally:
        await controller.stop()


async def test_a_pools_wake_wakes_its_waiting_loop_once_set_and_not_after_a_clear() -> None:
    # Given a pool's wake with its loop waiting on it
    wake = pool.Wake()
    waiting = asyncio.create_task(wake.wait())
    await asyncio.sleep(0)
    assert not waiting.done()
    # When an event sets it (twice: two watch events in a row)
    wake.set()
    wake.set()
    await asyncio.sleep(0)
    # Then the loop wakes, and a wait before the next clear returns at once
    assert waiting.done() and wake.is_set()
    await asyncio.wait_for(wake.wait(), 1.0)
    # while after a clear the loop waits again
    wake.clear()
    again = asyncio.create_task(wake.wait())
    await asyncio.sleep(0)
    assert not again.done()
    again.cancel()


async def test_a_standby_keeps_what_it_observes_packed() -> None:
    # Given a pool's controller whose loop is not running (a standby operator observes every
    # pool and Deployment, and starts the loops only when it leads)
    controller = _controller()
    # When the pool's Deployment is observed
    controller.observe_deployment(_deployment(), deleted=False)
    # Then neither body is held unpacked, both are kept
    assert controller.task is None
    assert controller.kept_body.view is None and controller.kept_deployment.view is None
    assert controller.kept_body.packed is not None
    assert controller.kept_deployment.packed is not None
