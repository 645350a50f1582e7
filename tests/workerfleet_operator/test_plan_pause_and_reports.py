"""plan() decides every condition and Event: pause/resume, a failed reconcile, replicas owned
elsewhere, a scale that was held; and the pause annotations parse as KEDA's do.

Pure functions on a fake clock (``Observed.now``), real ``autoscaling.decide`` where the
autoscaler matters.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest
from workerfleet_operator import api, autoscaling, manifests, plan

from tests.workerfleet_operator import crd_validation
from tests.workerfleet_operator.test_plan_reconcile import _stats
from worker_runtime.brokers.redis import eviction

T0 = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
OK = plan.SecretCheck("ok")


def _body(annotations: dict[str, str] | None = None, **spec_changes: Any) -> dict[str, Any]:
    body = crd_validation.load_sample("minimal")
    body["spec"].update(spec_changes)
    body["metadata"].update(namespace="team-a", uid="uid-1", generation=1)
    if annotations is not None:
        body["metadata"]["annotations"] = annotations
    return body


def _pool(annotations: dict[str, str] | None = None, **spec_changes: Any) -> api.Pool:
    parsed = api.parse_pool(_body(annotations, **spec_changes))
    assert isinstance(parsed, api.Pool), getattr(parsed, "message", "")
    return parsed


def _deployment(replicas: int) -> plan.DeploymentState:
    return plan.DeploymentState(
        generation=1,
        observed_generation=1,
        spec_replicas=replicas,
        replicas=replicas,
        ready_replicas=replicas,
        updated_replicas=replicas,
        available_replicas=replicas,
    )


def _condition(result: plan.Plan | plan.FailureReport, type_: str) -> api.Condition:
    found = api.find_condition(result.status.conditions, type_)
    assert found is not None, type_
    return found


def _reasons(result: plan.Plan | plan.FailureReport) -> list[str]:
    return [e.reason for e in result.events]


PAUSED = {api.PAUSED_ANNOTATION: "true"}
PAUSED_AT_1 = {api.PAUSED_REPLICAS_ANNOTATION: "1"}


# --- the annotations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        (None, None),
        ({}, None),
        ({api.PAUSED_ANNOTATION: "false"}, None),
        ({api.PAUSED_ANNOTATION: "true"}, api.Pause()),
        ({api.PAUSED_ANNOTATION: "True"}, api.Pause()),
        ({api.PAUSED_REPLICAS_ANNOTATION: "3"}, api.Pause(replicas=3)),
        ({api.PAUSED_REPLICAS_ANNOTATION: "0"}, api.Pause(replicas=0)),
        # as in KEDA: paused-replicas pauses on its own, and wins over paused
        ({api.PAUSED_ANNOTATION: "true", api.PAUSED_REPLICAS_ANNOTATION: "2"}, api.Pause(2)),
    ],
)
def test_either_pause_annotation_pauses_the_pool_as_keda_s_do(
    annotations: dict[str, str] | None, expected: api.Pause | None
) -> None:
    assert api.parse_pause(annotations) == expected


@pytest.mark.parametrize("value", ["-1", "two", "1.5", ""])
def test_a_paused_replicas_that_is_no_count_makes_the_pool_invalid_naming_the_annotation(
    value: str,
) -> None:
    parsed = api.parse_pool(_body({api.PAUSED_REPLICAS_ANNOTATION: value}))
    assert isinstance(parsed, api.InvalidPool)
    assert api.PAUSED_REPLICAS_ANNOTATION in parsed.message


# --- the Paused condition, its Events and the replicas ----------------------------------------


def test_an_unpaused_pool_says_so_and_announces_nothing() -> None:
    result = plan.plan(_pool(), plan.Observed(now=T0, secret=OK, deployment=_deployment(2)))
    paused = _condition(result, api.PAUSED)
    assert (paused.status, paused.reason) == ("False", api.Reason.NOT_PAUSED)
    assert "Paused" not in _reasons(result) and "Resumed" not in _reasons(result)


def test_pausing_sets_the_condition_and_posts_one_event_then_resuming_posts_one() -> None:
    # Given a running pool that is not paused
    before = plan.plan(_pool(), plan.Observed(now=T0, secret=OK, deployment=_deployment(2)))
    # When it is annotated paused
    paused = plan.plan(
        _pool(PAUSED),
        plan.Observed(now=T0, secret=OK, deployment=_deployment(2), previous=before.status),
    )
    # Then Paused=True PausedByAnnotation, with one Normal Event
    condition = _condition(paused, api.PAUSED)
    assert (condition.status, condition.reason) == ("True", api.Reason.PAUSED_BY_ANNOTATION)
    assert [e for e in paused.events if e.reason == "Paused"] == [
        plan.Event("Normal", "Paused", condition.message)
    ]
    # And the next reconcile of the paused pool posts nothing more
    again = plan.plan(
        _pool(PAUSED),
        plan.Observed(now=T0, secret=OK, deployment=_deployment(2), previous=paused.status),
    )
    assert again.events == ()
    # When the annotation is removed, one Resumed Event and Paused=False
    resumed = plan.plan(
        _pool(),
        plan.Observed(now=T0, secret=OK, deployment=_deployment(2), previous=again.status),
    )
    assert (_condition(resumed, api.PAUSED).status, _reasons(resumed)) == ("False", ["Resumed"])


def test_paused_replicas_names_the_count_in_the_condition() -> None:
    result = plan.plan(_pool(PAUSED_AT_1), plan.Observed(now=T0, secret=OK))
    condition = _condition(result, api.PAUSED)
    assert (condition.status, condition.reason) == ("True", api.Reason.PAUSED_AT_REPLICAS)
    assert "held at 1 replicas" in condition.message


def test_a_builtin_pool_created_paused_at_n_starts_at_n_not_at_min_replicas() -> None:
    pool = _pool(PAUSED_AT_1, autoscaling={"mode": "builtin", "minReplicas": 3, "maxReplicas": 5})
    result = plan.plan(pool, plan.Observed(now=T0, secret=OK))
    assert result.replicas == 1
    assert result.children[0]["spec"]["replicas"] == 1


def test_a_disabled_pool_paused_at_n_runs_n_and_unpaused_its_fixed_replicas() -> None:
    disabled = {"mode": "disabled", "replicas": 4}
    assert plan.plan(_pool(PAUSED_AT_1, autoscaling=disabled), plan.Observed(T0, OK)).replicas == 1
    assert plan.plan(_pool(PAUSED, autoscaling=disabled), plan.Observed(T0, OK)).replicas == 4
    assert plan.plan(_pool(autoscaling=disabled), plan.Observed(T0, OK)).replicas == 4


@pytest.mark.parametrize(
    ("annotations", "keda_annotations"),
    [
        (PAUSED, {manifests.KEDA_PAUSED_ANNOTATION: "true"}),
        (PAUSED_AT_1, {manifests.KEDA_PAUSED_REPLICAS_ANNOTATION: "1"}),
        (None, None),
    ],
)
def test_a_keda_pool_passes_its_pause_to_the_scaled_object_in_keda_s_words(
    annotations: dict[str, str] | None, keda_annotations: dict[str, str] | None
) -> None:
    body = crd_validation.load_sample("keda")
    body["metadata"].update(namespace="team-a", uid="uid-1", generation=1)
    if annotations is not None:
        body["metadata"]["annotations"] = annotations
    pool = api.parse_pool(body)
    assert isinstance(pool, api.Pool)
    scaled = manifests.build_scaled_object(pool)
    assert scaled["metadata"].get("annotations") == keda_annotations


def test_a_paused_builtin_pool_holds_its_replicas_whatever_the_backlog_and_resumes_scaling() -> (
    None
):
    # Given a builtin pool at 1 replica and a backlog that wants more
    pool = _pool(autoscaling={"mode": "builtin", "minReplicas": 1, "maxReplicas": 10})
    policy = autoscaling.build_scaling_policy(pool.spec)
    observation = autoscaling.Observation(stats=_stats(backlog=5000))
    state = autoscaling.ScalerState()
    wanted = autoscaling.decide(policy, observation, 1, state, 100.0)
    assert wanted.desired > 1
    # When paused: held at the current count, the signals still shown
    held = autoscaling.hold_paused(wanted, state, None, 100.0)
    assert (held.desired, held.changed, held.raw_desired) == (1, False, wanted.raw_desired)
    assert held.state.last_scale_time is None  # nothing was scaled
    assert held.reason.startswith("Paused at 1")
    # When paused at 3: set to 3, a real scale
    at_three = autoscaling.hold_paused(wanted, state, 3, 100.0)
    assert (at_three.desired, at_three.changed, at_three.state.last_scale_time) == (3, True, 100.0)
    # When resumed: decide() scales on the backlog again from the held state
    resumed = autoscaling.decide(policy, observation, 1, held.state, 130.0)
    assert resumed.desired > 1


@pytest.mark.parametrize(
    ("annotations", "held_at", "annotation"),
    [
        pytest.param(PAUSED, 2, api.PAUSED_ANNOTATION, id="paused_where_it_is"),
        pytest.param(PAUSED_AT_1, 1, api.PAUSED_REPLICAS_ANNOTATION, id="paused_at_one"),
    ],
)
def test_a_paused_pool_is_scaling_limited_by_its_pause_not_within_limits(
    annotations: dict[str, str], held_at: int, annotation: str
) -> None:
    # Given a builtin pool at 2 replicas whose backlog wants far more, then paused
    pool = _pool(annotations, autoscaling={"mode": "builtin", "minReplicas": 1, "maxReplicas": 10})
    policy = autoscaling.build_scaling_policy(pool.spec)
    observation = autoscaling.Observation(stats=_stats(backlog=5000))
    state = autoscaling.ScalerState()
    wanted = autoscaling.decide(policy, observation, 2, state, 100.0)
    assert pool.pause is not None
    held = autoscaling.hold_paused(wanted, state, pool.pause.replicas, 100.0)
    unpaused = plan.plan(
        _pool(autoscaling={"mode": "builtin", "minReplicas": 1, "maxReplicas": 10}),
        plan.Observed(now=T0, secret=OK, deployment=_deployment(2), stats=_stats()),
    )
    # When its poll is planned
    observed = plan.Observed(
        now=T0,
        secret=OK,
        deployment=_deployment(2),
        stats=_stats(backlog=5000),
        decision=held,
        previous=unpaused.status,
    )
    result = plan.plan(pool, observed)
    # Then ScalingLimited says the pause suspends scaling, naming the annotation and the count
    limited = _condition(result, api.SCALING_LIMITED)
    assert (limited.status, limited.reason) == ("True", api.Reason.SCALING_PAUSED)
    assert "scaling is suspended" in limited.message
    assert annotation in limited.message and f"held at {held_at}" in limited.message
    # And the pause is announced once, by the Paused condition's Normal Event, not a Warning
    assert [(e.type, e.reason) for e in result.events if e.reason == "Paused"] == [
        ("Normal", "Paused")
    ]
    assert all(e.type == "Normal" for e in result.events)
    # And before any poll (no decision yet) it says so too, at the Deployment's count
    first = plan.plan(pool, plan.Observed(now=T0, secret=OK, deployment=_deployment(2)))
    assert _condition(first, api.SCALING_LIMITED).reason == api.Reason.SCALING_PAUSED
    # And on resume, the autoscaler's own reasons come back
    resumed = plan.plan(
        _pool(autoscaling={"mode": "builtin", "minReplicas": 1, "maxReplicas": 10}),
        dataclasses.replace(observed, decision=wanted, previous=result.status),
    )
    assert _condition(resumed, api.SCALING_LIMITED).reason != api.Reason.SCALING_PAUSED


@pytest.mark.parametrize(
    "queue",
    [
        pytest.param("unreadable", id="resumed_during_a_queue_outage"),
        pytest.param("not_polled_yet", id="a_reconcile_before_the_next_poll"),
    ],
)
def test_a_resumed_pool_no_longer_says_its_pause_limits_it_before_a_poll_measures(
    queue: str,
) -> None:
    # Given a builtin pool whose status says a pause limits its scaling
    spec = {"mode": "builtin", "minReplicas": 1, "maxReplicas": 10}
    paused = plan.plan(
        _pool(PAUSED, autoscaling=spec),
        plan.Observed(now=T0, secret=OK, deployment=_deployment(2), stats=_stats()),
    )
    assert _condition(paused, api.SCALING_LIMITED).reason == api.Reason.SCALING_PAUSED
    # When the pause annotation is removed and the next plan measures nothing (the queue
    # cannot be read, or no poll ran since)
    measured: dict[str, Any] = {}
    if queue == "unreadable":
        policy = autoscaling.build_scaling_policy(_pool(autoscaling=spec).spec)
        failed = autoscaling.Observation(stats=None, error="ConnectionError: refused")
        measured = {
            "stats_error": "ConnectionError: refused",
            "decision": autoscaling.decide(policy, failed, 2, autoscaling.ScalerState(), 100.0),
        }
    resumed = plan.plan(
        _pool(autoscaling=spec),
        plan.Observed(
            now=T0, secret=OK, deployment=_deployment(2), previous=paused.status, **measured
        ),
    )
    # Then ScalingLimited no longer names the pause the Paused condition says is over
    assert _condition(resumed, api.PAUSED).status == "False"
    limited = _condition(resumed, api.SCALING_LIMITED)
    assert (limited.status, limited.reason) == ("Unknown", api.Reason.NOT_YET_EVALUATED)
    assert "suspended" not in limited.message
    # And no Warning is posted for it (an unreadable queue has its own)
    warnings = [e.reason for e in resumed.events if e.type == "Warning"]
    assert set(warnings) <= {api.Reason.QUEUE_UNREACHABLE}


def test_a_pool_builtin_again_no_longer_says_the_autoscaler_is_off_before_a_poll() -> None:
    # Given a pool with autoscaling disabled (ScalingLimited=False NotManaged)
    off = plan.plan(
        _pool(autoscaling={"mode": "disabled", "replicas": 2}),
        plan.Observed(now=T0, secret=OK, deployment=_deployment(2)),
    )
    assert _condition(off, api.SCALING_LIMITED).reason == api.Reason.NOT_MANAGED
    # When it is builtin again and its next plan comes before any poll
    builtin = plan.plan(
        _pool(autoscaling={"mode": "builtin", "minReplicas": 1, "maxReplicas": 10}),
        plan.Observed(now=T0, secret=OK, deployment=_deployment(2), previous=off.status),
    )
    # Then ScalingLimited waits for a decision instead of saying "the builtin autoscaler is off"
    limited = _condition(builtin, api.SCALING_LIMITED)
    assert (limited.status, limited.reason) == ("Unknown", api.Reason.NOT_YET_EVALUATED)


def test_replicas_owned_elsewhere_is_kept_until_a_poll_measures_again() -> None:
    # Given a pool whose replicas another owner drives (found by a scale attempt)
    spec = {"mode": "builtin", "minReplicas": 1, "maxReplicas": 10}
    owned = plan.plan(
        _pool(autoscaling=spec),
        plan.Observed(
            now=T0, secret=OK, deployment=_deployment(2), replicas_owned_by=("HPA emails",)
        ),
    )
    assert _condition(owned, api.SCALING_LIMITED).reason == api.Reason.REPLICAS_OWNED_ELSEWHERE
    # When a restarted operator (which knows of no owner yet) plans before any poll
    later = plan.plan(
        _pool(autoscaling=spec),
        plan.Observed(now=T0, secret=OK, deployment=_deployment(2), previous=owned.status),
    )
    # Then the owner found last stands: only a scale attempt finds it again, and set back to
    # Unknown in between, its Warning would come again after every restart
    assert _condition(later, api.SCALING_LIMITED).reason == api.Reason.REPLICAS_OWNED_ELSEWHERE
    assert later.events == () or all(e.type == "Normal" for e in later.events)


@pytest.mark.parametrize(
    ("annotations", "autoscaling_spec", "words"),
    [
        pytest.param(
            {api.PAUSED_REPLICAS_ANNOTATION: "0"},
            {"mode": "builtin", "minReplicas": 1, "maxReplicas": 10},
            f"paused at 0 by {api.PAUSED_REPLICAS_ANNOTATION}",
            id="builtin_paused_at_zero",
        ),
        pytest.param(
            None,
            {"mode": "disabled", "replicas": 0},
            "autoscaling disabled, fixed replicas 0",
            id="disabled_at_zero",
        ),
    ],
)
def test_a_pool_at_zero_replicas_says_why_instead_of_calling_its_queue_idle(
    annotations: dict[str, str] | None, autoscaling_spec: dict[str, Any], words: str
) -> None:
    # Given a pool held at 0 replicas while its queue has a backlog
    pool = _pool(annotations, autoscaling=autoscaling_spec)
    observed = plan.Observed(
        now=T0, secret=OK, deployment=_deployment(0), stats=_stats(backlog=5000)
    )
    # When it is planned
    ready = _condition(plan.plan(pool, observed), api.READY)
    # Then Ready names the pause or the fixed count, not an idle queue
    assert (ready.status, ready.reason) == ("True", api.Reason.SCALED_TO_ZERO)
    assert words in ready.message and "idle" not in ready.message


# --- what the shell used to decide itself -----------------------------------------------------


def test_a_failed_reconcile_is_degraded_reconcile_failed_with_one_warning_on_the_transition() -> (
    None
):
    # Given a pool whose stored status is healthy
    healthy = plan.plan(_pool(), plan.Observed(now=T0, secret=OK, deployment=_deployment(2)))
    # When a reconcile raises with a URL carrying a password
    error = "ApiError: 500 from redis://user:s3cret@redis:6379/0"
    failed = plan.plan_failure(1, healthy.status, error, T0 + dt.timedelta(seconds=5))
    # Then Degraded=True ReconcileFailed, the text redacted, one Warning; the rest as stored
    degraded = _condition(failed, api.DEGRADED)
    assert (degraded.status, degraded.reason) == ("True", api.Reason.RECONCILE_FAILED)
    assert "s3cret" not in degraded.message and "redis://***@redis" in degraded.message
    assert [(e.type, e.reason) for e in failed.events] == [("Warning", "ReconcileFailed")]
    assert _condition(failed, api.READY) == _condition(healthy, api.READY)
    # And a second failure in a row posts nothing
    again = plan.plan_failure(1, failed.status, error, T0 + dt.timedelta(seconds=9))
    assert again.events == ()
    assert _condition(again, api.DEGRADED).last_transition_time == degraded.last_transition_time


def _plan_a_poll(
    previous: api.WorkerPoolStatus, seconds: float, reconcile_error: str | None = None
) -> plan.Plan:
    """The plan of an autoscaler poll ``seconds`` after T0 on a running pool of 2 replicas."""
    observed = plan.Observed(
        now=T0 + dt.timedelta(seconds=seconds),
        secret=OK,
        deployment=_deployment(2),
        stats=_stats(),
        previous=previous,
        reconcile_error=reconcile_error,
    )
    return plan.plan(_pool(), observed)


def test_a_poll_between_two_failed_reconciles_keeps_reconcile_failed_and_announces_nothing() -> (
    None
):
    # Given a pool whose last reconcile raised (as stored by plan_failure)
    healthy = _plan_a_poll(api.WorkerPoolStatus(), 0)
    error = "ApiError: 500 InternalError: etcdserver: request timed out"
    failed = plan.plan_failure(1, healthy.status, error, T0 + dt.timedelta(seconds=5))
    # When an autoscaler poll plans its status before the next reconcile
    polled = _plan_a_poll(failed.status, 10, reconcile_error=error)
    # Then Degraded stays as the failure wrote it (same message, same transition time), and
    # nothing is announced: no flip to AsExpected, no second Warning when it fails again
    assert _condition(polled, api.DEGRADED) == _condition(failed, api.DEGRADED)
    assert polled.events == ()
    again = plan.plan_failure(1, polled.status, error, T0 + dt.timedelta(seconds=15))
    assert again.events == ()
    # And once a reconcile gets through, Degraded clears
    through = _plan_a_poll(again.status, 20)
    assert _condition(through, api.DEGRADED).reason == api.Reason.AS_EXPECTED


def test_a_failed_reconcile_on_a_pool_never_reported_still_reports_degraded() -> None:
    failed = plan.plan_failure(3, None, "TimeoutError: ", T0)
    assert [(c.type, c.status, c.observed_generation) for c in failed.status.conditions or ()] == [
        (api.DEGRADED, "True", 3)
    ]


def test_creating_a_deployment_announces_nothing_its_rollout_does() -> None:
    result = plan.plan(_pool(), plan.Observed(now=T0, secret=OK))
    assert (_condition(result, api.READY).reason, result.events) == (api.Reason.CREATING, ())


def test_replicas_driven_by_a_live_autoscaler_are_scaling_limited_with_the_way_back() -> None:
    pool = _pool(autoscaling={"mode": "builtin", "minReplicas": 1, "maxReplicas": 10})
    policy = autoscaling.build_scaling_policy(pool.spec)
    decision = autoscaling.decide(
        policy, autoscaling.Observation(stats=_stats()), 2, autoscaling.ScalerState(), 100.0
    )
    observed = plan.Observed(
        now=T0,
        secret=OK,
        deployment=_deployment(2),
        stats=_stats(),
        decision=decision,
        replicas_owned_by=("HorizontalPodAutoscaler web",),
    )
    result = plan.plan(pool, observed)
    limited = _condition(result, api.SCALING_LIMITED)
    assert (limited.status, limited.reason) == ("True", api.Reason.REPLICAS_OWNED_ELSEWHERE)
    assert "Delete it to hand the replicas back" in limited.message
    assert api.PAUSED_REPLICAS_ANNOTATION in limited.message
    assert ("Warning", "ReplicasOwnedElsewhere") in [(e.type, e.reason) for e in result.events]
    assert "WithinLimits" not in _reasons(result)
    # And once it is gone, the next plan is WithinLimits again
    back = plan.plan(
        pool, dataclasses.replace(observed, replicas_owned_by=(), previous=result.status)
    )
    assert _condition(back, api.SCALING_LIMITED).reason == api.Reason.WITHIN_LIMITS


def test_a_scale_that_was_held_is_not_announced_as_done() -> None:
    pool = _pool(autoscaling={"mode": "builtin", "minReplicas": 1, "maxReplicas": 10})
    policy = autoscaling.build_scaling_policy(pool.spec)
    observation = autoscaling.Observation(stats=_stats(backlog=5000))
    decision = autoscaling.decide(policy, observation, 1, autoscaling.ScalerState(), 100.0)
    assert decision.desired != decision.current
    observed = plan.Observed(
        now=T0, secret=OK, deployment=_deployment(1), stats=_stats(backlog=5000), decision=decision
    )
    scaled = plan.plan(pool, observed)
    held = plan.plan(pool, dataclasses.replace(observed, scale_applied=False))
    verb = decision.reason.split(" ", 1)[0]
    assert verb in _reasons(scaled)
    assert verb not in _reasons(held)


def test_every_reason_the_plan_writes_is_a_member_of_the_one_enum() -> None:
    pools = [
        _pool(),
        _pool(PAUSED),
        _pool(PAUSED_AT_1),
        _pool(autoscaling={"mode": "disabled", "replicas": 2}),
    ]
    observations = [
        plan.Observed(now=T0, secret=OK),
        plan.Observed(now=T0, secret=OK, deployment=_deployment(2), stats=_stats()),
        plan.Observed(now=T0, secret=OK, stats_error="connection refused"),
        plan.Observed(now=T0, secret=plan.SecretCheck("missing", "gone")),
        plan.Observed(now=T0, secret=OK, apply_problem="Deployment refused"),
        plan.Observed(now=T0, secret=OK, stats=_stats(policy="allkeys-lru")),
    ]
    reasons = {
        c.reason
        for pool in pools
        for observed in observations
        for c in plan.plan(pool, observed).status.conditions or ()
    }
    assert reasons <= set(api.Reason)
    assert eviction.build_eviction_warning("allkeys-lru") is not None
