"""The web console in a real browser (Debian chromium + chromium-driver, Selenium) against a
real password-protected redis-server and a real queue filled through the runtime's engine.

Chromium missing FAILS these tests (never a skip): scripts/ensure-deps.sh installs it.
Screenshots of the main pages go to $WORKERFLEET_SCREENSHOTS when set (``make screenshots``
refreshes docs/images/, which the README shows), else to the test's temporary folder.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from tests.support.redis_servers import RedisServer
from tests.workerfleet_operator import console_support as cs


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("WORKERFLEET_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def seeded_queue(
    redis_factory: Callable[..., RedisServer], queue_name: str
) -> tuple[str, str, cs.Seeded]:
    server = redis_factory()
    # the shared fixture pings without a password at start: the password is set afterwards
    admin = redis.Redis(port=server.port, socket_timeout=2)
    admin.config_set("requirepass", cs.REDIS_PASSWORD)
    admin.close()
    url = f"redis://:{cs.REDIS_PASSWORD}@127.0.0.1:{server.port}/0"
    return url, queue_name, asyncio.run(cs.seed_queue(url, queue_name))


@pytest.fixture
def console(seeded_queue: tuple[str, str, cs.Seeded]) -> Iterator[cs.ConsoleProcess]:
    url, name, _ = seeded_queue
    proc = cs.ConsoleProcess(url, [name], allow_writes=True)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    with tempfile.TemporaryDirectory(prefix="wf-chromium-") as profile:
        b = cs.build_browser(profile)
        try:
            yield b
        finally:
            b.quit()


def sign_in(browser: Any, console: cs.ConsoleProcess) -> None:
    from selenium.webdriver.common.by import By

    browser.get(console.base + "/")
    assert "Sign in" in browser.title  # not signed in yet: the login page, not the pools
    browser.find_element(By.ID, "token").send_keys(cs.TOKEN)
    browser.find_element(By.ID, "sign-in").click()
    wait_for_title(browser, "Pools")


def submit_and_wait_for_next_page(browser: Any, button: Any) -> None:
    """Click ``button`` (it submits a form) and wait until the next page replaced this one.

    The current page is marked on ``window`` before the click; the next page is there when a
    script finds no mark and a finished load. Selenium's ``staleness_of`` asks an old element
    whether it is enabled instead, and chromedriver answered that in CI with an inspector error
    ("Node with given id does not belong to the document") rather than the stale-element error
    the wait expects; a script reading ``window`` has no element to lose.
    """
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    browser.execute_script("window.wfPageBeforeSubmit = true")
    button.click()

    def next_page_loaded(b: Any) -> bool:
        try:
            return bool(
                b.execute_script(
                    "return !window.wfPageBeforeSubmit && document.readyState === 'complete'"
                )
            )
        except WebDriverException:  # between two documents: no context to run a script in
            return False

    WebDriverWait(browser, 15).until(next_page_loaded, "the submitted page never loaded")


def wait_for_title(browser: Any, text: str) -> None:
    """A click that submits a form may return before the next page loaded: wait for it."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 15).until(
        lambda b: text in b.title,
        f"no page titled {text!r}; at {browser.current_url}: " + browser.page_source[:800],
    )


