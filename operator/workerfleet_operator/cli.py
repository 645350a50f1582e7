"""The `workerfleet` command line: one entry point for workers, the operator and local mode.

Installed as the `workerfleet` console script. Subcommands import their modules lazily so a
worker pod never loads kopf or the Kubernetes client.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit code."""
    args = sys.argv[1:] if argv is None else argv
    print("workerfleet: no subcommands yet", args, file=sys.stderr)
    return 2
