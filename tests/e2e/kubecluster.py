"""A real, throwaway Kubernetes control plane on loopback for the end-to-end tests.

Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (the binaries
`scripts/testbin.sh` builds into ~/.cache/workerfleet/testbin/<version>/bin), creates fake kwok
nodes, writes a kubeconfig and tears everything down by PID. Used by the `kube_cluster` fixture
in tests/e2e/conftest.py; other test directories can reuse it by importing this module
(`from tests.e2e import kubecluster`) and calling `kubecluster.start_kube_cluster(...)`.

Why these choices:
- Clients authenticate with static tokens (`--token-auth-file`): the simplest auth that still
  goes through RBAC; components get their own user names in `system:masters` since they are not
  what is under test. ServiceAccount tokens (TokenRequest) work because the API server has a
  signing key, so the operator can run as the chart's ServiceAccount.
- The ServiceAccount admission plugin stays on: the controller-manager runs its
  serviceaccount controller, and the harness waits for the `default` ServiceAccount.
- Every listener binds 127.0.0.1 on a free port; nothing else on the machine is touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

K8S_VERSION = os.environ.get("K8S_VERSION", "v1.35.4")
CACHE = Path(os.environ.get("WORKERFLEET_CACHE", str(Path.home() / ".cache" / "workerfleet")))
TESTBIN = CACHE / "testbin" / K8S_VERSION / "bin"
TOOLS_BIN = CACHE / "bin"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
# Everything scripts/testbin.sh builds: the control plane and the real node's kubelet.
TESTBIN_BINARIES = (*COMPONENTS, "kubelet")
# kwok's node/pod lifecycle stages, collected by scripts/testbin.sh from the same kwok version.
KWOK_STAGES = "kwok-stages.yaml"
# Nodes carrying this annotation are the ones kwok fakes (it manages no other node).
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
# The real node's bridge gateway (tests/e2e/kubenode.py): pods reach the API server there
# through a forwarder, so the serving certificate names it too.
NODE_GATEWAY_IP = "10.213.77.1"
START_TIMEOUT_SECONDS = 180.0
STOP_TIMEOUT_SECONDS = 15.0

T = TypeVar("T")


class ClusterStartError(RuntimeError):
    """The control plane did not come up; the message carries each component's log tail."""


class ToolError(subprocess.CalledProcessError):
    """A kubectl/helm call failed; unlike its base class, the message carries stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr: {self.stderr}\nstdout: {self.output}"


@dataclass
class Component:
    """One running control-plane process and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class KubeCluster:
    """Handle on a running control plane: where it is, how to talk to it, how to stop it."""

    workdir: Path
    server: str
    kubeconfig: Path
    admin_token: str
    ca_file: Path
    node_names: tuple[str, ...]
    components: list[Component] = field(default_factory=list)
    start_seconds: float = 0.0

    @property
    def audit_log(self) -> Path:
        """The API server's audit log: one JSON line per write of a workerfleet-system account."""
        return self.workdir / "logs" / "audit.jsonl"

    def fetch_audit_events(self) -> list[dict[str, object]]:
        """Every audit event so far (writes of ServiceAccounts in workerfleet-system)."""
        if not self.audit_log.exists():
            return []
        lines = self.audit_log.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl as the cluster admin; raise with its stderr when `check`."""
        return run_tool(
            "kubectl", ["--kubeconfig", str(self.kubeconfig), *args], input, check, timeout
        )

    def helm(
        self, *args: str, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned helm as the cluster admin; raise with its stderr when `check`."""
        env = {"HELM_CACHE_HOME": str(self.workdir / "helm" / "cache")}
        env["HELM_CONFIG_HOME"] = str(self.workdir / "helm" / "config")
        env["HELM_DATA_HOME"] = str(self.workdir / "helm" / "data")
        return run_tool(
            "helm", ["--kubeconfig", str(self.kubeconfig), *args], None, check, timeout, env
        )

    def fetch_json(self, *args: str) -> dict[str, object]:
        """`kubectl get ... -o json`, parsed."""
        out = self.kubectl("get", *args, "-o", "json").stdout
        parsed: dict[str, object] = json.loads(out)
        return parsed

    def fetch_service_account_token(
        self, namespace: str, name: str, duration_seconds: int = 3600
    ) -> str:
        """A token for a ServiceAccount from the TokenRequest API (`kubectl create token`)."""
        return self.kubectl(
            "create", "token", name, "-n", namespace, f"--duration={duration_seconds}s"
        ).stdout.strip()

    def write_kubeconfig(self, path: Path, token: str, user: str = "user") -> Path:
        """A kubeconfig for this cluster authenticating with `token` (e.g. a ServiceAccount's)."""
        path.write_text(build_kubeconfig(self.server, self.ca_file, token, user))
        path.chmod(0o600)
        return path

    def log_tails(self, lines: int = 40) -> str:
        """The last lines of every component's log, for failure reports."""
        return "\n".join(format_log_tail(c.name, c.log_path, lines) for c in self.components)

    def stop(self) -> None:
        """Stop every component by PID, newest first (kwok before the API server before etcd)."""
        for component in reversed(self.components):
            stop_process(component.process)
        self.components.clear()


