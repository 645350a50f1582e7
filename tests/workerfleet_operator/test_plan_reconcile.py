"""plan(): children by mode, conditions with stable transition times, Events only on change.

Every test drives the pure function with a fake clock (``Observed.now``) and, where the autoscaler
matters, a real ``autoscaling.decide`` on real ``worker_runtime.brokers.base.QueueStats``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import pytest
from workerfleet_operator import api, autoscaling, plan

from tests.workerfleet_operator import crd_validation
from worker_runtime.brokers.redis.stats import QueueStats

T0 = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
OK = plan.SecretCheck("ok")
CANARY = "canary-p4ssw0rd-7731"


def _pool(name: str = "minimal", generation: int = 1, **spec_changes: Any) -> api.Pool:
    body = crd_validation.load_sample(name)
    body["spec"].update(spec_changes)
    body["metadata"].update(namespace="team-a", uid="uid-1", generation=generation)
    parsed = api.parse_pool(body)
    assert isinstance(parsed, api.Pool), getattr(parsed, "message", "")
    return parsed


def _converged(replicas: int = 2, generation: int = 1) -> plan.DeploymentState:
    return plan.DeploymentState(
        generation=generation,
        observed_generation=generation,
        spec_replicas=replicas,
        replicas=replicas,
        ready_replicas=replicas,
        updated_replicas=replicas,
        available_replicas=replicas,
    )


def _stats(
    backlog: int = 0, in_flight: int = 0, dead_letter: int = 0, policy: str | None = "noeviction"
) -> QueueStats:
    return QueueStats(
        queue="email-notifications",
        now=T0.timestamp(),
        backlog=backlog,
        due_delayed=0,
        future_delayed=3,
        in_flight=in_flight,
        dead_letter=dead_letter,
        oldest_job_age_seconds=1.25,
        enqueued_total=100,
        completed_total=90,
        failed_total=2,
        retried_total=1,
        dead_lettered_total=dead_letter,
        cancelled_total=0,
        workers_lost_total=0,
        workers_expired=0,
        workers=(),
        maxmemory_policy=policy,
    )


def _conditions(result: plan.Plan) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in result.status.conditions or ()}


def _later(result: plan.Plan, **changes: Any) -> plan.Observed:
    """The next reconcile's observation: the stored status is the one just planned."""
    base: dict[str, Any] = {"now": T0 + dt.timedelta(minutes=1), "secret": OK}
    base.update(changes)
    return plan.Observed(previous=result.status, **base)


def _everything_written(result: plan.Plan) -> str:
    return json.dumps(
        {
            "status": api.build_status_patch(result.status),
            "events": [e.__dict__ for e in result.events],
            "children": result.children,
            "problem": result.problem,
        }
    )


# --- children by mode ---------------------------------------------------------------------------


def test_a_new_builtin_pool_creates_its_deployment_at_min_replicas() -> None:
    result = plan.plan(_pool(), plan.Observed(now=T0, secret=OK))
    (deployment,) = result.children
    assert deployment["kind"] == "Deployment"
    assert deployment["spec"]["replicas"] == 0
    assert result.replicas == 0
    assert {r.kind for r in result.obsolete} == {
        "Service",
        "PodMonitor",
        "PodDisruptionBudget",
        "TriggerAuthentication",
        "ScaledObject",
        "ServiceAccount",  # an SQS pool's own
    }


def test_an_existing_builtin_deployment_leaves_replicas_to_the_autoscaler() -> None:
    result = plan.plan(_pool(), plan.Observed(now=T0, secret=OK, deployment=_converged(5)))
    assert "replicas" not in result.children[0]["spec"]
    assert result.replicas is None


def test_a_disabled_pool_always_pins_its_fixed_replicas() -> None:
    pool = _pool(autoscaling={"mode": "disabled", "replicas": 3})
    for deployment in (None, _converged(7)):
        result = plan.plan(pool, plan.Observed(now=T0, secret=OK, deployment=deployment))
        assert result.children[0]["spec"]["replicas"] == 3
        assert result.status.desired_replicas == 3


def test_a_keda_pool_renders_keda_objects_and_never_sets_replicas() -> None:
    result = plan.plan(_pool("keda"), plan.Observed(now=T0, secret=OK))
    kinds = [c["kind"] for c in result.children]
    assert kinds == ["Deployment", "TriggerAuthentication", "ScaledObject"]
    assert "replicas" not in result.children[0]["spec"]
    assert "ScaledObject" not in {r.kind for r in result.obsolete}
    assert _conditions(result)["ScalingLimited"] == ("False", "NotManaged")


