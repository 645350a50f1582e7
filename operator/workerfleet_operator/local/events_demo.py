"""``workerfleet demo --scenario events``: one event, three subscription pools, scaled apart.

Runs ``examples/events/`` on an embedded redis-server: the three WorkerPools there (e-mail,
analytics, fulfilment: the subscriptions of ``shop.order.placed``) each get a
:class:`runner.FleetRunner` (the operator's autoscaler driving local worker processes that
import ``shop_events:app``), polled together by :func:`runner.run_together` so each pool
scales on its own subscription's backlog. Like the operator, each runner first registers its
pool's subscription (``spec.queue.subscription``) in the broker, before any worker exists (the
pools start at zero replicas); then the demo publishes orders in a warm-up, a burst, a lull
and a bump (a share of them at schema version 1, which the handlers upcast), waits until every
subscription has settled, drains the fleet and prints a summary ending with

    events: published=N subscriptions=3 delivered=3N lost=0 peak_replicas=a/b/c

``delivered`` and ``lost`` come from a history, not from the runtime's counters: the
publisher's own record of which events each publish stored and in which subscriptions, the
handlers' witness lines (``SHOP_EVENTS_HISTORY_DIR``: one line per finished event and group)
and the done marker each handler's ack writes atomically with the ack (``{wf:Q}:done:<event
id>``). A pair (event, subscription) is delivered when its handler finished it and its ack
stored the marker; it is lost when it is neither delivered nor still held by the broker
(in the queue, waiting for a retry, or dead-lettered). When ``prometheus`` is installed the
fleet's metrics are scraped by a real Prometheus with the project's fast alert rules, and
the alerts that fired are reported (the subscription lag alert among them while the
fulfilment pool is behind).

Called by :mod:`workerfleet_operator.local.cli` and the test
``tests/workerfleet_operator/test_local_events_demo.py``.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from worker_runtime import App, brokers, events
from worker_runtime.brokers import base
from worker_runtime.brokers.redis import connection, keys
from workerfleet_operator.local import demo, embedded_redis, manifest, runner

EXAMPLE = demo.ASSETS / "events"
POOL_FILES = ("email-pool.yaml", "analytics-pool.yaml", "fulfilment-pool.yaml")
TOPIC = "shop.order.placed"
HISTORY_ENV = "SHOP_EVENTS_HISTORY_DIR"
PUBLISH_SHARE = 0.6  # orders are published during this share of the run; the rest settles
V1_SHARE = 0.1  # orders sent by an "old" publisher at schema version 1 (upcast by handlers)
IDLE_POLLS = 3  # consecutive polls with every subscription empty before the demo settles


@dataclass(frozen=True)
class Subscription:
    """One pool's subscription: the topic and group its queue ``<topic>:<group>`` serves."""

    pool: str
    topic: str
    group: str
    queue: str


def subscription_of(pool: manifest.LocalPool) -> Subscription:
    """The subscription a pool of the example serves (its ``spec.queue.subscription``)."""
    subscription = pool.spec.queue.subscription
    if subscription is None:
        raise manifest.ManifestError(f"WorkerPool {pool.name}: spec.queue.subscription is not set")
    return Subscription(pool.name, subscription.topic, subscription.group, pool.queue)


def build_publish_plan(seconds: float) -> tuple[demo.Phase, ...]:
    """When orders arrive: warm-up, burst, lull, bump, over the publishing share of ``seconds``."""
    span = seconds * PUBLISH_SHARE
    shape = (
        ("warm-up", 0.00, 0.15, 2.0),
        ("burst", 0.15, 0.45, 20.0),
        ("lull", 0.45, 0.75, 2.0),
        ("bump", 0.75, 0.90, 8.0),
    )
    return tuple(demo.Phase(name, a * span, b * span, rate) for name, a, b, rate in shape)


