"""Cold start of a worker process: what its start path loads, checked without timing anything.

The figure itself (spawn → first job started) is bench/runtime/driver.py's measure_cold_start;
these tests keep what it relies on: a Redis worker reaches its first job without importing the
other brokers' clients, the operator and its console, the CLI's other commands, the Redis
broker's dead-letter and topic reads, the process pool or the events module (each is imported
where it is used), and with its garbage collector running again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from tests.worker_runtime import workerproc
from worker_runtime import cli

COLD_START_APP = "tests.worker_runtime.tasks_cold_start:app"

NOT_ON_A_REDIS_WORKERS_START_PATH = (
    # the other brokers and their client libraries
    "aio_pika",
    "aiormq",
    "pamqp",
    "aiobotocore",
    "botocore",
    "boto3",
    "worker_runtime.brokers.rabbitmq",
    "worker_runtime.brokers.sqs",
    "worker_runtime.brokers.memory",
    # the Redis broker's dead-letter, topic and in-flight reads (commands and the console)
    "worker_runtime.brokers.redis.dlq",
    "worker_runtime.brokers.redis.topics",
    "worker_runtime.brokers.redis.inflight",
    # the operator, its console and Kubernetes
    "workerfleet_operator",
    "kopf",
    "kubernetes",
    "aiohttp",
    "starlette",
    "jinja2",
    "uvicorn",
    # the CLI's other commands and their tables, the process pool (only for executor="process"
    # tasks), events
    "worker_runtime.queue_commands",
    "rich",
    "multiprocessing",
    "worker_runtime.processes",
    "worker_runtime.events",
    "worker_runtime.circuit",
)


def _first_job_state(wf: workerproc.Testbed) -> dict[str, Any]:
    """What the cold-start App's task saw in its worker process at the first job."""
    wf.producer.enqueue("report-start", {"n": 1})
    worker = wf.spawn(app=COLD_START_APP)
    key = f"test:{wf.queue}:started"
    reported = workerproc.wait_until(
        lambda: wf.client.lindex(key, 0) or not worker.alive(), 60, "the first job's report"
    )
    assert isinstance(reported, str), worker.logs()[-3000:]
    state: dict[str, Any] = json.loads(reported)
    return state


def test_a_redis_worker_starts_without_importing_other_brokers_clients(
    wf: workerproc.Testbed,
) -> None:
    # Given a Redis worker of a typical App, when its first job runs
    state = _first_job_state(wf)
    modules = set(state["modules"])
    # Then what serves it was loaded (the report comes from the right place) ...
    assert {"redis", "worker_runtime.worker", "worker_runtime.brokers.redis.broker"} <= modules
    # ... and nothing that only other brokers, commands or kinds of task need
    loaded = sorted(
        name
        for name in modules
        for unwanted in NOT_ON_A_REDIS_WORKERS_START_PATH
        if name == unwanted or name.startswith(unwanted + ".")
    )
    assert loaded == []
    # And the garbage collector, paused while the worker started, runs again
    assert state["gc_enabled"] is True


def test_a_worker_command_that_cannot_start_leaves_the_garbage_collector_running() -> None:
    # Given the worker command called in a process of its own making, without an App
    code = (
        "import gc\n"
        "from worker_runtime import cli\n"
        "code = cli.main(['worker', '--redis-url', 'redis://127.0.0.1:1/0'])\n"
        "print(code, gc.isenabled())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "WORKERFLEET_APP"}
    env["PYTHONPATH"] = os.pathsep.join([str(workerproc.REPO), str(workerproc.REPO / "operator")])
    # When it fails (no App to run)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    # Then it says so, and the collector it paused for the start-up is running again
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["2", "True"]
    assert "no app" in done.stderr


def test_a_worker_parses_its_arguments_as_the_whole_command_line_does() -> None:
    # Given a worker's command line, parsed by the worker command's parser alone (what
    # `python -m worker_runtime worker ...` builds) and by the parser of every command
    argv = ["worker", "tasks:app", "-c", "3", "--queue", "q", "--log-format", "text"]
    alone = cli.build_parser(only_worker=True).parse_args(argv)
    whole = cli.build_parser().parse_args(argv)
    # Then both read the same settings and run the same handler
    assert vars(alone) == vars(whole)
    assert alone.handler is cli.cmd_worker
