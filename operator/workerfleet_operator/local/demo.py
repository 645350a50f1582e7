"""``workerfleet demo``: the whole system on one machine in about a minute and a half.

What ``make demo`` runs. It starts an embedded redis-server (``--broker rabbitmq``: a
rabbitmq-server node, ``--broker sqs``: ElasticMQ; :mod:`workerfleet_operator.local.brokers`),
runs ``examples/demo-pool.yaml``
with the local fleet (the operator's autoscaler driving real worker processes that import
``examples/demo_tasks.py``), and drives it with a load generator: a warm-up, a spike, a lull, a
second bump and a quiet tail, with a share of jobs that fail once (retried) and of poison jobs
(dead-lettered). When ``prometheus`` is installed it also runs a real Prometheus on loopback
with the project's alert rules (the fast variant, ``deploy/alerts/workerfleet-alerts.fast.yaml``)
scraping the fleet's metrics, and reports the alerts that fired. At the end it drains the fleet,
prints a summary that ends with

    demo: enqueued=N completed=N dead_lettered=N lost=N peak_replicas=N chart=PATH

where the job counts come from the demo's history (:mod:`workerfleet_operator.local.history`:
the ids the broker accepted, the tasks' run receipts, the dead-letter queue read back, the ids
the queue still holds), the same way on every broker, not from the queue's counters (a broker
that cannot list the ids it holds leaves a job that neither completed nor was dead-lettered
``unchecked``, and the summary says so);
and writes a PNG chart (backlog, replicas, DLQ over time) and the decision log (JSON lines).
Also used by the end-to-end test ``tests/workerfleet_operator/test_local_fleet_demo.py``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import importlib.util
import json
import os
import pathlib
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import yaml

from worker_runtime import producer
from worker_runtime.brokers import base
from workerfleet_operator.local import (
    brokers,
    embedded,
    embedded_redis,
    history,
    lifeline,
    manifest,
    runner,
)

# The demo's pool, tasks and alert rules ship inside the package (workerfleet_operator/data/:
# links to examples/ and deploy/alerts/ in the source tree, copies in a wheel), so an installed
# `workerfleet demo` works outside the repository.
ASSETS = pathlib.Path(__file__).resolve().parents[1] / "data"
EXAMPLES = ASSETS
DEFAULT_POOL = ASSETS / "demo-pool.yaml"
FAST_RULES = ASSETS / "workerfleet-alerts.fast.yaml"
TASK = "thumbnail"
LOAD_SHARE = 0.62  # load runs for this share of the demo; the rest shows the scale-down
TICK_SECONDS = 0.1


@dataclass(frozen=True)
class Phase:
    """A stretch of the load: jobs per second between two offsets (seconds from the start)."""

    name: str
    start: float
    end: float
    rate: float


@dataclass(frozen=True)
class JobMix:
    """Shares of the job kinds (the rest are plain jobs)."""

    flaky: float = 0.05  # fail the first attempt, then succeed
    poison: float = 0.015  # always fail: dead-lettered after retry.maxAttempts
    min_work_ms: int = 300
    max_work_ms: int = 900


def build_load_plan(seconds: float) -> tuple[Phase, ...]:
    """The demo's load: warm-up, spike, lull, bump, tail, scaled to ``seconds``."""
    load = seconds * LOAD_SHARE
    shape = (
        ("warm-up", 0.00, 0.10, 4.0),
        ("spike", 0.10, 0.35, 60.0),
        ("lull", 0.35, 0.65, 3.0),
        ("bump", 0.65, 0.80, 25.0),
        ("tail", 0.80, 1.00, 1.0),
    )
    return tuple(Phase(name, a * load, b * load, rate) for name, a, b, rate in shape)


def build_job_payload(index: int, rng: random.Random, mix: JobMix) -> dict[str, Any]:
    """One thumbnail job of the mix (``rng`` seeded by the caller: the demo is reproducible)."""
    roll = rng.random()
    return {
        "image_id": index,
        "work_ms": rng.randint(mix.min_work_ms, mix.max_work_ms),
        "poison": roll < mix.poison,
        "fail_attempts": 1 if mix.poison <= roll < mix.poison + mix.flaky else 0,
    }