def build_order(index: int, rng: random.Random) -> tuple[int, dict[str, Any]]:
    """Order number ``index`` as (schema version, data): version 2 mostly, 1 for a share."""
    items = rng.randint(1, 5)
    cents = items * rng.randint(500, 4000)
    order = {"order_id": f"o{index:05d}", "customer": f"buyer{index}@example.com", "items": items}
    if rng.random() < V1_SHARE:
        return 1, {**order, "total": cents / 100}
    return 2, {**order, "total_cents": cents}


def correlation_of(index: int) -> str:
    """The correlation id an order's work carries (``workerfleet trace order-00042``)."""
    return f"order-{index:05d}"


@dataclass(frozen=True)
class Published:
    """The publisher's record of one publish that returned: which subscriptions stored it."""

    index: int
    event_id: str
    version: int
    groups: tuple[str, ...]


@dataclass
class PublisherLog:
    published: list[Published] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    done: bool = False


PUBLISHER_WORDING = demo.LoadWording(
    jobs="the published orders", going_on="the publisher goes on with the next orders"
)
"""How the lines of :class:`demo.LoadFailureWatch` call the publisher (it does not retry an
order: a failed publish is an error of the summary)."""


class OrderPublisher(threading.Thread):
    """Publishes the plan's orders through ``App.publish`` on its own thread and event loop.

    ``failure`` is the error of the last publish while publishes fail (None once one is
    stored), for :class:`demo.LoadFailureWatch`.
    """

    def __init__(self, redis_url: str, plan: Sequence[demo.Phase], *, seed: int = 11) -> None:
        super().__init__(name="events-publisher", daemon=True)
        self.redis_url = redis_url
        self.plan = tuple(plan)
        self.log = PublisherLog()
        self.failure: str | None = None
        self.stop_event = threading.Event()
        self._rng = random.Random(seed)

    def run(self) -> None:
        try:
            asyncio.run(self._publish_plan())
        finally:
            self.log.done = True

    async def _publish_plan(self) -> None:
        broker = await brokers.open_broker(self.redis_url, "shop.storefront", socket_timeout=5.0)
        app = App(queue="shop.storefront")
        app.bind_broker(broker)
        started = time.monotonic()
        end = self.plan[-1].end if self.plan else 0.0
        sent = 0
        try:
            while not self.stop_event.is_set():
                elapsed = time.monotonic() - started
                due = demo.count_due(self.plan, min(elapsed, end))
                while sent < due and not self.stop_event.is_set():
                    version, data = build_order(sent, self._rng)
                    try:
                        result = await app.publish(
                            TOPIC, data, version=version, correlation_id=correlation_of(sent)
                        )
                    except Exception as exc:  # said at once (LoadFailureWatch), in the summary
                        self.log.errors.append(f"order {sent}: {type(exc).__name__}: {exc}")
                        self.failure = demo.describe_enqueue_error(exc)
                    else:
                        self.failure = None
                        self.log.published.append(
                            Published(sent, result.event_id, version, result.created)
                        )
                    sent += 1
                if elapsed >= end:
                    break
                await asyncio.sleep(demo.TICK_SECONDS)
        finally:
            await broker.close()


def note_publisher(watch: demo.LoadFailureWatch, publisher: OrderPublisher, at: float) -> None:
    """Feed ``watch`` the publisher's last failure while it publishes.

    Once it is done no publish clears a last failure, so the watch would repeat it through the
    whole settle, after Redis took writes again; the summary counts the failed orders.
    """
    if not publisher.log.done:
        watch.note(publisher.failure, at)


@dataclass(frozen=True)
class GroupOutcome:
    """What the history says about one subscription."""

    group: str
    expected: int  # (event, group) pairs the publisher's record says were stored
    delivered: int  # finished by the handler (witness) and acked (done marker)
    retried: int  # delivered on an attempt after the first
    held: int  # not delivered, still in the broker (queue, retry wait or dead letters)
    lost: int


