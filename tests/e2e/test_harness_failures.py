"""The e2e harness fails loudly, with the reason, when it cannot give a working cluster.

A missing binary must point at `make testbin`, and a component that dies during start-up must
surface its own log, so an e2e failure is never a silent skip or a bare timeout. A session killed
before its teardown must not refuse the next one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e import kubecluster, kubenode

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def build_fake_testbin(directory: Path, etcd_script: str) -> Path:
    directory.mkdir()
    for name in kubecluster.COMPONENTS:
        exe = directory / name
        exe.write_text("#!/bin/sh\nsleep 30\n")
        exe.chmod(0o755)
    (directory / "etcd").write_text(etcd_script)
    (directory / kubecluster.KWOK_STAGES).write_text("---\n")
    return directory


def test_missing_binaries_name_each_one_and_point_at_make_testbin(tmp_path: Path) -> None:
    # Given a cache directory holding only some of the binaries
    testbin = build_fake_testbin(tmp_path / "bin", "#!/bin/sh\nexit 0\n")
    (testbin / "kube-scheduler").unlink()
    # When the harness is asked to start a cluster from it
    with pytest.raises(FileNotFoundError) as error:
        kubecluster.start_kube_cluster(tmp_path / "work", testbin=testbin)
    # Then the error names the missing binary and the command that builds it
    assert "kube-scheduler" in str(error.value)
    assert "make testbin" in str(error.value)


def test_a_component_that_dies_at_start_up_fails_the_start_with_its_log(tmp_path: Path) -> None:
    # Given an etcd that exits at once after printing its reason
    testbin = build_fake_testbin(
        tmp_path / "bin", "#!/bin/sh\necho 'etcd: cannot bind, port in use' >&2\nexit 3\n"
    )
    workdir = tmp_path / "work"
    workdir.mkdir()
    # When the harness starts the cluster
    with pytest.raises(kubecluster.ClusterStartError) as error:
        kubecluster.start_kube_cluster(workdir, testbin=testbin)
    # Then the error says which component exited, with what code, and quotes its log
    message = str(error.value)
    assert "etcd exited with 3" in message
    assert "cannot bind, port in use" in message


def test_a_bridge_left_by_a_killed_session_is_removed_when_the_next_session_claims_the_network(
    tmp_path: Path,
) -> None:
    # Given a session that claimed the node's network and built its bridge and firewall rules
    # (its own bridge name and lock, so a real node running beside this test is not touched)
    lock, bridge = tmp_path / "node.lock", "wfe2etest0"
    script = f"""
import subprocess, time
from pathlib import Path
from tests.e2e import kubenode
kubenode.claim_network(Path({str(lock)!r}), {bridge!r})
subprocess.run(["ip", "link", "add", {bridge!r}, "type", "bridge"], check=True)
for rule in kubenode.firewall_rules_for({bridge!r}):
    subprocess.run(["iptables", "-I", *rule], check=True)
print("claimed", flush=True)
time.sleep(120)
"""
    session = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert session.stdout is not None
        assert session.stdout.readline() == "claimed\n"
        # When a second session claims the network while the first one lives
        # Then it is refused, and the refusal names the live session
        with pytest.raises(kubenode.NodeStartError, match=f"PID {session.pid} holds"):
            kubenode.claim_network(lock, bridge)
        assert kubenode.bridge_exists(bridge)
        # When the first session is killed before its teardown, and the next one claims
        os.kill(session.pid, signal.SIGKILL)
        session.wait(timeout=30)
        descriptor, removed = kubenode.claim_network(lock, bridge)
        os.close(descriptor)
        # Then the dead session's bridge and both its firewall rules are gone
        assert f"bridge {bridge}" in removed
        assert not kubenode.bridge_exists(bridge)
        for rule in kubenode.firewall_rules_for(bridge):
            check = subprocess.run(["iptables", "-C", *rule], capture_output=True, timeout=30)
            assert check.returncode != 0, f"rule left behind: {rule}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(session.pid, signal.SIGKILL)
        session.wait(timeout=30)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, timeout=30)
        for rule in kubenode.firewall_rules_for(bridge):
            subprocess.run(["iptables", "-D", *rule], capture_output=True, timeout=30)