def test_switching_from_keda_to_builtin_deletes_the_keda_objects() -> None:
    pool = _pool("keda", autoscaling={"mode": "builtin"})
    result = plan.plan(pool, plan.Observed(now=T0, secret=OK, deployment=_converged(2)))
    assert {r.kind for r in result.obsolete} >= {"ScaledObject", "TriggerAuthentication"}
    assert all(r.namespace == "team-a" for r in result.obsolete)


def test_a_pool_moved_from_redis_to_rabbitmq_deletes_its_redis_trigger_authentication() -> None:
    result = plan.plan(_pool("rabbitmq-keda"), plan.Observed(now=T0, secret=OK))
    wanted = {(c["kind"], c["metadata"]["name"]) for c in result.children}
    assert ("TriggerAuthentication", "refunds-rabbitmq") in wanted
    obsolete = {(r.kind, r.name) for r in result.obsolete}
    assert ("TriggerAuthentication", "refunds-redis") in obsolete
    assert not {("TriggerAuthentication", "refunds-rabbitmq"), ("ScaledObject", "refunds")} & (
        obsolete
    )


def test_the_full_pool_wants_its_service_monitor_and_budget() -> None:
    result = plan.plan(_pool("full"), plan.Observed(now=T0, secret=OK))
    kinds = [c["kind"] for c in result.children]
    assert kinds == ["Deployment", "Service", "PodMonitor", "PodDisruptionBudget"]
    assert {r.kind for r in result.obsolete} == {
        "TriggerAuthentication",
        "ScaledObject",
        "ServiceAccount",
    }


# --- rollout conditions -------------------------------------------------------------------------


def test_a_converged_deployment_makes_the_pool_ready() -> None:
    result = plan.plan(_pool(), plan.Observed(now=T0, secret=OK, deployment=_converged(2)))
    conditions = _conditions(result)
    assert conditions["Ready"] == ("True", "Available")
    assert conditions["Progressing"] == ("False", "RolloutComplete")
    assert conditions["Degraded"] == ("False", "AsExpected")
    assert result.status.observed_generation == 1
    assert (result.status.replicas, result.status.ready_replicas) == (2, 2)
    assert result.status.selector == "workerfleet.io/pool=emails"


def test_a_pool_scaled_to_zero_is_ready() -> None:
    result = plan.plan(_pool(), plan.Observed(now=T0, secret=OK, deployment=_converged(0)))
    assert _conditions(result)["Ready"] == ("True", "ScaledToZero")


def test_a_rollout_in_progress_is_progressing_and_not_ready() -> None:
    state = plan.DeploymentState(
        generation=3, observed_generation=3, spec_replicas=4, updated_replicas=1, replicas=5
    )
    result = plan.plan(_pool(), plan.Observed(now=T0, secret=OK, deployment=state))
    assert _conditions(result)["Ready"] == ("False", "RollingOut")
    assert _conditions(result)["Progressing"] == ("True", "RollingOut")


def test_a_deployment_not_yet_observed_by_its_controller_is_still_rolling_out() -> None:
    state = _converged(2, generation=5)
    stale = plan.DeploymentState(**{**state.__dict__, "observed_generation": 4})
    result = plan.plan(_pool(), plan.Observed(now=T0, secret=OK, deployment=stale))
    assert _conditions(result)["Ready"] == ("False", "RollingOut")


def test_scaling_up_keeps_the_pool_ready_while_new_pods_start() -> None:
    state = plan.DeploymentState(
        generation=1,
        observed_generation=1,
        spec_replicas=6,
        replicas=6,
        ready_replicas=2,
        updated_replicas=6,
        available_replicas=2,
    )
    result = plan.plan(_pool(), plan.Observed(now=T0, secret=OK, deployment=state))
    assert _conditions(result)["Ready"] == ("True", "Available")
    assert _conditions(result)["Progressing"] == ("True", "WaitingForReplicas")