def read_witness(history_dir: pathlib.Path) -> dict[tuple[str, str], int]:
    """(group, event id) → the attempt that finished it, from the handlers' witness files."""
    runs: dict[tuple[str, str], int] = {}
    for path in sorted(history_dir.glob("runs-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill: that run is not counted as finished
            runs[(str(entry["group"]), str(entry["event"]))] = int(entry["attempt"])
    return runs


def check_history(
    published: Sequence[Published],
    subscriptions: Sequence[Subscription],
    witness: Mapping[tuple[str, str], int],
    acked: Callable[[str, str], bool],
    held: Callable[[str, str], bool],
) -> list[GroupOutcome]:
    """Each subscription's delivered and lost pairs, from the three records (see the module
    docstring); ``acked``/``held`` answer for one (queue, event id)."""
    out = []
    for sub in subscriptions:
        expected = [p.event_id for p in published if sub.group in p.groups]
        delivered = retried = still_held = 0
        for event_id in expected:
            attempt = witness.get((sub.group, event_id))
            if attempt is not None and acked(sub.queue, event_id):
                delivered += 1
                retried += attempt > 1
            elif held(sub.queue, event_id):
                still_held += 1
        lost = len(expected) - delivered - still_held
        out.append(GroupOutcome(sub.group, len(expected), delivered, retried, still_held, lost))
    return out


@dataclass
class EventsResult:
    """What the events demo measured, for its summary."""

    published: int = 0
    published_v1: int = 0
    publish_errors: list[str] = field(default_factory=list)
    subscriptions: list[str] = field(default_factory=list)  # registered groups of the topic
    outcomes: list[GroupOutcome] = field(default_factory=list)
    peaks: dict[str, int] = field(default_factory=dict)  # group -> peak replicas
    scaling: dict[str, runner.RunnerTotals] = field(default_factory=dict)
    workers_killed: int = 0
    alerts: dict[str, float] = field(default_factory=dict)  # "Alert (pool)" -> first firing (s)
    prometheus: str = "not run"
    settled: bool = False
    trace_id: str | None = None
    trace: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def delivered(self) -> int:
        return sum(o.delivered for o in self.outcomes)

    @property
    def lost(self) -> int:
        return sum(o.lost for o in self.outcomes)


def build_summary(result: EventsResult, groups: Sequence[str]) -> str:
    """The closing lines; the last one is the machine-readable ``events:`` line."""
    alerts = demo.render_alerts(result.alerts)
    lines = [
        f"workerfleet demo --scenario events finished in {result.seconds:.0f}s",
        f"  topic {TOPIC}: published {result.published} ({result.published_v1} at version 1), "
        f"subscriptions {', '.join(result.subscriptions) or 'none'}"
        + (f", publish errors {len(result.publish_errors)}" if result.publish_errors else ""),
    ]
    for outcome in result.outcomes:
        totals = result.scaling.get(outcome.group, runner.RunnerTotals())
        lines.append(
            f"  {outcome.group + ':':<11} delivered {outcome.delivered}/{outcome.expected} "
            f"(retried {outcome.retried}), still held {outcome.held}, lost {outcome.lost}; "
            f"peak {totals.peak_replicas} replicas, {totals.scale_ups} scale-ups, "
            f"{totals.scale_downs} scale-downs"
        )
    lines.append(f"  alerts:     {alerts} (prometheus: {result.prometheus})")
    if not result.settled:
        lines.append("  not settled: the run ended before every subscription was empty")
    if result.trace_id is not None:
        lines.append(f"  trace of {result.trace_id} (workerfleet trace {result.trace_id}):")
        lines.extend(f"    {line}" for line in result.trace)
    peaks = "/".join(str(result.peaks.get(g, 0)) for g in groups)
    lines.append(
        f"events: published={result.published} subscriptions={len(result.subscriptions)} "
        f"delivered={result.delivered} lost={result.lost} peak_replicas={peaks}"
    )
    return "\n".join(lines)


def load_pools(example: pathlib.Path = EXAMPLE) -> list[manifest.LocalPool]:
    """The example's three WorkerPools, in the order of the summary (email/analytics/fulfilment)."""
    return [manifest.fetch_pool(example / name) for name in POOL_FILES]


async def _fetch_topic(url: str, correlation_id: str) -> tuple[list[str], list[str]]:
    """The topic's registered groups and the trace of ``correlation_id`` as printed lines."""
    broker = await brokers.open_broker(url, "shop.storefront", socket_timeout=5.0)
    try:
        assert isinstance(broker, base.Topics)
        groups = await broker.list_subscriptions(TOPIC)
        return groups, events.render_trace_tree(await broker.fetch_trace(correlation_id))
    finally:
        await broker.close()


@demo.holding_out_dir
def run_events_demo(
    *,
    seconds: float = 60.0,
    out_dir: pathlib.Path,
    example: pathlib.Path = EXAMPLE,
    use_prometheus: bool = True,
    rules: pathlib.Path = demo.FAST_RULES,
    settle_seconds: float | None = None,
    tail_seconds: float = 0.0,
    on_snapshot: Callable[[runner.Snapshot, str], None] | None = None,
    stop: threading.Event | None = None,
) -> EventsResult:
    """Publish orders for ``PUBLISH_SHARE`` of ``seconds``, run until every subscription has
    settled (at most ``settle_seconds`` more; default ``seconds``, at least a minute: on a busy
    machine a short run's backlog takes longer than its publishing), then ``tail_seconds`` of
    scale-down; drain and return what the history says."""
    started = time.monotonic()
    stop = stop or threading.Event()
    out_dir.mkdir(parents=True, exist_ok=True)
    pools = load_pools(example)
    subs = [subscription_of(pool) for pool in pools]
    group_of = {sub.pool: sub.group for sub in subs}
    result = EventsResult()
    history_dir = out_dir / "history"
    shutil.rmtree(history_dir, ignore_errors=True)
    history_dir.mkdir(parents=True)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="workerfleet-events-"))
    server: embedded_redis.EmbeddedRedis | None = None
    prometheus: demo.Prometheus | None = None
    runners: list[runner.FleetRunner] = []
    try:
        # inside the try: a redis-server that fails to start must not leave the workdir behind
        server = embedded_redis.EmbeddedRedis(workdir / "redis").start()
        # Each runner registers its pool's subscription as it starts, as the operator does:
        # every order published from then on reaches all three.
        for pool in pools:
            runners.append(
                runner.FleetRunner(
                    pool,
                    redis_url=server.url,
                    log_dir=out_dir / "worker-logs" / pool.name,
                    app_path=example,
                    metrics_port=0,
                    redis_label=f"embedded 127.0.0.1:{server.port}",
                    decision_log=out_dir / f"decisions-{pool.name}.jsonl",
                    worker_env={HISTORY_ENV: str(history_dir.resolve())},
                )
            )
        if use_prometheus and demo.Prometheus.available():
            prometheus = demo.Prometheus(
                workdir / "prometheus",
                rules,
                0,
                scrape_configs=_build_scrape_configs(runners),
            )
            prometheus, result.prometheus = demo.start_prometheus(prometheus)
        elif use_prometheus:
            result.prometheus = "not installed (run `make deps`)"
        plan = build_publish_plan(seconds)
        publisher = OrderPublisher(server.url, plan)
        publisher.start()
        idle: dict[str, int] = {}
        last_alert_check = [0.0]
        # A Redis that refuses writes still answers the polls: say so, as the main demo does.
        publish_watch = demo.LoadFailureWatch(server.data_dir, PUBLISHER_WORDING)

        def record(snapshot: runner.Snapshot) -> None:
            note_publisher(publish_watch, publisher, time.monotonic() - started)
            s = snapshot.queue_stats
            empty = s is not None and s.backlog + s.in_flight + s.future_delayed == 0
            idle[snapshot.pool] = idle.get(snapshot.pool, 0) + 1 if empty else 0
            at = time.monotonic() - started
            if prometheus is not None and at - last_alert_check[0] >= 2.0:
                last_alert_check[0] = at
                demo.note_firing_alerts(prometheus, result.alerts, at, by_pool=True)
            if on_snapshot is not None:
                on_snapshot(snapshot, _phase_label(plan, at, publisher.log))

        def settled() -> bool:
            return publisher.log.done and all(idle.get(p.name, 0) >= IDLE_POLLS for p in pools)

        settle = max(seconds, 60.0) if settle_seconds is None else settle_seconds
        limit = seconds + settle
        try:
            runner.run_together(runners, stop, on_snapshot=record, max_seconds=limit, until=settled)
            result.settled = settled()
            if result.settled and tail_seconds > 0 and not stop.is_set():
                runner.run_together(runners, stop, on_snapshot=record, max_seconds=tail_seconds)
        finally:
            publisher.stop_event.set()
            publisher.join(10)
            for fleet_runner in runners:
                fleet_runner.close()
        if prometheus is not None:
            demo.note_firing_alerts(
                prometheus, result.alerts, time.monotonic() - started, by_pool=True
            )
        log = publisher.log
        result.published = len(log.published)
        result.published_v1 = sum(1 for p in log.published if p.version == 1)
        result.publish_errors = list(log.errors)
        result.outcomes = _check_against_redis(server.url, log.published, subs, history_dir)
        for fleet_runner in runners:
            group = group_of[fleet_runner.pool.name]
            result.scaling[group] = fleet_runner.totals
            result.peaks[group] = fleet_runner.totals.peak_replicas
            result.workers_killed += fleet_runner.fleet.counters.killed
        fulfilled = next((p for p in log.published if "fulfilment" in p.groups), None)
        result.trace_id = None if fulfilled is None else correlation_of(fulfilled.index)
        result.subscriptions, result.trace = asyncio.run(
            _fetch_topic(server.url, result.trace_id or "-")
        )
        if result.trace_id is None:
            result.trace = []
    finally:
        for fleet_runner in runners:
            fleet_runner.close()  # idempotent after the drain above; here for early failures
        if prometheus is not None:
            prometheus.stop()
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    result.seconds = time.monotonic() - started
    return result


