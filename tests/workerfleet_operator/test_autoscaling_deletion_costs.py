"""deletion_costs_for(): which pods the ReplicaSet removes first on scale-in (lowest cost)."""

from __future__ import annotations

import pytest
import scaling_fixtures as fx
from workerfleet_operator import autoscaling

NOW = 1_000.0


def _removal_order(costs: dict[str, int]) -> list[str]:
    return sorted(costs, key=lambda pod: (costs[pod], pod))


def test_idle_pods_are_removed_first_and_busy_pods_are_ranked_by_their_oldest_job() -> None:
    workers = [
        fx.heartbeat("busy-3-jobs", in_flight=3, oldest_job_started_at=NOW - 5),
        fx.heartbeat("busy-old-job", in_flight=1, oldest_job_started_at=NOW - 300),
        fx.heartbeat("busy-young-job", in_flight=1, oldest_job_started_at=NOW - 10),
        fx.heartbeat("idle", in_flight=0),
        fx.heartbeat("draining", in_flight=2, oldest_job_started_at=NOW - 50, draining=True),
    ]
    pods = ["busy-3-jobs", "busy-old-job", "busy-young-job", "idle", "draining", "not-started"]
    costs = autoscaling.deletion_costs_for(workers, pods, NOW)
    assert _removal_order(costs) == [
        "not-started",
        "draining",
        "idle",
        "busy-3-jobs",
        "busy-young-job",
        "busy-old-job",
    ]
    assert set(costs) == set(pods)
    assert costs["idle"] < 0 < costs["busy-young-job"]


@pytest.mark.parametrize(
    ("workers", "removal_order"),
    [
        pytest.param(
            [
                fx.heartbeat("two", in_flight=2, oldest_job_started_at=NOW - 7),
                fx.heartbeat("one", in_flight=1, oldest_job_started_at=NOW - 7),
            ],
            ["one", "two"],
            id="oldest_jobs_of_one_age_the_pod_holding_more_is_kept",
        ),
        # The burst's beat may still be the pod's latest when the scale-in is decided (beats
        # come every lease/3 s): the pod holding one job started long before is the one to keep.
        pytest.param(
            [
                fx.heartbeat("burst", in_flight=8, oldest_job_started_at=NOW - 0.5),
                fx.heartbeat("long", in_flight=1, oldest_job_started_at=NOW - 3),
            ],
            ["burst", "long"],
            id="a_beat_during_a_burst_of_quick_jobs_does_not_outrank_a_long_job",
        ),
    ],
)
def test_busy_pods_are_ranked_by_their_oldest_job_then_by_jobs_held(
    workers: list[fx.WorkerHeartbeat], removal_order: list[str]
) -> None:
    costs = autoscaling.deletion_costs_for(workers, [w.pod_name for w in workers], NOW)
    assert _removal_order(costs) == removal_order


def test_a_pod_without_a_heartbeat_is_the_cheapest_to_delete() -> None:
    costs = autoscaling.deletion_costs_for([fx.heartbeat("idle")], ["idle", "ghost"], NOW)
    assert costs["ghost"] == autoscaling.COST_NO_HEARTBEAT
    assert costs["ghost"] < costs["idle"]


def test_heartbeats_of_pods_outside_the_pool_are_ignored() -> None:
    workers = [fx.heartbeat("other-pool-pod", in_flight=5, oldest_job_started_at=NOW)]
    assert autoscaling.deletion_costs_for(workers, ["mine"], NOW) == {
        "mine": autoscaling.COST_NO_HEARTBEAT
    }


def test_a_restarted_container_is_judged_by_its_latest_heartbeat() -> None:
    workers = [
        fx.heartbeat(
            "p", worker_id="old", in_flight=4, last_seen=NOW - 20, oldest_job_started_at=NOW - 99
        ),
        fx.heartbeat("p", worker_id="new", in_flight=0, last_seen=NOW - 1),
    ]
    assert autoscaling.deletion_costs_for(workers, ["p"], NOW) == {"p": autoscaling.COST_IDLE}


@pytest.mark.parametrize(
    ("in_flight", "age"),
    [
        pytest.param(10**9, 10**9, id="absurd_counts"),
        pytest.param(1, -50.0, id="job_started_in_the_future_by_clock_skew"),
    ],
)
def test_costs_stay_inside_the_annotation_int32_range(in_flight: int, age: float) -> None:
    worker = fx.heartbeat("p", in_flight=in_flight, oldest_job_started_at=NOW - age)
    cost = autoscaling.deletion_costs_for([worker], ["p"], NOW)["p"]
    assert -(2**31) <= cost < 2**31
    assert cost > autoscaling.COST_IDLE


def test_a_busy_pod_without_a_job_start_time_still_outranks_an_idle_pod() -> None:
    workers = [fx.heartbeat("busy", in_flight=1), fx.heartbeat("idle")]
    costs = autoscaling.deletion_costs_for(workers, ["busy", "idle"], NOW)
    assert costs["busy"] > costs["idle"]
