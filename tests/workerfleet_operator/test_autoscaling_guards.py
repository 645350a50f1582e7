"""Table-driven decide() tests of the guards against over-reaction (fake clock, no I/O).

Three ways a scaler over-reacts, each with its guard: acting on one failed poll (the failure
threshold of ``onMetricFailure: fallback``, whose steps then go through the usual windows and
step limits), compounding the oldest-job age while new pods are still starting (the age counts
only replicas that heartbeat), and moving for a one-job change at 40 replicas (the tolerance).
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import scaling_fixtures as fx
from workerfleet_operator import autoscaling
from workerfleet_operator.autoscaling import ScalingPolicy, StepPolicy

BACKLOG_ONLY = ScalingPolicy(
    min_replicas=0,
    max_replicas=50,
    concurrency=8,
    target_backlog_per_replica=100,
    target_utilization=None,
    scale_up=StepPolicy(0, 100, 4),
    scale_down=StepPolicy(120, 50, None),
)

# --- onMetricFailure: fallback ---------------------------------------------------------------

FALLBACK = replace(BACKLOG_ONLY, on_metric_failure="fallback", fallback_replicas=2)


def test_one_failed_poll_holds_instead_of_going_to_the_fallback_replicas() -> None:
    # Given a pool at 20 replicas with fallback 2 and the default threshold of 3 failed polls
    timeline = [
        *fx.polls(0, 2, backlog=2000),
        *fx.outage(10, 1, "TimeoutError"),
        *fx.polls(15, 1, backlog=2000),
        *fx.outage(20, 2, "TimeoutError"),
    ]
    # When single failures are separated by a good poll
    decisions = fx.run(FALLBACK, timeline, current=20)
    # Then nothing moves, and each failure says it holds and how many failures it has seen
    assert fx.desired(decisions) == [20] * len(timeline)
    failed = [d for d in decisions if not d.queue_reachable]
    assert [d.clamped_by for d in failed] == ["metricFailureHold"] * 3
    assert [d.state.failures for d in failed] == [1, 1, 2]
    assert "failure 1 of 3" in failed[0].reason


def test_a_lasting_outage_goes_to_the_fallback_through_the_scale_down_window_and_steps() -> None:
    # Given a pool at 20 replicas, then Redis unreachable for five minutes
    timeline = [*fx.polls(0, 2, backlog=2000), *fx.outage(10, 60, "TimeoutError")]
    decisions = fx.run(FALLBACK, timeline, current=20)
    values = fx.desired(decisions)
    at = {p.at: d for p, d in zip(timeline, decisions, strict=True)}
    # Then nothing moves before the scale-down window has passed since the last real reading
    first_down = next(p.at for p, d in zip(timeline, decisions, strict=True) if d.desired < 20)
    assert first_down > 5 + BACKLOG_ONLY.scale_down.stabilization_window_seconds
    # And every step down is at most the 50 % step, until the fallback count is reached
    for before, after in itertools.pairwise([20, *values]):
        assert after >= before - max(1, before // 2)
    assert values[-1] == 2
    assert at[first_down].clamps[0] == "fallback"
    assert "going to fallbackReplicas 2" in at[first_down].reason


def test_the_fallback_scales_up_within_the_scale_up_step_limits() -> None:
    policy = replace(FALLBACK, fallback_replicas=20)
    decisions = fx.run(policy, [*fx.polls(0, 1, backlog=0), *fx.outage(5, 5)], current=2)
    # 2 holds for the first two failures, then 2 -> 6 -> 12 -> 20 (100 % or 4 pods per step)
    assert fx.desired(decisions) == [2, 2, 2, 6, 12, 20]
    assert decisions[3].clamped_by == "scaleUpStep"


@pytest.mark.parametrize(
    ("threshold", "first_fallback_poll"),
    [
        pytest.param(1, 0, id="threshold_one_acts_on_the_first_failure"),
        pytest.param(5, 4, id="threshold_five_waits_for_five"),
    ],
)
def test_the_failure_threshold_counts_consecutive_failed_polls(
    threshold: int, first_fallback_poll: int
) -> None:
    policy = replace(FALLBACK, fallback_replicas=6, failure_threshold=threshold)
    decisions = fx.run(policy, fx.outage(0, 6), current=2)
    first = next(i for i, d in enumerate(decisions) if "fallback" in d.clamps)
    assert first == first_fallback_poll
    assert decisions[first].desired == 6


def test_the_failure_threshold_is_a_workerpool_field_with_a_default_of_three() -> None:
    default = fx.pool_policy(onMetricFailure="fallback", fallbackReplicas=2)
    five = fx.pool_policy(onMetricFailure="fallback", fallbackReplicas=2, failureThreshold=5)
    assert (default.failure_threshold, five.failure_threshold) == (3, 5)


# --- the oldest-job age while pods start -------------------------------------------------------

AGE_ONLY = replace(
    BACKLOG_ONLY,
    max_replicas=200,
    target_backlog_per_replica=None,
    target_oldest_job_age_seconds=30,
)
POD_START_SECONDS = 60.0


def _age_grows_while_pods_start(
    seconds: float, start_replicas: int
) -> tuple[list[int], list[float]]:
    """Drive decide() with pods that heartbeat only POD_START_SECONDS after they were asked for.

    The backlog never drains (the running workers are stuck), so the oldest job ages one second
    per second from 45 s.
    """
    policy = AGE_ONLY
    started_at = [-1000.0] * start_replicas  # when each replica was asked for
    state = autoscaling.ScalerState()
    current = start_replicas
    values: list[int] = []
    signals: list[float] = []
    for step in range(int(seconds / fx.POLL) + 1):
        now = step * fx.POLL
        beating = [
            fx.heartbeat(f"p{n}", in_flight=8, last_seen=now)
            for n, at in enumerate(started_at)
            if now - at >= POD_START_SECONDS
        ]
        queue = fx.queue_stats(
            now,
            backlog=5000,
            in_flight=8 * len(beating),
            oldest_job_age_seconds=45 + now,
            workers=beating,
        )
        decision = autoscaling.decide(policy, autoscaling.Observation(queue), current, state, now)
        state = decision.state
        started_at += [now] * max(0, decision.desired - current)
        current = decision.desired
        values.append(current)
        signals.append(decision.signals["latency"] or 0.0)
    return values, signals


def test_the_oldest_job_age_does_not_compound_while_new_pods_are_starting() -> None:
    # Given 2 replicas, T = 30 s, pods that take 60 s to start, and jobs that keep ageing
    # When the scaler decides every 5 s for 40 s
    values, signals = _age_grows_while_pods_start(40, start_replicas=2)
    # Then the age is weighed against the 2 replicas that heartbeat, not against the replicas
    # already asked for: 2 x 85 s / 30 s = 5.7 at most after 40 s (it went 2 -> 200 before)
    assert max(values) == 6
    assert signals[-1] == pytest.approx(2 * 85 / 30)


def test_once_the_new_pods_heartbeat_the_age_weighs_them_too() -> None:
    values, signals = _age_grows_while_pods_start(70, start_replicas=2)
    # At 60 s the pods asked for at 0 s heartbeat: 3 replicas x 110 s / 30 s = 11
    assert signals[12] == pytest.approx(3 * 105 / 30)
    assert values[-1] > 6


def test_a_stale_heartbeat_of_a_removed_pod_does_not_count_above_the_replicas() -> None:
    # Four heartbeats (one of a pod removed a moment ago) but only three replicas
    beats = [fx.heartbeat(f"p{n}", in_flight=8) for n in range(4)]
    queue = fx.queue_stats(0, backlog=50, oldest_job_age_seconds=60, workers=beats)
    decision = autoscaling.decide(
        AGE_ONLY, autoscaling.Observation(queue), 3, autoscaling.ScalerState(), 0
    )
    assert decision.signals["latency"] == pytest.approx(3 * 60 / 30)


# --- tolerance -------------------------------------------------------------------------------

INSTANT = replace(
    BACKLOG_ONLY, scale_down=StepPolicy(0, None, None), scale_up=StepPolicy(0, None, None)
)


@pytest.mark.parametrize(
    ("tolerance", "current", "backlog", "expected", "clamp"),
    [
        pytest.param(0.1, 40, 4001, 40, "tolerance", id="one_job_more_moves_nothing"),
        pytest.param(0.1, 40, 4400, 40, "tolerance", id="exactly_ten_percent_moves_nothing"),
        pytest.param(0.1, 40, 4401, 45, None, id="above_ten_percent_scales_up"),
        pytest.param(0.1, 40, 3600, 40, "tolerance", id="ten_percent_less_moves_nothing"),
        pytest.param(0.1, 40, 3599, 36, None, id="below_ten_percent_scales_down"),
        pytest.param(0.1, 1, 105, 1, "tolerance", id="small_pools_too"),
        pytest.param(0.1, 0, 1, 1, None, id="waking_from_zero_is_never_within_tolerance"),
        pytest.param(0.1, 1, 0, 0, None, id="an_idle_queue_is_never_within_tolerance"),
        pytest.param(0.0, 40, 4001, 41, None, id="tolerance_zero_follows_every_job"),
    ],
)
def test_a_signal_within_the_tolerance_of_the_current_replicas_changes_nothing(
    tolerance: float, current: int, backlog: int, expected: int, clamp: str | None
) -> None:
    policy = replace(INSTANT, tolerance=tolerance)
    decision = fx.run(policy, [fx.Poll(0, fx.queue_stats(0, backlog=backlog))], current=current)[0]
    assert decision.desired == expected
    assert decision.clamped_by == clamp
    assert decision.raw_desired == -(-backlog // 100)


def test_the_default_tolerance_is_ten_percent_and_a_workerpool_field() -> None:
    assert (fx.pool_policy().tolerance, fx.pool_policy(tolerance=0.05).tolerance) == (0.1, 0.05)


def test_a_tolerance_of_one_or_more_is_rejected() -> None:
    with pytest.raises(ValueError, match="tolerance"):
        replace(BACKLOG_ONLY, tolerance=1.0)
