"""The commands that read or change a queue: ``queue stats|jobs``, ``topic lag``, ``trace``,
``dlq ls|summary|show|replay|purge``, ``enqueue`` and ``job cancel|show``.

Registered by :func:`worker_runtime.cli.register_commands` and imported only when one of them
runs (so a worker's start never loads this module). Every read command has a ``--json`` variant
for scripts; the default output is a table that fits a terminal. The commands talk to the broker
only through the protocols of :mod:`worker_runtime.brokers.base` (``QueueProbe``,
``DeadLetters``, ``Broker.enqueue``, and the optional ``InFlightJobs`` and ``DeadLetterSteps``);
a command that needs something its broker lacks fails with
:class:`~worker_runtime.errors.CapabilityMissing` naming the broker and the missing capability.
Connection settings: as :mod:`worker_runtime.cli` says.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import textwrap
import time
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Collection,
    Iterator,
    Sequence,
)
from typing import TYPE_CHECKING, Any, TypeVar

from worker_runtime import cli, logs
from worker_runtime.cli import CliError, guard

if TYPE_CHECKING:
    from rich.text import Text

    from worker_runtime.brokers import base

R = TypeVar("R")


# ---- helpers ---------------------------------------------------------------------------------


def _pool_target(args: argparse.Namespace) -> tuple[str, str] | None:
    """(URL, queue) of ``--pool``, looked up once per command; None without --pool."""
    pool = getattr(args, "pool", None)
    if not pool:
        return None
    cached: tuple[str, str] | None = getattr(args, "_pool_target", None)
    if cached is None:
        if cli.POOL_RESOLVER is None:
            msg = (
                "--pool reads WorkerPools: run it as `workerfleet`, not `python -m "
                f"worker_runtime`, with the operator extra ({cli.describe_install('operator')})"
            )
            raise CliError(msg)
        if args.redis_url or getattr(args, "broker_url", None) or args.queue:
            msg = "--pool finds the queue and its broker URL: drop --broker-url/--redis-url/--queue"
            raise CliError(msg)
        try:
            cached = cli.POOL_RESOLVER(str(pool), getattr(args, "kubeconfig", None))
        except LookupError as exc:
            raise CliError(str(exc)) from None
        args._pool_target = cached
    return cached


BROKER_NAMES = {"amqp": "RabbitMQ", "amqps": "RabbitMQ", "sqs": "SQS", "memory": "memory"}
"""How messages name a broker by its URL scheme (every other served scheme is Redis)."""


def broker_name(url: str) -> str:
    """``Redis``, ``RabbitMQ``, ``SQS`` or ``memory``: the broker a URL names, for messages."""
    return BROKER_NAMES.get(url.partition("://")[0].lower(), "Redis")


def _broker_url(args: argparse.Namespace) -> str:
    """The broker URL of a queue/dlq/enqueue command (checked, never echoed)."""
    from worker_runtime import brokers, errors

    target = _pool_target(args)
    flag = getattr(args, "broker_url", None)
    if flag and args.redis_url:
        msg = "pass --broker-url or --redis-url, not both"
        raise CliError(msg)
    url = (
        target[0]
        if target
        else flag
        or args.redis_url
        or os.environ.get("WORKERFLEET_BROKER_URL")
        or os.environ.get("WORKERFLEET_REDIS_URL")
    )
    if not url:
        msg = (
            "no Redis URL or other broker URL: pass --broker-url (or --redis-url) or set "
            "WORKERFLEET_BROKER_URL (or WORKERFLEET_REDIS_URL)"
        )
        raise CliError(msg)
    url = str(url)
    try:
        scheme = brokers.scheme_of(url)
    except errors.ConfigError as exc:
        raise CliError(f"unusable broker URL: {exc}") from None
    if scheme in brokers.REDIS_SCHEMES:
        from worker_runtime.brokers.redis import connection

        try:
            connection.parse_redis_url(url)
        except connection.InvalidRedisURL as exc:
            raise CliError(f"unusable Redis URL: {exc}") from None
    args._broker_name = broker_name(url)
    return url


def _queue_name(args: argparse.Namespace) -> str:
    target = _pool_target(args)
    name = (target[1] if target else None) or args.queue or os.environ.get("WORKERFLEET_QUEUE")
    if not name:
        msg = "no queue: pass --queue or set WORKERFLEET_QUEUE"
        raise CliError(msg)
    return str(name)


def _run_on_broker(
    url: str, queue: str, call: Callable[[Any], Awaitable[R]], *, role: str = "producer"
) -> R:
    """``await call(broker)`` on a broker of its own for ``queue`` at ``url`` (closed after).

    Never as the queue's consumer: its workers own the queue's settings (on SQS its visibility
    timeout and redrive limit), which a command must not reset to the defaults. A ``role`` of
    ``"reader"`` (statistics) creates nothing either; a producer (enqueue, the dlq commands,
    which may replay) creates a queue that is missing and changes no existing one.

    A ``ValueError`` from the broker (how its protocols refuse arguments) is a usage error
    naming the broker (exit 2), never a traceback."""
    from worker_runtime import brokers, errors

    async def go() -> R:
        broker = await brokers.open_broker(url, queue, role=role)
        try:
            return await call(broker)
        except errors.ConfigError:
            raise  # already one line (a ValueError too)
        except ValueError as exc:
            msg = f"the {broker_name(url)} broker refused the request: {exc}"
            raise CliError(msg) from None
        finally:
            await broker.close()

    return asyncio.run(go())


def _missing(url: str, what: str, protocol: str) -> Exception:
    from worker_runtime import errors

    return errors.CapabilityMissing(
        f"the {broker_name(url)} broker cannot {what} (it does not implement {protocol})",
        operation=protocol,
    )


def _dead_letters(broker: Any, url: str) -> base.DeadLetters:
    """The broker's DLQ side, or CapabilityMissing naming the broker."""
    from worker_runtime.brokers import base

    if not isinstance(broker, base.DeadLetters):
        raise _missing(url, "read or change its dead letters", "DeadLetters")
    return broker


def _probe(broker: Any, url: str) -> base.QueueProbe:
    """The broker's statistics side, or CapabilityMissing naming the broker."""
    from worker_runtime.brokers import base

    if not isinstance(broker, base.QueueProbe):
        raise _missing(url, "report queue statistics", "QueueProbe")
    return broker


UNKNOWN_QUEUE_LISTING_LIMIT = 1000
"""How many queue names :func:`_note_if_unknown_queue` reads; past that it says nothing."""


def _note_if_unknown_queue(url: str, queue: str) -> None:
    """On stderr, when no queue named ``queue`` ever held a job on the broker: a mistyped
    name reads as an empty queue (no backlog, no dead letters), the one answer that looks
    like all is well. Names the queues that exist, the nearest first. Best effort: a broker
    that cannot list its queues, or fails to, prints nothing."""
    import difflib

    from worker_runtime import errors
    from worker_runtime.brokers import base

    async def listing(broker: Any) -> list[str] | None:
        if not isinstance(broker, base.QueueListing):
            return None
        return await broker.list_queues(limit=UNKNOWN_QUEUE_LISTING_LIMIT)

    try:
        names = _run_on_broker(url, "workerfleet-cli", listing, role="reader")
    except errors.BrokerError:
        return
    if names is None or queue in names or len(names) >= UNKNOWN_QUEUE_LISTING_LIMIT:
        return
    near = difflib.get_close_matches(queue, names, n=3, cutoff=0.6)
    shown = near + [n for n in names if n not in near]
    if not shown:
        there = "no queue on this broker has held a job yet"
    else:
        more = f" and {len(shown) - 5} more" if len(shown) > 5 else ""
        there = "queues here: " + ", ".join(_printable(n) for n in shown[:5]) + more
    hint = f"; did you mean {near[0]!r}?" if near else ""
    print(
        f"note: no queue named {queue!r} has held a job on this broker{hint} ({there}; "
        "workerfleet queue ls)",
        file=sys.stderr,
    )


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def _console() -> Any:
    from rich.console import Console

    class GuardedConsole(Console):
        def on_broken_pipe(self) -> None:
            # rich ended the process with exit 1 when stdout's reader left (| head): the
            # guard ends it as for every other output, with 141 (1 says the broker is away)
            raise BrokenPipeError(32, "stdout's reader is gone")

    return GuardedConsole(highlight=False)


def _terminal_width() -> int | None:
    """The terminal's width in columns; None when output goes to a pipe or a file."""
    console = _console()
    return int(console.width) if console.is_terminal else None


_CUT_MIN, _CUT_MAX = 20, 120  # the one column a fitted table may cut: never narrower or wider


