"""Local worker processes standing in for a Deployment's pods.

Driven by :mod:`workerfleet_operator.local.runner`: it asks for a replica count, and this module
starts ``python -m worker_runtime worker APP`` processes (the same command as the container's
``workerfleet worker``), stops surplus ones with SIGTERM — the cheapest first by the
autoscaler's deletion costs, so idle workers go and busy ones finish their jobs — and restarts
crashed ones with a growing back-off, like a kubelet: the back-off starts again from its first
step once a run lasted ``HEALTHY_RUN_SECONDS`` (the kubelet resets after twice its longest
back-off). A stopped worker drains; it is killed with SIGKILL only if it outlives its drain budget
plus a margin, and every such kill is counted (the tests require zero). Terminating workers are
not counted as replicas, as in Kubernetes.

Each worker leads its own process group (its own session), like a container: SIGTERM goes to the
worker alone so that it drains (a job's subprocess keeps running until its job is done), and
when the worker has exited, crashed or been killed, whatever it forked and left behind gets
SIGKILL, as the processes of a container do when its main process ends.

Every worker serves its own /metrics on a loopback port of its own (kept across restarts);
:meth:`ProcessFleet.publish_targets` lists them in ``worker-targets.json`` (Prometheus file
discovery, with the ``namespace``/``pool``/``pod`` labels the pool's PodMonitor gives worker
series on Kubernetes), which the demo's Prometheus scrapes.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from worker_runtime.brokers.redis import stats
from workerfleet_operator import autoscaling
from workerfleet_operator.local import embedded_redis, lifeline, manifest

BROKER_URL_ENVS = ("WORKERFLEET_BROKER_URL", "WORKERFLEET_REDIS_URL")
KILL_MARGIN_SECONDS = 5.0  # like terminationGracePeriodSeconds = drain budget + a margin
RESTART_BACKOFF_SECONDS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
HEALTHY_RUN_SECONDS = 2 * RESTART_BACKOFF_SECONDS[-1]


@dataclass
class LocalWorker:
    """One "pod": a name, its current process and what happened to it."""

    pod_name: str
    index: int
    log_path: pathlib.Path
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_step: int = 0  # index into RESTART_BACKOFF_SECONDS; 0 again after a healthy run
    restart_at: float | None = None  # waiting to be restarted after a crash
    terminating_since: float | None = None
    metrics_port: int = 0


def write_file_targets(path: pathlib.Path, text: str) -> None:
    """Replace a Prometheus file-discovery list (JSON text) atomically: never read half-written."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


@dataclass(frozen=True)
class FleetEvent:
    """Something the fleet did, for the live view and the demo's log."""

    at: float
    kind: str  # Started | Stopping | Stopped | Crashed | Restarted | Killed
    pod: str
    detail: str = ""


@dataclass
class FleetCounters:
    started: int = 0
    stopped_cleanly: int = 0
    stopped_with_error: int = 0
    crashed: int = 0
    restarted: int = 0
    killed: int = 0
    exit_codes: list[int] = field(default_factory=list)


def remove_earlier_logs(log_dir: pathlib.Path, pool: str) -> list[pathlib.Path]:
    """Remove the worker logs an earlier run of ``pool`` left in ``log_dir``; returns them.

    Pods are named ``<pool>-<n>`` from 0 again in every run, and a worker's log is opened for
    append (a restarted worker adds to its own log, whose last words say why it crashed), so
    a log directory kept across runs (the demo's ``demo-out/worker-logs``, a ``--log-dir``)
    mixed each run's lines into the last's. Only this pool's ``<pool>-<n>.log`` files go.
    """
    earlier = [
        path
        for path in log_dir.glob(f"{glob.escape(pool)}-*.log")
        if path.name.removeprefix(f"{pool}-").removesuffix(".log").isdigit()
    ]
    for path in earlier:
        path.unlink(missing_ok=True)
    return earlier


def sort_for_removal(
    pods: Sequence[str], costs: Mapping[str, int], indexes: Mapping[str, int]
) -> list[str]:
    """Pods in the order to remove them: lowest deletion cost first, then the newest pod."""
    return sorted(pods, key=lambda pod: (costs.get(pod, 0), -indexes.get(pod, 0)))


