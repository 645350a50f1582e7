"""The runtime's commands: ``worker``, ``queue stats``, ``dlq ls|show|replay|purge``, ``enqueue``,
``job cancel|show``.

Registered into the ``workerfleet`` console script by ``workerfleet_operator.cli`` (through
:func:`register_commands`) and runnable without the operator as ``python -m worker_runtime``
(:func:`main`). Registration only builds argparse parsers; each handler imports what it needs
when it runs. The ``worker`` command lives here; the commands that read or change a queue
(``queue``, ``topic``, ``trace``, ``dlq``, ``enqueue``, ``job``) live in
:mod:`worker_runtime.queue_commands`, imported only when one of them runs, so a worker's start
never loads them (cold start).

Connection settings come from flags or the environment, exactly as a worker pod sees them:
``--broker-url`` / ``WORKERFLEET_BROKER_URL`` (any scheme :func:`worker_runtime.brokers.open_broker`
serves: Redis, RabbitMQ, SQS, memory), or the older ``--redis-url`` / ``WORKERFLEET_REDIS_URL``
(the same URL under its first name: any scheme works there too), and ``--queue`` /
``WORKERFLEET_QUEUE``.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker_runtime import app as app_mod

SubParsers = Any  # argparse's _SubParsersAction is private


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


class PoolUnreachable(Exception):
    """``--pool``'s lookup could not reach the Kubernetes API, or it refused or failed the read:
    printed as one line, exit code 1 (not "cannot reach the broker": no broker was tried yet)."""


PoolResolver = Callable[[str, "str | None"], tuple[str, str]]

POOL_RESOLVER: PoolResolver | None = None
"""Finds (broker URL, queue) of a WorkerPool ``NAMESPACE/NAME`` for ``--pool``; installed by the
``workerfleet`` console script (the runtime itself knows nothing of Kubernetes). It raises
LookupError for a pool that cannot be found, and :class:`PoolUnreachable` when the Kubernetes
API does not answer, refuses the read or fails it."""


def describe_install(extra: str) -> str:
    """The command that adds ``extra`` to this Python's workerfleet.

    workerfleet is on no package index, so ``pip install 'workerfleet[extra]'`` finds nothing:
    an extra comes from the clone or the wheel workerfleet was installed from, which pip records
    (``direct_url.json``) for a local install; otherwise the command names a clone's path.
    """
    import json
    import urllib.parse
    from importlib import metadata

    source = "/path/to/workerfleet"  # a clone, or the wheel `make dist` writes
    # every copy on the path: a source tree's workerfleet.egg-info records no origin
    for dist in metadata.distributions(name="workerfleet"):
        try:
            url = str(json.loads(dist.read_text("direct_url.json") or "{}").get("url", ""))
        except (ValueError, AttributeError):
            continue
        if url.startswith("file://"):
            source = urllib.parse.unquote(url.removeprefix("file://"))
            break
    return f"{sys.executable} -m pip install '{source}[{extra}]'"


# ---- registration ----------------------------------------------------------------------------


def parse_count(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum`` (``--limit -1`` listed nothing
    and said the DLQ was empty)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, not {value}")
        return value

    return parse


def parse_metrics_port(text: str) -> int:
    """An argparse type: the worker's metrics port, where -1 means off as 0 does (``workerfleet
    run`` takes -1 for off and 0 for any free port; a worker's 0 has always meant off)."""
    value = parse_count(-1)(text)
    return 0 if value == -1 else value


def parse_seconds(*, zero: bool) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds, above zero (or from zero when ``zero``),
    plain (``90``) or with a unit as ``--since`` takes it (``90s``, ``15m``, ``2h``, ``3d``).
    ``dlq purge --older-than -5`` would otherwise have meant every dead letter."""

    def parse(text: str) -> float:
        from worker_runtime import triage  # only when a command line has such a flag

        with_unit = triage.seconds_of_duration(text)
        try:
            value = float(text) if with_unit is None else with_unit
        except ValueError:
            msg = f"{text!r} is not a number of seconds (or a duration: 90s, 15m, 2h, 3d)"
            raise argparse.ArgumentTypeError(msg) from None
        return _within_bound(value, text, zero=zero)

    return parse


def parse_rate(text: str) -> float:
    """An argparse type: a finite rate above zero (jobs per second)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of jobs per second") from None
    return _within_bound(value, text, zero=False)