def count_due(plan: Sequence[Phase], elapsed: float) -> int:
    """How many jobs the plan has asked for by ``elapsed`` seconds."""
    total = 0.0
    for phase in plan:
        covered = min(elapsed, phase.end) - phase.start
        if covered > 0:
            total += covered * phase.rate
    return int(total)


@dataclass
class LoadCounts:
    enqueued: int = 0
    poison: int = 0
    flaky: int = 0
    errors: int = 0
    last_error: str | None = None  # of the last failed batch, kept after batches succeed again


class LoadGenerator(threading.Thread):
    """Enqueues the plan's jobs in small batches, on its own thread and broker connection.

    Keeps the id of every job the broker accepted (``enqueued_ids``): the first part of the
    demo's history. A batch the broker did not answer is counted in ``errors`` and retried with
    the same ids on the next tick (so a job it did take is not sent as a second job); the jobs
    the lost reply had stored come back ``created=False`` and are kept too: every id is new, so
    the broker can only hold them from that earlier send. ``failure`` is the error of the last
    batch while batches fail (None once one is taken), for :class:`LoadFailureWatch`.
    """

    def __init__(
        self,
        redis_url: str,
        queue: str,
        plan: Sequence[Phase],
        *,
        seed: int = 7,
        options: base.QueueOptions | None = None,
    ) -> None:
        super().__init__(name="demo-load", daemon=True)
        self.plan = tuple(plan)
        self.counts = LoadCounts()
        self.enqueued_ids: list[str] = []
        self.failure: str | None = None
        self.stop_event = threading.Event()
        self.broker_url = redis_url  # any scheme open_broker serves
        self.queue = queue
        self.options = options or base.QueueOptions()
        self._rng = random.Random(seed)
        self._mix = JobMix()

    def run(self) -> None:
        # the broker is opened on this thread: its event loop runs here
        target = brokers.SyncQueue(self.broker_url, self.queue, self.options)
        try:
            self._send_plan(target)
        finally:
            target.close()

    def _send_plan(self, target: brokers.SyncQueue) -> None:
        started = time.monotonic()
        end = self.plan[-1].end if self.plan else 0.0
        waiting: list[base.EnqueueRequest] = []
        made = 0
        while not self.stop_event.is_set():
            elapsed = time.monotonic() - started
            due = count_due(self.plan, min(elapsed, end))
            for index in range(made, due):
                payload = build_job_payload(index, self._rng, self._mix)
                self.counts.poison += int(payload["poison"])
                self.counts.flaky += int(payload["fail_attempts"] > 0)
                waiting.append(producer.build_request(producer.JobSpec(TASK, payload)))
            made = max(made, due)
            if waiting:
                try:
                    results = target.enqueue_many(waiting)
                    self.enqueued_ids.extend(r.job_id for r in results)
                    self.counts.enqueued += len(results)
                    waiting = []
                    self.failure = None
                except Exception as exc:  # counted and said (LoadFailureWatch, the summary)
                    self.counts.errors += 1
                    self.failure = self.counts.last_error = describe_enqueue_error(exc)
            if elapsed >= end and not waiting:
                break
            self.stop_event.wait(TICK_SECONDS)


REFUSED_WRITES = {
    "MISCONF": "it cannot write its data to disk (a full disk?)",
    "OOM": "it is out of memory (maxmemory reached, nothing to evict)",
    "NOREPLICAS": "fewer replicas than its min-replicas-to-write are in sync",
    "READONLY": "it is a read-only replica",
}
"""Redis' error codes for a write it refuses while it still answers reads, and what each means."""

LOAD_FAILURE_REPEAT_SECONDS = 10.0
"""How often the demo says again that the load's enqueues still fail."""


