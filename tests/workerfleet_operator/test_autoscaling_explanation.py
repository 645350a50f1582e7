"""explain_decision(): the one line an Event or status.autoscaling shows for a decision."""

from __future__ import annotations

from dataclasses import replace

import scaling_fixtures as fx
from workerfleet_operator import autoscaling
from workerfleet_operator.autoscaling import ScalingPolicy, StepPolicy

POLICY = ScalingPolicy(
    max_replicas=20,
    target_backlog_per_replica=100,
    target_utilization=None,
    scale_up=StepPolicy(0, 100, 4),
)


def test_the_explanation_names_the_reason_every_signal_and_every_clamp() -> None:
    timeline = [
        fx.Poll(0, fx.queue_stats(0, backlog=530)),
        fx.Poll(10, fx.queue_stats(10, backlog=3000, enqueued_total=100)),
    ]
    decision = fx.run(POLICY, timeline, current=2)[-1]
    text = autoscaling.explain_decision(decision)
    assert text.startswith(decision.reason)
    assert "backlog=30.00" in text
    assert "capacity=off" in text
    assert "latency=off" in text
    assert "chosen backlog → 30" in text
    assert "maxReplicas → scaleUpStep" in text
    assert "arrival 10.00/s" in text


def test_the_explanation_of_an_outage_says_the_queue_was_unreadable() -> None:
    decision = fx.run(POLICY, fx.outage(0, 1, "ConnectionError: refused"), current=3)[0]
    text = autoscaling.explain_decision(decision)
    assert "queue unreadable (ConnectionError: refused)" in text
    assert "metricFailureHold" in text


def test_the_explanation_flags_scaling_limited() -> None:
    policy = replace(POLICY, max_replicas=3)
    timeline = [fx.Poll(t, fx.queue_stats(t, backlog=1000 + int(t) * 10)) for t in (0, 5, 10)]
    decision = fx.run(policy, timeline, current=3)[-1]
    assert decision.scaling_limited
    assert "ScalingLimited" in autoscaling.explain_decision(decision)


def test_a_scale_down_reason_names_the_counts_and_the_limit() -> None:
    policy = replace(POLICY, scale_down=StepPolicy(0, 50, None))
    decision = fx.run(policy, [fx.Poll(0, fx.queue_stats(0, backlog=0))], current=8)[0]
    assert (
        decision.reason
        == "ScaledDown 8→4: no backlog and nothing in flight (wanted 0, limited by scaleDownStep)"
    )
