"""The drained worker's hard-exit timer takes any drain budget the settings accept.

``WORKERFLEET_DRAIN_TIMEOUT_SECONDS`` has no upper bound; a timer thread waiting 1e10 s raised
OverflowError in its thread (the platform's time_t), and the process had no deadline at all.
"""

from __future__ import annotations

import threading
import time

import pytest

from worker_runtime import App, config
from worker_runtime.worker import core


@pytest.mark.parametrize("budget", [60.0, 1e10, 1e300])
def test_the_hard_exit_timer_waits_for_any_accepted_drain_budget_without_raising(
    budget: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    raised: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: raised.append(args.exc_value))
    # Given a worker with that drain budget that has just drained
    app = App(queue="q")
    settings = config.WorkerSettings(
        redis_url="redis://127.0.0.1:1/0", metrics_port=0, drain_timeout_seconds=budget
    )
    worker = core.Worker(app, settings, install_signal_handlers=False)
    worker.drainer.started = time.monotonic()
    # When its hard exit is armed
    timer = worker.drainer.arm_hard_exit()
    try:
        time.sleep(0.2)
        # Then its timer is still waiting, nothing raised in its thread
        assert timer.is_alive()
        assert raised == []
    finally:
        timer.cancel()
        timer.join(5)
