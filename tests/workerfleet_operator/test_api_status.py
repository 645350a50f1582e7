"""Status models and condition helpers: transition times move only when the status does."""

from __future__ import annotations

import datetime as dt

from workerfleet_operator import api

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(minutes=5)


def test_a_new_condition_starts_its_transition_clock_now() -> None:
    c = api.build_condition("Ready", "True", "Available", "ok", generation=3, now=T0, previous=None)
    assert c.last_transition_time == "2026-01-02T03:04:05Z"
    assert c.observed_generation == 3


def test_the_transition_time_is_kept_while_the_status_is_unchanged() -> None:
    before = api.build_condition(
        "Ready", "False", "SecretNotFound", "a", generation=1, now=T0, previous=None
    )
    after = api.build_condition(
        "Ready", "False", "InvalidRedisURL", "b", generation=2, now=T1, previous=[before]
    )
    assert after.last_transition_time == before.last_transition_time
    assert (after.reason, after.message, after.observed_generation) == ("InvalidRedisURL", "b", 2)


def test_the_transition_time_moves_when_the_status_flips() -> None:
    before = api.build_condition(
        "Ready", "False", "Creating", "", generation=1, now=T0, previous=None
    )
    after = api.build_condition(
        "Ready", "True", "Available", "", generation=1, now=T1, previous=[before]
    )
    assert after.last_transition_time == "2026-01-02T03:09:05Z"


def test_a_stored_status_round_trips_through_the_patch_form() -> None:
    status = api.WorkerPoolStatus(
        observed_generation=4,
        replicas=2,
        desired_replicas=3,
        queue=api.QueueStatus(
            backlog=10, dead_letter=1, oldest_job_age_seconds=0.0, arrival_rate=None
        ),
        autoscaling=api.AutoscalingStatus(
            signals={"backlog": 0.1, "latency": None}, chosen="backlog"
        ),
        conditions=[
            api.build_condition(
                "Ready", "True", "Available", "", generation=4, now=T0, previous=None
            )
        ],
    )
    patch = api.build_status_patch(status)
    assert patch["queue"] == {
        "backlog": 10,
        "inFlight": 0,
        "delayed": 0,
        "deadLetter": 1,
        "oldestJobAgeSeconds": 0.0,
        "workers": 0,
    }
    assert patch["autoscaling"]["signals"] == {"backlog": 0.1, "latency": None}
    assert api.parse_status(patch) == status


def test_an_unreadable_stored_status_is_treated_as_absent() -> None:
    assert api.parse_status({"conditions": [{"type": "Ready"}]}) is None
    assert api.parse_status(None) is None
    # unknown fields from a newer operator are ignored rather than fatal
    parsed = api.parse_status({"observedGeneration": 2, "somethingNew": {"a": 1}})
    assert parsed is not None and parsed.observed_generation == 2


def test_a_status_field_that_no_longer_applies_is_sent_as_null_so_the_merge_removes_it() -> None:
    stored = {
        "observedGeneration": 3,
        "autoscaling": {"mode": "builtin", "chosen": "backlog", "signals": {"backlog": 4.0}},
        "conditions": [{"type": "Ready"}],
    }
    now = api.WorkerPoolStatus(
        observed_generation=4,
        autoscaling=api.AutoscalingStatus(mode="disabled", reason="fixed"),
    )
    assert api.build_status_patch(now, stored) == {
        "observedGeneration": 4,
        "autoscaling": {"mode": "disabled", "reason": "fixed", "chosen": None, "signals": None},
        "conditions": None,
    }
    assert api.build_status_patch(now) == {
        "observedGeneration": 4,
        "autoscaling": {"mode": "disabled", "reason": "fixed"},
    }
