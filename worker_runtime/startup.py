"""The worker process's start-up: the cyclic garbage collector paused while it loads.

Called by the ``worker`` command (:func:`worker_runtime.cli.cmd_worker`), which pauses the
collector before it imports the worker, the App and their libraries, and resumes it when it
returns; and by the worker loop (:mod:`worker_runtime.worker.core`), which resumes it as soon as
its start-up objects are frozen (``gc.freeze``) or when opening its broker fails.

Why (cold start): start-up creates tens of thousands of objects that live as long as the process
(modules, classes, pydantic schemas, clients) and next to no cyclic garbage; with the collector
on, a Redis worker's start ran some 130 collections that freed about a thousand objects in all,
a few percent of its time to the first job. Nothing else changes: the same objects are frozen
once the worker runs, the start-up's garbage among them (a bounded, one-off cost). This module
imports nothing but :mod:`gc`, so the pause can come first.
"""

from __future__ import annotations

import gc

_paused = False


def pause_gc() -> None:
    """Stop automatic collections for the start-up (a no-op if the collector is already off)."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume_gc() -> None:
    """Turn automatic collections back on if :func:`pause_gc` turned them off (idempotent)."""
    global _paused
    if _paused:
        _paused = False
        gc.enable()
