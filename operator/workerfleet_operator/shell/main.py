"""The operator process: ``workerfleet operator`` runs kopf with workerfleet's handlers.

Called by ``workerfleet_operator.cli`` (the ``operator`` subcommand), by the tests (in a thread,
with a stop flag) and by bench/operator_scale.py. One replica by default; with
``WORKERFLEET_OPERATOR_LEADER_ELECTION=true`` replicas elect a leader on a Lease (``shell.leader``)
and only it reconciles. Cluster-wide unless ``WORKERFLEET_OPERATOR_NAMESPACES`` lists
namespaces; kopf's liveness endpoint on ``/healthz`` and a Prometheus endpoint on ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import kopf
import prometheus_client

from worker_runtime import logs
from workerfleet_operator.shell import config as config_module
from workerfleet_operator.shell import context as context_mod
from workerfleet_operator.shell import handlers, leader, metrics


def run_operator(
    cfg: config_module.OperatorConfig | None = None,
    *,
    stop_flag: threading.Event | asyncio.Event | None = None,
    ready_flag: threading.Event | asyncio.Event | None = None,
    operator_metrics: metrics.OperatorMetrics | None = None,
    configure_logging: bool = True,
    context: context_mod.OperatorContext | None = None,
) -> int:
    """Run the operator until stopped (SIGTERM/SIGINT, or ``stop_flag``); return the exit code."""
    cfg = cfg if cfg is not None else config_module.OperatorConfig()
    if configure_logging:
        configure_operator_logs(cfg)
    ctx = context if context is not None else context_mod.build_context(cfg, operator_metrics)
    registry = kopf.OperatorRegistry()
    handlers.register(registry, ctx)
    elector = None
    if cfg.leader_election:
        if ctx.credentials is None:
            ctx.credentials = handlers.build_credentials(cfg)
        # Losing the Lease stops kopf (the caller's flag, or our own); the exit code says so.
        stop_flag = stop_flag if stop_flag is not None else threading.Event()
        elector = leader.build_elector(ctx, stop_flag.set)
        leader.register(registry, elector)
    server = None
    if cfg.metrics_port:
        server, _thread = prometheus_client.start_http_server(
            cfg.metrics_port, cfg.bind_host, registry=ctx.metrics.registry
        )
    liveness = f"http://{cfg.bind_host}:{cfg.health_port}/healthz" if cfg.health_port else None
    kwargs: dict[str, Any] = (
        {"clusterwide": True} if not cfg.namespaces else {"namespaces": list(cfg.namespaces)}
    )
    try:
        kopf.run(
            registry=registry,
            settings=handlers.build_settings(cfg),
            standalone=cfg.peering is None,
            peering_name=cfg.peering,
            liveness_endpoint=liveness,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
            **kwargs,
        )
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    if elector is not None and elector.lost:
        return 1  # restarted as a standby, as kubebuilder managers are
    return 0


def configure_operator_logs(cfg: config_module.OperatorConfig) -> None:
    """The operator's log: one lean JSON (or text) line per record.

    kopf logs "Handler ... succeeded." at info for every watch event it hands us, and every
    status write of ours comes back as one: below debug, kopf's per-object logger keeps only
    warnings and errors, and our own lines say what the operator did.
    """
    logs.configure(cfg.log_level, cfg.log_format)
    kopf_objects = logging.getLogger("kopf.objects")
    kopf_objects.setLevel(logging.DEBUG if cfg.log_level == "debug" else logging.WARNING)


def main(args: Any = None) -> int:
    """Entry point of ``workerfleet operator`` (argparse namespace ignored: config is env)."""
    return run_operator()
