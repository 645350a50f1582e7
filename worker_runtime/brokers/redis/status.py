"""READ-ONLY look-up of jobs by id on Redis: where each job is ("where is my job?").

Called by :meth:`worker_runtime.brokers.redis.broker.RedisBroker.fetch_job_status` (so
``workerfleet job show`` and ``Producer.status``) and by the producers over a plain Redis client.
One ``lua/status.lua`` call (``flags=no-writes``) reads up to :data:`STATUS_BATCH` ids from the
state, inflight, leases, delayed, env, history, dlq, dlq:data, enqueued, finished and
finished:expiry keys of
:mod:`worker_runtime.brokers.redis.keys` in one step, so a job moving while it is read is seen in
exactly one place. Nothing is written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import redis.asyncio
import redis.asyncio.cluster

from worker_runtime.brokers import base
from worker_runtime.brokers.redis import dlq, keys, scripts
from worker_runtime.brokers.redis import queue as queue_mod

AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster

STATUS_BATCH = 500
"""Most ids one script call reads (as a cancel's batch): the reply carries a dead letter's
whole record per dead-lettered id."""

_FIELDS = 11
"""Values the script returns per id (lua/status.lua, "Returns")."""


def build_status_keys(queue: str) -> list[str]:
    """The KEYS of a status call: the fixed layout, then ``{wf:Q}:enqueued`` (KEYS[16]),
    ``{wf:Q}:finished`` (KEYS[17]) and ``{wf:Q}:finished:expiry`` (KEYS[18])."""
    k = keys.build_keys(queue)
    return [*k.script_keys(), k.enqueued, k.finished, k.finished_expiry]


def _text(value: Any) -> str:
    # read undecoded: a stored task name or error that is not UTF-8 must not fail the reply
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def _seconds(value: Any, scale: float = 1.0) -> float | None:
    text = _text(value)
    return float(text) / scale if text else None


def _last_failure(raw: str) -> base.FailureRecord | None:
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return dlq.build_failure_record(data) if isinstance(data, dict) else None


def build_done_status(
    job_id: str, record: str, now: float, enqueued_at: float | None
) -> base.JobStatus:
    """The status of an acknowledged job from its ``{wf:Q}:finished`` record
    (``finished ms|attempts|deliveries|run ms|task``, keys.py; pure). A record that does not
    parse still reads DONE, with what could be read."""
    parts = record.split("|", 4)
    parts += [""] * (5 - len(parts))
    finished, attempts, deliveries, run, task = parts

    def number(text: str) -> float | None:
        try:
            return float(text)
        except ValueError:
            return None

    finished_ms, run_ms = number(finished), number(run)
    return base.JobStatus(
        job_id=job_id,
        state=base.JobState.DONE,
        checked_at=now,
        task=task or None,
        attempts=int(attempts) if attempts.isdigit() else 0,
        deliveries=int(deliveries) if deliveries.isdigit() else 0,
        enqueued_at=enqueued_at,
        finished_at=finished_ms / 1000 if finished_ms is not None else None,
        run_seconds=run_ms / 1000 if run_ms is not None else None,
    )


def build_job_statuses(job_ids: Sequence[str], raw: Sequence[Any]) -> list[base.JobStatus]:
    """Parse the status script's reply for ``job_ids`` (pure)."""
    now = int(raw[0]) / 1000
    out: list[base.JobStatus] = []
    for i, job_id in enumerate(job_ids):
        values = raw[1 + i * _FIELDS : 1 + (i + 1) * _FIELDS]
        row = [_text(v) for v in values]
        state, prio, attempts, deliveries, task, enqueued, due, worker, lease, failure, rec = row
        if state == base.JobState.DEAD_LETTERED and rec:
            # parsed from its own bytes, as dlq show reads it: the record of an id that is not
            # UTF-8 holds that id's bytes, and an escaped text of them is not JSON
            letter = dlq.build_dead_letter(values[-1])
            out.append(base.build_dead_letter_status(job_id, letter, now))
            continue
        if state == base.JobState.DONE:
            out.append(build_done_status(job_id, rec, now, _seconds(enqueued)))
            continue
        job_state = base.JobState(state)
        tries = int(attempts) if attempts else 0
        out.append(
            base.JobStatus(
                job_id=job_id,
                state=job_state,
                checked_at=now,
                task=task or None,
                priority=prio or None,
                attempts=tries,
                deliveries=int(deliveries) if deliveries else 0,
                enqueued_at=_seconds(enqueued),
                due_at=_seconds(due, 1000),
                retry=job_state is base.JobState.SCHEDULED and tries > 0,
                worker_id=worker or None,
                lease_expires_at=_seconds(lease, 1000),
                last_failure=_last_failure(failure),
            )
        )
    return out


async def fetch_job_statuses(
    client: AsyncClient, queue: str, job_ids: Sequence[str]
) -> list[base.JobStatus]:
    """The status of each of ``job_ids`` in ``queue``, in order (read-only; one script call per
    :data:`STATUS_BATCH` ids, each call one consistent snapshot)."""
    key_list = build_status_keys(queue)
    out: list[base.JobStatus] = []
    for start in range(0, len(job_ids), STATUS_BATCH):
        chunk = list(job_ids[start : start + STATUS_BATCH])
        raw = await scripts.STATUS(client, key_list, queue_mod.encode_job_ids(chunk), decode=False)
        out.extend(build_job_statuses(chunk, raw))
    return out


def fetch_job_statuses_sync(
    client: Any, queue: str, job_ids: Sequence[str]
) -> list[base.JobStatus]:
    """:func:`fetch_job_statuses` on a blocking client (``redis.Redis``, ``RedisCluster``)."""
    key_list = build_status_keys(queue)
    out: list[base.JobStatus] = []
    for start in range(0, len(job_ids), STATUS_BATCH):
        chunk = list(job_ids[start : start + STATUS_BATCH])
        raw = scripts.STATUS.call_sync(client, key_list, queue_mod.encode_job_ids(chunk))
        out.extend(build_job_statuses(chunk, raw))
    return out