def test_a_scale_the_deployment_controller_has_not_yet_observed_is_not_a_rollout() -> None:
    # The autoscaler's write bumped the Deployment's generation (5 -> 6); the pod template
    # last changed at generation 5, which the controller has observed.
    before = plan.plan(_pool(), plan.Observed(now=T0, secret=OK, deployment=_converged(2, 5)))
    scaled = dataclasses.replace(
        _converged(2, generation=6), observed_generation=5, spec_replicas=4, rollout_generation=5
    )
    result = plan.plan(_pool(), _later(before, deployment=scaled))
    assert _conditions(result)["Ready"] == ("True", "Available")
    assert _conditions(result)["Progressing"] == ("True", "WaitingForReplicas")
    assert [e.reason for e in result.events] == []  # Ready did not flip: nothing announced


def test_a_new_pool_at_zero_replicas_is_ready_at_once_and_stays_so_when_observed() -> None:
    # Given the Deployment just created for a pool on an idle queue: no replicas wanted, none
    # reported, its controller has not observed it yet
    created = plan.DeploymentState(generation=1, observed_generation=0, spec_replicas=0)
    first = plan.plan(_pool(), plan.Observed(now=T0, secret=OK, deployment=created))
    # Then the pool is Ready on its first status, announced by one Event (no RollingOut first)
    assert _conditions(first)["Ready"] == ("True", "ScaledToZero")
    assert _conditions(first)["Progressing"] == ("False", "RolloutComplete")
    assert [e.reason for e in first.events] == ["Ready"]
    # When the controller reports the Deployment observed
    second = plan.plan(_pool(), _later(first, deployment=_converged(0)))
    # Then nothing changed: no second status write, no second Event
    assert api.build_status_patch(second.status) == api.build_status_patch(first.status)
    assert second.events == ()


def test_a_new_pod_template_at_zero_replicas_with_old_pods_still_running_is_a_rollout() -> None:
    # Given a pool scaled to zero whose template changed while two old pods still run
    state = plan.DeploymentState(
        generation=7, observed_generation=6, spec_replicas=0, replicas=2, rollout_generation=7
    )
    result = plan.plan(_pool(), plan.Observed(now=T0, secret=OK, deployment=state))
    # Then it is rolling out until they are gone
    assert _conditions(result)["Ready"] == ("False", "RollingOut")


def test_a_new_pod_template_not_yet_observed_is_a_rollout() -> None:
    state = dataclasses.replace(
        _converged(2, generation=6), observed_generation=5, rollout_generation=6
    )
    result = plan.plan(_pool(), plan.Observed(now=T0, secret=OK, deployment=state))
    assert _conditions(result)["Ready"] == ("False", "RollingOut")


def test_a_spec_the_api_server_rejected_is_not_ready_and_not_observed() -> None:
    # Given a pool at generation 2 whose Deployment still runs generation 1's spec, because the
    # API server refused the new one (422)
    rejected = "Deployment emails: spec.template...resources.requests: must be <= cpu limit"
    result = plan.plan(
        _pool(generation=2),
        plan.Observed(
            now=T0,
            secret=OK,
            deployment=_converged(2),
            applied_generation=1,
            apply_problem=rejected,
        ),
    )
    # Then it is not Ready, Degraded says why, and observedGeneration stays at the applied one
    conditions = _conditions(result)
    assert conditions["Ready"] == ("False", "ApplyRejected")
    assert conditions["Degraded"] == ("True", "ApplyRejected")
    assert result.status.observed_generation == 1
    ready = api.find_condition(result.status.conditions, "Ready")
    assert ready is not None and rejected in ready.message and ready.observed_generation == 2
    assert [(e.type, e.reason) for e in result.events if e.type == "Warning"] == [
        ("Warning", "ApplyRejected")
    ]


@pytest.mark.parametrize(
    ("spec", "missing", "ready"),
    [
        ({"metrics": {"podMonitor": True}}, ("PodMonitor",), ("True", "Available")),
        (
            {"autoscaling": {"mode": "keda"}},
            ("TriggerAuthentication", "ScaledObject"),
            ("False", "ChildAPIMissing"),
        ),
    ],
)
def test_a_child_api_that_is_not_served_is_degraded_and_warned_once(
    spec: dict[str, Any], missing: tuple[str, ...], ready: tuple[str, str]
) -> None:
    pool = _pool()
    body = pool.spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    for key, value in spec.items():
        body[key] = {**body.get(key, {}), **value}
    if "keda" in json.dumps(spec):
        body["queue"]["redis"]["keda"] = {"addressKey": "address"}
    changed = _pool(**body)
    observed = plan.Observed(now=T0, secret=OK, deployment=_converged(2), missing_apis=missing)
    first = plan.plan(changed, observed)
    conditions = _conditions(first)
    assert conditions["Degraded"] == ("True", "ChildAPIMissing")
    assert conditions["Ready"] == ready
    degraded = api.find_condition(first.status.conditions, "Degraded")
    assert degraded is not None and all(kind in degraded.message for kind in missing)
    assert [e.reason for e in first.events if e.type == "Warning"] == ["ChildAPIMissing"]
    # And the next resync, with the API still missing, announces nothing again
    again = plan.plan(changed, _later(first, deployment=_converged(2), missing_apis=missing))
    assert again.events == ()