def run_tool(
    tool: str,
    args: Sequence[str],
    input: str | None,
    check: bool,
    timeout: float,
    extra_env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a pinned tool from the workerfleet cache; a failure raises with the full output."""
    exe = TOOLS_BIN / tool
    if not exe.exists():
        raise FileNotFoundError(f"{exe} is missing: run `bash scripts/ensure-deps.sh` (make deps)")
    env = {**os.environ, **(extra_env or {})}
    env.pop("KUBECONFIG", None)  # only the explicit --kubeconfig may decide the cluster
    result = subprocess.run(
        [str(exe), *args], input=input, capture_output=True, text=True, timeout=timeout, env=env
    )
    if check and result.returncode != 0:
        raise ToolError(result.returncode, result.args, output=result.stdout, stderr=result.stderr)
    return result


def missing_binaries(testbin: Path = TESTBIN) -> list[str]:
    """Control-plane binaries absent from the cache (`make testbin` builds them)."""
    missing = [c for c in COMPONENTS if not os.access(testbin / c, os.X_OK)]
    return missing if (testbin / KWOK_STAGES).is_file() else [*missing, KWOK_STAGES]


AUDITED_GROUP = "system:serviceaccounts:workerfleet-system"


def write_audit_policy(workdir: Path) -> Path:
    """An audit policy recording (metadata only) the writes of ServiceAccounts of
    workerfleet-system, where the chart installs the operator; nothing else."""
    path = workdir / "audit-policy.json"
    policy = {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived"],
        "rules": [
            {
                "level": "Metadata",
                "userGroups": [AUDITED_GROUP],
                "verbs": ["create", "update", "patch", "delete"],
            },
            {"level": "None"},
        ],
    }
    path.write_text(json.dumps(policy))
    return path


def build_kubeconfig(server: str, ca_file: Path, token: str, user: str) -> str:
    """A one-context kubeconfig (JSON is valid YAML, and needs no YAML library)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "e2e", "cluster": {"server": server, "certificate-authority": str(ca_file)}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user}}],
        "current-context": "e2e",
    }
    return json.dumps(config, indent=2)


def build_fake_node(name: str) -> dict[str, object]:
    """A Node kwok will fake: annotated for kwok, untainted so ordinary pods schedule on it."""
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        },
        "status": {"capacity": resources, "allocatable": resources},
    }


