"""Which kubeconfig ``--pool`` reads, and what it says without one: a named ``--kubeconfig`` that
does not exist is refused (it never falls back to ~/.kube/config's cluster), and with no
kubeconfig anywhere the message names every place it looked, ~/.kube/config included. Run as
the installed ``workerfleet``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.workerfleet_operator.conftest import free_port

WORKERFLEET = str(Path(sys.executable).parent / "workerfleet")


def run(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home)}  # no KUBECONFIG, no pod
    return subprocess.run(
        [WORKERFLEET, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def write_kubeconfig(path: Path, server: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )


def test_a_named_kubeconfig_that_does_not_exist_is_refused_not_replaced_by_the_default(
    tmp_path: Path,
) -> None:
    # Given a ~/.kube/config for some cluster
    default_server = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    write_kubeconfig(tmp_path / ".kube" / "config", default_server)
    # When --pool is given a --kubeconfig path with a typo
    done = run("dlq", "ls", "--pool", "team-a/emails", "--kubeconfig", str(tmp_path / "kubeconfgi"),
               home=tmp_path)  # fmt: skip
    # Then it says there is no kubeconfig there and exits 2, without trying the default's cluster
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"workerfleet: no kubeconfig at {tmp_path / 'kubeconfgi'}\n"
    assert default_server not in done.stderr


def test_without_any_kubeconfig_the_message_names_kubeconfig_and_the_home_default(
    tmp_path: Path,
) -> None:
    # Given no --kubeconfig, no $KUBECONFIG and no ~/.kube/config
    # When --pool is used
    done = run("queue", "stats", "--pool", "team-a/emails", home=tmp_path)
    # Then the one line names the three ways to give one, ~/.kube/config by its path
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        "workerfleet: no kubeconfig: pass --kubeconfig, set KUBECONFIG or put one at "
        f"{tmp_path}/.kube/config (or run in a pod)\n"
    )
