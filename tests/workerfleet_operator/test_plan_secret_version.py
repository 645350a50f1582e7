"""A rotated Redis Secret rolls the worker pods: the version marker, from the shell to the template.

Worker pods read WORKERFLEET_REDIS_URL only at start, so plan() puts the Secret's
``<uid>/<resourceVersion>`` (``SecretCheck.version``, never anything derived from the value) on
the pod template. Pure tests of plan()/manifests, plus the shell's Secret cache on a fake clock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import pytest
from workerfleet_operator import api, manifests, plan
from workerfleet_operator.shell import config as config_module
from workerfleet_operator.shell import context, kube
from workerfleet_operator.shell import pool as pool_mod

from tests.workerfleet_operator import crd_validation

T0 = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
UID = "0c7f5a2e-4b1d-4f3a-9e61-5d2b8a9c1e07"
PASSWORD = "rotation-canary-Q7x9"


def _pool() -> api.Pool:
    body = crd_validation.load_sample("minimal")
    body["metadata"].update(namespace="team-a", uid="uid-1", generation=1)
    parsed = api.parse_pool(body)
    assert isinstance(parsed, api.Pool)
    return parsed


def _deployment(version: str | None) -> dict[str, Any]:
    observed = plan.Observed(now=T0, secret=plan.SecretCheck("ok", version=version))
    the_plan = plan.plan(_pool(), observed)
    deployment = the_plan.children[0]
    assert deployment["kind"] == "Deployment"
    return deployment


def _template_annotations(deployment: dict[str, Any]) -> dict[str, str]:
    annotations: dict[str, str] = deployment["spec"]["template"]["metadata"]["annotations"]
    return annotations


def test_the_secret_version_seen_by_the_shell_is_a_pod_template_annotation() -> None:
    secret = kube.SecretValue("4711", f"redis://:{PASSWORD}@10.0.0.1:6379/0", uid=UID)

    deployment = _deployment(secret.version)

    annotations = _template_annotations(deployment)
    assert annotations[manifests.REDIS_SECRET_VERSION_ANNOTATION] == f"{UID}/4711"
    assert PASSWORD not in json.dumps(deployment)


def test_a_new_secret_version_changes_the_pod_template_and_nothing_else() -> None:
    before = _deployment(f"{UID}/4711")
    after = _deployment(f"{UID}/4712")

    assert _template_annotations(after)[manifests.REDIS_SECRET_VERSION_ANNOTATION] == f"{UID}/4712"
    del _template_annotations(before)[manifests.REDIS_SECRET_VERSION_ANNOTATION]
    del _template_annotations(after)[manifests.REDIS_SECRET_VERSION_ANNOTATION]
    assert before == after


def test_a_recreated_secret_with_the_same_resource_version_still_changes_the_marker() -> None:
    old = kube.SecretValue("4711", "redis://:a@h:1/0", uid=UID)
    recreated = kube.SecretValue("4711", "redis://:a@h:1/0", uid="another-uid")

    assert _deployment(old.version) != _deployment(recreated.version)


def test_an_unchanged_secret_version_gives_a_byte_identical_deployment() -> None:
    first = json.dumps(_deployment(f"{UID}/4711"), sort_keys=True)
    again = json.dumps(_deployment(f"{UID}/4711"), sort_keys=True)

    assert first == again


def test_without_a_known_secret_version_the_pod_template_has_no_marker() -> None:
    annotations = _template_annotations(_deployment(None))

    assert manifests.REDIS_SECRET_VERSION_ANNOTATION not in annotations
    assert annotations["prometheus.io/scrape"] == "true"


def test_the_marker_says_nothing_about_the_secrets_value() -> None:
    a = kube.SecretValue("10", f"redis://:{PASSWORD}@10.0.0.1:6379/0", uid=UID)
    b = kube.SecretValue("10", "redis://:other@10.0.0.2:6379/1", uid=UID)

    assert a.version == b.version == f"{UID}/10"
    assert PASSWORD not in repr(a)


class _FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_pools_cached_secret_expires_with_the_shared_cache_so_rotation_is_seen_in_one_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given two pools sharing a Secret, a 10 s cache, and a Secret API we can rotate
    stored = {"value": kube.SecretValue("1", "redis://:old@127.0.0.1:6379/0", uid=UID)}
    reads: list[float] = []
    clock = _FakeClock()

    async def fake_fetch(
        _client: object, _namespace: str, _name: str, _key: str
    ) -> kube.SecretValue:
        reads.append(clock.now)
        return stored["value"]

    monkeypatch.setattr(kube, "fetch_secret_value", fake_fetch)
    cfg = config_module.OperatorConfig(secret_cache_seconds=10.0, health_port=0, metrics_port=0)
    ctx = context.build_context(cfg)
    ctx.clock = clock
    ctx.client = object()  # type: ignore[assignment]  # never used: fetch_secret_value is faked
    first = pool_mod.PoolController(ctx, "team-a", "first")
    second = pool_mod.PoolController(ctx, "team-a", "second")
    pool = pool_mod.read_poll_spec(_pool())

    async def scenario() -> tuple[str | None, str | None]:
        await first.read_secret(pool)  # the shared cache is filled at t=1000
        clock.now = 1009.0
        await second.read_secret(pool)  # served from the shared cache (read at 1000)
        # When the Secret is rotated at 1009.5
        clock.now = 1009.5
        stored["value"] = kube.SecretValue("2", "redis://:new@127.0.0.1:6379/0", uid=UID)
        # Then one cache period after the shared read, both pools see the new version
        clock.now = 1010.1
        return (await first.read_secret(pool)).version, (await second.read_secret(pool)).version

    seen = asyncio.run(scenario())

    assert seen == (f"{UID}/2", f"{UID}/2")
    assert reads == [1000.0, 1010.1]
