"""What one busy pool costs the API server and the log, times a thousand pools.

A pool with a backlog and no progress sees its oldest-job age grow on every poll; each status
write comes back as a watch event. These tests pin the guards: status numbers that move every
poll are written at most every ``status_refresh_seconds`` (conditions and replica changes at
once), log lines stay lean (kopf's settings object is not printed, nor a line per watch event),
resyncs are jittered, and the operator's own API client has a QPS/burst budget.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path

import kopf
import pytest
from workerfleet_operator.shell import config as config_module
from workerfleet_operator.shell import context, credentials, handlers, kube, main, scaler

from tests.workerfleet_operator.conftest import (
    NAMESPACE,
    OperatorRunner,
    QueueRedis,
    build_pool,
    build_secret,
    condition,
    wait_until,
)
from tests.workerfleet_operator.emulator import Emulator
from tests.workerfleet_operator.test_operator_autoscaling import enqueue, pool, start_pool
from worker_runtime import logs

REFRESH = 30.0  # the default (see the config test below)


def _status_writes(emulator: Emulator, name: str) -> int:
    path = f"/workerpools/{name}/status"
    return sum(1 for m, p, _ in list(emulator.request_log) if m == "PATCH" and p.endswith(path))


def test_a_backlog_that_only_ages_is_written_to_status_at_most_once_per_refresh_interval(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a pool at its maxReplicas of 1, polling every second, with a backlog nobody works
    # on (its oldest job ages a second per poll), and the operator's default refresh interval
    operator(status_refresh_seconds=REFRESH)
    enqueue(queue_redis, "emails", 500)
    start_pool(emulator, queue_redis, "emails", maxReplicas=1, minReplicas=1)
    wait_until(
        lambda: ((pool(emulator, "emails") or {}).get("status") or {}).get("desiredReplicas") == 1,
        message="pool never scaled to 1",
    )
    # When it polls for eight more seconds
    before = _status_writes(emulator, "emails")
    time.sleep(8.0)  # the subject: eight polls that change nothing but the age
    # Then the status was not rewritten every poll: at most one refresh in that time
    assert _status_writes(emulator, "emails") - before <= 1


def test_a_replica_change_is_written_to_status_at_once_despite_the_refresh_interval(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a pool polling every second under a long refresh interval
    operator(status_refresh_seconds=3600.0)
    start_pool(emulator, queue_redis, "emails")
    # When a backlog arrives
    enqueue(queue_redis, "emails", 450)
    # Then the new desired count (and the backlog that caused it) is in status within seconds
    wait_until(
        lambda: (
            (s := (pool(emulator, "emails") or {}).get("status") or {}).get("desiredReplicas") == 4
            and (s.get("queue") or {}).get("backlog") == 450
        ),
        timeout=10,
        message="scale-up not written to status",
    )


def test_a_new_autoscaled_pool_is_ready_with_its_queue_s_numbers_in_one_status_write(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given the operator, and a queue with 7 jobs waiting
    operator()
    enqueue(queue_redis, "emails", 7)
    # When a new pool polling every 5 minutes is created for it (the emulator rolls its
    # Deployment out at once)
    start_pool(emulator, queue_redis, "emails", pollingIntervalSeconds=300, maxReplicas=1)
    # Then it is Ready with the backlog in status, after one status write (not the reconcile's
    # and then the first poll's)
    wait_until(
        lambda: (
            condition(pool(emulator, "emails"), "Ready").get("status") == "True"
            and ((pool(emulator, "emails") or {}).get("status") or {})
            .get("queue", {})
            .get("backlog")
            == 7
        ),
        message="the pool never reported Ready with its backlog",
    )
    time.sleep(1.0)  # a second write would follow the first at once
    assert _status_writes(emulator, "emails") == 1


def _create_slow_polling_pool(emulator: Emulator, queue_redis: QueueRedis) -> None:
    """Pool ``emails`` polling every 5 minutes, created without waiting for any condition."""
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    body = build_pool("emails", autoscaling={"pollingIntervalSeconds": 300})
    emulator.create("workerpools", body, group="workerfleet.io")


def test_a_status_left_to_a_poll_that_fails_is_written_by_the_reconcile(
    emulator: Emulator,
    queue_redis: QueueRedis,
    operator: Callable[..., OperatorRunner],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given polls that fail outright, and a Deployment controller that never reports (no
    # later Deployment event wakes the pool up)
    async def failing_poll(*_: object) -> None:
        raise RuntimeError("the poll broke")

    monkeypatch.setattr(scaler, "poll_queue", failing_poll)
    emulator.fake_deployment_controller = False
    operator()
    # When a new pool polling every 5 minutes is created (its reconcile leaves the status to
    # the poll due right after it)
    _create_slow_polling_pool(emulator, queue_redis)
    # Then its status is written anyway, by the reconcile, not five minutes later (Ready at
    # once: the new Deployment wants no pods, so there is no rollout to wait for)
    wait_until(
        lambda: condition(pool(emulator, "emails"), "Ready").get("reason") == "ScaledToZero",
        timeout=10,
        message="no status while the poll failed",
    )


def test_a_status_left_to_a_poll_whose_write_is_refused_is_written_by_the_reconcile(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given an API server that refuses the first status write (a 422 is not retried)
    emulator.inject_failure("PATCH", r"/workerpools/emails/status$", 422)
    operator()
    # When a new pool polling every 5 minutes is created (its first status is the poll's)
    _create_slow_polling_pool(emulator, queue_redis)
    # Then the reconcile writes it at once, not at a later poll that sees nothing new
    wait_until(
        lambda: condition(pool(emulator, "emails"), "Ready").get("status") == "True",
        timeout=10,
        message="no status after the poll's write was refused",
    )
    assert emulator.injected_failures_left() == 0


def test_a_kopf_object_log_line_does_not_carry_kopf_s_settings() -> None:
    # Given the record kopf's object logger makes for a handled watch event
    record = logging.LogRecord(
        "kopf.objects",
        logging.INFO,
        __file__,
        1,
        "Handler 'workerpool_event' succeeded.",
        None,
        None,
    )
    record.settings = kopf.OperatorSettings()
    record.k8s_skip = False
    record.k8s_ref = {"apiVersion": "workerfleet.io/v1alpha1", "kind": "WorkerPool", "name": "a"}
    # When the operator's JSON formatter writes it
    line = logs.JsonFormatter().format(record)
    # Then it is one short line: the message and the object, not the whole settings object
    assert "settings" not in line and "OperatorSettings" not in line
    assert '"name":"a"' in line
    assert len(line.encode()) < 400, len(line.encode())


def test_kopf_copies_no_watched_body_to_diff_it_since_every_handler_only_watches() -> None:
    # Given the operator's kopf registry and settings
    registry = kopf.OperatorRegistry()
    handlers.register(registry, context.build_context(config_module.OperatorConfig()))
    settings = handlers.build_settings(config_module.OperatorConfig())
    # Then no handler needs kopf's diff of a body (no on.create/update/resume/delete, no
    # daemon or timer): the one condition under which the diff base may be skipped
    assert not registry._changing.get_all_handlers()
    assert not registry._spawning.get_all_handlers()
    assert registry._watching.get_all_handlers()
    # And the diff base kopf builds for every watched body is empty, read from no annotation
    body = kopf.Body({"metadata": {"name": "a", "annotations": {"x": "y"}}, "spec": {"a": 1}})
    assert settings.persistence.diffbase_storage.build(body=body) == {}
    assert settings.persistence.diffbase_storage.fetch(body=body) is None


def test_at_info_level_kopf_does_not_log_a_line_per_handled_watch_event() -> None:
    main.configure_operator_logs(config_module.OperatorConfig(log_level="info"))
    try:
        assert not logging.getLogger("kopf.objects").isEnabledFor(logging.INFO)
        assert logging.getLogger("kopf.objects").isEnabledFor(logging.WARNING)
        assert logging.getLogger("workerfleet.operator").isEnabledFor(logging.INFO)
    finally:
        logging.getLogger("kopf.objects").setLevel(logging.NOTSET)
    main.configure_operator_logs(config_module.OperatorConfig(log_level="debug"))
    try:
        assert logging.getLogger("kopf.objects").isEnabledFor(logging.DEBUG)
    finally:
        logging.getLogger("kopf.objects").setLevel(logging.NOTSET)


def test_resyncs_of_pools_started_together_are_spread_over_a_tenth_of_the_interval() -> None:
    rng = random.Random(7)
    delays = [context.jittered_delay(300.0, rng) for _ in range(1000)]
    assert all(270.0 <= d <= 330.0 for d in delays)
    # spread, not lockstep: the thousand pools land in every 6 s slice of the 60 s band
    assert {int((d - 270.0) // 6) for d in delays} == set(range(10))


def test_the_operator_s_api_client_spends_at_most_its_burst_then_qps(
    emulator: Emulator, kubeconfig: Path
) -> None:
    # Given the operator's client with a budget of 5 requests/s and a burst of 5, on a fake clock
    slept: list[float] = []
    clock = [0.0]

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    info = credentials.load_kubeconfig_login(str(kubeconfig))
    limiter = kube.RequestBudget(qps=5.0, burst=5, clock=lambda: clock[0], sleep=fake_sleep)

    async def fifteen_reads() -> int:
        client = kube.KubeClient(info, budget=limiter)
        try:
            for _ in range(15):
                await kube.fetch_object(client, kube.build_ref("Secret", NAMESPACE, "none"))
        finally:
            await client.close()
        return client.request_count

    # When it sends fifteen requests at once
    sent = asyncio.run(fifteen_reads())
    # Then the first five went at once and the other ten waited 0.2 s each (2 s in all)
    assert sent == 15
    assert sum(slept) == pytest.approx(2.0)
    assert len(slept) == 10


def test_the_operator_config_has_a_client_budget_and_a_status_refresh_by_default() -> None:
    cfg = config_module.OperatorConfig()
    assert cfg.api_qps > 0 and cfg.api_burst >= 1
    assert cfg.status_refresh_seconds == REFRESH
