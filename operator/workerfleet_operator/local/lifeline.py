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

The kernel sends that signal only for a parent that dies *after* it was set. A fleet killed
between forking a child and ``setpriv`` setting it (a few milliseconds, longer on a busy
machine) would leave the child running for good: seen as a worker that outlived its killed
fleet. So ``setpriv`` runs a one-line ``sh`` guard first (same process, signal already set): if
its parent is no longer the process that built the command, the fleet is gone and the child
exits 143 (as if it had got the SIGTERM) without starting; otherwise ``sh`` execs the command,
which keeps the PID the fleet knows.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence

# $1: the PID the child's parent must have; the rest: the command. `exit 143` = killed by TERM.
_PARENT_GUARD = 'if [ "$PPID" != "$1" ]; then exit 143; fi; shift; exec "$@"'


def build_tied_command(
    command: Sequence[str], *, setpriv: str | None = None, parent_pid: int | None = None
) -> list[str]:
    """Return ``command`` prefixed so that the child gets SIGTERM when its parent dies.

    ``parent_pid`` is the process that will start the child (this one unless told otherwise).
    """
    tool = setpriv if setpriv is not None else shutil.which("setpriv")
    if not tool or not sys.platform.startswith("linux"):
        return list(command)
    parent = os.getpid() if parent_pid is None else parent_pid
    guard = ["/bin/sh", "-c", _PARENT_GUARD, "workerfleet-lifeline", str(parent)]
    return [tool, "--pdeathsig", "TERM", "--", *guard, *command]