def test_no_available_pod_makes_the_pool_unready() -> None:
    state = plan.DeploymentState(
        generation=1, observed_generation=1, spec_replicas=2, replicas=2, updated_replicas=2
    )
    result = plan.plan(_pool(), plan.Observed(now=T0, secret=OK, deployment=state))
    assert _conditions(result)["Ready"] == ("False", "ReplicasUnavailable")


def test_a_stuck_rollout_is_degraded_with_a_warning() -> None:
    body = {
        "metadata": {"generation": 2},
        "spec": {"replicas": 3},
        "status": {
            "observedGeneration": 2,
            "replicas": 4,
            "updatedReplicas": 1,
            "conditions": [
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
            ],
        },
    }
    state = plan.read_deployment_state(body)
    assert state.progress_deadline_exceeded and state.spec_replicas == 3
    result = plan.plan(_pool(), plan.Observed(now=T0, secret=OK, deployment=state))
    assert _conditions(result)["Degraded"] == ("True", "ProgressDeadlineExceeded")
    assert ("Warning", "ProgressDeadlineExceeded") in {(e.type, e.reason) for e in result.events}


def test_a_replica_failure_is_degraded_with_its_message() -> None:
    state = plan.read_deployment_state(
        {
            "metadata": {"generation": 1},
            "spec": {"replicas": 1},
            "status": {
                "observedGeneration": 1,
                "conditions": [
                    {"type": "ReplicaFailure", "status": "True", "message": "quota exceeded"}
                ],
            },
        }
    )
    result = plan.plan(_pool(), plan.Observed(now=T0, secret=OK, deployment=state))
    (degraded,) = [c for c in result.status.conditions or () if c.type == "Degraded"]
    assert (degraded.status, degraded.reason, degraded.message) == (
        "True",
        "ReplicaFailure",
        "quota exceeded",
    )


# --- bad input: explain, hold, no half-applied state ----------------------------------------------


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        ("missing", "SecretNotFound"),
        ("key_missing", "SecretKeyNotFound"),
        ("invalid_url", "InvalidRedisURL"),
    ],
)
def test_an_unusable_secret_holds_the_pool_with_a_precise_reason(
    state: plan.SecretState, reason: str
) -> None:
    secret = plan.SecretCheck(state, f'Secret "redis-creds" in team-a: {reason}')
    result = plan.plan(_pool(), plan.Observed(now=T0, secret=secret, deployment=_converged(2)))
    assert result.hold is True
    assert (result.children, result.obsolete, result.replicas) == ((), (), None)
    conditions = _conditions(result)
    assert conditions["Ready"] == ("False", reason)
    assert conditions["Degraded"] == ("True", reason)
    assert conditions["QueueReachable"] == ("Unknown", reason)
    assert [(e.type, e.reason) for e in result.events] == [("Warning", reason)]
    assert result.problem is not None and result.problem.startswith(reason)
    # what is running is still reported
    assert result.status.replicas == 2


def test_an_unusable_url_of_a_rabbitmq_pool_is_an_invalid_broker_url() -> None:
    secret = plan.SecretCheck("invalid_url", "queue.rabbitmq needs a URL starting with amqp://")
    result = plan.plan(_pool("rabbitmq"), plan.Observed(now=T0, secret=secret))
    assert result.hold is True and result.children == ()
    assert _conditions(result)["Ready"] == ("False", "InvalidBrokerURL")
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "InvalidBrokerURL")]


