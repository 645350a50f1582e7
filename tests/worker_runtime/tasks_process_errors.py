"""Process tasks whose errors do not pickle back: ``tests.worker_runtime.tasks_process_errors:app``.

Their children raise errors the worker's task lists as ``non_retryable`` but that cannot be
rebuilt from a pickle (an ``__init__`` with two required arguments, as many library errors
have), so the worker receives a stand-in for them (``processes.ChildError``).
"""

from __future__ import annotations

from tests.worker_runtime import tasks_fixture
from worker_runtime import App, JobContext, Retry, backoff

app = App(queue=tasks_fixture.QUEUE)


class PaymentError(Exception):
    """A family of errors none of which a retry can fix."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code


class CardDeclined(PaymentError):
    """One of them: the bank said no."""


@app.task(
    "charge",
    executor="process",
    non_retryable=(PaymentError,),
    retry=Retry(max_attempts=3, backoff=backoff.Backoff(base_seconds=0.05, max_seconds=0.05)),
)
def charge(payload: tasks_fixture.Empty, ctx: JobContext) -> None:
    tasks_fixture.record("start", ctx)
    raise CardDeclined(51, "insufficient funds")
