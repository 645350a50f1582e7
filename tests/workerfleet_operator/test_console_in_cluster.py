"""The console as the chart runs it: in a pod, token from a file, pools of several namespaces.

The chart's console Deployment (charts/workerfleet/templates/console.yaml) runs
``workerfleet console --kube [--namespace NS ...] --token-file PATH`` with no kubeconfig: the
console logs in with the pod's service account, reads its token from the mounted Secret, and in
a namespaced install lists pools one watched namespace at a time (its Roles allow no more).
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest
from workerfleet_operator.console import cli, sources
from workerfleet_operator.shell import credentials, inventory

POD_ENV = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


def write_ca(path: Path) -> None:
    """A real (self-signed) certificate where the kubelet puts the cluster CA."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=workerfleet-test-ca", "-keyout", str(path.with_suffix(".key")),
         "-out", str(path)],
        check=True, capture_output=True,
    )  # fmt: skip


def service_account_dir(tmp_path: Path) -> Path:
    (tmp_path / "token").write_text("pod-token\n")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "namespace").write_text("workerfleet-system")
    return tmp_path


def test_without_a_kubeconfig_a_pod_logs_in_with_its_service_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.setenv("HOME", str(tmp_path))
    directory = service_account_dir(tmp_path)
    info = credentials.load_service_account_login(POD_ENV, str(directory))
    assert info is not None
    assert info.server == "https://10.96.0.1:443"
    assert info.token == "pod-token" and info.scheme == "Bearer"
    assert info.ca_path == str(directory / "ca.crt")
    assert info.default_namespace == "workerfleet-system"


async def test_build_login_falls_back_to_the_service_account_and_names_its_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.setenv("HOME", str(tmp_path))
    directory = tmp_path / "sa"
    directory.mkdir()
    service_account_dir(directory)
    write_ca(directory / "ca.crt")  # the client loads it: a placeholder would not do
    login = inventory.build_login(None, POD_ENV, str(directory))
    try:
        assert login.namespace == "workerfleet-system"
    finally:
        await login.client.close()


def test_outside_a_pod_without_a_kubeconfig_the_error_says_what_to_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.setenv("HOME", str(tmp_path))
    service_account_dir(tmp_path)
    with pytest.raises(inventory.InventoryError, match="pass --kubeconfig"):
        inventory.build_login(None, {}, str(tmp_path))  # no service environment
    with pytest.raises(inventory.InventoryError, match="pass --kubeconfig"):
        inventory.build_login(None, POD_ENV, str(tmp_path / "no-such-dir"))  # no token
    with pytest.raises(inventory.InventoryError, match="no kubeconfig at"):
        inventory.build_login(str(tmp_path / "named-but-absent"), POD_ENV, str(tmp_path))


def test_the_token_file_wins_over_the_environment_and_is_trimmed(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("from-the-secret\n")
    environ = {"WORKERFLEET_CONSOLE_TOKEN": "from-the-env"}
    assert cli.read_token(str(token), "WORKERFLEET_CONSOLE_TOKEN", environ) == "from-the-secret"
    assert cli.read_token(None, "WORKERFLEET_CONSOLE_TOKEN", environ) == "from-the-env"
    token.write_text("\n")
    assert cli.read_token(str(token), "WORKERFLEET_CONSOLE_TOKEN", environ) is None
    with pytest.raises(OSError):
        cli.read_token(str(tmp_path / "absent"), "WORKERFLEET_CONSOLE_TOKEN", environ)


class FakeLogin:
    def __init__(self) -> None:
        self.client = object()
        self.namespace = "default"


def pool_body(namespace: str, name: str) -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": name}, "spec": {"queue": {"name": name}}}


async def test_the_console_lists_each_named_namespace_and_never_the_whole_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a console limited to two namespaces (a namespaced install: Roles in those only)
    listed: list[str | None] = []

    async def fetch_workerpools(client: Any, namespace: str | None) -> list[dict[str, Any]]:
        listed.append(namespace)
        await asyncio.sleep(0)
        return [pool_body(namespace or "", f"pool-{namespace}")]

    monkeypatch.setattr(inventory, "build_login", lambda kubeconfig: FakeLogin())
    monkeypatch.setattr(inventory, "fetch_workerpools", fetch_workerpools)
    source = sources.KubeSource(None, ["team-a", "team-b", "team-a"])
    # When it lists pools
    pools = await source.fetch_pools()
    # Then each namespace is listed once, no cluster-wide list, and every pool is shown
    assert sorted(listed, key=str) == ["team-a", "team-b"]
    assert [p.key for p in pools] == ["team-a/pool-team-a", "team-b/pool-team-b"]
    # And a pool outside those namespaces is not found (never read)
    with pytest.raises(sources.PoolNotFoundError):
        await source.fetch_queue_broker("team-c/pool")


async def test_without_namespaces_the_console_lists_the_whole_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    listed: list[str | None] = []

    async def fetch_workerpools(client: Any, namespace: str | None) -> list[dict[str, Any]]:
        listed.append(namespace)
        return []

    monkeypatch.setattr(inventory, "build_login", lambda kubeconfig: FakeLogin())
    monkeypatch.setattr(inventory, "fetch_workerpools", fetch_workerpools)
    assert await sources.KubeSource(None).fetch_pools() == []
    assert listed == [None]
