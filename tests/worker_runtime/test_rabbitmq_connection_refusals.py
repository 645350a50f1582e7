"""A connection RabbitMQ will not open now is an outage; only a vhost the user may not use is a
refusal.

RabbitMQ answers a ``connection.open`` it will not serve with ``connection.close``
(``rabbit_reader``): NOT_ALLOWED 530 "access to vhost 'V' refused for user 'U'" (no access, or
no such vhost) refuses the URL for good, but the same code also says a connection limit is
reached (the vhost's, the user's or the node's ``max-connections``), and INTERNAL_ERROR 541 says
"vhost 'V' is down" while a node or vhost starts. The broker read every such close as
``BrokerRejected``, so ``workerfleet enqueue`` and an App's producer reported a temporary outage
as a refusal. The mapping is checked with the frames as pamqp and aiormq hand them over, with
RabbitMQ's own texts (rabbit_reader.erl, 3.10.8 and 4.x), and a vhost connection limit is reached
for real on the session's rabbitmq-server.
"""

from __future__ import annotations

import urllib.parse
import uuid
from typing import Any

import pamqp.commands
import pamqp.exceptions
import pytest

from tests.worker_runtime.test_rabbitmq_refusals import _manage, job, translated
from worker_runtime import errors
from worker_runtime.brokers import base
from worker_runtime.brokers.rabbitmq import broker as rabbitmq_broker


def closed_at_open(code: int, text: str) -> pamqp.exceptions.AMQPInternalError:
    """What aiormq raises when RabbitMQ answers ``connection.open`` with this close."""
    return pamqp.exceptions.AMQPInternalError(
        "Connection.OpenOk", pamqp.commands.Connection.Close(code, text)
    )


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (530, "NOT_ALLOWED - access to vhost 'jobs' refused for user 'app'"),
        (530, "NOT_ALLOWED - vhost jobs not found"),
    ],
    ids=["no-access", "no-such-vhost"],
)
async def test_a_vhost_the_user_may_not_use_is_a_refusal_quoting_rabbitmq(
    code: int, text: str
) -> None:
    # Given RabbitMQ closing the connection at open: the user has no access to the vhost, or
    # there is no such vhost
    # When it is translated
    error = await translated(closed_at_open(code, text))
    # Then it is a refusal (no retry helps until the vhost or the permissions change)
    assert isinstance(error, errors.BrokerRejected)
    assert f"{code} {text}" in str(error)


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (
            530,
            "NOT_ALLOWED - access to vhost 'jobs' refused for user 'app': "
            "connection limit (10) is reached",
        ),
        (
            530,
            "NOT_ALLOWED - access to vhost 'jobs' refused for user 'app': "
            "connection limit cannot be queried, timeout",
        ),
        (
            530,
            "NOT_ALLOWED - connection refused for user 'app': user connection limit (5) is reached",
        ),
        (530, "NOT_ALLOWED - connection refused: node connection limit (1000) is reached"),
        (
            541,
            "INTERNAL_ERROR - access to vhost 'jobs' refused for user 'app': vhost 'jobs' is down",
        ),
    ],
    ids=["vhost-limit", "vhost-limit-timeout", "user-limit", "node-limit", "vhost-down"],
)
async def test_a_connection_rabbitmq_will_not_open_now_is_an_outage_quoting_rabbitmq(
    code: int, text: str
) -> None:
    # Given RabbitMQ closing the connection at open for a reason that passes: a connection
    # limit reached, or a vhost still starting
    # When it is translated
    error = await translated(closed_at_open(code, text))
    # Then it is an outage (the call goes through once a connection frees or the vhost is up),
    # and the error names RabbitMQ's reply
    assert isinstance(error, errors.BrokerUnavailable)
    assert f"{code} {text}" in str(error)


@pytest.fixture
def scratch_vhost(rabbitmq_server: Any) -> Any:
    """A vhost of this test's own, the administrator allowed everything on it; deleted after."""
    vhost = f"v{uuid.uuid4().hex[:10]}"
    _manage(rabbitmq_server, "PUT", f"vhosts/{vhost}", {})
    try:
        _manage(
            rabbitmq_server,
            "PUT",
            f"permissions/{vhost}/guest",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )
        yield vhost
    finally:
        _manage(rabbitmq_server, "DELETE", f"vhosts/{vhost}")


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_an_enqueue_meeting_a_vhosts_connection_limit_is_an_outage_that_passes(
    rabbitmq_server: Any, scratch_vhost: str
) -> None:
    # Given a vhost whose connection limit is reached (max-connections 0)
    _manage(rabbitmq_server, "PUT", f"vhost-limits/{scratch_vhost}/max-connections", {"value": 0})
    url = f"amqp://guest:guest@127.0.0.1:{rabbitmq_server.port}/{urllib.parse.quote(scratch_vhost)}"
    producer = rabbitmq_broker.RabbitMQBroker(url, "jobs", role=base.QueueRole.PRODUCER)
    try:
        # When a producer enqueues a job there
        with pytest.raises(errors.BrokerUnavailable) as outage:
            await producer.enqueue(job("j1"))
        # Then it is an outage naming RabbitMQ's reply, of a call never sent (not a refusal)
        assert (
            f"530 NOT_ALLOWED - access to vhost '{scratch_vhost}' refused for user 'guest': "
            "connection limit (0) is reached" in str(outage.value)
        )
        assert outage.value.sent is False
        # And once the limit is lifted the same producer's enqueue goes through
        _manage(rabbitmq_server, "DELETE", f"vhost-limits/{scratch_vhost}/max-connections")
        assert (await producer.enqueue(job("j2"))).job_id == "j2"
    finally:
        await producer.close()
    reader = rabbitmq_broker.RabbitMQBroker(url, "jobs", prefetch=1)
    try:
        [only] = await reader.fetch("check", 1, block=10)
        assert only.id == "j2"
    finally:
        await reader.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_an_enqueue_to_a_vhost_that_does_not_exist_is_refused_naming_it(
    rabbitmq_server: Any,
) -> None:
    # Given a URL naming a vhost that does not exist
    vhost = f"missing{uuid.uuid4().hex[:8]}"
    url = f"amqp://guest:guest@127.0.0.1:{rabbitmq_server.port}/{vhost}"
    producer = rabbitmq_broker.RabbitMQBroker(url, "jobs", role=base.QueueRole.PRODUCER)
    try:
        # When a producer enqueues a job there
        with pytest.raises(errors.BrokerRejected) as refused:
            await producer.enqueue(job("j1"))
    finally:
        await producer.close()
    # Then it is a refusal naming the vhost
    assert "530 NOT_ALLOWED - " in str(refused.value)
    assert vhost in str(refused.value)
