"""The operator's Kubernetes I/O: fetch, server-side apply, delete, pod annotations, Events.

Called by ``shell.reconcile``, ``shell.scaler`` and ``shell.report`` (a pool's loop),
``shell.leader`` (the Lease) and ``shell.inventory`` (the CLI and the console). Plain dicts over
aiohttp, not the ``kubernetes`` package's models: deserializing one Deployment into
``V1Deployment`` costs ~350 µs against ~18 µs for ``json.loads`` (measured, 19x;
bench/kube_client.py compares whole requests),
server-side apply sends dicts anyway, and kopf already brings aiohttp. Credentials do come from
the ``kubernetes`` package (``shell.credentials``: exec plugins, in-cluster), and are read from
:class:`credentials.Credentials` on every request: a token loaded again (by kopf's re-login, on
expiry, or after a 401 here) is used from the next request on.

Every request is retried as :class:`RetryPolicy` says (429 with Retry-After, 5xx, timeouts) before
its caller sees an error; 409 goes to the caller, which must read again and decide again.

Writes to children use server-side apply with field manager :data:`FIELD_MANAGER`; the replica
count is written by a separate manager, :data:`REPLICAS_FIELD_MANAGER`. Whether someone else
drives ``spec.replicas`` is decided by :func:`fetch_replicas_controllers` (a live HPA or KEDA
ScaledObject targeting the Deployment), not by ``managedFields``, where a manager stays listed
after its one write (``kubectl scale``) or after its HPA is gone.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import logging
import os
import random
import ssl
import tempfile
import time
import types
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf

from worker_runtime import backoff
from workerfleet_operator.shell import credentials as credentials_module

logger = logging.getLogger("workerfleet.operator.kube")

FIELD_MANAGER = "workerfleet"
REPLICAS_FIELD_MANAGER = "workerfleet-autoscaler"
DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
EVENT_SOURCE = "workerfleet-operator"

Body = dict[str, Any]

# kind -> (apiVersion, plural) for every kind the operator reads or writes.
KINDS: dict[str, tuple[str, str]] = {
    "WorkerPool": ("workerfleet.io/v1alpha1", "workerpools"),
    "Deployment": ("apps/v1", "deployments"),
    "Service": ("v1", "services"),
    "ServiceAccount": ("v1", "serviceaccounts"),
    "Pod": ("v1", "pods"),
    "Secret": ("v1", "secrets"),
    "Event": ("v1", "events"),
    "PodDisruptionBudget": ("policy/v1", "poddisruptionbudgets"),
    "HorizontalPodAutoscaler": ("autoscaling/v2", "horizontalpodautoscalers"),
    "PodMonitor": ("monitoring.coreos.com/v1", "podmonitors"),
    "ScaledObject": ("keda.sh/v1alpha1", "scaledobjects"),
    "TriggerAuthentication": ("keda.sh/v1alpha1", "triggerauthentications"),
    "Lease": ("coordination.k8s.io/v1", "leases"),
}


class ApiError(Exception):
    """A non-2xx answer of the API server, with its HTTP status and Status reason.

    ``retry_after``: the seconds the server asked to wait before the next try (its
    ``Retry-After``); once :class:`KubeClient` gives the request back unsent, the wait the
    caller should honour, bounded by ``RetryPolicy.retry_after_max_seconds``.
    """

    def __init__(
        self, status: int, reason: str, message: str, *, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after

    @property
    def is_not_found(self) -> bool:
        return self.status == 404

    @property
    def is_conflict(self) -> bool:
        return self.status == 409


@dataclass(frozen=True)
class ObjectRef:
    """Where an object lives: enough to build its URL."""

    api_version: str
    plural: str
    namespace: str | None
    name: str | None = None

    def build_path(self, subresource: str | None = None) -> str:
        prefix = (
            f"/api/{self.api_version}"
            if "/" not in self.api_version
            else f"/apis/{self.api_version}"
        )
        parts = [prefix]
        if self.namespace:
            parts.append(f"namespaces/{urllib.parse.quote(self.namespace)}")
        parts.append(self.plural)
        if self.name:
            parts.append(urllib.parse.quote(self.name))
        if subresource:
            parts.append(subresource)
        return "/".join(parts)


def build_ref(kind: str, namespace: str | None, name: str | None = None) -> ObjectRef:
    api_version, plural = KINDS[kind]
    return ObjectRef(api_version, plural, namespace, name)


def build_ref_of(body: Mapping[str, Any]) -> ObjectRef:
    meta = body.get("metadata", {})
    _, plural = KINDS[str(body["kind"])]
    return ObjectRef(str(body["apiVersion"]), plural, meta.get("namespace"), meta.get("name"))


class RequestBudget:
    """A token bucket: ``burst`` requests at once, then ``qps`` per second (client-go's limiter).

    Every request of :class:`KubeClient` waits for a token, so a thousand busy pools cannot
    flood the API server; kopf's own watches are not counted (they are long-lived streams).
    ``clock`` and ``sleep`` are injectable for fake-clock tests.
    """

    def __init__(
        self,
        qps: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if qps <= 0 or burst < 1:
            raise ValueError("qps must be > 0 and burst >= 1")
        self.qps = qps
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._updated = clock()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait until one request may go (first come, first served)."""
        async with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.qps)
            self._updated = now
            if self._tokens < 1.0:
                await self._sleep((1.0 - self._tokens) / self.qps)
                now = self._clock()
                self._tokens = min(
                    float(self.burst), self._tokens + (now - self._updated) * self.qps
                )
                self._updated = now
            self._tokens -= 1.0


