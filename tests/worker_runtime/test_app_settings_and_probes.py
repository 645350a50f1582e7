"""Worker settings from the environment, health decisions, JSON log records and metric names."""

from __future__ import annotations

import io
import json
import logging

import pydantic
import pytest
import redis.exceptions

from worker_runtime import config, errors, health, logs, metrics
from worker_runtime.brokers.redis import broker as redis_broker
from worker_runtime.worker import transient

CONTRACT_ENV = {
    "WORKERFLEET_REDIS_URL": "rediss://user:secret@redis.example:6380/2",
    "WORKERFLEET_QUEUE": "emails",
    "WORKERFLEET_APP": "emails.tasks:app",
    "WORKERFLEET_CONCURRENCY": "16",
    "WORKERFLEET_LEASE_SECONDS": "12",
    "WORKERFLEET_JOB_TIMEOUT_SECONDS": "40",
    "WORKERFLEET_DRAIN_TIMEOUT_SECONDS": "25",
    "WORKERFLEET_RETRY_MAX_ATTEMPTS": "7",
    "WORKERFLEET_RETRY_MAX_DELIVERIES": "3",
    "WORKERFLEET_RETRY_BACKOFF_STRATEGY": "fixed",
    "WORKERFLEET_RETRY_BACKOFF_BASE_SECONDS": "0.5",
    "WORKERFLEET_RETRY_BACKOFF_MAX_SECONDS": "10",
    "WORKERFLEET_RETRY_BACKOFF_JITTER": "decorrelated",
    "WORKERFLEET_DLQ_MAX_LENGTH": "500",
    "WORKERFLEET_DLQ_RETENTION_SECONDS": "3600",
    "WORKERFLEET_RATE_LIMIT_JOBS": "10",
    "WORKERFLEET_RATE_LIMIT_PER_SECONDS": "2",
    "WORKERFLEET_METRICS_PORT": "9200",
    "WORKERFLEET_POD_NAME": "emails-7d9f-abcde",
    "WORKERFLEET_POD_NAMESPACE": "team-a",
    "WORKERFLEET_LOG_LEVEL": "debug",
    "WORKERFLEET_LOG_FORMAT": "text",
}


def test_every_contract_variable_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in CONTRACT_ENV.items():
        monkeypatch.setenv(key, value)
    s = config.WorkerSettings()  # type: ignore[call-arg]
    assert (s.redis_url, s.queue, s.app) == (
        CONTRACT_ENV["WORKERFLEET_REDIS_URL"],
        "emails",
        "emails.tasks:app",
    )
    assert (s.concurrency, s.lease_seconds, s.job_timeout_seconds) == (16, 12.0, 40.0)
    assert s.drain_timeout_seconds == 25.0
    assert (s.retry_max_attempts, s.retry_max_deliveries) == (7, 3)
    assert (s.retry_backoff_strategy, s.retry_backoff_jitter) == ("fixed", "decorrelated")
    assert (s.retry_backoff_base_seconds, s.retry_backoff_max_seconds) == (0.5, 10.0)
    assert (s.dlq_max_length, s.dlq_retention_seconds) == (500, 3600.0)
    assert (s.rate_limit_jobs, s.rate_limit_per_seconds) == (10, 2.0)
    assert (s.metrics_port, s.pod_name, s.pod_namespace) == (9200, "emails-7d9f-abcde", "team-a")
    assert (s.log_level, s.log_format) == ("debug", "text")
    assert s.heartbeat_interval_seconds == 4.0
    assert s.health_stale_after_seconds == 12.0


def test_defaults_match_the_architecture_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(CONTRACT_ENV):
        monkeypatch.delenv(key, raising=False)
    s = config.WorkerSettings(redis_url="redis://127.0.0.1:6379/0")
    assert (s.concurrency, s.lease_seconds, s.job_timeout_seconds) == (8, 30.0, 300.0)
    assert (s.drain_timeout_seconds, s.retry_max_attempts, s.retry_max_deliveries) == (60.0, 5, 5)
    assert (s.retry_backoff_strategy, s.retry_backoff_jitter) == ("exponential", "full")
    assert (s.retry_backoff_base_seconds, s.retry_backoff_max_seconds) == (2.0, 300.0)
    assert (s.dlq_max_length, s.dlq_retention_seconds) == (100_000, 604_800.0)
    assert s.rate_limit_jobs is None and s.metrics_port == 9100
    assert (s.log_level, s.log_format, s.pod_namespace) == ("info", "json", "")


