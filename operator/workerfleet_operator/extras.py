"""What a ``workerfleet`` command needs beyond the base package, and the line it prints without it.

The base install (the runtime, the CLI, local mode) carries no kopf, aiohttp, Starlette or
uvicorn: ``workerfleet operator``, ``pools``, ``--pool NAMESPACE/NAME`` and ``console`` import
them when they run. Without their extra each says so in one line, with the command that installs
it, and exits 2 (a usage error, like a missing flag) instead of a ModuleNotFoundError traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from worker_runtime import cli as runtime_cli

Handler = Callable[[argparse.Namespace], int]

EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "operator": ("kopf", "aiohttp"),
    "console": ("starlette", "jinja2", "uvicorn"),
}
"""The modules each extra brings that the commands import (their top-level names)."""


def describe_missing(extra: str, feature: str) -> str | None:
    """The line saying ``feature`` needs ``extra`` and how to install it, when one of the extra's
    modules does not import here; None when they all do."""
    for module in EXTRA_MODULES[extra]:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            return (
                f"{feature} needs the {extra} extra ({exc}): {runtime_cli.describe_install(extra)}"
            )
    return None


def requires(extra: str, feature: str) -> Callable[[Handler], Handler]:
    """A command handler that first checks ``extra``: without it, one line and exit code 2."""

    def decorate(handler: Handler) -> Handler:
        def wrapped(args: argparse.Namespace) -> int:
            missing = describe_missing(extra, feature)
            if missing is not None:
                print(f"workerfleet: {missing}", file=sys.stderr)
                return 2
            return handler(args)

        wrapped.__name__ = handler.__name__
        wrapped.__doc__ = handler.__doc__
        return wrapped

    return decorate