def describe_enqueue_error(exc: BaseException) -> str:
    """A failed enqueue or publish as the demo says it, with Redis' error code kept.

    redis-py cuts the code off the message of the errors it has a class for (``OOM``,
    ``READONLY``: "command not allowed when used memory > 'maxmemory'."), and the broker's
    error quotes that message, so :func:`describe_load_failure` could not tell a Redis out of
    memory from any other failure. The code comes back in front of the quoted message.
    """
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    code = getattr(cause, "status_code", None)
    if not isinstance(code, str) or code not in REFUSED_WRITES or re.search(rf"\b{code}\b", text):
        return text
    message = str(cause)
    if message and message in text:
        return text.replace(message, f"{code} {message}", 1)
    return f"{text} ({code})"


@dataclass(frozen=True)
class LoadWording:
    """What a demo's load is called in the lines :class:`LoadFailureWatch` says."""

    jobs: str = "the load's jobs"
    going_on: str = "the load keeps retrying"


def describe_load_failure(
    error: str,
    data_dir: pathlib.Path,
    free_bytes: int | None,
    wording: LoadWording = LoadWording(),
) -> str:
    """The line saying why the broker takes none of the load's jobs, and what to check.

    A Redis that refuses writes (a full disk, maxmemory) still answers the reads the view is made
    of, so the demo's screen looked as if the load had paused. ``free_bytes``: the free space
    where ``data_dir`` is (None when unknown), said for a disk error.
    """
    found = re.search(r"\b(" + "|".join(REFUSED_WRITES) + r")\b", error)
    if found is None:
        return (
            f"workerfleet demo: the broker takes none of {wording.jobs}: {error}; "
            f"{wording.going_on}"
        )
    code = found[1]
    where = ""
    if code == "MISCONF":
        free = "" if free_bytes is None else f", {free_bytes / 1e6:.0f} MB free"
        where = f": its data directory is {data_dir}{free}"
    return (
        f"workerfleet demo: redis refuses writes: {REFUSED_WRITES[code]}{where} ({error}); "
        f"{wording.going_on}"
    )


class LoadFailureWatch:
    """Says on stderr when the load's enqueues start failing and why, again every
    :data:`LOAD_FAILURE_REPEAT_SECONDS` while they fail, and when the broker takes jobs again.

    Fed at every poll with the load's last failure (:func:`describe_enqueue_error`) and the
    demo's clock, by :func:`run_demo` and by the events scenario for its publisher (its own
    ``wording``).
    """

    def __init__(self, data_dir: pathlib.Path, wording: LoadWording = LoadWording()) -> None:
        self.data_dir = data_dir
        self.wording = wording
        self._said: str | None = None
        self._said_at = 0.0

    def note(self, failure: str | None, at: float) -> None:
        if failure is None:
            if self._said is not None:
                self._say(f"workerfleet demo: the broker takes {self.wording.jobs} again")
            self._said = None
            return
        if failure == self._said and at - self._said_at < LOAD_FAILURE_REPEAT_SECONDS:
            return
        self._said, self._said_at = failure, at
        free = self._fetch_free_bytes()
        self._say(describe_load_failure(failure, self.data_dir, free, self.wording))

    def _fetch_free_bytes(self) -> int | None:
        try:
            return shutil.disk_usage(self.data_dir).free
        except OSError:
            return None

    @staticmethod
    def _say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)