@dataclass(frozen=True)
class RetryPolicy:
    """How :class:`KubeClient` retries one request before its caller sees the error.

    Retried: 429 (API Priority and Fairness or a webhook said "later"), 500/502/503/504, a
    timeout or a broken connection. A ``Retry-After`` is honoured, as client-go does, up to
    ``retry_after_max_seconds`` (a bound against a wrong header: an hour would park a pool);
    otherwise full-jitter exponential backoff. A request waits inside itself at most
    ``max_seconds`` per wait and ``budget_seconds`` in all, over at most ``attempts`` tries: its
    caller may hold a shared slot meanwhile (a reconcile holds one of
    ``max_concurrent_reconciles``). A longer wait the server asks for is not slept there: the
    request gives its :class:`ApiError` back at once, ``retry_after`` set to the wait to honour,
    and the caller waits it out holding nothing (the pool's loop schedules its next reconcile
    or poll then; ``shell.pool``). A POST (a new Event) is retried only on 429, which the API
    server answers before doing anything; a 5xx or a timeout may come after it was stored. 409
    is not retried here: the caller must read again and decide again (the pool loop does). 401
    loads the credentials again, once.
    """

    attempts: int = 5
    base_seconds: float = 0.25
    max_seconds: float = 8.0
    budget_seconds: float = 20.0
    retry_after_max_seconds: float = 60.0

    def delay_for(self, retry: int, retry_after: float | None, rng: random.Random) -> float:
        """The wait before retry number ``retry`` (1 = the first retry): the server's
        Retry-After (bounded), else our own backoff, at most ``max_seconds``."""
        if retry_after is not None:
            return self.bound_retry_after(retry_after)
        ceiling = min(self.max_seconds, self.base_seconds * 2 ** (retry - 1))
        return rng.uniform(0.0, ceiling)

    def bound_retry_after(self, retry_after: float) -> float:
        """The wait honoured for a ``Retry-After`` of ``retry_after`` seconds."""
        return min(self.retry_after_max_seconds, max(0.0, retry_after))


RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class _FenceCheck:
    """What a request's connection hook calls: raises FencedError for a fenced write."""

    check: Callable[[], None]


async def _check_fence_on_connection(
    session: aiohttp.ClientSession, ctx: types.SimpleNamespace, params: object
) -> None:
    request = getattr(ctx, "trace_request_ctx", None)
    if isinstance(request, _FenceCheck):
        request.check()


class FencedError(Exception):
    """A write was refused before it was sent: this replica no longer holds the leader Lease."""


