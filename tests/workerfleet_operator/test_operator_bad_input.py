"""Bad input the CRD cannot catch: Ready=False with a precise reason, a Warning, nothing applied."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml
from workerfleet_operator.shell import config as config_module

from tests.support.redis_servers import free_port
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


StartWithout = Callable[..., tuple[Emulator, OperatorRunner]]


@pytest.fixture
def cluster_without(tmp_path: Path) -> Iterator[StartWithout]:
    """Factory: ``cluster_without({"podmonitors"}, **config)`` starts an emulator that does not
    serve those third-party kinds (their CRDs not installed) and an operator on it."""
    started: list[tuple[Emulator, OperatorRunner]] = []

    def start(missing: set[str], **overrides: Any) -> tuple[Emulator, OperatorRunner]:
        resources = (
            *BUILTIN_RESOURCES,
            *(r for r in THIRD_PARTY_RESOURCES if r.plural not in missing),
            WORKERPOOL,
        )
        emu = Emulator(resources)
        emu.start()
        kubeconfig = tmp_path / f"kubeconfig-{len(started)}.yaml"
        kubeconfig.write_text(yaml.safe_dump(emu.kubeconfig()))
        cfg = config_module.OperatorConfig(
            kubeconfig=str(kubeconfig),
            health_port=0,
            metrics_port=0,
            secret_cache_seconds=0,
            **overrides,
        )
        runner = OperatorRunner(cfg)
        started.append((emu, runner))
        runner.start()
        return emu, runner

    yield start
    for emu, runner in started:
        with contextlib.suppress(AssertionError):
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


def test_a_child_kind_whose_api_is_not_installed_is_degraded_and_warned_once_not_per_resync(
    queue_redis: QueueRedis, cluster_without: StartWithout
) -> None:
    # Given a cluster without the Prometheus Operator (no PodMonitor API), resyncing often
    emulator, _ = cluster_without({"podmonitors"}, resync_seconds=0.3)
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    # When a pool asks for a PodMonitor
    emulator.create("workerpools", build_pool("emails", metrics={"podMonitor": True}), group=GROUP)
    # Then its Deployment is still applied and the pool runs (Ready), but Degraded says
    # which API is missing
    wait_for_condition(emulator, "emails", "Ready", message="not Ready")
    degraded = wait_for_condition(emulator, "emails", "Degraded", message="not Degraded")
    assert degraded["reason"] == "ChildAPIMissing" and "PodMonitor" in degraded["message"]

    # And over many resyncs one Warning Event says so, not one per resync
    def podmonitor_applies() -> int:
        return sum(
            1 for m, p, _ in list(emulator.request_log) if m == "PATCH" and "podmonitors" in p
        )

    applies_before = podmonitor_applies()
    wait_until(
        lambda: podmonitor_applies() >= applies_before + 5,
        message="the operator did not resync",
    )
    warnings = [e for e in events_for(emulator, "emails") if e["type"] == "Warning"]
    assert [e["reason"] for e in warnings] == ["ChildAPIMissing"], warnings


def test_a_keda_pool_without_keda_installed_is_not_ready(
    queue_redis: QueueRedis, cluster_without: StartWithout
) -> None:
    # Given a cluster without KEDA
    emulator, _ = cluster_without({"scaledobjects", "triggerauthentications"})
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    # When a pool asks for keda mode
    body = build_pool("emails", autoscaling={"mode": "keda"})
    body["spec"]["queue"]["redis"]["keda"] = {"addressKey": "address"}
    emulator.create("workerpools", body, group=GROUP)
    # Then it is not Ready (nothing would scale it) and says why
    wait_for_condition(emulator, "emails", "Degraded", message="not Degraded")
    ready = condition(pool(emulator, "emails"), "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ChildAPIMissing")
    assert "ScaledObject" in ready["message"]


WEBHOOK_DENIAL = (
    'admission webhook "images.policy.example" denied the request: '
    "image registry.example/email-worker:1.4.2 is not signed"
)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        # the Deployment API's own validation (as for requests above limits)
        (422, 'Deployment.apps "emails" is invalid: spec.template...resources.requests'),
        # a policy admission webhook's denial: a 403, but a verdict on the spec, not on RBAC
        (403, WEBHOOK_DENIAL),
    ],
    ids=["invalid", "webhook-denial"],
)
def test_a_spec_the_api_server_refuses_is_not_ready_and_its_generation_not_observed(
    emulator: Emulator,
    queue_redis: QueueRedis,
    operator: Callable[..., OperatorRunner],
    code: int,
    message: str,
) -> None:
    # Given a running pool at generation 1
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    operator(retry_base_seconds=0.2, retry_max_seconds=0.5)
    emulator.create("workerpools", build_pool("emails"), group=GROUP)
    wait_for_condition(emulator, "emails", "QueueReachable", message="never read its queue")
    # When its spec changes and the API server refuses the new Deployment, twice
    emulator.inject_failure("PATCH", r"/deployments/emails$", code, count=2, message=message)
    emulator.patch("workerpools", NAMESPACE, "emails", {"spec": {"concurrency": 8}}, group=GROUP)
    # Then the pool is not Ready, Degraded says why in the refusal's words (ApplyRejected: the
    # user must change the spec; not ReconcileFailed), and generation 2 is not observed
    degraded = wait_for_condition(emulator, "emails", "Degraded", message="not Degraded")
    assert degraded["reason"] == "ApplyRejected" and degraded["observedGeneration"] == 2
    assert message in degraded["message"]
    stored = pool(emulator, "emails") or {}
    ready = condition(stored, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ApplyRejected")
    assert stored["status"]["observedGeneration"] == 1
    assert "ReconcileFailed" not in [e["reason"] for e in events_for(emulator, "emails")]
    # And once the API server accepts it, generation 2 is applied and observed
    wait_until(
        lambda: (pool(emulator, "emails") or {}).get("status", {}).get("observedGeneration") == 2,
        message="generation 2 never applied",
    )
    wait_for_condition(emulator, "emails", "Ready", message="never Ready again")


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


@pytest.mark.parametrize(
    ("name", "value"),
    [("RESYNC_SECONDS", "inf"), ("SECRET_CACHE_SECONDS", "inf"), ("API_QPS", "nan")],
)
def test_an_operator_setting_that_is_not_a_finite_number_is_refused_by_name(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an infinite resync or Secret cache was taken as "never": a typo no one would notice
    monkeypatch.setenv(f"WORKERFLEET_OPERATOR_{name}", value)
    with pytest.raises(pydantic.ValidationError, match=r"(?s)" + name.lower() + ".*finite number"):
        config_module.OperatorConfig()


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        (
            {"LOG_LEVEL": "verbose"},
            "WORKERFLEET_OPERATOR_LOG_LEVEL: Input should be 'debug', 'info', 'warning' or 'error'",
        ),
        (
            {"RENEW_DEADLINE_SECONDS": "30"},
            "leader election needs WORKERFLEET_OPERATOR_RETRY_PERIOD_SECONDS < "
            "WORKERFLEET_OPERATOR_RENEW_DEADLINE_SECONDS < "
            "WORKERFLEET_OPERATOR_LEASE_DURATION_SECONDS (they are 2, 30 and 15)",
        ),
        (
            {"API_QPS": "nan", "HEALTH_PORT": "http"},
            "WORKERFLEET_OPERATOR_HEALTH_PORT: Input should be a valid integer, unable to parse "
            "string as an integer; WORKERFLEET_OPERATOR_API_QPS: Input should be a finite number",
        ),
    ],
)
def test_the_operator_refuses_bad_settings_in_one_line_naming_them_and_exits_2(
    settings: dict[str, str], said: str
) -> None:
    # Given the operator's environment with a bad setting (or two)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKERFLEET_OPERATOR_")}
    env.update({f"WORKERFLEET_OPERATOR_{name}": value for name, value in settings.items()})
    # When 'workerfleet operator' starts
    done = subprocess.run(
        [str(Path(sys.executable).parent / "workerfleet"), "operator"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    # Then it says which setting is wrong in one line, without a traceback, and exits 2
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"workerfleet: invalid settings: {said}\n"