def _check_against_redis(
    url: str,
    published: Sequence[Published],
    subs: Sequence[Subscription],
    history_dir: pathlib.Path,
) -> list[GroupOutcome]:
    client = connection.build_client_sync(url, socket_timeout=5.0)
    try:

        def acked(queue: str, event_id: str) -> bool:
            return bool(client.exists(keys.build_keys(queue).done(event_id)))

        def held(queue: str, event_id: str) -> bool:
            k = keys.build_keys(queue)
            return bool(client.hexists(k.state, event_id) or client.zscore(k.dlq, event_id))

        return check_history(published, subs, read_witness(history_dir), acked, held)
    finally:
        client.close()


def _build_scrape_configs(runners: Sequence[runner.FleetRunner]) -> list[dict[str, Any]]:
    return [
        {
            # Each local pool plays the operator for itself: its per-pool metrics.
            "job_name": "workerfleet-operator",
            "honor_labels": True,
            "static_configs": [
                {"targets": [f"127.0.0.1:{r.metrics_port}" for r in runners if r.metrics_port]}
            ],
        },
        {
            "job_name": "workerfleet-workers",
            "file_sd_configs": [
                {"files": [str(r.fleet.targets_path) for r in runners], "refresh_interval": "1s"}
            ],
        },
    ]


def _phase_label(plan: Sequence[demo.Phase], at: float, log: PublisherLog) -> str:
    current = next((p for p in plan if p.start <= at < p.end), None)
    phase = f"{current.name} ({current.rate:g} orders/s)" if current else "settling"
    return f"orders: {phase} · published {len(log.published)}"