class KubeClient:
    """A thin JSON client over aiohttp, authenticated by the current login of :class:`Credentials`.

    The Authorization header is built per request from the current login, never fixed at
    construction: a token kopf (or a 401 here) loads again is used from the next request on.
    ``fence`` (the leader elector's check) is asked before every write.

    At most ``max_in_flight`` requests are on their way at once; the others wait for a slot
    BEFORE their ``timeout`` starts. (Thousands of pools reconciling together once queued for
    the connection pool inside the timeout: requests never sent timed out, failed their
    reconciles and were retried, adding load to a busy API server.)
    """

    def __init__(
        self,
        credentials: credentials_module.Credentials | kopf.ConnectionInfo,
        *,
        timeout: float = 30.0,
        budget: RequestBudget | None = None,
        retry: RetryPolicy | None = None,
        fence: Callable[[], bool] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        max_in_flight: int = 32,
        on_retry_after: Callable[[float, bool], None] | None = None,
    ) -> None:
        if isinstance(credentials, kopf.ConnectionInfo):
            credentials = credentials_module.Credentials.fixed(credentials)
        self.credentials = credentials
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._login: kopf.ConnectionInfo | None = None
        self._server = ""
        self._authorization: str | None = None
        self._ssl: ssl.SSLContext | bool = False
        self._ssl_source: kopf.ConnectionInfo | None = None
        self._budget = budget
        self._retry = retry if retry is not None else RetryPolicy()
        self._fence = fence
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        # Told of every Retry-After honoured: its wait, and whether the request slept it
        # (False: handed to the caller). The operator counts them in a metric.
        self._on_retry_after = on_retry_after
        self.request_count = 0
        self.retry_count = 0
        self._max_in_flight = max_in_flight
        self._slots: asyncio.Semaphore | None = None  # made in the loop that uses it
        self.in_flight = 0
        self.peak_in_flight = 0
        if credentials.current is not None:
            self._use_login(credentials.current)

    @property
    def server(self) -> str:
        """The API server's URL of the current login ("" before the first)."""
        return self._server

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _use_login(self, info: kopf.ConnectionInfo) -> None:
        """Take a (new) login: its server, header and TLS context; a new TLS context needs a
        new connection pool, so the old session is closed in the background."""
        self._login = info
        self._server = info.server.rstrip("/")
        self._authorization = build_authorization(info)
        new_ssl = _build_ssl_context(info)
        if self._session is not None and not _same_tls(self._ssl_source, info):
            old, self._session = self._session, None
            _background(old.close())
        self._ssl = new_ssl
        self._ssl_source = info

    def _fetch_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=self._max_in_flight)
            # The fence is asked a last time once the request has its connection, right before
            # its bytes go out: opening one (TCP, TLS) awaits, and a process stopped there and
            # continued after a standby took over sent its write late (seen in the e2e suite).
            trace = aiohttp.TraceConfig()
            trace.on_connection_create_end.append(_check_fence_on_connection)
            trace.on_connection_reuseconn.append(_check_fence_on_connection)
            self._session = aiohttp.ClientSession(
                # The pid tells two replicas' writes apart in the API server's audit log.
                headers={"Accept": "application/json", "User-Agent": build_user_agent()},
                timeout=self._timeout,
                connector=connector,
                trace_configs=[trace],
            )
        return self._session

    def _check_fence(self, method: str, path: str) -> None:
        # A write is sent only while the leader elector says this replica leads; reads always.
        if self._fence is not None and method != "GET" and not self._fence():
            raise FencedError(f"not the leader: {method} {path} not sent")

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Body:
        """Send one request (retried as :class:`RetryPolicy` says); return the decoded JSON
        answer or raise :class:`ApiError` (or :class:`FencedError` for a write without the
        lease)."""
        data = None if body is None else json.dumps(body, separators=(",", ":"))
        headers = {"Content-Type": content_type} if data is not None else {}
        policy = self._retry
        waited = 0.0
        relogged = False
        retry = 0
        while True:
            self._check_fence(method, path)
            info = await self.credentials.fetch()
            if info is not self._login:
                self._use_login(info)
            if self._budget is not None:
                await self._budget.acquire()
            self.request_count += 1
            retry_after: float | None = None
            if self._slots is None:
                self._slots = asyncio.Semaphore(self._max_in_flight)
            try:
                async with self._slots:
                    # Asked again once a slot is ours: the wait for the request budget and a
                    # slot can be long (a full in-flight cap, a process stopped and continued),
                    # and the lease may have been lost meanwhile (a write sent after a standby
                    # took over was seen in the e2e suite).
                    self._check_fence(method, path)
                    self.in_flight += 1
                    self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
                    try:
                        return await self._send(method, path, params, data, headers)
                    finally:
                        self.in_flight -= 1
            except ApiError as exc:
                if exc.retry_after is not None:
                    # What the caller may honour too, whichever way this ends: bounded here.
                    exc.retry_after = policy.bound_retry_after(exc.retry_after)
                if exc.status == 401 and not relogged:
                    # The token was replaced or revoked: load the login again and resend once.
                    relogged = True
                    logger.info("the API server refused our token (401): loading the login again")
                    await self.credentials.renew(info)
                    continue
                retriable = exc.status in RETRIED_STATUSES and (
                    method in IDEMPOTENT_METHODS or exc.status == 429
                )
                if not retriable:
                    raise
                retry_after = exc.retry_after
                failure: Exception = exc
            except (TimeoutError, aiohttp.ClientConnectionError) as exc:
                if method not in IDEMPOTENT_METHODS:
                    raise
                failure = exc
            retry += 1
            delay = policy.delay_for(retry, retry_after, self._rng)
            asked = retry_after is not None
            spent = retry >= policy.attempts or waited + delay > policy.budget_seconds
            if asked and (spent or delay > policy.max_seconds):
                # Too long to wait inside the request (its caller may hold a reconcile slot),
                # or its tries are spent: the caller waits it out (``ApiError.retry_after``),
                # holding nothing.
                self._tell_retry_after(method, path, failure, delay, slept=False)
                raise failure
            if spent:
                raise failure
            waited += delay
            self.retry_count += 1
            if asked:
                self._tell_retry_after(method, path, failure, delay, slept=True)
            else:
                logger.debug(
                    "%s %s failed (%s); retry %d in %.2fs", method, path, failure, retry, delay
                )
            await self._sleep(delay)

    def _tell_retry_after(
        self, method: str, path: str, failure: Exception, wait: float, *, slept: bool
    ) -> None:
        """Make a wait the server asked for visible: a log line, and the metric's hook."""
        then = "retrying then" if slept else "its caller retries then"
        logger.info(
            "%s %s: the API server asks to wait %.1fs (%s); %s", method, path, wait, failure, then
        )
        if self._on_retry_after is not None:
            self._on_retry_after(wait, slept)

    async def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        data: str | None,
        headers: dict[str, str],
    ) -> Body:
        session = self._fetch_session()
        if self._authorization is not None:
            headers = {**headers, "Authorization": self._authorization}
        async with session.request(
            method,
            self._server + path,
            params=params,
            data=data,
            headers=headers,
            trace_request_ctx=_FenceCheck(lambda: self._check_fence(method, path)),
        ) as response:
            text = await response.text()
            if response.status >= 400:
                try:
                    status = json.loads(text)
                    reason, message = str(status.get("reason", "")), str(status.get("message", ""))
                    details = status.get("details") or {}
                except (ValueError, AttributeError):
                    reason, message, details = response.reason or "", text[:200], {}
                raise ApiError(
                    response.status,
                    reason,
                    message,
                    retry_after=parse_retry_after(
                        response.headers.get("Retry-After"), details.get("retryAfterSeconds")
                    ),
                )
            return json.loads(text) if text else {}


