"""SIGTERM/SIGINT that arrive before the worker's event loop runs: remembered, then drained.

``workerfleet worker`` (:mod:`worker_runtime.cli`) installs these handlers before it imports the
application (which can be slow); :meth:`worker_runtime.worker.core.Worker.run` replays what they
recorded as drain requests once its own handlers are in place.
"""

from __future__ import annotations

import signal

_early_signals: list[int] = []


def _remember_signal(signum: int, frame: object) -> None:
    # Only records the signal (async-signal-safe enough: one list append).
    _early_signals.append(signum)


def install_early_signal_handlers() -> None:
    """Remember SIGTERM/SIGINT that arrive before the worker's loop installs its handlers."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _remember_signal)


def take_early_signal() -> int | None:
    """The oldest signal remembered and not yet replayed (None when there is none)."""
    return _early_signals.pop(0) if _early_signals else None