def build_fitted_table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Text]],
    *,
    cut: str,
    terminal: int | None,
    right: Collection[str] = (),
) -> tuple[Any, int]:
    """A rich table with every cell whole but column ``cut``'s, and the width it needs.

    Left to fit the console, rich shortened every column: piped output (80 columns) or an
    80-column terminal cut a 32-character job id to 10 characters, which no command accepts,
    and folded long cells over many lines. Here ids, names and numbers stay whole; column
    ``cut`` (a long error, a worker id) is folded to one line and cut to what a terminal of
    ``terminal`` columns leaves, at least 20 characters (a terminal narrower than that wraps
    the lines), and to 120 when piped (``terminal`` None).
    """
    from rich.table import Table
    from rich.text import Text

    # one line per row: a cell's own line breaks (a multi-line error) become spaces
    lines = [[Text(" ".join(c.plain.split())) if "\n" in c.plain else c for c in r] for r in rows]
    widths = [
        max([len(name), *(line[i].cell_len for line in lines)]) for i, name in enumerate(columns)
    ]
    at = list(columns).index(cut)
    frame = 3 * len(columns) + 1  # one rule per column edge, one space each side of a cell
    limit = _CUT_MAX
    if terminal is not None:
        limit = min(limit, max(_CUT_MIN, terminal - (sum(widths) - widths[at]) - frame))
    widths[at] = min(widths[at], max(limit, len(cut)))
    table = Table(title=title, title_justify="left")
    for name, width in zip(columns, widths, strict=True):
        table.add_column(
            name,
            no_wrap=True,
            overflow="ellipsis",
            width=width,
            justify="right" if name in right else "left",
        )
    for line in lines:
        table.add_row(*line)
    return table, sum(widths) + frame


def _fitted_console(width: int) -> Any:
    # Wider than the console when a fitted table needs it: rich would shorten every column.
    console = _console()
    console.width = max(console.width, width)
    return console


def _print_fitted(renderable: Any, width: int) -> None:
    _fitted_console(width).print(renderable)


def _text_fitted(renderable: Any, width: int) -> str:
    """What :func:`_print_fitted` prints, as text."""
    console = _fitted_console(width)
    with console.capture() as captured:
        console.print(renderable)
    return str(captured.get())


def _print_rows(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    cut: str,
    right: Collection[str] = (),
) -> None:
    """Print plain-text rows as a fitted table (cells as Text, never parsed as markup, and
    :func:`_printable`: they come from jobs and queues)."""
    from rich.text import Text

    cells = [[Text(_printable(cell)) for cell in row] for row in rows]
    table, width = build_fitted_table(
        title, columns, cells, cut=cut, terminal=_terminal_width(), right=right
    )
    _print_fitted(table, width)


def _printable(text: str) -> str:
    """``text`` for a terminal: bytes that were not UTF-8 (kept as lone surrogates so the id
    still addresses its entry) are shown escaped, ``\\xff``, instead of failing the output, and
    so are control characters, ``\\x1b``, ``\\r``, ``\\n``: ids, task names and error texts
    come from whoever enqueued the job, and an escape sequence would reach the terminal (colour
    it, move its cursor) and a newline or carriage return fake a line of output. Printable
    Unicode is kept as is."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return logs.escape_controls(text)


def _printable_lines(text: str) -> str:
    """:func:`_printable` of each line of ``text``: for free text of many lines (an error's
    message, a traceback), whose newlines are its own."""
    return "\n".join(_printable(line) for line in text.split("\n"))


def _utc(epoch: float) -> str:
    """An epoch time as ISO 8601 UTC to the second (what ``--since``/``--until`` accept)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _total(count: int | None) -> str:
    """A counter, or why there is none (the broker keeps no such total: SQS)."""
    return "not kept by this broker" if count is None else f"{count:,}"


def _age(seconds: float | None) -> str:
    from worker_runtime.brokers.redis import stats  # format_age is pure; no client is opened

    return stats.format_age(seconds)


# ---- queue stats -----------------------------------------------------------------------------


def build_stats_json(s: base.QueueStats) -> dict[str, Any]:
    """QueueStats as plain JSON (stable keys, for scripts and the tests)."""
    import dataclasses

    from worker_runtime import events

    data = dataclasses.asdict(s)
    data["workers"] = [dataclasses.asdict(w) for w in s.workers]
    # A subscription's queue also says which (topic, group) it is: its backlog and
    # oldest_job_age_seconds are the subscription's lag (workerfleet topic lag, the
    # workerfleet_pool_subscription_* series).
    parsed = events.parse_subscription_queue(s.queue)
    data["subscription"] = None if parsed is None else {"topic": parsed[0], "group": parsed[1]}
    return data


def _render_stats(s: base.QueueStats, terminal: int | None) -> tuple[Any, int]:
    """The stats as a renderable, and the width it needs (its workers table whole but for
    the worker ids, cut to fit ``terminal`` columns)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from worker_runtime import events

    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column(justify="right")
    parsed = events.parse_subscription_queue(s.queue)
    rows = [
        ("queue", s.queue),
        *([] if parsed is None else [("subscription", f"topic {parsed[0]}, group {parsed[1]}")]),
        ("backlog", f"{s.backlog:,}"),
        ("  due delayed", f"{s.due_delayed:,}"),
        ("delayed (future)", f"{s.future_delayed:,}"),
        ("in flight", f"{s.in_flight:,}"),
        ("dead letters", f"{s.dead_letter:,}"),
        ("oldest dead letter age", _age(s.oldest_dead_letter_age_seconds)),
        ("oldest job age", _age(s.oldest_job_age_seconds)),
        ("enqueued total", _total(s.enqueued_total)),
        ("completed total", _total(s.completed_total)),
        ("failed total", _total(s.failed_total)),
        ("retried total", _total(s.retried_total)),
        ("dead-lettered total", _total(s.dead_lettered_total)),
        ("cancelled total", _total(s.cancelled_total)),
        ("workers lost total", _total(s.workers_lost_total)),
        ("heartbeats expired", f"{s.workers_expired:,}"),
    ]
    for k, v in rows:
        summary.add_row(k, v)
    if not s.workers:
        return Group(summary, Text("no live workers", style="dim")), 0
    worker_rows = [
        [
            Text(cell)
            for cell in (
                w.worker_id,
                w.pod_name,
                f"{w.in_flight}/{w.concurrency}",
                f"{w.processed:,}",
                _age(w.busy_seconds),
                _age(s.now - w.started_at),
                _age(None if w.oldest_job_started_at is None else s.now - w.oldest_job_started_at),
                "draining" if w.draining else "running",
            )
        ]
        for w in s.workers
    ]
    workers, width = build_fitted_table(
        f"{len(s.workers)} live worker(s)",
        ("worker", "pod", "in flight", "processed", "busy", "up", "oldest job", "state"),
        worker_rows,
        cut="worker",
        terminal=terminal,
        right=("in flight", "processed", "busy", "up", "oldest job"),
    )
    return Group(summary, workers), width


def _looks_unused(s: base.QueueStats) -> bool:
    """Stats that a queue nobody ever used would show (and a mistyped name does)."""
    return not (
        s.enqueued_total
        or s.backlog
        or s.in_flight
        or s.due_delayed
        or s.future_delayed
        or s.dead_letter
        or s.workers
    )


@guard
def cmd_queue_stats(args: argparse.Namespace) -> int:
    """Print the queue's stats (one read-only round trip)."""
    url, queue = _broker_url(args), _queue_name(args)

    async def once(broker: Any) -> base.QueueStats:
        return await _probe(broker, url).fetch_stats()

    if args.watch is None:
        s = _run_on_broker(url, queue, once, role="reader")
        if args.json:
            _print_json(build_stats_json(s))
        else:
            _print_fitted(*_render_stats(s, _terminal_width()))
        if _looks_unused(s):
            _note_if_unknown_queue(url, queue)
        return 0

    from worker_runtime import errors

    def watch(show: ShowTick) -> None:
        async def ticks(broker: Any) -> None:
            while True:
                try:
                    show(await once(broker))
                except errors.BrokerError as exc:
                    # an incident is when the watch is wanted most: say so and keep watching
                    # (the client reconnects by itself once the broker answers again)
                    show(f"{_utc(time.time())}  {exc} (trying again)")
                await asyncio.sleep(max(0.2, args.watch))

        _run_on_broker(url, queue, ticks, role="reader")

    with contextlib.suppress(KeyboardInterrupt):
        _watch_stats(watch, as_json=args.json)
    return 0


ShowTick = Callable[["base.QueueStats | str"], None]
"""Shows one tick of ``queue stats --watch``: the stats, or a line saying the read failed."""


def _watch_stats(watch: Callable[[ShowTick], None], *, as_json: bool) -> None:
    """Run ``watch`` with the way each tick is shown: with ``--json`` one JSON object a line
    (a failed read a line on stderr); to a terminal a frame redrawn in place; to a pipe or a
    file (``kubectl exec`` without -t, ``| tee``) each frame as plain text and a blank line.
    Every tick is flushed at once (rich's live display showed a pipe nothing until it ended),
    and to a pipe each frame is one write."""
    if as_json:

        def show_json(tick: base.QueueStats | str) -> None:
            if isinstance(tick, str):
                print(f"workerfleet: {tick}", file=sys.stderr, flush=True)
            else:
                print(json.dumps(build_stats_json(tick), sort_keys=True, default=str), flush=True)

        watch(show_json)
        return
    if _terminal_width() is None:

        def show_plain(tick: base.QueueStats | str) -> None:
            # One write per frame, its blank line included: a reader of the pipe never gets
            # part of a frame (with PYTHONUNBUFFERED every print was a write of its own).
            frame = (
                f"{tick}\n" if isinstance(tick, str) else _text_fitted(*_render_stats(tick, None))
            )
            sys.stdout.write(f"{frame}\n")
            sys.stdout.flush()

        watch(show_plain)
        return
    from rich.live import Live
    from rich.text import Text

    with Live(auto_refresh=False) as live:

        def show_live(tick: base.QueueStats | str) -> None:
            frame = (
                Text(tick) if isinstance(tick, str) else _render_stats(tick, live.console.width)[0]
            )
            live.update(frame, refresh=True)

        watch(show_live)


