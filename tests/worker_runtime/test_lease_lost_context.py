"""A lease found lost before its handler's JobContext was built still shows in the context.

A job is held from its fetch on, and its context is built at its task's first step; the control
thread, renewing meanwhile, marks a lost lease on the held job and on its context when there is
one. Found lost in between, the context said ``lease_lost`` False for the whole run. On the
memory broker, with the held job marked lost as the control thread marks it.
"""

from __future__ import annotations

import time
import uuid

from worker_runtime import App, JobContext, config, worker
from worker_runtime.brokers import memory
from worker_runtime.worker import held as held_mod


async def test_a_lease_found_lost_before_the_context_is_built_shows_in_the_context() -> None:
    # Given a job a worker fetched and holds, whose lease a renewal found lost before its
    # handler started
    url = f"memory://lost-{uuid.uuid4().hex[:8]}"
    app = App("lost", redis_url=url)

    @app.task("hold")
    async def hold(payload: dict[str, str], ctx: JobContext) -> None: ...

    await app.enqueue("hold", {"n": "1"})
    settings = config.WorkerSettings(redis_url=url, metrics_port=0)
    w = worker.Worker(app, settings, install_signal_handlers=False)
    q = memory.MemoryBroker(w.queue_name, store=url.removeprefix("memory://"))
    [job] = await q.fetch(w.worker_id, 1)
    spec = app.tasks["hold"]
    h = held_mod.Held(job, spec, w.queue_name, time.time())
    h.lost = True

    # When its handler's context is built
    ctx = w.runner.build_context(h, spec)

    # Then the context says the lease was lost, as one built before the renewal would
    assert ctx.lease_lost is True
    await q.close()
