"""A rotated Redis Secret rolls the worker pods; an unchanged one, over a restart, changes nothing.

Worker pods read WORKERFLEET_REDIS_URL from the Secret only at start. The operator re-reads the
Secret every ``secret_cache_seconds`` and stamps its ``<uid>/<resourceVersion>`` on the pod
template, so a new Secret rolls the Deployment. On the API emulator with a real redis-server.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable
from typing import Any

import redis
from workerfleet_operator import manifests

from tests.workerfleet_operator.conftest import (
    NAMESPACE,
    OperatorRunner,
    QueueRedis,
    given_a_running_pool,
    wait_for_condition,
    wait_until,
)
from tests.workerfleet_operator.emulator import Emulator
from tests.workerfleet_operator.test_operator_resilience import stable_versions

CACHE_SECONDS = 1.0
POLLING_SECONDS = 1.0  # build_pool's pollingIntervalSeconds
NEW_PASSWORD = "rotated-Pa55-" + "k3W8"


def _deployment(emu: Emulator) -> dict[str, Any]:
    found = emu.get("deployments", NAMESPACE, "emails", group="apps")
    assert found is not None, "no Deployment"
    return found


def _marker(deployment: dict[str, Any]) -> str | None:
    annotations = deployment["spec"]["template"]["metadata"].get("annotations") or {}
    value = annotations.get(manifests.REDIS_SECRET_VERSION_ANNOTATION)
    return None if value is None else str(value)


def _secret_marker(emu: Emulator) -> str:
    secret = emu.get("secrets", NAMESPACE, "redis-creds")
    assert secret is not None
    return f"{secret['metadata']['uid']}/{secret['metadata']['resourceVersion']}"


def _deployment_with_marker(emu: Emulator, marker: str) -> dict[str, Any] | None:
    deployment = _deployment(emu)
    return deployment if _marker(deployment) == marker else None


def _template_without_marker(deployment: dict[str, Any]) -> dict[str, Any]:
    template: dict[str, Any] = json.loads(json.dumps(deployment["spec"]["template"]))
    template["metadata"]["annotations"].pop(manifests.REDIS_SECRET_VERSION_ANNOTATION, None)
    return template


def test_rotating_the_redis_secret_rolls_the_pod_template_within_the_cache_period(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a running pool whose operator caches the Secret for one second
    given_a_running_pool(
        emulator, queue_redis, functools.partial(operator, secret_cache_seconds=CACHE_SECONDS)
    )
    wait_for_condition(emulator, "emails", "Ready")
    before = _deployment(emulator)
    assert _marker(before) == _secret_marker(emulator)
    # When the Redis password is rotated and the Secret updated with the new URL
    admin = redis.Redis.from_url(queue_redis.url, socket_timeout=2)
    admin.config_set("requirepass", NEW_PASSWORD)
    admin.close()
    new_url = f"redis://:{NEW_PASSWORD}@127.0.0.1:{queue_redis.port}/0"
    emulator.patch(
        "secrets",
        NAMESPACE,
        "redis-creds",
        {"data": {"url": base64.b64encode(new_url.encode()).decode()}},
    )
    rotated = _secret_marker(emulator)
    # Then within the cache period plus one poll (nominally 2 s; the bound leaves room for a
    # loaded machine) the pod template carries the new version
    after = wait_until(
        lambda: _deployment_with_marker(emulator, rotated),
        timeout=5 * (CACHE_SECONDS + POLLING_SECONDS),
        message="the Deployment did not roll onto the rotated Secret",
    )
    # And that is the only change to the template: a new generation, nothing else rewritten
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    assert _template_without_marker(after) == _template_without_marker(before)
    # And neither the old nor the new password is anywhere in the Deployment
    text = json.dumps(after)
    assert NEW_PASSWORD not in text and queue_redis.password not in text
    # And the pool stays Ready and reads its queue with the new URL
    wait_for_condition(emulator, "emails", "Ready")
    wait_for_condition(emulator, "emails", "QueueReachable")


def test_an_operator_restart_with_an_unchanged_secret_rewrites_nothing(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a converged pool whose pod template carries the Secret's version
    first = given_a_running_pool(
        emulator, queue_redis, functools.partial(operator, secret_cache_seconds=CACHE_SECONDS)
    )
    wait_for_condition(emulator, "emails", "Ready")
    # (converged includes the autoscaler's rates, measured after two polls)
    wait_until(lambda: "arrivalRate" in _queue_status(emulator), message="no rates measured")
    converged = stable_versions(emulator)
    marker = _marker(_deployment(emulator))
    assert marker == _secret_marker(emulator)
    # When the operator restarts and re-reads the unchanged Secret several cache periods over
    first.stop()
    secret_reads_before = _secret_reads(emulator)
    operator(secret_cache_seconds=CACHE_SECONDS)
    wait_until(
        lambda: _secret_reads(emulator) - secret_reads_before >= 3,
        timeout=10 * CACHE_SECONDS + 5.0,
        message="the restarted operator did not re-read the Secret",
    )
    # Then nothing was rewritten: same resourceVersions, same marker
    assert stable_versions(emulator) == converged
    assert _marker(_deployment(emulator)) == marker


def _queue_status(emu: Emulator) -> dict[str, Any]:
    pool = emu.get("workerpools", NAMESPACE, "emails", group="workerfleet.io") or {}
    queue: dict[str, Any] = (pool.get("status") or {}).get("queue") or {}
    return queue


def _secret_reads(emu: Emulator) -> int:
    path = f"/api/v1/namespaces/{NAMESPACE}/secrets/redis-creds"
    return sum(1 for method, p, _ in list(emu.request_log) if method == "GET" and p == path)
