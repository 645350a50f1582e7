"""RabbitMQ behind the broker seam (AMQP 0-9-1, quorum queues, publisher confirms).

``open_broker`` imports this package lazily for ``amqp://`` and ``amqps://`` URLs. The pieces:
:mod:`.topology` (every queue name, argument and header), :mod:`.broker` (the worker's and the
producer's :class:`~worker_runtime.brokers.base.Broker`), :mod:`.readside` (the operator's
:class:`~worker_runtime.brokers.base.QueueProbe` and the CLI's
:class:`~worker_runtime.brokers.base.DeadLetters`). What it promises and what it cannot:
docs/brokers.md.
"""