def test_pages_render_filters_work_and_a_replay_really_reenqueues(
    console: cs.ConsoleProcess,
    browser: Any,
    seeded_queue: tuple[str, str, cs.Seeded],
    images: Path,
) -> None:
    from selenium.webdriver.common.by import By

    url, name, seeded = seeded_queue
    # Given a signed-in browser
    sign_in(browser, console)
    # Then the pools page shows the queue with its live numbers and never the Redis password
    row = browser.find_element(By.CSS_SELECTOR, f"tr[data-pool='{name}']")
    assert row.find_element(By.CSS_SELECTOR, "td.inflight").text == "1"
    assert row.find_element(By.CSS_SELECTOR, "td.dlq").text == "4"
    assert cs.REDIS_PASSWORD not in browser.page_source
    browser.save_screenshot(str(images / "console-pools.png"))

    # When the queue page is opened: the running job with its worker, the delayed job
    row.find_element(By.LINK_TEXT, name).click()
    wait_for_title(browser, name)
    running = browser.find_element(By.ID, "running").text
    assert seeded.running in running and "w-busy" in running and "resize" in running
    assert browser.find_element(By.ID, "delayed").text == "1"
    browser.save_screenshot(str(images / "console-queue.png"))

    # When the DLQ is filtered by task, then by error type, then by reason and time
    browser.find_element(By.ID, "to-dlq").click()
    wait_for_title(browser, "Dead letters")
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr.dead-letter")) == 4

    def filter_by(**fields: str) -> set[str]:
        for name_, value in fields.items():
            box = browser.find_element(By.ID, f"f-{name_}")
            box.clear()
            box.send_keys(value)
        submit_and_wait_for_next_page(browser, browser.find_element(By.ID, "apply-filters"))
        # Read in one script: row elements fetched one by one could belong to a document
        # replaced meanwhile.
        jobs = browser.execute_script(
            "return Array.from(document.querySelectorAll('tr.dead-letter'), r => r.dataset.job)"
        )
        return set(jobs)

    d = seeded.dead
    assert filter_by(task="charge_card") == {d["charge-a"], d["charge-b"]}
    assert filter_by(task="", error="ValueError") == {d["charge-b"], d["xss"]}
    assert filter_by(error="", reason="max_attempts", since="1h") == {d["charge-a"], d["mail"]}
    assert filter_by(reason="", since="", until="2000-01-01T00:00:00") == set()
    assert "0" in browser.find_element(By.ID, "dlq-count").text
    filter_by(until="")
    browser.save_screenshot(str(images / "console-dlq.png"))

    # When the job with markup in its payload and error is opened: shown as text, not run
    browser.find_element(By.LINK_TEXT, d["xss"]).click()
    wait_for_title(browser, d["xss"])
    assert "<script>alert(1)</script>" in browser.find_element(By.ID, "payload").text
    assert browser.find_elements(By.CSS_SELECTOR, "main script, main b, main img") == []
    assert "<img src=x onerror=alert(2)>" in browser.find_element(By.CSS_SELECTOR, ".failure").text
    browser.back()
    wait_for_title(browser, "Dead letters")
    browser.find_element(By.LINK_TEXT, d["charge-a"]).click()
    wait_for_title(browser, d["charge-a"])
    assert '"card": "4242"' in browser.find_element(By.ID, "payload").text
    assert "TimeoutError" in browser.find_element(By.CSS_SELECTOR, ".failure").text
    browser.save_screenshot(str(images / "console-job.png"))

    # When the charge_card dead letters are replayed through the confirmation page
    browser.get(console.base + f"/dlq?pool={name}&task=charge_card")
    browser.find_element(By.ID, "replay-matching").click()
    wait_for_title(browser, "Confirm")
    assert "Replay 2 dead letter(s)" in browser.find_element(By.TAG_NAME, "h1").text
    browser.save_screenshot(str(images / "console-confirm.png"))
    browser.find_element(By.ID, "confirm").click()
    wait_for_title(browser, "done")
    assert browser.find_element(By.ID, "result").text == "Replayed 2 of 2 dead letter(s)"

    # Then the queue really holds them again: a worker fetches exactly those two
    ready = asyncio.run(cs.fetch_ready_ids(url, name, want=10))
    assert ready == {d["charge-a"], d["charge-b"]}
    # and the DLQ keeps the other two
    browser.get(console.base + f"/dlq?pool={name}")
    left = {
        r.get_attribute("data-job")
        for r in browser.find_elements(By.CSS_SELECTOR, "tr.dead-letter")
    }
    assert left == {d["mail"], d["xss"]}


def test_a_purge_needs_confirmation_and_deletes_only_what_was_listed(
    console: cs.ConsoleProcess, browser: Any, seeded_queue: tuple[str, str, cs.Seeded]
) -> None:
    from selenium.webdriver.common.by import By

    _url, name, seeded = seeded_queue
    sign_in(browser, console)
    browser.get(console.base + f"/dlq?pool={name}&error=ConnectionError")
    browser.find_element(By.ID, "purge-matching").click()
    wait_for_title(browser, "Confirm")
    # the confirmation page lists the one job; nothing is deleted until it is confirmed
    assert browser.find_element(By.ID, "chosen").text == seeded.dead["mail"]
    browser.get(console.base + f"/dlq?pool={name}")
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr.dead-letter")) == 4
    browser.back()
    wait_for_title(browser, "Confirm")
    browser.find_element(By.ID, "confirm").click()
    wait_for_title(browser, "done")
    assert browser.find_element(By.ID, "result").text == "Purged 1 of 1 dead letter(s)"
    browser.get(console.base + f"/dlq?pool={name}")
    left = {
        r.get_attribute("data-job")
        for r in browser.find_elements(By.CSS_SELECTOR, "tr.dead-letter")
    }
    assert left == set(seeded.dead.values()) - {seeded.dead["mail"]}


def test_a_waiting_job_found_by_its_id_is_cancelled_after_confirming_and_leaves_the_queue(
    console: cs.ConsoleProcess, browser: Any, seeded_queue: tuple[str, str, cs.Seeded]
) -> None:
    from selenium.webdriver.common.by import By

    url, name, _seeded = seeded_queue
    # Given a job waiting on the queue and a signed-in browser on the queue's page
    waiting = asyncio.run(cs.enqueue_waiting_job(url, name, "thumbnail"))
    sign_in(browser, console)
    browser.get(console.base + f"/queue?pool={name}")
    wait_for_title(browser, name)
    # When its id is typed into the find form
    browser.find_element(By.ID, "find-id").send_keys(waiting)
    submit_and_wait_for_next_page(browser, browser.find_element(By.ID, "find"))
    # Then its page says it is waiting, with its task
    assert browser.find_element(By.ID, "state").text == "waiting"
    assert browser.find_element(By.ID, "task").text == "thumbnail"
    # When Cancel is chosen: a confirmation page, and the job still waits
    browser.find_element(By.ID, "cancel-one").click()
    wait_for_title(browser, "Confirm")
    assert browser.find_element(By.ID, "chosen").text == waiting
    assert asyncio.run(cs.fetch_job_state(url, name, waiting)) == "waiting"
    # And it is confirmed
    submit_and_wait_for_next_page(browser, browser.find_element(By.ID, "confirm"))
    # Then the page says it was cancelled
    assert browser.find_element(By.ID, "result").text == "Cancelled 1 of 1 job(s)"
    outcome = browser.find_element(By.CSS_SELECTOR, f"tr[data-job='{waiting}'] td.outcome")
    assert outcome.text == "cancelled"
    # And the broker no longer holds it: it reads unknown and no worker gets it
    assert asyncio.run(cs.fetch_job_state(url, name, waiting)) == "unknown"
    assert asyncio.run(cs.fetch_ready_ids(url, name, want=10)) == set()


