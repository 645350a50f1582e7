"""The fault suite's bed on SQS: an ElasticMQ server, worker processes on ``sqs://``, the history.

Used by tests/chaos/test_sqs_scenarios.py. It is tests/chaos/harness.py's :class:`Bed` with
the broker-specific parts replaced: the server is a persistent ElasticMQ (tests/support/
elasticmq.py) that can be SIGKILLed and restarted on its data; the producer thread enqueues
through the SQS broker itself (``SqsBroker.enqueue_many``) and logs whether SQS answered; the
queue's emptiness and the dead letters are read from SQS (GetQueueAttributes on the priority
queues, and the DLQ's own messages). Workers on SQS write no heartbeats, so a worker counts as
serving once it logged ``worker started``. SQS keeps no done markers, so no job asks for one
(``ack_marker_share`` 0). The verdict is the same history checker's (tests/chaos/history.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import botocore.session

from tests.chaos import harness, history
from tests.support import elasticmq
from tests.worker_runtime import workerproc
from worker_runtime import envelope, errors
from worker_runtime.brokers import base
from worker_runtime.brokers.sqs import broker as sqs_broker
from worker_runtime.brokers.sqs import settings


class SqsSlot(harness.Slot):
    """A worker position whose worker logs at info: its ``worker started`` line is how the bed
    knows it serves (no heartbeats on SQS)."""

    log_level = "info"


class SqsBed(harness.Bed):
    """One scenario on ElasticMQ: see the module docstring."""

    split_settles = True  # a retry is two calls: send the copy, delete the original
    # botocore re-sends a SendMessageBatch whose reply was lost (ElasticMQ killed after it
    # stored the batch): the standard queue then holds the jobs twice (docs/brokers.md)
    enqueue_resends = sqs_broker.SqsBroker.DEFAULT_RETRIES

    def __init__(
        self, config: harness.Config, server: elasticmq.ElasticMQServer, directory: Path
    ) -> None:
        super().__init__(config, server, directory)
        self.names = settings.build_queue_names(self.queue, settings.parse_sqs_url(server.url))
        self._sqs = botocore.session.get_session().create_client(
            "sqs",
            region_name="us-east-1",
            endpoint_url=server.endpoint,
            aws_access_key_id=sqs_broker.LOCAL_CREDENTIALS[0],
            aws_secret_access_key=sqs_broker.LOCAL_CREDENTIALS[1],
        )

    def _options(self) -> base.QueueOptions:
        c = self.config
        return base.QueueOptions(lease_seconds=c.lease_seconds, max_deliveries=c.max_deliveries)

    async def _open(self) -> sqs_broker.SqsBroker:
        return await sqs_broker.open_sqs_broker(
            self.server.url, self.queue, options=self._options()
        )

    def start(self) -> None:
        # the queues exist (with the pool's redrive policy) before any worker polls them
        async def make_queues() -> None:
            await (await self._open()).close()

        asyncio.run(make_queues())
        self.slots = [SqsSlot(self, i) for i in range(self.config.workers)]
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
        c = self.config
        b = await self._open_when_answering()
        try:
            payloads = self.build_job_payloads(c.jobs)
            batches = [
                payloads[i : i + c.enqueue_batch] for i in range(0, len(payloads), c.enqueue_batch)
            ]
            pause = c.enqueue_seconds / max(1, len(batches))
            for batch in batches:
                await self._enqueue_batch(b, batch)
                await asyncio.sleep(pause)
        finally:
            await b.close()

    async def _open_when_answering(self) -> sqs_broker.SqsBroker:
        """The producer's broker, once ElasticMQ answers (a fault may have it down), 60 s most."""
        deadline = time.monotonic() + 60
        while True:
            try:
                return await self._open()
            except errors.BrokerUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def _enqueue_batch(
        self, b: sqs_broker.SqsBroker, payloads: list[tuple[dict[str, Any], int]]
    ) -> None:
        requests = [
            base.EnqueueRequest(
                envelope=envelope.build_envelope("chaos", p, job_id=uuid.uuid4().hex)
            )
            for p, _ in payloads
        ]
        t = time.time()
        try:
            await b.enqueue_many(requests)
            answered = True
        except errors.BrokerError:
            answered = False  # some batches may have gone in: the checker allows either
        returned = time.time()
        with self._lock:
            for request, (_, fails) in zip(requests, payloads, strict=True):
                self.enqueues.append(
                    history.Enqueue(
                        request.envelope.id, t, answered, fails=fails, returned=returned
                    )
                )

    # ---- the server ------------------------------------------------------------------------

    def kill_server(self, *, down_seconds: float) -> None:
        """SIGKILL ElasticMQ, keep it down a moment, restart it on its data (same ports)."""
        t0 = time.time()
        self.server.kill()
        self.kills += 1
        time.sleep(down_seconds)
        self.server.start()
        # Every worker's calls failed meanwhile: each may re-run what it held.
        self.add_fault(
            history.Fault("elasticmq_kill", t0, time.time(), capacity=self.fleet_capacity())
        )

    # ---- reading the end -------------------------------------------------------------------

    def live_jobs(self) -> int | None:
        """Messages still in the priority queues, visible, in flight or delayed (None while
        ElasticMQ does not answer)."""
        total = 0
        try:
            for _, name in self.names.by_priority:
                url = f"{self.server.endpoint}/000000000000/{name}"
                attrs = self._sqs.get_queue_attributes(
                    QueueUrl=url,
                    AttributeNames=[
                        "ApproximateNumberOfMessages",
                        "ApproximateNumberOfMessagesNotVisible",
                        "ApproximateNumberOfMessagesDelayed",
                    ],
                )["Attributes"]
                total += sum(int(v) for v in attrs.values())
        except Exception:  # any client or connection error: not answering now
            return None
        return total

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
            b = await self._open()
            try:
                return await b.list_dead_letters(limit=1_000_000)
            finally:
                await b.close()

        letters = asyncio.run(read())
        dead = {x.job_id: (x.reason, x.dead_lettered_at) for x in letters}
        return history.Final(dead=dead, live=set(), acks=set())

    def close(self) -> None:
        super().close()
        with contextlib.suppress(Exception):
            self._sqs.close()