def test_an_invalid_spec_holds_the_pool_with_the_models_message() -> None:
    body = crd_validation.load_sample("minimal")
    body["metadata"].update(namespace="team-a", uid="u", generation=7)
    body["spec"]["autoscaling"] = {"minReplicas": 9, "maxReplicas": 3}
    invalid = api.parse_pool(body)
    assert isinstance(invalid, api.InvalidPool)
    result = plan.plan(invalid, plan.Observed(now=T0, secret=OK))
    assert result.hold and result.children == ()
    (ready,) = [c for c in result.status.conditions or () if c.type == "Ready"]
    assert (ready.status, ready.reason) == ("False", "InvalidSpec")
    assert ready.message == "spec.autoscaling: minReplicas must not exceed maxReplicas"
    assert result.status.observed_generation == 7
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "InvalidSpec")]


def test_a_held_pool_recovers_when_the_secret_appears() -> None:
    missing = plan.SecretCheck("missing", 'Secret "redis-creds" not found')
    held = plan.plan(_pool(), plan.Observed(now=T0, secret=missing, deployment=_converged(2)))
    # the same problem seen again: no new Event, same transition time
    again = plan.plan(_pool(), _later(held, secret=missing, deployment=_converged(2)))
    assert again.events == ()
    assert again.status.conditions == held.status.conditions
    # the Secret is created: children come back, Ready flips with a Normal event
    fixed = plan.plan(_pool(), _later(again, deployment=_converged(2)))
    assert fixed.hold is False and fixed.children
    assert _conditions(fixed)["Ready"] == ("True", "Available")
    assert ("Normal", "Ready") in {(e.type, e.reason) for e in fixed.events}


def test_a_status_written_by_a_held_plan_says_so_though_it_observes_the_generation() -> None:
    # A held plan observes its generation without applying anything: a restarted operator
    # tells it from a reconciled one by the status alone (it deletes obsolete children then)
    missing = plan.SecretCheck("missing", 'Secret "redis-creds" not found')
    held = plan.plan(_pool(), plan.Observed(now=T0, secret=missing, deployment=_converged(2)))
    assert held.status.observed_generation == 1 and plan.is_held(held.status)
    fixed = plan.plan(_pool(), _later(held, deployment=_converged(2)))
    assert not plan.is_held(fixed.status)
    refused = plan.plan(_pool(), _later(fixed, apply_problem="Deployment refused"))
    assert not plan.is_held(refused.status)  # ApplyRejected keeps the last applied generation


def test_a_keda_pool_without_keda_secret_keys_is_held_not_half_applied() -> None:
    # The CRD refuses this; the emulator or an outdated CRD might not.
    pool = _pool()
    keda_pool = api.Pool(
        name=pool.name,
        namespace=pool.namespace,
        uid=pool.uid,
        generation=pool.generation,
        spec=pool.spec.model_copy(
            update={"autoscaling": pool.spec.autoscaling.model_copy(update={"mode": "keda"})}
        ),
    )
    result = plan.plan(keda_pool, plan.Observed(now=T0, secret=OK))
    assert result.hold and result.children == ()
    assert _conditions(result)["Ready"] == ("False", "InvalidSpec")


# --- transitions: stable times, events only on change ---------------------------------------------


def test_a_converged_pool_plans_the_same_status_and_no_events_again() -> None:
    first = plan.plan(_pool(), plan.Observed(now=T0, secret=OK, deployment=_converged(2)))
    second = plan.plan(_pool(), _later(first, deployment=_converged(2)))
    assert second.events == ()
    assert second.status == first.status
    assert second.children == first.children


def test_transition_times_move_only_when_a_status_flips() -> None:
    rolling = plan.DeploymentState(
        generation=1, observed_generation=1, spec_replicas=2, updated_replicas=0
    )
    first = plan.plan(_pool(), plan.Observed(now=T0, secret=OK, deployment=rolling))
    later = plan.plan(_pool(), _later(first, deployment=_converged(2)))
    times = {c.type: c.last_transition_time for c in later.status.conditions or ()}
    assert times["Ready"] == "2026-03-01T12:01:00Z"  # False -> True
    assert times["Degraded"] == "2026-03-01T12:00:00Z"  # False all along
    assert [(e.type, e.reason) for e in later.events] == [("Normal", "Ready")]


def test_a_new_generation_is_observed_on_every_condition() -> None:
    first = plan.plan(_pool(), plan.Observed(now=T0, secret=OK, deployment=_converged(2)))
    second = plan.plan(_pool(generation=2), _later(first, deployment=_converged(2)))
    assert second.status.observed_generation == 2
    assert {c.observed_generation for c in second.status.conditions or ()} == {2}


