"""The e2e harness fails loudly, with the reason, when it cannot give a working cluster.

A missing binary must point at `make testbin`, and a component that dies during start-up must
surface its own log, so an e2e failure is never a silent skip or a bare timeout.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e import kubecluster

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
