"""Private rabbitmq-server processes for the tests: one broker per instance, on loopback only.

Used by the RabbitMQ fixtures (``rabbitmq_server``/``rabbitmq_factory`` in tests/conftest.py, the
contract suite's among them). A :class:`RabbitMQServer` is the local fleet's embedded node
(``workerfleet_operator.local.embedded_rabbitmq``: own Erlang node name, AMQP, management and
distribution ports on 127.0.0.1, own mnesia/log directories, stopped by the PID of
``beam.smp``), so the brokers of parallel tests never meet each other or a system broker, and the
tests exercise the very process handling ``workerfleet demo --broker rabbitmq`` uses.

A missing ``rabbitmq-server`` FAILS the test (``make deps`` installs it), never skips.
"""

from __future__ import annotations

import pytest
from workerfleet_operator.local import embedded, embedded_rabbitmq

USER = embedded_rabbitmq.USER
PASSWORD = embedded_rabbitmq.PASSWORD


class RabbitMQServer(embedded_rabbitmq.EmbeddedRabbitMQ):
    """A private node; ``kill()`` is SIGKILL of the broker, ``restart()`` boots it in place."""

    def __init__(self) -> None:
        try:
            super().__init__()
        except embedded.EmbeddedServerError as exc:
            pytest.fail(f"{exc} (the tests need a real RabbitMQ)")
