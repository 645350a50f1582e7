"""Process tasks (``executor="process"``) on real workers: children, crashes, timeouts, drain.

Real redis-server, real worker subprocesses running ``tests.worker_runtime.tasks_processes``,
whose handlers record (from inside the child) their pid and what they did. Throughput is the
benchmark's subject (bench/process_pool.py), not these tests'.
"""

from __future__ import annotations

import itertools
import os
import signal
from collections import Counter

import pytest

from tests.worker_runtime import workerproc
from tests.worker_runtime.workerproc import wait_until
from worker_runtime import App, processes

APP = "tests.worker_runtime.tasks_processes:app"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _pool_pids(worker: workerproc.WorkerProc) -> list[int]:
    """The children the worker logged when its pool started."""
    for record in worker.log_records():
        if record.get("msg") == "process pool started":
            return [int(p) for p in record["pids"]]
    raise AssertionError("the worker never logged its process pool")


def test_cpu_jobs_run_side_by_side_in_child_processes_of_the_worker(
    wf: workerproc.Testbed,
) -> None:
    # Given a worker with two process slots and two CPU-bound jobs that can only finish when
    # both run at the same time (each spins until the other has started)
    worker = wf.spawn(concurrency=2, app=APP, extra_env={"WORKERFLEET_PROCESS_POOL_SIZE": "2"})
    for marker in ("a", "b"):
        wf.producer.enqueue("cpu", {"marker": marker, "barrier": 2, "seconds": 0.2})
    # When they run
    wait_until(lambda: wf.stats().completed_total == 2, 60, "both jobs")
    # Then both finished once, each in its own child process (not the worker's own process)
    assert wf.done_counts() == {"a": 1, "b": 1}
    pids = {e["pid"] for e in wf.starts()}
    assert len(pids) == 2 and worker.pid not in pids
    assert [e["attempt"] for e in wf.starts()] == [1, 1]


def test_a_crashing_child_fails_only_its_job_which_is_retried_and_nothing_is_lost(
    wf: workerproc.Testbed,
) -> None:
    # Given a worker with two children, twenty CPU jobs and one job whose child dies mid-run
    wf.spawn(concurrency=2, app=APP, extra_env={"WORKERFLEET_PROCESS_POOL_SIZE": "2"})
    wf.producer.enqueue("crash-once", {"marker": "crash", "seconds": 0.2})
    for i in range(20):
        wf.producer.enqueue("cpu", {"marker": f"j{i}", "seconds": 0.02})
    # When they all run
    wait_until(lambda: wf.stats().completed_total == 21, 90, "all 21 jobs")
    # Then every job completed exactly once; the crashed one on its second attempt and second
    # delivery, with the child's death in its history; nothing went to the DLQ
    assert wf.done_counts() == {"crash": 1, **{f"j{i}": 1 for i in range(20)}}
    crash_starts = [e for e in wf.starts() if e["marker"] == "crash"]
    assert [(e["attempt"], e["deliveries"]) for e in crash_starts] == [(1, 1), (2, 2)]
    s = wf.stats()
    assert (s.dead_letter, s.failed_total, s.retried_total) == (0, 1, 1)
    assert wf.stats().backlog == 0


def test_a_handler_error_that_does_not_pickle_back_fails_the_attempt_and_keeps_the_pool(
    wf: workerproc.Testbed,
) -> None:
    # Given a worker with two children and a process task that raises an error whose class
    # cannot be rebuilt from its pickle (a two-argument __init__: an ordinary custom error)
    worker = wf.spawn(concurrency=2, app=APP, extra_env={"WORKERFLEET_PROCESS_POOL_SIZE": "2"})
    job_id = wf.producer.enqueue("coded-error", {"marker": "c"}).job_id
    # When it runs out of attempts
    wait_until(lambda: wf.stats().dead_letter == 1, 60, "the job's dead letter")
    # Then each attempt failed at once with the error's type and message (not after a lease
    # expiry with nothing recorded), and it was dead-lettered for its attempts
    d = wf.dead_letter(job_id)
    assert d is not None and d.reason == "max_attempts"
    assert [(f.error_type, f.message) for f in d.history] == [
        ("ChildError", "CodedError: 404: no such thing as c")
    ] * 3
    assert [e["attempt"] for e in wf.starts()] == [1, 2, 3]
    # And the pool still has its two children, no more
    children = set(_pool_pids(worker)) | {e["pid"] for e in wf.starts()}
    assert len(children) == 2, children


