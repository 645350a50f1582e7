"""Backoff arithmetic (pure): strategies, caps, every jitter mode, Retry-After parsing."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from worker_runtime import backoff


def test_exponential_backoff_doubles_from_the_base_and_stops_at_the_cap() -> None:
    policy = backoff.Backoff(base_seconds=2, max_seconds=30, jitter="none")
    assert [backoff.delay_for(policy, n) for n in range(1, 7)] == [2, 4, 8, 16, 30, 30]


def test_a_huge_attempt_number_does_not_overflow() -> None:
    policy = backoff.Backoff(base_seconds=1, max_seconds=300, jitter="none")
    assert backoff.delay_for(policy, 10_000) == 300


def test_fixed_backoff_is_the_base_every_time_capped() -> None:
    policy = backoff.Backoff(strategy="fixed", base_seconds=5, max_seconds=3, jitter="none")
    assert [backoff.delay_for(policy, n) for n in (1, 2, 9)] == [3, 3, 3]


@pytest.mark.parametrize("attempt", [1, 3, 6])
def test_full_jitter_stays_between_zero_and_the_ceiling(attempt: int) -> None:
    policy = backoff.Backoff(base_seconds=1, max_seconds=20, jitter="full")
    rng = random.Random(7)
    ceiling = backoff.ceiling_for(policy, attempt)
    values = [backoff.delay_for(policy, attempt, rng=rng) for _ in range(500)]
    assert all(0 <= v <= ceiling for v in values)
    assert max(values) - min(values) > ceiling / 2  # actually spread, not constant


def test_equal_jitter_keeps_at_least_half_the_ceiling() -> None:
    policy = backoff.Backoff(base_seconds=1, max_seconds=20, jitter="equal")
    rng = random.Random(3)
    values = [backoff.delay_for(policy, 4, rng=rng) for _ in range(500)]
    assert all(4 <= v <= 8 for v in values)


def test_decorrelated_jitter_grows_from_the_previous_delay_and_respects_the_cap() -> None:
    policy = backoff.Backoff(base_seconds=1, max_seconds=10, jitter="decorrelated")
    rng = random.Random(11)
    previous = None
    for n in range(1, 50):
        d = backoff.delay_for(policy, n, previous=previous, rng=rng)
        upper = 3 * (previous if previous is not None else 1)
        assert 1 <= d <= min(10, upper)
        previous = d


def test_the_same_seed_gives_the_same_delays() -> None:
    policy = backoff.Backoff()
    a = [backoff.delay_for(policy, n, rng=random.Random(5)) for n in range(1, 5)]
    b = [backoff.delay_for(policy, n, rng=random.Random(5)) for n in range(1, 5)]
    assert a == b


def test_unknown_strategies_jitters_and_negative_seconds_are_refused() -> None:
    with pytest.raises(ValueError):
        backoff.Backoff(jitter="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        backoff.Backoff(strategy="linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        backoff.Backoff(base_seconds=-1)


@pytest.mark.parametrize(
    "seconds", [{"base_seconds": float("nan")}, {"max_seconds": float("inf")}], ids=["nan", "inf"]
)
def test_backoff_seconds_that_are_not_finite_are_refused(seconds: dict[str, float]) -> None:
    # a nan base made every delay nan, which the queue refuses: the job was never retried
    with pytest.raises(ValueError, match="must be finite numbers"):
        backoff.Backoff(**seconds)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("", None),
        ("soon", None),
        ("nan", None),
    ],
)
def test_retry_after_in_seconds(value: str, expected: float | None) -> None:
    assert backoff.parse_retry_after(value) == expected


def test_retry_after_as_an_http_date_counts_from_now() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    future = format_datetime(datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC), usegmt=True)
    past = format_datetime(datetime(2025, 12, 31, 12, 0, 0, tzinfo=UTC), usegmt=True)
    assert backoff.parse_retry_after(future, now=now) == 30.0
    assert backoff.parse_retry_after(past, now=now) == 0.0


@pytest.mark.parametrize(
    "value",
    [
        "Thu, 01 Jan 2026 12:00:30 GMT",  # IMF-fixdate
        "Thursday, 01-Jan-26 12:00:30 GMT",  # RFC 850, obsolete but to be accepted
        "Thu Jan  1 12:00:30 2026",  # asctime, obsolete but to be accepted: GMT, unsaid
        "Thu, 01 Jan 2026 12:00:30 -0000",  # RFC 5322's 'zone unknown', from mail code
    ],
)
def test_an_http_date_retry_after_is_gmt_whatever_the_local_time_zone(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a process whose local time zone is not UTC (TZ set on the pod)
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
        # When a Retry-After date 30 s ahead of now (in GMT, as every HTTP date is) is read
        seconds = backoff.parse_retry_after(value, now=now)
    finally:
        monkeypatch.undo()
        time.tzset()
    # Then it means 30 s, not 30 s plus the zone's offset (5 hours)
    assert seconds == 30.0