def _fetch_topic_rows(
    args: argparse.Namespace, read: Callable[[Any], Awaitable[list[R]]]
) -> list[R]:
    """``await read(broker)`` on a broker of its own that has topics; with ``--json`` the rows
    are printed."""
    import dataclasses

    from worker_runtime.brokers import base

    url = _broker_url(args)

    async def call(broker: Any) -> list[R]:
        if not broker.capabilities.topics or not isinstance(broker, base.Topics):
            raise _missing(url, "read topics", "Topics")
        return await read(broker)

    rows = _run_on_broker(url, "workerfleet-cli", call, role="reader")
    if args.json:
        _print_json([dataclasses.asdict(row) for row in rows])  # type: ignore[call-overload]
    return rows


@guard
def cmd_topic_lag(args: argparse.Namespace) -> int:
    """Print how far each subscription of a topic is behind (read-only)."""
    from worker_runtime import events

    # the topic's own naming rule, before the broker: a bad name read as a bad queue name
    events.validate_event_type(args.topic)
    lag = _fetch_topic_rows(args, lambda broker: broker.fetch_topic_lag(args.topic))
    if args.json:
        return 0
    if not lag:
        print(f"no subscriptions on {args.topic}", file=sys.stderr)
    for entry in lag:
        print(
            f"{entry.group}\tbacklog={entry.backlog}\toldest={entry.oldest_event_age_seconds:.1f}s"
            f"\tin_flight={entry.in_flight}\tdelayed={entry.delayed}"
            f"\tdead_letter={entry.dead_letter}"
        )
    return 0


@guard
def cmd_trace(args: argparse.Namespace) -> int:
    """Print the jobs and events of one correlation id as a tree (from the trace index)."""
    from worker_runtime import events

    if not args.correlation_id.strip():
        msg = "name the correlation id to trace"
        raise CliError(msg)
    entries = _fetch_topic_rows(args, lambda broker: broker.fetch_trace(args.correlation_id))
    if args.json:
        return 0
    if not entries:
        print(f"no trace for {args.correlation_id} (unknown or expired)", file=sys.stderr)
        return 1
    # task names and event types come from whoever enqueued or published them
    print("\n".join(_printable(line) for line in events.render_trace_tree(entries)))
    return 0


@guard
def cmd_queue_jobs(args: argparse.Namespace) -> int:
    """List the jobs running now (like ``celery inspect active``)."""
    import dataclasses

    from worker_runtime.brokers import base

    url, queue = _broker_url(args), _queue_name(args)

    async def listing(broker: Any) -> list[base.InFlightJob]:
        if not isinstance(broker, base.InFlightJobs):
            raise _missing(url, "list the jobs in flight", "InFlightJobs")
        return await broker.list_in_flight_jobs(limit=args.limit)

    jobs = _run_on_broker(url, queue, listing, role="reader")
    if args.json:
        _print_json([dataclasses.asdict(j) for j in jobs])
        return 0
    if not jobs:
        print(f"nothing in flight on {queue}", file=sys.stderr)
        _note_if_unknown_queue(url, queue)
        return 0
    rows = [
        (
            _printable(j.job_id),
            j.task or "?",
            j.priority,
            j.worker_id,
            _age(j.running_seconds),
            str(j.deliveries),
            _age(j.lease_expires_in_seconds),
        )
        for j in jobs
    ]
    _print_rows(
        f"{len(jobs)} job(s) in flight on {queue}",
        ("job id", "task", "priority", "worker", "running", "deliveries", "lease left"),
        rows,
        cut="worker",
        right=("running", "deliveries", "lease left"),
    )
    return 0


@guard
def cmd_queue_ls(args: argparse.Namespace) -> int:
    """The queues the broker's server holds, with their numbers (read-only)."""
    from worker_runtime import brokers
    from worker_runtime.brokers import base

    url = _broker_url(args)

    async def listing(broker: Any) -> list[base.QueueStats]:
        if not isinstance(broker, base.QueueListing):
            raise _missing(url, "list its queues", "QueueListing")
        found = []
        for name in await broker.list_queues(limit=args.limit):
            queue = await brokers.open_broker(url, name, role="reader")
            try:
                found.append(await _probe(queue, url).fetch_stats())
            finally:
                await queue.close()
        return found

    found = _run_on_broker(url, "workerfleet-cli", listing, role="reader")
    if args.json:
        _print_json([build_stats_json(s) for s in found])
        return 0
    if not found:
        print("no queue has held a job here", file=sys.stderr)
        return 0
    rows = [
        (
            s.queue,
            f"{s.backlog:,}",
            f"{s.in_flight:,}",
            f"{s.future_delayed:,}",
            f"{s.dead_letter:,}",
            str(len(s.workers)),
            _age(s.oldest_job_age_seconds),
        )
        for s in found
    ]
    more = f" (the first {args.limit})" if len(found) >= args.limit else ""
    numbers = ("backlog", "in flight", "delayed", "dead letters", "workers", "oldest job")
    title = f"{len(found)} queue(s){more}"
    _print_rows(title, ("queue", *numbers), rows, cut="queue", right=numbers)
    return 0


# ---- dlq -------------------------------------------------------------------------------------


def build_dead_letter_json(d: base.DeadLetter) -> dict[str, Any]:
    """A DeadLetter as plain JSON; the envelope is decoded when it is valid JSON."""
    import dataclasses

    data = dataclasses.asdict(d)
    try:
        data["envelope"] = json.loads(d.envelope_raw)
    except (ValueError, TypeError):
        data["envelope"] = None
    return data


def _dead_letter_filter(args: argparse.Namespace) -> Any:
    """The filter of the command's --task/--reason/--error/--since/--until flags; with
    ``dlq purge --older-than``, a filter also selects only dead letters older than that."""
    import dataclasses

    from worker_runtime import triage

    now = time.time()
    try:
        where = triage.DeadLetterFilter(
            task=args.task,
            reason=args.reason,
            error=args.error,
            since=None if args.since is None else triage.parse_time_bound(args.since, now),
            until=None if args.until is None else triage.parse_time_bound(args.until, now),
        )
    except triage.InvalidTime as exc:
        raise CliError(str(exc)) from None
    upper = f"--until ({args.until})"
    older_than: float | None = getattr(args, "older_than", None)
    if older_than is not None and not where.is_empty:
        # A filter becomes a list of job ids, and a purge of ids has no age of its own: the
        # age must be part of the filter, or "--reason X --older-than 7d" deletes every X.
        # (--older-than alone is no filter: the broker purges by age, with no scan limit.)
        cutoff = now - older_than
        if where.until is None or cutoff < where.until:
            where = dataclasses.replace(where, until=cutoff)
            upper = f"--older-than ({_age(older_than)})"
    if where.since is not None and where.until is not None and where.since > where.until:
        # "--since 1h --until 2h" reads as a range but selects nothing: say so, not "none"
        msg = (
            f"--since ({args.since}) is after {upper}: nothing could match; "
            "--since is the older bound (e.g. --since 2h --until 1h)"
        )
        raise CliError(msg)
    return where


def _filter_words(where: Any) -> str:
    parts = [f"{k}={v}" for k, v in (("task", where.task), ("reason", where.reason),
                                       ("error", where.error)) if v is not None]  # fmt: skip
    if where.since is not None:
        parts.append(f"since {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(where.since))}Z")
    if where.until is not None:
        parts.append(f"until {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(where.until))}Z")
    return ", ".join(parts)


def _fetch_filtered(args: argparse.Namespace, *, offset: int, limit: int) -> tuple[str, Any, Any]:
    """Queue name, filter and page of the dead letters the command's filter flags select."""
    from worker_runtime import triage

    url, queue = _broker_url(args), _queue_name(args)
    where = _dead_letter_filter(args)
    page = _run_on_broker(
        url,
        queue,
        lambda broker: triage.fetch_matching_dead_letters(
            _dead_letters(broker, url), where, offset=offset, limit=limit
        ),
        role="reader",  # a read must not create the queue it names (a typo would)
    )
    return queue, where, page