class ProcessFleet:
    """The worker processes of one pool."""

    def __init__(
        self,
        pool: manifest.LocalPool,
        redis_url: str,
        *,
        log_dir: pathlib.Path,
        app_path: pathlib.Path | None = None,
        python: str = sys.executable,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.pool = pool
        self.extra_env = dict(extra_env or {})  # on top of the pool's env (a demo's witness dir)
        self.redis_url = redis_url
        self.log_dir = log_dir
        self.app_path = app_path or pathlib.Path.cwd()
        self.python = python
        self.workers: dict[str, LocalWorker] = {}
        self.counters = FleetCounters()
        self.events: list[FleetEvent] = []
        self.skipped_env: list[str] = []
        self._next_index = 0
        self.grace_seconds = pool.spec.drain.timeout_seconds + KILL_MARGIN_SECONDS
        self.targets_path = log_dir / "worker-targets.json"
        self._published: str | None = None
        log_dir.mkdir(parents=True, exist_ok=True)
        remove_earlier_logs(log_dir, pool.name)
        self.publish_targets()

    # ---- views ---------------------------------------------------------------------------

    @property
    def replicas(self) -> int:
        """Pods that count as replicas: every worker not terminating (crashed ones included)."""
        return sum(1 for w in self.workers.values() if w.terminating_since is None)

    @property
    def pod_names(self) -> list[str]:
        return [n for n, w in self.workers.items() if w.terminating_since is None]

    @property
    def running_pod_names(self) -> list[str]:
        """Replicas whose process runs now (not crashed, not waiting for a restart)."""
        return [
            n
            for n, w in self.workers.items()
            if w.terminating_since is None and w.process is not None and w.process.poll() is None
        ]

    @property
    def terminating(self) -> int:
        return sum(1 for w in self.workers.values() if w.terminating_since is not None)

    @property
    def pids(self) -> dict[str, int]:
        return {
            n: w.process.pid
            for n, w in self.workers.items()
            if w.process is not None and w.process.poll() is None
        }

    # ---- scaling -------------------------------------------------------------------------

    def scale_to(
        self,
        desired: int,
        heartbeats: Sequence[stats.WorkerHeartbeat],
        heartbeat_now: float,
        now: float,
    ) -> list[str]:
        """Start or stop workers to reach ``desired`` replicas; returns the pods stopped."""
        current = self.replicas
        if desired > current:
            for _ in range(desired - current):
                self._start_new(now)
            return []
        if desired == current:
            return []
        pods = self.pod_names
        costs = autoscaling.deletion_costs_for(heartbeats, pods, heartbeat_now)
        indexes = {n: w.index for n, w in self.workers.items()}
        chosen = sort_for_removal(pods, costs, indexes)[: current - desired]
        for pod in chosen:
            self._stop(self.workers[pod], now, f"deletion cost {costs[pod]}")
        return chosen

    def _start_new(self, now: float) -> LocalWorker:
        index = self._next_index
        self._next_index += 1
        name = f"{self.pool.name}-{index}"
        worker = LocalWorker(pod_name=name, index=index, log_path=self.log_dir / f"{name}.log")
        self.workers[name] = worker
        self._spawn(worker, now)
        self.counters.started += 1
        self._event(now, "Started", name)
        return worker

    def publish_targets(self) -> None:
        """Write the workers' metrics endpoints for Prometheus file discovery, when they changed.

        A draining worker stays listed until it exits, as a terminating pod stays scraped.
        """
        groups = [
            {
                "targets": [f"127.0.0.1:{worker.metrics_port}"],
                "labels": {
                    "namespace": manifest.LOCAL_NAMESPACE,
                    "pool": self.pool.name,
                    "pod": worker.pod_name,
                },
            }
            for worker in self.workers.values()
            if worker.metrics_port and worker.process is not None
        ]
        text = json.dumps(groups, indent=1)
        if text != self._published:
            write_file_targets(self.targets_path, text)
            self._published = text

    def _spawn(self, worker: LocalWorker, now: float) -> None:
        if not worker.metrics_port:
            worker.metrics_port = embedded_redis.fetch_free_port()
        env, skipped = manifest.build_worker_env(
            self.pool,
            redis_url=self.redis_url,
            pod_name=worker.pod_name,
            metrics_port=worker.metrics_port,
        )
        self.skipped_env = skipped
        # A broker URL left in the shell must not reach the worker: it reads
        # WORKERFLEET_BROKER_URL before WORKERFLEET_REDIS_URL, so only the pool's may be set.
        full_env = {k: v for k, v in os.environ.items() if k not in BROKER_URL_ENVS}
        full_env.update(env)
        full_env.update(self.extra_env)
        python_path = [str(self.app_path), full_env.get("PYTHONPATH", "")]
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in python_path if p)
        command = lifeline.build_tied_command(
            [self.python, "-m", "worker_runtime", "worker", self.pool.spec.app]
        )
        with worker.log_path.open("ab") as log:
            worker.process = subprocess.Popen(
                command,
                env=full_env,
                cwd=str(self.app_path),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the fleet, which drains workers itself
            )
        worker.started_at = now
        worker.restart_at = None

    def _stop(self, worker: LocalWorker, now: float, why: str) -> None:
        worker.terminating_since = now
        worker.restart_at = None
        if worker.process is not None and worker.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
        self._event(now, "Stopping", worker.pod_name, why)

    # ---- supervision ---------------------------------------------------------------------

    def reap(self, now: float) -> None:
        """Collect exits, restart crashed workers when their back-off is over, kill overdue ones."""
        for name, worker in list(self.workers.items()):
            process = worker.process
            code = None if process is None else process.poll()
            if worker.terminating_since is not None:
                if process is None or code is not None:
                    self._finish(name, worker, code, now)
                elif now - worker.terminating_since > self.grace_seconds:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    process.wait(5.0)
                    _kill_leftovers(process)
                    self.counters.killed += 1
                    self._event(now, "Killed", name, f"drain exceeded {self.grace_seconds:g}s")
                    del self.workers[name]
                continue
            if code is not None and worker.restart_at is None:
                assert process is not None
                _kill_leftovers(process)
                worker.process = None
                self.counters.crashed += 1
                self.counters.exit_codes.append(code)
                if now - worker.started_at >= HEALTHY_RUN_SECONDS:
                    worker.backoff_step = 0
                delay = RESTART_BACKOFF_SECONDS[
                    min(worker.backoff_step, len(RESTART_BACKOFF_SECONDS) - 1)
                ]
                worker.backoff_step += 1
                worker.restart_at = now + delay
                said = read_last_words(worker.log_path)
                self._event(
                    now,
                    "Crashed",
                    name,
                    f"exit code {code}, restart in {delay:g}s" + (f": {said}" if said else ""),
                )
            elif worker.restart_at is not None and now >= worker.restart_at:
                worker.restarts += 1
                self.counters.restarted += 1
                self._spawn(worker, now)
                self._event(now, "Restarted", name, f"restart {worker.restarts}")

    def _finish(self, name: str, worker: LocalWorker, code: int | None, now: float) -> None:
        del self.workers[name]
        if worker.process is not None:
            _kill_leftovers(worker.process)
        if code is None:
            return  # it had crashed before it was asked to stop
        self.counters.exit_codes.append(code)
        if code == 0:
            self.counters.stopped_cleanly += 1
        else:
            self.counters.stopped_with_error += 1
        took = now - (worker.terminating_since or now)
        self._event(now, "Stopped", name, f"exit code {code} after {took:.1f}s")

    def stop_all(self, *, timeout: float | None = None, poll: float = 0.05) -> None:
        """SIGTERM every worker, wait for them to drain (bounded), SIGKILL what is left."""
        now = time.monotonic()
        for worker in self.workers.values():
            if worker.terminating_since is None:
                self._stop(worker, now, "fleet stopping")
        limit = self.grace_seconds if timeout is None else timeout
        deadline = now + limit
        while self.workers and time.monotonic() < deadline:
            self.reap(time.monotonic())
            time.sleep(poll)
        # Past the deadline: reap() with a clock beyond the grace kills the rest, counted.
        for worker in self.workers.values():
            worker.terminating_since = time.monotonic() - self.grace_seconds - 1
        self.reap(time.monotonic())

    def _event(self, at: float, kind: str, pod: str, detail: str = "") -> None:
        self.events.append(FleetEvent(at, kind, pod, detail))
        del self.events[:-500]  # bounded: the view shows the last few


LAST_WORDS_BYTES = 8192
"""How much of a crashed worker's log end is read for the line that says why."""


def read_last_words(log_path: pathlib.Path) -> str:
    """The last line a crashed worker wrote (its JSON record's message and error), shortened:
    why it exited ("workerfleet: cannot import 'tasks' ..."), for the Crashed event."""
    try:
        with log_path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - LAST_WORDS_BYTES))
            tail = log.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    if not lines:
        return ""
    last = lines[-1]
    try:
        record = json.loads(last)
    except ValueError:
        record = None
    if isinstance(record, dict) and "msg" in record:
        last = str(record["msg"]) + (f" ({record['error']})" if record.get("error") else "")
    return last if len(last) <= 200 else last[:199] + "…"


def _kill_leftovers(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL what an exited worker left in its process group (its pid is the group's id).

    The worker has been reaped, but Linux does not hand out a pid that is still some process
    group's id, so the group cannot be a stranger's while any of its members lives.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