_tasks: set[asyncio.Task[Any]] = set()


def _background(coro: Awaitable[Any]) -> None:
    task = asyncio.ensure_future(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def _same_tls(old: kopf.ConnectionInfo | None, new: kopf.ConnectionInfo) -> bool:
    if old is None:
        return False
    fields = (
        "server", "ca_path", "ca_data", "insecure", "certificate_path", "certificate_data",
        "private_key_path", "private_key_data",
    )  # fmt: skip
    return all(getattr(old, f) == getattr(new, f) for f in fields)


def build_user_agent() -> str:
    """``workerfleet-operator/<pid>``: which process sent a request (audit logs show it)."""
    return f"{FIELD_MANAGER}-operator/{os.getpid()}"


def build_authorization(info: kopf.ConnectionInfo) -> str | None:
    """The Authorization header value of a login (None: TLS client certificate only)."""
    if info.token:
        return f"{info.scheme or 'Bearer'} {info.token}"
    if info.username and info.password:
        raw = f"{info.username}:{info.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()
    return None


def parse_retry_after(header: str | None, details_seconds: Any = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds, or an HTTP date as a proxy in front
    of the API server may send: it was ignored for the jittered backoff, retrying at once) or a
    Status' retryAfterSeconds."""
    if header is not None:
        seconds = backoff.parse_retry_after(header)
        if seconds is not None:
            return seconds
    if details_seconds is None:
        return None
    try:
        seconds = float(details_seconds)
    except (TypeError, ValueError):
        return None
    return seconds if seconds >= 0 else None


def _build_ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if not info.server.startswith("https"):
        return False
    if info.insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        cadata = info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data
        cafile = os.fsdecode(info.ca_path) if info.ca_path else None
        context = ssl.create_default_context(cafile=cafile, cadata=cadata or None)
    with contextlib.ExitStack() as files:
        cert = _as_file(files, info.certificate_path, info.certificate_data)
        key = _as_file(files, info.private_key_path, info.private_key_data)
        if cert and key:
            # ssl reads both files here, once: the temporary copies are deleted on leaving.
            context.load_cert_chain(cert, key)
    return context


def _as_file(
    files: contextlib.ExitStack,
    path: str | bytes | os.PathLike[Any] | None,
    data: str | bytes | None,
) -> str | None:
    """A client certificate or key as a file path (ssl needs files).

    Inline data goes to a 0600 temporary file that ``files`` deletes when it closes: a client
    key from a kubeconfig is never left on disk.
    """
    if path:
        return os.fsdecode(path)
    if not data:
        return None
    raw = data.encode() if isinstance(data, str) else data
    handle = files.enter_context(tempfile.NamedTemporaryFile(prefix="workerfleet-"))  # noqa: SIM115
    handle.write(raw)
    handle.flush()
    return handle.name


# ---------------------------------------------------------------------------- fetch_*


async def fetch_object(client: KubeClient, ref: ObjectRef) -> Body | None:
    """The object, or None when it does not exist (or its API is not served)."""
    try:
        return await client.request("GET", ref.build_path())
    except ApiError as exc:
        if exc.is_not_found:
            return None
        raise


async def fetch_objects(
    client: KubeClient,
    ref: ObjectRef,
    *,
    label_selector: str = "",
    absent_api_is_empty: bool = True,
) -> list[Body]:
    """Every object of the ref's kind in its namespace matching the label selector.

    A kind whose API is not served (a CRD such as PodMonitor not installed) has none; with
    ``absent_api_is_empty=False`` its 404 is raised as :class:`ApiError` instead."""
    params = {"labelSelector": label_selector} if label_selector else None
    try:
        answer = await client.request("GET", ref.build_path(), params=params)
    except ApiError as exc:
        if exc.is_not_found and absent_api_is_empty:
            return []
        raise
    return list(answer.get("items", []))


@dataclass(frozen=True)
class SecretValue:
    """One key of a Secret, decoded; lives only in memory (never logged, never written)."""

    resource_version: str
    value: str
    uid: str = ""

    @property
    def version(self) -> str:
        """``<uid>/<resourceVersion>``: changes whenever the Secret does, says nothing of its
        value (a hash of the value could be brute-forced offline from a pod template)."""
        return f"{self.uid}/{self.resource_version}"

    def __repr__(self) -> str:  # a stray log line must not print the secret
        return (
            f"SecretValue(resource_version={self.resource_version!r}, uid={self.uid!r}, "
            "value=<redacted>)"
        )


class SecretNotFoundError(Exception):
    """The referenced Secret, or the key inside it, does not exist."""

    def __init__(self, namespace: str, name: str, key: str, *, key_missing: bool) -> None:
        what = f'key "{key}" in Secret "{name}"' if key_missing else f'Secret "{name}"'
        super().__init__(f"{what} not found in namespace {namespace}")
        self.key_missing = key_missing


async def fetch_secret_value(
    client: KubeClient, namespace: str, name: str, key: str
) -> SecretValue:
    """Decode ``data[key]`` of the Secret; raise :class:`SecretNotFoundError` when absent."""
    body = await fetch_object(client, build_ref("Secret", namespace, name))
    if body is None:
        raise SecretNotFoundError(namespace, name, key, key_missing=False)
    data = body.get("data") or {}
    string_data = body.get("stringData") or {}
    if key in data:
        value = base64.b64decode(data[key]).decode()
    elif key in string_data:
        value = str(string_data[key])
    else:
        raise SecretNotFoundError(namespace, name, key, key_missing=True)
    meta = body["metadata"]
    return SecretValue(
        resource_version=str(meta.get("resourceVersion", "")),
        value=value.strip(),
        uid=str(meta.get("uid", "")),
    )


# ---------------------------------------------------------------------------- apply_*


async def apply_object(
    client: KubeClient, body: Body, *, manager: str = FIELD_MANAGER, force: bool = True
) -> Body:
    """Server-side apply ``body`` (creates it when absent). ``force`` only for fields we own."""
    params = {"fieldManager": manager}
    if force:
        params["force"] = "true"
    return await client.request(
        "PATCH",
        build_ref_of(body).build_path(),
        params=params,
        body=body,
        content_type="application/apply-patch+yaml",
    )


async def apply_replicas(
    client: KubeClient,
    namespace: str,
    name: str,
    replicas: int,
    *,
    force: bool = False,
    resource_version: str | None = None,
) -> Body:
    """Write ``spec.replicas`` of our Deployment as the autoscaler's field manager.

    ``force`` only when no live autoscaler drives the Deployment (the caller asks
    :func:`fetch_replicas_controllers` first): it takes the field from a one-off writer such as
    ``kubectl scale``. ``resource_version`` is the version the caller decided on: the apiserver
    answers 409 if the Deployment changed since, so a forced write never lands on a count it
    has not seen.
    """
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {"replicas": replicas},
    }
    return await apply_object(client, body, manager=REPLICAS_FIELD_MANAGER, force=force)