def _say_no_dead_letters(
    args: argparse.Namespace, queue: str, where: Any, page: Any, *, offset: int
) -> None:
    """One line on stderr for a dlq read that found nothing to show: none at all, none that
    match the filter, or none past ``offset`` (a page past the end is not an empty DLQ)."""
    what = f" matching {_filter_words(where)}" if not where.is_empty else ""
    if offset and page.matched:
        print(
            f"no dead letters{what} in {queue} past the first {offset:,} "
            f"({page.matched:,} in all; a smaller --offset shows them)",
            file=sys.stderr,
        )
        return
    print(f"no dead letters{what} in {queue}", file=sys.stderr)
    if page.total == 0:
        _note_if_unknown_queue(_broker_url(args), queue)


@guard
def cmd_dlq_ls(args: argparse.Namespace) -> int:
    """List dead letters, newest first (filtered by --task/--reason/--error/--since/--until)."""
    queue, where, page = _fetch_filtered(args, offset=args.offset, limit=args.limit)
    items = list(page.items)
    if args.json:
        _print_json([build_dead_letter_json(d) for d in items])
        return 0
    if not items:
        _say_no_dead_letters(args, queue, where, page, offset=args.offset)
        return 0

    counted = f"{page.matched:,}" + ("" if page.complete else f"+ (first {page.scanned:,} read)")
    header = (
        f"{page.total:,} dead letter(s) in {queue}"
        if where.is_empty
        else f"{counted} of {page.total:,} dead letter(s) in {queue} match {_filter_words(where)}"
    )
    shown = f"showing {args.offset + 1}-{args.offset + len(items)}, newest first"
    now = time.time()
    from worker_runtime import triage

    # task names and error texts come from jobs ("[/red]"): _print_rows never parses markup
    rows = [
        (
            _printable(d.job_id),
            d.task or "",
            d.reason,
            str(d.attempts),
            str(d.deliveries),
            _age(now - d.dead_lettered_at),
            triage.describe_last_error(d),
        )
        for d in items
    ]
    _print_rows(
        f"{header}; {shown}",
        ("job id", "task", "reason", "attempts", "deliveries", "age", "last error"),
        rows,
        cut="last error",
        right=("attempts", "deliveries", "age"),
    )
    return 0


@guard
def cmd_dlq_summary(args: argparse.Namespace) -> int:
    """Dead letters grouped by reason and error type (with the tasks concerned)."""
    import dataclasses

    from worker_runtime import triage

    queue, where, page = _fetch_filtered(args, offset=0, limit=triage.SCAN_LIMIT)
    rows = triage.build_summary(page.items)
    if args.json:
        _print_json(
            {
                "total": page.total,
                "matched": page.matched,
                "complete": page.complete,
                "groups": [dataclasses.asdict(r) for r in rows],
            }
        )
        return 0
    if not rows:
        _say_no_dead_letters(args, queue, where, page, offset=0)
        return 0
    from rich.table import Table
    from rich.text import Text

    scope = "" if where.is_empty else f" matching {_filter_words(where)}"
    partial = "" if page.complete else f" (the newest {page.scanned:,} read)"
    table = Table(
        title=f"{page.matched:,} of {page.total:,} dead letter(s) in {queue}{scope}{partial}",
        title_justify="left",
    )
    for col in ("reason", "error type", "count", "tasks"):
        table.add_column(col, justify="right" if col == "count" else "left")
    for r in rows:
        table.add_row(
            *(
                Text(_printable(cell))
                for cell in (r.reason, r.error_type or "-", f"{r.count:,}", ", ".join(r.tasks))
            )
        )
    _console().print(table)
    return 0


@guard
def cmd_dlq_show(args: argparse.Namespace) -> int:
    """Show one dead letter: payload and failure history."""
    url, queue = _broker_url(args), _queue_name(args)

    d = _run_on_broker(
        url,
        queue,
        lambda broker: _dead_letters(broker, url).show_dead_letter(args.job_id),
        role="reader",
    )
    if d is None:
        print(
            f"workerfleet: no dead letter '{_printable(args.job_id)}' in {queue}", file=sys.stderr
        )
        _note_if_unknown_queue(url, queue)
        return 1
    data = build_dead_letter_json(d)
    if args.json:
        _print_json(data)
        return 0
    from rich.text import Text

    # every value comes from the job or its errors: printed as Text, never parsed as markup
    console = _console()
    console.print(
        Text.assemble(
            (_printable(d.job_id), "bold"),
            _printable(f"  task={d.task}  reason={d.reason}"),
        )
    )
    console.print(
        Text(
            _printable(
                f"attempts={d.attempts} deliveries={d.deliveries} lost={d.lost} "
                f"worker={d.worker_id or '-'} correlation_id={d.correlation_id or '-'}"
            )
        )
    )
    now = time.time()
    console.print(
        Text(f"dead-lettered {_utc(d.dead_lettered_at)} ({_age(now - d.dead_lettered_at)} ago)")
    )
    from worker_runtime import triage

    console.print(Text(_printable(f"why: {triage.explain_reason(d)}")))
    console.print(Text(f"payload: {json.dumps((data.get('envelope') or {}).get('payload'))}"))
    if d.envelope_base64 is not None:
        # an envelope that is not UTF-8: escaped for reading, exact bytes for tools
        console.print(Text(_printable(f"envelope (not UTF-8): {d.envelope_raw}")), soft_wrap=True)
        console.print(Text(f"envelope bytes (base64): {d.envelope_base64}"), soft_wrap=True)
    for i, f in enumerate(d.history, 1):
        # when, which try and which worker: what tells a flaky dependency from a bad payload
        where = f"{_utc(f.at)}  attempt {f.attempt}  delivery {f.delivery}"
        where += f"  worker {_printable(f.worker_id)}" if f.worker_id else ""
        console.print(Text.assemble((f"failure {i}", "bold"), f"  {where}"))
        console.print(Text(textwrap.indent(_printable_lines(f"{f.error_type}: {f.message}"), "  ")))
        trace = getattr(f, "traceback", "")
        if trace:
            console.print(Text(_printable_lines(trace.rstrip()), style="dim"))
    return 0


def _dlq_selection(
    args: argparse.Namespace, chosen: bool, hint: str
) -> tuple[str, str, list[str] | None]:
    """URL, queue and job ids of a dlq command that acts on some dead letters.

    Job ids are given, or found by the filters (newest first, within triage.SCAN_LIMIT; for a
    purge, only those older than its --older-than), or None: ``--all`` or ``hint`` (the
    command's own selection) decide.
    """

    where = _dead_letter_filter(args)
    if not args.job_ids and not args.all and not chosen and where.is_empty:
        msg = f"name job ids, or pass {hint}, or filter with --task/--reason/--error/--since"
        raise CliError(msg)
    url, queue = _broker_url(args), _queue_name(args)
    if where.is_empty:
        return url, queue, list(args.job_ids) or None
    if args.job_ids:
        msg = "name job ids or filter, not both"
        raise CliError(msg)
    found = _matching_ids(url, queue, where)
    return url, queue, list(reversed(found))  # oldest first, as a replay goes


def _matching_ids(url: str, queue: str, where: Any) -> list[str]:
    """Job ids of the dead letters ``where`` selects, newest first (within triage.SCAN_LIMIT)."""
    from worker_runtime import triage

    return _run_on_broker(
        url,
        queue,
        lambda broker: triage.fetch_matching_ids(_dead_letters(broker, url), where),
        role="reader",
    )


def _dry_run_ids(url: str, queue: str, ids: list[str] | None, limit: int | None) -> list[str]:
    from worker_runtime import triage

    if ids is None:
        ids = list(reversed(_matching_ids(url, queue, triage.DeadLetterFilter())))
    return ids if limit is None else ids[:limit]


REPLAY_CHUNK = 100
"""Most dead letters one replay call moves: the CLI checks Ctrl-C and the rate between calls."""

BROKER_REPLAY_RATE = 1_000_000.0
"""The rate a replay call is given: the CLI paces between calls, where Ctrl-C can stop the wait.
A broker paces its own call too, and at 100 a second it held every ``--rate`` above 100 to 100
(each chunk of 100 then waited a second inside the broker)."""