def test_a_process_job_past_its_timeout_has_its_child_killed(wf: workerproc.Testbed) -> None:
    # Given a task with a 1 s timeout and 2 attempts whose handler would burn CPU for 120 s
    wf.spawn(concurrency=1, app=APP, extra_env={"WORKERFLEET_PROCESS_POOL_SIZE": "1"})
    job = wf.producer.enqueue("spin-forever", {"marker": "spin"})
    # When both attempts time out
    wait_until(lambda: wf.stats().dead_letter == 1, 60, "the dead letter")
    # Then each attempt's child was killed (its pid is gone), and the history says timeout
    pids = [e["pid"] for e in wf.starts()]
    assert len(pids) == 2 and pids[0] != pids[1]
    wait_until(lambda: not any(_alive(p) for p in pids), 10, "the killed children to be gone")
    d = wf.dead_letter(job.job_id)
    assert d is not None and d.reason == "max_attempts"
    assert [h.error_type for h in d.history] == ["TimeoutError", "TimeoutError"]
    assert "child process killed" in d.history[0].message


@pytest.mark.parametrize(
    ("limit", "payload", "jobs", "runs_per_child"),
    [
        # two jobs per child: five jobs take three children
        ({"WORKERFLEET_PROCESS_MAX_JOBS_PER_CHILD": "2"}, {}, 5, [2, 2, 1]),
        # each job keeps 25 MB in its child: 50 MB > 40 MB after the second job
        ({"WORKERFLEET_PROCESS_MAX_MEMORY_GROWTH_MB": "40"}, {"megabytes": 25}, 4, [2, 2]),
    ],
    ids=["after-max-jobs", "after-memory-growth"],
)
def test_a_child_is_replaced_after_its_job_limit_or_its_memory_growth(
    wf: workerproc.Testbed,
    limit: dict[str, str],
    payload: dict[str, int],
    jobs: int,
    runs_per_child: list[int],
) -> None:
    # Given a worker with one child and a recycling limit
    wf.spawn(concurrency=1, app=APP, extra_env={"WORKERFLEET_PROCESS_POOL_SIZE": "1", **limit})
    # When jobs run one after the other
    for i in range(jobs):
        wf.producer.enqueue("cpu", {"marker": f"j{i}", **payload})
    wait_until(lambda: wf.stats().completed_total == jobs, 60, f"{jobs} jobs")
    # Then each child ran its share and was replaced by a new one; every job ran once
    pids = [e["pid"] for e in wf.starts()]
    assert [len(list(run)) for _, run in itertools.groupby(pids)] == runs_per_child
    assert len(set(pids)) == len(runs_per_child)
    assert wf.done_counts() == {f"j{i}": 1 for i in range(jobs)}


def test_drain_waits_for_a_running_child_then_leaves_no_process_behind(
    wf: workerproc.Testbed,
) -> None:
    # Given a worker (60 s drain budget) running a CPU job of 1 s in one of its two children
    worker = wf.spawn(
        concurrency=2, app=APP, drain_timeout=60.0, extra_env={"WORKERFLEET_PROCESS_POOL_SIZE": "2"}
    )
    wf.producer.enqueue("cpu", {"marker": "long", "seconds": 1.0})
    wait_until(lambda: len(wf.starts()) == 1, 60, "the job to start")
    # When the worker is told to drain while the child runs it
    worker.send(signal.SIGTERM)
    # Then it lets the child finish the job, exits 0, and no child of it is left
    assert worker.wait(60) == 0
    assert wf.done_counts() == {"long": 1}
    assert wf.stats().completed_total == 1
    assert "releasing unfinished jobs" not in worker.logs()
    children = [wf.starts()[0]["pid"], *_pool_pids(worker)]
    assert len(children) == 3  # the one that ran the job, and both children the pool started
    assert not any(_alive(pid) for pid in children)


