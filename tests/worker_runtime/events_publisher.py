"""A publisher process for the kill -9 fan-out test: publishes events forever, one at a time.

Run as ``python -m tests.worker_runtime.events_publisher PORT|URL TOPIC PREFIX`` (a Redis port,
or any broker URL) by
tests/worker_runtime/test_events_kill.py, which kills it with SIGKILL at random moments. Before
each publish it prints the event id it is about to publish (flushed), so the test knows every
id that may have reached Redis; the event id is fixed before the call, as a re-sending
publisher would keep it.
"""

from __future__ import annotations

import asyncio
import sys

from worker_runtime import App


async def publish_forever(target: str, topic: str, prefix: str) -> None:
    url = f"redis://127.0.0.1:{target}" if target.isdigit() else target
    app = App(queue="publisher", redis_url=url)
    n = 0
    while True:
        n += 1
        event_id = f"{prefix}-{n}"
        print(event_id, flush=True)
        await app.publish(topic, {"n": n}, event_id=event_id)


if __name__ == "__main__":
    asyncio.run(publish_forever(sys.argv[1], sys.argv[2], sys.argv[3]))
