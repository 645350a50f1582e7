"""The runtime's command line, run as real processes: enqueue, queue stats, dlq, worker errors."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from typing import Any

import pytest
import redis
import redis.asyncio

from tests.support import cli as cli_support
from tests.support.cli import run_cli
from tests.worker_runtime import workerproc
from worker_runtime import envelope, producer
from worker_runtime.brokers.redis import keys, queue, stats


def _dead_letter_one(
    url: str,
    queue_name: str,
    task: str,
    message: str = "bad things",
    trace: str = "here",
    reason: str = "max_attempts",
) -> str:
    """Put one job into the DLQ through the engine (enqueue, fetch, dead_letter)."""

    async def go() -> str:
        client = redis.asyncio.Redis.from_url(url, decode_responses=True)
        try:
            q = queue.QueueClient(client, queue_name)
            env = envelope.build_envelope(task, {"n": 1}, correlation_id="corr-cli")
            await q.enqueue(queue.EnqueueRequest(env))
            (job,) = await q.fetch("cli-test", 1)
            failure = queue.Failure("ValueError", message, f"Traceback: {trace}", "cli-test")
            assert await q.dead_letter(job, reason, failure=failure)
            return job.id
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_enqueue_then_queue_stats_show_the_job_in_the_backlog(
    redis_server: Any, queue_name: str
) -> None:
    # When a job is enqueued from the command line (payload on stdin)
    out = run_cli(
        "enqueue",
        "order",
        "-",
        "--priority",
        "high",
        "--json",
        redis_url=redis_server.url,
        queue_name=queue_name,
        stdin='{"order_id": 1, "amount": 2.5}',
    )
    # Then it reports the job id, and stats (JSON and table) show the backlog
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["created"] is True and result["queue"] == queue_name
    stats_out = run_cli(
        "queue", "stats", "--json", redis_url=redis_server.url, queue_name=queue_name
    )
    assert stats_out.returncode == 0, stats_out.stderr
    data = json.loads(stats_out.stdout)
    assert data["backlog"] == 1 and data["enqueued_total"] == 1 and data["workers"] == []
    table = run_cli("queue", "stats", redis_url=redis_server.url, queue_name=queue_name)
    assert table.returncode == 0, table.stderr
    assert "backlog" in table.stdout and queue_name in table.stdout
    # And the same idempotency key twice enqueues once
    first = run_cli(
        "enqueue", "order", "{}", "--idempotency-key", "k1", "--json",
        redis_url=redis_server.url, queue_name=queue_name,
    )  # fmt: skip
    second = run_cli(
        "enqueue", "order", "{}", "--idempotency-key", "k1",
        redis_url=redis_server.url, queue_name=queue_name,
    )  # fmt: skip
    assert json.loads(first.stdout)["created"] is True
    assert second.returncode == 0 and "duplicate" in second.stdout


def test_dlq_ls_show_replay_and_purge(redis_server: Any, queue_name: str) -> None:
    # Given two dead letters
    url = redis_server.url
    a = _dead_letter_one(url, queue_name, "send-email")
    b = _dead_letter_one(url, queue_name, "resize")
    # When they are listed and shown
    ls = run_cli("dlq", "ls", "--json", redis_url=url, queue_name=queue_name)
    assert ls.returncode == 0, ls.stderr
    listed = json.loads(ls.stdout)
    assert {d["job_id"] for d in listed} == {a, b}
    table = run_cli("dlq", "ls", redis_url=url, queue_name=queue_name)
    assert a in table.stdout and "max_attempts" in table.stdout and "bad things" in table.stdout
    show = run_cli("dlq", "show", a, "--json", redis_url=url, queue_name=queue_name)
    shown = json.loads(show.stdout)
    assert shown["task"] == "send-email" and shown["envelope"]["payload"] == {"n": 1}
    assert shown["correlation_id"] == "corr-cli"
    assert shown["history"][0]["message"] == "bad things"
    text = run_cli("dlq", "show", a, redis_url=url, queue_name=queue_name)
    assert "failure 1" in text.stdout and "Traceback: here" in text.stdout
    # (each failure says when, on which attempt and delivery, and on which worker)
    assert re.search(
        r"failure 1  20\d\d-\d\d-\d\dT[\d:]{8}Z  attempt 1  delivery 1  worker cli-test",
        text.stdout,
    )
    assert "  ValueError: bad things" in text.stdout and "dead-lettered 20" in text.stdout
    assert "why: it failed on every attempt it was allowed" in text.stdout
    missing = run_cli("dlq", "show", "nope", redis_url=url, queue_name=queue_name)
    assert missing.returncode == 1 and "no dead letter" in missing.stderr
    # When one is replayed
    replay = run_cli("dlq", "replay", a, "--json", redis_url=url, queue_name=queue_name)
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout) == {"replayed": 1, "job_ids": [a]}
    stats = json.loads(
        run_cli("queue", "stats", "--json", redis_url=url, queue_name=queue_name).stdout
    )
    assert stats["backlog"] == 1 and stats["dead_letter"] == 1
    # When purging everything without confirmation, then with it
    refused = run_cli("dlq", "purge", "--all", redis_url=url, queue_name=queue_name)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    purge = run_cli(
        "dlq", "purge", "--all", "--yes", "--json", redis_url=url, queue_name=queue_name
    )
    assert json.loads(purge.stdout) == {"purged": 1}
    empty = run_cli("dlq", "ls", "--json", redis_url=url, queue_name=queue_name)
    assert json.loads(empty.stdout) == []


def _move_dead_letter_back_in_time(url: str, queue_name: str, job_id: str, seconds: float) -> None:
    """Make a dead letter ``seconds`` older: its DLQ score and the times in its record.

    The engine stamps dead letters with Redis' own clock (TIME inside its script), which no
    fake clock reaches; this is the record a dead letter of that age has."""
    client = redis.Redis.from_url(url)
    try:
        k = keys.build_keys(queue_name)
        record = json.loads(client.hget(k.dlq_data, job_id))  # type: ignore[arg-type]
        record["dead_lettered_at"] -= seconds
        for failure in record["history"]:
            failure["at"] -= seconds
        client.hset(k.dlq_data, job_id, json.dumps(record))
        score = client.zscore(k.dlq, job_id)
        assert score is not None
        client.zadd(k.dlq, {job_id: score - seconds * 1000}, xx=True)
    finally:
        client.close()


def test_a_filtered_purge_with_an_age_deletes_only_the_matching_dead_letters_older_than_it(
    redis_server: Any, queue_name: str
) -> None:
    # Given dead letters of two reasons, of each two from two days ago and one from now
    # (aged after the last insert: an insert drops entries past the DLQ's retention)
    url = redis_server.url
    ids = {
        (reason, age): [
            _dead_letter_one(url, queue_name, "send-email", reason=reason)
            for _ in range(2 if age == "old" else 1)
        ]
        for reason in ("unknown_task", "max_attempts")
        for age in ("old", "new")
    }
    for reason in ("unknown_task", "max_attempts"):
        for job_id in ids[(reason, "old")]:
            _move_dead_letter_back_in_time(url, queue_name, job_id, 2 * 86400)
    before = json.loads(run_cli("dlq", "ls", "--json", redis_url=url, queue_name=queue_name).stdout)
    assert len(before) == 6
    # When the unknown_task ones older than a day are purged, first without --yes
    argv = ("dlq", "purge", "--reason", "unknown_task", "--older-than", "1d")
    refused = run_cli(*argv, redis_url=url, queue_name=queue_name)
    done = run_cli(*argv, "--yes", "--json", redis_url=url, queue_name=queue_name)
    # Then the confirmation counted the two old ones, and exactly those two were deleted
    assert refused.returncode == 2, refused.stderr
    assert "this deletes 2 matching dead letter(s)" in refused.stderr
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"purged": 2}
    # And every other dead letter is still listed as before: same order, same full record
    # (reason, times, failure history, envelope)
    after = json.loads(run_cli("dlq", "ls", "--json", redis_url=url, queue_name=queue_name).stdout)
    gone = set(ids[("unknown_task", "old")])
    assert after == [d for d in before if d["job_id"] not in gone]


def test_dlq_ls_shows_whole_job_ids_one_line_each_on_a_narrow_terminal_and_through_a_pipe(
    redis_server: Any, queue_name: str
) -> None:
    # Given two dead letters whose last errors are long and span lines, as pydantic's do
    url = redis_server.url
    error = "1 validation error for Email\nto\n  " + "not a valid email address; " * 10
    ids = [_dead_letter_one(url, queue_name, "send-welcome-email", message=error) for _ in range(2)]
    # When they are listed on an 80-column terminal, and through a pipe
    narrow = run_cli(
        "dlq",
        "ls",
        redis_url=url,
        queue_name=queue_name,
        env_extra={"TTY_COMPATIBLE": "1", "NO_COLOR": "1", "COLUMNS": "80"},
    )
    piped = run_cli("dlq", "ls", redis_url=url, queue_name=queue_name)
    for listing in (narrow, piped):
        assert listing.returncode == 0, listing.stderr
        rows = [line for line in listing.stdout.splitlines() if line.startswith("│")]
        # Then each dead letter is one row holding its whole id (what `dlq show` takes), its
        # reason and the start of its error on that same line
        assert len(rows) == 2, listing.stdout
        for job_id in ids:
            (row,) = (r for r in rows if job_id in r)
            assert "max_attempts" in row and "ValueError: 1 valid" in row
            assert "…" in row  # the error is cut, not folded onto more lines
    # And a terminal cuts the error to what is left of it, a pipe keeps up to 120 characters
    assert "not a valid email address; not a valid" not in narrow.stdout
    assert "not a valid email address; not a valid" in piped.stdout


def test_dlq_ls_fills_a_wide_terminal_to_its_width_and_piped_ignores_the_width(
    redis_server: Any, queue_name: str
) -> None:
    # Given a dead letter whose last error is longer than any terminal line
    url = redis_server.url
    job_id = _dead_letter_one(url, queue_name, "send-welcome-email", message="x" * 600)
    terminal = {"TTY_COMPATIBLE": "1", "NO_COLOR": "1"}
    # When it is listed on a 140-column terminal
    wide = run_cli(
        "dlq", "ls", redis_url=url, queue_name=queue_name, env_extra={**terminal, "COLUMNS": "140"}
    )
    # Then every line fits those 140 columns, the table reaching them: the id is whole and the
    # error is cut with an ellipsis to what the other columns leave
    assert wide.returncode == 0, wide.stderr
    lines = re.sub(r"\x1b\[[0-9;]*m", "", wide.stdout).splitlines()  # bold, italic
    assert max(len(line) for line in lines) == 140, wide.stdout
    (row,) = (line for line in lines if job_id in line)
    assert row.rstrip(" │").endswith("x…")
    # And through a pipe the layout is the same whatever COLUMNS says (the age aside)
    piped = [
        run_cli(
            "dlq", "ls", redis_url=url, queue_name=queue_name, env_extra={"COLUMNS": columns}
        ).stdout
        for columns in ("80", "300")
    ]
    ages = re.compile(r"\d+(\.\d+)?(ms|s|m|h|d) ")
    assert ages.sub("AGE ", piped[0]) == ages.sub("AGE ", piped[1])
    assert "x" * 100 in piped[0] and "x" * 130 not in piped[0]


def test_replay_or_purge_of_a_job_id_with_no_dead_letter_lists_it_and_exits_1(
    redis_server: Any, queue_name: str
) -> None:
    # Given two dead letters
    url = redis_server.url
    a = _dead_letter_one(url, queue_name, "send-email")
    b = _dead_letter_one(url, queue_name, "send-email")
    # When one is replayed by id together with an id that is not (or no longer) a dead letter
    replay = run_cli("dlq", "replay", a, "nope", "--json", redis_url=url, queue_name=queue_name)
    # Then the one is replayed, the other named as not found, and the exit code says so
    assert replay.returncode == 1, replay.stderr
    assert json.loads(replay.stdout) == {"replayed": 1, "job_ids": [a], "not_found": ["nope"]}
    assert (
        replay.stderr
        == f"workerfleet: 1 named job id(s) had no dead letter in {queue_name}: nope\n"
    )
    # And a purge of the other with ids that are not dead letters (the replayed one, a typo)
    # deletes it and lists the others the same way, in its JSON as a list as replay does
    purge_json = run_cli(
        "dlq", "purge", b, a, "nope", "--json", redis_url=url, queue_name=queue_name
    )
    assert purge_json.returncode == 1, purge_json.stderr
    assert json.loads(purge_json.stdout) == {"purged": 1, "not_found": [a, "nope"]}
    missing = f"workerfleet: 2 named job id(s) had no dead letter in {queue_name}: {a}, nope\n"
    assert purge_json.stderr == missing
    # And a purge of ids none of which is a dead letter says so in its table output too
    purge = run_cli("dlq", "purge", a, "nope", redis_url=url, queue_name=queue_name)
    assert purge.returncode == 1 and purge.stderr.endswith(missing), purge.stderr
    assert "purged 0 dead letter(s)" in purge.stdout
    stats = json.loads(
        run_cli("queue", "stats", "--json", redis_url=url, queue_name=queue_name).stdout
    )
    assert (stats["backlog"], stats["dead_letter"]) == (1, 0)


def test_replay_of_a_dead_letter_whose_id_is_live_again_says_so_instead_of_not_found(
    redis_server: Any, queue_name: str
) -> None:
    # Given a dead letter, and a new job with the same id live on the queue (its producer
    # reuses ids, and the dedup window has passed: its entry is removed here)
    url = redis_server.url
    job_id = _dead_letter_one(url, queue_name, "invoice")
    client = redis.Redis.from_url(url)
    try:
        client.zrem(keys.build_keys(queue_name).enqueued, job_id)
        again = producer.SyncProducer(client, queue_name).enqueue("invoice", {}, job_id=job_id)
        assert again.created
    finally:
        client.close()
    # When the dead letter is replayed by its id
    out = run_cli("dlq", "replay", job_id, "--json", redis_url=url, queue_name=queue_name)
    # Then it stays in the DLQ (replayed, the job would run twice) and the command says why,
    # not that there is no such dead letter
    assert out.returncode == 1, out.stderr
    assert json.loads(out.stdout) == {"replayed": 0, "job_ids": [], "held_back": [job_id]}
    assert "stay dead-lettered because a job with the same id is live" in out.stderr
    assert "had no dead letter" not in out.stderr
    listed = run_cli("dlq", "ls", "--json", redis_url=url, queue_name=queue_name)
    assert [d["job_id"] for d in json.loads(listed.stdout)] == [job_id]


def test_a_worker_whose_app_has_no_tasks_refuses_to_start_and_takes_no_job(
    redis_server: Any, queue_name: str, tmp_path: Any
) -> None:
    # Given a job waiting, and an App whose tasks live in a module nobody imported
    url = redis_server.url
    assert (
        run_cli("enqueue", "send-email", "{}", redis_url=url, queue_name=queue_name).returncode == 0
    )
    (tmp_path / "bare_app.py").write_text(
        f"from worker_runtime import App\napp = App(queue={queue_name!r})\n"
    )
    path = os.pathsep.join(
        [str(tmp_path), str(cli_support.REPO), str(cli_support.REPO / "operator")]
    )
    # When a worker is started on that App
    out = run_cli(
        "worker",
        "bare_app:app",
        redis_url=url,
        queue_name=queue_name,
        env_extra={"PYTHONPATH": path, "WORKERFLEET_METRICS_PORT": "0"},
    )
    # Then it refuses to start, saying why, and the job is still waiting (not dead-lettered)
    assert out.returncode == 2 and "bare_app:app has no tasks" in out.stderr, out.stderr
    stats = json.loads(
        run_cli("queue", "stats", "--json", redis_url=url, queue_name=queue_name).stdout
    )
    assert (stats["backlog"], stats["dead_letter"]) == (1, 0)


def test_a_worker_takes_its_broker_url_as_broker_url_like_every_other_command(
    redis_server: Any, queue_name: str, tmp_path: Any
) -> None:
    # Given a job waiting, and an App with its task (the flag was missing from the worker:
    # 'unrecognized arguments: --broker-url', while every other command takes it)
    url = redis_server.url
    assert run_cli("enqueue", "noop", "{}", redis_url=url, queue_name=queue_name).returncode == 0
    (tmp_path / "noop_app.py").write_text(
        "from worker_runtime import App\n"
        f"app = App(queue={queue_name!r})\n"
        "@app.task('noop')\n"
        "async def noop(payload: dict) -> None:\n"
        "    return None\n"
    )
    # When a worker is started with --broker-url (and no URL in its environment)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKERFLEET_")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(tmp_path), str(cli_support.REPO), str(cli_support.REPO / "operator")]
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "worker_runtime", "worker", "noop_app:app",
         "--broker-url", url, "--metrics-port", "0"],
        cwd=cli_support.REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    try:
        # Then it runs the job
        workerproc.wait_until(
            lambda: stats.fetch_queue_stats_sync(client, queue_name).completed_total == 1,
            30,
            "the job completed",
        )
    finally:
        client.close()
        worker.terminate()
        _out, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    # And both names at once is a usage error
    both = run_cli("worker", "noop_app:app", "--broker-url", url, "--redis-url", url)
    assert both.returncode == 2 and "not both" in both.stderr


def test_dlq_ls_and_show_print_rich_markup_in_task_names_and_errors_as_plain_text(
    redis_server: Any, queue_name: str
) -> None:
    # Given a dead letter whose task name and error text look like rich markup
    url = redis_server.url
    markup = "[bold]x[/] [/red] y"
    job_id = _dead_letter_one(url, queue_name, "[/red]send", message=markup, trace=markup)
    # When it is listed and shown as tables/text
    ls = run_cli("dlq", "ls", redis_url=url, queue_name=queue_name)
    show = run_cli("dlq", "show", job_id, redis_url=url, queue_name=queue_name)
    # Then neither command crashes, and the text appears as it was written
    assert ls.returncode == 0, ls.stderr
    assert show.returncode == 0, show.stderr
    assert "[/red]send" in ls.stdout and "[bold]x[/] [/red] y" in ls.stdout
    assert "task=[/red]send" in show.stdout
    assert "ValueError: [bold]x[/] [/red] y" in show.stdout
    assert "Traceback: [bold]x[/] [/red] y" in show.stdout


NOWHERE = ("--redis-url", "redis://127.0.0.1:1/0", "-q", "q")
"""Connection flags of a command that must fail before it connects."""
DEMO_PNG = str(cli_support.REPO / "docs" / "images" / "demo-chart.png")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("queue", "stats"), "no Redis URL"),
        (("worker", "tests.worker_runtime.tasks_fixture:app"), "WORKERFLEET_REDIS_URL"),
        (("worker",), "no app"),
        (("enqueue", "t", "{not json", "--redis-url", "redis://127.0.0.1:1/0", "-q", "q"), "JSON"),
        (("dlq", "replay", "--redis-url", "redis://127.0.0.1:1/0", "-q", "q"), "--all"),
        # a payload file that is not there was reported as "cannot reach Redis" (exit 1)
        (
            ("enqueue", "t", "@/nonexistent/p.json", *NOWHERE),
            "cannot read /nonexistent/p.json: No such file or directory",
        ),
        # one that is not UTF-8 was a UnicodeDecodeError traceback
        (("enqueue", "--file", DEMO_PNG, *NOWHERE), "demo-chart.png is not UTF-8 text"),
        # a topic breaking the event naming rule was refused as a bad queue name
        (("topic", "lag", "Shop Orders", *NOWHERE[:2]), "must be domain.entity.past_tense_verb"),
        (("trace", "", *NOWHERE[:2]), "name the correlation id"),  # was "no trace for  ", exit 1
    ],
)
def test_user_errors_exit_2_with_one_line_saying_what_to_do(
    args: tuple[str, ...], message: str
) -> None:
    out = run_cli(*args)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_a_worker_pointed_at_something_that_is_not_an_app_refuses_to_start(
    redis_server: Any, queue_name: str
) -> None:
    out = run_cli("worker", "tests.worker_runtime.workerproc:REPO", redis_url=redis_server.url)
    assert out.returncode == 2 and "not a worker_runtime.App" in out.stderr
    out = run_cli("worker", "no_colon_here", redis_url=redis_server.url)
    assert out.returncode == 2 and "MODULE:ATTR" in out.stderr


def test_an_unusable_redis_url_is_one_line_naming_the_scheme_to_use() -> None:
    out = run_cli(
        "queue", "stats", "-q", "q", redis_url="sentinel://user:s3cret@127.0.0.1:26379/mymaster"
    )
    assert out.returncode == 2, out.stderr
    assert "redis+sentinel://" in out.stderr and "Traceback" not in out.stderr
    assert "s3cret" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_an_unreachable_redis_is_reported_not_a_traceback() -> None:
    out = run_cli("queue", "stats", "--redis-url", "redis://127.0.0.1:1/0", "-q", "q")
    assert out.returncode == 1
    assert "cannot reach Redis" in out.stderr and "Traceback" not in out.stderr


def test_a_redis_refusing_the_password_is_one_line_saying_so(redis_factory: Any) -> None:
    # Given a Redis that wants a password, and a URL with a wrong one
    server = redis_factory()
    admin = redis.Redis(port=server.port)
    admin.config_set("requirepass", "s3cret")
    admin.close()
    url = f"redis://:not-the-password@127.0.0.1:{server.port}/0"
    # When the queue's statistics are asked for
    out = run_cli("queue", "stats", "-q", "q", redis_url=url)
    # Then it exits 1 with one line: Redis refused the credentials (not "no reply")
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip().splitlines() == [
        "workerfleet: redis refused stats: it did not accept the user or password of the URL "
        "(AuthenticationError: invalid username-password pair or user is disabled.)"
    ]


def test_an_enqueue_file_cut_short_by_the_broker_says_which_lines_are_in_and_resumes(
    redis_factory: Any, queue_name: str, tmp_path: Any
) -> None:
    # Given 3,000 jobs of ~2 KB each in a file, and a Redis that fills up part-way through
    # (noeviction: it refuses writes once over maxmemory)
    server = redis_factory(maxmemory_policy="noeviction")
    admin = redis.Redis(port=server.port)
    used = int(admin.info("memory")["used_memory"])
    admin.config_set("maxmemory", used + 2_000_000)
    jobs = tmp_path / "jobs.ndjson"
    lines = [json.dumps({"task": "t", "payload": {"n": n, "pad": "x" * 2000}}) for n in range(3000)]
    jobs.write_text("\n".join(lines) + "\n")
    # When the file is enqueued
    out = run_cli("enqueue", "--file", str(jobs), "--json", redis_url=server.url,
                  queue_name=queue_name)  # fmt: skip
    # Then it exits 1 and says how many went in, up to which line, and how to send the rest
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    first_unsent = report["unconfirmed_from_line"]
    assert 1 < first_unsent <= 3000 and report["enqueued"] == first_unsent - 1
    assert f"tail -n +{first_unsent} {jobs} | workerfleet enqueue --file -" in out.stderr
    assert "maxmemory" in out.stderr
    # And exactly those jobs are in the queue
    sync = redis.Redis(port=server.port, decode_responses=True)
    assert stats.fetch_queue_stats_sync(sync, queue_name).backlog == first_unsent - 1
    # When Redis has room again and the rest is sent as the message says
    admin.config_set("maxmemory", 0)
    rest = "\n".join(lines[first_unsent - 1 :]) + "\n"
    out = run_cli("enqueue", "--file", "-", "--json", redis_url=server.url,
                  queue_name=queue_name, stdin=rest)  # fmt: skip
    # Then every job of the file is in the queue once
    assert out.returncode == 0, out.stderr
    assert stats.fetch_queue_stats_sync(sync, queue_name).backlog == 3000
    assert report["enqueued"] + json.loads(out.stdout)["enqueued"] == 3000
    admin.close()
    sync.close()


def test_the_reads_of_a_mistyped_queue_say_no_such_queue_held_a_job_and_name_the_real_one(
    redis_server: Any, queue_name: str
) -> None:
    # Given a queue with a dead letter, and its name with one letter missing
    _dead_letter_one(redis_server.url, queue_name, "charge")
    typo = queue_name[:-1]
    # When its stats and dead letters are read under the mistyped name
    for command in (("queue", "stats"), ("queue", "stats", "--json"), ("dlq", "ls")):
        out = run_cli(*command, redis_url=redis_server.url, queue_name=typo)
        # Then each answers as for an empty queue, and says so on stderr, naming the real one
        assert out.returncode == 0, out.stderr
        assert f"no queue named '{typo}' has held a job" in out.stderr, command
        assert f"did you mean '{queue_name}'?" in out.stderr, command
    # And the reads of the real queue carry no such note
    for command in (("queue", "stats"), ("dlq", "ls")):
        out = run_cli(*command, redis_url=redis_server.url, queue_name=queue_name)
        assert out.returncode == 0 and "note:" not in out.stderr, out.stderr


def test_dlq_purge_and_replay_of_named_ids_on_a_mistyped_queue_name_the_real_one(
    redis_server: Any, queue_name: str
) -> None:
    # Given a queue with a dead letter, and its name with one letter missing
    dead = _dead_letter_one(redis_server.url, queue_name, "charge")
    typo = queue_name[:-1]
    # When the dead letter is purged, then replayed, by id under the mistyped name
    for command in (("dlq", "purge", dead), ("dlq", "replay", dead)):
        out = run_cli(*command, redis_url=redis_server.url, queue_name=typo)
        # Then each says the id had no dead letter there (exit 1), and notes that no queue of
        # that name held a job, naming the real one, as dlq show and job cancel do
        assert out.returncode == 1, out.stderr
        assert f"had no dead letter in {typo}: {dead}" in out.stderr, command
        assert f"no queue named '{typo}' has held a job" in out.stderr, command
        assert f"did you mean '{queue_name}'?" in out.stderr, command


def test_queue_stats_watch_outlives_a_redis_outage_and_shows_it(
    redis_factory: Any, queue_name: str
) -> None:
    # Given 'queue stats --watch' on a Redis with one job queued
    server = redis_factory()
    assert (
        run_cli("enqueue", "t", "{}", redis_url=server.url, queue_name=queue_name).returncode == 0
    )
    env = {**os.environ, "WORKERFLEET_REDIS_URL": server.url, "WORKERFLEET_QUEUE": queue_name}
    env["PYTHONPATH"] = os.pathsep.join([str(cli_support.REPO), str(cli_support.REPO / "operator")])
    watch = subprocess.Popen(
        [sys.executable, "-m", "worker_runtime", "queue", "stats", "--watch", "0.2"],
        cwd=cli_support.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    frames = workerproc.LinesRead(watch.stdout)

    def outage_frames() -> int:
        assert watch.poll() is None, "the watch ended"
        return frames.said("no connection to redis for stats")

    try:
        # (the admin connection counts itself: two clients means the watch is reading)
        workerproc.wait_until(lambda: _clients(server) >= 2, 60, "the watch connected")
        # When Redis stops (the watch ended with 'cannot reach Redis' before)
        server.stop()
        # Then it shows the outage and is still watching after it: two frames say so (on a
        # loaded machine the first can come seconds after the stop)
        workerproc.wait_until(lambda: outage_frames() >= 2, 60, "two frames of the outage")
        assert watch.poll() is None
    finally:
        watch.send_signal(signal.SIGINT)
        workerproc.end_process(watch, 30)
    # And Ctrl-C ends it cleanly, its last frame saying what is wrong
    out = frames.finish()
    assert watch.stderr is not None
    assert watch.returncode == 0, watch.stderr.read()
    assert "no connection to redis for stats" in out and "trying again" in out, out


def _clients(server: Any) -> int:
    try:
        with redis.Redis(port=server.port, socket_timeout=2) as admin:
            return len(admin.client_list())
    except redis.exceptions.ConnectionError:
        return 0


def test_queue_ls_lists_the_queues_that_held_a_job_with_their_numbers(redis_factory: Any) -> None:
    # Given a Redis of our own with two queues that got jobs, and one only ever read
    url = redis_factory().url
    for queue_name, jobs in (("invoices", 2), ("emails", 1)):
        for _ in range(jobs):
            assert (
                run_cli("enqueue", "t", "{}", redis_url=url, queue_name=queue_name).returncode == 0
            )
    assert run_cli("queue", "stats", redis_url=url, queue_name="emailz").returncode == 0
    # When its queues are listed
    listed = run_cli("queue", "ls", "--json", redis_url=url)
    # Then the two are there, sorted, with their backlogs, and the mistyped one is not (its
    # stats read as an empty queue: this is how to tell)
    assert listed.returncode == 0, listed.stderr
    assert [(q["queue"], q["backlog"]) for q in json.loads(listed.stdout)] == [
        ("emails", 1),
        ("invoices", 2),
    ]
    table = run_cli("queue", "ls", redis_url=url)
    assert "2 queue(s)" in table.stdout and "invoices" in table.stdout, table.stdout


def test_queue_ls_on_a_redis_cluster_finds_the_queues_of_every_shard(redis_cluster: Any) -> None:
    # Given four queues on a three-shard cluster (one queue = one hash slot; the cluster is
    # shared by the session, so the names are this test's own)
    url = f"redis+cluster://127.0.0.1:{redis_cluster.ports[0]}/"
    tag = uuid.uuid4().hex[:6]
    names = [f"{word}-{tag}" for word in ("alpha", "beta", "delta", "gamma")]
    for name in names:
        assert run_cli("enqueue", "t", "{}", "--broker-url", url, "-q", name).returncode == 0
    # When they are listed through one node's address
    listed = run_cli("queue", "ls", "--json", "--broker-url", url)
    # Then every shard was scanned
    assert listed.returncode == 0, listed.stderr
    assert [q["queue"] for q in json.loads(listed.stdout) if q["queue"].endswith(tag)] == names


def test_the_workerfleet_console_script_carries_the_runtime_commands() -> None:
    script = shutil.which("workerfleet", path=str(workerproc.REPO / ".venv" / "bin"))
    assert script is not None, "the console script is installed by scripts/ensure-venv.sh"
    out = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for command in ("worker", "queue", "dlq", "enqueue"):
        assert command in out.stdout
    dlq_help = subprocess.run([script, "dlq", "--help"], capture_output=True, text=True, timeout=60)
    for sub in ("ls", "show", "replay", "purge"):
        assert sub in dlq_help.stdout


def test_dlq_ls_of_an_empty_dead_letter_queue_says_so_in_one_line(
    redis_server: Any, queue_name: str
) -> None:
    # Given a queue with a job and without dead letters, when they are listed
    enqueued = run_cli("enqueue", "t", "{}", redis_url=redis_server.url, queue_name=queue_name)
    assert enqueued.returncode == 0, enqueued.stderr
    empty = run_cli("dlq", "ls", redis_url=redis_server.url, queue_name=queue_name)
    # Then one line says so, and no empty table is drawn
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout == ""
    assert empty.stderr.strip() == f"no dead letters in {queue_name}"


def test_dlq_ls_past_the_last_page_says_how_many_there_are_not_that_the_dlq_is_empty(
    redis_server: Any, queue_name: str
) -> None:
    # Given a queue with two dead letters
    for task in ("a", "b"):
        _dead_letter_one(redis_server.url, queue_name, task)
    # When a page past the end is listed
    out = run_cli("dlq", "ls", "--offset", "100", redis_url=redis_server.url, queue_name=queue_name)
    # Then it says there are none past that offset, and how many there are
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == (
        f"no dead letters in {queue_name} past the first 100 (2 in all; a smaller --offset "
        "shows them)"
    )


def test_a_dlq_time_range_whose_since_is_after_its_until_is_refused_as_usage(
    redis_server: Any, queue_name: str
) -> None:
    # Given a queue with a dead letter, when a range is given the wrong way round
    _dead_letter_one(redis_server.url, queue_name, "a")
    out = run_cli(
        "dlq", "ls", "--since", "1h", "--until", "2h",
        redis_url=redis_server.url, queue_name=queue_name,
    )  # fmt: skip
    # Then it is refused as usage (exit 2) in one line saying which bound is which
    assert out.returncode == 2
    assert "--since (1h) is after --until (2h)" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_worker_naming_a_missing_app_module_gets_one_clear_line() -> None:
    # Given an App path whose module does not exist, when a worker is started with it
    result = run_cli("worker", "no_such_tasks_module:app", redis_url="redis://127.0.0.1:1/0")
    # Then it exits 2 with one line naming the module, not a traceback
    assert result.returncode == 2
    assert "cannot import 'no_such_tasks_module'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_dependency_inside_the_app_module_keeps_its_traceback(tmp_path: Any) -> None:
    # Given an app module that itself imports a package that is not installed
    (tmp_path / "broken_tasks.py").write_text("import no_such_dependency_pkg\n")
    env = dict(os.environ, WORKERFLEET_REDIS_URL="redis://127.0.0.1:1/0")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(tmp_path), str(workerproc.REPO), str(workerproc.REPO / "operator")]
    )
    # When a worker is started with it
    result = subprocess.run(
        [sys.executable, "-m", "worker_runtime", "worker", "broken_tasks:app"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then the user sees where the import failed
    assert result.returncode != 0
    assert "Traceback" in result.stderr
    assert "no_such_dependency_pkg" in result.stderr
