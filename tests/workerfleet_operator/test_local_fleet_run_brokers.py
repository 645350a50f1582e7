"""``workerfleet run POOL.yaml`` for a pool whose ``spec.queue`` names RabbitMQ or SQS: the
fleet embeds that broker's server, scales real workers on its probe, and drains on Ctrl-C.

Real subprocesses throughout: the ``workerfleet`` console script, the embedded rabbitmq-server
node or ElasticMQ it starts, and worker processes running examples/demo_tasks.py, whose run
receipts (in ``$DEMO_RECEIPTS_DIR``) are the history the test judges: every job the broker
accepted ran.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import local_fleet_support as support
import pytest
from workerfleet_operator.local import brokers, history, manifest

from tests.workerfleet_operator.test_local_fleet_cli import Output
from worker_runtime import brokers as runtime_brokers
from worker_runtime import producer

pytestmark = pytest.mark.slow

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
QUEUE_BLOCKS: dict[str, dict[str, Any]] = {
    "rabbitmq": {"urlSecretRef": {"name": "rabbitmq", "key": "url"}},
    # a region and an endpoint the embedded ElasticMQ stands in for; prefix: its queue set
    "sqs": {"region": "eu-west-1", "endpoint": "http://127.0.0.1:9324", "prefix": "local-"},
}
SERVER_LINES = {
    "rabbitmq": r"rabbitmq\s+embedded\s+rabbitmq-server\s+127\.0\.0\.1:(\d+)",
    "sqs": r"sqs\s+embedded\s+ElasticMQ\s+127\.0\.0\.1:(\d+)",
}
URLS = {
    "rabbitmq": "amqp://guest:guest@127.0.0.1:{port}/",
    "sqs": "sqs://127.0.0.1:{port}?region=us-east-1&secure=false&prefix=local-",
}


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def _enqueue(url: str, pool: manifest.LocalPool, count: int) -> list[str]:
    queue = await runtime_brokers.open_broker(
        url, pool.queue, options=brokers.build_queue_options(pool.spec)
    )
    try:
        requests = [
            producer.build_request(producer.JobSpec("thumbnail", {"image_id": i, "work_ms": 300}))
            for i in range(count)
        ]
        results = await queue.enqueue_many(requests)
        return [r.job_id for r in results if r.created]
    finally:
        await queue.close()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("broker", sorted(QUEUE_BLOCKS))
def test_workerfleet_run_embeds_the_pools_broker_scales_on_its_probe_and_drains(
    broker: str, tmp_path: pathlib.Path
) -> None:
    # Given a pool of the demo's tasks whose spec.queue names the broker, and no broker URL
    document = support.build_manifest(f"run-{broker}", maxReplicas=3)
    document["spec"]["app"] = "demo_tasks:app"
    document["spec"]["queue"] = {"name": f"run-{broker}", broker: QUEUE_BLOCKS[broker]}
    path = support.write_manifest(tmp_path, document)
    pool = manifest.fetch_pool(path)
    receipts = tmp_path / "receipts"
    receipts.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("WORKERFLEET_BROKER_URL", "WORKERFLEET_REDIS_URL")
    }
    env[history.RECEIPTS_ENV] = str(receipts)
    process = subprocess.Popen(
        [
            str(pathlib.Path(sys.executable).parent / "workerfleet"),
            "run",
            str(path),
            "--no-view",
            "--metrics-port",
            "-1",
            "--app-path",
            str(EXAMPLES),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = Output(process)
    port = 0
    try:
        # When it starts, it embeds the pool's broker and holds at zero replicas
        port = int(output.wait_for(SERVER_LINES[broker], 150).group(1))
        output.wait_for(r"Steady at 0", 30)
        # And a backlog arrives through the broker
        accepted = asyncio.run(_enqueue(URLS[broker].format(port=port), pool, 40))
        assert len(accepted) == 40
        # Then the fleet scales up on the broker's probe
        output.wait_for(r"ScaledUp 0→\d", 60)
        # And every accepted job runs to success (the tasks' receipts are the history)
        deadline = time.monotonic() + 90
        done: set[str] = set()
        while time.monotonic() < deadline:
            done = {r.job_id for r in history.read_runs(receipts) if r.ok}
            if set(accepted) <= done:
                break
            time.sleep(0.5)
        assert set(accepted) - done == set(), output.text
        # When the user presses Ctrl-C
        process.send_signal(signal.SIGINT)
        # Then every worker drains, none is killed, and the embedded broker is stopped
        output.wait_for(r"stopped; workers .*killed=\d+", 60)
        assert process.wait(60) == 0, output.text
        assert "killed=0" in output.text and "crashed=0" in output.text
        assert not _port_open(port)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