@guard
def cmd_dlq_replay(args: argparse.Namespace) -> int:
    """Replay dead letters onto the queue, rate-limited."""
    url, queue, ids = _dlq_selection(args, args.limit is not None, "--all or --limit N")
    if args.dry_run:
        would = _dry_run_ids(url, queue, ids, args.limit)
        if args.json:
            _print_json({"dry_run": True, "would_replay": len(would), "job_ids": would})
        else:
            for job_id in would:
                print(_printable(job_id))
            print(f"dry run: would replay {len(would)} job(s) onto {queue}", file=sys.stderr)
        return 0
    if ids is not None and not ids:
        print(f"no dead letters match in {queue}; nothing replayed", file=sys.stderr)
        if args.json:
            _print_json({"replayed": 0, "job_ids": []})
        return 0
    if ids is not None and args.limit is not None:
        ids = ids[: args.limit]
    replayed: list[str] = []
    held_back: list[str] = []  # named dead letters left in the DLQ: their id is live again
    total = [len(ids) if ids is not None else 0]
    interrupted = [False]
    cut = [0]  # jobs of the call a second Ctrl-C cancelled (it may have replayed some)
    failure: list[Exception] = []  # the broker error that ended the replay part-way

    async def go(broker: Any) -> None:
        # Ctrl-C stops between chunks: the chunk in flight finishes and is counted, so the
        # summary says exactly what was replayed (a cancelled broker call could have run). A
        # second Ctrl-C cancels that chunk's call too, and the summary says it may have run.
        letters = _dead_letters(broker, url)
        stop = _stop_on_ctrl_c()
        if ids is None:
            try:
                count = await stop.call(letters.count_dead_letters(), writes=False)
            except _StoppedMidCall:
                interrupted[0] = True
                return
            total[0] = count if args.limit is None else min(count, args.limit)
        chunk = max(1, min(REPLAY_CHUNK, int(args.rate)))  # about one second of work
        replaying = _progress(f"replaying onto {queue}", total[0], quiet=args.json)
        with replaying as advance, _kept_broker_error(failure):
            remaining = args.limit
            pending = list(ids) if ids is not None else None
            while not stop.is_set():
                started = time.monotonic()
                part: list[str] | None = None
                if pending is not None:
                    part, pending = pending[:chunk], pending[chunk:]
                size = len(part) if part is not None else chunk
                if remaining is not None and part is None:
                    size = min(size, remaining)
                if size <= 0:
                    break
                try:
                    done = await stop.call(letters.replay_dead_letters(
                        job_ids=part, limit=None if part is not None else size,
                        reset_attempts=args.reset_attempts, rate_per_second=BROKER_REPLAY_RATE,
                    ))  # fmt: skip
                except _StoppedMidCall:
                    cut[0] = size
                    break
                replayed.extend(done)
                advance(size if part is not None else len(done))
                if part is None:
                    if remaining is not None:
                        remaining -= len(done)
                    if len(done) < size:
                        break  # the DLQ has no more (or only entries live again)
                pause = len(done) / args.rate - (time.monotonic() - started)  # the rate limit
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=max(0.0, pause))
            interrupted[0] = stop.is_set()
        if failure or cut[0]:
            return  # the broker failed or hangs: asking it about the named ids would too
        # A named id that is still a dead letter was held back: a job with the same id is
        # live (Redis never replays onto a live id: the job would run twice). Not "no dead
        # letter", which is what it said while `dlq ls` listed it.
        done_ids = set(replayed)
        left = [j for j in dict.fromkeys(args.job_ids or []) if j not in done_ids]
        left = left[:LIVE_CHECK_LIMIT]
        with contextlib.suppress(_StoppedMidCall):
            absent = set(await stop.call(_fetch_absent_ids(letters, left), writes=False))
            held_back.extend(j for j in left if j not in absent)

    if args.rate <= 0:
        msg = "--rate must be positive"
        raise CliError(msg)
    if not args.json:
        print(f"replaying at most {args.rate:g} job(s)/s ...", file=sys.stderr)
    _run_on_broker(url, queue, go)
    done_ids = set(replayed) | set(held_back)
    missing = [job_id for job_id in args.job_ids or [] if job_id not in done_ids]
    problems = [
        p
        for p in (_describe_missing(missing, queue), _describe_held_back(held_back, queue))
        if p is not None
    ]
    return _report_outcome(
        args, interrupted=interrupted[0], failure=failure[0] if failure else None,
        summary=f"replayed {len(replayed)} of {total[0]} job(s) onto {queue}",
        cut=f"the call stopped at the second Ctrl-C may have replayed up to {cut[0]} more"
        if cut[0] else None,
        done=f"replayed {len(replayed)} job(s) onto {queue}",
        result={
            "replayed": len(replayed),
            "job_ids": replayed,
            **({"not_found": missing} if missing else {}),
            **({"held_back": held_back} if held_back else {}),
        },
        missing="; ".join(problems) or None, queue_at=(url, queue),
    )  # fmt: skip


LIVE_CHECK_LIMIT = 100
"""Named ids a replay looks up again when they were not replayed (:func:`_fetch_absent_ids`)."""


def _describe_held_back(ids: Sequence[str], queue: str) -> str | None:
    """Named dead letters a replay left in the DLQ because a job with the same id is live."""
    if not ids:
        return None
    return (
        f"{len(ids)} named job id(s) stay dead-lettered because a job with the same id is "
        f"live in {queue} now (replayed, it would run twice); replay them once it is done: "
        f"{_list_ids(ids)}"
    )


@contextlib.contextmanager
def _kept_broker_error(failure: list[Exception]) -> Iterator[None]:
    """Ends the block at a broker error, kept in ``failure``: a long dlq command then reports
    what it did before it (the broker calls that returned), not only the error."""
    from worker_runtime import errors

    try:
        yield
    except errors.BrokerError as exc:
        failure.append(exc)


def _report_outcome(
    args: argparse.Namespace,
    *,
    interrupted: bool,
    summary: str,
    done: str,
    result: dict[str, Any],
    missing: str | None = None,
    failure: Exception | None = None,
    cut: str | None = None,
    queue_at: tuple[str, str] | None = None,
) -> int:
    """The last lines of a long dlq command: what was done before a broker error (exit 1), a
    Ctrl-C summary (exit 130; ``cut`` says what a call a second Ctrl-C cancelled may have done)
    or what was done; exit 1 when job ids named on the command line were not dead letters
    (``missing`` says, followed by the note of :func:`_note_if_unknown_queue` on the ``(url,
    queue)`` of ``queue_at``: every named id of a mistyped queue name has no dead letter)."""
    if failure is not None:
        print(
            f"workerfleet: {summary}, then: {_printable(str(failure))}\nworkerfleet: the rest stay "
            "dead-lettered; the call that failed may have done its part before it failed "
            "(workerfleet dlq ls shows what is left)",
            file=sys.stderr,
        )
        if args.json:
            _print_json({**result, "error": str(failure)})
        return 1
    if interrupted:
        if cut is None:
            print(f"interrupted: {summary}; the rest stay dead-lettered", file=sys.stderr)
        else:
            print(
                f"interrupted: {summary}; {cut}, the rest stay dead-lettered "
                "(workerfleet dlq ls shows what is left)",
                file=sys.stderr,
            )
        if args.json:
            _print_json({**result, "interrupted": True, **({"cut_call": cut} if cut else {})})
        return cli.INTERRUPTED_EXIT
    if args.json:
        _print_json(result)
    else:
        print(done)
    if missing:
        print(f"workerfleet: {missing}", file=sys.stderr)
        if queue_at is not None:
            _note_if_unknown_queue(*queue_at)
        return 1
    return 0


def _describe_missing(ids: Sequence[str], queue: str) -> str | None:
    """Why a dlq command did less than it was told: named ids with no dead letter in ``queue``
    (already replayed or purged, mistyped, or another queue's), the first five listed."""
    if not ids:
        return None
    return f"{len(ids)} named job id(s) had no dead letter in {queue}: {_list_ids(ids)}"


def _list_ids(ids: Sequence[str]) -> str:
    """The first five of ``ids``, printable, and ``...`` when there are more."""
    return ", ".join(_printable(i) for i in ids[:5]) + (" ..." if len(ids) > 5 else "")


@contextlib.contextmanager
def _progress(what: str, total: int, *, quiet: bool) -> Iterator[Callable[[int], None]]:
    """A progress bar with rate and ETA on stderr (none with --json); yields ``advance(n)``."""
    if quiet or total <= 0:
        yield lambda _n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("ETA"), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


class _StoppedMidCall(Exception):
    """A second Ctrl-C cancelled the broker call in flight (it may have done part of its work)."""


class _CtrlC:
    """Ctrl-C (SIGINT) during a long dlq command, in the running loop.

    The first stops the command between broker calls: the call in flight finishes and is
    counted, so the summary is exact. A second stops the call in flight too (:meth:`call`
    raises :class:`_StoppedMidCall`): with the broker hung (a frozen server, a network gone
    quiet) the first alone waited out the client's timeouts and retries, 10 to 25 s on Redis.
    """

    def __init__(self) -> None:
        self._first = asyncio.Event()
        self._second = asyncio.Event()
        self.cut = False  # a second Ctrl-C cancelled a call: its part of the work is unknown

    def is_set(self) -> bool:
        """Whether Ctrl-C was pressed: stop before the next broker call."""
        return self._first.is_set()

    async def wait(self) -> None:
        """Until Ctrl-C is pressed (the rate limit's pause waits on it)."""
        await self._first.wait()

    def on_sigint(self) -> None:
        """The signal handler: stop between calls, or at once when already stopping."""
        if self._first.is_set():
            self._second.set()
            return
        self._first.set()
        print(
            "stopping after the broker call in flight (Ctrl-C again to stop it at once)",
            file=sys.stderr,
        )

    async def call(self, step: Awaitable[R], *, writes: bool = True) -> R:
        """``await step`` unless a second Ctrl-C comes first: then it is cancelled, and
        :class:`_StoppedMidCall` raised (at once when it came before). ``writes``: the step
        may change the queue, so a cancelled one leaves :attr:`cut` set."""
        running = asyncio.ensure_future(step)
        second = asyncio.ensure_future(self._second.wait())
        try:
            await asyncio.wait({running, second}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            second.cancel()
        if running.done():
            return running.result()
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await running
        self.cut = self.cut or writes
        raise _StoppedMidCall


def _stop_on_ctrl_c() -> _CtrlC:
    """Ctrl-C handling for a long command (see :class:`_CtrlC`), installed in the running loop."""
    stop = _CtrlC()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.on_sigint)
    return stop