def test_a_killed_worker_takes_its_children_with_it(wf: workerproc.Testbed) -> None:
    # Given a worker whose two children are running CPU jobs
    worker = wf.spawn(concurrency=2, app=APP, extra_env={"WORKERFLEET_PROCESS_POOL_SIZE": "2"})
    for marker in ("a", "b"):
        wf.producer.enqueue("cpu", {"marker": marker, "seconds": 30.0})
    wait_until(lambda: len(wf.starts()) == 2, 60, "both jobs to start")
    children = {e["pid"] for e in wf.starts()}
    # When the worker is killed (no drain, no cleanup of its own)
    worker.send(signal.SIGKILL)
    worker.wait(10)
    # Then the kernel ends its children too: nothing keeps burning CPU for a dead worker
    wait_until(lambda: not any(_alive(p) for p in children), 10, "the children to die")


def test_a_process_task_records_done_on_ack_and_runs_context_free_handlers(
    wf: workerproc.Testbed,
) -> None:
    # Given a worker and two process tasks: one marks its idempotency key done on ack, one
    # takes only its payload
    wf.spawn(concurrency=2, app=APP)
    wf.producer.enqueue("done-on-ack", {"marker": "k"}, idempotency_key="order-7")
    wf.producer.enqueue("no-context", {"marker": "p"})
    wait_until(lambda: wf.stats().completed_total == 2, 60, "both jobs")
    # Then the done marker was written with the ack, and the plain handler ran in a child
    prefix = "{wf:" + wf.queue + "}"
    assert wf.client.get(f"{prefix}:done:order-7") == "1"
    assert len(wf.client.lrange(f"test:{wf.queue}:plain", 0, -1)) == 1


def test_already_done_is_refused_loudly_in_a_child_rather_than_answered_wrongly(
    wf: workerproc.Testbed,
) -> None:
    # Given a process task that asks whether its idempotency key is already done
    wf.spawn(concurrency=1, app=APP)
    wf.producer.enqueue("asks-already-done", {"marker": "q"}, idempotency_key="k-1")
    wait_until(lambda: wf.stats().completed_total == 1, 60, "the job")
    # Then the child got an error saying so, not a silent "no"
    (event,) = wf.events()
    assert event["event"] == "refused"
    assert "not available in a process task" in event["error"]


# ---- registration (pure) -------------------------------------------------------------------


def test_an_async_handler_cannot_be_a_process_task() -> None:
    app = App(queue="p")
    with pytest.raises(TypeError, match="sync handlers"):

        @app.task("x", executor="process")
        async def handler(payload: dict[str, int]) -> None: ...


def test_a_handler_defined_inside_a_function_cannot_be_a_process_task() -> None:
    app = App(queue="p")
    with pytest.raises(TypeError, match="module-level"):

        @app.task("x", executor="process")
        def handler(payload: dict[str, int]) -> None: ...


def test_a_process_task_is_imported_by_its_module_and_name() -> None:
    from tests.worker_runtime import tasks_processes

    spec = tasks_processes.app.tasks["cpu"]
    assert spec.executor == "process"
    assert spec.handler_ref == ("tests.worker_runtime.tasks_processes", "cpu")


def test_the_default_pool_has_one_child_per_core_at_most_the_concurrency() -> None:
    cores = os.cpu_count() or 1
    assert processes.default_size(1) == 1
    assert processes.default_size(10_000) == cores
    assert Counter([processes.default_size(c) <= c for c in range(1, 9)]) == Counter({True: 8})
