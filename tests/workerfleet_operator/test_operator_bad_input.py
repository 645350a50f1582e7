"""Bad input the CRD cannot catch: Ready=False with a precise reason, a Warning, nothing applied."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from workerfleet_operator.shell import config as config_module

from tests.conftest import free_port
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
from tests.workerfleet_operator.emulator import (
    BUILTIN_RESOURCES,
    THIRD_PARTY_RESOURCES,
    WORKERPOOL,
    Emulator,
)

GROUP = "workerfleet.io"


@pytest.fixture
def operator_factory_without_podmonitors(
    tmp_path: Path,
) -> Iterator[tuple[Emulator, Callable[[], OperatorRunner]]]:
    resources = (
        *BUILTIN_RESOURCES,
        *(r for r in THIRD_PARTY_RESOURCES if r.plural != "podmonitors"),
        WORKERPOOL,
    )
    emu = Emulator(resources)
    emu.start()
    kubeconfig = tmp_path / "kubeconfig.yaml"
    kubeconfig.write_text(yaml.safe_dump(emu.kubeconfig()))
    runners: list[OperatorRunner] = []

    def start() -> OperatorRunner:
        cfg = config_module.OperatorConfig(
            kubeconfig=str(kubeconfig), health_port=0, metrics_port=0, secret_cache_seconds=0
        )
        runner = OperatorRunner(cfg).start()
        runners.append(runner)
        return runner

    yield emu, start
    for runner in runners:
        runner.stop()
    emu.stop()


def pool(emu: Emulator, name: str) -> dict[str, Any] | None:
    return emu.get("workerpools", NAMESPACE, name, group=GROUP)


def test_a_missing_key_in_the_secret_is_reported_as_secret_key_not_found(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a Secret without the referenced key
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url, key="other"))
    operator()
    # When a pool references key "url"
    emulator.create("workerpools", build_pool("emails"), group=GROUP)
    # Then Ready=False/SecretKeyNotFound, a Warning Event, and no Deployment
    cond = wait_until(lambda: condition(pool(emulator, "emails"), "Ready"), message="no condition")
    assert (cond["status"], cond["reason"]) == ("False", "SecretKeyNotFound")
    wait_until(
        lambda: [e for e in events_for(emulator, "emails") if e["reason"] == "SecretKeyNotFound"],
        message="no Warning Event",
    )
    assert emulator.get("deployments", NAMESPACE, "emails", group="apps") is None


def test_an_inconsistent_spec_is_explained_and_not_retried_until_it_changes(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given an API server without schema validation (so the CRD's CEL rule cannot stop it)
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    operator()
    # When a pool asks for more minReplicas than maxReplicas
    bad = build_pool("emails", autoscaling={"minReplicas": 5, "maxReplicas": 2})
    emulator.create("workerpools", bad, group=GROUP)
    # Then Ready=False/InvalidSpec names the field, a Warning is posted, nothing is applied
    cond = wait_until(lambda: condition(pool(emulator, "emails"), "Ready"), message="no condition")
    assert (cond["status"], cond["reason"]) == ("False", "InvalidSpec")
    assert "minReplicas" in cond["message"] or "maxReplicas" in cond["message"]
    wait_until(
        lambda: [e for e in events_for(emulator, "emails") if e["type"] == "Warning"],
        message="no Warning Event",
    )
    assert emulator.get("deployments", NAMESPACE, "emails", group="apps") is None
    # And it is not retried in a loop: no more status writes while the spec stays bad
    writes = sum(1 for m, p, _ in list(emulator.request_log) if m == "PATCH")
    time.sleep(1.5)  # the subject is "nothing happens over time"
    assert sum(1 for m, p, _ in list(emulator.request_log) if m == "PATCH") == writes
    # When the spec is fixed, the pool converges
    emulator.patch(
        "workerpools",
        NAMESPACE,
        "emails",
        {"spec": {"autoscaling": {"minReplicas": 0}}},
        group=GROUP,
    )
    wait_for_condition(emulator, "emails", "Ready", message="did not recover")


def test_a_child_kind_whose_api_is_not_installed_is_reported_and_the_rest_applies(
    queue_redis: QueueRedis,
    operator_factory_without_podmonitors: tuple[Emulator, Callable[[], OperatorRunner]],
) -> None:
    emulator, start = operator_factory_without_podmonitors
    # Given a cluster without the Prometheus Operator (no PodMonitor API)
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    start()
    # When a pool asks for a PodMonitor
    emulator.create("workerpools", build_pool("emails", metrics={"podMonitor": True}), group=GROUP)
    # Then its Deployment is still applied and a Warning says which API is missing
    wait_until(
        lambda: emulator.get("deployments", NAMESPACE, "emails", group="apps"),
        message="no Deployment",
    )
    event = wait_until(
        lambda: [e for e in events_for(emulator, "emails") if e["reason"] == "ChildKindMissing"],
        message="no ChildKindMissing Event",
    )
    assert "PodMonitor" in event[0]["message"]


def test_a_pool_whose_secret_names_several_sentinels_reads_its_queue_through_them(
    emulator: Emulator,
    redis_sentinel: tuple[int, Any],
    operator: Callable[..., OperatorRunner],
    queue_name: str,
) -> None:
    # Given a Secret with a multi-host Sentinel URL: one Sentinel that is down, one that answers
    sentinel_port, _primary = redis_sentinel
    url = f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{sentinel_port}/mymaster"
    emulator.create("secrets", build_secret("redis-creds", url))
    operator()
    # When a pool uses it
    emulator.create("workerpools", build_pool("emails", queue=queue_name), group=GROUP)
    # Then the operator reads the queue through the Sentinels (it held the pool as
    # InvalidRedisURL, though workers accept the same URL)
    wait_for_condition(emulator, "emails", "QueueReachable", timeout=20)
    ready = condition(pool(emulator, "emails"), "Ready")
    assert ready.get("reason") != "InvalidRedisURL"
