"""In a pod the operator reaches the API server at the address the kubelet gives it.

The service-account login (``shell.credentials``, through the ``kubernetes`` package's in-cluster
loader) takes KUBERNETES_SERVICE_HOST/PORT, as client-go does, not https://kubernetes.default.svc,
which needs cluster DNS. The real-node e2e test (tests/e2e/test_real_node.py) runs the operator
image as a pod on a node with no cluster DNS, which is how this was found.
"""

from __future__ import annotations

from pathlib import Path

from workerfleet_operator.shell import credentials


def service_account(tmp_path: Path) -> str:
    (tmp_path / "token").write_text("pod-token\n")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    return str(tmp_path)


def test_the_in_cluster_server_comes_from_the_service_environment(tmp_path: Path) -> None:
    environ = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    info = credentials.load_service_account_login(environ, service_account(tmp_path))
    assert info is not None and info.server == "https://10.96.0.1:443"
    assert info.token == "pod-token"


def test_an_ipv6_service_host_is_bracketed(tmp_path: Path) -> None:
    environ = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}
    info = credentials.load_service_account_login(environ, service_account(tmp_path))
    assert info is not None and info.server == "https://[fd00::1]:6443"


def test_without_the_service_environment_there_is_no_in_cluster_login(tmp_path: Path) -> None:
    directory = service_account(tmp_path)
    assert credentials.load_service_account_login({}, directory) is None
