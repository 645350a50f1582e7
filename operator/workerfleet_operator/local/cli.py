"""``workerfleet run POOL.yaml``: run a WorkerPool on this machine, with the real autoscaler.

Registered into the ``workerfleet`` console script by ``workerfleet_operator.cli``. Resolves
the broker (``--broker-url``/``--redis-url``, which must answer; else ``$WORKERFLEET_BROKER_URL``
or ``$WORKERFLEET_REDIS_URL`` if it answers; else an embedded server), builds a
:class:`runner.FleetRunner`, shows the live view, and on Ctrl-C (or SIGTERM, or ``--seconds``)
drains every worker and stops the embedded server before exiting: 0, or 1 when a worker
crashed or had to be killed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

SubParsers = Any  # argparse's _SubParsersAction is private


def register_commands(subparsers: SubParsers) -> None:
    """Add ``run`` to the ``workerfleet`` command line (cheap: imports happen in the handler)."""
    run = subparsers.add_parser(
        "run",
        help="run a WorkerPool locally: worker processes scaled by the real autoscaler",
        description="Run the WorkerPool of POOL.yaml on this machine: local worker processes, "
        "the operator's autoscaler, per-pool metrics on loopback, and a live view. Uses "
        "--broker-url / --redis-url (which must answer), else $WORKERFLEET_BROKER_URL or "
        "$WORKERFLEET_REDIS_URL when a broker of the pool's kind (spec.queue.redis, .rabbitmq "
        "or .sqs) answers there, else an embedded redis-server, rabbitmq-server or ElasticMQ.",
    )
    run.add_argument("manifest", type=pathlib.Path, help="a WorkerPool manifest (YAML)")
    run.add_argument(
        "--broker-url", default=None, help="broker URL, any scheme ($WORKERFLEET_BROKER_URL)"
    )
    run.add_argument("--redis-url", default=None, help="Redis URL ($WORKERFLEET_REDIS_URL)")
    run.add_argument(
        "--data-dir",
        type=pathlib.Path,
        default=None,
        help="where the embedded server keeps its data (default: a temporary directory)",
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        default=9109,
        help="per-pool metrics on 127.0.0.1:PORT/metrics (default 9109; 0: any free port, "
        "-1: off). Unlike `workerfleet worker --metrics-port`, where 0 is off",
    )
    run.add_argument(
        "--app-path",
        type=pathlib.Path,
        default=None,
        help="directory the App module is imported from (default: the current directory)",
    )
    run.add_argument(
        "--poll-interval", type=float, default=None, help="override pollingIntervalSeconds"
    )
    run.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    run.add_argument("--no-view", action="store_true", help="plain log lines instead of the view")
    run.add_argument(
        "--log-dir",
        type=pathlib.Path,
        default=None,
        help="worker logs, fresh each run: this pool's earlier ones there are removed "
        "(default: a temp dir)",
    )
    run.set_defaults(handler=cmd_run)

    demo = subparsers.add_parser(
        "demo",
        help="the whole system locally for ~80 s: load spike, autoscaling, retries, DLQ, alerts",
        description="Run examples/demo-pool.yaml on an embedded Redis with the real autoscaler "
        "and worker processes, drive it with a load spike, a lull and failing/poison jobs, "
        "evaluate the alert rules in a real Prometheus when installed, then print a summary "
        "and write a chart.",
    )
    demo.add_argument("--seconds", type=float, default=80.0, help="how long the fleet runs")
    demo.add_argument(
        "--out", type=pathlib.Path, default=pathlib.Path("demo-out"), help="chart and logs"
    )
    demo.add_argument("--no-prometheus", action="store_true", help="skip the Prometheus server")
    demo.add_argument("--no-view", action="store_true", help="plain lines instead of the view")
    demo.add_argument(
        "--scenario",
        choices=("thumbnails", "events"),
        default="thumbnails",
        help="thumbnails: one pool under a load spike (default); events: examples/events/, "
        "one shop.order.placed event feeding three subscription pools that scale apart",
    )
    demo.add_argument(
        "--broker",
        choices=("redis", "rabbitmq", "sqs"),
        default="redis",
        help="the embedded server the queue lives on: redis-server (default), rabbitmq-server, "
        "or ElasticMQ for SQS (`make demo-deps DEMO_ARGS='--broker ...'` installs it)",
    )
    demo.set_defaults(handler=cmd_demo)


@dataclass(frozen=True)
class ResolvedBroker:
    """The broker the fleet uses and, when it was started here, the server to stop."""

    url: str
    label: str
    embedded: Any  # embedded.EmbeddedServer | None


EMBEDDED_NAMES = {"redis": "redis-server", "rabbitmq": "rabbitmq-server", "sqs": "ElasticMQ"}


class GivenBrokerUnusable(Exception):
    """The broker URL given on the command line does not serve this pool (message: why)."""


@contextmanager
def open_broker_server(
    pool: Any, url: str | None, data_dir: pathlib.Path | None, *, fall_back: bool = True
) -> Iterator[ResolvedBroker]:
    """Use ``url`` if a broker of the pool's kind answers there, else start an embedded one of
    that kind (stopped on exit). ``pool`` is a ``manifest.LocalPool``. Without ``fall_back``
    (the URL was a command-line flag) an unusable URL raises :class:`GivenBrokerUnusable`:
    a fleet on another broker would never see the jobs sent to the one named."""
    from workerfleet_operator.local import brokers

    kind = brokers.kind_of_pool(pool.spec)
    name = EMBEDDED_NAMES[kind]
    if url:
        try:
            given = brokers.kind_of_url(url)
        except ValueError as exc:  # ConfigError: an unknown scheme
            given, problem = None, str(exc)
        if given is not None and given != kind:
            problem = f"a {given} URL for a spec.queue.{kind} pool"
        elif given is not None:
            options = brokers.build_queue_options(pool.spec)
            problem = brokers.fetch_unreachable(url, pool.queue, options) or ""
            if not problem:
                yield ResolvedBroker(url=url, label="given URL", embedded=None)
                return
        if not fall_back:
            raise GivenBrokerUnusable(problem)
        print(f"workerfleet: broker URL not used ({problem}); starting an embedded {name}")
    server = brokers.start_server(kind, data_dir)
    try:
        url = brokers.build_pool_url(server, pool.spec)
        yield ResolvedBroker(url=url, label=server.describe(), embedded=server)
    finally:
        server.close()


def cmd_run(args: argparse.Namespace) -> int:
    """Run the pool until Ctrl-C/SIGTERM/--seconds; drain; exit 0 (1 when a worker crashed or
    had to be killed)."""
    from rich.console import Console
    from rich.live import Live

    from workerfleet_operator.local import brokers, embedded, fleet, manifest, runner, view

    try:
        pool = manifest.fetch_pool(args.manifest)
    except manifest.ManifestError as exc:
        print(f"workerfleet: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    restore = _install_stop_handlers(stop)
    console = Console()
    log_dir = args.log_dir or pathlib.Path(tempfile.mkdtemp(prefix=f"workerfleet-{pool.name}-"))
    url = (
        args.broker_url
        or args.redis_url
        or os.environ.get("WORKERFLEET_BROKER_URL")
        or os.environ.get("WORKERFLEET_REDIS_URL")
    )
    kind = brokers.kind_of_pool(pool.spec)
    failed = False
    flag = "--broker-url" if args.broker_url else "--redis-url" if args.redis_url else None
    try:
        with open_broker_server(pool, url, args.data_dir, fall_back=flag is None) as redis_target:
            try:
                fleet_runner = runner.FleetRunner(
                    pool,
                    redis_url=redis_target.url,
                    log_dir=log_dir,
                    app_path=args.app_path,
                    metrics_port=None if args.metrics_port < 0 else args.metrics_port,
                    poll_interval=args.poll_interval,
                    redis_label=redis_target.label,
                )
            except OSError as exc:
                if exc.filename is not None:
                    raise  # a file or directory (--log-dir), said below; not the port
                print(
                    f"workerfleet: cannot serve metrics on 127.0.0.1:{args.metrics_port} "
                    f"({exc.strerror or exc}); pass --metrics-port 0 for any free port",
                    file=sys.stderr,
                )
                return 1
            console.print(
                f"workerfleet run: pool {pool.name}, queue {pool.queue}, {kind} "
                f"{redis_target.label}, metrics "
                + (
                    f"http://127.0.0.1:{fleet_runner.metrics_port}/metrics"
                    if fleet_runner.metrics_port
                    else "off"
                )
                + f", worker logs in {log_dir}"
            )
            try:
                if args.no_view or not console.is_terminal:
                    last: list[str] = []
                    printed: set[fleet.FleetEvent] = set()

                    def print_line(snapshot: runner.Snapshot) -> None:
                        if snapshot.decision.changed or not last:
                            line = view.build_line(snapshot)
                            last[:] = [line]
                            print(line, flush=True)
                        # a crash said nothing here before: only the final count did
                        for event in snapshot.events:
                            if event.kind in view.NOTEWORTHY_EVENTS and event not in printed:
                                printed.add(event)
                                started = fleet_runner.started
                                print(view.build_event_line(event, started), flush=True)

                    fleet_runner.run(stop, on_snapshot=print_line, max_seconds=args.seconds)
                else:
                    with Live(console=console, refresh_per_second=4, transient=False) as live:
                        fleet_runner.run(
                            stop,
                            on_snapshot=lambda snap: live.update(view.build_view(snap)),
                            max_seconds=args.seconds,
                        )
            finally:
                draining = fleet_runner.fleet.replicas + fleet_runner.fleet.terminating
                console.print(f"workerfleet run: draining {draining} worker(s)…")
                fleet_runner.close()
                c = fleet_runner.fleet.counters
                console.print(
                    f"workerfleet run: stopped; workers started={c.started} "
                    f"stopped_cleanly={c.stopped_cleanly} crashed={c.crashed} killed={c.killed}"
                )
                if c.crashed or c.killed:
                    # a script running the pool must see that its workers did not hold up
                    console.print(f"workerfleet run: the workers' logs are in {log_dir}")
                    failed = True
    except (embedded.EmbeddedServerError, OSError) as exc:
        return report_setup_failure(exc)
    except GivenBrokerUnusable as exc:
        print(
            f"workerfleet: the broker {flag} names is not usable ({exc}); start it, or drop "
            f"{flag} to run on an embedded {EMBEDDED_NAMES[kind]}",
            file=sys.stderr,
        )
        return 1
    finally:
        restore()
    return 1 if failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo; exit 0 when it ran its time and every job completed or was dead-lettered,
    with no worker crashed or killed and no failed enqueue (``demo.describe_problems``)."""
    from rich.console import Console, Group
    from rich.live import Live
    from rich.text import Text

    from workerfleet_operator.local import demo, embedded, manifest, runner, view

    if getattr(args, "scenario", "thumbnails") == "events":
        if getattr(args, "broker", "redis") != "redis":
            # topics (publish/subscribe) exist on Redis and memory only (docs/events.md)
            print("workerfleet: the events scenario runs on Redis only", file=sys.stderr)
            return 2
        return cmd_events_demo(args)
    console = Console()
    stop = threading.Event()
    restore = _install_stop_handlers(stop)
    pool = manifest.fetch_pool(demo.DEFAULT_POOL)  # the pool's name, not its file's
    console.print(
        f"workerfleet demo: {args.seconds:g}s of load on pool {pool.name}; "
        f"output in {args.out}" + ("" if args.broker == "redis" else f"; broker {args.broker}")
    )
    try:
        if args.no_view or not console.is_terminal:
            last_desired = [-1]

            def print_change(snapshot: runner.Snapshot, phase: str) -> None:
                if snapshot.decision.desired != last_desired[0]:
                    last_desired[0] = snapshot.decision.desired
                    print(f"{view.build_line(snapshot)} [{phase}]", flush=True)

            result = demo.run_demo(
                seconds=args.seconds,
                out_dir=args.out,
                use_prometheus=not args.no_prometheus,
                on_snapshot=print_change,
                stop=stop,
                broker=args.broker,
            )
        else:
            with Live(console=console, refresh_per_second=4) as live:
                result = demo.run_demo(
                    seconds=args.seconds,
                    out_dir=args.out,
                    use_prometheus=not args.no_prometheus,
                    on_snapshot=lambda snap, phase: live.update(
                        Group(view.build_view(snap), Text(phase))
                    ),
                    stop=stop,
                    broker=args.broker,
                )
    except (embedded.EmbeddedServerError, OSError) as exc:
        return report_setup_failure(exc)
    finally:
        restore()
    console.print(demo.build_summary(result), highlight=False, soft_wrap=True)
    return 1 if demo.describe_problems(result) else 0


