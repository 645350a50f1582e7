"""The live terminal view of ``workerfleet run``: queue, replicas, the last decision and why.

Pure builders of rich renderables from a :class:`runner.Snapshot`; the command line
(:mod:`workerfleet_operator.local.cli`) puts them in a ``rich.live.Live`` and, without a
terminal, prints :func:`build_line` once per decision change instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from workerfleet_operator import autoscaling
from workerfleet_operator.local import fleet, runner


def build_view(snapshot: runner.Snapshot) -> RenderableType:
    """The whole screen for one snapshot."""
    title = (
        f"workerfleet run · pool [bold]{snapshot.pool}[/] · queue [bold]{snapshot.queue}[/] "
        f"· redis {snapshot.redis} · {snapshot.at:.0f}s"
    )
    return Panel(
        Group(
            _build_numbers(snapshot),
            Text(_build_workers_line(snapshot), style="dim"),
            Text(""),
            _build_decision(snapshot),
            Text(""),
            _build_events(snapshot),
        ),
        title=title,
        subtitle="Ctrl-C drains the workers and exits",
    )


def _build_numbers(snapshot: runner.Snapshot) -> Table:
    table = Table(box=None, pad_edge=False, expand=False)
    for column in ("backlog", "in flight", "delayed", "DLQ", "oldest", "replicas", "ready"):
        table.add_column(column, justify="right")
    table.add_column("desired", justify="right")
    queue_cells = _build_queue_cells(snapshot)
    desired = str(snapshot.decision.desired)
    if snapshot.decision.scaling_limited:
        desired += " [yellow](limited)[/]"
    table.add_row(*queue_cells, str(snapshot.replicas), str(snapshot.ready), desired)
    return table


def _build_queue_cells(snapshot: runner.Snapshot) -> list[str]:
    """backlog, in flight, delayed, DLQ and oldest age as table cells (``?`` when unread)."""
    s = snapshot.queue_stats
    if s is None:
        return ["?"] * 5
    return [
        str(s.backlog),
        str(s.in_flight),
        str(s.future_delayed),
        f"[red]{s.dead_letter}[/]" if s.dead_letter else "0",
        f"{s.oldest_job_age_seconds:.1f}s",
    ]


def _build_workers_line(snapshot: runner.Snapshot) -> str:
    counters = snapshot.counters
    line = (
        f"workers: started {counters.started} · crashed {counters.crashed} · "
        f"restarted {counters.restarted} · stopped {counters.stopped_cleanly} · "
        f"killed {counters.killed}"
    )
    if snapshot.terminating:
        line = f"{snapshot.terminating} draining · " + line
    return line


def _build_decision(snapshot: runner.Snapshot) -> Table:
    decision = snapshot.decision
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold")
    grid.add_column()
    if snapshot.error:
        grid.add_row("queue", f"[red]unreachable[/]: {snapshot.error}")
    grid.add_row("decision", decision.reason)
    signals = ", ".join(
        f"{name} {'off' if value is None else f'{value:.2f}'}"
        for name, value in decision.signals.items()
    )
    grid.add_row("signals", signals)
    rates = decision.rates
    if rates.arrival is not None and rates.completion is not None:
        grid.add_row(
            "rates", f"arrival {rates.arrival:.1f}/s · completion {rates.completion:.1f}/s"
        )
    if decision.clamps:
        grid.add_row("shaped by", " → ".join(decision.clamps))
    if snapshot.last_change is not None and snapshot.last_change_at is not None:
        grid.add_row(
            "last change", f"{snapshot.last_change_at:.0f}s: {snapshot.last_change.reason}"
        )
    return grid


def _build_events(snapshot: runner.Snapshot) -> Table:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="dim")
    grid.add_column()
    for event in snapshot.events[-5:]:
        grid.add_row(event.kind, f"{event.pod} {event.detail}".strip())
    return grid


NOTEWORTHY_EVENTS = ("Crashed", "Restarted", "Killed")
"""Fleet events a plain run prints as lines of their own (scaling shows in the decisions)."""


def build_event_line(event: fleet.FleetEvent, started: float) -> str:
    """One plain line for a fleet event (``started``: the run's start on the event clock)."""
    return f"[{event.at - started:7.1f}s] {event.pod} {event.kind}: {event.detail}".rstrip(": ")


def build_line(snapshot: runner.Snapshot) -> str:
    """One plain log line for a snapshot (no terminal, or a scripted run)."""
    s = snapshot.queue_stats
    queue = (
        "queue unreachable"
        if s is None
        else f"backlog={s.backlog} in_flight={s.in_flight} dlq={s.dead_letter}"
    )
    return (
        f"[{snapshot.at:7.1f}s] {queue} replicas={snapshot.replicas} ready={snapshot.ready} "
        f"desired={snapshot.decision.desired} :: {autoscaling.explain_decision(snapshot.decision)}"
    )


def build_pools_view(snapshots: Sequence[runner.Snapshot], footer: str) -> RenderableType:
    """Several pools side by side, one row each (``workerfleet demo --scenario events``)."""
    table = Table(box=None, pad_edge=False, expand=False)
    for column in ("pool", "queue", "backlog", "in flight", "delayed", "DLQ", "oldest"):
        table.add_column(column, justify="left" if column in ("pool", "queue") else "right")
    for column in ("replicas", "desired", "last decision"):
        table.add_column(column, justify="left" if column == "last decision" else "right")
    for snapshot in snapshots:
        table.add_row(
            snapshot.pool,
            snapshot.queue,
            *_build_queue_cells(snapshot),
            str(snapshot.replicas),
            str(snapshot.decision.desired),
            snapshot.last_change.reason.split(":")[0] if snapshot.last_change else "",
        )
    at = max((s.at for s in snapshots), default=0.0)
    return Panel(
        Group(table, Text(""), Text(footer)),
        title=f"workerfleet demo · events · {at:.0f}s",
        subtitle="Ctrl-C drains the workers and exits",
    )
