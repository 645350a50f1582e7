"""The history checker catches each kind of broken promise in a hand-made history.

The fault suite is only as good as its checker, so the checker is tested on its own: a clean
history passes, and a lost job, a wrongly dead-lettered job, a phantom completion, an
unexplained duplicate, a duplicate beyond its fault's bound and a double ack are each caught.
A failure's timeline names what the workers logged about each job the verdict names.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

from tests.chaos import harness
from tests.chaos import history as h
from tests.worker_runtime import workerproc

MAX_ATTEMPTS = 4


def _check(
    enqueues: list[h.Enqueue],
    runs: list[h.Run],
    faults: list[h.Fault] | None = None,
    *,
    dead: dict[str, tuple[str, float]] | None = None,
    live: set[str] | None = None,
    acks: set[tuple[str, str]] | None = None,
) -> h.Verdict:
    final = h.Final(dead=dead or {}, live=live or set(), acks=acks or set())
    return h.check_history(enqueues, runs, faults or [], final, max_attempts=MAX_ATTEMPTS)


def _ok(job: str, run: str, pid: int, start: float) -> h.Run:
    return h.Run(job, run, pid, start, start + 0.1, True)


def test_a_clean_history_of_completions_retries_and_a_poison_job_has_no_violation() -> None:
    # Given a job that ran once, a transient one retried after its failure, and a poison job
    enqueues = [
        h.Enqueue("a", 1.0, True),
        h.Enqueue("b", 1.0, True, fails=1),
        h.Enqueue("p", 1.0, True, fails=h.POISON),
    ]
    runs = [
        _ok("a", "a1", 10, 2.0),
        h.Run("b", "b1", 10, 2.0, 2.1, False),
        _ok("b", "b2", 11, 3.0),
        *(h.Run("p", f"p{i}", 10, 2.0 + i, 2.1 + i, False) for i in range(MAX_ATTEMPTS)),
    ]
    # When the checker judges it
    v = _check(enqueues, runs, dead={"p": ("max_attempts", 9.0)}, acks={("a", "a1"), ("b", "b2")})
    # Then nothing is violated and each job is counted where it ended
    assert v.violations == 0, v.describe()
    assert (v.enqueued, v.completed, v.dead_lettered, v.duplicates, v.runs) == (3, 2, 1, 0, 7)


def test_an_acknowledged_enqueue_that_never_ends_anywhere_is_lost() -> None:
    # Given two acknowledged enqueues, one of which vanished without a run, and one stuck job
    enqueues = [h.Enqueue("a", 1.0, True), h.Enqueue("gone", 1.0, True), h.Enqueue("s", 1, True)]
    v = _check(enqueues, [_ok("a", "a1", 10, 2.0)], live={"s"})
    # Then both are lost
    assert v.lost == 2
    assert {x.split()[0] for x in v.examples["lost"]} == {"gone", "s"}


def test_a_job_that_left_the_queue_without_an_accepted_ack_is_lost() -> None:
    # Given two jobs whose runs leave ack markers, both run to success and gone from the
    # queue, one with an accepted ack and one without any
    enqueues = [h.Enqueue(j, 1.0, True, marks_acks=True) for j in ("acked", "vanished")]
    runs = [_ok("acked", "a1", 10, 2.0), _ok("vanished", "v1", 10, 2.0)]
    v = _check(enqueues, runs, acks={("acked", "a1")})
    # Then the one Redis never acknowledged is lost, not completed
    assert (v.completed, v.lost) == (1, 1)
    assert v.examples["lost"] == ("vanished (gone without an accepted ack)",)


def test_an_ack_taken_by_a_write_losing_fault_does_not_make_its_job_lost() -> None:
    # Given a job acked just before Redis was killed under appendfsync everysec (the ack and
    # its marker went with the unsynced writes) and the job itself too
    kill = h.Fault("redis_kill", 10.0, 10.5, loses_writes=True, write_window=2.0)
    enqueues = [h.Enqueue("a", 9.0, True, marks_acks=True)]
    v = _check(enqueues, [_ok("a", "a1", 10, 9.5)], [kill])
    # Then it counts as completed
    assert (v.completed, v.lost) == (1, 0)


def test_a_job_whose_enqueue_a_failover_lost_but_which_ran_is_completed() -> None:
    # Given a job enqueued on the old primary during a failover, run from there, and acked
    # after the failover on the new primary, which never had it (so no ack was accepted)
    failover = h.Fault("failover", 10.0, 11.0, loses_writes=True, write_window=1.0)
    enqueues = [h.Enqueue("a", 10.5, True, marks_acks=True)]
    v = _check(enqueues, [h.Run("a", "a1", 10, 10.8, 11.6, True)], [failover])
    # Then it ran: completed, not lost
    assert (v.completed, v.lost) == (1, 0)


def test_an_unanswered_enqueue_that_never_ran_is_not_lost() -> None:
    # Given an enqueue whose reply never came (Redis may never have applied it)
    v = _check([h.Enqueue("maybe", 1.0, False)], [])
    # Then it is counted as unanswered, not lost
    assert (v.lost, v.unanswered, v.enqueued) == (0, 1, 0)


def test_an_acknowledged_write_lost_inside_a_write_losing_faults_window_is_counted_apart() -> None:
    # Given a Redis kill -9 at t=10 under appendfsync everysec (may lose ~1 s of writes)
    kill = h.Fault("redis_kill", 10.0, 10.0, loses_writes=True, write_window=2.0)
    enqueues = [h.Enqueue("recent", 9.5, True), h.Enqueue("old", 5.0, True)]
    # When both jobs are gone without a run
    v = _check(enqueues, [], [kill])
    # Then the one inside the window is a reported fault loss, the older one is lost
    assert (v.writes_lost_to_fault, v.lost) == (1, 1)
    assert v.examples["lost"] == ("old",)


def test_a_dead_lettered_job_whose_run_succeeded_is_wrongly_dead() -> None:
    # Given a healthy job that ran to success yet sits in the DLQ as max_deliveries
    # (a worker reclaimed its own running job until the delivery limit)
    kill = h.Fault("kill", 2.5, 2.5, pid=10, capacity=8)
    runs = [_ok("a", "a1", 10, 2.0), _ok("a", "a2", 11, 3.0)]
    v = _check([h.Enqueue("a", 1.0, True)], runs, [kill], dead={"a": ("max_deliveries", 4.0)})
    # Then it is wrongly dead
    assert v.wrongly_dead == 1
    assert v.examples["wrongly_dead"] == ("a (max_deliveries)",)


def test_a_dead_letter_reason_that_does_not_fit_the_job_is_wrongly_dead() -> None:
    # Given a job failing once (fewer than its attempts) dead-lettered as max_attempts, and a
    # healthy job dead-lettered as max_deliveries with no fault anywhere
    enqueues = [h.Enqueue("t", 1.0, True, fails=1), h.Enqueue("q", 1.0, True)]
    runs = [h.Run("t", "t1", 10, 2.0, 2.1, False)]
    dead = {"t": ("max_attempts", 3.0), "q": ("max_deliveries", 3.0)}
    v = _check(enqueues, runs, dead=dead)
    # Then both are wrongly dead
    assert v.wrongly_dead == 2


def test_legitimate_dead_letters_are_not_wrongly_dead() -> None:
    # Given bad bytes dead-lettered as invalid, and a healthy job whose every delivery was
    # interrupted by kills until the delivery limit
    kills = [h.Fault("kill", t, t, pid=10, capacity=8) for t in (2.5, 3.5)]
    enqueues = [h.Enqueue("bad", 1.0, True, bad=True), h.Enqueue("k", 1.0, True)]
    runs = [h.Run("k", "k1", 10, 2.0), h.Run("k", "k2", 10, 3.0)]
    dead = {"bad": ("unparseable_json", 2.0), "k": ("max_deliveries", 4.0)}
    v = _check(enqueues, runs, kills, dead=dead)
    # Then neither is wrongly dead, and the second run is a duplicate the first kill explains
    assert (v.wrongly_dead, v.duplicates, v.violations) == (0, 1, 0), v.describe()


def test_a_run_or_ack_of_a_job_never_enqueued_is_a_phantom() -> None:
    # Given a completion and an ack of a job id the harness never enqueued, and a DLQ entry
    # of another
    runs = [_ok("a", "a1", 10, 2.0), _ok("ghost", "g1", 10, 2.0)]
    v = _check(
        [h.Enqueue("a", 1.0, True)],
        runs,
        dead={"ghost2": ("max_attempts", 3.0)},
        acks={("a", "a1"), ("ghost", "g1")},
    )
    # Then both ids are phantoms
    assert v.phantoms == 2
    assert set(v.examples["phantom"]) == {"ghost", "ghost2"}


def test_a_second_run_without_a_fault_is_an_unexplained_duplicate() -> None:
    # Given a job that succeeded and ran again, with no fault at all
    runs = [_ok("a", "a1", 10, 2.0), _ok("a", "a2", 11, 5.0)]
    v = _check([h.Enqueue("a", 1.0, True)], runs)
    # Then the second run is an unexplained duplicate
    assert (v.duplicates, v.unexplained_duplicates) == (1, 1)


def test_a_fault_on_another_worker_or_at_another_time_does_not_explain_a_duplicate() -> None:
    # Given a duplicate of a run on worker 10, and kills of worker 11 then, and of 10 later
    faults = [
        h.Fault("kill", 3.0, 3.0, pid=11, capacity=8),
        h.Fault("kill", 9.0, 9.0, pid=10, capacity=8),
    ]
    runs = [h.Run("a", "a1", 10, 2.0), _ok("a", "a2", 12, 5.0)]
    v = _check([h.Enqueue("a", 1.0, True)], runs, faults)
    # Then it stays unexplained
    assert v.unexplained_duplicates == 1


def test_a_stop_of_the_first_runs_worker_explains_its_duplicate() -> None:
    # Given worker 10 stopped past its lease while running a job that another worker then
    # ran, and worker 10's run finishing after it was continued
    stop = h.Fault("sigstop", 2.5, 6.0, pid=10, capacity=8)
    runs = [h.Run("a", "a1", 10, 2.0, 6.1, True), _ok("a", "a2", 11, 4.5)]
    v = _check([h.Enqueue("a", 1.0, True)], runs, [stop], acks={("a", "a2")})
    # Then the duplicate is explained and nothing is violated
    assert (v.duplicates, v.violations, v.completed) == (1, 0, 1), v.describe()


def test_duplicates_beyond_a_faults_capacity_are_over_the_bound() -> None:
    # Given one kill of a worker that could hold 2 jobs, followed by 3 re-runs
    kill = h.Fault("kill", 2.5, 2.5, pid=10, capacity=2)
    enqueues = [h.Enqueue(j, 1.0, True) for j in "abc"]
    runs = [r for j in "abc" for r in (h.Run(j, j + "1", 10, 2.0), _ok(j, j + "2", 11, 3.0))]
    v = _check(enqueues, runs, [kill])
    # Then two are explained and one is over the bound
    assert (v.duplicates, v.unexplained_duplicates, v.duplicates_over_bound) == (3, 0, 1)


def test_two_accepted_acks_of_one_job_are_a_double_ack() -> None:
    # Given a job run twice (explained by a stop) whose two runs were BOTH acknowledged
    stop = h.Fault("sigstop", 2.5, 6.0, pid=10, capacity=8)
    runs = [h.Run("a", "a1", 10, 2.0, 6.1, True), _ok("a", "a2", 11, 4.5)]
    v = _check([h.Enqueue("a", 1.0, True)], runs, [stop], acks={("a", "a1"), ("a", "a2")})
    # Then fencing failed: one double ack
    assert v.double_acks == 1
    assert v.violations == 1


def test_a_stop_of_the_later_runs_worker_explains_a_run_right_after_it_continues() -> None:
    # Given worker 10 stopped while it held a fetched job, which worker 11 ran meanwhile, and
    # worker 10 running it as soon as it was continued (and once more, much later)
    stop = h.Fault("sigstop", 2.0, 5.0, pid=10, capacity=8)
    enqueues = [h.Enqueue("a", 1.0, True), h.Enqueue("b", 1.0, True)]
    runs = [
        _ok("a", "a1", 11, 4.0),
        _ok("a", "a2", 10, 5.2),
        _ok("b", "b1", 11, 4.0),
        _ok("b", "b2", 10, 9.0),
    ]
    v = _check(enqueues, runs, [stop])
    # Then the run right after the stop is explained, the one 4 s later is not
    assert (v.duplicates, v.unexplained_duplicates) == (2, 1)
    assert v.examples["unexplained_duplicate"] == ("b",)


def test_a_fault_with_no_capacity_explains_no_duplicate() -> None:
    # Given the only worker, whose stop past its lease may cause no re-run at all (nobody else
    # can take its jobs, and it must never reclaim its own), yet its job ran twice
    stop = h.Fault("sigstop", 2.0, 5.0, pid=10, capacity=0)
    runs = [_ok("a", "a1", 10, 5.1), _ok("a", "a2", 10, 5.2)]
    v = _check([h.Enqueue("a", 1.0, True)], runs, [stop])
    # Then the duplicate is over the bound
    assert (v.duplicates, v.duplicates_over_bound) == (1, 1)


def test_a_kill_between_the_two_calls_of_a_split_retry_explains_a_later_rerun_only_then() -> None:
    # Given the SQS history: run 1 failed on worker 10 (its retry sent the copy), worker 10 was
    # killed before the original was deleted, the copy ran ok on 11, the original came back
    # when its lease ended and ran again on 12
    runs = [
        h.Run("a", "a1", 10, 0.0, 0.03, False),
        _ok("a", "a2", 11, 1.5),
        _ok("a", "a3", 12, 3.1),
    ]
    kill = h.Fault("kill", 0.3, 0.3, pid=10, capacity=8)
    final = h.Final(dead={}, live=set(), acks=set())
    spec = [h.Enqueue("a", 0.0, True, fails=1)]
    # Then with atomic settles (Redis) the re-run stays unexplained; with split settles
    # (SQS: send the copy, delete the original) the kill of run 1's worker explains it
    atomic = h.check_history(spec, runs, [kill], final, max_attempts=MAX_ATTEMPTS)
    split = h.check_history(
        spec, runs, [kill], final, max_attempts=MAX_ATTEMPTS, split_settles=True
    )
    assert atomic.unexplained_duplicates == 1
    assert (split.duplicates, split.violations) == (1, 0), split.describe()
    # and a kill of that worker before its run ended explains nothing more than before
    early = h.Fault("kill", 0.01, 0.01, pid=10, capacity=8)
    split_early = h.check_history(
        spec, runs, [early], final, max_attempts=MAX_ATTEMPTS, split_settles=True
    )
    assert split_early.unexplained_duplicates == 1


def test_a_server_kill_between_the_two_calls_of_a_split_retry_explains_the_two_lineages() -> None:
    # Given the SQS history of a server kill -9 run: run 1 failed on worker 10 65 ms before
    # ElasticMQ was killed (its retry sent the copy; the original was not deleted), and after
    # the restart the copy and the original each ran on their own until both succeeded
    runs = [
        h.Run("a", "a1", 10, 13.255, 13.273, False),
        h.Run("a", "a2", 10, 22.743, 22.761, False),
        h.Run("a", "a3", 11, 22.791, 22.840, False),
        h.Run("a", "a4", 11, 23.876, 23.896, False),
        h.Run("a", "a5", 10, 24.014, 24.033, True),
        h.Run("a", "a6", 12, 24.943, 24.968, True),
    ]
    server_kill = h.Fault("elasticmq_kill", 13.338, 19.816, capacity=24)
    final = h.Final(dead={}, live=set(), acks=set())
    spec = [h.Enqueue("a", 13.0, True, fails=3)]
    # Then with split settles the kill, which hit every worker, explains the second success as
    # a kill of run 1's own worker would; with atomic settles it stays unexplained
    split = h.check_history(
        spec, runs, [server_kill], final, max_attempts=MAX_ATTEMPTS, split_settles=True
    )
    atomic = h.check_history(spec, runs, [server_kill], final, max_attempts=MAX_ATTEMPTS)
    assert (split.duplicates, split.violations) == (1, 0), split.describe()
    assert atomic.unexplained_duplicates == 1
    # and a server kill that ended before run 1 ended explains nothing
    before = h.Fault("elasticmq_kill", 13.0, 13.26, capacity=24)
    split_before = h.check_history(
        spec, runs, [before], final, max_attempts=MAX_ATTEMPTS, split_settles=True
    )
    assert split_before.unexplained_duplicates == 1


def test_a_node_crash_splitting_a_retry_transaction_explains_two_copies_side_by_side() -> None:
    # Given the history of a RabbitMQ node kill -9 run (classic queues): the job failed twice
    # (each retry committed a copy and the ack of the one before in one transaction), its third
    # run succeeded 3 ms before the node was killed, and after the restart an older copy (its
    # ack never reached the disk) and a newer one ran side by side
    runs = [
        h.Run("a", "a1", 7004, 10.404, 10.441, False),
        h.Run("a", "a2", 7004, 10.452, 10.489, False),
        h.Run("a", "a3", 7003, 10.527, 10.563, True),
        h.Run("a", "a4", 7003, 17.941, 17.976, True),
        h.Run("a", "a5", 7003, 17.941, 17.976, False),
        h.Run("a", "a6", 7003, 17.981, 18.017, True),
    ]
    node_kill = h.Fault("rabbitmq_kill", 10.566, 17.634, capacity=24)
    final = h.Final(dead={}, live=set(), acks=set())
    spec = [h.Enqueue("a", 10.0, True, fails=2)]
    # Then a crash of the node, which hit every worker, explains the second copy
    split = h.check_history(
        spec, runs, [node_kill], final, max_attempts=MAX_ATTEMPTS, split_on_server_faults=True
    )
    assert split.violations == 0, split.describe()
    # And with atomic settles it stays unexplained
    atomic = h.check_history(spec, runs, [node_kill], final, max_attempts=MAX_ATTEMPTS)
    assert atomic.unexplained_duplicates == 1
    # And a kill -9 of the worker of the two failed runs, at the same moment, explains nothing
    # through split settles here (a worker's crash drops its open transaction whole), though
    # it would where a retry is two calls (SQS)
    worker_kill = h.Fault("kill", 10.566, 17.634, pid=7004, capacity=24)
    by_worker = h.check_history(
        spec, runs, [worker_kill], final, max_attempts=MAX_ATTEMPTS, split_on_server_faults=True
    )
    atomic_by_worker = h.check_history(spec, runs, [worker_kill], final, max_attempts=MAX_ATTEMPTS)
    two_calls = h.check_history(
        spec, runs, [worker_kill], final, max_attempts=MAX_ATTEMPTS, split_settles=True
    )
    assert by_worker.unexplained_duplicates == atomic_by_worker.unexplained_duplicates == 2
    assert two_calls.violations == 0, two_calls.describe()


def test_a_server_kill_during_an_enqueue_call_explains_the_run_of_its_re_sent_copy() -> None:
    # Given the history of an SQS server kill -9 run: a batch's enqueue call began 39 ms before
    # ElasticMQ was killed and returned, answered, 1.7 s after the restart (the server had
    # stored the first send; botocore re-sent it), and after the restart both copies ran
    runs = [_ok("a", "a1", 10, 2.101), _ok("a", "a2", 11, 3.041)]
    server_kill = h.Fault("elasticmq_kill", 0.039, 1.978, capacity=24)
    final = h.Final(dead={}, live=set(), acks=set())
    spanning = [h.Enqueue("a", 0.0, True, returned=3.683)]
    # Then a broker whose enqueue re-sends explains the second run by that call; one whose
    # enqueue never re-sends (or drops a re-send) leaves it unexplained
    resent = h.check_history(
        spanning, runs, [server_kill], final, max_attempts=MAX_ATTEMPTS, enqueue_resends=2
    )
    no_resend = h.check_history(spanning, runs, [server_kill], final, max_attempts=MAX_ATTEMPTS)
    assert (resent.duplicates, resent.resent_copies, resent.violations) == (1, 1, 0)
    assert no_resend.unexplained_duplicates == 1
    # and an enqueue call that returned before the kill began explains nothing
    before = [h.Enqueue("a", -0.5, True, returned=-0.4)]
    answered_before = h.check_history(
        before, runs, [server_kill], final, max_attempts=MAX_ATTEMPTS, enqueue_resends=2
    )
    assert answered_before.unexplained_duplicates == 1


def test_a_re_sent_enqueue_explains_no_more_copies_than_its_re_sends() -> None:
    # Given a job whose enqueue call spanned a server kill and that ran three times after it
    runs = [_ok("a", "a1", 10, 2.1), _ok("a", "a2", 11, 3.0), _ok("a", "a3", 12, 3.1)]
    server_kill = h.Fault("elasticmq_kill", 0.0, 2.0, capacity=24)
    final = h.Final(dead={}, live=set(), acks=set())
    spec = [h.Enqueue("a", -0.02, True, returned=3.6)]
    # Then one re-send explains one extra copy, not two
    v = h.check_history(
        spec, runs, [server_kill], final, max_attempts=MAX_ATTEMPTS, enqueue_resends=1
    )
    assert (v.duplicates, v.resent_copies, v.unexplained_duplicates) == (2, 1, 1), v.describe()


class _LoggedWorker:
    """A stand-in for a worker process: its pid and the JSON lines it logged."""

    def __init__(self, pid: int, records: list[dict[str, Any]]) -> None:
        self.pid = pid
        self.records = records

    def log_records(self) -> list[dict[str, Any]]:
        return self.records


def test_a_lost_jobs_timeline_shows_the_settles_the_workers_logged_for_it(tmp_path: Path) -> None:
    # Given a bed whose verdict calls a job lost, and a worker that logged its retry as taken
    # by the broker (and another job's line, which is not asked about)
    bed = harness.Bed(harness.Config("timeline", jobs=1), server=None, directory=tmp_path)
    bed.enqueues = [h.Enqueue("lostjob0000", 100.0, True, fails=2)]
    retried = {"ts": 100.5, "msg": "job failed", "job_id": "lostjob0000", "attempt": 2}
    other = {"ts": 100.6, "msg": "job failed", "job_id": "otherjob000", "attempt": 1}
    worker = _LoggedWorker(4242, [{**retried, "outcome": "retried"}, other])
    bed.procs = [typing.cast(workerproc.WorkerProc, worker)]
    verdict = _check(bed.enqueues, [])
    assert verdict.lost == 1

    # When the failure's timeline is written
    timeline = bed.describe_jobs(verdict)

    # Then it shows that worker's line about the lost job, with its attempt and outcome
    assert "log lostjob0 pid=4242 +0.500 msg=job failed attempt=2 outcome=retried" in timeline
    assert "otherjob" not in timeline
