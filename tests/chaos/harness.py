"""The fault suite's harness: real Redis and worker processes, faults, and the recorded history.

Used by tests/chaos/test_scenarios.py. A :class:`Bed` owns one scenario's redis-server (from the
``redis_factory`` fixture), its worker processes (``tests.chaos.tasks:app``, optionally each
behind its own :class:`tests.chaos.netproxy.FaultProxy`), a producer thread and the history:

* the harness logs every enqueue attempt and whether Redis answered it, and every fault it
  injects with its time window;
* the handlers log their runs to files (tests/chaos/tasks.py);
* at the end the harness reads the DLQ, the jobs still live and the per-run ack markers
  straight from Redis, and :func:`tests.chaos.history.check_history` judges it all.

Nothing here reads the runtime's own counters to decide an outcome. Every wait is bounded;
every process is stopped by its own PID.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import redis.backoff
import redis.retry

from tests.chaos import history, netproxy, tasks
from tests.worker_runtime import workerproc
from worker_runtime import producer
from worker_runtime.brokers.redis import dlq, keys

APP = "tests.chaos.tasks:app"


@dataclass(frozen=True)
class Config:
    """One scenario's shape: fleet, job mix, leases and how long it may take."""

    name: str
    jobs: int
    workers: int = 3
    concurrency: int = 8
    lease_seconds: float = 3.0
    work_ms: tuple[float, float] = (5.0, 40.0)
    transient_share: float = 0.1
    poison: int = 3
    ack_marker_share: float = 0.5
    max_deliveries: int = 10
    drain_timeout: float = 5.0
    enqueue_batch: int = 50
    enqueue_seconds: float = 6.0  # the enqueues are spread over this long
    proxies: bool = False
    producer_resends: bool = False  # the producer keeps redis-py's automatic re-send
    redis_config: dict[str, str] = field(default_factory=dict)
    settle_seconds: float = 90.0  # after the last enqueue, every job must have ended by then
    seed: int = 7


@dataclass(frozen=True)
class Row:
    """One line of the suite's table (history.Verdict plus what was injected)."""

    name: str
    verdict: history.Verdict
    kills: int
    faults: int
    seconds: float
    test: str = ""  # the pytest node id, so the summary can tell expected failures apart


ROWS: list[Row] = []
"""Every scenario's row, printed as a table at the end of the session (tests/chaos/conftest.py)."""


PRODUCER = -1
"""The ``pid`` of a fault that hit the producer: it explains no worker's re-run."""


def _producer_client(port: int, *, resends: bool) -> redis.Redis:
    if resends:
        # what an application gets by default: redis-py re-sends after a timeout
        return redis.Redis(port=port, decode_responses=True, socket_timeout=1.0)
    # No automatic re-send: an enqueue whose reply is lost is recorded as unanswered.
    return redis.Redis(
        port=port,
        decode_responses=True,
        socket_timeout=2.0,
        socket_connect_timeout=1.0,
        retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
    )


class Slot:
    """One worker position of the fleet; a killed worker is replaced in the same slot."""

    def __init__(self, bed: Bed, index: int) -> None:
        self.bed = bed
        self.index = index
        self.proxy: netproxy.FaultProxy | None = None
        if bed.config.proxies:
            self.proxy = netproxy.FaultProxy(bed.server.port, seed=bed.config.seed + index)
        self.proc = self.spawn()

    @property
    def pid(self) -> int:
        return self.proc.pid

    # The workers' log level: a bed that learns from a worker's log lines raises it to "info".
    log_level = "warning"

    def worker_url(self) -> str:
        """The broker URL this slot's worker connects to (through its proxy when it has one)."""
        return self.proxy.url if self.proxy is not None else self.bed.server.url

    def spawn(self) -> workerproc.WorkerProc:
        c = self.bed.config
        env = {
            "CHAOS_HISTORY_DIR": str(self.bed.dir),
            "WORKERFLEET_RETRY_MAX_DELIVERIES": str(c.max_deliveries),
            "WORKERFLEET_LOG_LEVEL": self.log_level,
        }
        proc = workerproc.WorkerProc(
            self.worker_url(),
            self.bed.queue,
            concurrency=c.concurrency,
            lease_seconds=c.lease_seconds,
            drain_timeout=c.drain_timeout,
            extra_env=env,
            app=APP,
            log_dir=str(self.bed.dir),
        )
        self.bed.procs.append(proc)
        return proc