def _check_purge_selection(args: argparse.Namespace) -> None:
    """One way of saying what a purge deletes: job ids, ``--all``, or ``--older-than`` and the
    filters (each narrowing the other). A broker's purge takes exactly one selection, and
    ``--all`` beside another one read differently on each broker (everything, only the old
    ones, or a refusal), as did ids beside an age (the age was dropped)."""
    filtered = not _dead_letter_filter(args).is_empty
    if args.all and (args.job_ids or args.older_than is not None or filtered):
        msg = (
            "--all deletes every dead letter: pass it alone, or select with job ids, "
            "--older-than or --task/--reason/--error/--since/--until instead"
        )
        raise CliError(msg)
    if args.job_ids and args.older_than is not None:
        msg = "name job ids or select with --older-than, not both"
        raise CliError(msg)


@guard
def cmd_dlq_purge(args: argparse.Namespace) -> int:
    """Delete dead letters, a broker call at a time, with progress and a summary on Ctrl-C."""
    _check_purge_selection(args)
    url, queue, ids = _dlq_selection(
        args, args.older_than is not None, "--all --yes or --older-than DURATION --yes"
    )
    filtered = ids is not None and not args.job_ids
    if filtered and not ids:  # nothing to confirm: no --yes asked for deleting nothing
        print(f"no dead letters match in {queue}; nothing purged", file=sys.stderr)
        if args.json:
            _print_json({"purged": 0})
        return 0
    if ids is None or filtered:  # anything but named ids is confirmed with --yes
        _require_yes(args, len(ids) if ids is not None else None)
    purged = [0]
    total = [len(ids) if ids is not None else 0]
    interrupted = [False]
    cut = [False]  # a second Ctrl-C cancelled a purge call (it may have deleted some)
    failure: list[Exception] = []  # the broker error that ended the purge part-way
    absent: list[str] = []  # named ids with no dead letter (a purge counts, it does not list)

    async def go(broker: Any) -> None:
        # Ctrl-C stops between broker calls: the call in flight finishes and is counted, so
        # the summary says exactly how many were deleted (a second Ctrl-C cancels that call,
        # and the summary says it may have deleted some)
        letters = _dead_letters(broker, url)
        stop = _stop_on_ctrl_c()
        try:  # reads: a second Ctrl-C during them stops the purge before it deleted anything
            if args.job_ids:
                named = list(dict.fromkeys(args.job_ids))
                absent.extend(await stop.call(_fetch_absent_ids(letters, named), writes=False))
            if ids is None and args.older_than is not None:
                counting = _count_older_than(letters, args.older_than)
                total[0] = await stop.call(counting, writes=False)
            elif ids is None:
                total[0] = await stop.call(letters.count_dead_letters(), writes=False)
        except _StoppedMidCall:
            interrupted[0] = True
            return
        if not args.json:
            what = "named job id(s)" if args.job_ids else "dead letter(s)"
            print(f"purging {total[0]} {what} from {queue} ...", file=sys.stderr)
        steps = _purge_steps(letters, job_ids=ids, older_than_seconds=args.older_than)
        purging = _progress(f"purging {queue}", total[0], quiet=args.json)
        with purging as advance, _kept_broker_error(failure):
            try:
                while True:
                    try:
                        n = await stop.call(anext(steps))
                    except StopAsyncIteration:
                        break
                    purged[0] += n
                    advance(n)
                    if stop.is_set():
                        break
            except _StoppedMidCall:
                pass
            finally:
                with contextlib.suppress(Exception):
                    await steps.aclose()
        interrupted[0] = stop.is_set()
        cut[0] = stop.cut

    if ids is None or ids:
        _run_on_broker(url, queue, go)
    return _report_outcome(
        args, interrupted=interrupted[0], failure=failure[0] if failure else None,
        summary=f"purged {purged[0]} of {total[0]} dead letter(s) from {queue}",
        cut="the call stopped at the second Ctrl-C may have purged some more" if cut[0] else None,
        done=f"purged {purged[0]} dead letter(s) from {queue}",
        result={"purged": purged[0], **({"not_found": absent} if absent else {})},
        missing=_describe_missing(absent, queue), queue_at=(url, queue),
    )  # fmt: skip


def _require_yes(args: argparse.Namespace, matching: int | None) -> None:
    """CliError (exit 2) saying what the purge would delete, unless --yes confirms it:
    ``matching`` dead letters a filter found, else every one (older than --older-than)."""
    if args.yes:
        return
    if matching is not None:
        what = f"{matching} matching dead letter(s)"
    elif args.older_than is not None:
        what = f"every dead letter older than {_age(args.older_than)}"
    else:
        what = "every dead letter"
    msg = f"this deletes {what}: add --yes to confirm"
    raise CliError(msg)


ABSENT_CHECKS_AT_ONCE = 16
"""Named job ids :func:`_fetch_absent_ids` looks up at once."""


async def _fetch_absent_ids(letters: base.DeadLetters, job_ids: Sequence[str]) -> list[str]:
    """The ``job_ids`` (in their order) that have no dead letter, read just before a purge
    deletes them: a purge says how many it deleted, not which (``dlq replay`` lists them)."""
    gate = asyncio.Semaphore(ABSENT_CHECKS_AT_ONCE)

    async def is_dead_letter(job_id: str) -> bool:
        async with gate:
            return await letters.show_dead_letter(job_id) is not None

    found = await asyncio.gather(*(is_dead_letter(job_id) for job_id in job_ids))
    return [job_id for job_id, present in zip(job_ids, found, strict=True) if not present]


PURGE_CHUNK = 1000
"""Most job ids one purge call deletes when the broker has no purge in steps of its own."""


async def _count_older_than(letters: base.DeadLetters, older_than_seconds: float) -> int:
    """How many dead letters a purge by age will delete (the progress bar's total).

    A broker without ``DeadLetterSteps`` is counted by reading its list, newest first, up to
    triage.SCAN_LIMIT (a floor beyond that; the bar then ends early, the purge does not).
    """
    from worker_runtime import triage
    from worker_runtime.brokers import base

    if isinstance(letters, base.DeadLetterSteps):
        return await letters.count_dead_letters_older_than(older_than_seconds)
    where = triage.DeadLetterFilter(until=time.time() - older_than_seconds)
    page = await triage.fetch_matching_dead_letters(letters, where, limit=0)
    return page.matched


async def _purge_steps(
    letters: base.DeadLetters, *, job_ids: list[str] | None, older_than_seconds: float | None
) -> AsyncGenerator[int]:
    """The purge as steps: the broker's own (``DeadLetterSteps``), else ids a chunk at a time,
    else one call for a purge by age or of everything (no progress until it returns).

    The broker is given exactly one selection, as its protocol asks: the ids (a filter's,
    already narrowed by the age), else the age, else everything."""
    from worker_runtime.brokers import base

    selection: dict[str, Any] = {"everything": True}
    if job_ids is not None:
        selection = {"job_ids": job_ids}
    elif older_than_seconds is not None:
        selection = {"older_than_seconds": older_than_seconds}
    if isinstance(letters, base.DeadLetterSteps):
        async for n in letters.purge_dead_letters_in_steps(**selection):
            yield n
        return
    if job_ids is not None:
        for start in range(0, len(job_ids), PURGE_CHUNK):
            yield await letters.purge_dead_letters(job_ids=job_ids[start : start + PURGE_CHUNK])
        return
    yield await letters.purge_dead_letters(**selection)


# ---- enqueue ---------------------------------------------------------------------------------


