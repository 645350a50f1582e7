"""Retry delays are finite and bounded: an infinite or absurd delay never breaks a retry.

A handler may ask for any delay (``RetryLater(delay)``, an error's ``retry_after``, an HTTP
``Retry-After`` header). The worker turns a non-finite request into the task's backoff and clamps
every request to the backoff maximum; the engine refuses a non-finite delay for that one retry,
so the retries coalesced into the same script call still land.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from typing import Any

import pytest
import redis.asyncio

from tests.support import engine as es
from worker_runtime import App, Backoff, JobContext, Retry, RetryLater, config, worker
from worker_runtime.brokers.redis import keys


async def test_a_non_finite_retry_delay_is_refused_alone_and_its_batch_mates_still_retry(
    redis_client: redis.asyncio.Redis, queue_name: str
) -> None:
    # Given three delivered jobs
    engine = es.make_engine(redis_client, queue_name)
    await engine.enqueue_many([es.request(payload={"n": n}) for n in range(3)])
    jobs = await es.fetch_all(engine, "w1", want=3)
    assert len(jobs) == 3
    # When their retries are submitted together (one script call), one asking for inf seconds
    results = await asyncio.gather(
        engine.retry(jobs[0], es.failure(), delay_seconds=math.inf),
        engine.retry(jobs[1], es.failure(), delay_seconds=1.0),
        engine.retry(jobs[2], es.failure(), delay_seconds=2.0),
        return_exceptions=True,
    )
    # Then that retry alone is refused, with a clear error, and the job stays delivered
    assert isinstance(results[0], ValueError) and "finite" in str(results[0])
    # and its batch-mates are waiting in the delayed set, not dropped until lease expiry
    assert results[1:] == [True, True]
    k = keys.build_keys(queue_name)
    delayed = set(await redis_client.zrange(k.delayed, 0, -1))
    assert delayed == {jobs[1].id, jobs[2].id}
    assert await redis_client.hexists(k.inflight, jobs[0].id)


def _retrying_app(queue_name: str) -> App:
    app = App(queue=queue_name)

    @app.task("ask")
    async def ask(payload: dict[str, Any], ctx: JobContext) -> None:
        if ctx.attempt == 1:
            if payload["how"] == "retry_after_attr":
                error = RuntimeError("throttled")
                error.retry_after = float(payload["delay"])  # type: ignore[attr-defined]
                raise error
            raise RetryLater(float(payload["delay"]))

    return app


@pytest.mark.parametrize(
    ("how", "delay"),
    [
        ("retry_later", 1e11),  # absurd but finite: clamped to the backoff maximum
        ("retry_after_attr", math.inf),  # an error's own retry_after of inf: backoff decides
        ("retry_after_attr", 1e300),
    ],
)
async def test_a_worker_keeps_every_requested_retry_delay_within_the_backoff_maximum(
    redis_client: redis.asyncio.Redis, queue_name: str, redis_server: Any, how: str, delay: float
) -> None:
    # Given a worker whose backoff maximum is 40 s, and a job that asks for `delay` seconds
    app = _retrying_app(queue_name)
    settings = config.WorkerSettings(
        redis_url=redis_server.url,
        queue=queue_name,
        metrics_port=0,
        retry_backoff_max_seconds=40.0,
        lease_seconds=30.0,
    )
    engine = es.make_engine(redis_client, queue_name)
    start_s, start_us = await redis_client.time()
    start_ms = start_s * 1000 + start_us // 1000
    [res] = await engine.enqueue_many([es.request("ask", {"how": how, "delay": repr(delay)})])
    w = worker.Worker(app, settings, install_signal_handlers=False)
    run = asyncio.create_task(w.run())
    k = keys.build_keys(queue_name)
    try:
        # When the first attempt fails asking for that delay (sent as text: JSON has no inf)
        score = None
        for _ in range(200):  # bounded: 10 s
            score = await redis_client.zscore(k.delayed, res.job_id)
            if score is not None or run.done():
                break
            await asyncio.sleep(0.05)
        # Then the retry waits in Redis, due within the backoff maximum of now (a refused
        # non-finite delay falls back to the jittered backoff, which may be due already by the
        # time this reads it: the lower bound is the enqueue, not this read)
        assert score is not None, "the retry never reached the delayed set"
        now_s, now_us = await redis_client.time()
        now_ms = now_s * 1000 + now_us // 1000
        assert start_ms <= score <= now_ms + 40_000
        if math.isfinite(delay):  # a finite request is clamped to the maximum: still ahead
            assert score > now_ms
        assert not await redis_client.hexists(k.inflight, res.job_id)
    finally:
        w.request_drain()
        assert await asyncio.wait_for(run, 20) == 0


def test_retry_later_refuses_a_non_finite_delay_when_it_is_raised() -> None:
    # A handler that asks for inf/nan seconds gets an error naming the mistake (the attempt fails
    # and the task's backoff applies) instead of a retry that never comes due.
    for bad in (math.inf, -math.inf, math.nan):
        with pytest.raises(ValueError, match="finite"):
            RetryLater(bad)
    assert RetryLater(1e11).delay == 1e11  # bounded by the worker, which knows the maximum


class _HighestDraw:
    """A random source that always draws the top of the range (jitter made predictable)."""

    def uniform(self, low: float, high: float) -> float:
        return high

    def random(self) -> float:
        return 0.5


async def test_decorrelated_jitter_grows_from_the_previous_delay_of_the_same_job(
    redis_client: redis.asyncio.Redis, queue_name: str, redis_server: Any
) -> None:
    # Given a task with decorrelated jitter (base 0.1 s) that fails three times, and a worker
    # whose jitter always draws the top of its range [base, 3 * previous delay]
    app = App(queue=queue_name)
    starts: list[float] = []

    @app.task(
        "fails",
        retry=Retry(
            max_attempts=4,
            backoff=Backoff(base_seconds=0.1, max_seconds=100.0, jitter="decorrelated"),
        ),
    )
    async def fails(payload: dict[str, Any], ctx: JobContext) -> None:
        starts.append(time.monotonic())
        raise RuntimeError(f"attempt {ctx.attempt}")

    settings = config.WorkerSettings(redis_url=redis_server.url, queue=queue_name, metrics_port=0)
    engine = es.make_engine(redis_client, queue_name)
    await engine.enqueue_many([es.request("fails")])
    w = worker.Worker(app, settings, install_signal_handlers=False)
    w.policy.rng = _HighestDraw()  # the default policy draws the jitter
    run = asyncio.create_task(w.run())
    try:
        # When it runs all four attempts
        for _ in range(300):  # bounded: 15 s
            if len(starts) == 4 or run.done():
                break
            await asyncio.sleep(0.05)
    finally:
        w.request_drain()
        assert await asyncio.wait_for(run, 20) == 0
    # Then each retry waited three times the one before: 0.3 s, 0.9 s, 2.7 s (not 0.3 s each)
    assert len(starts) == 4
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[0] >= 0.3 - 0.02
    assert gaps[1] >= 0.9 - 0.02
    assert gaps[2] >= 2.7 - 0.02
