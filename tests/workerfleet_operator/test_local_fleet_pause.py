"""``workerfleet run`` honours the pause annotations as the operator does: the queue is still
read, the replicas are held (``workerfleet.io/paused``) or set (``paused-replicas``) by the
operator's own ``autoscaling.hold_paused``. Real redis-server, real worker subprocesses."""

from __future__ import annotations

import pathlib
import time

import local_fleet_support as support
import pytest
from workerfleet_operator.api import pool as pool_api
from workerfleet_operator.local import manifest


def test_the_pause_annotations_are_read_from_the_manifest() -> None:
    paused = support.build_manifest("p")
    paused["metadata"]["annotations"] = {pool_api.PAUSED_ANNOTATION: "true"}
    assert manifest.build_pool(paused).pause == pool_api.Pause()
    at_two = support.build_manifest("p")
    at_two["metadata"]["annotations"] = {pool_api.PAUSED_REPLICAS_ANNOTATION: "2"}
    assert manifest.build_pool(at_two).pause == pool_api.Pause(replicas=2)
    assert manifest.build_pool(support.build_manifest("p")).pause is None


def test_a_paused_replicas_that_is_not_a_count_is_refused_naming_the_annotation() -> None:
    document = support.build_manifest("p")
    document["metadata"]["annotations"] = {pool_api.PAUSED_REPLICAS_ANNOTATION: "two"}
    with pytest.raises(manifest.ManifestError, match="paused-replicas"):
        manifest.build_pool(document)


@pytest.mark.slow
def test_a_pool_paused_at_two_replicas_runs_two_whatever_the_backlog_wants(
    tmp_path: pathlib.Path,
) -> None:
    annotations = {pool_api.PAUSED_REPLICAS_ANNOTATION: "2"}
    with support.driven_fleet(tmp_path, "paused-two", annotations=annotations) as fleet:
        # Given a pool of at most 3 replicas paused at 2, and a backlog that wants 3
        fleet.enqueue("sleep", 40, seconds=1.0)
        # When the runner polls
        fleet.drive_until(lambda s: s.replicas == 2, timeout=10, message="set to 2")
        held = []
        for _ in range(4):
            time.sleep(support.STEP_SECONDS)
            held.append(fleet.poll())
        # Then it runs 2 and holds them, while the signals it still reads want 3
        assert [s.replicas for s in held] == [2, 2, 2, 2]
        assert all(s.decision.raw_desired >= 3 for s in held), [s.decision for s in held]
        assert all(s.decision.clamped_by == "paused" for s in held)
        assert fleet.runner.totals.peak_replicas == 2


@pytest.mark.slow
def test_a_pool_paused_from_its_start_stays_at_min_replicas_with_a_backlog(
    tmp_path: pathlib.Path,
) -> None:
    annotations = {pool_api.PAUSED_ANNOTATION: "true"}
    with support.driven_fleet(tmp_path, "paused-zero", annotations=annotations) as fleet:
        # Given a paused pool (minReplicas 0) and a backlog
        fleet.enqueue("sleep", 10)
        # When the runner polls
        polls = [fleet.poll() for _ in range(3)]
        # Then no worker starts: the pool stays where the operator would create it
        assert [s.replicas for s in polls] == [0, 0, 0]
        assert all(s.queue_stats is not None and s.queue_stats.backlog == 10 for s in polls)
        assert "Paused at 0" in polls[-1].decision.reason
