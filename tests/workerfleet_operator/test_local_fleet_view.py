"""The live view of ``workerfleet run`` shows the queue, the replicas and the last decision."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import scaling_fixtures as fx
from rich.console import Console
from workerfleet_operator import autoscaling
from workerfleet_operator.local import fleet, runner, view

POLICY = autoscaling.ScalingPolicy(max_replicas=4, target_utilization=None)


def _snapshot(reachable: bool) -> runner.Snapshot:
    stats = fx.queue_stats(10, backlog=530, in_flight=6, dead_letter=3, oldest_job_age_seconds=4.2)
    poll = fx.Poll(10, stats if reachable else None, None if reachable else "ConnectionError: x")
    decision = fx.run(POLICY, [poll], current=2)[0]
    return runner.Snapshot(
        at=12.0,
        pool="emails",
        queue="emails",
        queue_stats=poll.stats,
        error=poll.error,
        decision=decision,
        replicas=2,
        ready=1,
        terminating=1,
        last_change=decision,
        last_change_at=12.0,
        counters=fleet.FleetCounters(started=3, stopped_cleanly=1),
        events=(fleet.FleetEvent(11.0, "Stopping", "emails-2", "deletion cost -100"),),
        redis="embedded 127.0.0.1:1234",
    )


def _render(snapshot: runner.Snapshot) -> str:
    console = Console(width=160, record=True, color_system=None)
    console.print(view.build_view(snapshot))
    return console.export_text()


def test_the_view_shows_backlog_in_flight_dlq_replicas_and_the_decision_reason() -> None:
    text = _render(_snapshot(reachable=True))
    assert "530" in text and "DLQ" in text and "in flight" in text
    assert "ScaledUp 2→4" in text
    assert "Stopping" in text and "emails-2" in text
    assert "1 draining" in text
    assert "Ctrl-C" in text


def test_the_view_says_when_the_queue_is_unreachable() -> None:
    text = _render(_snapshot(reachable=False))
    assert "unreachable" in text
    assert "metricFailureHold" in view.build_line(_snapshot(reachable=False))


def test_the_plain_line_carries_the_counts_and_the_explanation() -> None:
    line = view.build_line(_snapshot(reachable=True))
    assert "backlog=530 in_flight=6 dlq=3 replicas=2 ready=1 desired=4" in line
    assert "signals backlog=5.30" in line


def test_the_pools_view_shows_one_row_per_pool_with_its_queue_replicas_and_last_decision() -> None:
    # Given the latest snapshot of two pools (one whose queue could not be read)
    email, fulfilment = _snapshot(reachable=True), _snapshot(reachable=False)
    fulfilment = dataclasses.replace(fulfilment, pool="shop-fulfilment", queue="orders:fulfil")
    # When the events demo's view renders them
    console = Console(width=160, record=True, color_system=None)
    console.print(view.build_pools_view([email, fulfilment], "orders: burst (20 orders/s)"))
    text = console.export_text()
    # Then each pool is a row with its numbers, and the footer says where the load is
    [email_row] = [line for line in text.splitlines() if " emails " in line]
    assert "530" in email_row and "ScaledUp 2→4" in email_row
    [fulfil_row] = [line for line in text.splitlines() if "shop-fulfilment" in line]
    assert "orders:fulfil" in fulfil_row and "?" in fulfil_row
    assert "orders: burst (20 orders/s)" in text


def test_a_crashed_workers_last_words_are_its_last_record_shortened(tmp_path: Path) -> None:
    # a JSON record gives its message and error; a plain line (stderr) is taken as it is
    log = tmp_path / "w.log"
    log.write_text(
        '{"msg": "worker started"}\n'
        '{"msg": "cannot open the broker", "error": "ConfigError: bad URL"}\n\n'
    )
    assert fleet.read_last_words(log) == "cannot open the broker (ConfigError: bad URL)"
    log.write_text("Traceback ...\nRuntimeError: " + "x" * 500 + "\n")
    said = fleet.read_last_words(log)
    assert said.startswith("RuntimeError: xxx") and len(said) == 200 and said.endswith("…")
    assert fleet.read_last_words(tmp_path / "never-written.log") == ""


def test_a_fleet_event_line_is_timed_from_the_start_of_the_run() -> None:
    event = fleet.FleetEvent(at=105.25, kind="Crashed", pod="p-0", detail="exit code 2")
    assert view.build_event_line(event, started=100.0) == "[    5.2s] p-0 Crashed: exit code 2"