def _within_bound(value: float, text: str, *, zero: bool) -> float:
    """``value`` (read from ``text``) when finite and above zero (from zero when ``zero``)."""
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        bound = "0 or more" if zero else "more than 0"
        raise argparse.ArgumentTypeError(f"must be a finite number {bound}, not {text}")
    return value


def _connection_flags(
    parser: argparse.ArgumentParser, *, pool: bool = True, queue: bool = True
) -> None:
    parser.add_argument(
        "--broker-url",
        default=None,
        help="broker URL: redis://, rediss://, unix://, redis+sentinel://, redis+cluster://, "
        "amqp://, amqps://, sqs://, memory:// (default: $WORKERFLEET_BROKER_URL, "
        "else $WORKERFLEET_REDIS_URL)",
    )
    parser.add_argument(
        "--redis-url",
        default=None,
        help="the broker URL under its older name (same as --broker-url)",
    )
    if queue:
        parser.add_argument(
            "--queue", "-q", default=None, help="queue name (default: $WORKERFLEET_QUEUE)"
        )
    if pool and queue:
        parser.add_argument(
            "--pool",
            default=None,
            metavar="NAMESPACE/NAME",
            help="take the queue and its broker URL from this WorkerPool and its Secret",
        )
        parser.add_argument(
            "--kubeconfig",
            default=None,
            help="kubeconfig for --pool (default: $KUBECONFIG, else ~/.kube/config)",
        )