async def apply_status(client: KubeClient, ref: ObjectRef, status: Mapping[str, Any]) -> Body:
    """Merge-patch the status subresource (conditions are sent whole)."""
    return await client.request(
        "PATCH",
        ref.build_path("status"),
        body={"status": status},
        content_type="application/merge-patch+json",
    )


def deletion_costs_of(pods: Iterable[Mapping[str, Any]]) -> dict[str, str | None]:
    """Each pod's pod-deletion-cost annotation (None where it has none), by pod name: the
    ``current`` that :func:`apply_pod_deletion_costs` compares with."""
    return {
        p["metadata"]["name"]: (p["metadata"].get("annotations") or {}).get(
            DELETION_COST_ANNOTATION
        )
        for p in pods
    }


async def apply_pod_deletion_costs(
    client: KubeClient,
    namespace: str,
    costs: Mapping[str, int | None],
    current: Mapping[str, str | None],
    *,
    field_manager: str = REPLICAS_FIELD_MANAGER,
) -> int:
    """Set the deletion-cost annotation on pods whose value differs (None removes it); return
    how many changed. Written by the autoscaler's manager unless ``field_manager`` says
    otherwise (the reconcile's, removing them when the pool leaves builtin mode)."""
    changed = 0
    for pod, cost in costs.items():
        value = None if cost is None else str(cost)
        if current.get(pod) == value:
            continue
        patch = {"metadata": {"annotations": {DELETION_COST_ANNOTATION: value}}}
        try:
            await client.request(
                "PATCH",
                build_ref("Pod", namespace, pod).build_path(),
                params={"fieldManager": field_manager},
                body=patch,
                content_type="application/merge-patch+json",
            )
            changed += 1
        except ApiError as exc:
            if not exc.is_not_found:  # a pod that went away needs no cost
                raise
    return changed


