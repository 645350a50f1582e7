"""``workerfleet demo --broker rabbitmq|sqs`` as a user runs it: an embedded rabbitmq-server or
ElasticMQ, real worker processes, the real autoscaler reading the broker's probe.

Each demo runs as a real subprocess (the ``workerfleet`` console script), shortened like the
Redis demo's test. The test reads the ``demo:`` line and judges the run again from the history
the demo keeps in its output directory (``history.json``: the ids the broker accepted, every run
receipt of the tasks, the ids read back from the dead-letter queue), never from the broker's
counters, which on these brokers are samples. A missing server FAILS (the demo exits 1 saying
which make target installs it).
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import pytest
from workerfleet_operator.local import embedded, embedded_elasticmq, embedded_rabbitmq

pytestmark = pytest.mark.slow

DEMO_LINE = re.compile(
    r"^demo: enqueued=(\d+) completed=(\d+) dead_lettered=(\d+) lost=(\d+) "
    r"peak_replicas=(\d+) chart=\S+$",
    re.MULTILINE,
)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("broker", ["rabbitmq", "sqs"])
def test_the_demo_on_an_embedded_broker_ends_with_the_demo_line_and_loses_no_job(
    broker: str, tmp_path: pathlib.Path
) -> None:
    # Given the demo pool on an embedded rabbitmq-server / ElasticMQ
    out = tmp_path / "out"
    # When `workerfleet demo --broker B` runs a shortened load (spike, lull, flaky, poison)
    done = subprocess.run(
        [
            str(pathlib.Path(sys.executable).parent / "workerfleet"),
            "demo",
            "--broker",
            broker,
            "--seconds",
            "30",
            "--no-prometheus",
            "--no-view",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    output = done.stdout + done.stderr
    # Then it exits 0 and ends with the same demo: line as on Redis, lost=0
    assert done.returncode == 0, output
    assert f"on {broker}" in output
    match = DEMO_LINE.search(done.stdout)
    assert match is not None, output
    assert done.stdout.rstrip().splitlines()[-1] == match.group(0)
    enqueued, completed, dead, lost, peak = (int(g) for g in match.groups())
    assert lost == 0
    # And the history says the same: every accepted job ran to success or is in the DLQ
    kept = json.loads((out / "history.json").read_text())
    accepted = set(kept["enqueued"])
    succeeded = {r["job_id"] for r in kept["runs"] if r["ok"]}
    dead_ids = set(kept["dead_lettered"])
    assert len(accepted) == enqueued > 100
    assert accepted - succeeded - dead_ids == set()
    assert kept["pending"] == 0
    assert (len(succeeded & accepted), len(dead_ids & accepted)) == (completed, dead)
    # And the poison jobs were dead-lettered after failing runs (the task's own receipts)
    assert dead > 0
    failed = {r["job_id"] for r in kept["runs"] if not r["ok"]}
    assert dead_ids <= failed
    # And the fleet scaled up with the load, read through the broker's probe
    assert peak >= 2
    assert "workers crashed 0, killed 0" in output


def test_a_missing_rabbitmq_server_is_reported_with_the_make_target(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setattr(embedded_rabbitmq, "SCRIPT_PATHS", (str(tmp_path / "none"),))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(embedded.EmbeddedServerError, match=r"make demo-deps DEMO_ARGS="):
        embedded_rabbitmq.EmbeddedRabbitMQ()


def test_a_missing_elasticmq_is_reported_with_the_make_target(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setenv("WORKERFLEET_CACHE", str(tmp_path))
    with pytest.raises(embedded.EmbeddedServerError, match=r"--broker sqs.*make deps"):
        embedded_elasticmq.EmbeddedElasticMQ()


def test_the_demo_without_its_broker_exits_1_naming_the_make_target_and_leaves_no_directory(
    tmp_path: pathlib.Path,
) -> None:
    # Given no ElasticMQ jars in the cache the demo reads, and a temporary directory of its own
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {
        "PATH": "/usr/bin:/bin",
        "WORKERFLEET_CACHE": str(tmp_path / "empty-cache"),
        "TMPDIR": str(temp),
    }
    # When the SQS demo starts
    done = subprocess.run(
        [
            str(pathlib.Path(sys.executable).parent / "workerfleet"),
            "demo",
            "--broker",
            "sqs",
            "--seconds",
            "5",
            "--no-view",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    # Then it fails at once with the command that installs it
    assert done.returncode == 1, done.stdout + done.stderr
    assert "make demo-deps DEMO_ARGS='--broker sqs'" in done.stderr
    assert "Traceback" not in done.stderr
    # And it leaves no directory behind (each run left a workerfleet-demo-* in /tmp)
    assert list(temp.iterdir()) == []
