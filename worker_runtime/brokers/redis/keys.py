"""THE Redis key schema of a workerfleet queue; every other module builds key names here.

Called by the engine (:mod:`worker_runtime.brokers.redis.queue`), the read-only stats
(:mod:`worker_runtime.brokers.redis.stats`), the DLQ tools and the helpers. The Lua scripts receive
these names as KEYS, in the order of :meth:`QueueKeys.script_keys`, and each script's header repeats
the part it touches.

All keys of queue ``Q`` start with the hash tag ``{wf:Q}`` so they live in one Redis Cluster slot
and every script is single-slot. Times are Redis server milliseconds unless noted.

=============================  ======  =====================================================
key                            type    contents
=============================  ======  =====================================================
``{wf:Q}:ready:high``          stream  ready jobs of priority high; field ``j`` = job id.
``{wf:Q}:ready:normal``        stream  same, priority normal. Consumer group ``workers``,
``{wf:Q}:ready:low``           stream  consumer = worker id. An entry lives until the job leaves
                                       the in-flight state (retry/dead-letter/release:
                                       XACK + XDEL; ack: XACK, then XTRIM MINID below the
                                       group's oldest pending entry and XDEL of the acked ids
                                       above it). Never MAXLEN-trimmed. A deleted consumer's
                                       pending entries move to the consumer
                                       ``workerfleet:orphaned`` first, so every entry below the
                                       oldest pending one is acknowledged. Invariant: total
                                       stream length = undelivered ready jobs + leased jobs.
``{wf:Q}:env``                 hash    job id → envelope JSON (envelope.JobEnvelope).
``{wf:Q}:state``               hash    job id → ``prio|attempts|deliveries|lost`` (every live job).
``{wf:Q}:inflight``            hash    job id → ``token|prio|stream entry id|worker`` while the
                                       job is delivered; ``token`` is the fencing token
                                       ``<epoch>:<n>``: ``n`` from ``counters.fence``, the
                                       epoch the first 8 hex digits of the run id and of the
                                       replication id of the server that issued it (new
                                       after a restart or a promotion, so a failover never
                                       reissues a token).
``{wf:Q}:history``             hash    job id → JSON list of failure records (only after failures).
``{wf:Q}:leases``              zset    job id → lease expiry ms (in-flight jobs).
``{wf:Q}:delayed``             zset    job id → due ms (delayed jobs and retries waiting).
``{wf:Q}:dlq``                 zset    job id → dead-lettered ms (the DLQ, oldest first).
``{wf:Q}:dlq:data``            hash    job id → JSON dead-letter record (envelope, history,
                                       reason, counts, worker, timestamps); an envelope that
                                       is not UTF-8 is kept as ``envelope_base64`` instead.
``{wf:Q}:counters``            hash    enqueued, completed, failed, retried, dead_lettered,
                                       released, workers_lost, cancelled (monotonic; cancelled
                                       only once a job was cancelled) and ``fence`` (the
                                       counter of the last fencing token handed out). Every
                                       queue that ever held a job has one: ``queue ls`` finds
                                       queues by SCAN for ``{wf:*}:counters``.
``{wf:Q}:workers``             hash    worker id → heartbeat JSON.
``{wf:Q}:workers:expiry``      zset    worker id → heartbeat expiry ms; expired without
                                       deregistration = a lost (killed) worker.
``{wf:Q}:ratelimit``           hash    token bucket ``{tokens, ts}`` of the queue-wide rate limit.
``{wf:Q}:ratelimit:<name>``    hash    a handler's named bucket (ratelimit.apply_acquire), same
                                       fields; both expire 2 refill periods + 1 s after use.
``{wf:Q}:enqueued``            zset    job id → enqueue ms, for ``queue.ENQUEUE_DEDUP_SECONDS``:
                                       a re-sent enqueue of an id in it is a no-op (the job
                                       may have run, been cancelled and been deleted).
                                       Trimmed by enqueue; a cancel keeps the id's entry.
``{wf:Q}:idem:<key>``          string  enqueue dedup: job id, with TTL (SET NX PX); a cancel
                                       keeps it until it expires.
``{wf:Q}:done:<key>``          string  "done" marker written atomically with an ack, with TTL.
``{wf:Q}:finished``            hash    job id → ``finished ms|attempts|deliveries|run ms|task``
                                       of an acknowledged job (``run ms`` empty when not
                                       known); only with ``QueueOptions.keep_finished_seconds``
                                       > 0. Written by the ack in the same script step.
``{wf:Q}:finished:expiry``     zset    job id → ms its ``finished`` record expires (finished
                                       ms + keep). Each ack trims at most as many expired
                                       records as it acknowledges + ``FINISHED_TRIM_EXTRA``
                                       (10), and sets both keys to expire ``keep`` ms after
                                       the last ack, so an idle queue's records go too.
=============================  ======  =====================================================

A cancel (``lua/cancel.lua``) of a job that has not started deletes its ``state``, ``env`` and
``history`` fields and its ``delayed`` member or its undelivered ``ready:<prio>`` entry in one
script, and refuses a job in ``inflight`` (running) or in ``dlq`` (dead-lettered). A job is live
exactly while it has a ``state`` field: fetch hands out no id without one, so a cancelled job is
never delivered even from an entry a cancel did not delete.

A status look-up (``lua/status.lua``, ``flags=no-writes``) reads, for each id in one script,
``state``, ``inflight``, ``leases``, ``delayed``, ``env``, ``history``, ``dlq``, ``dlq:data``
and, for an id with neither a state nor a dead letter, its ``finished:expiry`` score and
``finished`` record (done, while the record has not expired) and its ``enqueued`` entry (when
it was enqueued, while the dedup window keeps it); it writes nothing. Only ``finished`` records
a finished job by id, and only while a queue keeps them: ``done:<key>`` is keyed by idempotency
key. With ``keep_finished_seconds`` 0 (the default) the ack neither reads nor writes the two
``finished`` keys.

Topics (events, :mod:`worker_runtime.events`). A subscription ``G`` of topic ``T`` is the
ordinary queue ``Q = T:G`` above; the topic itself has one key:

=============================  ======  =====================================================
``{wft:T}:subscriptions``      set     the groups subscribed to topic ``T``. ``publish.lua``
                                       reads it and adds the event's job to every listed
                                       subscription queue in the same script (its env, state,
                                       ready:<prio>, counters and enqueued keys), so a
                                       publish reaches all current subscriptions or none.
``{wfc:C}:trace``               list    the trace of correlation id ``C`` (``C`` itself when it is
                                       a valid queue name, else ``sha1:<hex of C>``): JSON
                                       entries {kind, id, parent, name, at}, newest last,
                                       trimmed to base.TRACE_KEEP and expiring
                                       base.TRACE_TTL_SECONDS after the last write.
=============================  ======  =====================================================

The publish script spans several hash tags, so it runs on a single Redis (or Sentinel) only;
on Redis Cluster ``Capabilities.topics`` is False.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from worker_runtime import errors
from worker_runtime.brokers import base

PRIORITIES: tuple[str, ...] = ("high", "normal", "low")
"""Priority levels, most urgent first; fetch reads the streams in this order."""

FINISHED_TRIM_EXTRA = 10
"""Expired ``finished`` records an ack removes beyond the number of jobs it acknowledges (the
script's bound, ``lua/ack.lua``): the records leave at least as fast as they come, and no ack
walks an unbounded list."""

GROUP = "workers"
"""The consumer group on every ready stream."""

InvalidQueueName = errors.InvalidQueueName
build_queue_name = base.validate_queue_name


def build_prefix(queue: str) -> str:
    """The hash-tagged prefix shared by every key of ``queue``."""
    return "{wf:" + build_queue_name(queue) + "}"


@dataclass(frozen=True)
class QueueKeys:
    """Every key name of one queue (see the module docstring for types and contents)."""

    queue: str
    prefix: str
    ready: tuple[str, ...]
    env: str
    state: str
    history: str
    leases: str
    delayed: str
    dlq: str
    dlq_data: str
    counters: str
    workers: str
    workers_expiry: str
    ratelimit: str
    inflight: str
    enqueued: str
    finished: str
    finished_expiry: str

    def script_keys(self) -> list[str]:
        """The fixed KEYS list every engine script receives (order matters to the Lua side)."""
        return [
            *self.ready,
            self.env,
            self.state,
            self.history,
            self.leases,
            self.delayed,
            self.dlq,
            self.dlq_data,
            self.counters,
            self.workers,
            self.workers_expiry,
            self.ratelimit,
            self.inflight,
        ]

    def idempotency(self, key: str) -> str:
        """The enqueue-dedup key for an idempotency key."""
        return f"{self.prefix}:idem:{key}"

    def done(self, key: str) -> str:
        """The handler-side "done" marker for an idempotency key."""
        return f"{self.prefix}:done:{key}"


def build_topic_key(topic: str) -> str:
    """The set of groups subscribed to ``topic`` (see the module docstring)."""
    return "{wft:" + build_queue_name(topic) + "}:subscriptions"


def build_trace_key(correlation_id: str) -> str:
    """The trace list of ``correlation_id`` (see the module docstring)."""
    try:
        tag = build_queue_name(correlation_id)
    except errors.InvalidQueueName:
        tag = "sha1:" + hashlib.sha1(correlation_id.encode("utf-8", "surrogateescape")).hexdigest()
    return "{wfc:" + tag + "}:trace"


def build_publish_keys(queue: str) -> list[str]:
    """The keys ``publish.lua`` writes for one subscription queue, in its order: ready
    stream of priority normal, env, state, counters, enqueued."""
    k = build_keys(queue)
    return [k.ready[PRIORITIES.index("normal")], k.env, k.state, k.counters, k.enqueued]


COUNTERS_PATTERN = "{wf:*}:counters"
"""SCAN pattern of every queue's ``counters`` key: a queue that ever held a job has one."""


def queue_of_counters_key(key: str) -> str | None:
    """The queue whose ``{wf:Q}:counters`` key ``key`` is (None for any other key)."""
    head, tail = "{wf:", "}:counters"
    if key.startswith(head) and key.endswith(tail) and len(key) > len(head) + len(tail):
        return key[len(head) : -len(tail)]
    return None


def build_keys(queue: str) -> QueueKeys:
    """All key names of ``queue``."""
    p = build_prefix(queue)
    return QueueKeys(
        queue=queue,
        prefix=p,
        ready=tuple(f"{p}:ready:{name}" for name in PRIORITIES),
        env=f"{p}:env",
        state=f"{p}:state",
        history=f"{p}:history",
        leases=f"{p}:leases",
        delayed=f"{p}:delayed",
        dlq=f"{p}:dlq",
        dlq_data=f"{p}:dlq:data",
        counters=f"{p}:counters",
        workers=f"{p}:workers",
        workers_expiry=f"{p}:workers:expiry",
        ratelimit=f"{p}:ratelimit",
        inflight=f"{p}:inflight",
        enqueued=f"{p}:enqueued",
        finished=f"{p}:finished",
        finished_expiry=f"{p}:finished:expiry",
    )
