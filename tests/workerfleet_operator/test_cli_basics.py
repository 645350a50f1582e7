"""Command-line basics: ``--version``, shell completion, log levels in any case, ``queue jobs
--in-flight``, and ``dlq`` triage filters, run as the installed ``workerfleet`` against a real
redis-server (completion in a real bash)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from tests.support.redis_servers import RedisServer
from tests.workerfleet_operator import console_support as cs
from tests.workerfleet_operator.emulator import BUILTIN_RESOURCES, WORKERPOOL, Emulator
from worker_runtime import config, envelope
from worker_runtime.brokers.redis import queue

REQUIRED: dict[str, Any] = {"app": "m:a", "redis_url": "redis://127.0.0.1:1/0", "queue": "q"}
WORKERFLEET = str(Path(sys.executable).parent / "workerfleet")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WORKERFLEET, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def test_version_prints_the_installed_version() -> None:
    from importlib.metadata import version

    done = run("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"workerfleet {version('workerfleet')}"


def run_in_shell(shell: str, flags: list[str], script: str, line: str) -> str:
    """Run ``script`` in ``shell`` with ``$LINE`` set and only the venv on PATH; its stdout."""
    path = shutil.which(shell)
    assert path is not None, f"{shell} is not installed (make deps installs it)"
    env = {
        "PATH": f"{Path(WORKERFLEET).parent}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "HOME": os.environ.get("HOME", "/tmp"),
        "LINE": line,
    }
    done = subprocess.run(
        [path, *flags, "-c", script],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def complete_in_bash(line: str) -> list[str]:
    """What bash offers for ``line`` (cursor at its end) with the completion code loaded."""
    script = (
        "source <(workerfleet completion bash) || exit 3\n"
        'COMP_LINE="$LINE"; COMP_POINT=${#LINE}; read -r -a COMP_WORDS <<< "$LINE"\n'
        '[[ "$LINE" == *" " ]] && COMP_WORDS+=("")\n'
        "COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n"
        "_python_argcomplete workerfleet\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    out = run_in_shell("bash", ["--norc", "--noprofile"], script, line)
    return [w.strip() for w in out.splitlines() if w.strip()]


def complete_in_zsh(line: str) -> list[str]:
    """What zsh's completion system offers for ``line`` (its ``_describe`` call captured)."""
    # compinit loads zsh's completion system; the loaded code registers itself with compdef and
    # hands its candidates to `_describe`, which we replace by a printer (no terminal needed).
    script = (
        "autoload -Uz compinit is-at-least && compinit -u -D || exit 3\n"
        "source <(workerfleet completion zsh) || exit 4\n"
        "[[ ${_comps[workerfleet]} == _python_argcomplete ]] || exit 5\n"
        '_describe() { print -rl -- "${completions[@]}"; }\n'
        'BUFFER="$LINE"; CURSOR=${#BUFFER}; words=(${=BUFFER})\n'
        '[[ "$LINE" == *" " ]] && words+=("")\n'
        "_python_argcomplete\n"
    )
    out = run_in_shell("zsh", ["-f"], script, line)
    return [w.split(":", 1)[0] for w in out.splitlines() if w.strip()]


def complete_in_fish(line: str) -> list[str]:
    """What fish offers for ``line``: its own ``complete -C``, the completion code sourced."""
    script = 'workerfleet completion fish | source; or exit 3; complete -C "$LINE"'
    out = run_in_shell("fish", ["--no-config"], script, line)
    return [w.split("\t", 1)[0] for w in out.splitlines() if w.strip()]


def test_zsh_completes_commands_and_subcommands_through_its_completion_system() -> None:
    # Given zsh with compinit and `workerfleet completion zsh` sourced
    # When a user asks for completions after `workerfleet dlq ` and `workerfleet con`
    # Then zsh's completion function offers dlq's subcommands and the console command
    assert set(complete_in_zsh("workerfleet dlq ")) >= {"ls", "show", "replay", "purge", "summary"}
    assert "console" in complete_in_zsh("workerfleet con")


def test_fish_completes_commands_subcommands_and_flags() -> None:
    # Given fish with `workerfleet completion fish | source`
    # When fish is asked what completes a line (its `complete -C`)
    # Then it offers dlq's subcommands, the console command and a flag by prefix
    assert set(complete_in_fish("workerfleet dlq ")) >= {"ls", "show", "replay", "purge", "summary"}
    assert "console" in complete_in_fish("workerfleet con")
    assert "--allow-writes" in complete_in_fish("workerfleet console --allow")


