"""kopf wiring, and nothing else: which events the operator watches and who handles them.

``shell.main`` (and the tests) call :func:`register` on a fresh ``kopf.OperatorRegistry`` and
pass :func:`build_settings` to ``kopf.run``. Each handler hands its event to the pool's
controller (``shell.pool``) and returns; the controller's own task reconciles and scales.

- kopf's own state: ``on.event`` handlers keep no progress or diff-base annotations at all, and
  posting of kopf's own Events is off (we post ours, on transitions only). The settings still
  name ``workerfleet.io`` storages so nothing of kopf's ever lands under kopf's default keys.
  With no change handler registered, kopf's diff of each watched body is never read:
  :class:`WatchOnlyDiffBaseStorage` skips building it.
- No finalizers: kopf's timers/daemons would add one, and a pool then hangs Terminating whenever
  the operator is not running (e.g. during ``helm uninstall``). Garbage collection removes the
  children through their ownerReferences; the pool's loop stops on the DELETED event, or when
  the pool is found gone without one (its Deployment deleted, its status write answered 404:
  ``OperatorContext.forget_pool_if_gone``, ``shell.report``).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from typing import Any

import kopf

from workerfleet_operator import api, manifests
from workerfleet_operator.shell import config as config_module
from workerfleet_operator.shell import context, credentials, pool

logger = logging.getLogger("workerfleet.operator")


class WatchOnlyDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base for an operator whose handlers only watch: nothing to diff.

    kopf builds the "essence" of every body it receives (a deep copy of the whole object,
    status included, then pruned) to diff it for change handlers (on.create/update/resume/
    delete) and daemons. This operator registers none (``register``, guarded by a test), so
    the essence was built and thrown away: ~14 % of the operator's CPU while 1,000 new pools
    converged on the real API server (cProfile of ``bench/operator_scale.py``).
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None


def build_settings(cfg: config_module.OperatorConfig) -> kopf.OperatorSettings:
    """kopf's settings for workerfleet (see the module docstring for the why of each)."""
    settings = kopf.OperatorSettings()
    settings.posting.enabled = False
    settings.persistence.finalizer = f"{api.GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = WatchOnlyDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration"
    )
    # The API server parses timeoutSeconds as an integer and answers 400 to "300.0".
    settings.watching.server_timeout = max(1, math.ceil(cfg.watch_server_timeout_seconds))
    settings.watching.client_timeout = cfg.watch_client_timeout_seconds
    settings.watching.connect_timeout = 10
    settings.peering.standalone = cfg.peering is None
    if cfg.peering is not None:
        settings.peering.name = cfg.peering
    # Only Deployments carrying the pool label, filtered by the API server: the operator never
    # receives (nor decodes) the other Deployments of the namespaces it watches.
    settings.watching.label_selectors["apps", "deployments"] = manifests.POOL_LABEL
    # The CRD is installed before the operator; no need to watch CRDs or list namespaces.
    settings.scanning.disabled = True
    settings.networking.request_timeout = 60
    return settings


def _owner_pool(body: Mapping[str, Any]) -> str | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == "WorkerPool" and str(ref.get("apiVersion", "")).startswith(
            f"{api.GROUP}/"
        ):
            return str(ref.get("name"))
    return None


# ------------------------------------------------------------------------------------ kopf wiring


def register(registry: kopf.OperatorRegistry, ctx: context.OperatorContext) -> None:
    """Register every handler of the operator into ``registry``."""

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        # Through the kubernetes package (exec plugins, in-cluster): the configured kubeconfig,
        # else the pod's service account, else the default kubeconfig. kopf calls this again
        # on a 401 or when the login expires; our own client follows (ctx.credentials).
        if ctx.credentials is None:
            ctx.credentials = build_credentials(ctx.config)
        try:
            info = await asyncio.to_thread(load_operator_login, ctx.config)
        except credentials.CredentialsError as exc:
            raise kopf.LoginError(str(exc)) from exc
        ctx.credentials.replace(info)
        return info

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        pools = list(ctx.pools.values())
        ctx.pools.clear()
        stopping = (*(p.stop() for p in pools), *ctx.pool_stops)
        await asyncio.gather(*stopping, return_exceptions=True)
        await ctx.queues.close()
        if ctx.client is not None:
            await ctx.client.close()
            ctx.client = None

    @kopf.on.event(api.GROUP, api.VERSION, api.PLURAL, registry=registry)
    async def workerpool_event(event: Mapping[str, Any], **_: Any) -> None:
        raw = event.get("object") or {}
        meta = raw.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        if event.get("type") == "DELETED":
            controller = ctx.pools.get(key)
            stopping = None if controller is None else ctx.forget_pool(controller)
            if stopping is not None:
                await stopping
            return
        controller = ctx.pools.get(key)
        if controller is None:
            controller = ctx.pools[key] = pool.PoolController(ctx, key[0], key[1])
        controller.observe(dict(raw))  # read-only: we replace bodies, never mutate them
        if ctx.fence is None or ctx.fence():
            controller.start()  # a standby keeps the body; its loop starts when it leads

    def owned_by_a_pool(body: kopf.Body, **_: Any) -> bool:
        return _owner_pool(body) is not None

    @kopf.on.event("apps", "v1", "deployments", registry=registry, when=owned_by_a_pool)
    async def deployment_event(event: Mapping[str, Any], **_: Any) -> None:
        raw = event.get("object") or {}
        owner = _owner_pool(raw)
        namespace = str((raw.get("metadata") or {}).get("namespace", ""))
        controller = ctx.pools.get((namespace, owner or ""))
        if controller is None:
            return  # the pool is gone or not seen yet; its own event will reconcile
        deleted = event.get("type") == "DELETED"
        # Its pool's own deletion comes this way too, as garbage collection: a pool whose
        # DELETED event was missed would create its Deployment again. One read per deletion.
        if deleted and await _is_forgotten_as_gone(ctx, controller):
            return
        controller.observe_deployment(dict(raw), deleted=deleted)

    @kopf.on.probe(registry=registry, id="pools")
    async def pools_probe(**_: Any) -> int:
        return len(ctx.pools)


async def _is_forgotten_as_gone(
    ctx: context.OperatorContext, controller: pool.PoolController
) -> bool:
    """``ctx.forget_pool_if_gone``; False when the pool cannot be read (the Deployment is then
    handled as any deleted one: created again)."""
    try:
        return await ctx.forget_pool_if_gone(controller)
    except Exception as exc:
        logger.info(
            "could not read WorkerPool %s/%s after its Deployment was deleted: %s",
            controller.namespace,
            controller.name,
            exc,
        )
        return False


def load_operator_login(cfg: config_module.OperatorConfig) -> kopf.ConnectionInfo:
    """The operator's login: its kubeconfig, else the pod's service account, else the default
    kubeconfig (blocking: an exec plugin may run)."""
    return credentials.load_login(cfg.kubeconfig, prefer_service_account=True)


def build_credentials(cfg: config_module.OperatorConfig) -> credentials.Credentials:
    """The operator's shared credentials, loading as :func:`load_operator_login` does."""
    return credentials.Credentials(lambda: load_operator_login(cfg))