def _read_text_file(path: str) -> str:
    """A file the user named, as text; CliError (exit 2) when it cannot be read. An OSError
    let through would be reported as an unreachable broker, a UnicodeDecodeError as a
    traceback."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CliError(f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None


def _read_stdin() -> str:
    try:
        return sys.stdin.read()
    except UnicodeDecodeError as exc:
        raise CliError(f"the input is not UTF-8 text (byte {exc.start}: {exc.reason})") from None


def _read_payload(text: str) -> Any:
    if text == "-":
        text = _read_stdin()
    elif text.startswith("@"):
        text = _read_text_file(text[1:])
    try:
        return json.loads(text)
    except ValueError as exc:
        msg = f"payload is not valid JSON: {exc}"
        raise CliError(msg) from None


@guard
def cmd_enqueue(args: argparse.Namespace) -> int:
    """Enqueue one job (the payload is validated by the worker's task model when it runs)."""
    from worker_runtime import producer

    if args.file is not None:
        return _enqueue_file(args)
    if args.task is None or args.payload is None:
        msg = "name the task and its JSON payload, or pass --file JOBS.ndjson"
        raise CliError(msg)
    url, queue = _broker_url(args), _queue_name(args)
    payload = _read_payload(args.payload)
    if not isinstance(payload, dict):
        msg = "payload must be a JSON object"
        raise CliError(msg)
    try:
        spec = producer.JobSpec(
            args.task,
            payload,
            delay=args.delay,
            priority=args.priority,
            idempotency_key=args.idempotency_key,
            correlation_id=args.correlation_id,
            max_attempts=args.max_attempts,
        )
        producer.build_request(spec)  # the envelope's own checks, before anything is sent
    except (TypeError, ValueError) as exc:
        raise CliError(describe_invalid_job(exc)) from None

    async def go(broker: Any) -> Any:
        (result,) = await producer.Producer.on_broker(broker).enqueue_many([spec])
        return result

    result = _run_on_broker(url, queue, go)
    if args.json:
        _print_json({"job_id": result.job_id, "created": result.created, "queue": queue})
    elif result.created:
        print(f"enqueued {_printable(result.job_id)} on {queue}")
    else:
        print(
            f"duplicate of {_printable(result.job_id)} (idempotency key already used); "
            "nothing enqueued"
        )
    return 0


NDJSON_FIELDS = {"task", "payload", "delay", "priority", "idempotency_key", "correlation_id",
                 "max_attempts"}  # fmt: skip
ENQUEUE_BATCH = 500


def build_job_specs(lines: Sequence[str]) -> list[tuple[int, Any]]:
    """(line number, JobSpec) of each job of an NDJSON file (blank lines skipped); CliError
    names the first bad line."""
    from worker_runtime import producer

    specs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise CliError(f"line {number}: not JSON ({exc})") from None
        if not isinstance(item, dict) or not isinstance(item.get("task"), str):
            raise CliError(f'line {number}: expected an object with a "task" string')
        unknown = sorted(set(item) - NDJSON_FIELDS)
        if unknown:
            raise CliError(f"line {number}: unknown field(s) {', '.join(unknown)}")
        payload = item.get("payload", {})
        if not isinstance(payload, dict):
            raise CliError(f"line {number}: payload must be a JSON object")
        options = {k: v for k, v in item.items() if k not in ("task", "payload")}
        try:
            spec = producer.JobSpec(item["task"], payload, **options)
            producer.build_request(spec)  # the envelope's own checks, before anything is sent
        except (TypeError, ValueError) as exc:
            raise CliError(f"line {number}: {describe_invalid_job(exc)}") from None
        specs.append((number, spec))
    return specs


def describe_invalid_job(exc: Exception) -> str:
    """One line saying what is wrong with a job's fields (each field a validator refused)."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'job'}: {error['msg']}"
            for error in exc.errors()
        )
    return str(exc).splitlines()[0]


def _enqueue_file(args: argparse.Namespace) -> int:
    from worker_runtime import errors, producer

    if args.task is not None or args.payload is not None:
        msg = "--file carries the tasks: drop the TASK and PAYLOAD arguments"
        raise CliError(msg)
    lines = (_read_stdin() if args.file == "-" else _read_text_file(args.file)).splitlines()
    numbered = build_job_specs(lines)
    url, queue = _broker_url(args), _queue_name(args)
    results: list[Any] = []
    failure: list[tuple[int, Exception]] = []  # the first line not confirmed, and why

    async def go(broker: Any) -> None:
        # Batch by batch: a broker error part-way leaves the batches before it enqueued, and
        # the report must say exactly which lines those were (every line was checked above)
        p = producer.Producer.on_broker(broker)
        for start in range(0, len(numbered), ENQUEUE_BATCH):
            batch = numbered[start : start + ENQUEUE_BATCH]
            try:
                results.extend(await p.enqueue_many([spec for _, spec in batch]))
            except (errors.BrokerError, ValueError) as exc:
                failure.append((batch[0][0], exc))
                return

    _run_on_broker(url, queue, go)
    created = [r.job_id for r in results if r.created]
    duplicates = len(results) - len(created)
    summary: dict[str, Any] = {"enqueued": len(created), "duplicates": duplicates}
    if not failure:
        if args.json:
            _print_json({**summary, "job_ids": created})
        else:
            print(f"enqueued {len(created)} job(s) on {queue} ({duplicates} duplicate(s) skipped)")
        return 0
    line, error = failure[0]
    source = "the input" if args.file == "-" else args.file
    sent = f"lines 1-{line - 1} of {source}" if results else "none"
    print(
        f"workerfleet: enqueued {len(created)} job(s) on {queue} ({sent}; {duplicates} "
        f"duplicate(s) skipped), then: {error}\n"
        f"workerfleet: the jobs from line {line} on are not confirmed; to send them again: "
        f"tail -n +{line} {'FILE' if args.file == '-' else args.file} | workerfleet enqueue "
        f"--file - with the same queue and broker options (a job with an idempotency_key "
        f"is never enqueued twice)",
        file=sys.stderr,
    )
    if args.json:
        _print_json({**summary, "job_ids": created, "unconfirmed_from_line": line,
                     "error": str(error)})  # fmt: skip
    return 1


# ---- job cancel ------------------------------------------------------------------------------

CANCEL_CHUNK = 500
"""Job ids one cancel call carries (the Redis engine's batch): a Ctrl-C stops between calls."""

NOT_ALL_CANCELLED_EXIT = 1
"""``job cancel``'s exit code when a named id was refused (running, dead-lettered) or unknown,
as a dlq command's when a named id had no dead letter; 0 means every named id was cancelled."""


def describe_cancel_outcome(job_id: str, outcome: str, queue: str) -> str:
    """The line ``job cancel`` prints for one id."""
    shown = _printable(job_id)
    if outcome == "cancelled":
        return f"cancelled {shown}"
    if outcome == "running":
        return (
            f"refused {shown}: running (a job a worker holds is not touched; it finishes or "
            "fails as usual)"
        )
    if outcome == "dead_lettered":
        return f"refused {shown}: dead-lettered (workerfleet dlq purge deletes it)"
    return (
        f"unknown {shown}: no such job waiting in {queue} (finished, cancelled or never enqueued)"
    )


def _describe_cancel_counts(outcomes: Sequence[tuple[str, str]], named: int, queue: str) -> str:
    counts: dict[str, int] = {}
    for _, outcome in outcomes:
        counts[outcome] = counts.get(outcome, 0) + 1
    text = f"cancelled {counts.get('cancelled', 0)} of {named} job(s) on {queue}"
    rest = [
        f"{counts[name]} {label}"
        for name, label in (
            ("running", "running"),
            ("dead_lettered", "dead-lettered"),
            ("unknown", "unknown"),
        )
        if counts.get(name)
    ]
    return text + (f" ({', '.join(rest)})" if rest else "")


class _IdsAsked:
    """How a ``job`` command's calls over its named ids ended (see :func:`_ask_in_chunks`)."""

    def __init__(self) -> None:
        self.interrupted = False  # Ctrl-C: it stopped between calls
        self.cut = False  # a second Ctrl-C cancelled a call: its part of the work is unknown
        self.failure: Exception | None = None  # the broker error that ended it


async def _ask_in_chunks(
    named: Sequence[str],
    size: int,
    ask: Callable[[list[str]], Awaitable[Sequence[R]]],
    take: Callable[[list[str], Sequence[R]], None],
    *,
    writes: bool,
) -> _IdsAsked:
    """Ask the broker about ``named`` ids, ``size`` a call, handing each call's answers to
    ``take`` as they come; a Ctrl-C stops between calls (a second, in the call) and a broker
    error ends the asking, both kept in what it returns so the command reports the answers
    it has. ``writes``: the calls change the queue (a cut one may have done part of its work)."""
    asked = _IdsAsked()
    failure: list[Exception] = []
    stop = _stop_on_ctrl_c()
    with _kept_broker_error(failure):
        try:
            for start in range(0, len(named), size):
                chunk = list(named[start : start + size])
                take(chunk, await stop.call(ask(chunk), writes=writes))
                if stop.is_set():
                    break
        except _StoppedMidCall:
            pass
    asked.interrupted, asked.cut = stop.is_set(), stop.cut
    asked.failure = failure[0] if failure else None
    return asked


def _report_ids_unanswered(
    args: argparse.Namespace,
    asked: _IdsAsked,
    *,
    summary: str,
    untried: int,
    result: dict[str, Any],
    failed_may: str = "",
    cut_may: str | None = None,
) -> int | None:
    """The last lines of a ``job`` command that did not answer every named id: after a broker
    error (exit 1) or a Ctrl-C (exit 130), ``summary`` of what was answered and how many ids
    were not (``failed_may``: what the failed call may have done; ``cut_may``: what a call a
    second Ctrl-C cancelled may have, also ``cut_call`` in JSON as in the dlq commands'), with
    ``result`` in JSON. None when every call was made: the command reports its answers."""
    if asked.failure is not None:
        print(
            f"workerfleet: {summary}, then: {asked.failure}\nworkerfleet: {untried} id(s) have "
            f"no answer{failed_may}",
            file=sys.stderr,
        )
        if args.json:
            _print_json({**result, "error": str(asked.failure)})
        return 1
    if asked.interrupted:
        cut = cut_may if asked.cut else None
        maybe = f"; {cut}" if cut else ""
        print(f"interrupted: {summary}; {untried} id(s) not answered{maybe}", file=sys.stderr)
        if args.json:
            _print_json({**result, "interrupted": True, **({"cut_call": cut} if cut else {})})
        return cli.INTERRUPTED_EXIT
    return None


def _say_unknown_ids(unknown: Sequence[str], named: int, url: str, queue: str) -> None:
    """On stderr, the named ids a ``job`` command found nowhere in ``queue`` (the first five),
    and the note when no queue of that name ever held a job: every id of a mistyped queue
    name reads unknown. Nothing when there are none."""
    if not unknown:
        return
    print(
        f"workerfleet: {len(unknown)} of {named} job id(s) unknown in {queue}: "
        f"{_list_ids(unknown)}",
        file=sys.stderr,
    )
    _note_if_unknown_queue(url, queue)


@guard
def cmd_job_cancel(args: argparse.Namespace) -> int:
    """Cancel jobs that have not started, by id: one line per id and a summary."""
    from worker_runtime.brokers import base

    url, queue = _broker_url(args), _queue_name(args)
    named = list(dict.fromkeys(args.job_ids))  # an id named twice is asked about once
    outcomes: list[tuple[str, str]] = []

    def take(chunk: list[str], answers: Sequence[base.CancelOutcome]) -> None:
        for job_id, outcome in zip(chunk, answers, strict=True):
            outcomes.append((job_id, outcome.value))
            if not args.json:
                print(describe_cancel_outcome(job_id, outcome.value, queue))

    async def go(broker: Any) -> _IdsAsked:
        # a broker that cannot cancel is refused here, before any id is sent (exit 2)
        await base.cancel_jobs(broker, [])
        return await _ask_in_chunks(
            named, CANCEL_CHUNK, lambda ids: base.cancel_jobs(broker, ids), take, writes=True
        )

    asked = _run_on_broker(url, queue, go)
    summary = _describe_cancel_counts(outcomes, len(named), queue)
    result: dict[str, Any] = {
        "queue": queue,
        "outcomes": dict(outcomes),
        "cancelled": sum(1 for _, o in outcomes if o == "cancelled"),
        "asked": len(named),
    }
    stopped = _report_ids_unanswered(
        args, asked, summary=summary, untried=len(named) - len(outcomes), result=result,
        failed_may="; the call that failed may have cancelled some of them (asked again, an "
        "id it cancelled reads unknown)",
        cut_may="the call stopped at the second Ctrl-C may have cancelled some",
    )  # fmt: skip
    if stopped is not None:
        return stopped
    if args.json:
        _print_json(result)
    else:
        print(summary)
    if result["cancelled"] < len(named):
        refused = [i for i, o in outcomes if o in ("running", "dead_lettered")]
        if refused:
            print(
                f"workerfleet: {len(refused)} of {len(named)} job id(s) refused in {queue} "
                f"(running or dead-lettered): {_list_ids(refused)}",
                file=sys.stderr,
            )
        _say_unknown_ids([i for i, o in outcomes if o == "unknown"], len(named), url, queue)
        return NOT_ALL_CANCELLED_EXIT
    return 0


# ---- job show --------------------------------------------------------------------------------

STATUS_CHUNK = 500
"""Job ids one look-up call carries (the Redis engine's batch): a Ctrl-C stops between calls."""

SOME_UNKNOWN_EXIT = 1
"""``job show``'s exit code when a named id is unknown to the queue (as ``dlq show``'s for an
id with no dead letter); 0 means every named id was found."""


def _when(epoch: float, now: float) -> str:
    """``2026-12-06T23:59:01Z (in 12.0s)`` or ``... (3.0s ago)``, counted from ``now``."""
    delta = epoch - now
    return f"{_utc(epoch)} ({'in ' + _age(delta) if delta > 0 else _age(-delta) + ' ago'})"


def _describe_state(s: base.JobStatus, queue: str) -> str:
    """The first line ``job show`` prints for one id: where the job is."""
    state = s.state.value
    if state == "waiting":
        return "waiting (on the ready queue, for the next free worker)"
    if state == "scheduled":
        return "scheduled: a retry waiting out its backoff" if s.retry else "scheduled"
    if state == "running":
        return f"running on worker {_printable(s.worker_id or '?')}"
    if state == "dead_lettered":
        return f"dead-lettered ({_printable(s.dead_letter_reason or 'no reason kept')})"
    if state == "done":
        at = _when(s.finished_at, s.checked_at) if s.finished_at is not None else "?"
        run = f", its run took {s.run_seconds:.1f}s" if s.run_seconds is not None else ""
        return f"done at {at}{run}"
    if s.enqueued_at is not None:
        return (
            f"unknown: no longer in {queue}, enqueued {_when(s.enqueued_at, s.checked_at)}: "
            "finished, cancelled or its dead letter deleted (a finished job leaves a record "
            "only while the queue keeps them: WORKERFLEET_KEEP_FINISHED_SECONDS)"
        )
    return f"unknown: not in {queue} (finished, cancelled, never enqueued, or a mistyped id)"


def describe_job_status(s: base.JobStatus, queue: str) -> list[str]:
    """The lines ``job show`` prints for one id: its state, then what the broker keeps of it
    (times as ISO 8601 UTC and relative to the broker's clock at the read)."""
    now = s.checked_at
    lines = [f"{_printable(s.job_id)}: {_describe_state(s, queue)}"]
    if s.state.value == "unknown":
        return lines
    if s.state.value == "done":
        # attempts counts failed runs, so the run that finished it is one more
        lines.append(
            f"  task {_printable(s.task or '?')}, attempts {s.attempts + 1} "
            f"({s.attempts} failed), deliveries {s.deliveries}"
        )
        if s.enqueued_at is not None:
            lines.append(f"  enqueued {_when(s.enqueued_at, s.checked_at)}")
        return lines
    lines.append(
        f"  task {_printable(s.task or '?')}, priority {_printable(s.priority or '?')}, "
        f"attempts {s.attempts}, deliveries {s.deliveries}"
    )
    if s.due_at is not None:
        took = "" if s.due_at > now else ": the next fetch takes it"
        lines.append(f"  due {_when(s.due_at, now)}{took}")
    if s.lease_expires_at is not None:
        if s.lease_expires_at > now:
            lines.append(f"  lease until {_when(s.lease_expires_at, now)}")
        else:
            lines.append(
                f"  lease expired {_when(s.lease_expires_at, now)}: the next fetch takes it back"
            )
    if s.dead_lettered_at is not None:
        lines.append(
            f"  dead-lettered {_when(s.dead_lettered_at, now)}; "
            f"workerfleet dlq show {_printable(s.job_id)} has its history"
        )
    if s.enqueued_at is not None:
        lines.append(f"  enqueued {_when(s.enqueued_at, now)}")
    f = s.last_failure
    if f is not None:
        first = (f.message.splitlines() or [""])[0]
        lines.append(
            f"  last error {_when(f.at, now)}, attempt {f.attempt}: "
            f"{_printable(f.error_type)}: {_printable(first)}"
        )
    return lines


def build_job_status_json(s: base.JobStatus) -> dict[str, Any]:
    """One id's status for ``job show --json`` (epoch seconds; ``last_failure`` whole)."""
    import dataclasses

    return dataclasses.asdict(s)


@guard
def cmd_job_show(args: argparse.Namespace) -> int:
    """Where jobs are, by id: state, attempts, due or lease times, last error (read-only)."""
    from worker_runtime.brokers import base

    url, queue = _broker_url(args), _queue_name(args)
    named = list(dict.fromkeys(args.job_ids))  # an id named twice is shown once
    found: list[base.JobStatus] = []

    def take(_chunk: list[str], answers: Sequence[base.JobStatus]) -> None:
        found.extend(answers)
        if not args.json:
            for status in answers:
                print("\n".join(describe_job_status(status, queue)))

    async def go(broker: Any) -> _IdsAsked:
        # a broker that cannot look jobs up is refused here, before any id is sent (exit 2)
        await base.fetch_job_status(broker, [])
        return await _ask_in_chunks(
            named, STATUS_CHUNK, lambda ids: base.fetch_job_status(broker, ids), take, writes=False
        )

    asked = _run_on_broker(url, queue, go, role="reader")
    unknown = [s.job_id for s in found if s.state is base.JobState.UNKNOWN]
    result: dict[str, Any] = {
        "queue": queue,
        "jobs": [build_job_status_json(s) for s in found],
        "asked": len(named),
        "unknown": len(unknown),
    }
    stopped = _report_ids_unanswered(
        args, asked, summary=f"answered {len(found)} of {len(named)} job id(s) on {queue}",
        untried=len(named) - len(found), result=result,
    )  # fmt: skip
    if stopped is not None:
        return stopped
    if args.json:
        _print_json(result)
    if unknown:
        _say_unknown_ids(unknown, len(named), url, queue)
        return SOME_UNKNOWN_EXIT
    return 0