class Prometheus:
    """A real Prometheus server on loopback scraping the fleet, with the project's alert rules.

    By default it scrapes the fleet's metrics port as the operator; the alert tests pass their own
    ``scrape_configs`` (file-based discovery, to move targets as Kubernetes would).
    """

    def __init__(
        self,
        workdir: pathlib.Path,
        rules: pathlib.Path,
        target_port: int,
        scrape_configs: list[dict[str, Any]] | None = None,
        worker_targets: pathlib.Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.rules = rules
        self.target_port = target_port
        self.scrape_configs = scrape_configs
        self.worker_targets = worker_targets
        self.port = embedded_redis.fetch_free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("prometheus") is not None

    def start(self, timeout: float = 20.0) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus not found: run `make deps`")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(self.rules)],
            "scrape_configs": self.scrape_configs or self._build_fleet_scrape_configs(),
        }
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        with (self.workdir / "prometheus.log").open("ab") as log:
            self.process = subprocess.Popen(
                lifeline.build_tied_command(
                    [
                        binary,
                        f"--config.file={config_path}",
                        f"--storage.tsdb.path={self.workdir / 'data'}",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                        "--log.level=warn",
                    ]
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited (see {self.workdir}/prometheus.log)")
            try:
                with urllib.request.urlopen(self.url("/-/ready"), timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError("prometheus did not become ready")

    def _build_fleet_scrape_configs(self) -> list[dict[str, Any]]:
        configs: list[dict[str, Any]] = [
            {
                # The local fleet plays the operator: it serves the operator's metrics.
                "job_name": "workerfleet-operator",
                "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{self.target_port}"]}],
            }
        ]
        if self.worker_targets is not None:
            # The worker processes, listed by the fleet as they start and stop.
            configs.append(
                {
                    "job_name": "workerfleet-workers",
                    "file_sd_configs": [
                        {"files": [str(self.worker_targets)], "refresh_interval": "1s"}
                    ],
                }
            )
        return configs

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def fetch_query(self, expr: str) -> list[dict[str, Any]]:
        """``/api/v1/query``: the instant vector of ``expr`` (raises if Prometheus refuses it)."""
        url = self.url("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # 400/422: a query Prometheus refuses, and why
            raise RuntimeError(f"query {expr!r} failed: {exc.read().decode()}") from exc
        if body.get("status") != "success":
            raise RuntimeError(f"query {expr!r} failed: {body}")
        return list(body["data"]["result"])

    def fetch_alerts(self) -> list[dict[str, Any]]:
        """``/api/v1/alerts``: every pending or firing alert with its labels."""
        try:
            with urllib.request.urlopen(self.url("/api/v1/alerts"), timeout=2) as response:
                body = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            return []
        return list(body.get("data", {}).get("alerts", []))

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def start_prometheus(prometheus: Prometheus) -> tuple[Prometheus | None, str]:
    """Start ``prometheus``: (it, what the summary says of it), or (None, why) when it would not
    start (the demo then runs without alerts and says so).

    The summary names where it ran, not a link: it is printed after the demo stopped this
    Prometheus with everything else, and a link to its alerts page would lead nowhere.
    """
    try:
        prometheus.start()
    except RuntimeError as exc:
        return None, f"failed: {exc}"
    return prometheus, (
        f"ran on 127.0.0.1:{prometheus.port} with {prometheus.rules.name}, stopped with the demo"
    )


def note_firing_alerts(
    prometheus: Prometheus, seen: dict[str, float], at: float, *, by_pool: bool = False
) -> None:
    """Add each alert firing now and not yet in ``seen`` to it, at ``at`` seconds; keyed by
    alert name, or by ``name (pool)`` when several pools run."""
    for alert in prometheus.fetch_alerts():
        labels = alert.get("labels", {})
        name = str(labels.get("alertname", "?"))
        if by_pool:
            name = f"{name} ({labels.get('pool', '-')})"
        if alert.get("state") == "firing" and name not in seen:
            seen[name] = at


@dataclass(frozen=True)
class Point:
    """One poll of the demo, for the chart."""

    t: float
    backlog: int
    in_flight: int
    delayed: int
    dead_letter: int
    replicas: int
    desired: int
    completed: int | None  # None: the broker keeps no total (SQS)


@dataclass
class DemoResult:
    """What the demo measured, for its summary (scaling totals are the runner's own)."""

    enqueued: int = 0
    completed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    pending: int = 0  # jobs the broker still holds, by id (its count when not checked)
    lost: int = 0
    unchecked: int = 0  # jobs not accounted for that the broker could not be asked about
    pending_checked: bool = True  # the broker listed the ids it holds
    scaling: runner.RunnerTotals = field(default_factory=runner.RunnerTotals)
    workers_killed: int = 0  # SIGKILLed by the fleet after an overdue drain
    workers_crashed: int = 0  # worker processes that exited on their own (restarted)
    stopped_early: bool = False  # Ctrl-C or SIGTERM before the run's time was up
    workers_lost: int | None = 0  # heartbeats expired undrained; None: the broker keeps none
    load_errors: int = 0
    load_failure: str | None = None  # the error of the last failed enqueue, if any failed
    poison_sent: int = 0
    flaky_sent: int = 0
    alerts: dict[str, float] = field(default_factory=dict)  # alert name -> first firing (s)
    prometheus: str = "not run"
    chart: pathlib.Path | None = None
    decisions: pathlib.Path | None = None
    seconds: float = 0.0
    points: list[Point] = field(default_factory=list)
    broker: str = "redis"
    missing: tuple[str, ...] = ()  # some of the lost (or unchecked) job ids
    history: pathlib.Path | None = None  # the ids behind the job counts (history.json)


def render_alerts(alerts: dict[str, float]) -> str:
    """The alerts that fired, first firing first (``name at 12s, ...``), or ``none``."""
    return (
        ", ".join(f"{name} at {t:.0f}s" for name, t in sorted(alerts.items(), key=lambda i: i[1]))
        or "none"
    )


def describe_problems(result: DemoResult) -> list[str]:
    """Why the run does not show a healthy system (empty when it does): the demo exits 1 on any.

    A run that did not finish (stopped early, jobs still queued) or sent no job proves nothing
    about its jobs, and a fleet whose workers crash can end with nothing lost only because
    nothing ran.
    """
    queued = str(result.pending) if result.pending_checked else f"~{result.pending}"
    problems = [
        *(["stopped early"] if result.stopped_early else []),
        # `--seconds 0` sent nothing: "enqueued 0 … lost 0" showed no system at work
        *(["no job enqueued"] if result.enqueued == 0 else []),
        *([f"{queued} job(s) still queued"] if result.pending else []),
        *([f"{result.lost} job(s) lost"] if result.lost else []),
        *([f"{result.unchecked} job(s) unchecked"] if result.unchecked else []),
        *([f"{result.workers_crashed} worker crash(es)"] if result.workers_crashed else []),
        *([f"{result.workers_killed} worker(s) killed"] if result.workers_killed else []),
        *(
            [
                f"{result.load_errors} failed enqueue(s)"
                + (f" (the last: {result.load_failure})" if result.load_failure else "")
            ]
            if result.load_errors
            else []
        ),
    ]
    return problems


def build_summary(result: DemoResult) -> str:
    """The demo's closing lines; the last one is the machine-readable ``demo:`` line."""
    alerts = render_alerts(result.alerts)
    queued = str(result.pending) if result.pending_checked else f"~{result.pending}"
    problems = describe_problems(result)
    ended = "stopped early (Ctrl-C or SIGTERM)" if result.stopped_early else "finished"
    lines = [
        f"workerfleet demo {ended} in {result.seconds:.0f}s on {result.broker}",
        f"  jobs:     enqueued {result.enqueued} ({result.flaky_sent} flaky, "
        f"{result.poison_sent} poison), completed {result.completed}, retried "
        f"{result.retried}, dead-lettered {result.dead_lettered}, still queued "
        f"{queued}, lost {result.lost}",
        f"  scaling:  peak {result.scaling.peak_replicas} replicas, "
        f"{result.scaling.scale_ups} scale-ups, {result.scaling.scale_downs} scale-downs, "
        f"workers crashed {result.workers_crashed}, killed {result.workers_killed}, "
        "lost without drain "
        + (
            "n/a (the broker keeps no heartbeats)"
            if result.workers_lost is None
            else str(result.workers_lost)
        ),
        f"  alerts:   {alerts} (prometheus: {result.prometheus})",
        f"  decisions: {result.decisions}",
        *(
            [f"  lost:     {result.lost} job(s), among them {', '.join(result.missing)}"]
            if result.lost
            else []
        ),
        *(
            [
                f"  unchecked: {result.unchecked} job(s) neither completed nor dead-lettered, "
                f"and {result.broker} cannot list the jobs it holds: still queued or lost "
                f"(~{result.pending} queued by its own count), among them "
                + ", ".join(result.missing)
            ]
            if result.unchecked
            else []
        ),
        *([f"  not healthy (exit 1): {', '.join(problems)}"] if problems else []),
        f"demo: enqueued={result.enqueued} completed={result.completed} "
        f"dead_lettered={result.dead_lettered} lost={result.lost}"
        + (f" unchecked={result.unchecked}" if result.unchecked else "")
        + f" peak_replicas={result.scaling.peak_replicas} chart={result.chart}",
    ]
    return "\n".join(lines)


def build_chart(
    points: Sequence[Point],
    plan: Sequence[Phase],
    alerts: dict[str, float],
    path: pathlib.Path,
    title: str,
) -> pathlib.Path:
    """A PNG of backlog/in-flight, replicas (actual and desired) and the DLQ over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [p.t for p in points]
    fig, (ax_queue, ax_replicas, ax_dlq) = plt.subplots(
        3, 1, figsize=(11, 8), sharex=True, gridspec_kw={"height_ratios": [3, 2, 1.5]}
    )
    ax_queue.plot(t, [p.backlog for p in points], label="backlog", color="tab:blue")
    ax_queue.plot(t, [p.in_flight for p in points], label="in flight", color="tab:green")
    ax_queue.plot(t, [p.delayed for p in points], label="retries waiting", color="tab:orange")
    ax_queue.set_ylabel("jobs")
    ax_replicas.step(t, [p.replicas for p in points], where="post", label="replicas", color="k")
    ax_replicas.step(
        t, [p.desired for p in points], where="post", label="desired", color="tab:red", ls="--"
    )
    ax_replicas.set_ylabel("replicas")
    ax_dlq.plot(t, [p.dead_letter for p in points], label="dead letters", color="tab:purple")
    ax_dlq.set_ylabel("DLQ")
    ax_dlq.set_xlabel("seconds")
    for phase in plan:
        if phase.name in ("spike", "bump"):
            for ax in (ax_queue, ax_replicas, ax_dlq):
                ax.axvspan(phase.start, phase.end, color="tab:gray", alpha=0.12)
            ax_queue.annotate(
                phase.name, (phase.start, 1), xycoords=("data", "axes fraction"), va="top"
            )
    for name, at in alerts.items():
        ax_dlq.axvline(at, color="tab:red", lw=0.8)
        ax_dlq.annotate(
            name.removeprefix("WorkerPool"),
            (at, 0.9),
            xycoords=("data", "axes fraction"),
            fontsize=7,
            rotation=90,
            va="top",
            ha="right",
        )
    for ax in (ax_queue, ax_replicas, ax_dlq):
        ax.legend(loc="upper right", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


OUT_LOCK = ".workerfleet-demo.lock"
"""The file in a demo's output directory that the running demo holds locked (flock)."""

_P = ParamSpec("_P")
_R = TypeVar("_R")


@contextlib.contextmanager
def claim_out_dir(out_dir: pathlib.Path) -> Iterator[pathlib.Path]:
    """Hold ``out_dir`` for one demo (an exclusive ``flock`` on its lock file, released when
    the demo ends, or dies: the kernel drops it with the process).

    Two demos in one directory wrote one decision log, history and chart, removed each other's
    worker logs (the events demo: the other's history, whose events it then counted lost), and
    each summary named files that held the other run. The second now stops before writing:
    an ``OSError`` naming the directory, as for one it cannot write.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / OUT_LOCK).open("a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            why = f"another demo (pid {holder}) writes there; let it end or pass --out DIR"
            raise OSError(errno.EBUSY, why, str(out_dir)) from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield out_dir


def holding_out_dir(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run a demo (keyword ``out_dir``) only while it holds that directory
    (:func:`claim_out_dir`)."""

    @functools.wraps(function)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with claim_out_dir(pathlib.Path(str(kwargs["out_dir"]))):
            return function(*args, **kwargs)

    return run


@holding_out_dir
def run_demo(
    *,
    seconds: float = 80.0,
    out_dir: pathlib.Path,
    pool_path: pathlib.Path = DEFAULT_POOL,
    app_path: pathlib.Path = EXAMPLES,
    use_prometheus: bool = True,
    rules: pathlib.Path = FAST_RULES,
    on_snapshot: Callable[[runner.Snapshot, str], None] | None = None,
    stop: threading.Event | None = None,
    probe: Callable[[runner.Snapshot, Prometheus], None] | None = None,
    broker: brokers.BrokerKind = "redis",
) -> DemoResult:
    """Run the demo for ``seconds`` (then drain) and return what happened.

    ``probe`` (the dashboard test) is called after every poll with the running Prometheus.
    ``broker`` picks the embedded server the pool's queue lives on.
    """
    started = time.monotonic()
    stop = stop or threading.Event()
    out_dir.mkdir(parents=True, exist_ok=True)
    pool = manifest.fetch_pool(pool_path)
    plan = build_load_plan(seconds)
    result = DemoResult(broker=broker)
    decisions = out_dir / "decisions.jsonl"
    decisions.write_text("", encoding="utf-8")
    points: list[Point] = []
    options = brokers.build_queue_options(pool.spec)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="workerfleet-demo-"))
    server: embedded.EmbeddedServer | None = None
    prometheus: Prometheus | None = None
    try:
        receipts = workdir / "receipts"
        receipts.mkdir()
        # inside the try: a broker that fails to start must not leave the workdir behind
        server = brokers.start_server(broker, None)
        fleet_runner = runner.FleetRunner(
            pool,
            redis_url=server.broker_url,
            log_dir=out_dir / "worker-logs",
            app_path=app_path,
            metrics_port=0,
            redis_label=server.describe(),
            decision_log=decisions,
            worker_env={history.RECEIPTS_ENV: str(receipts)},
        )
        if use_prometheus and Prometheus.available() and fleet_runner.metrics_port:
            prometheus = Prometheus(
                workdir / "prometheus",
                rules,
                fleet_runner.metrics_port,
                worker_targets=fleet_runner.fleet.targets_path,
            )
            prometheus, result.prometheus = start_prometheus(prometheus)
        elif use_prometheus:
            result.prometheus = "not installed (run `make deps`)"
        load = LoadGenerator(server.broker_url, pool.queue, plan, options=options)
        load.start()
        last_alert_check = [0.0]
        load_watch = LoadFailureWatch(server.data_dir)

        def record(snapshot: runner.Snapshot) -> None:
            load_watch.note(load.failure, snapshot.at)
            s = snapshot.queue_stats
            if s is not None:
                points.append(
                    Point(
                        t=snapshot.at,
                        backlog=s.backlog,
                        in_flight=s.in_flight,
                        delayed=s.future_delayed,
                        dead_letter=s.dead_letter,
                        replicas=snapshot.replicas,
                        desired=snapshot.decision.desired,
                        completed=s.completed_total,
                    )
                )
            if prometheus is not None and snapshot.at - last_alert_check[0] >= 2.0:
                last_alert_check[0] = snapshot.at
                note_firing_alerts(prometheus, result.alerts, snapshot.at)
            if on_snapshot is not None:
                on_snapshot(snapshot, _build_phase_label(plan, snapshot.at, load.counts))
            if probe is not None and prometheus is not None:
                probe(snapshot, prometheus)

        try:
            fleet_runner.run(stop, on_snapshot=record, max_seconds=seconds)
            result.stopped_early = stop.is_set()
        finally:
            load.stop_event.set()
            load.join(10)
            fleet_runner.close()
        final = fetch_final_state(server.broker_url, pool.queue, options)
        if prometheus is not None:
            note_firing_alerts(prometheus, result.alerts, time.monotonic() - started)
        counts = load.counts
        outcome = history.judge_history(
            load.enqueued_ids,
            history.read_runs(receipts),
            final.dead_letter_ids,
            final.held_ids,
            held_count=final.stats.backlog + final.stats.in_flight + final.stats.future_delayed,
        )
        result.enqueued = outcome.enqueued
        result.load_errors = counts.errors
        result.load_failure = counts.last_error
        result.poison_sent = counts.poison
        result.flaky_sent = counts.flaky
        result.completed = outcome.completed
        result.retried = outcome.retried
        result.dead_lettered = outcome.dead_lettered
        result.pending = outcome.pending
        result.pending_checked = outcome.checked
        result.lost = outcome.lost
        result.unchecked = outcome.unchecked
        result.missing = outcome.missing
        result.history = history.write_history(
            out_dir / "history.json", load.enqueued_ids, receipts, final.dead_letter_ids, outcome
        )
        result.scaling = fleet_runner.totals
        result.workers_killed = fleet_runner.fleet.counters.killed
        result.workers_crashed = fleet_runner.fleet.counters.crashed
        result.workers_lost = count_workers_lost(final.stats, final.capabilities)
        result.points = points
        result.decisions = decisions
        if importlib.util.find_spec("matplotlib") is None:
            # matplotlib is the `demo` extra: a plain `pip install workerfleet` still runs the
            # demo; only the PNG is left out (the decisions log and the summary remain)
            print(
                "workerfleet demo: no chart (pip install 'workerfleet[demo]' for the PNG)",
                file=sys.stderr,
                flush=True,
            )
        else:
            result.chart = build_chart(
                points,
                plan,
                result.alerts,
                out_dir / "workerfleet-demo.png",
                f"workerfleet demo: pool {pool.name} (max {pool.policy.max_replicas} replicas)",
            )
    finally:
        if prometheus is not None:
            prometheus.stop()
        if server is not None:
            server.close()
        shutil.rmtree(workdir, ignore_errors=True)
    result.seconds = time.monotonic() - started
    return result


