"""The ``workerfleet operator`` subcommand; registered by ``workerfleet_operator.cli``.

Registration is cheap (argparse only): kopf and the handlers are imported when the command runs.
All configuration comes from ``WORKERFLEET_OPERATOR_*`` (see ``shell.config``); the flags below
are conveniences that override the environment.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from workerfleet_operator import extras


def register_commands(subparsers: Any) -> None:
    """Add ``operator`` to the ``workerfleet`` parser."""
    parser = subparsers.add_parser(
        "operator",
        help="run the WorkerPool operator (kopf, standalone by default)",
        description="Reconcile WorkerPools into worker Deployments and autoscale them on queue "
        "depth. Configured by WORKERFLEET_OPERATOR_* environment variables.",
    )
    parser.add_argument(
        "--namespaces", help="comma-separated namespaces to watch (default: cluster-wide)"
    )
    parser.add_argument(
        "--kubeconfig",
        help="kubeconfig file (default: the pod's service account, else $KUBECONFIG, else "
        "~/.kube/config)",
    )
    parser.set_defaults(handler=_run)


@extras.requires("operator", "workerfleet operator")
def _run(args: argparse.Namespace) -> int:
    if args.namespaces:
        os.environ["WORKERFLEET_OPERATOR_NAMESPACES"] = args.namespaces
    if args.kubeconfig:
        os.environ["WORKERFLEET_OPERATOR_KUBECONFIG"] = args.kubeconfig
    from pydantic import ValidationError

    from workerfleet_operator.shell import config

    try:
        cfg = config.OperatorConfig()
    except ValidationError as exc:  # one line, not a traceback a pod crash-loops with
        problems = config.describe_invalid_settings(exc)
        print(f"workerfleet: invalid settings: {problems}", file=sys.stderr)
        return 2
    from workerfleet_operator.shell import main

    return main.run_operator(cfg)
