"""Helpers of the web console tests: a real console process, a seeded queue, a real browser.

``ConsoleProcess`` runs ``workerfleet console`` as a subprocess on a free loopback port;
``seed_queue`` fills a real queue through the runtime's engine (dead letters of several tasks,
reasons and error types; one job held by a worker; one delayed job), ``enqueue_waiting_job``
adds a waiting one; ``build_browser`` starts Debian's chromium through chromium-driver with
Selenium. A missing chromium FAILS: the tests never skip (``make deps`` installs it through
scripts/ensure-deps.sh).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio
import requests

from tests.support.redis_servers import free_port
from worker_runtime import brokers, envelope
from worker_runtime.brokers import base
from worker_runtime.brokers.redis import queue

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "console-test-token-7f3a"
REDIS_PASSWORD = "s3cret-redis-pw-91"


class ConsoleProcess:
    """``workerfleet console`` on a free loopback port, stopped by :meth:`stop`."""

    def __init__(
        self,
        url: str,
        queues: list[str],
        *,
        allow_writes: bool,
        extra_args: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        args = [str(ROOT / ".venv" / "bin" / "workerfleet"), "console", "--port", str(self.port)]
        for q in queues:
            args += ["--queue", q]
        if allow_writes:
            args.append("--allow-writes")
        args += extra_args or []
        env = {**os.environ, "WORKERFLEET_CONSOLE_TOKEN": TOKEN, "WORKERFLEET_REDIS_URL": url}
        env.update(extra_env or {})
        self.log_path = Path(tempfile.mkstemp(prefix="wf-console-", suffix=".log")[1])
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"console exited {self.proc.returncode}: {self.log()}")
            try:
                if requests.get(self.base + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"console did not start: {self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log_path.unlink(missing_ok=True)


@dataclass
class Seeded:
    """What :func:`seed_queue` put on the queue (ids by kind), for the tests to check against."""

    dead: dict[str, str] = field(default_factory=dict)  # label -> job id
    running: str = ""
    delayed: str = ""


DEAD_LETTERS = (
    # label, task, payload, reason, error type, message
    (
        "charge-a",
        "charge_card",
        {"card": "4242", "amount": 10},
        "max_attempts",
        "TimeoutError",
        "gateway slow",
    ),
    (
        "charge-b",
        "charge_card",
        {"card": "4000", "amount": 99},
        "non_retryable",
        "ValueError",
        "card declined",
    ),
    ("mail", "send_email", {"to": "a@example.org"}, "max_attempts", "ConnectionError", "smtp down"),
    (
        "xss",
        "render",
        {"html": "<script>alert(1)</script><b>bold</b>"},
        "non_retryable",
        "ValueError",
        "<img src=x onerror=alert(2)>",
    ),
)


async def seed_queue(url: str, name: str) -> Seeded:
    """Dead letters (DEAD_LETTERS), one job running on worker ``w-busy``, one delayed job."""
    client = redis.asyncio.Redis.from_url(url, decode_responses=True)
    engine = queue.QueueClient(client, name, queue.QueueOptions())
    seeded = Seeded()
    try:
        for label, task, payload, reason, error, message in DEAD_LETTERS:
            [res] = await engine.enqueue_many(
                [queue.EnqueueRequest(envelope=envelope.build_envelope(task, payload))]
            )
            [job] = await engine.fetch("w-old", 1)
            failure = queue.Failure(
                error_type=error,
                message=message,
                traceback=f"Traceback: {error}",
                worker_id="w-old",
            )
            assert await engine.dead_letter(job, reason, failure=failure)
            seeded.dead[label] = res.job_id
            await asyncio.sleep(0.01)
        [res] = await engine.enqueue_many(
            [queue.EnqueueRequest(envelope=envelope.build_envelope("resize", {"px": 64}))]
        )
        [job] = await engine.fetch("w-busy", 1)
        assert job.id == res.job_id
        seeded.running = res.job_id
        [res] = await engine.enqueue_many(
            [
                queue.EnqueueRequest(
                    envelope=envelope.build_envelope("later", {}), delay_seconds=3600.0
                )
            ]
        )
        seeded.delayed = res.job_id
    finally:
        await client.aclose()
    return seeded


async def enqueue_waiting_job(url: str, name: str, task: str) -> str:
    """The id of a new job of ``task`` waiting on the queue for a worker."""
    client = redis.asyncio.Redis.from_url(url, decode_responses=True)
    engine = queue.QueueClient(client, name, queue.QueueOptions())
    try:
        env = envelope.build_envelope(task, {})
        [res] = await engine.enqueue_many([queue.EnqueueRequest(envelope=env)])
        return str(res.job_id)
    finally:
        await client.aclose()


async def fetch_job_state(url: str, name: str, job_id: str) -> str:
    """Where the broker says ``job_id`` is (``waiting``, ``unknown``, ...)."""
    broker = await brokers.open_broker(url, name, role=base.QueueRole.READER)
    try:
        [status] = await base.fetch_job_status(broker, [job_id])
        return str(status.state)
    finally:
        await broker.close()


async def fetch_ready_ids(url: str, name: str, want: int) -> set[str]:
    """Job ids a worker now gets from the queue (fetched by a throwaway worker id)."""
    client = redis.asyncio.Redis.from_url(url, decode_responses=True)
    engine = queue.QueueClient(client, name, queue.QueueOptions())
    try:
        jobs = await engine.fetch("w-check", want)
        return {j.id for j in jobs}
    finally:
        await client.aclose()


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1000",
)


def build_browser(profile_dir: str) -> Any:
    """Chromium driven by chromium-driver; raises (the test FAILS) when either is missing."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        raise RuntimeError(
            "chromium and chromium-driver are required (make deps: scripts/ensure-deps.sh)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    browser = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    browser.set_page_load_timeout(30)
    return browser
