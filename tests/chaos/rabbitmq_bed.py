"""The fault suite's bed on RabbitMQ: a private rabbitmq-server, workers on ``amqp://``.

Used by tests/chaos/test_rabbitmq_scenarios.py. It is tests/chaos/harness.py's :class:`Bed`
with the broker-specific parts replaced: the server is a private node (tests/support/
rabbitmq_server.py) that can be SIGKILLed and restarted in place; the producer thread enqueues
through the RabbitMQ broker itself (publisher confirms) and logs whether RabbitMQ answered; the
jobs still live are read from the management API (ready + unacknowledged in the work queues
and the delay buckets) and the dead letters from the DLQ itself. Workers on RabbitMQ write no
heartbeats, so a worker serves once it logged ``worker started``; RabbitMQ keeps no done
markers, so no job asks for one. The verdict is the same history checker's
(tests/chaos/history.py), told that a node crash may split a retry's transaction
(``split_on_server_faults``): a commit's new copy is on disk when ``tx.commit-ok`` comes back,
the ack of the copy it replaced may not be, so after the restart both run. A worker's crash
drops an uncommitted transaction whole, but the first copy a worker's channel sends to each
queue is published with confirms before its ack's commit (the broker's
``_publish_first_copies``), so a worker killed in between leaves both: ``split_settles`` too.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from tests.chaos import harness, history
from tests.support import rabbitmq_server
from tests.worker_runtime import workerproc
from worker_runtime import envelope, errors
from worker_runtime.brokers import base
from worker_runtime.brokers.rabbitmq import broker as rabbitmq_broker
from worker_runtime.brokers.rabbitmq import topology as rabbitmq_topology


class RabbitMQSlot(harness.Slot):
    """A worker position whose worker logs at info (``worker started`` says it serves)."""

    log_level = "info"

    def worker_url(self) -> str:
        assert isinstance(self.bed, RabbitMQBed)
        return self.bed.worker_url


class RabbitMQBed(harness.Bed):
    """One scenario on a private RabbitMQ: see the module docstring."""

    server: rabbitmq_server.RabbitMQServer
    split_on_server_faults = True  # a node crash may split a retry's transaction
    split_settles = True  # a channel's first copy to a queue is confirmed before the ack

    def __init__(
        self,
        config: harness.Config,
        server: rabbitmq_server.RabbitMQServer,
        directory: Path,
        *,
        queue_type: str = "quorum",
    ) -> None:
        super().__init__(config, server, directory)
        self.queue_type = queue_type
        self.worker_url = f"{server.url}?queue_type={queue_type}"

    def _open(self) -> rabbitmq_broker.RabbitMQBroker:
        c = self.config
        options = base.QueueOptions(lease_seconds=c.lease_seconds, max_deliveries=c.max_deliveries)
        return rabbitmq_broker.RabbitMQBroker(
            self.server.url,
            self.queue,
            options,
            management_port=self.server.management_port,
            queue_type=self.queue_type,
        )

    def start(self) -> None:
        # the queues exist before any worker consumes from them
        async def declare() -> None:
            b = self._open()
            try:
                await b.count_dead_letters()
            finally:
                await b.close()

        asyncio.run(declare())
        self.slots = [RabbitMQSlot(self, i) for i in range(self.config.workers)]
        self.wait_registered({s.pid for s in self.slots})
        self._producer = threading.Thread(target=self._produce, name="chaos-producer", daemon=True)
        self._producer.start()

    # ---- producing -------------------------------------------------------------------------

    def _produce(self) -> None:
        try:
            asyncio.run(self._produce_async())
        except BaseException as exc:  # reported by run_until_settled
            self._producer_error = exc

    async def _produce_async(self) -> None:
        b = self._open()
        try:
            batches, pause = self.build_batches()
            for batch in batches:
                requests = [
                    base.EnqueueRequest(
                        envelope=envelope.build_envelope("chaos", p, job_id=uuid.uuid4().hex)
                    )
                    for p, _ in batch
                ]
                t = time.time()
                try:
                    await b.enqueue_many(requests)
                    answered = True
                except errors.BrokerError:
                    answered = False  # some may have gone in: the checker allows either
                with self._lock:
                    for request, (_, fails) in zip(requests, batch, strict=True):
                        self.enqueues.append(
                            history.Enqueue(request.envelope.id, t, answered, fails=fails)
                        )
                await asyncio.sleep(pause)
        finally:
            await b.close()

    # ---- the server ------------------------------------------------------------------------

    def kill_server(self, *, down_seconds: float) -> None:
        """SIGKILL the node, keep it down a moment, restart it in place (same name, ports)."""
        t0 = time.time()
        self.server.kill()
        self.kills += 1
        time.sleep(down_seconds)
        self.server.start()
        # every connection died: each worker's unacked deliveries come back and run again
        self.add_fault(
            history.Fault("rabbitmq_kill", t0, time.time(), capacity=self.fleet_capacity())
        )

    # ---- reading the end -------------------------------------------------------------------

    def _queue_rows(self) -> list[dict[str, Any]]:
        """The pool's RabbitMQ queues (levels, delay buckets, DLQ) as the management API
        lists them."""
        return self._open()._read_management(
            "queues/{}",
            {
                "name": rabbitmq_topology.queue_name_pattern(self.queue),
                "use_regex": "true",
                "columns": "name,type,state,messages_ready,messages_unacknowledged,consumers",
            },
        )

    def live_jobs(self) -> int | None:
        """Jobs in the work queues and delay buckets, ready or unacked, as RabbitMQ sampled
        them (every 0.5 s). None while the management API does not answer or has not sampled
        a work queue yet (after a declaration or a restart its row carries no counts for a few
        seconds, which is no 0). A delay bucket without counts counts 0: one a crash left
        without a leader never gets any (broker.py, BUCKET_CONFIRM_TIMEOUT_SECONDS), and a job
        left in a bucket shows in the verdict as lost."""
        try:
            rows = self._queue_rows()
        except errors.BrokerError:
            return None
        live = 0
        for row in rows:
            name = str(row.get("name", ""))
            work = rabbitmq_topology.level_of(name, self.queue) is not None
            if not work and rabbitmq_topology.bucket_ms(self.queue, name) is None:
                continue  # the DLQ
            ready, unacked = row.get("messages_ready"), row.get("messages_unacknowledged")
            if not isinstance(ready, int) or not isinstance(unacked, int):
                if work:
                    return None
                continue
            live += ready + unacked
        return live

    def describe_queue(self) -> str:
        """The pool's RabbitMQ queues: ready, unacknowledged, consumers (a queue with
        jobs and no consumer says a worker did not come back to it)."""
        try:
            rows = self._queue_rows()
        except errors.BrokerError as exc:
            return f"the management API did not answer: {exc}"
        return "; ".join(
            f"{r.get('name')} ({r.get('type')}, {r.get('state')}): ready "
            f"{r.get('messages_ready')} unacked {r.get('messages_unacknowledged')} consumers "
            f"{r.get('consumers')}"
            for r in rows
        )

    def wait_registered(self, pids: set[int]) -> None:
        """Wait (bounded) until these workers logged that they serve."""

        def started() -> bool:
            ready = {
                p.pid
                for p in self.procs
                if any(r.get("msg") == "worker started" for r in p.log_records())
            }
            return pids <= ready

        workerproc.wait_until(started, 60, f"workers {sorted(pids)} to start")

    def read_final(self) -> history.Final:
        """The dead letters as the DLQ holds them; no job is live (the bed waited for that)."""

        async def read() -> list[base.DeadLetter]:
            b = self._open()
            try:
                return await b.list_dead_letters(limit=1_000_000)
            finally:
                await b.close()

        letters = asyncio.run(read())
        dead: dict[str, tuple[str, float]] = {
            x.job_id: (x.reason, x.dead_lettered_at) for x in letters
        }
        return history.Final(dead=dead, live=set(), acks=set())
