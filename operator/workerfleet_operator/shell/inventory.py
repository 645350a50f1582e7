"""The fleet as a person sees it: WorkerPools, their status numbers, and each pool's queue.

Called by ``workerfleet pools`` (:mod:`workerfleet_operator.shell.pools_cli`), by the queue and
dlq commands' ``--pool NAMESPACE/NAME`` and by the web console's cluster source. Talks to the
API server through the operator's own client (:mod:`workerfleet_operator.shell.kube`) with the
user's kubeconfig, or in a pod (the chart's console Deployment) its service account; reads only
(WorkerPools, and a pool's Secret when its queue is asked for).
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from workerfleet_operator import api, manifests
from workerfleet_operator.console import sources
from workerfleet_operator.shell import credentials, kube


class InventoryError(LookupError):
    """No kubeconfig, no such pool, or a pool whose queue cannot be found: one line for people."""


@dataclass(frozen=True)
class KubeLogin:
    """A client and the kubeconfig context's namespace (the default for commands)."""

    client: kube.KubeClient
    namespace: str


def build_login(
    kubeconfig: str | None,
    environ: Mapping[str, str] = os.environ,
    service_account_dir: str = credentials.SERVICE_ACCOUNT_DIR,
) -> KubeLogin:
    """A read client for the kubeconfig's current context, loaded as the operator loads its own
    (the ``kubernetes`` package: exec plugins run, tokens are loaded again on expiry or 401).

    Without a kubeconfig, a pod's service account (the chart's console Deployment runs so);
    without either, an error that says what to pass.
    """

    def load() -> Any:
        try:
            return credentials.load_login(kubeconfig, environ, service_account_dir)
        except credentials.CredentialsError as exc:
            raise InventoryError(str(exc)) from exc

    info = load()
    shared = credentials.Credentials(load, initial=info)
    return KubeLogin(kube.KubeClient(shared), info.default_namespace or "default")


def describe_server(url: str) -> str:
    """The API server's address as messages show it: scheme, host and port, never a user,
    password, path or query the URL may carry."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        return "the API server"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme or 'https'}://{host}{port}"


def parse_pool_name(text: str, default_namespace: str) -> tuple[str, str]:
    """``NAMESPACE/NAME`` (or ``NAME`` in the default namespace) as (namespace, name)."""
    namespace, sep, name = text.partition("/")
    if not sep:
        namespace, name = default_namespace, text
    if not namespace or not name or "/" in name:
        raise InventoryError(f"expected NAMESPACE/NAME, got {text!r}")
    return namespace, name


class WorkerPoolApiMissing(InventoryError):
    """The API server does not serve WorkerPools: the CRD is not installed there (workerfleet
    is not, or the kube context is the wrong one)."""

    def __init__(self, server: str) -> None:
        super().__init__(
            f"the API server at {server} does not serve WorkerPools ({api.API_VERSION}): is "
            "the workerfleet CRD installed there, or is the kube context the wrong one? "
            "(kubectl config current-context)"
        )


async def fetch_workerpools(
    client: kube.KubeClient, namespace: str | None, *, absent_api_is_empty: bool = True
) -> list[kube.Body]:
    """Every WorkerPool in ``namespace`` (None: all namespaces), sorted by namespace and name.

    A cluster without the WorkerPool API has none; with ``absent_api_is_empty=False`` it raises
    :class:`WorkerPoolApiMissing` instead (``workerfleet pools``: "none" would read as a
    fleet without pools)."""
    try:
        items = await kube.fetch_objects(
            client,
            kube.build_ref("WorkerPool", namespace),
            absent_api_is_empty=absent_api_is_empty,
        )
    except kube.ApiError as exc:
        if not exc.is_not_found:
            raise
        raise WorkerPoolApiMissing(describe_server(client.server)) from None
    return sorted(
        items, key=lambda b: (b["metadata"].get("namespace", ""), b["metadata"].get("name", ""))
    )


async def fetch_workerpool(client: kube.KubeClient, namespace: str, name: str) -> kube.Body:
    """One WorkerPool, or :class:`InventoryError` when there is none."""
    body = await kube.fetch_object(client, kube.build_ref("WorkerPool", namespace, name))
    if body is None:
        raise InventoryError(f"no WorkerPool {namespace}/{name}")
    return body


def _url_secret_ref(queue: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``urlSecretRef`` of whichever broker block the raw ``spec.queue`` sets ({} if none)."""
    for broker in api.BROKER_FIELDS:
        ref = (queue.get(broker) or {}).get("urlSecretRef")
        if ref:
            return dict(ref)
    return {}


def _describe_target(queue: Mapping[str, Any]) -> str:
    sqs = queue.get("sqs")
    if isinstance(sqs, Mapping):
        return f"SQS {sqs.get('endpoint') or sqs.get('region', '?')}"
    return "Secret " + str(_url_secret_ref(queue).get("name", "?"))


async def fetch_queue_target(client: kube.KubeClient, body: Mapping[str, Any]) -> tuple[str, str]:
    """The pool's broker URL (from its Secret; composed from the spec on SQS, which has none)
    and queue name; the URL stays in memory only."""
    meta = body.get("metadata") or {}
    queue = (body.get("spec") or {}).get("queue") or {}
    ref = _url_secret_ref(queue)
    namespace = str(meta.get("namespace", ""))
    sqs = queue.get("sqs")
    if queue.get("name") and isinstance(sqs, Mapping):
        try:
            return manifests.encode_sqs_url(api.SqsSpec.model_validate(sqs)), str(queue["name"])
        except ValueError as exc:
            raise InventoryError(f"WorkerPool {namespace}/{meta.get('name')}: {exc}") from None
    if not queue.get("name") or not ref.get("name") or not ref.get("key"):
        raise InventoryError(f"WorkerPool {namespace}/{meta.get('name')} names no queue Secret")
    try:
        secret = await kube.fetch_secret_value(client, namespace, ref["name"], ref["key"])
    except kube.SecretNotFoundError as exc:
        raise InventoryError(str(exc)) from None
    return secret.value, str(queue["name"])


def build_pool_view(body: Mapping[str, Any]) -> sources.PoolView:
    """A WorkerPool's row from its status as the operator last wrote it (pure)."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    q = status.get("queue") or {}
    scaling = status.get("autoscaling") or {}
    namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))

    def number(value: Any) -> int | None:
        return None if value is None else int(value)

    decision = scaling.get("reason")
    if decision and scaling.get("chosen"):
        decision = f"{decision} (signal {scaling['chosen']})"
    return sources.PoolView(
        key=f"{namespace}/{name}",
        name=name,
        namespace=namespace,
        queue=str((spec.get("queue") or {}).get("name", "")),
        target=_describe_target(spec.get("queue") or {}),
        replicas=number(status.get("replicas")),
        desired=number(status.get("desiredReplicas")),
        backlog=number(q.get("backlog")) if q else None,
        in_flight=number(q.get("inFlight")) if q else None,
        oldest_age_seconds=float(q["oldestJobAgeSeconds"]) if "oldestJobAgeSeconds" in q else None,
        dead_letter=number(q.get("deadLetter")) if q else None,
        workers=number(q.get("workers")) if q else None,
        conditions=tuple(
            sources.ConditionView(
                type=str(c.get("type", "")),
                status=str(c.get("status", "")),
                reason=str(c.get("reason", "")),
                message=str(c.get("message", "")),
            )
            for c in status.get("conditions") or []
        ),
        decision=decision,
        decision_time=scaling.get("lastScaleTime"),
    )
