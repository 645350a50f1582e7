"""What the operator exports about a pool that cannot be served: its conditions, why its queue is
unreachable, and which pool's reconciles fail (the inputs of the alerts in deploy/alerts/)."""

from __future__ import annotations

from collections.abc import Callable

import redis
from workerfleet_operator.shell import config as config_module
from workerfleet_operator.shell import context
from workerfleet_operator.shell import pool as pool_mod

from tests.workerfleet_operator.conftest import (
    GROUP,
    NAMESPACE,
    OperatorRunner,
    QueueRedis,
    build_pool,
    build_secret,
    condition,
    events_for,
    given_a_running_pool,
    wait_until,
)
from tests.workerfleet_operator.emulator import Emulator

POOL = {"namespace": NAMESPACE, "pool": "emails", "queue": "emails"}


def samples(runner: OperatorRunner, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of ``name`` in the operator's registry: sorted label pairs -> value."""
    found = {}
    for family in runner.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def pool_sample(runner: OperatorRunner, name: str, **labels: str) -> dict[str, float]:
    """The samples of ``name`` for pool emails, keyed by their labels beyond the pool's."""
    wanted = {**POOL, **labels}
    result = {}
    for key, value in samples(runner, name).items():
        pairs = dict(key)
        if all(pairs.get(k) == v for k, v in wanted.items()):
            extra = ",".join(f"{k}={v}" for k, v in key if k not in wanted)
            result[extra] = value
    return result


def test_a_pool_whose_secret_is_deleted_exports_queue_unreachable_and_its_conditions(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a running pool whose queue was read
    runner = given_a_running_pool(emulator, queue_redis, operator)
    wait_until(
        lambda: pool_sample(runner, "workerfleet_pool_queue_reachable") == {"reason=QueueRead": 1},
        message="the reachable queue was never exported with its reason",
    )
    # When its Secret is deleted
    emulator.delete("secrets", NAMESPACE, "redis-creds")
    wait_until(
        lambda: (
            condition(emulator.get("workerpools", NAMESPACE, "emails", group=GROUP), "Ready").get(
                "reason"
            )
            == "SecretNotFound"
        ),
        message="the pool never reported its missing Secret",
    )
    # Then its series do not freeze: the queue is exported unreachable with the reason, and the
    # pool's conditions are exported, one series per type
    reachable = wait_until(
        lambda: (
            (r := pool_sample(runner, "workerfleet_pool_queue_reachable"))
            == {"reason=SecretNotFound": 0}
            and r
        ),
        message="queue_reachable froze at its last value",
    )
    assert reachable == {"reason=SecretNotFound": 0}
    conditions = pool_sample(runner, "workerfleet_pool_condition")
    assert conditions["reason=SecretNotFound,status=False,type=Ready"] == 1
    assert conditions["reason=SecretNotFound,status=True,type=Degraded"] == 1
    assert len([k for k in conditions if "type=Ready" in k]) == 1


def test_a_recreated_secret_brings_the_queue_back_to_reachable(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a pool whose Secret is missing
    runner = given_a_running_pool(emulator, queue_redis, operator)
    emulator.delete("secrets", NAMESPACE, "redis-creds")
    wait_until(
        lambda: (
            pool_sample(runner, "workerfleet_pool_queue_reachable") == {"reason=SecretNotFound": 0}
        ),
        message="never unreachable",
    )
    # When the Secret comes back
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    # Then the queue is reachable again and the old reason's series is gone
    wait_until(
        lambda: pool_sample(runner, "workerfleet_pool_queue_reachable") == {"reason=QueueRead": 1},
        timeout=20,
        message="never reachable again",
    )
    ready = pool_sample(runner, "workerfleet_pool_condition", type="Ready")
    assert [k.split(",")[1] for k in ready] == ["status=True"], ready


def test_reconcile_errors_are_counted_for_the_pool_that_fails(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given two pools, one of which the API server refuses to apply (500, three times), and an
    # operator whose client tries each request once (its own retries would hide the errors)
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    emulator.inject_failure("PATCH", r"/deployments/invoices$", 500, count=3)
    runner = operator(api_retry_attempts=1)
    emulator.create("workerpools", build_pool("emails"), group=GROUP)
    emulator.create("workerpools", build_pool("invoices"), group=GROUP)
    # When both converge
    for name in ("emails", "invoices"):
        wait_until(
            lambda name=name: (
                condition(emulator.get("workerpools", NAMESPACE, name, group=GROUP), "Ready").get(
                    "status"
                )
                == "True"
            ),
            timeout=20,
            message=f"{name} not Ready",
        )
    # Then the errors carry the failing pool's name, and the healthy pool has none
    errors = samples(runner, "workerfleet_operator_reconcile_errors_total")
    by_pool = {dict(k)["pool"]: v for k, v in errors.items()}
    assert by_pool.get("invoices", 0) >= 3
    assert by_pool.get("emails", 0) == 0
    results = samples(runner, "workerfleet_operator_reconcile_total")
    assert {dict(k)["pool"] for k in results} == {"emails", "invoices"}


def test_a_pool_on_a_redis_that_may_evict_is_degraded_with_a_warning_and_a_metric(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a queue's Redis whose maxmemory-policy lets it evict any key under memory pressure
    admin = redis.Redis(port=queue_redis.port, password=queue_redis.password)
    admin.config_set("maxmemory-policy", "allkeys-lru")
    admin.close()
    # When a pool reads its queue there
    runner = given_a_running_pool(emulator, queue_redis, operator)
    # Then the pool is Degraded saying why and what to set, with one Warning Event
    degraded = wait_until(
        lambda: (
            found
            if (
                found := condition(
                    emulator.get("workerpools", NAMESPACE, "emails", group=GROUP), "Degraded"
                )
            ).get("reason")
            == "RedisMayEvict"
            else None
        ),
        message="the eviction risk was never reported",
    )
    assert degraded["status"] == "True"
    assert "allkeys-lru" in degraded["message"] and "noeviction" in degraded["message"]
    wait_until(
        lambda: [e for e in events_for(emulator, "emails") if e["reason"] == "RedisMayEvict"],
        message="no Warning Event",
    )
    # and the operator's metrics say so too (exported after the status write of the same poll)
    wait_until(
        lambda: (
            pool_sample(runner, "workerfleet_pool_redis_eviction_unsafe")
            == {"policy=allkeys-lru": 1.0}
        ),
        message="the eviction risk was never exported",
    )


def test_a_running_pool_exports_its_broker_on_its_info_series(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a running pool on Redis
    runner = given_a_running_pool(emulator, queue_redis, operator)
    # Then its info series names the broker, beside the pool's other series of the same labels
    wait_until(
        lambda: pool_sample(runner, "workerfleet_pool_info") == {"broker=redis": 1},
        message="the pool's info series never named its broker",
    )
    # (the queue series from the pool's first queue read on)
    wait_until(
        lambda: pool_sample(runner, "workerfleet_pool_backlog") == {"": 0},
        message="the pool's backlog was never exported",
    )


def test_a_pool_switched_to_another_broker_exports_one_info_series_naming_the_new_one() -> None:
    # Given the controller of a pool on RabbitMQ, whose series are bound
    cfg = config_module.OperatorConfig(health_port=0, metrics_port=0)
    ctx = context.build_context(cfg)
    controller = pool_mod.PoolController(ctx, NAMESPACE, "emails")
    controller.body = {"spec": {"queue": {"name": "emails", "rabbitmq": {"vhost": "/"}}}}
    controller.bound_series()
    info = {
        tuple(sorted(s.labels.items())): s.value
        for family in ctx.metrics.registry.collect()
        for s in family.samples
        if s.name == "workerfleet_pool_info"
    }
    assert info == {(("broker", "rabbitmq"), *sorted(POOL.items())): 1}
    # When its spec moves it to SQS (same queue name)
    controller.body = {"spec": {"queue": {"name": "emails", "sqs": {"region": "eu-west-1"}}}}
    controller.bound_series()
    # Then exactly one info series is left, naming SQS
    after = [
        s.labels["broker"]
        for family in ctx.metrics.registry.collect()
        for s in family.samples
        if s.name == "workerfleet_pool_info"
    ]
    assert after == ["sqs"]
