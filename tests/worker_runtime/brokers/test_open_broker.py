"""open_broker: one URL picks the broker, unknown or uninstalled ones fail before any I/O."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.support.brokers import request
from worker_runtime import brokers, errors
from worker_runtime.brokers import base, memory


async def test_two_brokers_opened_on_one_memory_url_share_their_queue() -> None:
    # Given a producer and a worker opening memory://shared for queue "emails"
    producer = await brokers.open_broker("memory://shared", "emails")
    worker = await brokers.open_broker("memory://shared", "emails")
    try:
        # When the producer enqueues a job
        [res] = await producer.enqueue_many([request()])
        # Then the worker gets it
        assert [d.id for d in await worker.fetch("w1", 1)] == [res.job_id]
        assert isinstance(worker, memory.MemoryBroker)
    finally:
        memory.forget_stores()


async def test_an_unknown_scheme_names_the_known_ones_and_never_the_url() -> None:
    with pytest.raises(errors.UnsupportedScheme) as raised:
        await brokers.open_broker("kafka://user:s3cret@host/x", "emails")
    assert "s3cret" not in str(raised.value)
    for scheme in ("redis://", "redis+cluster://", "memory://", "amqp://", "sqs://"):
        assert scheme in str(raised.value)
    assert isinstance(raised.value, ValueError)


async def test_a_known_scheme_whose_module_is_missing_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a scheme served by a module that is not installed here
    monkeypatch.setitem(brokers.SCHEMES, "nats", "worker_runtime.brokers.not_installed_here")
    # When it is opened
    with pytest.raises(errors.BrokerNotInstalled) as raised:
        await brokers.open_broker("nats://host", "emails")
    # Then the error names the scheme and the missing module
    assert "nats://" in str(raised.value)
    assert "worker_runtime.brokers.not_installed_here" in str(raised.value)


async def test_a_bad_queue_name_is_refused_before_any_broker_is_opened() -> None:
    with pytest.raises(errors.InvalidQueueName):
        await brokers.open_broker("redis://127.0.0.1:1/0", "{bad}")


def test_every_redis_scheme_the_url_parser_accepts_opens_the_redis_broker() -> None:
    from worker_runtime.brokers.redis import connection

    assert set(connection.SCHEMES) <= set(brokers.SCHEMES)
    assert {brokers.SCHEMES[s] for s in connection.SCHEMES} == {
        "worker_runtime.brokers.redis.broker"
    }
    assert base.validate_queue_name("emails.v2") == "emails.v2"


@pytest.mark.parametrize(
    ("url", "client", "extra"),
    [("sqs://127.0.0.1:1?region=us-east-1", "aiobotocore", "workerfleet[sqs]"),
     ("amqp://guest:guest@127.0.0.1:1/", "aio_pika", "reinstall workerfleet")],
)  # fmt: skip
async def test_a_broker_whose_client_library_is_missing_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, url: str, client: str, extra: str
) -> None:
    # Given an installation without the broker's client library
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == client else real_find_spec(name, *a),
    )
    # When a queue on that broker is opened
    with pytest.raises(errors.BrokerNotInstalled) as raised:
        await brokers.open_broker(url, "emails")
    # Then the error names the library and the extra, and nothing was connected
    assert client in str(raised.value) and extra in str(raised.value)


def test_the_operators_pure_core_imports_where_no_broker_client_library_is_installed() -> None:
    # Given a Python where the SQS client and the operator's Kubernetes libraries cannot be
    # imported (a plain `pip install workerfleet`, without the sqs or operator extras)
    code = (
        "import sys\n"
        "for name in ('aiobotocore', 'botocore', 'aiohttp', 'kopf', 'kubernetes'):\n"
        "    sys.modules[name] = None\n"
        "from workerfleet_operator import manifests, plan, autoscaling\n"
        "from workerfleet_operator.local import cli, demo, runner\n"
        "print('ok')\n"
    )
    # When the manifest builders and the local mode (`workerfleet demo`, `run`) are imported
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    # Then they import: sqs:// URLs are composed without the client, and the local runner
    # reads queues without the operator's Kubernetes shell
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"
