"""The public enqueue API, async and blocking, on a single Redis and on Redis Cluster."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import pydantic
import pytest
import redis
import redis.cluster

from tests.support import engine as es
from tests.support.redis_servers import RedisClusterProcesses, RedisServer
from worker_runtime import envelope, producer
from worker_runtime.brokers.redis import stats


class Email(pydantic.BaseModel):
    to: str


async def test_a_producer_enqueues_a_typed_payload_with_every_option(
    engine_client: Any, queue_name: str
) -> None:
    # Given a producer
    p = producer.Producer(engine_client, queue_name)
    # When it enqueues with priority, correlation id, attempt override and an idempotency key
    res = await p.enqueue(
        "send-email",
        Email(to="a@b"),
        priority=envelope.Priority.HIGH,
        correlation_id="req-1",
        max_attempts=2,
        idempotency_key="mail-1",
    )
    dup = await p.enqueue("send-email", Email(to="a@b"), idempotency_key="mail-1")
    # Then a worker sees exactly one job carrying all of it
    [job] = await es.make_engine(engine_client, queue_name).fetch("w", 10)
    env = job.envelope
    assert res.created and not dup.created and dup.job_id == res.job_id == job.id
    assert (env.task, env.payload, env.priority, env.correlation_id, env.max_attempts) == (
        "send-email",
        {"to": "a@b"},
        envelope.Priority.HIGH,
        "req-1",
        2,
    )
    assert abs(env.enqueued_at - time.time()) < 60


async def test_delay_and_eta_put_jobs_in_the_future(engine_client: Any, queue_name: str) -> None:
    p = producer.Producer(engine_client, queue_name)
    await p.enqueue("t", {}, delay=30)
    await p.enqueue("t", {}, eta=datetime.now(tz=UTC).timestamp() + 30)
    await p.enqueue("t", {}, eta=datetime(2000, 1, 1, tzinfo=UTC))  # in the past: ready now
    s = await stats.fetch_queue_stats(engine_client, queue_name)
    assert (s.future_delayed, s.backlog) == (2, 1)


def test_delay_and_eta_together_or_negative_are_refused() -> None:
    with pytest.raises(ValueError):
        producer.build_request(producer.JobSpec("t", delay=1, eta=5.0))
    with pytest.raises(ValueError):
        producer.build_request(producer.JobSpec("t", delay=-1))
    with pytest.raises(ValueError):
        producer.build_request(producer.JobSpec("t", priority="urgent"))


@pytest.mark.parametrize(
    "options",
    [
        {"delay": float("nan")},  # passed `delay < 0` and made the job due at once
        {"delay": float("inf")},  # crashed the send (OverflowError) after the checks
        {"eta": float("inf")},
        {"eta": float("nan")},
        {"expires_at": float("nan")},  # compared false with every time: it never expired
        {"expires_at": float("inf")},
    ],
)
def test_a_time_that_is_not_a_finite_number_is_refused_by_name(options: dict[str, float]) -> None:
    (name,) = options
    with pytest.raises(ValueError, match=f"^{name} must be a finite"):
        producer.build_request(producer.JobSpec("t", **options))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        ({"delay": 1e308}, "^delay must be at most"),  # finite, but crashed the send in ms
        ({"eta": time.time() + 1e12}, "^eta must be at most 3,650 days ahead"),
        ({"idempotency_ttl": float("inf")}, "^idempotency_ttl must be"),
        ({"idempotency_ttl": float("nan")}, "^idempotency_ttl must be"),  # passed `<= 0`
        ({"idempotency_ttl": 0}, "^idempotency_ttl must be"),
    ],
)
def test_a_wait_longer_than_ten_years_is_refused_by_name(
    options: dict[str, float], refusal: str
) -> None:
    with pytest.raises(ValueError, match=refusal):
        producer.build_request(producer.JobSpec("t", **options))  # type: ignore[arg-type]


def test_the_longest_allowed_delay_still_makes_a_request() -> None:
    request = producer.build_request(producer.JobSpec("t", delay=producer.MAX_WAIT_SECONDS))
    assert request.delay_seconds == producer.MAX_WAIT_SECONDS


@pytest.mark.parametrize("name", ["idempotency_key", "correlation_id"])
@pytest.mark.parametrize("value", ["", "  "])
async def test_an_empty_idempotency_key_or_correlation_id_is_refused_and_nothing_is_dropped(
    name: str, value: str, engine_client: Any, queue_name: str
) -> None:
    # Given a producer, and a key that came out empty (a shell variable that was not set)
    p = producer.Producer(engine_client, queue_name)
    # When two different jobs are enqueued with it
    # Then each is refused by name, before anything is sent
    for to in ("a@example.com", "b@example.com"):
        with pytest.raises(ValueError, match=f"^{name} must not be empty"):
            await p.enqueue("send", {"to": to}, **{name: value})  # type: ignore[arg-type]
    # And without it both are enqueued: no job is taken for a duplicate of another
    results = [await p.enqueue("send", {"to": to}) for to in ("a@example.com", "b@example.com")]
    assert [r.created for r in results] == [True, True]
    assert (await stats.fetch_queue_stats(engine_client, queue_name)).backlog == 2


class Reading(pydantic.BaseModel):
    value: float


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        ({"total": float("nan")}, r"payload\.total is nan"),
        (
            {"lines": [{"price": 1.0}, {"price": float("-inf")}]},
            r"payload\.lines\[1\]\.price is -inf",
        ),
        (Reading(value=float("inf")), r"payload\.value is inf"),
    ],
)
async def test_a_payload_holding_nan_or_infinity_is_refused_by_path_and_nothing_is_sent(
    payload: Any, where: str, engine_client: Any, queue_name: str
) -> None:
    # Given a producer and a payload with a number JSON cannot carry (it was stored as null:
    # the handler got None, or the job was dead-lettered as invalid_payload)
    p = producer.Producer(engine_client, queue_name)
    # When it is enqueued, alone and in a batch with a good job
    # Then it is refused, naming where the number is, and nothing is stored
    with pytest.raises(ValueError, match=f"^{where}: JSON has no NaN or infinity"):
        await p.enqueue("t", payload)
    with pytest.raises(ValueError, match=f"^{where}"):
        await p.enqueue_many([producer.JobSpec("t", {"ok": 1.5}), producer.JobSpec("t", payload)])
    assert (await stats.fetch_queue_stats(engine_client, queue_name)).enqueued_total == 0


async def test_a_job_that_cannot_be_stored_fails_alone_and_the_job_sharing_its_call_is_stored(
    engine_client: Any, queue_name: str
) -> None:
    # Given two concurrent enqueues, which share one script call, one of them with a string
    # JSON cannot encode (a lone surrogate, e.g. from a filename decoded with surrogateescape)
    p = producer.Producer(engine_client, queue_name)
    good, bad = await asyncio.gather(
        p.enqueue("t", {"name": "report.pdf"}),
        p.enqueue("t", {"name": "report\udcff.pdf"}),
        return_exceptions=True,
    )
    # Then that one is refused, saying why, and the other is stored (it failed with it before)
    assert isinstance(bad, ValueError)
    assert "cannot be stored as JSON" in str(bad)
    assert isinstance(good, producer.queue.EnqueueResult)
    assert good.created
    s = await stats.fetch_queue_stats(engine_client, queue_name)
    assert (s.enqueued_total, s.backlog) == (1, 1)


async def test_enqueue_many_returns_one_result_per_job_in_order(
    engine_client: Any, queue_name: str
) -> None:
    p = producer.Producer(engine_client, queue_name)
    specs = [producer.JobSpec("t", {"i": i}, job_id=f"job-{i}") for i in range(1100)]
    results = await p.enqueue_many(specs)
    assert [r.job_id for r in results] == [f"job-{i}" for i in range(1100)]
    assert (await stats.fetch_queue_stats(engine_client, queue_name)).backlog == 1100


async def test_enqueueing_an_existing_job_id_again_adds_nothing(
    engine_client: Any, queue_name: str
) -> None:
    # (what a resent call after a lost reply looks like)
    p = producer.Producer(engine_client, queue_name)
    first = await p.enqueue("t", {}, job_id="same")
    again = await p.enqueue("t", {}, job_id="same")
    assert first.created and not again.created
    assert (await stats.fetch_queue_stats(engine_client, queue_name)).backlog == 1


def test_the_blocking_producer_works_on_redis_and_on_the_cluster(
    redis_server: RedisServer, redis_cluster: RedisClusterProcesses, queue_name: str
) -> None:
    single = redis.Redis(port=redis_server.port, decode_responses=True)
    cluster = redis.cluster.RedisCluster(
        host="127.0.0.1", port=redis_cluster.ports[0], decode_responses=True
    )
    for client in (single, cluster):
        p = producer.SyncProducer(client, queue_name)
        a = p.enqueue("t", Email(to="x"), idempotency_key="once")
        b = p.enqueue("t", Email(to="x"), idempotency_key="once")
        many = p.enqueue_many([producer.JobSpec("t", {"i": i}) for i in range(3)])
        assert a.created and not b.created and len(many) == 3
        assert stats.fetch_queue_stats_sync(client, queue_name).backlog == 4
    single.close()
    cluster.close()


async def test_a_job_delayed_past_its_idempotency_window_is_not_enqueued_again_while_it_waits(
    engine_client: Any, queue_name: str
) -> None:
    # Given a job with an idempotency key, a 1 s window and a 4 s delay
    p = producer.Producer(engine_client, queue_name)
    first = await p.enqueue("send", {}, idempotency_key="order-9", idempotency_ttl=1.0, delay=4.0)
    # When the same key is enqueued again after the window's length, the first still waiting
    await asyncio.sleep(1.3)
    again = await p.enqueue("send", {}, idempotency_key="order-9", idempotency_ttl=1.0)
    # Then it resolves to the waiting job: the window counts from when that job is due
    assert first.created
    assert (again.created, again.job_id) == (False, first.job_id)
    s = await stats.fetch_queue_stats(engine_client, queue_name)
    assert (s.future_delayed, s.backlog) == (1, 0)
