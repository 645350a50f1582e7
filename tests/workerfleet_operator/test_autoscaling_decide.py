"""Table-driven tests of autoscaling.decide() on a fake clock (no sleeps, no I/O)."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
import scaling_fixtures as fx
from workerfleet_operator import autoscaling
from workerfleet_operator.autoscaling import ScalingPolicy, StepPolicy

# Backlog is the only signal, so expected counts follow from "backlog / 100" alone.
BACKLOG_ONLY = ScalingPolicy(
    min_replicas=0,
    max_replicas=20,
    concurrency=8,
    target_backlog_per_replica=100,
    target_utilization=None,
    scale_up=StepPolicy(0, 100, 4),
    scale_down=StepPolicy(120, 50, None),
)
DOWN_WINDOW = BACKLOG_ONLY.scale_down.stabilization_window_seconds


# --- traffic spike ---------------------------------------------------------------------------


def test_a_traffic_spike_scales_up_at_once_within_the_step_limits() -> None:
    timeline = [
        fx.Poll(0, fx.queue_stats(0, backlog=530)),
        fx.Poll(5, fx.queue_stats(5, backlog=2000)),
        fx.Poll(10, fx.queue_stats(10, backlog=2600)),
    ]
    decisions = fx.run(BACKLOG_ONLY, timeline, current=2)
    # 2 -> 6: a step may add max(100 % of 2, 4 pods); 6 -> 12: 100 %; then maxReplicas.
    assert fx.desired(decisions) == [6, 12, 20]
    assert decisions[0].reason == "ScaledUp 2→6: backlog 530 over 6\N{MULTIPLICATION SIGN}100"
    assert decisions[0].chosen == "backlog"
    assert decisions[1].clamped_by == "scaleUpStep"
    assert decisions[1].raw_desired == 20
    assert decisions[2].clamped_by == "maxReplicas"
    assert all(d.changed for d in decisions)


@pytest.mark.parametrize(
    ("fields", "signals", "reason"),
    [
        pytest.param(
            {"targetUtilization": 0},
            {"backlog": 5.3, "capacity": None, "latency": None},
            "ScaledUp 2→6: backlog 530 over 6\N{MULTIPLICATION SIGN}100",
            id="backlog_only",
        ),
        pytest.param(
            {},
            {"backlog": 5.3, "capacity": 530 / 6.4, "latency": None},
            "ScaledUp 2→6: 530 queued + 0 in flight over 83\N{MULTIPLICATION SIGN}8"
            "\N{MULTIPLICATION SIGN}0.8 (wanted 83, limited by scaleUpStep)",
            id="defaults_capacity_dominates",
        ),
        pytest.param(
            {"targetBacklogPerReplica": 0},
            {"backlog": None, "capacity": 530 / 6.4, "latency": None},
            "ScaledUp 2→6: 530 queued + 0 in flight over 83\N{MULTIPLICATION SIGN}8"
            "\N{MULTIPLICATION SIGN}0.8 (wanted 83, limited by scaleUpStep)",
            id="capacity_only",
        ),
    ],
)
def test_a_workerpool_target_of_zero_turns_its_signal_off(
    fields: dict[str, object], signals: dict[str, float | None], reason: str
) -> None:
    # Given a WorkerPool with some signals off, at 2 replicas, and 530 jobs waiting
    policy = fx.pool_policy(**fields)
    # When the scaler decides
    decision = fx.run(policy, [fx.Poll(0, fx.queue_stats(0, backlog=530))], current=2)[0]
    # Then only the signals that are on count, and the largest one wins
    assert decision.signals == pytest.approx(signals)
    assert decision.reason == reason
    assert decision.desired == 6


def test_a_workerpool_with_only_the_latency_signal_scales_on_the_oldest_job_age() -> None:
    policy = fx.pool_policy(
        targetBacklogPerReplica=0, targetUtilization=0, targetOldestJobAgeSeconds=10
    )
    serving = [fx.heartbeat(f"p{n}", in_flight=8) for n in range(2)]
    poll = fx.Poll(0, fx.queue_stats(0, backlog=530, oldest_job_age_seconds=30, workers=serving))
    decision = fx.run(policy, [poll], current=2)[0]
    assert decision.signals["backlog"] is None
    assert decision.signals["capacity"] is None
    assert decision.signals["latency"] == pytest.approx(2 * 30 / 10)
    assert (decision.chosen, decision.desired) == ("latency", 6)


def test_a_spike_from_zero_wakes_the_pool_in_the_first_poll() -> None:
    decision = fx.run(BACKLOG_ONLY, [fx.Poll(0, fx.queue_stats(0, backlog=900))], current=0)[0]
    assert decision.desired == 4  # 0 % of 0 is nothing, so the 4-pod step applies
    assert decision.state.last_scale_time == 0


# --- steady load -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backlogs", "replicas"),
    [
        pytest.param([350] * 12, 4, id="constant_backlog"),
        pytest.param([310, 390, 330, 370, 301, 399] * 2, 4, id="noisy_backlog_within_one_replica"),
        pytest.param([40, 60, 99, 1, 50] * 2, 1, id="small_backlog_keeps_one_replica"),
    ],
)
def test_steady_load_keeps_the_replica_count_unchanged(backlogs: list[int], replicas: int) -> None:
    timeline = [
        fx.Poll(i * fx.POLL, fx.queue_stats(i * fx.POLL, backlog=b)) for i, b in enumerate(backlogs)
    ]
    decisions = fx.run(BACKLOG_ONLY, timeline, current=replicas)
    assert fx.desired(decisions) == [replicas] * len(backlogs)
    assert not any(d.changed for d in decisions)
    assert all(d.reason.startswith(f"Steady at {replicas}") for d in decisions)


# --- drain to zero ---------------------------------------------------------------------------


def _busy_then_idle(busy_until: float, in_flight_until: float, end: float) -> list[fx.Poll]:
    timeline = []
    t = 0.0
    while t <= end:
        backlog = 400 if t <= busy_until else 0
        in_flight = 3 if t <= in_flight_until else 0
        workers = [fx.heartbeat("p0", in_flight=in_flight, last_seen=t)]
        timeline.append(
            fx.Poll(t, fx.queue_stats(t, backlog=backlog, in_flight=in_flight, workers=workers))
        )
        t += fx.POLL
    return timeline


@pytest.mark.parametrize(
    ("busy_until", "in_flight_until"),
    [
        pytest.param(30.0, 30.0, id="backlog_and_work_end_together"),
        pytest.param(30.0, 100.0, id="jobs_still_running_after_the_backlog_is_gone"),
    ],
)
def test_a_drained_queue_scales_to_zero_only_after_the_window_with_nothing_in_flight(
    busy_until: float, in_flight_until: float
) -> None:
    timeline = _busy_then_idle(busy_until, in_flight_until, end=400.0)
    decisions = fx.run(BACKLOG_ONLY, timeline, current=4)
    idle_from = max(busy_until, in_flight_until) + fx.POLL
    first_down = next(p.at for p, d in zip(timeline, decisions, strict=True) if d.desired < 4)
    reached_zero = next(p.at for p, d in zip(timeline, decisions, strict=True) if d.desired == 0)
    assert first_down >= busy_until + DOWN_WINDOW
    assert reached_zero >= idle_from + DOWN_WINDOW
    assert decisions[-1].desired == 0
    for before, after in itertools.pairwise(decisions):
        assert after.desired >= before.desired // 2  # never more than the 50 % step (or 1 pod)


def test_retries_waiting_in_the_delayed_set_and_dead_letters_are_not_work() -> None:
    timeline = fx.polls(0, 40, backlog=0, in_flight=0, future_delayed=500, dead_letter=1000)
    assert fx.desired(fx.run(BACKLOG_ONLY, timeline, current=0)) == [0] * 40
    decisions = fx.run(BACKLOG_ONLY, timeline, current=2)
    assert decisions[-1].desired == 0
    assert all(d.signals["backlog"] == 0 for d in decisions)


def test_a_fresh_scaler_never_scales_down_before_watching_one_full_window() -> None:
    decisions = fx.run(BACKLOG_ONLY, fx.polls(0, 30, backlog=0), current=10)
    early = [
        d.desired for d, at in zip(decisions, range(0, 150, 5), strict=True) if at < DOWN_WINDOW
    ]
    assert early == [10] * len(early)
    assert decisions[-1].desired < 10
    assert decisions[0].clamped_by == "scaleDownStabilization"


def _history(kind: str, policy: ScalingPolicy) -> autoscaling.ScalerState:
    """A scaler without history: a restarted operator's (none), or one whose last
    recommendation is an hour old (back in builtin mode after an hour elsewhere)."""
    if kind == "none":
        return autoscaling.ScalerState()
    return fx.run(policy, fx.polls(0, 3, backlog=200), current=2)[-1].state


WITHOUT_HISTORY = [
    pytest.param("none", id="a_restarted_operator"),
    pytest.param("stale", id="back_in_builtin_mode_after_an_hour_elsewhere"),
]


@pytest.mark.parametrize("history", WITHOUT_HISTORY)
def test_a_restarted_scaler_ignores_a_short_peak_within_its_scale_up_window(history: str) -> None:
    # Given a pool at 2 replicas with a 60 s scale-up window, whose scaler has no history
    policy = replace(BACKLOG_ONLY, scale_up=StepPolicy(60, 100, 4))
    start = 3600.0
    # When its first polls see a 10 s peak of 600 jobs, then the usual 200 (fake clock)
    timeline = [
        *fx.polls(start, 2, backlog=600),
        *fx.polls(start + 2 * fx.POLL, int(2 * DOWN_WINDOW / fx.POLL), backlog=200),
    ]
    decisions = fx.run(policy, timeline, current=2, state=_history(history, policy))
    # Then the window ignores the peak as the HPA's does (its initial recommendation is the
    # current count): no scale-up to 6, and so no scale-down back to 2 a window later
    assert set(fx.desired(decisions)) == {2}
    assert decisions[0].clamped_by == "scaleUpStabilization"


@pytest.mark.parametrize("history", WITHOUT_HISTORY)
def test_a_restarted_scaler_scales_up_once_the_need_outlasts_its_scale_up_window(
    history: str,
) -> None:
    # Given a pool at 2 replicas with a 60 s scale-up window, whose scaler has no history
    policy = replace(BACKLOG_ONLY, scale_up=StepPolicy(60, 100, 4))
    start = 3600.0
    # When its queue needs 6 workers from the first poll on (fake clock, 5 s polls)
    timeline = fx.polls(start, 20, backlog=600)
    decisions = fx.run(policy, timeline, current=2, state=_history(history, policy))
    # Then it scales up once the window has seen nothing lower, and never down
    first_up = next(p.at for p, d in zip(timeline, decisions, strict=True) if d.desired > 2)
    assert start + 60 <= first_up <= start + 60 + fx.POLL
    assert fx.direction_changes([2, *fx.desired(decisions)]) == 0
    assert decisions[-1].desired == 6


@pytest.mark.parametrize("history", WITHOUT_HISTORY)
def test_a_restarted_scaler_without_a_scale_up_window_scales_up_at_its_first_poll(
    history: str,
) -> None:
    # Given a pool at 2 replicas with the default 0 s scale-up window and no history
    # When its first poll sees a backlog that needs 6 workers
    decisions = fx.run(
        BACKLOG_ONLY,
        fx.polls(3600.0, 1, backlog=600),
        current=2,
        state=_history(history, BACKLOG_ONLY),
    )
    # Then it scales up at once (within the step limit), and never down before a whole window
    assert fx.desired(decisions) == [6]
    idle = fx.run(
        BACKLOG_ONLY,
        fx.polls(3600.0, 3, backlog=0),
        current=6,
        state=_history(history, BACKLOG_ONLY),
    )
    assert fx.desired(idle) == [6, 6, 6]


def test_a_scaler_with_history_still_holds_a_scale_up_for_its_window() -> None:
    # Given a pool at 2 replicas with a 60 s scale-up window whose scaler recommended 2 just now
    policy = replace(BACKLOG_ONLY, scale_up=StepPolicy(60, 100, 4))
    before = fx.run(policy, fx.polls(0, 2, backlog=200), current=2)
    # When the backlog jumps to 600
    decisions = fx.run(policy, fx.polls(10, 2, backlog=600), current=2, state=before[-1].state)
    # Then the window holds it at the lowest recent recommendation
    assert fx.desired(decisions) == [2, 2]
    assert decisions[0].clamped_by == "scaleUpStabilization"


@pytest.mark.parametrize("other_mode", ["keda", "disabled"])
def test_back_in_builtin_mode_the_scaler_watches_a_full_window_before_scaling_down(
    other_mode: str,
) -> None:
    # Given a builtin pool that watched an idle queue at 2 replicas, then an hour in another
    # mode whose owner (KEDA, or the fixed count) left it at 10
    before = fx.run(BACKLOG_ONLY, fx.polls(0, 40, backlog=0), current=2)
    elsewhere = replace(BACKLOG_ONLY, mode=other_mode, replicas=10)
    away = fx.run(elsewhere, fx.polls(200, 720, backlog=0), current=10, state=before[-1].state)
    back = away[-1].state
    # When the pool is builtin again and the queue is idle
    start = 200.0 + 3600.0
    timeline = fx.polls(start, 40, backlog=0)
    decisions = fx.run(BACKLOG_ONLY, timeline, current=10, state=back)
    # Then nothing comes down before a whole scale-down window was watched, as for a new scaler
    early = [
        d.desired for d, p in zip(decisions, timeline, strict=True) if p.at < start + DOWN_WINDOW
    ]
    assert early == [10] * len(early)
    assert decisions[0].clamped_by == "scaleDownStabilization"
    assert decisions[-1].desired < 10


def test_a_window_shorter_than_the_polling_interval_still_scales_down_at_each_poll() -> None:
    # Given a window of 1 s and polls 5 s apart: every recommendation is out of the window by
    # the next poll, which is no gap
    policy = replace(BACKLOG_ONLY, scale_down=StepPolicy(1, 50, None))
    # When the queue is idle
    decisions = fx.run(policy, fx.polls(0, 6, backlog=0), current=8)
    # Then only the first poll (a new scaler) holds; every later one steps down
    assert fx.desired(decisions) == [8, 4, 2, 1, 0, 0]


def test_a_clock_that_steps_back_restarts_the_window_instead_of_freezing_or_skipping_it() -> None:
    # Busy at t=1000, then the clock steps back to t=0 and the queue is idle from then on.
    busy = fx.run(BACKLOG_ONLY, [fx.Poll(1000, fx.queue_stats(1000, backlog=400))], current=4)
    idle = fx.polls(0, 40, backlog=0)  # t = 0 .. 195
    decisions = fx.run(BACKLOG_ONLY, idle, current=4, state=busy[-1].state)
    by_time = {p.at: d.desired for p, d in zip(idle, decisions, strict=True)}
    assert all(v == 4 for t, v in by_time.items() if t < DOWN_WINDOW)
    assert decisions[-1].desired == 0


# --- activation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("activation", "backlog", "expected", "clamp"),
    [
        pytest.param(5, 4, 0, "activation", id="below_activation_stays_at_zero"),
        pytest.param(5, 5, 1, None, id="at_activation_wakes_one_replica"),
        pytest.param(1, 1, 1, None, id="default_one_wakes_on_the_first_job"),
        pytest.param(0, 0, 0, None, id="activation_zero_with_no_backlog_stays_at_zero"),
    ],
)
def test_the_pool_wakes_from_zero_only_when_the_backlog_reaches_the_activation_threshold(
    activation: int, backlog: int, expected: int, clamp: str | None
) -> None:
    policy = replace(BACKLOG_ONLY, activation_backlog=activation)
    decision = fx.run(policy, [fx.Poll(0, fx.queue_stats(0, backlog=backlog))], current=0)[0]
    assert decision.desired == expected
    assert decision.clamped_by == clamp


def test_the_activation_threshold_does_not_apply_once_the_pool_is_awake() -> None:
    policy = replace(BACKLOG_ONLY, activation_backlog=5)
    decisions = fx.run(policy, fx.polls(0, 5, backlog=2), current=1)
    assert fx.desired(decisions) == [1] * 5


# --- flapping --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "high", "low", "start"),
    [
        pytest.param(BACKLOG_ONLY, 800, 100, 4, id="scale_up_then_hold_through_the_dips"),
        pytest.param(BACKLOG_ONLY, 600, 50, 6, id="dips_never_scale_down_inside_the_window"),
        pytest.param(
            replace(BACKLOG_ONLY, scale_up=StepPolicy(30, 100, 4)),
            800,
            100,
            4,
            id="a_scale_up_window_ignores_short_peaks",
        ),
    ],
)
def test_flapping_input_does_not_oscillate_inside_the_windows(
    policy: ScalingPolicy, high: int, low: int, start: int
) -> None:
    # A fresh scaler (a restarted operator's) whose first poll sees a peak
    timeline = [
        fx.Poll(i * fx.POLL, fx.queue_stats(i * fx.POLL, backlog=high if i % 2 == 0 else low))
        for i in range(int(DOWN_WINDOW / fx.POLL))
    ]
    values = fx.desired(fx.run(policy, timeline, current=start))
    assert fx.direction_changes([start, *values]) == 0
    assert all(v >= start for v in values)  # no scale-down inside the window
    assert sum(1 for a, b in zip([start, *values], values, strict=False) if a != b) <= 1


# --- step limits -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scale_up", "scale_down", "current", "backlog", "expected", "clamp"),
    [
        pytest.param(
            StepPolicy(0, 50, None), None, 10, 4000, 15, "scaleUpStep", id="up_by_percent"
        ),
        pytest.param(StepPolicy(0, None, 3), None, 10, 4000, 13, "scaleUpStep", id="up_by_pods"),
        pytest.param(
            StepPolicy(0, 100, 4), None, 2, 4000, 6, "scaleUpStep", id="up_larger_of_both_pods"
        ),
        pytest.param(
            StepPolicy(0, 100, 4), None, 10, 4000, 20, "scaleUpStep", id="up_larger_of_both_percent"
        ),
        pytest.param(
            StepPolicy(0, 10, None), None, 0, 4000, 1, "scaleUpStep", id="up_at_least_one_pod"
        ),
        pytest.param(
            None, StepPolicy(0, 50, None), 10, 0, 5, "scaleDownStep", id="down_by_percent"
        ),
        pytest.param(None, StepPolicy(0, None, 2), 10, 0, 8, "scaleDownStep", id="down_by_pods"),
        pytest.param(
            None, StepPolicy(0, 50, 3), 4, 0, 1, "scaleDownStep", id="down_larger_of_both"
        ),
        pytest.param(None, StepPolicy(0, 50, None), 1, 0, 0, None, id="down_from_one_to_zero"),
        pytest.param(None, StepPolicy(0, None, None), 10, 0, 0, None, id="down_unlimited"),
    ],
)
def test_one_decision_moves_at_most_one_step(
    scale_up: StepPolicy | None,
    scale_down: StepPolicy | None,
    current: int,
    backlog: int,
    expected: int,
    clamp: str | None,
) -> None:
    policy = replace(
        BACKLOG_ONLY,
        max_replicas=50,
        scale_up=scale_up or BACKLOG_ONLY.scale_up,
        scale_down=scale_down or BACKLOG_ONLY.scale_down,
    )
    decision = fx.run(policy, [fx.Poll(0, fx.queue_stats(0, backlog=backlog))], current=current)[0]
    assert decision.desired == expected
    assert decision.clamped_by == clamp
    assert decision.raw_desired == math.ceil(backlog / 100)


# --- metric outage ---------------------------------------------------------------------------


def test_a_metric_outage_holds_the_current_replicas_and_says_why() -> None:
    timeline = [*fx.polls(0, 3, backlog=500), *fx.outage(15, 4)]
    decisions = fx.run(BACKLOG_ONLY, timeline, current=2)
    assert decisions[0].desired == 5
    for held in decisions[3:]:
        assert held.desired == 5
        assert held.clamped_by == "metricFailureHold"
        assert not held.queue_reachable
        assert "ConnectionError: refused" in held.reason
        assert "holding 5 replicas" in held.reason
        assert held.signals == {"backlog": None, "capacity": None, "latency": None}


def test_after_an_outage_the_scaler_does_not_scale_down_before_the_window() -> None:
    timeline = [*fx.polls(0, 3, backlog=500), *fx.outage(15, 20), *fx.polls(115, 3, backlog=0)]
    decisions = fx.run(BACKLOG_ONLY, timeline, current=5)
    assert fx.desired(decisions[-3:]) == [5, 5, 5]
    assert decisions[-1].clamped_by == "scaleDownStabilization"


@pytest.mark.parametrize(
    ("fallback", "max_replicas", "expected", "clamp"),
    [
        pytest.param(2, 20, 2, "fallback", id="goes_to_fallback_replicas"),
        pytest.param(30, 20, 20, "maxReplicas", id="fallback_is_still_capped_by_max"),
    ],
)
def test_a_metric_outage_with_fallback_goes_to_the_fallback_replicas(
    fallback: int, max_replicas: int, expected: int, clamp: str
) -> None:
    # Acting on the first failure, without windows or step limits, to isolate the target.
    policy = replace(
        BACKLOG_ONLY,
        on_metric_failure="fallback",
        fallback_replicas=fallback,
        max_replicas=max_replicas,
        failure_threshold=1,
        scale_up=StepPolicy(0, None, None),
        scale_down=StepPolicy(0, None, None),
    )
    decision = fx.run(policy, fx.outage(0, 1, "TimeoutError"), current=7)[0]
    assert decision.desired == expected
    assert decision.clamped_by == clamp
    assert "fallback" in decision.clamps
    assert decision.changed
    assert "TimeoutError" in decision.reason


# --- in-flight-only work ---------------------------------------------------------------------


def _in_flight_only(busy: int, draining: int = 0, with_heartbeats: bool = True) -> list[fx.Poll]:
    timeline = []
    for i in range(60):  # 300 s, far beyond the scale-down window
        t = i * fx.POLL
        workers = [
            fx.heartbeat(
                f"p{n}", in_flight=1, last_seen=t, oldest_job_started_at=0.0, draining=n < draining
            )
            for n in range(busy)
        ]
        stats = fx.queue_stats(
            t, backlog=0, in_flight=busy, workers=workers if with_heartbeats else ()
        )
        timeline.append(fx.Poll(t, stats))
    return timeline


@pytest.mark.parametrize(
    ("policy", "busy", "draining", "heartbeats", "floor"),
    [
        pytest.param(BACKLOG_ONLY, 6, 0, True, 6, id="every_busy_worker_is_kept"),
        pytest.param(
            ScalingPolicy(max_replicas=20), 6, 0, True, 6, id="with_the_capacity_signal_too"
        ),
        pytest.param(BACKLOG_ONLY, 6, 3, True, 3, id="draining_workers_are_already_leaving"),
        pytest.param(
            replace(BACKLOG_ONLY, concurrency=2), 6, 0, False, 3, id="without_heartbeats_by_slots"
        ),
    ],
)
def test_in_flight_work_prevents_scale_down_below_what_it_needs(
    policy: ScalingPolicy, busy: int, draining: int, heartbeats: bool, floor: int
) -> None:
    decisions = fx.run(policy, _in_flight_only(busy, draining, heartbeats), current=8)
    assert min(fx.desired(decisions)) == floor
    assert decisions[-1].desired == floor
    assert decisions[-1].clamped_by == "inFlightWork"


def test_stale_heartbeats_do_not_keep_workers_once_the_queue_says_nothing_is_in_flight() -> None:
    # Heartbeats lag by up to lease/3: six workers still claim a job each, the queue has none.
    stale = [fx.heartbeat(f"p{n}", in_flight=1) for n in range(6)]
    timeline = [fx.Poll(0, fx.queue_stats(0, backlog=0, in_flight=0, workers=stale))]
    policy = replace(BACKLOG_ONLY, scale_down=StepPolicy(0, None, None))
    decision = fx.run(policy, timeline, current=6)[0]
    assert decision.desired == 0
    assert "inFlightWork" not in decision.clamps


def test_in_flight_work_does_not_by_itself_raise_the_replica_count() -> None:
    decision = fx.run(BACKLOG_ONLY, _in_flight_only(busy=6)[:1], current=2)[0]
    assert decision.desired == 2


# --- latency ---------------------------------------------------------------------------------


LATENCY = replace(
    BACKLOG_ONLY,
    polling_interval_seconds=2,
    max_replicas=50,
    concurrency=2,
    target_oldest_job_age_seconds=10,
    scale_up=StepPolicy(0, None, 50),
)


def _latency_timeline() -> list[fx.Poll]:
    # Two workers, 2 slots each, every slot busy: 1 job per busy slot-second -> 2 jobs/s per
    # replica; 20 jobs/s arrive; 150 wait. Little's law wants (20 + 150/10) / 2 = 17.5 replicas.
    def workers(t: float, processed: int, busy: float) -> list[fx.WorkerHeartbeat]:
        return [
            fx.heartbeat(f"p{n}", in_flight=2, processed=processed, busy_seconds=busy, last_seen=t)
            for n in range(2)
        ]

    return [
        fx.Poll(0, fx.queue_stats(0, backlog=150, in_flight=4, workers=workers(0, 0, 0.0))),
        fx.Poll(
            10,
            fx.queue_stats(
                10,
                backlog=150,
                in_flight=4,
                enqueued_total=200,
                completed_total=40,
                workers=workers(10, 20, 20.0),
            ),
        ),
    ]


def test_the_latency_target_scales_before_the_backlog_target_would() -> None:
    with_latency = fx.run(LATENCY, _latency_timeline(), current=2)[-1]
    backlog_only = fx.run(
        replace(LATENCY, target_oldest_job_age_seconds=None), _latency_timeline(), current=2
    )[-1]
    assert backlog_only.desired == 2
    assert with_latency.desired == 18
    assert with_latency.chosen == "latency"
    assert with_latency.rates.arrival == pytest.approx(20.0)
    assert with_latency.rates.service_per_replica == pytest.approx(2.0)
    assert with_latency.signals["latency"] == pytest.approx(17.5)
    assert "within 10s" in with_latency.reason


@pytest.mark.parametrize(
    ("age", "current", "expected_signal"),
    [
        pytest.param(30.0, 3, 9.0, id="three_times_too_old_triples_the_replicas"),
        pytest.param(25.0, 0, 2.5, id="from_zero_counts_as_one_replica"),
        pytest.param(5.0, 3, None, id="younger_than_the_target_without_rates_is_not_measurable"),
    ],
)
def test_an_oldest_job_older_than_the_target_scales_up_even_before_rates_are_known(
    age: float, current: int, expected_signal: float | None
) -> None:
    policy = replace(LATENCY, target_oldest_job_age_seconds=10)
    serving = [fx.heartbeat(f"p{n}", in_flight=2) for n in range(current)]
    stats = fx.queue_stats(0, backlog=50, oldest_job_age_seconds=age, workers=serving)
    decision = fx.run(policy, [fx.Poll(0, stats)], current=current)[0]
    assert decision.signals["latency"] == (
        None if expected_signal is None else pytest.approx(expected_signal)
    )
    if expected_signal is not None:
        assert decision.desired == math.ceil(expected_signal)
        assert decision.chosen == "latency"


def test_without_heartbeat_deltas_the_service_rate_comes_from_littles_law_on_jobs_in_service() -> (
    None
):
    # 40 jobs finished in 10 s with 4 in flight on average: 1 s per job, 2 slots per replica.
    timeline = [
        fx.Poll(0, fx.queue_stats(0, backlog=100, in_flight=4)),
        fx.Poll(
            10, fx.queue_stats(10, backlog=100, in_flight=4, enqueued_total=50, completed_total=40)
        ),
    ]
    decision = fx.run(LATENCY, timeline, current=1)[-1]
    assert decision.rates.service_per_replica == pytest.approx(2.0)
    assert decision.signals["latency"] == pytest.approx((5.0 + 100 / 10) / 2.0)


def test_without_completions_the_service_rate_is_unknown_and_little_s_law_is_off() -> None:
    timeline = [
        fx.Poll(0, fx.queue_stats(0, backlog=100)),
        fx.Poll(10, fx.queue_stats(10, backlog=100, enqueued_total=50)),
    ]
    decision = fx.run(LATENCY, timeline, current=1)[-1]
    assert decision.rates.service_per_replica is None
    assert decision.signals["latency"] is None


def test_rates_over_less_than_two_polling_intervals_are_not_trusted() -> None:
    timeline = [
        fx.Poll(0, fx.queue_stats(0, backlog=100, in_flight=4)),
        fx.Poll(
            3, fx.queue_stats(3, backlog=90, in_flight=4, enqueued_total=30, completed_total=20)
        ),
    ]
    decision = fx.run(LATENCY, timeline, current=1)[-1]  # polls every 2 s: 3 s is too short
    assert decision.rates.arrival is None
    assert decision.rates.service_per_replica is None
    assert decision.signals["latency"] is None


def test_a_queue_that_never_had_a_job_has_zero_rates_from_its_first_read() -> None:
    # Given a new pool's first poll of a queue nothing was ever enqueued to
    first = fx.run(LATENCY, [fx.Poll(0, fx.queue_stats(0))], current=0)[-1]
    # Then its rates are known at once (0), and stay what the window later measures
    assert (first.rates.arrival, first.rates.completion) == (0.0, 0.0)
    later = fx.run(LATENCY, fx.polls(0, 6), current=0)[-1]
    assert (later.rates.arrival, later.rates.completion) == (0.0, 0.0)
    assert autoscaling.explain_decision(first) == autoscaling.explain_decision(later)


def test_a_first_read_with_jobs_but_no_counts_waits_for_the_window() -> None:
    # A broker that does not count enqueues (SQS) with a backlog: nothing says no job arrived
    decision = fx.run(LATENCY, [fx.Poll(0, fx.queue_stats(0, backlog=40))], current=1)[-1]
    assert decision.rates.arrival is None


def test_a_handful_of_completions_gives_no_little_s_law_service_rate() -> None:
    timeline = [
        fx.Poll(0, fx.queue_stats(0, backlog=100, in_flight=1)),
        fx.Poll(
            10, fx.queue_stats(10, backlog=100, in_flight=1, enqueued_total=50, completed_total=2)
        ),
    ]
    decision = fx.run(LATENCY, timeline, current=1)[-1]
    assert decision.rates.arrival == pytest.approx(5.0)
    assert decision.rates.service_per_replica is None


def test_counters_that_go_backwards_restart_the_rate_history_instead_of_going_negative() -> None:
    timeline = [
        fx.Poll(0, fx.queue_stats(0, enqueued_total=10_000, completed_total=9_000)),
        fx.Poll(5, fx.queue_stats(5, enqueued_total=10, completed_total=0)),
    ]
    decision = fx.run(LATENCY, timeline, current=1)[-1]
    assert decision.rates.arrival is None
    assert len(decision.state.samples) == 1


def test_arrival_rate_is_measured_over_the_carried_history() -> None:
    timeline = [
        fx.Poll(
            t,
            fx.queue_stats(t, backlog=10, enqueued_total=int(10 * t), completed_total=int(10 * t)),
        )
        for t in range(0, 100, 5)
    ]
    decision = fx.run(LATENCY, timeline, current=1)[-1]
    assert decision.rates.arrival == pytest.approx(10.0)
    assert decision.rates.completion == pytest.approx(10.0)
    oldest = decision.state.samples[0].at
    assert 95 - oldest <= LATENCY.rate_window_seconds


# --- min/max clamps --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("min_replicas", "max_replicas", "current", "backlog", "expected", "clamp"),
    [
        pytest.param(2, 20, 2, 0, 2, "minReplicas", id="never_below_min_even_when_idle"),
        pytest.param(3, 20, 0, 0, 3, "minReplicas", id="min_wins_over_activation"),
        pytest.param(0, 5, 5, 10_000, 5, "maxReplicas", id="never_above_max"),
        pytest.param(0, 5, 8, 10_000, 5, "maxReplicas", id="a_lowered_max_applies_at_once"),
        pytest.param(4, 20, 1, 0, 4, "minReplicas", id="a_raised_min_applies_at_once"),
    ],
)
def test_min_and_max_replicas_are_hard_limits(
    min_replicas: int, max_replicas: int, current: int, backlog: int, expected: int, clamp: str
) -> None:
    policy = replace(BACKLOG_ONLY, min_replicas=min_replicas, max_replicas=max_replicas)
    decisions = fx.run(policy, fx.polls(0, 40, backlog=backlog), current=current)
    assert fx.desired(decisions) == [expected] * 40
    assert decisions[0].clamped_by == clamp


# --- scaling limited -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "backlogs", "limited"),
    [
        pytest.param(5, [1000, 1200, 1400], True, id="pinned_at_max_and_growing"),
        pytest.param(5, [1400, 1200, 1000], False, id="pinned_at_max_but_shrinking"),
        pytest.param(5, [1400], False, id="no_history_no_growth_known"),
        pytest.param(2, [100, 120, 140], False, id="below_max"),
    ],
)
def test_scaling_limited_flags_a_pool_pinned_at_max_with_a_growing_backlog(
    current: int, backlogs: list[int], limited: bool
) -> None:
    policy = replace(BACKLOG_ONLY, max_replicas=5)
    timeline = [
        fx.Poll(i * fx.POLL, fx.queue_stats(i * fx.POLL, backlog=b)) for i, b in enumerate(backlogs)
    ]
    decision = fx.run(policy, timeline, current=current)[-1]
    assert decision.scaling_limited is limited


def test_scaling_limited_stays_set_while_a_noisy_backlog_still_wants_more_than_max() -> None:
    # Given a pool pinned at maxReplicas 5 whose backlog (10 to 14 replicas' worth) moves up
    # and down by a few hundred jobs from poll to poll
    policy = replace(BACKLOG_ONLY, max_replicas=5)
    backlogs = [1000, 1200, 1400, 1300, 1100, 1000, 1200, 1400, 1300, 1100, 1000]
    timeline = [
        fx.Poll(i * fx.POLL, fx.queue_stats(i * fx.POLL, backlog=b)) for i, b in enumerate(backlogs)
    ]
    # When the scaler decides at every poll
    decisions = fx.run(policy, timeline, current=5)
    # Then ScalingLimited is set once the backlog grew and stays set (no flapping, and so no
    # Warning Event at every turn of the noise) while the signals want more than the maximum
    limited = [d.scaling_limited for d in decisions]
    assert limited == [False, True, True, True, True, True, True, True, True, True, True]
    # and it clears once the signals fit within maxReplicas
    after = fx.run(policy, fx.polls(55, 1, backlog=400), current=5, state=decisions[-1].state)
    assert not after[0].scaling_limited


# --- modes, dry run, validation --------------------------------------------------------------


def test_a_dry_run_decides_the_same_but_records_no_scale_time() -> None:
    policy = replace(BACKLOG_ONLY, dry_run=True)
    decisions = fx.run(policy, fx.polls(0, 3, backlog=530), current=2)
    assert fx.desired(decisions) == [6, 6, 6]
    assert all(d.dry_run and d.current == 2 for d in decisions)
    assert decisions[-1].state.last_scale_time is None
    assert "dry run" in autoscaling.explain_decision(decisions[-1])


def test_in_keda_mode_the_builtin_scaler_leaves_replicas_alone() -> None:
    policy = replace(BACKLOG_ONLY, mode="keda")
    decision = fx.run(policy, fx.polls(0, 1, backlog=5000), current=3)[0]
    assert decision.desired == 3
    assert not decision.changed
    assert decision.reason.startswith("NotManaged")


def test_in_disabled_mode_the_fixed_replica_count_applies_whatever_the_queue() -> None:
    policy = replace(BACKLOG_ONLY, mode="disabled", replicas=2)
    decisions = fx.run(policy, [*fx.polls(0, 2, backlog=5000), *fx.outage(10, 1)], current=7)
    assert fx.desired(decisions) == [2, 2, 2]
    assert decisions[0].reason == "ScaledDown 7→2: autoscaling disabled, fixed replicas 2"


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        pytest.param({"min_replicas": 5, "max_replicas": 2}, "maxReplicas", id="min_above_max"),
        pytest.param(
            {"on_metric_failure": "fallback"}, "fallbackReplicas", id="fallback_without_count"
        ),
        pytest.param({"target_backlog_per_replica": None}, "at least one signal", id="no_signal"),
        pytest.param({"target_utilization": 1.5}, "targetUtilization", id="utilization_above_one"),
        pytest.param({"scale_up": StepPolicy(-1, 100, 4)}, "scaleUp", id="negative_window"),
    ],
)
def test_an_inconsistent_policy_is_rejected_with_the_field_named(
    changes: dict[str, object], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        replace(BACKLOG_ONLY, **changes)  # type: ignore[arg-type]


AGE_UNKNOWN = "the RabbitMQ broker does not report the oldest waiting job's age"


def _run_without_the_age(
    policy: ScalingPolicy, timeline: list[fx.Poll], current: int
) -> list[autoscaling.Decision]:
    """fx.run, on a broker that declares it cannot measure the oldest job's age."""
    decisions: list[autoscaling.Decision] = []
    state = autoscaling.ScalerState()
    for poll in timeline:
        observation = autoscaling.Observation(poll.stats, poll.error, age_unavailable=AGE_UNKNOWN)
        decision = autoscaling.decide(policy, observation, current, state, poll.at)
        decisions.append(decision)
        state, current = decision.state, decision.desired
    return decisions


