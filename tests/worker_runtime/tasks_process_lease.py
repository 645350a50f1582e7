"""A process task for the in-process worker tests of the process pool and leases.

``tests/worker_runtime/test_process_lease_lost_while_waiting.py`` runs it on a real
:class:`worker_runtime.worker.Worker` (memory broker, real spawned children). The child imports
this module by name and appends one line per handler run to a file the payload names, so the
test reads which job ran, and on which delivery, from the children themselves.
"""

from __future__ import annotations

import pathlib
import time

from pydantic import BaseModel

from worker_runtime import App, JobContext

QUEUE = "process-lease"

app = App(queue=QUEUE)


class Step(BaseModel):
    marker: str
    runs: str  # the file each run appends "<marker> <delivery>" to
    gate: str = ""  # a file whose existence lets the handler return ("" = return at once)


@app.task("step", executor="process")
def step(payload: Step, ctx: JobContext) -> None:
    with pathlib.Path(payload.runs).open("a") as runs:
        runs.write(f"{payload.marker} {ctx.deliveries}\n")
    if not payload.gate:
        return
    gate = pathlib.Path(payload.gate)
    for _ in range(6000):  # bounded: about 60 s
        if gate.exists():
            return
        time.sleep(0.01)
    raise TimeoutError("the test never opened the gate")
