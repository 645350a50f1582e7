"""The history checker of the fault suite: what happened to every job, judged from the outside.

Called by the chaos scenarios (tests/chaos/test_scenarios.py) on the history their harness
recorded, and by its own unit tests (tests/chaos/test_history_checker.py) on hand-made histories.
It follows Jepsen's total-queue idea: the harness, never the runtime's own counters, logs

* every enqueue attempt and whether Redis answered it (:class:`Enqueue`);
* every handler run, from start to its outcome, as the handler itself wrote it (:class:`Run`);
* every acknowledgement that reached Redis: a per-run marker the ack script writes atomically
  with the ack, so it exists exactly when that run's ack was accepted (``Final.acks``);
* every fault the harness injected, with its time window and how many jobs it can disturb
  (:class:`Fault`);
* the final state: the DLQ with reasons and the jobs still live in the queue (:class:`Final`).

:func:`check_history` then decides, per job:

* **completed**: it left the queue with at least one successful run and is not in the DLQ
  (and, for a job whose runs leave ack markers, with an accepted ack, unless a fault that
  loses writes may have taken it);
* **dead-lettered** legitimately (a bad envelope, a job that fails every attempt, or a job that
  never ran to success while faults kept interrupting it) or **wrongly** (any of its runs
  succeeded, or the reason does not fit what the job does);
* **lost**: an acknowledged enqueue that is neither completed nor dead-lettered at the end.
  An acknowledged write that a fault which may lose writes (Redis ``kill -9`` under
  ``appendfsync everysec``, a replica promotion) lost inside its window is counted apart, as
  ``writes_lost_to_fault``: reported and bounded, not hidden;
* **phantom**: a run, ack, DLQ entry or live job whose id the harness never tried to enqueue;
* **duplicate**: a run that starts although the previous run of the same job did not fail
  (it succeeded, or never finished). Each must be explained by a fault on the previous run's
  worker (or a fault of Redis or of every worker) between the two starts, or by a fault that
  stopped the later run's worker while it held the job (its run starts right after the fault
  ends); with ``split_settles`` (a broker whose retry is two calls, SQS: send the copy, delete
  the original; RabbitMQ for a channel's first copy to each queue) also by a fault on the
  worker of any earlier run of the job, or on every worker (the server killed), after that
  run ended and before this one started (the original outlived
  a retry whose delete the fault stopped: from then on the copy and the original each run,
  possibly side by side in one fetch); with ``split_on_server_faults`` (a broker whose retry
  is one transaction that a crash of the server itself may split, RabbitMQ: the copy is on
  disk, the original's ack is not) the same, but only for a fault that hit every worker; with
  ``enqueue_resends`` (a broker whose enqueue call re-sends after a lost reply and keeps no
  dedup, SQS standard queues: the server may have stored the first send before it died) a job
  whose enqueue call was under way during a fault that hit every worker may exist up to
  1 + ``enqueue_resends`` times, and each extra copy's run is explained by that call; no
  fault may explain more duplicates than its ``capacity`` (the bound the scenario documents);
* **double ack**: two accepted acks of one job (fencing failed). Always a violation.

Times are wall-clock seconds (``time.time()``) of one host: the harness, the workers and Redis
all run on it.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

POISON = 1_000_000
"""``fails`` of a job whose handler fails on every attempt."""

ENVELOPE_REASONS = frozenset({"invalid_envelope", "unparseable_json", "unknown_schema_version"})
"""DLQ reasons that fit a job injected with bytes that are not a valid envelope."""


@dataclass(frozen=True)
class Enqueue:
    """One enqueue attempt by the harness.

    ``answered``: Redis replied that it holds the job (an acknowledged write). False when
    the call failed or timed out: the job may or may not exist. ``fails``: handler failures
    before the job succeeds (:data:`POISON` = always). ``bad``: raw bytes that are no valid
    envelope were written instead of a job. ``marks_acks``: a completion of this job must show
    an accepted ack marker. ``t`` is when the call began, ``returned`` when it returned
    (answered or not; None when not recorded): a failure's timeline shows both.
    """

    job: str
    t: float
    answered: bool
    fails: int = 0
    bad: bool = False
    marks_acks: bool = False  # its runs leave an ack marker (see the module docstring)
    returned: float | None = None


@dataclass(frozen=True)
class Run:
    """One handler run as the handler logged it; ``ok`` is None when it never finished."""

    job: str
    run: str
    pid: int
    start: float
    end: float | None = None
    ok: bool | None = None


@dataclass(frozen=True)
class Fault:
    """One injected fault.

    ``pid`` is the worker it hit; None means every worker at once (Redis killed or paused,
    every connection cut). ``capacity`` is how many duplicate runs it may explain (for a
    worker: the jobs it can hold). ``loses_writes`` marks a fault that may lose writes Redis
    had acknowledged during its ``write_window`` seconds before ``t0`` (fsync lag, replication
    lag).
    """

    kind: str
    t0: float
    t1: float
    pid: int | None = None
    capacity: int = 0
    loses_writes: bool = False
    write_window: float = 0.0


@dataclass(frozen=True)
class Final:
    """The queue at the end: DLQ entries (job -> (reason, dead-lettered at)), live jobs, acks.

    ``acks`` holds a (job, run) pair for every run whose ack Redis accepted.
    """

    dead: Mapping[str, tuple[str, float]]
    live: Collection[str]
    acks: Collection[tuple[str, str]]


@dataclass(frozen=True)
class Verdict:
    """What the checker found; ``examples`` names a few job ids per violation kind."""

    enqueued: int
    unanswered: int
    completed: int
    dead_lettered: int
    lost: int
    writes_lost_to_fault: int
    wrongly_dead: int
    phantoms: int
    duplicates: int
    unexplained_duplicates: int
    duplicates_over_bound: int
    double_acks: int
    runs: int
    examples: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    resent_copies: int = 0  # duplicates explained by a re-sent enqueue (``enqueue_resends``)

    @property
    def violations(self) -> int:
        """Everything that breaks a promise (lost writes inside a fault's window do not)."""
        return (
            self.lost
            + self.wrongly_dead
            + self.phantoms
            + self.unexplained_duplicates
            + self.duplicates_over_bound
            + self.double_acks
        )

    def describe(self) -> str:
        """One line with every figure, then the example ids of each violation."""
        figures = (
            f"enqueued={self.enqueued} unanswered={self.unanswered} completed={self.completed} "
            f"dead_lettered={self.dead_lettered} lost={self.lost} "
            f"writes_lost_to_fault={self.writes_lost_to_fault} wrongly_dead={self.wrongly_dead} "
            f"phantoms={self.phantoms} duplicates={self.duplicates} "
            f"unexplained={self.unexplained_duplicates} over_bound={self.duplicates_over_bound} "
            f"double_acks={self.double_acks} runs={self.runs}"
        )
        if self.resent_copies:
            figures += f" resent_copies={self.resent_copies}"
        extra = "".join(f"\n  {k}: {', '.join(v)}" for k, v in self.examples.items() if v)
        return figures + extra


HELD_THROUGH_SECONDS = 2.0
"""How soon after a worker is continued it starts a job it had fetched before it was stopped."""


def _explains_split_settle(fault: Fault, earlier: Iterable[Run], cur: Run) -> bool:
    # A broker whose retry is two calls (send the copy, then delete the original: SQS) leaves
    # both when its worker dies in between, or when the server dies in between (the delete
    # then fails on every worker); the original comes back when its lease ends and runs again
    # after, or beside, the copy. So a fault on the worker of ANY earlier run of the job (or on
    # every worker), after that run ended and before this one started, explains this run.
    return any(
        (fault.pid is None or fault.pid == r.pid)
        and r.end is not None
        and r.end <= fault.t1
        and fault.t0 <= cur.start
        for r in earlier
    )


def _explains(fault: Fault, prev: Run, cur: Run) -> bool:
    # The fault hit the previous run's worker (or everyone) between the two starts, so that
    # run's lease or its ack was lost ...
    hit_prev = fault.pid is None or fault.pid == prev.pid
    if hit_prev and fault.t0 <= cur.start and fault.t1 >= prev.start:
        return True
    # ... or it stopped the later run's worker while that held a job it had fetched before,
    # which ran elsewhere meanwhile (the late run starts as soon as the worker continues).
    return fault.pid == cur.pid and fault.t1 <= cur.start <= fault.t1 + HELD_THROUGH_SECONDS


def _enqueue_spans_server_fault(spec: Enqueue, fault: Fault) -> bool:
    # The call was under way while the server was down or dying: its first send may have been
    # stored although its reply was lost, and the re-send stored the job again.
    return (
        fault.pid is None
        and spec.returned is not None
        and spec.t <= fault.t1
        and spec.returned >= fault.t0
    )


def _lost_in_window(enqueue: Enqueue, faults: Iterable[Fault]) -> bool:
    return any(f.loses_writes and f.t0 - f.write_window <= enqueue.t <= f.t1 for f in faults)


def _ack_maybe_lost(spec: Enqueue, runs: Iterable[Run], faults: Iterable[Fault]) -> bool:
    # The job's own enqueue lies in a write-losing fault's window (it ran from the old
    # primary, and its ack found no job on the new one), or a successful run ended inside
    # that window (its ack went with the unsynced writes).
    if _lost_in_window(spec, faults):
        return True
    return any(
        r.ok and r.end is not None and f.t0 - f.write_window <= r.end <= f.t1
        for r in runs
        for f in faults
        if f.loses_writes
    )


def _legitimate_death(
    spec: Enqueue,
    reason: str,
    dead_at: float,
    ran_ok: bool,
    faults: Iterable[Fault],
    max_attempts: int,
) -> bool:
    if ran_ok:
        return False  # a run succeeded: nothing justifies the DLQ
    if spec.bad:
        return reason in ENVELOPE_REASONS
    if reason == "max_attempts" and spec.fails >= max_attempts:
        return True
    if reason == "max_deliveries":
        # deliveries ended without a verdict: only faults can do that to a healthy worker
        return any(f.t0 <= dead_at and f.t1 >= spec.t for f in faults)
    return False


def check_history(
    enqueues: Iterable[Enqueue],
    runs: Iterable[Run],
    faults: Iterable[Fault],
    final: Final,
    *,
    max_attempts: int,
    split_settles: bool = False,
    split_on_server_faults: bool = False,
    enqueue_resends: int = 0,
) -> Verdict:
    """Judge one scenario's history (see the module docstring for every rule)."""
    faults = sorted(faults, key=lambda f: f.t0)
    specs: dict[str, Enqueue] = {}
    for e in enqueues:
        # a job enqueued again (a retried call) counts as answered if any attempt was
        prev = specs.get(e.job)
        if prev is None or (e.answered and not prev.answered):
            specs[e.job] = e
    by_job: dict[str, list[Run]] = collections.defaultdict(list)
    all_runs = list(runs)
    for r in all_runs:
        by_job[r.job].append(r)
    examples: dict[str, list[str]] = collections.defaultdict(list)

    def note(kind: str, job: str) -> None:
        if len(examples[kind]) < 5:
            examples[kind].append(job)

    acked_jobs = {job for job, _ in final.acks}
    phantom_ids = (set(by_job) | set(final.dead) | set(final.live) | acked_jobs) - set(specs)
    for job in sorted(phantom_ids):
        note("phantom", job)

    completed = dead = lost = lost_to_fault = wrongly_dead = 0
    for job, spec in specs.items():
        job_runs = by_job.get(job, [])
        ran_ok = any(r.ok for r in job_runs)
        if job in final.dead:
            dead += 1
            reason, dead_at = final.dead[job]
            if not _legitimate_death(spec, reason, dead_at, ran_ok, faults, max_attempts):
                wrongly_dead += 1
                note("wrongly_dead", f"{job} ({reason})")
        elif job in final.live:
            # still queued after the run settled: stuck, whether or not Redis had answered
            lost += 1
            note("lost", f"{job} (still queued)")
        elif (
            ran_ok
            and spec.marks_acks
            and job not in acked_jobs
            and not _ack_maybe_lost(spec, job_runs, faults)
        ):
            # it left the queue, but Redis never accepted an ack of any of its runs
            lost += 1
            note("lost", f"{job} (gone without an accepted ack)")
        elif ran_ok:
            completed += 1
        elif spec.answered:
            if _lost_in_window(spec, faults):
                lost_to_fault += 1
                note("writes_lost_to_fault", job)
            else:
                lost += 1
                note("lost", job)

    # duplicates: a run whose predecessor did not fail; explained by a fault with capacity left
    remaining = {id(f): f.capacity for f in faults}
    copies_left = dict.fromkeys(specs, enqueue_resends)
    duplicates = unexplained = over_bound = resent_copies = 0
    dupes: list[tuple[float, Run, Run]] = []
    for job_runs in by_job.values():
        ordered = sorted(job_runs, key=lambda r: r.start)
        dupes += [
            (cur.start, prev, cur)
            for prev, cur in itertools.pairwise(ordered)
            if prev.ok is not False
        ]
    for _, prev, cur in sorted(dupes, key=lambda d: d[0]):
        duplicates += 1
        earlier = [r for r in by_job[cur.job] if r.start < cur.start]
        candidates = [
            f
            for f in faults
            if _explains(f, prev, cur)
            or (split_settles and _explains_split_settle(f, earlier, cur))
            or (
                split_on_server_faults and f.pid is None and _explains_split_settle(f, earlier, cur)
            )
        ]
        spec = specs.get(cur.job)
        if (
            not candidates
            and spec is not None
            and copies_left[cur.job] > 0
            and any(_enqueue_spans_server_fault(spec, f) for f in faults)
        ):
            copies_left[cur.job] -= 1  # the run of a copy a re-sent enqueue stored
            resent_copies += 1
            note("resent_copy", cur.job)
            continue
        if not candidates:
            unexplained += 1
            note("unexplained_duplicate", cur.job)
            continue
        with_room = [f for f in candidates if remaining[id(f)] > 0]
        if not with_room:
            over_bound += 1
            note("duplicate_over_bound", cur.job)
            continue
        remaining[id(with_room[0])] -= 1

    acks_per_job = collections.Counter(job for job, _ in set(final.acks))
    double_acks = 0
    for job, n in acks_per_job.items():
        if n > 1:
            double_acks += n - 1
            note("double_ack", job)

    return Verdict(
        enqueued=sum(1 for s in specs.values() if s.answered),
        unanswered=sum(1 for s in specs.values() if not s.answered),
        completed=completed,
        dead_lettered=dead,
        lost=lost,
        writes_lost_to_fault=lost_to_fault,
        wrongly_dead=wrongly_dead,
        phantoms=len(phantom_ids),
        duplicates=duplicates,
        unexplained_duplicates=unexplained,
        duplicates_over_bound=over_bound,
        double_acks=double_acks,
        runs=len(all_runs),
        resent_copies=resent_copies,
        examples={k: tuple(v) for k, v in examples.items()},
    )
