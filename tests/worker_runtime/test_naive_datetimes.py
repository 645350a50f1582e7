"""A naive datetime (no time zone) handed to the runtime is refused, wherever it is given.

It used to mean three things: enqueue's ``eta`` and ``expires_at`` read it in the local zone
of the enqueuing process (``.timestamp()``: the same value was 5 hours apart on a laptop in
New York and in a UTC pod), ``RetryLater(retry_after=...)`` ignored it without a word, and the
command line reads its ISO times as UTC. A datetime object names its zone or is refused.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import pytest

from worker_runtime import RetryLater, backoff, brokers, expiry, producer


@pytest.fixture
def new_york_local_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local zone is five hours behind UTC (in winter), as on a laptop."""
    monkeypatch.setenv("TZ", "EST+05")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


class _NoOffset(tzinfo):
    """A tzinfo that gives no offset: Python counts such a datetime as naive."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None

    def dst(self, dt: datetime | None) -> timedelta | None:
        return None

    def tzname(self, dt: datetime | None) -> str | None:
        return None


NAIVE = datetime(2030, 1, 1, 12, 0)


@pytest.mark.parametrize(
    ("spec", "argument"),
    [
        (producer.JobSpec("t", {}, eta=NAIVE), "eta"),
        (producer.JobSpec("t", {}, expires_at=NAIVE), "expires_at"),
        (producer.JobSpec("t", {}, eta=NAIVE.replace(tzinfo=_NoOffset())), "eta"),
    ],
    ids=["eta", "expires_at", "tzinfo-without-offset"],
)
def test_an_enqueue_time_given_as_a_naive_datetime_is_refused_naming_the_argument(
    spec: producer.JobSpec, argument: str, new_york_local_time: None
) -> None:
    with pytest.raises(ValueError, match=f"^{argument} is a naive datetime") as refused:
        producer.build_request(spec, now=1000.0)
    assert "aware" in str(refused.value) and "epoch seconds" in str(refused.value)


def test_an_aware_eta_and_expires_at_mean_the_same_instant_in_any_local_zone(
    new_york_local_time: None,
) -> None:
    # Given the same instant in UTC and at a +02:00 offset, while local time is UTC-5
    at_utc = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    at_plus_two = datetime(2030, 1, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    now = at_utc.timestamp() - 60
    for when in (at_utc, at_plus_two):
        spec = producer.JobSpec("t", {}, eta=when, expires_at=when + timedelta(seconds=30))
        req = producer.build_request(spec, now=now)
        # Then each is due in exactly 60 s and expires 30 s later
        assert req.delay_seconds == 60.0
        assert req.envelope.expires_at == at_utc.timestamp() + 30


async def test_a_naive_eta_is_refused_before_anything_reaches_the_broker() -> None:
    # Given a producer on a broker
    broker: Any = await brokers.open_broker("memory://", "jobs")
    try:
        p = producer.Producer.on_broker(broker)
        # When a job is enqueued with a naive eta, Then it is refused and nothing is queued
        with pytest.raises(ValueError, match="eta is a naive datetime"):
            await p.enqueue("t", {}, eta=NAIVE)
        stats = await broker.fetch_stats()
        assert (stats.backlog, stats.future_delayed) == (0, 0)
    finally:
        await broker.close()


def test_retry_later_refuses_a_naive_datetime_instead_of_ignoring_it() -> None:
    with pytest.raises(ValueError, match="retry_after is a naive datetime"):
        RetryLater(retry_after=datetime.now() + timedelta(seconds=30))  # the local wall time
    soon = RetryLater(retry_after=datetime.now(UTC) + timedelta(seconds=30)).delay
    assert soon is not None and 25 <= soon <= 31


def test_epoch_seconds_pass_through_unchanged() -> None:
    assert expiry.epoch_seconds_of(1234.5, "eta") == 1234.5
    assert expiry.epoch_seconds_of(datetime.fromtimestamp(1234.5, UTC), "eta") == 1234.5


def test_an_error_s_retry_after_whose_tzinfo_gives_no_offset_is_ignored_as_a_naive_one(
    new_york_local_time: None,
) -> None:
    # An HTTP client error's .retry_after read by the retry policy follows the same rule as
    # enqueue's eta: a datetime whose tzinfo gives no offset names no instant, and the backoff
    # decides instead of a delay read in the pod's local zone
    soon = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=30)
    assert backoff.seconds_of_retry_hint(soon) is None
    assert backoff.seconds_of_retry_hint(soon.replace(tzinfo=_NoOffset())) is None
    aware = backoff.seconds_of_retry_hint(soon.replace(tzinfo=UTC))
    assert aware is not None and 25 <= aware <= 31