STATS_SETTLE_SECONDS = 1.5
"""Wait before the final read where the broker's numbers are samples (RabbitMQ's management API
samples every 0.5 s on the embedded node; ElasticMQ's counts are approximate like SQS's)."""


@dataclass(frozen=True)
class FinalState:
    """The queue after the drain, as the demo's history reads it."""

    stats: base.QueueStats  # its numbers (shown; they excuse no missing job)
    dead_letter_ids: set[str]  # read from the DLQ itself
    held_ids: set[str] | None  # every job it still holds, by id; None: it cannot list them
    capabilities: base.Capabilities


def count_workers_lost(stats: base.QueueStats, capabilities: base.Capabilities) -> int | None:
    """Workers whose heartbeat expired without a drain, or None when the broker keeps no
    heartbeats (RabbitMQ, SQS): their stats report 0 whatever happened, so 0 would claim a
    check that was never made."""
    if not capabilities.heartbeats or stats.workers_lost_total is None:
        return None
    # Reaped or not yet: the demo ends before a stalled worker could come back.
    return stats.workers_lost_total + stats.workers_expired


def fetch_final_state(url: str, queue: str, options: base.QueueOptions) -> FinalState:
    """After the drain: the queue's numbers, the DLQ's job ids and the ids it still holds."""
    target = brokers.SyncQueue(url, queue, options, timeout=30.0)
    try:
        if not target.broker.capabilities.exact_stats:
            time.sleep(STATS_SETTLE_SECONDS)
        return FinalState(
            stats=target.fetch_stats(),
            dead_letter_ids=target.list_dead_letter_ids(),
            held_ids=target.list_held_job_ids(),
            capabilities=target.broker.capabilities,
        )
    finally:
        target.close()


def _build_phase_label(plan: Sequence[Phase], at: float, counts: LoadCounts) -> str:
    current = next((p for p in plan if p.start <= at < p.end), None)
    phase = f"{current.name} ({current.rate:g} jobs/s)" if current else "quiet"
    return f"load: {phase} · enqueued {counts.enqueued}"