# --- the queue and the autoscaler ------------------------------------------------------------


def test_queue_stats_are_reported_and_the_queue_is_reachable() -> None:
    result = plan.plan(
        _pool(),
        plan.Observed(
            now=T0, secret=OK, deployment=_converged(1), stats=_stats(backlog=40, dead_letter=2)
        ),
    )
    queue = result.status.queue
    assert queue is not None
    assert (queue.backlog, queue.in_flight, queue.delayed, queue.dead_letter) == (40, 0, 3, 2)
    assert queue.observed_time == "2026-03-01T12:00:00Z"
    assert _conditions(result)["QueueReachable"] == ("True", "QueueRead")


def test_an_unreachable_queue_warns_once_and_never_leaks_the_url() -> None:
    error = f"Error connecting to redis://worker:{CANARY}@redis.internal:6379/0: refused"
    first = plan.plan(
        _pool(),
        plan.Observed(now=T0, secret=OK, deployment=_converged(1), stats_error=error),
    )
    assert _conditions(first)["QueueReachable"] == ("False", "QueueUnreachable")
    assert _conditions(first)["Degraded"] == ("True", "QueueUnreachable")
    warnings = [e for e in first.events if e.type == "Warning"]
    assert [e.reason for e in warnings] == ["QueueUnreachable"]
    assert CANARY not in _everything_written(first)
    assert "redis://***@redis.internal" in warnings[0].message
    again = plan.plan(_pool(), _later(first, deployment=_converged(1), stats_error=error))
    assert again.events == ()
    back = plan.plan(_pool(), _later(again, deployment=_converged(1), stats=_stats()))
    assert ("Normal", "QueueRead") in {(e.type, e.reason) for e in back.events}


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lfu"])
def test_a_redis_that_may_evict_the_queue_marks_the_pool_degraded_with_one_warning(
    policy: str,
) -> None:
    # Given a readable queue on a Redis whose maxmemory-policy is not noeviction
    first = plan.plan(
        _pool(),
        plan.Observed(now=T0, secret=OK, deployment=_converged(1), stats=_stats(policy=policy)),
    )
    # Then the queue is reachable, but the pool is Degraded and says why, once
    conditions = {c.type: c for c in first.status.conditions or ()}
    assert (conditions["QueueReachable"].status, conditions["QueueReachable"].reason) == (
        "True",
        "QueueRead",
    )
    degraded = conditions["Degraded"]
    assert (degraded.status, degraded.reason) == ("True", "RedisMayEvict")
    assert policy in degraded.message and "noeviction" in degraded.message
    assert [e.reason for e in first.events if e.type == "Warning"] == ["RedisMayEvict"]
    # and a poll without a new read keeps it; a fixed policy clears it
    kept = plan.plan(_pool(), _later(first, deployment=_converged(1)))
    assert _conditions(kept)["Degraded"] == ("True", "RedisMayEvict") and kept.events == ()
    fixed = plan.plan(_pool(), _later(kept, deployment=_converged(1), stats=_stats()))
    assert _conditions(fixed)["Degraded"] == ("False", "AsExpected")


def test_a_policy_the_operator_may_not_read_raises_no_alarm() -> None:
    result = plan.plan(
        _pool(),
        plan.Observed(now=T0, secret=OK, deployment=_converged(1), stats=_stats(policy=None)),
    )
    assert _conditions(result)["Degraded"] == ("False", "AsExpected")


def test_without_a_new_read_the_last_queue_status_is_kept() -> None:
    first = plan.plan(
        _pool(), plan.Observed(now=T0, secret=OK, deployment=_converged(1), stats=_stats(7))
    )
    second = plan.plan(_pool(), _later(first, deployment=_converged(1)))
    assert second.status.queue == first.status.queue
    assert _conditions(second)["QueueReachable"] == ("True", "QueueRead")


def _decide(
    stats: QueueStats | None, current: int, pool: api.Pool, error: str | None = None
) -> autoscaling.Decision:
    policy = autoscaling.build_scaling_policy(pool.spec)
    return autoscaling.decide(
        policy, autoscaling.Observation(stats, error), current, autoscaling.ScalerState(), 1000.0
    )


