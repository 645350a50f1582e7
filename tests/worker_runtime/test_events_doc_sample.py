"""docs/events.md's opening sample runs as written, on the memory broker: it registers its
subscription before it publishes, so the event reaches the group; the same sample without the
registration publishes to nobody (``created=()``), with no error, which is what the page says a
topic does with no subscription."""

from __future__ import annotations

import ast
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

EVENTS_DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"
REGISTRATION = "await app.register_subscriptions()\n"


def opening_sample() -> str:
    """The first python block of docs/events.md."""
    found = re.search(r"```python\n(.*?)```", EVENTS_DOC.read_text(), re.DOTALL)
    assert found is not None
    return found.group(1)


async def run_sample(source: str) -> dict[str, Any]:
    """Run ``source`` as a module whose top level may await; its globals afterwards."""
    code = compile(source, str(EVENTS_DOC), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    namespace: dict[str, Any] = {"__name__": "events_doc_sample"}
    pending = eval(code, namespace)  # a coroutine when the source awaits
    if pending is not None:
        await pending
    return namespace


@pytest.fixture(autouse=True)
def memory_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKERFLEET_BROKER_URL", f"memory://events-doc-{uuid.uuid4().hex[:8]}")


async def test_the_events_sample_registers_its_subscription_and_its_publish_reaches_it() -> None:
    # Given docs/events.md's opening sample, which registers the subscription first
    source = opening_sample()
    assert REGISTRATION in source
    # When it runs (its own assert checks the publish result)
    namespace = await run_sample(source)
    # Then the event reached the welcome-email subscription
    assert namespace["result"].created == ("welcome-email",)


async def test_the_events_sample_without_its_registration_publishes_to_nobody() -> None:
    # Given the sample with the registration line taken out (and its own assert)
    source = opening_sample().replace(REGISTRATION, "").replace("assert result", "# assert")
    # When it runs
    namespace = await run_sample(source)
    # Then the publish succeeds but stores the event nowhere
    assert namespace["result"].created == () and namespace["result"].duplicate == ()
