"""The CLI's tables keep ids and names whole and cut only the one column that may be cut."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable

import pytest
from rich.console import Console
from rich.text import Text

from worker_runtime import queue_commands
from worker_runtime.brokers import base

JOB_ID = "e27e58ff29b4de989ca38a90f1e78020"
WORKER = "workerpool-emails-7d9f8c6b5-x2x9z-31737-9810aa"


def _render(table: object, width: int) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=width, highlight=False, color_system=None).print(table)
    return out.getvalue().splitlines()


def _rows(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("│")]


def test_on_an_80_column_terminal_only_the_cut_column_is_shortened() -> None:
    # Given a job whose id, task and worker id together are wider than 80 columns
    row = [Text(c) for c in (JOB_ID, "a-rather-long-task-name.sleep", WORKER, "27.1s")]
    # When its table is fitted to an 80-column terminal, cutting the worker id
    table, width = queue_commands.build_fitted_table(
        "jobs", ("job id", "task", "worker", "lease left"), [row], cut="worker", terminal=80
    )
    (line,) = _rows(_render(table, width))
    # Then the id, the task and the lease are whole, the worker id is cut with an ellipsis to
    # its least width, and the line is as wide as the table says
    assert JOB_ID in line and "a-rather-long-task-name.sleep" in line and "27.1s" in line
    assert WORKER not in line and "workerpool-emails-7…" in line
    assert len(line) == width


def test_the_cut_column_takes_the_room_a_terminal_leaves_and_nothing_is_cut_that_fits() -> None:
    row = [Text(c) for c in (JOB_ID, "send", WORKER)]
    table, width = queue_commands.build_fitted_table(
        "jobs", ("job id", "task", "worker"), [row], cut="worker", terminal=200
    )
    (line,) = _rows(_render(table, width))
    assert JOB_ID in line and WORKER in line and "…" not in line
    assert width <= 200


def test_piped_output_keeps_up_to_120_characters_of_the_cut_column_on_one_line() -> None:
    # Given an error of three lines and 400 characters
    error = "ValidationError: 1 validation error\nto\n  " + "x" * 400
    row = [Text(JOB_ID), Text(error)]
    # When its table is fitted for a pipe (no terminal)
    table, width = queue_commands.build_fitted_table(
        "dead letters", ("job id", "last error"), [row], cut="last error", terminal=None
    )
    lines = _render(table, width)
    # Then the error is on the id's line, its line breaks folded, cut at 120 characters
    (line,) = _rows(lines)
    assert JOB_ID in line and "ValidationError: 1 validation error to " in line
    assert "x" * 60 in line and "x" * 120 not in line and line.rstrip(" │").endswith("…")


class CountingPipe(io.StringIO):
    """A stdout that is not a terminal and counts its write calls (each one a write(2))."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        if text:  # an empty write sends nothing down the pipe
            self.writes.append(text)
        return super().write(text)

    def isatty(self) -> bool:
        return False


def test_watching_stats_to_a_pipe_writes_each_frame_with_its_blank_line_in_one_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given stdout is a pipe (kubectl exec without -t) with no buffer of its own in between
    pipe = CountingPipe()
    monkeypatch.setattr(sys, "stdout", pipe)
    stats = base.QueueStats(
        queue="emails", now=0.0, backlog=3, due_delayed=0, future_delayed=1, in_flight=2,
        dead_letter=4, oldest_job_age_seconds=1.5, enqueued_total=10, completed_total=5,
        failed_total=1, retried_total=1, dead_lettered_total=4, cancelled_total=2,
        workers_lost_total=0, workers_expired=0, workers=(),
    )  # fmt: skip

    # When two ticks are shown, a frame and a failed read
    def two_ticks(show: Callable[[base.QueueStats | str], None]) -> None:
        show(stats)
        show("cannot reach redis://127.0.0.1:6390/0")

    queue_commands._watch_stats(two_ticks, as_json=False)
    # Then each tick is exactly one write, ending with the blank line that ends a frame (a
    # reader that stops at a blank line never holds half a frame)
    assert len(pipe.writes) == 2
    frame, failure = pipe.writes
    assert "emails" in frame and "dead letters" in frame
    assert frame.endswith("\n\n") and frame.count("\n\n") == 1
    assert failure == "cannot reach redis://127.0.0.1:6390/0\n\n"