async def apply_event(
    client: KubeClient,
    involved: Mapping[str, Any],
    *,
    event_type: str,
    reason: str,
    message: str,
) -> Body:
    """Create a core/v1 Event about ``involved`` (a WorkerPool body), named by generateName."""
    meta = involved.get("metadata", {})
    now = datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    namespace = meta.get("namespace") or "default"
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name', 'workerpool')}.", "namespace": namespace},
        "involvedObject": {
            "apiVersion": involved.get("apiVersion"),
            "kind": involved.get("kind"),
            "name": meta.get("name"),
            "namespace": namespace,
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": event_type,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": EVENT_SOURCE},
        "reportingComponent": EVENT_SOURCE,
        "reportingInstance": EVENT_SOURCE,
        "action": reason,
        "firstTimestamp": now[:19] + "Z",
        "lastTimestamp": now[:19] + "Z",
        "eventTime": now,
        "count": 1,
    }
    return await client.request("POST", build_ref("Event", namespace).build_path(), body=event)


async def create_object(client: KubeClient, body: Body) -> Body:
    """POST a new object (409 AlreadyExists when someone created it first)."""
    ref = build_ref_of(body)
    collection = ObjectRef(ref.api_version, ref.plural, ref.namespace)
    return await client.request("POST", collection.build_path(), body=body)


