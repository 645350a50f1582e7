"""The embedded rabbitmq-server boots even when a port picked for it was taken meanwhile.

Its ports are free ones picked before the boot, from the range the kernel also hands to
outgoing connections, so one can be taken by the time the node binds it (a CI run lost a test
to ``dist_port_already_used``). A real node, on loopback, stopped by its PID.
"""

from __future__ import annotations

import socket

from workerfleet_operator.local import embedded_rabbitmq

from tests.support import rabbitmq_server


def test_a_node_whose_distribution_port_was_taken_boots_on_another() -> None:
    # Given a node whose picked distribution port something else listens on now
    server = rabbitmq_server.RabbitMQServer()
    taken = socket.socket()
    taken.bind(("127.0.0.1", server.dist_port))
    taken.listen()
    first_pick = server.dist_port
    try:
        # When it boots
        server.start()
        # Then it answers, on another distribution port (its AMQP port as picked)
        assert server.dist_port != first_pick
        assert server.management_answers(timeout=5)
    finally:
        server.close()  # stops the node and removes its directory
        taken.close()
    assert embedded_rabbitmq.START_ATTEMPTS >= 2