def test_a_scale_up_decision_is_reported_in_status_and_announced_once() -> None:
    pool = _pool()
    stats = _stats(backlog=530)
    decision = _decide(stats, 2, pool)
    assert decision.desired > 2
    result = plan.plan(
        pool,
        plan.Observed(now=T0, secret=OK, deployment=_converged(2), stats=stats, decision=decision),
    )
    assert result.status.desired_replicas == decision.desired
    scaling = result.status.autoscaling
    assert scaling is not None
    assert scaling.mode == "builtin"
    assert scaling.signals is not None and scaling.signals["backlog"] == pytest.approx(5.3)
    assert scaling.reason == decision.reason
    assert scaling.chosen == decision.chosen
    assert scaling.raw_desired == decision.raw_desired
    (scaled,) = [e for e in result.events if e.reason == "ScaledUp"]
    assert scaled.message.startswith(f"ScaledUp 2→{decision.desired}")


def test_a_rabbitmq_pool_shows_no_oldest_age_and_names_the_signal_part_it_cannot_measure() -> None:
    # Given a RabbitMQ pool with the latency signal on, and stats from a broker without the age
    pool = _pool("rabbitmq", autoscaling={"targetOldestJobAgeSeconds": 30.0})
    why = "the RabbitMQ broker does not report the oldest waiting job's age"
    stats = dataclasses.replace(_stats(backlog=40), oldest_job_age_seconds=0.0)
    decision = autoscaling.decide(
        autoscaling.build_scaling_policy(pool.spec),
        autoscaling.Observation(stats, None, age_unavailable=why),
        2,
        autoscaling.ScalerState(),
        1000.0,
    )
    # When the status is planned
    result = plan.plan(
        pool,
        plan.Observed(
            now=T0,
            secret=OK,
            deployment=_converged(2),
            stats=stats,
            age_unavailable=why,
            decision=decision,
        ),
    )
    # Then the queue shows no made-up age, and the autoscaling status says what is off and why
    assert result.status.queue is not None and result.status.queue.oldest_job_age_seconds is None
    assert "oldestJobAgeSeconds" not in api.build_status_patch(result.status)["queue"]
    scaling = result.status.autoscaling
    assert scaling is not None and scaling.signals_unavailable is not None
    (off,) = scaling.signals_unavailable
    assert (off.signal, off.reason) == ("latency", "OldestJobAgeUnavailable")
    assert why in off.message
    # and a Redis pool's age is shown as measured
    redis = plan.plan(
        _pool(), plan.Observed(now=T0, secret=OK, deployment=_converged(2), stats=_stats())
    )
    assert redis.status.queue is not None and redis.status.queue.oldest_job_age_seconds == 1.25


def test_a_dry_run_decision_is_announced_as_such() -> None:
    pool = _pool(autoscaling={"dryRun": True})
    decision = _decide(_stats(backlog=530), 2, pool)
    result = plan.plan(pool, plan.Observed(now=T0, secret=OK, decision=decision))
    assert "DryRunScaledUp" in {e.reason for e in result.events}
    assert result.status.autoscaling is not None and result.status.autoscaling.dry_run is True


def test_pinned_at_max_with_a_growing_backlog_sets_scaling_limited() -> None:
    pool = _pool(autoscaling={"maxReplicas": 2})
    policy = autoscaling.build_scaling_policy(pool.spec)
    state = autoscaling.ScalerState()
    decision = None
    for step, backlog in enumerate((1000, 2000, 3000, 4000)):
        stats = QueueStats(**{**_stats(backlog=backlog).__dict__, "now": 1000.0 + 5 * step})
        decision = autoscaling.decide(
            policy, autoscaling.Observation(stats), 2, state, 1000.0 + 5 * step
        )
        state = decision.state
    assert decision is not None and decision.scaling_limited
    result = plan.plan(pool, plan.Observed(now=T0, secret=OK, decision=decision))
    assert _conditions(result)["ScalingLimited"] == ("True", "MaxReplicasReached")
    assert ("Warning", "MaxReplicasReached") in {(e.type, e.reason) for e in result.events}


