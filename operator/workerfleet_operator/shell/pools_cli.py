"""``workerfleet pools``: every WorkerPool's backlog, in flight, oldest job, DLQ and replicas.

Registered into the ``workerfleet`` console script by ``workerfleet_operator.cli``. Reads the
WorkerPools through :mod:`workerfleet_operator.shell.inventory` with the user's kubeconfig:
the numbers the operator last wrote into each status, or with ``--live`` each queue read now
through the runtime's read-only stats (the URL from the pool's Secret, never printed).
Also provides :func:`resolve_pool`, which the queue and dlq commands call for ``--pool``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from typing import Any

from workerfleet_operator import extras

SubParsers = Any


def register_commands(subparsers: SubParsers) -> None:
    """Add ``pools`` to a ``workerfleet`` subparsers object."""
    p = subparsers.add_parser(
        "pools",
        help="list WorkerPools with backlog, in flight, oldest job, DLQ and replicas",
        description="List WorkerPools (kubeconfig's namespace, or -A for all) with their "
        "queue numbers and replicas, like `rq info` for the whole fleet.",
    )
    p.add_argument("--all-namespaces", "-A", action="store_true", help="pools of every namespace")
    p.add_argument(
        "--namespace", "-n", default=None, help="namespace (default: the kubeconfig context's)"
    )
    p.add_argument(
        "--kubeconfig",
        default=None,
        help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)",
    )
    p.add_argument(
        "--live",
        action="store_true",
        help="read each queue now (URL from the pool's Secret) instead of the pool's status",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_pools)


async def _fetch_rows(args: argparse.Namespace) -> list[Any]:
    from worker_runtime.brokers.redis import connection, stats
    from workerfleet_operator.console import sources
    from workerfleet_operator.shell import inventory

    login = inventory.build_login(args.kubeconfig)
    try:
        namespace = None if args.all_namespaces else (args.namespace or login.namespace)
        bodies = await inventory.fetch_workerpools(
            login.client, namespace, absent_api_is_empty=False
        )
        rows = [inventory.build_pool_view(b) for b in bodies]
        if not args.live:
            return rows
        live = []
        for body, row in zip(bodies, rows, strict=True):
            try:
                url, queue = await inventory.fetch_queue_target(login.client, body)
            except inventory.InventoryError as exc:
                live.append(dataclasses.replace(row, error=str(exc)))
                continue
            client = connection.build_client(url, socket_timeout=5.0)
            try:
                s = await asyncio.wait_for(stats.fetch_queue_stats(client, queue), 10.0)
                live.append(sources.build_pool_from_stats(row, s))
            except Exception as exc:  # one unreachable queue must not hide the others
                live.append(dataclasses.replace(row, error=f"unreachable: {type(exc).__name__}"))
            finally:
                await client.aclose()
        return live
    finally:
        await login.client.close()


@extras.requires("operator", "workerfleet pools")
def cmd_pools(args: argparse.Namespace) -> int:
    """Print the pools table."""
    from worker_runtime.brokers.redis import stats
    from workerfleet_operator.shell import inventory, kube

    try:
        rows = asyncio.run(_fetch_rows(args))
    except inventory.WorkerPoolApiMissing as exc:
        print(f"workerfleet: {exc}", file=sys.stderr)
        return 1
    except inventory.InventoryError as exc:
        print(f"workerfleet: {exc}", file=sys.stderr)
        return 2
    except (kube.ApiError, OSError) as exc:
        print(f"workerfleet: cannot list WorkerPools: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2, sort_keys=True))
        return 0
    if not rows:
        print("no WorkerPools found", file=sys.stderr)
        return 0
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False)
    columns = ("NAMESPACE", "NAME", "QUEUE", "READY", "REPLICAS", "DESIRED", "BACKLOG",
               "IN FLIGHT", "OLDEST", "DLQ")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col in columns[:4] else "right")

    def n(value: int | None) -> str:
        return "-" if value is None else f"{value:,}"

    for r in rows:
        ready = next((c.status for c in r.conditions if c.type == "Ready"), "-")
        table.add_row(
            *map(
                Text,
                (
                    r.namespace or "",
                    r.name,
                    r.queue,
                    r.error or ready,
                    n(r.replicas),
                    n(r.desired),
                    n(r.backlog),
                    n(r.in_flight),
                    stats.format_age(r.oldest_age_seconds),
                    n(r.dead_letter),
                ),
            )
        )
    Console(highlight=False, width=200).print(table)
    return 0


def resolve_pool(pool: str, kubeconfig: str | None) -> tuple[str, str]:
    """(Redis URL, queue) of the WorkerPool ``NAMESPACE/NAME``, read from the cluster.

    Raises :class:`~workerfleet_operator.shell.inventory.InventoryError` for a pool that cannot
    be found, and the runtime's ``PoolUnreachable`` when the API server does not answer, refuses
    this user (401, 403), throttles it (429) or fails (5xx); without the operator extra, the
    runtime's ``CliError`` saying how to install it.
    """
    from worker_runtime import cli as runtime_cli

    missing = extras.describe_missing("operator", "--pool")
    if missing is not None:
        raise runtime_cli.CliError(missing)
    import aiohttp

    from worker_runtime import errors
    from workerfleet_operator.shell import inventory, kube

    async def go() -> tuple[str, str]:
        login = inventory.build_login(kubeconfig)
        server = inventory.describe_server(login.client.server)
        try:
            namespace, name = inventory.parse_pool_name(pool, login.namespace)
            body = await inventory.fetch_workerpool(login.client, namespace, name)
            return await inventory.fetch_queue_target(login.client, body)
        except kube.ApiError as exc:
            if exc.status in (401, 403, 429) or exc.status >= 500:
                # The API server answered but refused this user, or could not serve the read:
                # a failure to reach the pool (exit 1), not a wrong pool name (exit 2).
                msg = f"the Kubernetes API at {server} did not let us read WorkerPool {pool}: {exc}"
                raise runtime_cli.PoolUnreachable(msg) from None
            raise inventory.InventoryError(f"cannot read WorkerPool {pool}: {exc}") from None
        except (OSError, aiohttp.ClientError) as exc:  # refused, cut, timed out, TLS
            msg = (
                f"cannot reach the Kubernetes API at {server} to find WorkerPool {pool}: "
                f"{errors.message_of(exc) or type(exc).__name__}"
            )
            raise runtime_cli.PoolUnreachable(msg) from None
        finally:
            await login.client.close()

    return asyncio.run(go())