def register_commands(subparsers: SubParsers, *, only_worker: bool = False) -> None:
    """Add the runtime's subcommands to a ``workerfleet`` subparsers object (``only_worker``:
    the ``worker`` command alone, which is all a worker process parses)."""
    w = subparsers.add_parser(
        "worker",
        help="run a worker process for an App",
        description="Run a worker: fetch jobs of the App's queue and run its tasks. "
        "Flags override the WORKERFLEET_* environment.",
    )
    w.add_argument("app", nargs="?", default=None, help="MODULE:ATTR of the App ($WORKERFLEET_APP)")
    _connection_flags(w, pool=False)
    w.add_argument("--concurrency", "-c", type=int, default=None, help="jobs in flight")
    w.add_argument(
        "--lease-seconds",
        type=float,
        default=None,
        help="how long a job stays leased without a renewal (renewed every third of it)",
    )
    w.add_argument("--drain-timeout", type=float, default=None, help="drain budget in seconds")
    w.add_argument(
        "--burst",
        action="store_true",
        default=None,
        help="run the jobs ready now, then exit 0 once none is ready and none is held; "
        "jobs delayed into the future are left queued ($WORKERFLEET_BURST)",
    )
    w.add_argument(
        "--metrics-port",
        type=parse_metrics_port,
        default=None,
        metavar="PORT",
        help="port of /metrics, /healthz and /readyz ($WORKERFLEET_METRICS_PORT, else 9100); "
        "0 or -1 turns them off. Unlike `workerfleet run --metrics-port`, 0 is not a free port",
    )
    # any case, as their environment variables (str.lower runs before the choices are checked)
    w.add_argument("--log-format", type=str.lower, choices=("json", "text"), default=None)
    w.add_argument(
        "--log-level",
        type=str.lower,
        choices=("debug", "info", "warning", "error", "critical"),
        default=None,
    )
    w.set_defaults(handler=cmd_worker)
    if only_worker:
        return

    q = subparsers.add_parser("queue", help="inspect a queue")
    qsub = q.add_subparsers(dest="queue_command", metavar="COMMAND")
    qs = qsub.add_parser("stats", help="backlog, in flight, delayed, DLQ, workers (read-only)")
    _connection_flags(qs)
    qs.add_argument("--json", action="store_true", help="machine-readable output")
    qs.add_argument(
        "--watch", type=parse_seconds(zero=False), default=None, metavar="SECONDS", help="refresh"
    )
    qs.set_defaults(handler=_queue_command("cmd_queue_stats"))
    ql = qsub.add_parser("ls", help="the queues that ever held a job, with their numbers")
    _connection_flags(ql, queue=False)
    ql.add_argument(
        "--limit", type=parse_count(1), default=200, help="at most this many (default 200)"
    )
    ql.add_argument("--json", action="store_true", help="machine-readable output")
    ql.set_defaults(handler=_queue_command("cmd_queue_ls"))
    qj = qsub.add_parser("jobs", help="the jobs running now: worker and time running (read-only)")
    _connection_flags(qj)
    qj.add_argument(
        "--in-flight",
        action="store_true",
        help="the jobs delivered to workers and not yet finished (the default, and so far the "
        "only listing)",
    )
    qj.add_argument(
        "--limit", type=parse_count(1), default=200, help="at most this many (default 200)"
    )
    qj.add_argument("--json", action="store_true", help="machine-readable output")
    qj.set_defaults(handler=_queue_command("cmd_queue_jobs"))
    q.set_defaults(handler=_needs_subcommand(q))

    t = subparsers.add_parser("topic", help="inspect a topic's subscriptions (events)")
    tsub = t.add_subparsers(dest="topic_command", metavar="COMMAND")
    tl = tsub.add_parser("lag", help="each subscription's backlog and oldest event age")
    tl.add_argument("topic", help="the event type, e.g. shop.order.placed")
    tl.add_argument("--broker-url", default=None, help="broker URL ($WORKERFLEET_BROKER_URL)")
    tl.add_argument("--redis-url", default=None, help="Redis URL ($WORKERFLEET_REDIS_URL)")
    tl.add_argument("--json", action="store_true", help="machine-readable output")
    tl.set_defaults(handler=_queue_command("cmd_topic_lag"), pool=None, queue=None)
    t.set_defaults(handler=_needs_subcommand(t))

    tr = subparsers.add_parser("trace", help="the tree of jobs and events of a correlation id")
    tr.add_argument("correlation_id", metavar="ID", help="the correlation id")
    tr.add_argument("--broker-url", default=None, help="broker URL ($WORKERFLEET_BROKER_URL)")
    tr.add_argument("--redis-url", default=None, help="Redis URL ($WORKERFLEET_REDIS_URL)")
    tr.add_argument("--json", action="store_true", help="the raw entries, oldest first")
    tr.set_defaults(handler=_queue_command("cmd_trace"), pool=None, queue=None)

    d = subparsers.add_parser("dlq", help="list, show, replay or purge dead letters")
    dsub = d.add_subparsers(dest="dlq_command", metavar="COMMAND")
    ls = dsub.add_parser("ls", help="list dead letters, newest first")
    _connection_flags(ls)
    ls.add_argument(
        "--limit", type=parse_count(1), default=50, help="at most this many (default 50)"
    )
    ls.add_argument(
        "--offset", type=parse_count(0), default=0, help="skip this many matching ones first"
    )
    _filter_flags(ls)
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(handler=_queue_command("cmd_dlq_ls"))
    sm = dsub.add_parser("summary", help="dead letters grouped by reason and error type")
    _connection_flags(sm)
    _filter_flags(sm)
    sm.add_argument("--json", action="store_true", help="machine-readable output")
    sm.set_defaults(handler=_queue_command("cmd_dlq_summary"))
    show = dsub.add_parser("show", help="one dead letter with its payload and failure history")
    _connection_flags(show)
    show.add_argument("job_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_queue_command("cmd_dlq_show"))
    rp = dsub.add_parser("replay", help="put dead letters back on the queue (rate-limited)")
    _connection_flags(rp)
    rp.add_argument("job_ids", nargs="*", help="job ids (or --all)")
    rp.add_argument("--all", action="store_true", help="replay every dead letter")
    rp.add_argument(
        "--limit", type=parse_count(1), default=None, help="at most this many (oldest first)"
    )
    rp.add_argument("--reset-attempts", action="store_true", help="start attempts from zero")
    rp.add_argument(
        "--rate",
        type=parse_rate,
        default=100.0,
        help="jobs per second (default 100)",
    )
    _filter_flags(rp)
    rp.add_argument(
        "--dry-run", action="store_true", help="list what would be replayed; change nothing"
    )
    rp.add_argument("--json", action="store_true", help="machine-readable output")
    rp.set_defaults(handler=_queue_command("cmd_dlq_replay"))
    pg = dsub.add_parser("purge", help="delete dead letters")
    _connection_flags(pg)
    pg.add_argument("job_ids", nargs="*", help="job ids (or --all, or --older-than / filters)")
    pg.add_argument(
        "--all", action="store_true", help="delete every dead letter (alone, with --yes)"
    )
    pg.add_argument(
        "--older-than",
        type=parse_seconds(zero=True),
        default=None,
        metavar="DURATION",
        help="dead letters older than this: seconds, or 90s, 15m, 2h, 7d (with filters: "
        "the matching ones older than this)",
    )
    pg.add_argument("--yes", action="store_true", help="required unless job ids are named")
    _filter_flags(pg)
    pg.add_argument("--json", action="store_true", help="machine-readable output")
    pg.set_defaults(handler=_queue_command("cmd_dlq_purge"))
    d.set_defaults(handler=_needs_subcommand(d))

    j = subparsers.add_parser("job", help="look up or cancel jobs by id (show, cancel)")
    jsub = j.add_subparsers(dest="job_command", metavar="COMMAND")
    _job_command(
        jsub,
        "cancel",
        summary="cancel jobs that have not started (waiting, scheduled or waiting to retry)",
        description="Cancel jobs by id that have not started. A running job is refused (it "
        "finishes or fails as usual), a dead letter too (dlq purge deletes it). Exit 0 when "
        "every id was cancelled, 1 when some were refused or unknown (or the broker failed), "
        "2 on a usage error or a broker that cannot cancel by id (RabbitMQ, SQS).",
        ids_help="job ids to cancel",
        handler="cmd_job_cancel",
    )
    _job_command(
        jsub,
        "show",
        summary="where jobs are: waiting, scheduled, running, dead-lettered or unknown",
        description="Show where jobs are, by id (read-only): waiting, scheduled (when due; a "
        "retry waiting out its backoff), running (which worker, lease until when), "
        "dead-lettered, or unknown (finished, cancelled, never enqueued: a finished job leaves "
        "no record), with attempts and the last error. Exit 0 when every id was found, 1 when "
        "some were unknown (or the broker failed), 2 on a usage error or a broker that cannot "
        "look jobs up by id (RabbitMQ, SQS).",
        ids_help="job ids to look up",
        handler="cmd_job_show",
    )
    j.set_defaults(handler=_needs_subcommand(j))

    e = subparsers.add_parser("enqueue", help="enqueue one job (or many with --file)")
    _connection_flags(e)
    e.add_argument("task", nargs="?", default=None, help="task name")
    e.add_argument(
        "payload", nargs="?", default=None, help="payload as JSON (or @file.json, or - for stdin)"
    )
    e.add_argument(
        "--file",
        default=None,
        metavar="JOBS.ndjson",
        help='many jobs, one JSON object a line: {"task": ..., "payload": {...}} plus any of '
        "delay, priority, idempotency_key, correlation_id, max_attempts (- for stdin); "
        "every line is checked before any is enqueued",
    )
    e.add_argument("--delay", type=float, default=None, help="seconds before it may run")
    e.add_argument("--priority", choices=("high", "normal", "low"), default="normal")
    e.add_argument("--idempotency-key", default=None)
    e.add_argument("--correlation-id", default=None)
    e.add_argument("--max-attempts", type=int, default=None)
    e.add_argument("--json", action="store_true")
    e.set_defaults(handler=_queue_command("cmd_enqueue"))


def _job_command(
    jsub: SubParsers, name: str, *, summary: str, description: str, ids_help: str, handler: str
) -> None:
    """``job NAME JOB_ID... [--json]`` with the connection flags: the ``job`` commands take
    the same arguments and differ in what they do with the ids."""
    parser = jsub.add_parser(name, help=summary, description=description)
    _connection_flags(parser)
    parser.add_argument("job_ids", nargs="+", metavar="JOB_ID", help=ids_help)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=_queue_command(handler))


