"""Queue backends behind one seam: the protocols in :mod:`worker_runtime.brokers.base`.

The worker, the producer, the CLI and the operator program against
:class:`~worker_runtime.brokers.base.Broker`, :class:`~worker_runtime.brokers.base.QueueProbe`
and :class:`~worker_runtime.brokers.base.DeadLetters`; each backend lives in its own subpackage
and is imported only when a URL asks for it.
"""