@pytest.mark.parametrize(
    ("bad", "said"),
    [
        ({"WORKERFLEET_RATE_LIMIT_JOBS": "5"}, None),  # half a rate limit
        ({"WORKERFLEET_CONCURRENCY": "0"}, None),
        ({"WORKERFLEET_RETRY_BACKOFF_JITTER": "random"}, None),
        (
            {
                "WORKERFLEET_RETRY_BACKOFF_BASE_SECONDS": "10",
                "WORKERFLEET_RETRY_BACKOFF_MAX_SECONDS": "1",
            },
            None,
        ),
        ({"WORKERFLEET_LEASE_SECONDS": "-1"}, None),
        # a time or rate that is not a finite number, by name: an infinite backoff maximum let
        # a Retry-After of 1e300 s park a job for good; "nan" was refused for its upper bound
        # ("less than or equal to 86400") or for none
        ({"WORKERFLEET_RETRY_BACKOFF_MAX_SECONDS": "inf"}, "should be a finite number"),
        ({"WORKERFLEET_LEASE_SECONDS": "nan"}, "should be a finite number"),
        ({"WORKERFLEET_DLQ_RETENTION_SECONDS": "inf"}, "should be a finite number"),
        ({"WORKERFLEET_RATE_LIMIT_PER_SECONDS": "nan"}, "should be a finite number"),
    ],
)
def test_invalid_settings_are_refused_at_start(
    bad: dict[str, str], said: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKERFLEET_REDIS_URL", "redis://127.0.0.1:6379/0")
    for key, value in bad.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(pydantic.ValidationError, match=said):
        config.WorkerSettings()  # type: ignore[call-arg]


def test_a_missing_broker_url_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORKERFLEET_REDIS_URL", raising=False)
    monkeypatch.delenv("WORKERFLEET_BROKER_URL", raising=False)
    with pytest.raises(pydantic.ValidationError, match="WORKERFLEET_BROKER_URL"):
        config.WorkerSettings()  # type: ignore[call-arg]


def test_the_broker_url_is_read_from_either_name_and_the_newer_one_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a pod env with the older name only (Redis pools), then with both
    monkeypatch.delenv("WORKERFLEET_BROKER_URL", raising=False)
    monkeypatch.setenv("WORKERFLEET_REDIS_URL", "redis://127.0.0.1:6379/0")
    assert config.WorkerSettings().redis_url == "redis://127.0.0.1:6379/0"  # type: ignore[call-arg]
    monkeypatch.setenv("WORKERFLEET_BROKER_URL", "amqp://u:p@127.0.0.1:5672/")
    # Then WORKERFLEET_BROKER_URL (set by the operator on RabbitMQ pools) is the one taken
    assert config.WorkerSettings().redis_url == "amqp://u:p@127.0.0.1:5672/"  # type: ignore[call-arg]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_healthz_turns_red_when_redis_has_not_answered_for_the_staleness_window() -> None:
    clock = FakeClock()
    state = health.HealthState(stale_after_seconds=9.0, clock=clock)
    # a fresh worker gets one window of grace before its first round trip
    clock.now += 5
    state.loop_tick()
    assert state.build_report().healthy
    clock.now += 5
    state.loop_tick()
    report = state.build_report()
    assert not report.healthy and "Redis" in report.detail
    state.redis_ok()
    assert state.build_report().healthy
    clock.now += 8.9
    state.loop_tick()
    assert state.build_report().healthy
    clock.now += 0.2
    assert not state.build_report().healthy
    state.redis_ok()
    state.fetch_ok()
    assert state.build_report().healthy and state.ready()


def test_readyz_stays_red_until_the_first_fetch_is_answered_while_healthz_has_its_grace() -> None:
    # A pod whose Redis URL is wrong must never turn Ready: a rollout would count it available
    # and retire the old pods. Liveness keeps its grace window (no restart before it ends).
    clock = FakeClock()
    state = health.HealthState(stale_after_seconds=9.0, clock=clock)
    clock.now += 1
    state.loop_tick()
    assert state.build_report().healthy and not state.ready()
    state.redis_ok()  # what the fetch lane records for an answered fetch
    state.fetch_ok()
    assert state.ready()


def test_healthz_turns_red_when_the_job_loop_stalls_and_readyz_when_draining() -> None:
    clock = FakeClock()
    state = health.HealthState(stale_after_seconds=9.0, clock=clock)
    state.redis_ok()
    state.fetch_ok()
    clock.now += 10
    state.redis_ok()  # the control thread still reaches Redis ...
    report = state.build_report()
    assert not report.healthy and "job loop stalled" in report.detail  # ... the loop does not
    state.loop_tick()
    assert state.ready()
    state.draining = True
    assert state.build_report().healthy and not state.ready()


def test_json_log_records_carry_the_bound_job_and_extra_fields() -> None:
    stream = io.StringIO()
    logs.configure("info", "json", stream=stream)
    try:
        log = logs.get_logger("unit", component="test")
        token = logs.bind_job(
            logs.JobLogContext(
                job_id="j-9", task_name="send", correlation_id="c-9", attempt=2, queue="q"
            )
        )
        try:
            log.info("inside", extra={"n": 3})
        finally:
            logs.unbind_job(token)
        log.info("outside")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        logging.getLogger().handlers = [
            h for h in logging.getLogger().handlers if not getattr(h, "_workerfleet", False)
        ]
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    inside, outside, failed = lines
    assert inside["msg"] == "inside" and inside["job_id"] == "j-9"
    assert inside["correlation_id"] == "c-9" and inside["attempt"] == 2 and inside["n"] == 3
    assert inside["component"] == "test" and inside["logger"] == "workerfleet.unit"
    assert "job_id" not in outside
    assert failed["exc_type"] == "ValueError" and "boom" in failed["traceback"]


def test_text_log_lines_carry_the_record_fields_after_the_message() -> None:
    # Given the text format (a terminal's), and a warning with fields, as the fetch loop logs
    stream = io.StringIO()
    logs.configure("info", "text", stream=stream)
    try:
        log = logs.get_logger("unit", component="test")
        log.warning(
            "fetch failed; retrying",
            extra={"error": "BrokerUnavailable: no reply", "retry_in_seconds": 0.126},
        )
    finally:
        logging.getLogger().handlers = [
            h for h in logging.getLogger().handlers if not getattr(h, "_workerfleet", False)
        ]
    # Then the line says what failed and when it tries again (text with spaces quoted)
    line = stream.getvalue().rstrip("\n")
    assert line.endswith(
        "workerfleet.unit: fetch failed; retrying component=test "
        'error="BrokerUnavailable: no reply" retry_in_seconds=0.126'
    ), line


def test_text_log_lines_escape_the_control_characters_a_producer_put_in_ids_and_errors() -> None:
    # Given the text format, and a job whose id, task name and error text a producer chose:
    # an escape sequence (ESC and the one-byte CSI 0x9b), a carriage return, a newline, DEL
    stream = io.StringIO()
    logs.configure("info", "text", stream=stream)
    job_id = "j\x1b[2J\r"
    try:
        log = logs.get_logger("unit")
        token = logs.bind_job(
            logs.JobLogContext(
                job_id=job_id, task_name="send\x9b31m", correlation_id=None, attempt=1, queue="q"
            )
        )
        try:
            log.warning("job %s failed\nfake line", job_id, extra={"error": "boom\x1b[31m\x7f"})
        finally:
            logs.unbind_job(token)
    finally:
        logging.getLogger().handlers = [
            h for h in logging.getLogger().handlers if not getattr(h, "_workerfleet", False)
        ]
    # Then the record is one line with no control character in it, each shown escaped
    text = stream.getvalue()
    assert text.count("\n") == 1, text
    line = text.rstrip("\n")
    assert not any(c in line for c in "\x1b\x9b\r\x7f"), repr(line)
    assert "[send\\x9b31m j\\x1b[2J\\r]" in line, line
    assert "job j\\x1b[2J\\r failed\\nfake line" in line, line
    assert 'error="boom\\u001b[31m\\u007f"' in line, line


def test_a_field_value_that_is_one_printable_word_stays_bare_and_any_other_is_quoted() -> None:
    assert logs.encode_text_value("jobs") == "jobs"
    assert logs.encode_text_value("\u00e9t\u00e9") == "\u00e9t\u00e9"  # printable Unicode kept
    assert logs.encode_text_value("a\x1bb") == '"a\\u001bb"'
    assert logs.encode_text_value("a\x9bb") == '"a\\u009bb"'
    assert logs.encode_text_value(["x\x9b"]) == '["x\\u009b"]'


def test_a_redis_error_is_described_by_its_message_not_its_category() -> None:
    # Given redis-py's connection error (its repr is only "network:ConnectionError") mapped
    # onto the taxonomy as the broker does
    refused = redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:1. Refused.")
    with pytest.raises(errors.BrokerUnavailable) as caught:
        redis_broker.raise_mapped(refused, "fetch")
    # Then the worker's log text names the address and the refusal, once
    # (a connection that could not be opened: the fetch was never sent)
    assert transient.describe(caught.value) == (
        "BrokerUnavailable: no connection to redis for fetch: "
        "ConnectionError: Error 111 connecting to 127.0.0.1:1. Refused."
    )
    # And an error reply keeps the class an operator searches the logs for
    with pytest.raises(errors.BrokerRejected) as rejected:
        redis_broker.raise_mapped(redis.exceptions.ReadOnlyError("You can't write"), "fetch")
    assert transient.describe(rejected.value) == (
        "BrokerRejected: redis refused fetch: You can't write (ReadOnlyError)"
    )


def test_the_metric_names_are_the_contract() -> None:
    m = metrics.WorkerMetrics("q")
    m.job_finished("t", "completed", 0.01)
    m.retried("t")
    m.dead_letter("max_attempts")
    m.redis_error("fetch")
    text = m.exposition().decode()
    for name in (
        "workerfleet_jobs_total",
        "workerfleet_job_duration_seconds",
        "workerfleet_jobs_in_flight",
        "workerfleet_job_retries_total",
        "workerfleet_dead_lettered_total",
        "workerfleet_fetch_errors_total",
        "workerfleet_redis_errors_total",
        "workerfleet_lease_renewals_total",
        "workerfleet_leases_lost_total",
        "workerfleet_worker_draining",
    ):
        assert f"# TYPE {name.removesuffix('_total')} " in text or f"# TYPE {name} " in text
    assert 'workerfleet_jobs_total{outcome="completed",queue="q",task="t"} 1.0' in text


async def test_the_probe_server_answers_health_readiness_metrics_and_refuses_the_rest() -> None:
    import asyncio

    clock = FakeClock()
    state = health.HealthState(stale_after_seconds=9.0, clock=clock)
    state.redis_ok()
    state.fetch_ok()
    server = health.HealthServer(state, metrics.WorkerMetrics("q"), "127.0.0.1", 0)
    await server.start()

    async def get(path: str, method: str = "GET") -> tuple[int, bytes]:
        assert server.bound_port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", server.bound_port)
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body

    try:
        status, body = await get("/healthz")
        assert status == 200 and json.loads(body)["healthy"] is True
        assert (await get("/readyz"))[0] == 200
        status, body = await get("/metrics")
        assert status == 200 and b"workerfleet_jobs_in_flight" in body
        assert (await get("/nope"))[0] == 404
        assert (await get("/healthz", "POST"))[0] == 405
        state.draining = True
        assert (await get("/readyz"))[0] == 503
        clock.now += 10  # Redis silent (and the loop too) for longer than the window
        status, body = await get("/healthz")
        assert status == 503 and json.loads(body)["healthy"] is False
    finally:
        await server.stop()