def _queue_command(name: str) -> Callable[[argparse.Namespace], int]:
    """The handler ``name`` of :mod:`worker_runtime.queue_commands`, imported when it runs.

    Deferred for cold start: the queue commands are most of this command line's code, and a
    worker's start would otherwise load (and, without .pyc files, compile) them for nothing.
    """

    def run(args: argparse.Namespace) -> int:
        from worker_runtime import queue_commands

        handler: Callable[[argparse.Namespace], int] = getattr(queue_commands, name)
        return handler(args)

    run.__name__ = name
    return run


def _filter_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("filters (combine; each narrows the selection)")
    g.add_argument("--task", default=None, help="only dead letters of this task")
    g.add_argument("--reason", default=None, help="only this reason (max_attempts, ...)")
    g.add_argument(
        "--error", default=None, help="only this error type of the last failure (ValueError)"
    )
    g.add_argument(
        "--since", default=None, help="dead-lettered since: a duration ago (2h) or ISO date"
    )
    g.add_argument("--until", default=None, help="dead-lettered until: a duration ago or ISO date")


def _needs_subcommand(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def handler(_: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return handler


def build_parser(*, only_worker: bool = False) -> argparse.ArgumentParser:
    """The parser of ``python -m worker_runtime`` (the runtime's commands only; ``only_worker``:
    with the ``worker`` command alone)."""
    parser = argparse.ArgumentParser(prog="python -m worker_runtime")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    register_commands(subparsers, only_worker=only_worker)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m worker_runtime``; Ctrl-C ends it with one line and 130."""
    return run_interruptible(lambda: _run(argv))


def run_interruptible(run: Callable[[], int]) -> int:
    """``run()``'s exit code, or one line and 130 when Ctrl-C interrupts it.

    The entry points (this module's :func:`main`, the ``workerfleet`` console script's) run
    everything in it: :func:`guard` answers Ctrl-C inside a handler, this also covers building
    the parser and the modules a command imports before its handler takes Ctrl-C itself (an
    interrupt there showed a traceback of the import machinery).
    """
    try:
        return run()
    except KeyboardInterrupt:
        print("workerfleet: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT


def _run(argv: Sequence[str] | None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    # A worker's start builds the worker command's parser alone, not the ten others (cold
    # start): its arguments parse, and its help and errors read, the same either way.
    parser = build_parser(only_worker=arguments[:1] == ["worker"])
    args = parser.parse_args(arguments)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    return int(handler(args) or 0)


# ---- helpers ---------------------------------------------------------------------------------


def load_app(path: str) -> app_mod.App:
    """Import ``module:attr`` named on the command line (never from a message) and check it."""
    from worker_runtime import app as app_mod

    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        msg = f"expected MODULE:ATTR, got {path!r}"
        raise CliError(msg)
    if os.getcwd() not in sys.path and "" not in sys.path:
        # Like `python -m`, find application modules relative to the working directory.
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only a missing APP module is a usage error; a missing dependency imported inside the
        # user's module keeps its traceback, which is what the user needs to see then.
        missing = exc.name or ""
        if not (module_name == missing or module_name.startswith(missing + ".")):
            raise
        msg = (
            f"cannot import {module_name!r} ({exc}); run from its folder or set PYTHONPATH "
            "(under 'workerfleet run': --app-path DIR)"
        )
        raise CliError(msg) from exc
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            msg = f"{module_name!r} has no attribute {attr!r}"
            raise CliError(msg)
    if not isinstance(obj, app_mod.App):
        msg = f"{path} is a {type(obj).__name__}, not a worker_runtime.App"
        raise CliError(msg)
    return obj


def guard(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``fn`` reporting user and broker errors as one line and an exit code: 2 for a usage or
    configuration error, 1 for a broker (or, for ``--pool``, a Kubernetes API) that cannot be
    reached or refuses the request."""

    def wrapped(args: argparse.Namespace) -> int:
        from worker_runtime import errors

        def name() -> str:
            return str(getattr(args, "_broker_name", "the broker"))

        try:
            code = fn(args)
            sys.stdout.flush()  # here, not at exit: a reader that left (| head) shows now
            return code
        except (CliError, errors.CapabilityMissing, errors.ConfigError) as exc:
            print(f"workerfleet: {exc}", file=sys.stderr)
            return 2
        except PoolUnreachable as exc:
            print(f"workerfleet: {exc}", file=sys.stderr)
            return 1
        except (errors.BrokerUnavailable, OSError) as exc:
            if isinstance(exc, BrokenPipeError) and _stdout_reader_gone():
                # `| head` has its lines: not the broker. Quiet, as SIGPIPE would have ended
                # the process (Python ignores SIGPIPE), and nothing left to flush at exit.
                _discard_stdout()
                return STDOUT_CLOSED_EXIT
            print(f"workerfleet: cannot reach {name()}: {exc}", file=sys.stderr)
            return 1
        except errors.BrokerRejected as exc:
            # its message names the broker and what it refused ("redis refused stats: ...")
            print(f"workerfleet: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            # Ctrl-C while a read waits on a broker that does not answer: one line and the
            # shell's code for SIGINT, not a traceback of asyncio's runner. (The long dlq
            # commands take Ctrl-C themselves and say what they did.)
            print("workerfleet: interrupted", file=sys.stderr)
            return INTERRUPTED_EXIT

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


INTERRUPTED_EXIT = 128 + 2
"""The exit code after Ctrl-C: a shell's code for a process SIGINT ended."""

STDOUT_CLOSED_EXIT = 128 + 13
"""The exit code when stdout's reader went away: a shell's code for a process SIGPIPE ended."""


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe nobody reads any more (a broker's broken pipe is not that)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _fd, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll, or a stdout without a descriptor
        return False


def _discard_stdout() -> None:
    """Point stdout at /dev/null: the output still buffered would fail again at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


# ---- worker ----------------------------------------------------------------------------------


@guard
def cmd_worker(args: argparse.Namespace) -> int:
    """Run a worker until SIGTERM/SIGINT (then drain and exit 0)."""
    from worker_runtime import startup

    # No collections while the worker's imports run (cold start); the worker resumes them once
    # started, and this function at the latest when it returns.
    startup.pause_gc()
    try:
        return _run_worker_command(args)
    finally:
        startup.resume_gc()


def _run_worker_command(args: argparse.Namespace) -> int:
    from worker_runtime import worker as worker_mod

    # Before anything slow (importing the application): a SIGTERM that arrives while the
    # worker starts is remembered and becomes a drain as soon as the loop runs. As PID 1 the
    # signal would otherwise be ignored; elsewhere it would kill the process mid-start.
    worker_mod.install_early_signal_handlers()
    from pydantic import ValidationError

    from worker_runtime import config, logs

    app_path = args.app or os.environ.get("WORKERFLEET_APP")
    if not app_path:
        msg = "no app: pass MODULE:ATTR or set WORKERFLEET_APP"
        raise CliError(msg)
    if args.broker_url and args.redis_url:
        msg = "pass --broker-url or --redis-url, not both"
        raise CliError(msg)
    overrides: dict[str, Any] = {
        "redis_url": args.broker_url or args.redis_url,
        "queue": args.queue,
        "concurrency": args.concurrency,
        "lease_seconds": args.lease_seconds,
        "drain_timeout_seconds": args.drain_timeout,
        "burst": args.burst,
        "metrics_port": args.metrics_port,
        "log_format": args.log_format,
        "log_level": args.log_level,
        "app": app_path,
    }
    try:
        settings = config.WorkerSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{_setting_name(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise CliError(f"invalid settings: {problems}") from None
    logs.configure(settings.log_level, settings.log_format)
    app = load_app(app_path)
    if not app.tasks and not app.subscriptions:
        # Typically the tasks live in modules the App's module never imports. Such a worker
        # would fetch every job and dead-letter it as unknown_task: refuse before fetching.
        msg = (
            f"{app_path} has no tasks: import the modules that define them from the App's "
            "module (a worker without tasks would dead-letter every job as unknown_task)"
        )
        raise CliError(msg)
    return worker_mod.run_worker(app, settings)


def _setting_name(loc: tuple[int | str, ...]) -> str:
    """The env name a settings error is about (the URL has two: the newer one first)."""
    name = "_".join(str(p) for p in loc).upper()
    if name == "WORKERFLEET_BROKER_URL":
        return "WORKERFLEET_BROKER_URL (or WORKERFLEET_REDIS_URL)"
    return name if name.startswith("WORKERFLEET_") else f"WORKERFLEET_{name}"
