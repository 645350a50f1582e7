"""Settings too small to work are refused when the worker's settings load, by name and bound.

A lease the control thread cannot renew in time, or a rate-limit window the Redis engine cannot
count, used to be accepted and failed later as duplicates or a broken rate limit.
"""

from __future__ import annotations

import pydantic
import pytest

from worker_runtime import config
from worker_runtime.brokers import base


@pytest.fixture(autouse=True)
def _broker_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKERFLEET_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.mark.parametrize("lease", ["0.001", "0.5", "1", "1.49", "0", "-3"])
def test_a_lease_too_short_to_renew_is_refused_naming_the_variable_value_and_minimum(
    lease: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKERFLEET_LEASE_SECONDS", lease)
    with pytest.raises(pydantic.ValidationError) as refused:
        config.WorkerSettings()  # type: ignore[call-arg]
    said = str(refused.value)
    assert f"WORKERFLEET_LEASE_SECONDS={float(lease):g}" in said
    assert "minimum of 1.5 s" in said


def test_the_shortest_accepted_lease_leaves_each_renewal_its_whole_reply_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The renewal interval (lease/3) must hold the renewal's shortest reply timeout: a renewal
    # that times out then ends before the next is due, and its retry lands in the last third.
    monkeypatch.setenv("WORKERFLEET_LEASE_SECONDS", str(config.MIN_LEASE_SECONDS))
    s = config.WorkerSettings()  # type: ignore[call-arg]
    assert s.lease_seconds == 1.5
    assert s.heartbeat_interval_seconds >= config.RENEWAL_TIMEOUT_FLOOR_SECONDS


def test_a_rate_limit_window_shorter_than_a_millisecond_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORKERFLEET_RATE_LIMIT_JOBS", "10")
    monkeypatch.setenv("WORKERFLEET_RATE_LIMIT_PER_SECONDS", "0.0001")
    with pytest.raises(pydantic.ValidationError, match=r"RATE_LIMIT_PER_SECONDS=0\.0001"):
        config.WorkerSettings()  # type: ignore[call-arg]
    monkeypatch.setenv("WORKERFLEET_RATE_LIMIT_PER_SECONDS", "0.001")
    assert config.WorkerSettings().rate_limit_per_seconds == 0.001  # type: ignore[call-arg]


@pytest.mark.parametrize("per_seconds", [0.0005, 0.0, float("nan")])
def test_a_rate_limit_built_in_code_with_a_window_under_a_millisecond_is_refused(
    per_seconds: float,
) -> None:
    # A handler's named bucket (ratelimit.apply_acquire) takes a RateLimit built in code: its
    # window was sent to the Redis engine as 0 ms, as the setting's was
    with pytest.raises(ValueError, match=r"per_seconds >= 0\.001"):
        base.RateLimit(jobs=10, per_seconds=per_seconds)
    assert base.RateLimit(jobs=10, per_seconds=0.001).per_seconds == 0.001
