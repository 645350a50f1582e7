"""The Redis broker: today's engine (Redis streams, Lua scripts, fenced leases) behind the seam.

:class:`worker_runtime.brokers.redis.broker.RedisBroker` implements the protocols of
:mod:`worker_runtime.brokers.base` over :class:`worker_runtime.brokers.redis.queue.QueueClient`.
This ``__init__`` imports nothing: the client-free modules here (``keys``, ``eviction``) are read
by the operator's pure core, which must not pull redis-py in.
"""
