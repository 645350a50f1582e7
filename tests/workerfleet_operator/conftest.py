"""pytest wiring for the operator tests: API emulator, real redis-server, operator in a thread.

Fixtures: ``emulator`` (tests/workerfleet_operator/emulator.py on a free loopback port),
``kubeconfig`` (a file pointing at it), ``queue_redis`` (a password-protected redis-server from
the shared ``redis_factory`` of tests/conftest.py),
``operator`` (a factory starting ``workerfleet operator``'s ``run_operator`` in a thread with a
stop flag; every run gets a fresh kopf registry and logs in explicitly through the kubeconfig),
``captured_logs`` (every log record of the run, formatted), ``prometheus`` (a real Prometheus
with the fast alert rules, discovering operator "pods" from a file, see :class:`OperatorTargets`)
and the helpers ``wait_until`` and ``build_pool``. A missing redis-server or prometheus fails the
tests, never skips them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from workerfleet_operator import rbac
from workerfleet_operator.local import demo, fleet
from workerfleet_operator.shell import config as config_module
from workerfleet_operator.shell import context, main, metrics, scaler

from tests.workerfleet_operator.emulator import Emulator

ROOT = Path(__file__).resolve().parents[2]
FAST_RULES = ROOT / "deploy" / "alerts" / "workerfleet-alerts.fast.yaml"

NAMESPACE = "default"
GROUP = "workerfleet.io"


def wait_until(
    predicate: Callable[[], Any],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "",
) -> Any:
    """Poll ``predicate`` until truthy (bounded); return its value or fail with ``message``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s: {message} (last value: {last!r})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


CANARY_PASSWORD = "canary-Pa55-" + "x7Q9"


class QueueRedis:
    """A password-protected redis-server from the shared ``redis_factory`` (tests/conftest.py).

    The password is the canary of the secret-leak test; the URL carrying it is what the
    WorkerPool's Secret holds.
    """

    def __init__(self, server: Any, password: str) -> None:
        self.server = server
        self.password = password

    @property
    def port(self) -> int:
        return int(self.server.port)

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=2, decode_responses=True)

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def queue_redis(redis_factory: Callable[..., Any]) -> QueueRedis:
    """A real redis-server for one test (tests stop it to simulate an outage)."""
    server = redis_factory()
    # The shared fixture pings without a password at start, so the canary is set afterwards.
    admin = redis.Redis(port=server.port, socket_timeout=2)
    admin.config_set("requirepass", CANARY_PASSWORD)
    admin.close()
    return QueueRedis(server, CANARY_PASSWORD)


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator() as emu:
        yield emu


_VERBS = {"GET": "get", "POST": "create", "PATCH": "patch", "DELETE": "delete", "PUT": "update"}


def build_rbac_triples(request_log: Iterable[tuple[str, str, int]]) -> set[tuple[str, str, str]]:
    """The (apiGroup, resource, verb) an API server would authorize for each logged request."""
    triples: set[tuple[str, str, str]] = set()
    for method, path, _code in request_log:
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["api"] and len(parts) >= 3:
            group, rest = "", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 4:
            group, rest = parts[1], parts[3:]
        else:
            continue  # discovery: non-resource URLs every authenticated client may read
        if rest[:1] == ["namespaces"] and len(rest) >= 3:
            rest = rest[2:]
        resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
        if method == "WATCH":
            verb = "watch"
        elif method == "GET" and len(rest) == 1:
            verb = "list"
        else:
            verb = _VERBS[method]
        triples.add((group, resource, verb))
    return triples


@pytest.fixture(autouse=True)
def _every_api_call_is_covered_by_the_chart_rbac(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each operator test: every request the operator made is granted by rbac.py's list."""
    if "emulator" not in request.fixturenames or "operator" not in request.fixturenames:
        yield
        return
    emu: Emulator = request.getfixturevalue("emulator")
    yield
    granted = rbac.build_permission_set(cluster_wide=True, peering=False, leader_election=True)
    missing = build_rbac_triples(emu.request_log) - granted
    assert not missing, f"API calls not covered by workerfleet_operator.rbac: {sorted(missing)}"


@pytest.fixture
def kubeconfig(emulator: Emulator, tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig.yaml"
    path.write_text(yaml.safe_dump(emulator.kubeconfig()))
    return path


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a broken record must not break the test
            text = repr(record.__dict__)
        self.lines.append(text)


@pytest.fixture
def captured_logs() -> Iterator[list[str]]:
    """Every log record (any logger, any thread, DEBUG and up) while the test runs."""
    handler = _ListHandler()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler.lines
    root.removeHandler(handler)
    root.setLevel(old_level)


class OperatorRunner:
    """``run_operator`` in a thread; ``stop()`` sets the stop flag and joins it (bounded)."""

    def __init__(self, cfg: config_module.OperatorConfig) -> None:
        self.cfg = cfg
        self.metrics = metrics.OperatorMetrics()
        self.context = context.build_context(cfg, self.metrics)
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name="operator", daemon=True)

    def _run(self) -> None:
        try:
            main.run_operator(
                self.cfg,
                stop_flag=self.stop_flag,
                ready_flag=self.ready_flag,
                configure_logging=False,
                context=self.context,
            )
        except BaseException as exc:
            self.errors.append(exc)

    def start(self) -> OperatorRunner:
        self.thread.start()
        wait_until(
            lambda: self.ready_flag.is_set() or self.errors,
            timeout=20,
            message="operator not ready",
        )
        assert not self.errors, self.errors
        return self

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the operator did not stop within 30 s"


@pytest.fixture
def operator(kubeconfig: Path) -> Iterator[Callable[..., OperatorRunner]]:
    """Factory: ``operator(**config_overrides)`` starts one; all are stopped at teardown."""
    runners: list[OperatorRunner] = []

    def start(**overrides: Any) -> OperatorRunner:
        values: dict[str, Any] = {
            "kubeconfig": str(kubeconfig),
            "health_port": 0,
            "metrics_port": 0,
            "retry_base_seconds": 0.2,
            "retry_max_seconds": 2.0,
            "secret_cache_seconds": 0.0,
            "redis_timeout_seconds": 0.5,
            # Every status change written at once: the tests read status right after a poll.
            "status_refresh_seconds": 0.0,
        }
        values.update(overrides)
        runner = OperatorRunner(config_module.OperatorConfig(**values))
        runners.append(runner)
        return runner.start()

    yield start
    for runner in runners:
        if runner.thread.is_alive():
            with contextlib.suppress(AssertionError):
                runner.stop()


def build_secret(
    name: str, url: str, key: str = "url", namespace: str = NAMESPACE
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "Opaque",
        "data": {key: base64.b64encode(url.encode()).decode()},
    }


def build_pool(
    name: str,
    *,
    secret: str = "redis-creds",
    queue: str | None = None,
    image: str = "registry.example/email-worker:1.4.2",
    autoscaling: dict[str, Any] | None = None,
    namespace: str = NAMESPACE,
    **spec: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "image": image,
            "app": "emails.tasks:app",
            "queue": {
                "name": queue or name,
                "redis": {"urlSecretRef": {"name": secret, "key": "url"}},
            },
            "concurrency": 4,
            "autoscaling": {
                "mode": "builtin",
                "minReplicas": 0,
                "maxReplicas": 10,
                "pollingIntervalSeconds": 1,
                **(autoscaling or {}),
            },
            **spec,
        },
    }
    return body


def condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return {}


def wait_for_condition(
    emu: Emulator, name: str, ctype: str, *, timeout: float = 10.0, message: str = ""
) -> dict[str, Any]:
    """Wait (bounded) until pool ``name`` reports condition ``ctype`` True; return the condition."""

    def true_condition() -> dict[str, Any] | None:
        found = condition(emu.get("workerpools", NAMESPACE, name, group=GROUP), ctype)
        return found if found.get("status") == "True" else None

    result: dict[str, Any] = wait_until(
        true_condition, timeout=timeout, message=message or f"{name} never {ctype}"
    )
    return result


def given_a_running_pool(
    emu: Emulator,
    queue_redis: QueueRedis,
    operator: Callable[..., OperatorRunner],
    body: dict[str, Any] | None = None,
    *,
    until: str = "QueueReachable",
) -> OperatorRunner:
    """The Given-step of most operator tests: the Redis Secret, the operator, pool ``emails``
    (or ``body``) created, and its condition ``until`` True (QueueReachable: it read its queue)."""
    emu.create("secrets", build_secret("redis-creds", queue_redis.url))
    runner = operator()
    body = body if body is not None else build_pool("emails")
    emu.create("workerpools", body, group=GROUP)
    wait_for_condition(emu, body["metadata"]["name"], until)
    return runner


def count_polls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the name of each pool whose autoscaler poll is done (the operator's own
    ``scaler.poll_queue``, wrapped): tests wait for a number of polls, not for seconds."""
    polls: list[str] = []
    real_poll = scaler.poll_queue

    async def counted_poll(controller: Any, policy: Any) -> None:
        await real_poll(controller, policy)
        polls.append(controller.name)

    monkeypatch.setattr(scaler, "poll_queue", counted_poll)
    return polls


def events_for(emu: Emulator, name: str, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    return [
        e for e in emu.list("events", namespace) if e.get("involvedObject", {}).get("name") == name
    ]


class OperatorTargets:
    """The file Prometheus discovers the operator "pods" from (file_sd, re-read at once).

    Each pod is an operator run with its own metrics port: a target with its own ``instance``
    and ``pod`` labels, as Kubernetes discovery gives them; a removed pod's target disappears and
    Prometheus marks its series stale.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pods: dict[str, int] = {}
        self._write()

    def start_pod(self, operator: Callable[..., OperatorRunner], pod: str) -> OperatorRunner:
        """Start an operator run serving metrics on a free port, listed as ``pod``."""
        port = free_port()
        runner = operator(metrics_port=port, bind_host="127.0.0.1")
        self.pods[pod] = port
        self._write()
        return runner

    def remove_pod(self, pod: str) -> None:
        del self.pods[pod]
        self._write()

    def _write(self) -> None:
        groups = [
            {"targets": [f"127.0.0.1:{port}"], "labels": {"pod": pod, "container": "operator"}}
            for pod, port in self.pods.items()
        ]
        fleet.write_file_targets(self.path, json.dumps(groups))


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[demo.Prometheus, OperatorTargets]]:
    assert demo.Prometheus.available(), "prometheus not installed: run `make deps`"
    targets = OperatorTargets(tmp_path / "operator-targets.json")
    server = demo.Prometheus(
        tmp_path / "prometheus",
        FAST_RULES,
        0,
        scrape_configs=[
            {
                "job_name": "workerfleet-operator",
                "honor_labels": True,
                "file_sd_configs": [{"files": [str(targets.path)], "refresh_interval": "1s"}],
            }
        ],
    )
    server.start()
    yield server, targets
    server.stop()
