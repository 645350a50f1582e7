"""The example App of the documented worker image: ``emails.tasks:app``, queue email-notifications.

Run in the image as ``workerfleet worker emails.tasks:app`` (the WorkerPool's ``spec.app``);
tests/packaging/test_worker_image.py imports it to prove the documented module path registers.
"""

from __future__ import annotations

import os

from pydantic import BaseModel, Field

from worker_runtime import App, JobContext, Retry

app = App(queue=os.environ.get("WORKERFLEET_QUEUE", "email-notifications"))


class Email(BaseModel):
    """One message to send; validated before the handler runs (invalid payloads go to the DLQ)."""

    to: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    subject: str = Field(min_length=1, max_length=200)
    body: str


@app.task("send-email", retry=Retry(max_attempts=5), timeout=30)
async def send_email(payload: Email, ctx: JobContext) -> None:
    """Send the email (a real app calls its mail provider here; idempotent on the job id)."""
    ctx.logger.info("sending email", extra={"to": payload.to, "subject": payload.subject})
