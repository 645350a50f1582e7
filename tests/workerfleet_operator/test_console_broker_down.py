"""The console over a broker that does not answer: each page says so, as a page of the console.

In-process (httpx's ASGI transport) over a Redis URL whose port nobody listens on: every read
and write of the queue fails to connect, as when Redis is down during an incident.
"""

from __future__ import annotations

import httpx
from workerfleet_operator.console import app, security, sources

from tests.support.redis_servers import free_port

TOKEN = "down-token"


async def test_every_queue_page_and_a_write_answer_503_saying_the_broker_does_not_answer() -> None:
    # Given a console with writes on over a Redis that is down
    auth = security.AuthSettings(token=TOKEN)
    source = sources.URLSource(f"redis://:pw-secret@127.0.0.1:{free_port()}/0", ["jobs"])
    console = app.build_app(app.ConsoleSettings(auth=auth, allow_writes=True), source)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    csrf = security.build_csrf_token(auth, "bearer")
    transport = httpx.ASGITransport(app=console, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://console", headers=headers
        ) as web:
            # When the queue, DLQ, dead letter and find pages are read, and a purge and a
            # cancel are confirmed
            pages = [
                await web.get("/queue", params={"pool": "jobs"}),
                await web.get("/dlq", params={"pool": "jobs"}),
                await web.get("/job", params={"pool": "jobs", "id": "j1"}),
            ]
            purge = await web.post("/dlq/purge", data={"pool": "jobs", "id": "j1", "csrf": csrf})
            cancel = await web.post("/job/cancel", data={"pool": "jobs", "id": "j2", "csrf": csrf})
            pages.append(await web.get("/find", params={"pool": "jobs", "id": "j2"}))
            pools = await web.get("/")
        # Then each is a console page (503, its security headers) saying the broker does not
        # answer, never with the URL's password
        for page in [*pages, purge, cancel]:
            assert page.status_code == 503, (page.url, page.text[:200])
            assert "does not answer" in page.text, page.text
            assert page.headers["content-security-policy"].startswith("default-src 'none'")
            assert "pw-secret" not in page.text
        # And each write says its outcome may be unknown and where to look once the broker
        # answers, and the pools page still shows the pool
        assert "may not have been done" in purge.text and "dead letters page" in purge.text
        assert "may not have been done" in cancel.text and "the page of each job" in cancel.text
        assert pools.status_code == 200 and "queue unreachable" in pools.text
    finally:
        await source.close()
