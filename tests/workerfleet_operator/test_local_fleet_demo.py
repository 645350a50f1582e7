"""End to end on one machine: the demo's fleet, embedded Redis and a real Prometheus.

The same code path as ``make demo`` (``local.demo.run_demo``), shortened: real redis-server, real
worker processes running examples/demo_tasks.py, the real autoscaler, and a real Prometheus
server evaluating the shipped alert rules (the fast variant, 1 s evaluation interval).
"""

from __future__ import annotations

import pathlib
import re

import pytest
from workerfleet_operator.local import demo

pytestmark = pytest.mark.slow


@pytest.mark.timeout(150)
def test_the_demo_scales_with_the_spike_settles_every_job_and_fires_the_dead_letter_alert(
    tmp_path: pathlib.Path,
) -> None:
    # Given the demo pool, an embedded Redis and Prometheus with the project's alert rules
    # When the load generator sends a spike, a lull and some flaky and poison jobs
    result = demo.run_demo(seconds=50, out_dir=tmp_path / "out", use_prometheus=True)
    # Then Prometheus ran and the poison jobs made WorkerPoolDeadLetterGrowing fire
    assert result.prometheus.startswith("ran on 127.0.0.1:"), result.prometheus
    assert "WorkerPoolDeadLetterGrowing" in result.alerts
    assert result.poison_sent > 0 and result.dead_lettered == result.poison_sent
    # And the fleet scaled up with the spike and back down after it
    replicas = [p.replicas for p in result.points]
    peak_at = replicas.index(max(replicas))
    assert result.scaling.peak_replicas == max(replicas) >= 4
    assert replicas[-1] < result.scaling.peak_replicas
    assert min(replicas[:peak_at] or [0]) == 0
    # And every enqueued job was completed or dead-lettered, none lost
    assert result.enqueued > 300
    assert result.lost == 0
    assert result.completed + result.dead_lettered + result.pending == result.enqueued
    assert result.retried >= result.flaky_sent
    # And no worker was killed during scale-in: all drained and deregistered
    assert result.workers_killed == 0
    assert result.workers_lost == 0
    # And the summary ends with the machine-readable line and the chart exists
    summary = demo.build_summary(result)
    last = summary.splitlines()[-1]
    assert re.fullmatch(
        r"demo: enqueued=\d+ completed=\d+ dead_lettered=\d+ lost=0 peak_replicas=\d+ chart=\S+",
        last,
    )
    assert result.chart is not None and result.chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.decisions is not None and result.decisions.read_text().count("\n") >= 2


def test_the_load_plan_has_a_spike_a_lull_and_a_quiet_end() -> None:
    plan = demo.build_load_plan(80)
    names = [p.name for p in plan]
    assert names == ["warm-up", "spike", "lull", "bump", "tail"]
    spike = plan[1]
    assert spike.rate > 10 * plan[2].rate
    assert plan[-1].end < 80 * 0.7  # the rest of the run shows the scale-down
    assert demo.count_due(plan, plan[-1].end) == demo.count_due(plan, 1000)


def test_the_job_mix_has_flaky_and_poison_jobs_in_the_documented_shares() -> None:
    import random

    rng = random.Random(1)
    jobs = [demo.build_job_payload(i, rng, demo.JobMix()) for i in range(20_000)]
    poison = sum(j["poison"] for j in jobs) / len(jobs)
    flaky = sum(j["fail_attempts"] > 0 for j in jobs) / len(jobs)
    assert 0.010 < poison < 0.020
    assert 0.040 < flaky < 0.060
    assert not any(j["poison"] and j["fail_attempts"] for j in jobs)