def test_an_unreadable_queue_keeps_scaling_limited_as_last_measured_and_announces_it_once() -> None:
    # Given a pool pinned at maxReplicas 2 with a growing backlog: ScalingLimited, one Warning
    pool = _pool(autoscaling={"maxReplicas": 2})
    policy = autoscaling.build_scaling_policy(pool.spec)
    state = autoscaling.ScalerState()
    for step, backlog in enumerate((1000, 2000, 3000)):
        stats = QueueStats(**{**_stats(backlog=backlog).__dict__, "now": 1000.0 + 5 * step})
        decision = autoscaling.decide(
            policy, autoscaling.Observation(stats), 2, state, 1000.0 + 5 * step
        )
        state = decision.state
    limited = plan.plan(pool, plan.Observed(now=T0, secret=OK, decision=decision))
    assert _conditions(limited)["ScalingLimited"] == ("True", "MaxReplicasReached")
    # When the queue cannot be read for a poll (no signals at all)
    outage = autoscaling.decide(policy, autoscaling.Observation(None, "timeout"), 2, state, 1015.0)
    during = plan.plan(
        pool, _later(limited, deployment=_converged(2), stats_error="timeout", decision=outage)
    )
    # Then ScalingLimited says what was last measured, not "the replicas meet the signals"
    assert _conditions(during)["ScalingLimited"] == ("True", "MaxReplicasReached")
    # And once the queue is read again, still pinned, no second Warning announces it
    stats = QueueStats(**{**_stats(backlog=1900).__dict__, "now": 1020.0})  # still 19 wanted
    back = autoscaling.decide(policy, autoscaling.Observation(stats), 2, outage.state, 1020.0)
    again = plan.plan(pool, _later(during, deployment=_converged(2), stats=stats, decision=back))
    assert _conditions(again)["ScalingLimited"] == ("True", "MaxReplicasReached")
    assert "MaxReplicasReached" not in {e.reason for e in again.events}


def test_an_unchanged_decision_emits_no_scaling_event() -> None:
    pool = _pool()
    decision = _decide(_stats(backlog=0), 0, pool)
    assert decision.desired == decision.current == 0
    result = plan.plan(pool, plan.Observed(now=T0, secret=OK, decision=decision))
    assert not [e for e in result.events if e.reason.startswith(("Scaled", "DryRun"))]
    assert _conditions(result)["ScalingLimited"] == ("False", "WithinLimits")


def test_decisions_are_ignored_outside_builtin_mode() -> None:
    pool = _pool(autoscaling={"mode": "disabled", "replicas": 4})
    decision = _decide(_stats(backlog=530), 2, _pool())
    result = plan.plan(
        pool, plan.Observed(now=T0, secret=OK, deployment=_converged(4), decision=decision)
    )
    assert result.status.desired_replicas == 4
    assert not [e for e in result.events if e.reason == "ScaledUp"]
    assert result.status.autoscaling is not None
    assert result.status.autoscaling.reason == "autoscaling disabled: fixed replicas 4"


def test_the_planned_status_is_valid_for_the_crd_status_schema() -> None:
    decision = _decide(_stats(backlog=530), 2, _pool())
    result = plan.plan(
        _pool(),
        plan.Observed(
            now=T0, secret=OK, deployment=_converged(2), stats=_stats(530), decision=decision
        ),
    )
    body = crd_validation.load_sample("minimal")
    body["status"] = api.build_status_patch(result.status)
    assert crd_validation.validate(api.build_crd(), body) == []


@pytest.mark.parametrize(
    "text",
    [
        f"redis://:{CANARY}@host:6379",
        f"rediss://user:{CANARY}@host:6380/0",
        f"AUTH failed password={CANARY}",
    ],
)
def test_credentials_are_redacted_from_error_texts(text: str) -> None:
    assert CANARY not in plan.redact(text)


def test_huge_messages_are_cut_so_status_and_events_stay_writable() -> None:
    body = crd_validation.load_sample("minimal")
    body["metadata"].update(namespace="team-a", uid="u", generation=1)
    body["spec"]["env"] = [{"name": f"V{i}", "bad": "x" * 50} for i in range(64)]
    invalid = api.parse_pool(body)
    assert isinstance(invalid, api.InvalidPool) and len(invalid.message) > 1024
    result = plan.plan(invalid, plan.Observed(now=T0, secret=OK))
    (ready,) = [c for c in result.status.conditions or () if c.type == "Ready"]
    assert len(ready.message) <= api.status.MESSAGE_MAX_LENGTH
    assert all(len(e.message) <= plan.EVENT_MESSAGE_MAX_LENGTH for e in result.events)
    assert result.events[0].message.endswith("(truncated)")