async def update_object(client: KubeClient, body: Body) -> Body:
    """PUT the whole object; with ``metadata.resourceVersion`` set, 409 when it changed since
    (the Lease of leader election is written so: one of two racing replicas wins)."""
    return await client.request("PUT", build_ref_of(body).build_path(), body=body)


# ---------------------------------------------------------------------------- delete_*


async def delete_object(client: KubeClient, ref: ObjectRef, *, uid: str | None = None) -> bool:
    """Delete (background propagation); True if it existed.

    ``uid``: a precondition, so only the object that was checked is deleted; one recreated
    under the same name since (another uid) answers 409 and stays.
    """
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "DeleteOptions",
        "propagationPolicy": "Background",
    }
    if uid is not None:
        body["preconditions"] = {"uid": uid}
    try:
        await client.request("DELETE", ref.build_path(), body=body)
    except ApiError as exc:
        if exc.is_not_found:
            return False
        raise
    return True


def controller_uid_of(body: Mapping[str, Any]) -> str | None:
    """The uid in the object's controller ownerReference (None: no controller)."""
    for ref in (body.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("controller"):
            return str(ref.get("uid") or "") or None
    return None


REPLICAS_CONTROLLER_KINDS = ("HorizontalPodAutoscaler", "ScaledObject")


async def fetch_replicas_controllers(client: KubeClient, namespace: str, name: str) -> list[str]:
    """Live autoscalers whose scale target is Deployment ``name``, as ``"<Kind> <name>"``.

    HPAs (KEDA's own included) and KEDA ScaledObjects; one being deleted no longer counts, and
    a kind whose API is not installed has none. Empty: nobody else drives ``spec.replicas``.
    """
    found = []
    for kind in REPLICAS_CONTROLLER_KINDS:
        for obj in await fetch_objects(client, build_ref(kind, namespace)):
            meta = obj.get("metadata") or {}
            target = (obj.get("spec") or {}).get("scaleTargetRef") or {}
            if (
                target.get("name") == name
                and target.get("kind", "Deployment") == "Deployment"
                and not meta.get("deletionTimestamp")
            ):
                found.append(f"{kind} {meta.get('name')}")
    return found


def owners_of_replicas(deployment: Mapping[str, Any]) -> list[str]:
    """The field managers that own ``spec.replicas`` according to ``managedFields``."""
    owners = []
    for entry in deployment.get("metadata", {}).get("managedFields") or []:
        fields = entry.get("fieldsV1") or {}
        if "f:replicas" in (fields.get("f:spec") or {}):
            owners.append(str(entry.get("manager", "")))
    return owners


REPLICAS_FIELDS: dict[str, Any] = {"f:spec": {"f:replicas": {}}}


def strip_managed_fields(body: Body) -> Body:
    """``body`` as a pool's controller keeps it: ``managedFields`` cut to the entries that own
    ``spec.replicas``, each reduced to its manager (all :func:`owners_of_replicas` reads).

    Every other entry is a tree of small dicts per field and per manager, copied into memory for
    each of thousands of pools and never read. A shallow copy: ``body`` (kopf's, or an answer)
    is not changed. Only for bodies kept in memory, never for one sent back (a PUT would
    replace the object's managedFields with the cut list).
    """
    meta = body.get("metadata")
    if not isinstance(meta, dict) or "managedFields" not in meta:
        return body
    owners = owners_of_replicas(body)
    kept = {k: v for k, v in meta.items() if k != "managedFields"}
    if owners:
        kept["managedFields"] = [{"manager": m, "fieldsV1": REPLICAS_FIELDS} for m in owners]
    return {**body, "metadata": kept}