def test_a_write_without_the_csrf_token_is_refused_and_changes_nothing(
    console: cs.ConsoleProcess, browser: Any, seeded_queue: tuple[str, str, cs.Seeded]
) -> None:
    from selenium.webdriver.common.by import By

    url, name, seeded = seeded_queue
    sign_in(browser, console)
    browser.get(console.base + f"/dlq/replay?pool={name}&task=send_email")
    # When the browser submits the confirmation form with its CSRF token removed
    browser.execute_script("document.querySelector('#confirm-form input[name=csrf]').remove()")
    browser.find_element(By.ID, "confirm").click()
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 15).until(lambda b: "refused" in b.page_source)
    # Then the console refuses, and the job stays dead-lettered (nothing became ready)
    assert "refused: missing or wrong CSRF token" in browser.page_source
    assert asyncio.run(cs.fetch_ready_ids(url, name, want=10)) == set()
    # and a signed-in session with a forged token is refused the same way
    cookie = browser.get_cookie("wf_console_session")["value"]
    answer = requests.post(
        console.base + "/dlq/replay",
        data={"pool": name, "id": seeded.dead["mail"], "csrf": "0" * 64},
        cookies={"wf_console_session": cookie},
        timeout=10,
    )
    assert answer.status_code == 403
    assert asyncio.run(cs.fetch_ready_ids(url, name, want=10)) == set()


def test_an_unauthenticated_request_is_refused(
    console: cs.ConsoleProcess, browser: Any, seeded_queue: tuple[str, str, cs.Seeded]
) -> None:
    url, name, seeded = seeded_queue
    # a browser without a session sees only the sign-in page
    browser.get(console.base + f"/dlq?pool={name}")
    assert "Sign in" in browser.title and seeded.dead["mail"] not in browser.page_source
    # plain HTTP: no credentials, a wrong bearer token, a wrong cookie: 401, no data
    for headers, cookies in (
        ({}, {}),
        ({"Authorization": "Bearer wrong"}, {}),
        ({}, {"wf_console_session": "1700000000." + "0" * 64}),
    ):
        page = requests.get(
            console.base + f"/dlq?pool={name}", headers=headers, cookies=cookies, timeout=10
        )
        assert page.status_code == 401 and seeded.dead["mail"] not in page.text
    posted = requests.post(
        console.base + "/dlq/replay", data={"pool": name, "id": seeded.dead["mail"]}, timeout=10
    )
    assert posted.status_code == 401
    assert asyncio.run(cs.fetch_ready_ids(url, name, want=10)) == set()
    # the right bearer token reads (for scripts and probes)
    ok = requests.get(
        console.base + f"/dlq?pool={name}",
        headers={"Authorization": f"Bearer {cs.TOKEN}"},
        timeout=10,
    )
    assert ok.status_code == 200 and seeded.dead["mail"] in ok.text
    assert cs.REDIS_PASSWORD not in ok.text


def test_a_read_only_console_offers_no_writes_and_refuses_them(
    seeded_queue: tuple[str, str, cs.Seeded],
) -> None:
    url, name, seeded = seeded_queue
    proc = cs.ConsoleProcess(url, [name], allow_writes=False)
    try:
        auth = {"Authorization": f"Bearer {cs.TOKEN}"}
        page = requests.get(
            proc.base + f"/job?pool={name}&id={seeded.dead['mail']}", headers=auth, timeout=10
        )
        assert page.status_code == 200 and "replay-one" not in page.text
        confirm = requests.get(proc.base + f"/dlq/replay?pool={name}", headers=auth, timeout=10)
        csrf = confirm.text.split('name="csrf" value="')[1].split('"')[0]
        answer = requests.post(
            proc.base + "/dlq/replay",
            data={"pool": name, "id": seeded.dead["mail"], "csrf": csrf},
            headers=auth,
            timeout=10,
        )
        assert answer.status_code == 403 and "read-only" in answer.text
        assert asyncio.run(cs.fetch_ready_ids(url, name, want=10)) == set()
    finally:
        proc.stop()


def test_browser_tests_fail_when_chromium_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    # the rule: a missing real dependency fails, never skips
    monkeypatch.setenv("PATH", str(Path(tempfile.gettempdir()) / "no-such-dir"))
    with pytest.raises(RuntimeError, match="chromium and chromium-driver are required"):
        cs.build_browser(tempfile.gettempdir())