class Bed:
    """One scenario on real processes: Redis, workers, a producer thread, faults, the history."""

    split_settles = False
    """The broker's retry is two calls (history.check_history's ``split_settles``: SQS)."""
    split_on_server_faults = False
    """A crash of the server may split a retry's transaction (``split_on_server_faults``:
    RabbitMQ)."""
    enqueue_resends = 0
    """How often the broker's enqueue call re-sends after a lost reply, with no dedup
    (history.check_history's ``enqueue_resends``: SQS standard queues)."""

    def __init__(self, config: Config, server: Any, directory: Path) -> None:
        self.config = config
        self.server = server
        self.dir = directory
        self.queue = workerproc.new_queue("chaos")
        self.keys = keys.build_keys(self.queue)
        self.rng = random.Random(config.seed)
        self.procs: list[workerproc.WorkerProc] = []
        self.enqueues: list[history.Enqueue] = []
        self.faults: list[history.Fault] = []
        self.kills = 0
        self.expected_exits: set[int] = set()
        self._lock = threading.Lock()
        self._producer: threading.Thread | None = None
        self._producer_error: BaseException | None = None
        self.slots: list[Slot] = []
        self.producer_proxy: netproxy.FaultProxy | None = None
        self.started = time.monotonic()

    # ---- set-up ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers, wait until they serve, then start the producer thread."""
        self.slots = [Slot(self, i) for i in range(self.config.workers)]
        # (faults must meet working workers, not processes still importing)
        self.wait_registered({s.pid for s in self.slots})
        if self.config.proxies:
            self.producer_proxy = netproxy.FaultProxy(self.server.port)
        self._producer = threading.Thread(target=self._produce, name="chaos-producer", daemon=True)
        self._producer.start()

    def build_batches(self) -> tuple[list[list[tuple[dict[str, Any], int]]], float]:
        """The scenario's job payloads in enqueue batches, and the pause between batches."""
        c = self.config
        payloads = self.build_job_payloads(c.jobs)
        batches = [
            payloads[i : i + c.enqueue_batch] for i in range(0, len(payloads), c.enqueue_batch)
        ]
        return batches, c.enqueue_seconds / max(1, len(batches))

    def build_job_payloads(self, n: int) -> list[tuple[dict[str, Any], int]]:
        """``n`` job payloads with the scenario's mix, each with its number of failures."""
        c = self.config
        out: list[tuple[dict[str, Any], int]] = []
        for i in range(n):
            fails = 0
            if i < c.poison:
                fails = history.POISON
            elif self.rng.random() < c.transient_share:
                fails = self.rng.choice((1, 2))
            payload = {
                "fails": fails,
                "work_ms": self.rng.uniform(*c.work_ms),
                "ack_marker": self.rng.random() < c.ack_marker_share,
            }
            out.append((payload, fails))
        self.rng.shuffle(out)
        return out

    def enqueue(self, payloads: list[tuple[dict[str, Any], int]], client: redis.Redis) -> list[str]:
        """Enqueue one batch (one script call) and log each job with whether Redis answered."""
        prod = producer.SyncProducer(client, self.queue)
        specs = [
            producer.JobSpec(task="chaos", payload=p, job_id=uuid.uuid4().hex) for p, _ in payloads
        ]
        t = time.time()
        try:
            results = prod.enqueue_many(specs)
            # a reply for the id (created, or found already there: a re-send of this very
            # call) means Redis holds the job
            answered = [r.job_id == s.job_id for r, s in zip(results, specs, strict=True)]
        except (redis.RedisError, OSError):
            answered = [False] * len(specs)
        returned = time.time()
        with self._lock:
            for spec, (_, fails), ok in zip(specs, payloads, answered, strict=True):
                assert spec.job_id is not None
                marks = bool(dict(spec.payload or {}).get("ack_marker"))
                self.enqueues.append(
                    history.Enqueue(
                        spec.job_id, t, ok, fails=fails, marks_acks=marks, returned=returned
                    )
                )
        return [spec.job_id for spec in specs if spec.job_id is not None]

    def inject_raw(self, envelope: bytes, *, stream: str = "normal") -> str:
        """Write a job whose stored envelope is ``envelope`` (any bytes), as enqueue would.

        Logged as a bad enqueue: the only legitimate end for it is the DLQ with an envelope
        reason. Returns the job id.
        """
        job = uuid.uuid4().hex
        client = redis.Redis(port=self.server.port, socket_timeout=5)
        try:
            pipe = client.pipeline(transaction=True)
            pipe.hset(self.keys.env, job, envelope)
            pipe.hset(self.keys.state, job, f"{stream}|0|0|0")
            pipe.xadd(self.keys.ready[keys.PRIORITIES.index(stream)], {"j": job})
            pipe.execute()
        finally:
            client.close()
        with self._lock:
            self.enqueues.append(history.Enqueue(job, time.time(), True, bad=True))
        return job

    def inject_stream_entry(self, fields: dict[bytes, bytes], *, stream: str = "normal") -> None:
        """Add a stream entry that names no job (or no job id at all): no job may come of it."""
        client = redis.Redis(port=self.server.port, socket_timeout=5)
        try:
            client.xadd(self.keys.ready[keys.PRIORITIES.index(stream)], fields)
        finally:
            client.close()

    def _produce(self) -> None:
        c = self.config
        port = self.producer_proxy.port if self.producer_proxy is not None else self.server.port
        client = _producer_client(port, resends=c.producer_resends)
        try:
            batches, pause = self.build_batches()
            for batch in batches:
                self.enqueue(batch, client)
                time.sleep(pause)
        except BaseException as exc:  # reported by wait_until_settled
            self._producer_error = exc
        finally:
            client.close()

    def producing(self) -> bool:
        return self._producer is not None and self._producer.is_alive()

    # ---- faults ----------------------------------------------------------------------------

    def add_fault(self, fault: history.Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def fleet_capacity(self) -> int:
        return self.config.workers * self.config.concurrency

    def kill_worker(self, slot: Slot) -> None:
        """SIGKILL one worker and start a new one in its slot."""
        pid = slot.pid
        self.expected_exits.add(pid)
        slot.proc.send(signal.SIGKILL)
        t = time.time()
        slot.proc.wait(10)
        self.kills += 1
        self.add_fault(history.Fault("kill", t, t, pid=pid, capacity=self.config.concurrency))
        slot.proc = slot.spawn()

    def stop_worker(self, slot: Slot, seconds: float, *, capacity: int | None = None) -> None:
        """SIGSTOP one worker for ``seconds`` (past its lease when longer), then SIGCONT.

        It may explain ``capacity`` re-runs (default: the jobs the worker can hold).
        """
        t0 = time.time()
        slot.proc.send(signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            slot.proc.send(signal.SIGCONT)
        cap = self.config.concurrency if capacity is None else capacity
        self.add_fault(history.Fault("sigstop", t0, time.time(), pid=slot.pid, capacity=cap))

    def drain_worker(self, slot: Slot) -> None:
        """SIGTERM one worker (it drains: unfinished jobs are released) and replace it."""
        pid = slot.pid
        self.wait_registered({pid})  # before that, SIGTERM would find no handler yet
        self.expected_exits.add(pid)
        t0 = time.time()
        slot.proc.send(signal.SIGTERM)
        rc = slot.proc.wait(self.config.drain_timeout + 15)
        assert rc == 0, f"a drained worker exited {rc}: {slot.proc.logs()[-2000:]}"
        cap = self.config.concurrency
        self.add_fault(history.Fault("sigterm", t0, time.time(), pid=pid, capacity=cap))
        slot.proc = slot.spawn()

    def kill_redis(self, *, down_seconds: float, loses_writes: bool) -> None:
        """SIGKILL redis-server, keep it down a moment, restart it on its AOF (same port)."""
        t0 = time.time()
        self.server.kill()
        self.kills += 1
        time.sleep(down_seconds)
        self.server.start()
        self.add_fault(
            history.Fault(
                "redis_kill",
                t0,
                time.time(),
                capacity=self.fleet_capacity(),
                loses_writes=loses_writes,
                write_window=2.0 if loses_writes else 0.0,
            )
        )

    def pause_redis(self, seconds: float, *, how: str) -> None:
        """Stall Redis for ``seconds``: ``sigstop`` the process or ``CLIENT PAUSE`` it."""
        t0 = time.time()
        if how == "sigstop":
            os.kill(self.server.pid, signal.SIGSTOP)
            try:
                time.sleep(seconds)
            finally:
                os.kill(self.server.pid, signal.SIGCONT)
        else:
            admin = redis.Redis(port=self.server.port, socket_timeout=5)
            try:
                admin.execute_command("CLIENT", "PAUSE", int(seconds * 1000), "ALL")
            finally:
                admin.close()
            time.sleep(seconds)
        self.add_fault(
            history.Fault(f"redis_{how}", t0, time.time(), capacity=self.fleet_capacity())
        )

    def fail_over(self, replica: Any, *, split_seconds: float) -> None:
        """Promote ``replica``; the old primary keeps taking writes for ``split_seconds`` (the
        time a failover takes to notice), then is killed and every client is sent to the new
        primary. Writes the old primary acknowledged that its replica never got are lost.
        """
        assert self.producer_proxy is not None, "a failover needs proxies (config.proxies)"
        t0 = time.time()
        admin = redis.Redis(port=replica.port, socket_timeout=5)
        try:
            admin.execute_command("REPLICAOF", "NO", "ONE")
        finally:
            admin.close()
        time.sleep(split_seconds)
        self.server.kill()
        self.kills += 1
        self.server = replica
        for proxy in [self.producer_proxy, *(s.proxy for s in self.slots)]:
            if proxy is not None:
                proxy.retarget(replica.port)
        self.add_fault(
            history.Fault(
                "failover",
                t0,
                time.time(),
                capacity=self.fleet_capacity(),
                loses_writes=True,
                write_window=1.0,
            )
        )

    def net_fault(
        self,
        slot: Slot,
        kind: str,
        seconds: float,
        apply: Callable[[], None],
        capacity: int | None = None,
    ) -> None:
        """Apply a proxy fault to one worker's connections for ``seconds``, then heal it.

        It may explain ``capacity`` re-runs (default: the jobs the worker can hold).
        """
        assert slot.proxy is not None
        t0 = time.time()
        apply()
        try:
            time.sleep(seconds)
        finally:
            slot.proxy.latency = 0.0
            slot.proxy.drop_reply_share = 0.0
            slot.proxy.heal()
        cap = self.config.concurrency if capacity is None else capacity
        self.add_fault(history.Fault(kind, t0, time.time(), pid=slot.pid, capacity=cap))

    # ---- waiting and the end ---------------------------------------------------------------

    def check_workers_alive(self) -> None:
        """A worker must only exit when the harness stopped it."""
        for slot in self.slots:
            if not slot.proc.alive() and slot.pid not in self.expected_exits:
                raise AssertionError(
                    f"worker {slot.pid} exited by itself ({slot.proc.proc.returncode}): "
                    f"{slot.proc.logs()[-3000:]}"
                )

    def live_jobs(self) -> int | None:
        """Jobs Redis still holds (None while Redis does not answer)."""
        client = redis.Redis(port=self.server.port, socket_timeout=2, socket_connect_timeout=1)
        try:
            return int(client.hlen(self.keys.env))
        except (redis.RedisError, OSError):
            return None
        finally:
            client.close()

    def run_until_settled(self, faults: Callable[[Bed], None] | None = None) -> None:
        """Inject ``faults`` while producing, then wait until no job is left in the queue."""
        if faults is not None:
            faults(self)
        deadline = time.monotonic() + self.config.enqueue_seconds + self.config.settle_seconds
        while True:
            self.check_workers_alive()
            if self._producer_error is not None:
                raise AssertionError(f"the producer failed: {self._producer_error!r}")
            if not self.producing() and self.live_jobs() == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.config.name}: jobs left in the queue at the deadline\n"
                    + self.describe_leftovers()
                )
            time.sleep(0.1)

    def describe_leftovers(self) -> str:
        """What a run that did not settle leaves behind, for its failure message: the queue as
        the broker reports it, the answered jobs that never finished a run, and the warnings
        and errors the workers logged last."""
        lines = [f"queue: {self.describe_queue()}"]
        runs: dict[str, list[history.Run]] = {}
        for r in self.read_runs():
            runs.setdefault(r.job, []).append(r)
        unfinished = [
            e
            for e in self.enqueues
            if e.answered
            and e.fails != history.POISON
            and not any(r.ok for r in runs.get(e.job, []))
        ]
        t0 = self.enqueues[0].t if self.enqueues else 0.0  # times below: seconds after it
        lines.append(f"answered enqueues (not poison) without a finished run: {len(unfinished)}")
        for e in unfinished[:5]:
            tried = sorted(runs.get(e.job, []), key=lambda r: r.start)
            lines.append(
                f"  {e.job} enqueued at +{e.t - t0:.2f}s, fails={e.fails}, runs: "
                + (
                    ", ".join(f"pid {r.pid} at +{r.start - t0:.2f}s ok={r.ok}" for r in tried)
                    or "none"
                )
            )
        for proc in self.procs:
            noisy = [
                r for r in proc.log_records() if r.get("level") in ("warning", "error", "critical")
            ]
            for record in noisy[-3:]:
                lines.append(f"  worker {proc.pid}: {json.dumps(record)[:400]}")
        for f in self.faults:
            lines.append(f"fault {f.kind} +{f.t0 - t0:.2f}s..+{f.t1 - t0:.2f}s")
        return "\n".join(lines)

    def describe_queue(self) -> str:
        """The broker's own account of the queue (here: the jobs Redis holds)."""
        return f"{self.live_jobs()} jobs held"

    def busy(self) -> bool:
        """True while the scenario should keep injecting faults (producing or jobs left)."""
        self.check_workers_alive()
        live = self.live_jobs()
        return self.producing() or live is None or live > 0

    def wait_registered(self, pids: set[int]) -> None:
        """Wait (bounded) until these workers have written a heartbeat."""
        client = workerproc.sync_client(self.server)
        try:
            workerproc.wait_until(
                lambda: pids <= workerproc.registered_pids(client, self.queue),
                30,
                f"workers {sorted(pids)} to register",
            )
        finally:
            client.close()

    def stop_workers(self) -> None:
        """SIGTERM every worker once it registered (a worker still importing has no handler)."""
        self.wait_registered({s.pid for s in self.slots})
        for slot in self.slots:
            slot.proc.send(signal.SIGTERM)
        for slot in self.slots:
            rc = slot.proc.wait(self.config.drain_timeout + 15)
            assert rc == 0, f"worker {slot.pid} exited {rc}: {slot.proc.logs()[-2000:]}"

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()
        for proxy in [self.producer_proxy, *(s.proxy for s in self.slots)]:
            if proxy is not None:
                proxy.close()

    def read_runs(self) -> list[history.Run]:
        """Every handler run, from the files the handlers wrote."""
        starts: dict[str, dict[str, Any]] = {}
        ends: dict[str, dict[str, Any]] = {}
        for path in self.dir.glob("runs-*.jsonl"):
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    e = json.loads(line)
                    (starts if e["e"] == "start" else ends)[e["run"]] = e
        return [
            history.Run(
                job=s["job"],
                run=run,
                pid=int(s["pid"]),
                start=float(s["t"]),
                end=float(ends[run]["t"]) if run in ends else None,
                ok=ends[run]["ok"] if run in ends else None,
            )
            for run, s in starts.items()
        ]

    def read_final(self) -> history.Final:
        """The DLQ, the live jobs and the ack markers, read from Redis (raw bytes allowed)."""
        client = redis.Redis(port=self.server.port, socket_timeout=10)
        try:
            dead: dict[str, tuple[str, float]] = {}
            for job, raw in client.hgetall(self.keys.dlq_data).items():
                record = dlq.build_dead_letter(raw)
                dead[job.decode(errors="replace")] = (record.reason, record.dead_lettered_at)
            live = {j.decode(errors="replace") for j in client.hkeys(self.keys.env)}
            prefix = self.keys.done(tasks.ACK_MARKER_PREFIX)
            acks: set[tuple[str, str]] = set()
            for name in client.scan_iter(match=_glob_escape(prefix) + "*", count=1000):
                job, _, run = name.decode()[len(prefix) :].partition(":")
                acks.add((job, run))
            return history.Final(dead=dead, live=live, acks=acks)
        finally:
            client.close()

    def bound_faults(self, runs: list[history.Run]) -> list[history.Fault]:
        """The faults with their final bounds: one that may lose writes may also lose the acks
        of the runs that finished inside its window, so those may run again too."""
        out = []
        for f in self.faults:
            if f.loses_writes:
                acked_then = sum(
                    1
                    for r in runs
                    if r.ok and r.end is not None and f.t0 - f.write_window <= r.end <= f.t1
                )
                f = dataclasses.replace(f, capacity=f.capacity + acked_then)
            out.append(f)
        return out

    def verdict(self) -> history.Verdict:
        runs = self.read_runs()
        return history.check_history(
            self.enqueues,
            runs,
            self.bound_faults(runs),
            self.read_final(),
            max_attempts=tasks.MAX_ATTEMPTS,
            split_settles=self.split_settles,
            split_on_server_faults=self.split_on_server_faults,
            enqueue_resends=self.enqueue_resends,
        )

    def describe_jobs(self, verdict: history.Verdict) -> str:
        """The runs of the jobs the verdict names, and every fault: what to read on a failure."""
        named = {x.split()[0] for ids in verdict.examples.values() for x in ids}
        runs = sorted((r for r in self.read_runs() if r.job in named), key=lambda r: r.start)
        enqueues = sorted((e for e in self.enqueues if e.job in named), key=lambda e: e.t)
        t0 = min(
            [r.start for r in runs] + [f.t0 for f in self.faults] + [e.t for e in enqueues],
            default=0.0,
        )
        lines = [
            f"  enqueue {e.job[:8]} call +{e.t - t0:.3f}"
            + (f"..+{e.returned - t0:.3f}" if e.returned is not None else "")
            + f" answered={e.answered} fails={e.fails}"
            for e in enqueues
        ]
        lines += [
            f"  run {r.job[:8]} {r.run} pid={r.pid} start=+{r.start - t0:.3f} "
            + (f"end=+{r.end - t0:.3f} ok={r.ok}" if r.end is not None else "unfinished")
            for r in runs
        ]
        lines += [
            f"  fault {f.kind} pid={f.pid} +{f.t0 - t0:.3f}..+{f.t1 - t0:.3f}" for f in self.faults
        ]
        # A worker logs a failed run's outcome ("retried", "dead_lettered") only once the
        # broker took its settle: a named job whose last line says "retried" and that never
        # ran again was handed back to the broker, which is where to look for it.
        logged = sorted(
            (
                (float(record["ts"]), proc.pid, record)
                for proc in self.procs
                for record in proc.log_records()
                if record.get("job_id") in named and isinstance(record.get("ts"), (int, float))
            ),
            key=lambda entry: (entry[0], entry[1]),
        )
        lines += [
            f"  log {str(record['job_id'])[:8]} pid={pid} +{ts - t0:.3f} "
            + " ".join(
                f"{key}={record[key]}"
                for key in ("msg", "attempt", "outcome", "reason", "error")
                if key in record
            )
            for ts, pid, record in logged
        ]
        return "\n".join(lines)

    def record_row(self, verdict: history.Verdict) -> Row:
        test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
        seconds = time.monotonic() - self.started
        row = Row(self.config.name, verdict, self.kills, len(self.faults), seconds, test)
        ROWS.append(row)
        return row


def run_bed(bed: Bed, faults: Callable[[Bed], None]) -> history.Verdict:
    """Run one scenario's bed to its end, record its row, and assert every promise held."""
    config = bed.config
    try:
        bed.start()
        bed.run_until_settled(faults)
        bed.stop_workers()
        verdict = bed.verdict()
        timeline = ""
        if verdict.violations:
            # the broker's own account too: a job the verdict calls lost may still sit in a
            # queue the settle check did not count (a delay bucket without counts)
            timeline = f"{bed.describe_jobs(verdict)}\n  queues at the end: {bed.describe_queue()}"
    finally:
        bed.close()
    bed.record_row(verdict)
    print(f"\n{config.name}: {verdict.describe()} kills={bed.kills} faults={len(bed.faults)}")
    assert verdict.violations == 0, f"{verdict.describe()}\n{timeline}"
    assert verdict.enqueued > 0 and verdict.completed > 0
    return verdict


def every(bed: Bed, seconds: float, act: Callable[[int], None], most: int) -> int:
    """Call ``act(i)`` every ``seconds`` while the scenario is busy, at most ``most`` times."""
    done = 0
    while done < most and bed.busy():
        time.sleep(seconds)
        act(done)
        done += 1
    return done


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
