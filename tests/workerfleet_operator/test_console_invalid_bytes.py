"""A dead letter whose job id is not UTF-8 leaves the console's pages working, and can be purged.

Producers in other languages (or a hand-written HSET) can store such ids; the runtime keeps them
as lone surrogates so that the id still addresses its entry (tests/worker_runtime/
test_invalid_bytes.py). In-process console (httpx's ASGI transport) over a real Redis.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import redis
from workerfleet_operator.console import app, security, sources

from tests.support import raw_dead_letters
from worker_runtime.brokers.redis import keys

TOKEN = "bytes-token"


async def test_the_dlq_and_job_pages_show_a_non_utf8_id_escaped_and_a_purge_deletes_it(
    redis_server: Any, queue_name: str
) -> None:
    # Given a DLQ with a dead letter whose id is not UTF-8, and one whose id is
    raw = redis.Redis(port=redis_server.port)
    raw_dead_letters.store_raw_dead_letter(raw, queue_name, b"bad\xff\xfeid")
    raw_dead_letters.store_raw_dead_letter(raw, queue_name, b"good-id")
    auth = security.AuthSettings(token=TOKEN)
    source = sources.URLSource(redis_server.url, [queue_name])
    console = app.build_app(app.ConsoleSettings(auth=auth, allow_writes=True), source)
    transport = httpx.ASGITransport(app=console)
    try:
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://console",
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as web:
            # When the DLQ page is read and its link to the entry followed
            dlq = await web.get("/dlq", params={"pool": queue_name})
            assert dlq.status_code == 200, dlq.text[:300]
            links = re.findall(r'href="(/job\?[^"]*)"', dlq.text)
            bad_link = next(link for link in links if "%FF%FE" in link)
            job = await web.get(bad_link.replace("&amp;", "&"))
            # Then both list it, its id escaped as the command line shows it
            assert "bad\\xff\\xfeid" in dlq.text and "good-id" in dlq.text
            assert job.status_code == 200, job.text[:300]
            assert "bad\\xff\\xfeid" in job.text
            # When its purge is confirmed through the confirmation page's own form
            confirm = await web.get(bad_link.replace("/job?", "/dlq/purge?").replace("&amp;", "&"))
            assert confirm.status_code == 200, confirm.text[:300]
            form = dict.fromkeys(("csrf", "pool"), "")
            for name in form:
                found = re.search(rf'name="{name}" value="([^"]*)"', confirm.text)
                assert found is not None, name
                form[name] = found.group(1)
            ids = re.findall(r'name="id" value="([^"]*)"', confirm.text)
            done = await web.post("/dlq/purge", data={**form, "id": ids})
        # Then exactly that dead letter is gone, and the other is still there
        assert done.status_code == 200 and "Purged 1 of 1" in done.text, done.text[:300]
        assert raw.zrange(keys.build_keys(queue_name).dlq, 0, -1) == [b"good-id"]
    finally:
        await source.close()
        raw.close()
