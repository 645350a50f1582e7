"""scripts/ensure-deps.sh (``make demo``'s and ``make deps``' first step) on a machine without
Debian's apt: it installs nothing, says what to install by hand (redis-server >= 7, prometheus,
or the demo's ``--no-prometheus``) and exits 1, instead of dying on "apt-get: command not found"
(exit 127). The scripts run as in tests/test_setup_scripts.py (a throwaway repository, a fake
Python), on a PATH holding only the tools they use, so nothing of this machine is found."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.test_setup_scripts import make_repo, run, write_executable

BASE_TOOLS = ("bash", "cat", "cut", "dirname", "head", "id", "sed", "sha256sum", "sort")

FAKE_REDIS_SERVER = """#!/usr/bin/env bash
echo "Redis server v=7.2.4 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=0"
"""


def path_without_apt(tmp_path: Path, *, redis: bool) -> str:
    """A PATH with the shell tools the scripts use, no apt-get, sudo or prometheus, and
    redis-server 7 only when ``redis``."""
    bin_dir = tmp_path / "no-apt-bin"
    bin_dir.mkdir()
    for tool in BASE_TOOLS:
        found = shutil.which(tool)
        assert found is not None, tool
        (bin_dir / tool).symlink_to(found)
    if redis:
        write_executable(bin_dir / "redis-server", FAKE_REDIS_SERVER)
    return str(bin_dir)


def test_demo_deps_without_apt_name_what_to_install_and_exit_1(tmp_path: Path) -> None:
    # Given a machine with no apt-get, no redis-server and no prometheus
    repo = make_repo(tmp_path)
    path = path_without_apt(tmp_path, redis=False)
    # When `make demo` runs its first step
    done = run(repo, "ensure-deps.sh", tmp_path, "--demo", PATH=path)
    # Then it says there is no apt-get and lists what to install, the demo's flag included
    assert done.returncode == 1, done.stderr
    assert "command not found" not in done.stderr
    assert "deps: no apt-get here" in done.stderr
    assert "  - redis-server >= 7 on PATH" in done.stderr
    assert (
        "  - prometheus and promtool on PATH, or run the demo without them: "
        "make demo DEMO_ARGS=--no-prometheus" in done.stderr
    )


def test_deps_without_apt_list_the_test_tools_too(tmp_path: Path) -> None:
    # Given the same machine, with redis-server 7 installed by hand
    repo = make_repo(tmp_path)
    path = path_without_apt(tmp_path, redis=True)
    # When `make deps` runs it
    done = run(repo, "ensure-deps.sh", tmp_path, PATH=path)
    # Then the list names prometheus, the browser and the shells, not redis-server
    assert done.returncode == 1, done.stderr
    assert "command not found" not in done.stderr
    listed = [line for line in done.stderr.splitlines() if line.startswith("deps:   - ")]
    assert listed == [
        "deps:   - prometheus and promtool on PATH",
        "deps:   - chromium on PATH (the console's browser tests)",
        "deps:   - chromedriver on PATH, matching chromium",
        "deps:   - zsh on PATH (the completion tests)",
        "deps:   - fish on PATH (the completion tests)",
    ]


def test_demo_deps_without_prometheus_need_only_redis_when_the_demo_skips_it(
    tmp_path: Path,
) -> None:
    # Given no apt-get and no prometheus, but redis-server 7
    repo = make_repo(tmp_path)
    path = path_without_apt(tmp_path, redis=True)
    # When `make demo DEMO_ARGS=--no-prometheus` runs its first step
    done = run(repo, "ensure-deps.sh", tmp_path, "--demo", "--no-prometheus", PATH=path)
    # Then it has all it needs
    assert done.returncode == 0, done.stderr
    assert "deps: ok (demo): v=7.2.4 no prometheus (--no-prometheus)" in done.stderr


def test_the_rabbitmq_and_elasticmq_steps_without_apt_name_what_to_install_and_exit_1(
    tmp_path: Path,
) -> None:
    # Given a machine with no apt-get, no rabbitmq-server, no java and no mvn
    repo = make_repo(tmp_path)
    for name in ("ensure-rabbitmq.sh", "ensure-elasticmq.sh"):
        shutil.copy(Path(__file__).parents[1] / "scripts" / name, repo / "scripts" / name)
    path = path_without_apt(tmp_path, redis=True)
    # When `make demo DEMO_ARGS="--broker rabbitmq"` or `--broker sqs` reaches its broker step
    rabbitmq = run(repo, "ensure-rabbitmq.sh", tmp_path, PATH=path)
    elasticmq = run(
        repo, "ensure-elasticmq.sh", tmp_path, PATH=path, WORKERFLEET_CACHE=str(tmp_path / "c")
    )
    # Then each says what to install by hand and exits 1, not "apt-get: command not found"
    assert rabbitmq.returncode == 1, rabbitmq.stderr
    assert "command not found" not in rabbitmq.stderr
    assert "deps: no apt-get here" in rabbitmq.stderr
    assert "Install rabbitmq-server (with its management plugin" in rabbitmq.stderr
    assert elasticmq.returncode == 1, elasticmq.stderr
    assert "command not found" not in elasticmq.stderr
    assert "elasticmq: no apt-get here" in elasticmq.stderr
    assert "Install a Java runtime >= 11 (java) and Maven (mvn)" in elasticmq.stderr
