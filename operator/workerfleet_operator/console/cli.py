"""``workerfleet console``: serve the web console (registered by ``workerfleet_operator.cli``).

Registration only builds the parser; the handler imports Starlette and uvicorn when it runs
(they come with the ``console`` extra). The token and the Redis URL are read from the
environment by default so they never appear in a process list.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from workerfleet_operator import extras

SubParsers = Any


def register_commands(subparsers: SubParsers) -> None:
    """Add ``console`` to a ``workerfleet`` subparsers object."""
    c = subparsers.add_parser(
        "console",
        help="serve the web console (pools, queues, dead letters)",
        description="Serve the web console. Read-only unless --allow-writes; every page needs "
        "the token (Bearer header or the sign-in form) or a trusted auth-proxy header.",
    )
    c.add_argument(
        "--broker-url",
        default=None,
        help="broker URL of the queues, any scheme the runtime serves (redis://, amqp://, "
        "sqs://, ...; default: $WORKERFLEET_BROKER_URL, else $WORKERFLEET_REDIS_URL)",
    )
    c.add_argument(
        "--redis-url",
        default=None,
        help="the broker URL under its older name (same as --broker-url)",
    )
    c.add_argument(
        "--queue",
        "-q",
        action="append",
        default=None,
        help="a queue to show (repeatable; default: $WORKERFLEET_QUEUE)",
    )
    c.add_argument(
        "--kube",
        action="store_true",
        help="show the cluster's WorkerPools (status, conditions, scaling decisions) through "
        "the kubeconfig instead of queues on one Redis URL",
    )
    c.add_argument(
        "--kubeconfig",
        default=None,
        help="kubeconfig (default: $KUBECONFIG, else ~/.kube/config, else the pod's service "
        "account)",
    )
    c.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=None,
        help="only this namespace's pools (with --kube; repeatable; default: every namespace)",
    )
    c.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    c.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    c.add_argument(
        "--token-env",
        default="WORKERFLEET_CONSOLE_TOKEN",
        help="environment variable holding the access token (default WORKERFLEET_CONSOLE_TOKEN)",
    )
    c.add_argument(
        "--token-file",
        default=None,
        metavar="PATH",
        help="read the access token from this file instead (e.g. a mounted Secret); wins over "
        "--token-env",
    )
    c.add_argument(
        "--auth-proxy-header",
        default=None,
        metavar="HEADER",
        help="trust this header (e.g. X-Forwarded-User) as the signed-in user: only behind a "
        "proxy that sets it and strips it from clients, and only from --trusted-proxy",
    )
    c.add_argument(
        "--trusted-proxy",
        action="append",
        default=None,
        metavar="CIDR",
        help="address or CIDR of the auth proxy whose --auth-proxy-header is believed "
        "(repeatable; default: loopback, a proxy beside the console); a request carrying the "
        "header from any other address is refused (403)",
    )
    c.add_argument(
        "--allow-writes",
        action="store_true",
        help="enable replay, purge and cancel (with confirmation and CSRF protection; each "
        "write attempt is logged on workerfleet.console.audit)",
    )
    c.set_defaults(handler=cmd_console)


def read_token(path: str | None, env_name: str, environ: Mapping[str, str]) -> str | None:
    """The access token: the file's content (surrounding whitespace dropped), else the variable.

    None when neither holds one. The chart mounts the token Secret as a file, so it is in no
    environment a crash dump or ``/proc`` listing would show.
    """
    if path:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip() or None
    return environ.get(env_name) or None


@extras.requires("console", "the console")
def cmd_console(args: argparse.Namespace) -> int:
    """Serve the console until interrupted."""
    import uvicorn

    from workerfleet_operator.console import app, security, sources

    try:
        token = read_token(args.token_file, args.token_env, os.environ)
    except OSError as exc:
        print(f"workerfleet: cannot read the token file: {exc}", file=sys.stderr)
        return 2
    try:
        trusted = (
            security.parse_trusted_proxies(args.trusted_proxy)
            if args.trusted_proxy
            else security.LOOPBACK
        )
    except ValueError as exc:
        print(f"workerfleet: --trusted-proxy: {exc}", file=sys.stderr)
        return 2
    try:
        auth = security.AuthSettings(
            token=token, proxy_header=args.auth_proxy_header, trusted_proxies=trusted
        )
    except ValueError:
        print(
            f"workerfleet: set ${args.token_env}, pass --token-file or --auth-proxy-header "
            "(the console never runs without authentication)",
            file=sys.stderr,
        )
        return 2
    source: sources.Source
    if args.kube:
        missing = extras.describe_missing("operator", "the console's --kube")
        if missing is not None:
            print(f"workerfleet: {missing}", file=sys.stderr)
            return 2
        from workerfleet_operator.shell import inventory

        try:
            source = sources.KubeSource(args.kubeconfig, args.namespace or ())
        except inventory.InventoryError as exc:
            print(f"workerfleet: {exc}", file=sys.stderr)
            return 2
    else:
        url = (
            args.broker_url
            or args.redis_url
            or os.environ.get("WORKERFLEET_BROKER_URL")
            or os.environ.get("WORKERFLEET_REDIS_URL")
        )
        queues = args.queue or [q for q in [os.environ.get("WORKERFLEET_QUEUE")] if q]
        if not url or not queues:
            print(
                "workerfleet: pass --kube, or --broker-url and --queue (or set the environment)",
                file=sys.stderr,
            )
            return 2
        from worker_runtime import errors

        try:
            source = sources.URLSource(url, queues)
        except errors.ConfigError as exc:
            print(f"workerfleet: unusable broker URL: {exc}", file=sys.stderr)
            return 2
    settings = app.ConsoleSettings(auth=auth, allow_writes=args.allow_writes)
    # The refusals the console logs (an untrusted proxy header) go to stderr with a time, and
    # so does the audit line of every write (INFO, on its own logger: the rest stays quiet).
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app.audit_logger.setLevel(logging.INFO)
    print(
        f"workerfleet console on http://{args.host}:{args.port} "
        f"({'writes enabled' if args.allow_writes else 'read-only'})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        app.build_app(settings, source),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        # The peer address is the connection's own: X-Forwarded-For, which anyone can send,
        # must never decide whether the proxy header is believed (nor whose wrong tokens count).
        proxy_headers=False,
    )
    return 0
