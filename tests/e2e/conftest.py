"""pytest wiring for the end-to-end tests on a real Kubernetes control plane.

Provides the session fixture `kube_cluster` (one control plane for the whole session, see
tests/e2e/kubecluster.py), a per-test `namespace` fixture, the chart installed with helm
(`workerfleet_chart`), the operator running as the chart's ServiceAccount (`operator`, watching
`pools_namespace`), the real node (`real_node`: kubelet + containerd, tests/e2e/kubenode.py)
with a Redis its pods reach (`node_redis`), component log tails attached to every failing e2e
test, and the control plane's and the real node's start times in the terminal summary. Missing
binaries fail the tests (never skip) with a pointer to `make testbin` / `make e2e`.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.e2e import kubecluster, kubenode, oci_images, workerfleet_support
from tests.support.redis_servers import RedisServer

# The namespace the shared `operator` fixture watches.
POOLS_NAMESPACE = "e2e-pools"

_started: list[kubecluster.KubeCluster] = []
_nodes: list[kubenode.RealNode] = []
# The images the real node runs (scripts/build-images.sh names): the sandbox, the operator from
# the chart, and the example worker image with the tests' tasks added (tests/e2e/node_tasks.py).
NODE_IMAGES = ("pause", "operator", "e2e-worker")


@pytest.fixture(scope="session")
def kube_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[kubecluster.KubeCluster]:
    """A running control plane (etcd, apiserver, controller-manager, scheduler, kwok nodes)."""
    missing = kubecluster.missing_binaries()
    if missing:
        pytest.fail(
            f"Kubernetes test binaries missing in {kubecluster.TESTBIN}: {', '.join(missing)}. "
            "Run `make testbin` (builds them once, cached outside the repo).",
            pytrace=False,
        )
    for tool in ("kubectl", "helm"):
        if not (kubecluster.TOOLS_BIN / tool).exists():
            pytest.fail(f"{tool} missing: run `make deps`", pytrace=False)
    if shutil.which("openssl") is None:
        pytest.fail("openssl missing: the harness generates its certificates with it")
    workdir = tmp_path_factory.mktemp("kube")
    try:
        cluster = kubecluster.start_kube_cluster(workdir)
    except kubecluster.ClusterStartError as error:
        pytest.fail(f"control plane failed to start (logs in {workdir / 'logs'}):\n{error}")
    _started.append(cluster)
    print(f"\ne2e control plane warm start: {cluster.start_seconds:.1f}s ({cluster.server})")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def namespace(kube_cluster: kubecluster.KubeCluster) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting for finalization)."""
    name = f"e2e-{secrets.token_hex(3)}"
    kube_cluster.kubectl("create", "namespace", name)
    yield name
    kube_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    # A failing e2e test is rarely explicable without the control plane's side of the story.
    if report.failed and _started and "kube_cluster" in getattr(item, "fixturenames", ()):
        report.sections.append(("control-plane logs", _started[-1].log_tails()))
    if report.failed and _nodes and "real_node" in getattr(item, "fixturenames", ()):
        report.sections.append(("real node logs", _nodes[-1].log_tails()))
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for cluster in _started:
        terminalreporter.write_line(
            f"e2e control plane ({kubecluster.K8S_VERSION}): warm start "
            f"{cluster.start_seconds:.1f}s, logs in {cluster.workdir / 'logs'}"
        )
    for node in _nodes:
        terminalreporter.write_line(
            f"e2e real node {node.name} (kubelet {kubecluster.K8S_VERSION} + containerd): "
            f"start {node.start_seconds:.1f}s (images built before it), "
            f"logs in {node.workdir / 'logs'}"
        )
        for line in node.reports:
            terminalreporter.write_line(f"  {line}")


@pytest.fixture(scope="session")
def workerfleet_chart(kube_cluster: kubecluster.KubeCluster) -> Iterator[str]:
    """charts/workerfleet installed with helm; yields the operator's ServiceAccount name."""
    yield workerfleet_support.apply_chart(kube_cluster)
    kube_cluster.helm(
        "uninstall", workerfleet_support.RELEASE, "-n", workerfleet_support.SYSTEM_NAMESPACE,
        "--wait", check=False,
    )  # fmt: skip


@pytest.fixture(scope="session")
def pools_namespace(kube_cluster: kubecluster.KubeCluster, redis_server: RedisServer) -> str:
    """The namespace the shared operator watches, with Secret `redis` holding the Redis URL."""
    kube_cluster.kubectl("create", "namespace", POOLS_NAMESPACE)
    kube_cluster.kubectl(
        "create", "secret", "generic", "redis", "-n", POOLS_NAMESPACE,
        f"--from-literal=url={redis_server.url}",
    )  # fmt: skip
    return POOLS_NAMESPACE


@pytest.fixture(scope="session")
def operator(
    kube_cluster: kubecluster.KubeCluster,
    workerfleet_chart: str,
    pools_namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[workerfleet_support.Operator]:
    """`workerfleet operator` as the chart's ServiceAccount, watching `pools_namespace`.

    A request refused by RBAC anywhere in its log fails the session at teardown (each test
    also checks after its own steps), proving the chart's RBAC is sufficient.
    """
    try:
        running = workerfleet_support.start_operator(
            kube_cluster,
            workerfleet_chart,
            (pools_namespace,),
            tmp_path_factory.mktemp("operator"),
        )
    except AssertionError as error:
        pytest.fail(str(error), pytrace=False)
    try:
        yield running
    finally:
        running.stop()
    forbidden = running.forbidden_lines()
    assert not forbidden, "the operator was refused by RBAC:\n" + "\n".join(forbidden[:10])


@pytest.fixture(scope="session")
def real_node(kube_cluster: kubecluster.KubeCluster) -> Iterator[kubenode.RealNode]:
    """A real node (kubelet + containerd + runc + CNI bridge) joined to the control plane.

    Builds or reuses the images first (scripts/build-images.sh, cached by their inputs).
    """
    missing = kubenode.missing_node_tools()
    if missing:
        pytest.fail(
            "the real node needs: " + ", ".join(missing) + ". Run `make e2e` (it installs the "
            "Debian packages with scripts/ensure-node-deps.sh and builds the kubelet).",
            pytrace=False,
        )
    try:
        images = oci_images.fetch_images(*NODE_IMAGES)
    except oci_images.ImageBuildError as error:
        pytest.fail(str(error), pytrace=False)
    # Short and outside pytest's tree: containerd's socket path must fit in 108 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="wf-node-"))
    try:
        node = kubenode.start_real_node(kube_cluster, workdir, list(images.values()))
    except kubenode.NodeStartError as error:
        pytest.fail(f"the real node failed to start (logs in {workdir / 'logs'}):\n{error}")
    _nodes.append(node)
    print(f"\ne2e real node start: {node.start_seconds:.1f}s")
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def node_redis(real_node: kubenode.RealNode) -> Iterator[RedisServer]:
    """A redis-server on loopback and on the node's bridge gateway, where pods reach it."""
    server = RedisServer({"bind": f"127.0.0.1 {kubenode.GATEWAY_IP}", "protected-mode": "no"})
    server.start()
    try:
        yield server
    finally:
        server.stop()
