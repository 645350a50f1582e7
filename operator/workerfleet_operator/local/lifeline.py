"""Ties the local fleet's child processes (workers, embedded Redis, Prometheus) to its life.

Called by the ``fleet``, ``embedded_redis`` and ``demo`` modules of this package when they build a
child's command line. The children
run in their own sessions so that a Ctrl-C in the terminal reaches only the fleet, which then
drains them in order; the price is that a fleet killed outright (SIGKILL, OOM) would leave them
running. Prefixing the command with util-linux's ``setpriv --pdeathsig TERM`` makes the kernel
send each child SIGTERM when the thread that started it dies: workers then drain and exit 0, and
Redis shuts down after writing its AOF. The fleet starts its children from the thread that runs
it (the main thread of ``workerfleet run``), so the signal comes exactly when the fleet dies.
Where ``setpriv`` is missing (not Linux), commands run unchanged.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence


def build_tied_command(command: Sequence[str], *, setpriv: str | None = None) -> list[str]:
    """Return ``command`` prefixed so that the child gets SIGTERM when its parent dies."""
    tool = setpriv if setpriv is not None else shutil.which("setpriv")
    if not tool or not sys.platform.startswith("linux"):
        return list(command)
    return [tool, "--pdeathsig", "TERM", "--", *command]