def test_on_a_broker_without_the_age_the_latency_signal_scales_on_rates_and_says_so() -> None:
    decision = _run_without_the_age(LATENCY, _latency_timeline(), current=2)[-1]
    # Little's law needs no age: the same 17.5 replicas as on Redis
    assert decision.signals["latency"] == pytest.approx(17.5)
    assert decision.desired == 18
    assert set(decision.unavailable) == {"latency"}
    assert AGE_UNKNOWN in decision.unavailable["latency"]
    assert "latency unavailable" in autoscaling.explain_decision(decision)
    # a pool with the latency signal off has nothing unavailable to report
    off = replace(LATENCY, target_oldest_job_age_seconds=None)
    assert _run_without_the_age(off, _latency_timeline(), current=2)[-1].unavailable == {}


def test_on_a_broker_without_the_age_an_age_in_the_stats_never_scales_the_pool() -> None:
    # Given stats whose age field holds a number the broker declared it cannot measure
    policy = replace(LATENCY, target_oldest_job_age_seconds=10)
    serving = [fx.heartbeat(f"p{n}", in_flight=2) for n in range(3)]
    stats = fx.queue_stats(0, backlog=50, oldest_job_age_seconds=30.0, workers=serving)
    # When the scaler decides
    decision = _run_without_the_age(policy, [fx.Poll(0, stats)], current=3)[0]
    # Then the oldest-age reaction is off (on Redis the same stats ask for 9 replicas)
    assert decision.signals["latency"] is None
    assert fx.run(policy, [fx.Poll(0, stats)], current=3)[0].signals["latency"] == 9.0