def cmd_events_demo(args: argparse.Namespace) -> int:
    """``workerfleet demo --scenario events``: exit 0 when no event was lost in any
    subscription, every subscription settled and no worker was killed."""
    from rich.console import Console
    from rich.live import Live

    from workerfleet_operator.local import embedded, events_demo, runner, view

    console = Console()
    stop = threading.Event()
    restore = _install_stop_handlers(stop)
    pools = events_demo.load_pools()
    console.print(
        f"workerfleet demo --scenario events: {events_demo.TOPIC} feeding "
        + ", ".join(p.name for p in pools)
        + f"; orders for {args.seconds * events_demo.PUBLISH_SHARE:g}s; output in {args.out}"
    )
    latest: dict[str, runner.Snapshot] = {}
    last_desired: dict[str, int] = {}
    plain = args.no_view or not console.is_terminal
    try:
        with contextlib.ExitStack() as stack:
            live = (
                None if plain else stack.enter_context(Live(console=console, refresh_per_second=4))
            )

            def show(snapshot: runner.Snapshot, phase: str) -> None:
                if live is not None:
                    latest[snapshot.pool] = snapshot
                    live.update(view.build_pools_view(list(latest.values()), phase))
                elif snapshot.decision.desired != last_desired.get(snapshot.pool, -1):
                    last_desired[snapshot.pool] = snapshot.decision.desired
                    print(f"{snapshot.pool}: {view.build_line(snapshot)} [{phase}]", flush=True)

            result = events_demo.run_events_demo(
                seconds=args.seconds,
                out_dir=args.out,
                use_prometheus=not args.no_prometheus,
                tail_seconds=10.0,
                on_snapshot=show,
                stop=stop,
            )
    except (embedded.EmbeddedServerError, OSError) as exc:
        return report_setup_failure(exc)
    finally:
        restore()
    groups = [events_demo.subscription_of(p).group for p in pools]
    console.print(events_demo.build_summary(result, groups), highlight=False, soft_wrap=True)
    healthy = (
        result.lost == 0
        and result.settled
        and not result.publish_errors
        and result.workers_killed == 0
    )
    return 0 if healthy else 1


def report_setup_failure(exc: Exception) -> int:
    """Say why the run could not go on and return its exit status (1): a broker server that
    did not start (``EmbeddedServerError``, its message says how to fix it), or a directory or
    file the command could not write (a read-only or full file system under --log-dir,
    --data-dir or --out: which path, and why; a traceback said it before, or, for --log-dir,
    that the metrics port was taken). Any other ``OSError`` (no path) is raised again."""
    if isinstance(exc, OSError):
        if exc.filename is None:
            raise exc
        print(f"workerfleet: cannot use {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
    else:
        print(f"workerfleet: {exc}", file=sys.stderr)
    return 1


def _install_stop_handlers(stop: threading.Event) -> Any:
    """SIGINT/SIGTERM set ``stop`` (handlers only set a flag); returns a restore function."""
    previous = {}

    def handle(signum: int, frame: Any) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handle)

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore
