"""In a pod the operator reaches the API server at the address the kubelet gives it.

kopf's service-account login names https://kubernetes.default.svc, which needs cluster DNS; the
operator uses KUBERNETES_SERVICE_HOST/PORT instead when they are set (as client-go does). The
real-node e2e test (tests/e2e/test_real_node.py) runs the operator image as a pod on a node with
no cluster DNS, which is how this was found.
"""

from __future__ import annotations

from workerfleet_operator.shell import kubeconfig


def test_the_in_cluster_server_comes_from_the_service_environment() -> None:
    environ = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert kubeconfig.in_cluster_server_url(environ) == "https://10.96.0.1:443"


def test_an_ipv6_service_host_is_bracketed() -> None:
    environ = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}
    assert kubeconfig.in_cluster_server_url(environ) == "https://[fd00::1]:6443"


def test_without_the_service_environment_there_is_no_in_cluster_server() -> None:
    assert kubeconfig.in_cluster_server_url({}) is None
    assert kubeconfig.in_cluster_server_url({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}) is None