def format_log_tail(name: str, path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        text = ["(no log)"]
    return f"----- {name} ({path}) -----\n" + "\n".join(text)


def build_parent_death_signal() -> Callable[[], None] | None:
    """A preexec hook making a child get SIGTERM when the test process dies (Linux prctl).

    Without it a pytest killed by SIGKILL (a CI timeout) would leave etcd, the API server and
    the rest running; teardown by PID only happens when pytest exits normally.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    parent = os.getpid()

    def set_signal() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)
        # the kernel only signals a death after this call: a test process that died between
        # the fork and here would leave this child running for good
        if os.getppid() != parent:
            os._exit(143)

    return set_signal


def start_component(name: str, command: Sequence[str], workdir: Path) -> Component:
    """Start `command` in `workdir`, its output in `workdir/logs/<name>.log`; dies with us."""
    log_path = workdir / "logs" / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            preexec_fn=build_parent_death_signal(),
        )
    return Component(name, process, log_path)


def fetch_free_port() -> int:
    """A free loopback port (the OS picks; the tiny reuse race is acceptable in tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_SECONDS)


def apply_certificates(workdir: Path) -> tuple[Path, Path, Path, Path]:
    """Generate with openssl: a CA, the API server's serving cert, the ServiceAccount key.

    Returns (ca.crt, apiserver.crt, apiserver.key, sa.key).
    """
    pki = workdir / "pki"
    pki.mkdir()
    ca_crt, ca_key = pki / "ca.crt", pki / "ca.key"
    crt, key, csr = pki / "apiserver.crt", pki / "apiserver.key", pki / "apiserver.csr"
    sa_key = pki / "sa.key"
    ext = pki / "san.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        f"DNS:kubernetes.default.svc,IP:10.0.0.1,IP:{NODE_GATEWAY_IP}\n"
        "extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca_subject = ["-subj", "/CN=workerfleet-e2e-ca"]
    sign = ["-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial", "-extfile", str(ext)]
    calls = [
        ["req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca_crt), *ca_subject],
        ["req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=kube-apiserver"],
        ["x509", "-req", "-in", str(csr), *sign, "-out", str(crt), "-days", "2"],
        ["genrsa", "-out", str(sa_key), "2048"],
    ]
    for words in calls:
        subprocess.run(["openssl", *words], check=True, capture_output=True, timeout=60)
    return ca_crt, crt, key, sa_key


def fetch_url_ok(url: str, token: str | None, context: ssl.SSLContext) -> bool:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, context=context, timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_until(
    what: str,
    predicate: Callable[[], bool],
    deadline: float,
    components: Sequence[Component],
    interval: float = 0.5,
) -> None:
    """Poll `predicate` until true; fail early if a component died, or at the deadline."""
    while True:
        for c in components:
            if c.process.poll() is not None:
                raise ClusterStartError(
                    f"{c.name} exited with {c.process.returncode} while waiting for {what}\n"
                    + format_log_tail(c.name, c.log_path, 60)
                )
        if predicate():
            return
        if time.monotonic() > deadline:
            tails = "\n".join(format_log_tail(c.name, c.log_path, 40) for c in components)
            raise ClusterStartError(f"timed out waiting for {what}\n{tails}")
        time.sleep(interval)


def start_kube_cluster(
    workdir: Path,
    node_count: int = 2,
    testbin: Path = TESTBIN,
    extra_args: Mapping[str, Sequence[str]] | None = None,
) -> KubeCluster:
    """Start the whole control plane in `workdir` and return once it schedules and runs pods.

    `extra_args` appends flags per component name (e.g. the operator benchmark raises the
    controller-manager's client QPS and turns on the API server's audit log).

    Raises ClusterStartError (with component logs) if anything fails to come up; the caller
    owns the returned cluster and must call `stop()`. Partially started processes are stopped
    before the error propagates.
    """
    missing = missing_binaries(testbin)
    if missing:
        raise FileNotFoundError(
            f"control-plane binaries missing in {testbin}: {', '.join(missing)}; "
            "run `make testbin` (builds them once, cached outside the repo)"
        )
    if shutil.which("openssl") is None:
        raise FileNotFoundError("openssl not found: the harness generates its certificates with it")
    began = time.monotonic()
    deadline = began + START_TIMEOUT_SECONDS
    ca_crt, crt, key, sa_key = apply_certificates(workdir)
    tokens = {
        "admin": secrets.token_hex(16),
        "system:kube-controller-manager": secrets.token_hex(16),
        "system:kube-scheduler": secrets.token_hex(16),
        "kwok": secrets.token_hex(16),
    }
    token_file = workdir / "pki" / "tokens.csv"
    token_file.write_text(
        "".join(f'{tok},{user},{user},"system:masters"\n' for user, tok in tokens.items())
    )
    etcd_port, etcd_peer_port = fetch_free_port(), fetch_free_port()
    api_port, cm_port, sched_port = fetch_free_port(), fetch_free_port(), fetch_free_port()
    kwok_port = fetch_free_port()
    server = f"https://127.0.0.1:{api_port}"
    kubeconfigs = {}
    for user, tok in tokens.items():
        path = workdir / f"{user.replace(':', '-')}.kubeconfig"
        path.write_text(build_kubeconfig(server, ca_crt, tok, user))
        path.chmod(0o600)
        kubeconfigs[user] = path

    cluster = KubeCluster(
        workdir=workdir,
        server=server,
        kubeconfig=kubeconfigs["admin"],
        admin_token=tokens["admin"],
        ca_file=ca_crt,
        node_names=tuple(f"kwok-node-{i}" for i in range(node_count)),
    )
    (workdir / "logs").mkdir()

    def launch(name: str, args: list[str]) -> None:
        args = [*args, *(extra_args or {}).get(name, ())]
        cluster.components.append(start_component(name, [str(testbin / name), *args], workdir))

    trusted = ssl.create_default_context(cafile=str(ca_crt))
    untrusted = ssl.create_default_context()
    untrusted.check_hostname = False
    untrusted.verify_mode = ssl.CERT_NONE  # the components' own self-signed serving certs
    try:
        launch(
            "etcd",
            [
                "--name=e2e",
                f"--data-dir={workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}",
                f"--initial-cluster=e2e=http://127.0.0.1:{etcd_peer_port}",
                # Throwaway data on a shared machine: durability costs time and buys nothing.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        wait_until(
            "etcd /health",
            lambda: fetch_url_ok(f"http://127.0.0.1:{etcd_port}/health", None, untrusted),
            deadline,
            cluster.components,
        )
        launch(
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                f"--cert-dir={workdir / 'pki' / 'apiserver'}",
                f"--tls-cert-file={crt}",
                f"--tls-private-key-file={key}",
                f"--client-ca-file={ca_crt}",
                # Without a front-proxy CA the controller-manager and scheduler log an error
                # every few ms about the empty requestheader bundle they delegate auth to.
                f"--requestheader-client-ca-file={ca_crt}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--secure-port={api_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # The `kubernetes` Service's endpoints would point at a loopback address,
                # which Endpoints reject; nothing in the tests needs them.
                "--endpoint-reconciler-type=none",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--authorization-mode=RBAC",
                f"--token-auth-file={token_file}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={sa_key}",
                f"--service-account-signing-key-file={sa_key}",
                "--allow-privileged=true",
                # Logs and exec reach the real node's kubelet by its IP (its name resolves
                # nowhere); kwok nodes report 127.0.0.1.
                "--kubelet-preferred-address-types=InternalIP",
                # Writes by the chart's ServiceAccounts (the operator) are audited: who wrote
                # what, when, with which user agent (the leader-election test reads it).
                f"--audit-policy-file={write_audit_policy(workdir)}",
                f"--audit-log-path={cluster.audit_log}",
                "--profiling=false",
                "--v=1",
            ],
        )
        wait_until(
            "kube-apiserver /readyz",
            lambda: fetch_url_ok(f"{server}/readyz", tokens["admin"], trusted),
            deadline,
            cluster.components,
        )
        cm_kubeconfig = str(kubeconfigs["system:kube-controller-manager"])
        launch(
            "kube-controller-manager",
            [
                f"--kubeconfig={cm_kubeconfig}",
                f"--authentication-kubeconfig={cm_kubeconfig}",
                f"--authorization-kubeconfig={cm_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={cm_port}",
                f"--cert-dir={workdir / 'pki' / 'controller-manager'}",
                "--controllers=*",
                "--leader-elect=false",
                f"--service-account-private-key-file={sa_key}",
                f"--root-ca-file={ca_crt}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--profiling=false",
                "--v=1",
            ],
        )
        sched_kubeconfig = str(kubeconfigs["system:kube-scheduler"])
        launch(
            "kube-scheduler",
            [
                f"--kubeconfig={sched_kubeconfig}",
                f"--authentication-kubeconfig={sched_kubeconfig}",
                f"--authorization-kubeconfig={sched_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={sched_port}",
                f"--cert-dir={workdir / 'pki' / 'scheduler'}",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ],
        )
        launch(
            "kwok",
            [
                f"--kubeconfig={kubeconfigs['kwok']}",
                f"--config={testbin / KWOK_STAGES}",
                # What kwokctl uses: nodes heartbeat through Leases, as real kubelets do.
                "--node-lease-duration-seconds=40",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                f"--server-address=127.0.0.1:{kwok_port}",
                "--node-ip=127.0.0.1",
            ],
        )
        for name in cluster.node_names:
            cluster.kubectl("apply", "-f", "-", input=json.dumps(build_fake_node(name)))
        wait_until(
            "kube-controller-manager /healthz",
            lambda: fetch_url_ok(f"https://127.0.0.1:{cm_port}/healthz", None, untrusted),
            deadline,
            cluster.components,
        )
        wait_until(
            "kube-scheduler /readyz",
            lambda: fetch_url_ok(f"https://127.0.0.1:{sched_port}/readyz", None, untrusted),
            deadline,
            cluster.components,
        )
        # Pods are admitted only once the serviceaccount controller made `default`.
        wait_until(
            "the default ServiceAccount",
            lambda: (
                cluster.kubectl("get", "sa", "default", "-n", "default", check=False).returncode
                == 0
            ),
            deadline,
            cluster.components,
            interval=1.0,
        )
        wait_until(
            f"{node_count} kwok nodes Ready",
            lambda: all(
                cluster.kubectl(
                    "get",
                    "node",
                    n,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                    check=False,
                ).stdout
                == "True"
                for n in cluster.node_names
            ),
            deadline,
            cluster.components,
            interval=1.0,
        )
    except BaseException:
        cluster.stop()
        raise
    cluster.start_seconds = time.monotonic() - began
    return cluster


@contextlib.contextmanager
def running_kube_cluster(workdir: Path, node_count: int = 2) -> Iterator[KubeCluster]:
    """Context-manager form of start_kube_cluster for scripts and non-pytest callers."""
    cluster = start_kube_cluster(workdir, node_count)
    try:
        yield cluster
    finally:
        cluster.stop()


def poll_until(
    what: str,
    fetch: Callable[[], T],
    accept: Callable[[T], bool],
    timeout_seconds: float = 60.0,
    interval: float = 0.5,
) -> T:
    """Call `fetch` until `accept` holds for its value; AssertionError with the last value."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        value = fetch()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout_seconds}s waiting for {what}: {value!r}"
            )
        time.sleep(interval)