def test_the_completion_command_prints_shell_code_for_each_shell() -> None:
    for shell in ("bash", "zsh", "fish"):
        done = run("completion", shell)
        assert done.returncode == 0, done.stderr
        assert "workerfleet" in done.stdout and "_ARGCOMPLETE" in done.stdout
    assert run("completion", "csh").returncode == 2  # not a supported shell


def test_bash_completes_a_subcommand_and_its_subcommands() -> None:
    # Given bash with `workerfleet completion bash` loaded
    # When a user types a prefix of a command and presses tab
    # Then bash offers the command, and under `dlq` its subcommands
    assert complete_in_bash("workerfleet con") == ["console"]
    assert set(complete_in_bash("workerfleet dlq ")) >= {"ls", "show", "replay", "purge", "summary"}
    assert "--allow-writes" in complete_in_bash("workerfleet console --allow")


@pytest.mark.parametrize("level", ["DEBUG", "Info", "WARNING", "error"])
def test_log_levels_are_accepted_in_any_case(level: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert config.WorkerSettings(log_level=level, **REQUIRED).log_level == level.lower()
    monkeypatch.setenv("WORKERFLEET_LOG_LEVEL", level)
    assert config.WorkerSettings(**REQUIRED).log_level == level.lower()


@pytest.mark.parametrize("level", ["DEBUG", "Info", "WARNING", "error"])
def test_the_worker_takes_its_log_level_and_format_flags_in_any_case(level: str) -> None:
    from workerfleet_operator import cli as console_script

    # When the worker command is parsed with --log-level and --log-format in any case
    args = console_script.build_parser().parse_args(
        ["worker", "app:app", "--log-level", level, "--log-format", "TEXT"]
    )
    # Then it is the level and format their environment variables would have given
    assert (args.log_level, args.log_format) == (level.lower(), "text")


def test_an_unknown_log_level_flag_is_a_usage_error_listing_the_levels() -> None:
    # When the worker is started with a level that does not exist
    out = run("worker", "app:app", "--log-level", "Verbose")
    # Then it is refused as usage (exit 2) naming the levels there are, without a traceback
    assert out.returncode == 2 and "argument --log-level: invalid choice: 'verbose'" in out.stderr
    assert "'debug', 'info', 'warning', 'error', 'critical'" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.fixture
def seeded(redis_server: RedisServer, queue_name: str) -> tuple[dict[str, str], cs.Seeded]:
    env = {
        **os.environ,
        "WORKERFLEET_REDIS_URL": redis_server.url,
        "WORKERFLEET_QUEUE": queue_name,
    }
    return env, asyncio.run(cs.seed_queue(redis_server.url, queue_name))


def ready_ids(env: dict[str, str]) -> set[str]:
    return asyncio.run(
        cs.fetch_ready_ids(env["WORKERFLEET_REDIS_URL"], env["WORKERFLEET_QUEUE"], want=10)
    )


def test_dlq_ls_filters_by_task_reason_error_and_time_and_says_the_total(
    seeded: tuple[dict[str, str], cs.Seeded],
) -> None:
    env, s = seeded

    def ids(*flags: str) -> set[str]:
        out = run("dlq", "ls", "--json", *flags, env=env)
        assert out.returncode == 0, out.stderr
        return {d["job_id"] for d in json.loads(out.stdout)}

    assert ids("--task", "charge_card") == {s.dead["charge-a"], s.dead["charge-b"]}
    assert ids("--error", "ValueError") == {s.dead["charge-b"], s.dead["xss"]}
    assert ids("--reason", "max_attempts", "--task", "send_email") == {s.dead["mail"]}
    assert ids("--since", "1h") == set(s.dead.values())
    assert ids("--until", "2000-01-01") == set()
    table = run("dlq", "ls", "--task", "charge_card", env=env)
    assert "2 of 4 dead letter(s)" in table.stdout and "task=charge_card" in table.stdout
    everything = run("dlq", "ls", env=env)
    assert "4 dead letter(s) in" in everything.stdout
    bad = run("dlq", "ls", "--since", "yesterday", env=env)
    assert bad.returncode == 2 and "neither a duration" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_dlq_summary_groups_by_reason_and_error_type(
    seeded: tuple[dict[str, str], cs.Seeded],
) -> None:
    env, _ = seeded
    out = run("dlq", "summary", "--json", env=env)
    assert out.returncode == 0, out.stderr
    summary: dict[str, Any] = json.loads(out.stdout)
    groups = {(g["reason"], g["error_type"]): (g["count"], g["tasks"]) for g in summary["groups"]}
    assert summary["total"] == 4 and summary["matched"] == 4
    assert groups == {
        ("non_retryable", "ValueError"): (2, ["charge_card", "render"]),
        ("max_attempts", "TimeoutError"): (1, ["charge_card"]),
        ("max_attempts", "ConnectionError"): (1, ["send_email"]),
    }
    table = run("dlq", "summary", "--task", "charge_card", env=env)
    assert "2 of 4 dead letter(s)" in table.stdout and "TimeoutError" in table.stdout


def test_replay_dry_run_changes_nothing_and_a_filtered_replay_reenqueues_only_the_matches(
    seeded: tuple[dict[str, str], cs.Seeded],
) -> None:
    env, s = seeded
    # When a filtered replay is dry-run: the matches are listed and the queue is untouched
    dry = run("dlq", "replay", "--error", "ValueError", "--dry-run", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    assert set(json.loads(dry.stdout)["job_ids"]) == {s.dead["charge-b"], s.dead["xss"]}
    assert ready_ids(env) == set()
    # When it is run for real: exactly those two are ready again, the others stay dead
    done = run("dlq", "replay", "--error", "ValueError", "--json", env=env)
    assert json.loads(done.stdout)["replayed"] == 2
    assert ready_ids(env) == {s.dead["charge-b"], s.dead["xss"]}
    left = json.loads(run("dlq", "ls", "--json", env=env).stdout)
    assert {d["job_id"] for d in left} == {s.dead["charge-a"], s.dead["mail"]}


def test_a_filtered_purge_needs_yes_and_deletes_only_the_matches(
    seeded: tuple[dict[str, str], cs.Seeded],
) -> None:
    env, s = seeded
    refused = run("dlq", "purge", "--reason", "max_attempts", env=env)
    assert refused.returncode == 2 and "2 matching dead letter(s)" in refused.stderr
    done = run("dlq", "purge", "--reason", "max_attempts", "--yes", "--json", env=env)
    assert json.loads(done.stdout) == {"purged": 2}
    left = json.loads(run("dlq", "ls", "--json", env=env).stdout)
    assert {d["job_id"] for d in left} == {s.dead["charge-b"], s.dead["xss"]}


def test_a_filtered_purge_that_matches_nothing_says_so_without_asking_for_yes(
    seeded: tuple[dict[str, str], cs.Seeded],
) -> None:
    env, s = seeded
    # When a purge's filters match no dead letter (with an age, and with --json)
    out = run("dlq", "purge", "--task", "nosuch", "--older-than", "60", env=env)
    as_json = run("dlq", "purge", "--task", "nosuch", "--json", env=env)
    # Then it says nothing matched and exits 0, instead of asking for --yes to delete nothing
    queue_name = env["WORKERFLEET_QUEUE"]
    assert (out.returncode, out.stdout) == (0, "")
    assert out.stderr == f"no dead letters match in {queue_name}; nothing purged\n"
    assert as_json.returncode == 0 and json.loads(as_json.stdout) == {"purged": 0}
    # And every dead letter is still there
    left = json.loads(run("dlq", "ls", "--json", env=env).stdout)
    assert {d["job_id"] for d in left} == set(s.dead.values())


def test_a_negative_age_count_or_rate_is_refused_by_name_and_the_dead_letters_stay(
    seeded: tuple[dict[str, str], cs.Seeded],
) -> None:
    env, s = seeded
    # When a purge is given a negative age (it meant every dead letter), a listing a negative
    # limit or offset (it said the DLQ was empty), a replay a zero rate, a watch no interval
    refused = [
        run("dlq", "purge", "--older-than", "-5", env=env),
        run("dlq", "purge", "--older-than", "nan", "--yes", env=env),
        run("dlq", "ls", "--limit", "-1", env=env),
        run("dlq", "ls", "--offset", "-3", env=env),
        run("dlq", "replay", "--all", "--rate", "0", "--dry-run", env=env),
        run("queue", "stats", "--watch", "0", env=env),
    ]
    # Then each is refused with the option named, before anything is read or changed
    options = ("--older-than", "--older-than", "--limit", "--offset", "--rate", "--watch")
    for out, option in zip(refused, options, strict=True):
        assert out.returncode == 2, out
        assert f"error: argument {option}: must be" in out.stderr, out.stderr
    left = json.loads(run("dlq", "ls", "--json", env=env).stdout)
    assert {d["job_id"] for d in left} == set(s.dead.values())


def test_queue_jobs_in_flight_lists_the_running_job_with_its_worker(
    seeded: tuple[dict[str, str], cs.Seeded],
) -> None:
    env, s = seeded
    out = run("queue", "jobs", "--in-flight", "--json", env=env)
    assert out.returncode == 0, out.stderr
    [job] = json.loads(out.stdout)
    assert (job["job_id"], job["task"], job["worker_id"]) == (s.running, "resize", "w-busy")
    assert job["deliveries"] == 1 and job["running_seconds"] >= 0
    table = run("queue", "jobs", "--in-flight", env={**env, "COLUMNS": "200"})
    assert s.running in table.stdout and "w-busy" in table.stdout


def read_while_running(proc: subprocess.Popen[bytes], enough: Callable[[str], bool]) -> str:
    """What ``proc`` wrote on stdout while it ran, read until ``enough`` of it came (or 20 s)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    text, deadline = "", time.monotonic() + 20
    while not enough(text) and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            text += chunk.decode()
    return text


@contextlib.contextmanager
def watch_stats(env: dict[str, str], *flags: str) -> Iterator[subprocess.Popen[bytes]]:
    """``queue stats --watch`` on pipes; killed on the way out if a failed test left it running."""
    proc = subprocess.Popen(
        [WORKERFLEET, "queue", "stats", "--watch", "0.3", *flags],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def stop(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    """Interrupt ``proc`` as Ctrl-C does; its exit code and stderr."""
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err.decode()


def test_watch_with_json_to_a_pipe_prints_one_json_object_a_line_per_tick(
    seeded: tuple[dict[str, str], cs.Seeded],
) -> None:
    env, _ = seeded
    # Given a watch with --json whose stdout is a pipe (kubectl exec without -t, | tee)
    with watch_stats(env, "--json") as proc:
        # When two ticks have passed, while it still runs
        text = read_while_running(proc, lambda t: t.count("\n") >= 2)
        # Then each tick arrived at once as one JSON object on a line of its own
        ticks = [json.loads(line) for line in text.splitlines()[:2]]
        assert len(ticks) == 2, text
        assert all(t["queue"] == env["WORKERFLEET_QUEUE"] and t["dead_letter"] == 4 for t in ticks)
        # And Ctrl-C ends it with exit 0 and nothing on stderr
        assert stop(proc) == (0, "")


def test_watch_to_a_pipe_prints_each_frame_as_plain_text_and_a_blank_line(
    seeded: tuple[dict[str, str], cs.Seeded],
) -> None:
    env, _ = seeded
    # Given a watch (no --json) whose stdout is a pipe, not a terminal
    with watch_stats(env) as proc:
        # When two whole ticks have passed, while it still runs (a frame's lines may come in
        # separate writes: wait for the blank line that ends the second one)
        text = read_while_running(
            proc,
            lambda t: len(re.findall(r"^dead letters +4$", t, re.M)) >= 2 and t.endswith("\n\n"),
        )
        # Then each frame arrived at once as plain text (no terminal codes), a blank line after it
        frames = [f for f in text.split("\n\n") if f.strip()]
        assert len(frames) >= 2 and text.endswith("\n\n"), text
        assert all(f.lstrip("\n").startswith("queue ") for f in frames), text
        assert "\x1b" not in text
        assert stop(proc) == (0, "")


def test_pool_without_a_kubeconfig_is_one_line() -> None:
    out = run("dlq", "ls", "--pool", "ns/p", "--kubeconfig", "/nonexistent/kubeconfig",
              env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})  # fmt: skip
    assert out.returncode == 2 and "no kubeconfig" in out.stderr and "Traceback" not in out.stderr


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_pool_with_an_unreachable_api_server_names_the_api_server_not_the_broker(
    tmp_path: Path,
) -> None:
    # Given a kubeconfig whose API server is a closed port (and whose token must stay secret)
    port = closed_port()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "secret-token-4711"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    commands = [
        ["queue", "stats"],
        ["dlq", "ls"],
        ["dlq", "replay", "--all", "--dry-run"],
        ["enqueue", "send_email", "{}"],
    ]
    # When each command that takes --pool is run with it
    running = [
        subprocess.Popen(
            [WORKERFLEET, *command, "--pool", "team-a/emails", "--kubeconfig", str(kubeconfig)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    # Then each says in one line that the Kubernetes API (by its address) could not be reached
    # (not the broker, never the token) and exits 1
    for command, process in zip(commands, running, strict=True):
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 1, (command, stderr)
        assert stderr.startswith(
            f"workerfleet: cannot reach the Kubernetes API at https://127.0.0.1:{port} to find "
            "WorkerPool team-a/emails: "
        ), (command, stderr)
        assert stderr.count("\n") == 1 and "broker" not in stderr, (command, stderr)
        assert "secret-token-4711" not in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("code", [403, 503])
def test_pool_refused_or_failed_by_the_api_server_exits_1_naming_it_and_a_missing_pool_exits_2(
    code: int, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    # Given an API server that refuses (RBAC) or keeps failing the read of the pool (the client
    # retries a 503 a few times, so it fails more often than that)
    with Emulator((*BUILTIN_RESOURCES, WORKERPOOL)) as server:
        kubeconfig.write_text(json.dumps(server.kubeconfig()))
        server.inject_failure("GET", r"/workerpools/emails$", code, count=50)
        # When a command is pointed at the pool
        failed = run("queue", "stats", "--pool", "team-a/emails", "--kubeconfig", str(kubeconfig))
    # Then the refusal or failure is the API server's, exit 1 like an unreachable one (it was
    # exit 2, a usage error), in one line naming the server and its answer
    assert failed.returncode == 1, failed.stderr
    assert failed.stderr.startswith(
        f"workerfleet: the Kubernetes API at {server.url} did not let us read WorkerPool "
        f"team-a/emails: {code} "
    ), failed.stderr
    assert failed.stderr.count("\n") == 1 and "Traceback" not in failed.stderr
    # And a pool that is not there is still the user's mistake: exit 2
    with Emulator((*BUILTIN_RESOURCES, WORKERPOOL)) as server:
        kubeconfig.write_text(json.dumps(server.kubeconfig()))
        missing = run("queue", "stats", "--pool", "team-a/emails", "--kubeconfig", str(kubeconfig))
    assert (missing.returncode, missing.stderr) == (2, "workerfleet: no WorkerPool team-a/emails\n")


def test_pools_on_a_cluster_without_the_workerpool_api_says_so_instead_of_no_pools(
    tmp_path: Path,
) -> None:
    # Given an API server without the WorkerPool CRD (the wrong kube context), and one with it
    with (
        Emulator(BUILTIN_RESOURCES) as bare,
        Emulator((*BUILTIN_RESOURCES, WORKERPOOL)) as installed,
    ):
        for name, server in (("bare", bare), ("installed", installed)):
            (tmp_path / name).write_text(json.dumps(server.kubeconfig()))
        # When the pools of every namespace are listed on each
        missing = run("pools", "-A", "--kubeconfig", str(tmp_path / "bare"))
        missing_json = run("pools", "-A", "--json", "--kubeconfig", str(tmp_path / "bare"))
        empty = run("pools", "-A", "--kubeconfig", str(tmp_path / "installed"))
    # Then the cluster without the API is named as not serving WorkerPools, exit 1 (not "no
    # WorkerPools found", exit 0), with --json too
    said = (
        f"workerfleet: the API server at {bare.url} does not serve WorkerPools "
        "(workerfleet.io/v1alpha1): is the workerfleet CRD installed there, or is the kube "
        "context the wrong one? (kubectl config current-context)\n"
    )
    assert (missing.returncode, missing.stdout, missing.stderr) == (1, "", said)
    assert (missing_json.returncode, missing_json.stdout, missing_json.stderr) == (1, "", said)
    # And a cluster with the API and no pools still has none
    assert (empty.returncode, empty.stderr) == (0, "no WorkerPools found\n")


KEYED = {"task": "mail", "payload": {}, "idempotency_key": "k"}


def test_enqueue_file_enqueues_every_line_and_a_bad_line_enqueues_nothing(
    redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    env = {**os.environ, "WORKERFLEET_REDIS_URL": redis_server.url, "WORKERFLEET_QUEUE": queue_name}
    good = tmp_path / "jobs.ndjson"
    good.write_text(
        "\n".join(
            [json.dumps({"task": "mail", "payload": {"to": f"u{i}@x"}}) for i in range(700)]
            + ["", json.dumps({**KEYED, "priority": "high"}), json.dumps(KEYED)]
        )
    )  # fmt: skip
    bad = tmp_path / "bad.ndjson"
    bad.write_text(
        json.dumps({"task": "a", "payload": {}}) + "\n" + '{"task": "b", "payload": 3}\n'
    )
    # When a file with a bad second line is given: one line names it and nothing is enqueued
    refused = run("enqueue", "--file", str(bad), env=env)
    assert refused.returncode == 2 and "line 2: payload must be a JSON object" in refused.stderr
    assert json.loads(run("queue", "stats", "--json", env=env).stdout)["enqueued_total"] == 0
    # When the good file is given: every line is enqueued once (the repeated key is a duplicate)
    done = run("enqueue", "--file", str(good), "--json", env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["enqueued"], result["duplicates"]) == (701, 1)
    assert len(set(result["job_ids"])) == 701
    assert json.loads(run("queue", "stats", "--json", env=env).stdout)["backlog"] == 701


def test_enqueue_refuses_a_negative_delay_or_zero_attempts_in_one_line_and_enqueues_nothing(
    redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    env = {**os.environ, "WORKERFLEET_REDIS_URL": redis_server.url, "WORKERFLEET_QUEUE": queue_name}
    # When one job is enqueued with a negative delay, then with no attempt allowed, and a file
    # holds a line with no attempt allowed
    negative = run("enqueue", "mail", "{}", "--delay", "-5", env=env)
    no_attempts = run("enqueue", "mail", "{}", "--max-attempts", "0", env=env)
    lines = tmp_path / "jobs.ndjson"
    lines.write_text(json.dumps({"task": "mail", "payload": {}, "max_attempts": 0}) + "\n")
    in_file = run("enqueue", "--file", str(lines), env=env)
    # Then each is refused with one line naming the field, no traceback, and nothing is enqueued
    assert negative.returncode == 2 and negative.stderr == (
        "workerfleet: delay must be a finite number of seconds >= 0\n"
    )
    assert no_attempts.returncode == 2 and no_attempts.stderr == (
        "workerfleet: max_attempts: Input should be greater than or equal to 1\n"
    )
    assert in_file.returncode == 2 and in_file.stderr == (
        "workerfleet: line 1: max_attempts: Input should be greater than or equal to 1\n"
    )
    assert json.loads(run("queue", "stats", "--json", env=env).stdout)["enqueued_total"] == 0


def test_ctrl_c_during_a_long_replay_says_how_many_were_replayed_and_that_is_the_truth(
    redis_server: RedisServer, queue_name: str
) -> None:

    import redis as redis_sync

    from worker_runtime.brokers.redis import keys

    # Given 100 dead letters and a replay at 5 jobs/s (about 20 s)
    client = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)

    async def fill() -> None:
        engine = queue.QueueClient(client, queue_name, queue.QueueOptions())
        for i in range(100):
            await engine.enqueue_many(
                [queue.EnqueueRequest(envelope=envelope.build_envelope("t", {"i": i}))]
            )
            [job] = await engine.fetch("w", 1)
            assert await engine.dead_letter(job, "non_retryable")
        await client.aclose()

    asyncio.run(fill())
    env = {**os.environ, "WORKERFLEET_REDIS_URL": redis_server.url, "WORKERFLEET_QUEUE": queue_name}
    proc = subprocess.Popen(
        [WORKERFLEET, "dlq", "replay", "--all", "--rate", "5"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # When it is interrupted (Ctrl-C) once it has replayed some (its start alone can take
    # seconds on a loaded machine: a Ctrl-C before its first call replays none)
    dlq = redis_sync.Redis.from_url(redis_server.url)
    deadline = time.monotonic() + 60.0
    while int(dlq.zcard(keys.build_keys(queue_name).dlq)) == 100:
        assert time.monotonic() < deadline and proc.poll() is None, "no replay started"
        time.sleep(0.05)
    dlq.close()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    # Then it exits 130 with a summary, and the summary matches the queue
    assert proc.returncode == 130, out + err
    summary = next(line for line in err.splitlines() if line.startswith("interrupted:"))
    replayed = int(summary.split("replayed ")[1].split(" of ")[0])
    assert summary.endswith("of 100 job(s) onto " + queue_name + "; the rest stay dead-lettered")
    assert 0 < replayed < 100
    stats = json.loads(run("queue", "stats", "--json", env=env).stdout)
    assert (stats["backlog"], stats["dead_letter"]) == (replayed, 100 - replayed)


def test_ctrl_c_during_a_long_purge_says_how_many_were_purged_and_that_is_the_truth(
    redis_server: RedisServer, queue_name: str
) -> None:

    import redis as redis_sync

    from worker_runtime.brokers.redis import keys

    # Given 400,000 dead letters (written straight into the DLQ keys: a purge reads no records)
    k = keys.build_keys(queue_name)
    client = redis_sync.Redis.from_url(redis_server.url)
    for start in range(0, 400_000, 20_000):
        ids = [f"j{i}" for i in range(start, start + 20_000)]
        pipe = client.pipeline(transaction=False)
        pipe.zadd(k.dlq, {job_id: 1_000 + i for i, job_id in enumerate(ids)})
        pipe.hset(k.dlq_data, mapping={job_id: "{}" for job_id in ids})
        pipe.execute()
    env = {**os.environ, "WORKERFLEET_REDIS_URL": redis_server.url, "WORKERFLEET_QUEUE": queue_name}
    proc = subprocess.Popen(
        [WORKERFLEET, "dlq", "purge", "--all", "--yes"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # When it is interrupted (Ctrl-C) as soon as it says it is purging (400 script calls to go)
    assert proc.stderr is not None
    started = proc.stderr.readline()
    assert started.startswith(f"purging 400000 dead letter(s) from {queue_name}"), started
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    # Then it exits 130 with a summary, and the summary matches what is left in the DLQ
    assert proc.returncode == 130, out + err
    summary = next(line for line in err.splitlines() if line.startswith("interrupted:"))
    purged = int(summary.split("purged ")[1].split(" of ")[0])
    rest = f"of 400000 dead letter(s) from {queue_name}; the rest stay dead-lettered"
    assert summary.endswith(rest)
    assert 0 < purged < 400_000
    assert (client.zcard(k.dlq), client.hlen(k.dlq_data)) == (400_000 - purged,) * 2
    client.close()


def test_a_purge_by_age_counts_only_the_old_dead_letters_and_deletes_exactly_them(
    redis_server: RedisServer, queue_name: str
) -> None:

    import redis as redis_sync

    from worker_runtime.brokers.redis import keys

    # Given 3 dead letters from an hour ago and 2 from now
    k = keys.build_keys(queue_name)
    client = redis_sync.Redis.from_url(redis_server.url, decode_responses=True)
    now_ms = int(time.time() * 1000)
    client.zadd(k.dlq, {"old1": now_ms - 3_600_000, "old2": now_ms - 3_600_000,
                        "old3": now_ms - 3_590_000, "new1": now_ms, "new2": now_ms})  # fmt: skip
    client.hset(k.dlq_data, mapping={i: "{}" for i in ("old1", "old2", "old3", "new1", "new2")})
    env = {**os.environ, "WORKERFLEET_REDIS_URL": redis_server.url, "WORKERFLEET_QUEUE": queue_name}
    # When the dead letters older than ten minutes are purged
    done = subprocess.run(
        [WORKERFLEET, "dlq", "purge", "--older-than", "600", "--yes"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    # Then the header counts the 3 old ones, and exactly they are gone
    assert done.returncode == 0, done.stderr
    assert f"purging 3 dead letter(s) from {queue_name}" in done.stderr
    assert done.stdout.strip() == f"purged 3 dead letter(s) from {queue_name}"
    assert sorted(client.zrange(k.dlq, 0, -1)) == ["new1", "new2"]
    assert sorted(client.hkeys(k.dlq_data)) == ["new1", "new2"]
    client.close()
