"""A real Kubernetes node for the end-to-end tests: kubelet + containerd + runc + a CNI bridge.

`start_real_node` joins one real node to a running test control plane (tests/e2e/kubecluster.py)
next to its kwok nodes: a private containerd (its own root, state directory and socket), the
kubelet built by `scripts/testbin.sh`, and a CNI bridge on a private /24 that only the pods, the
host's gateway address and the tests use. Images come from OCI archives (`scripts/build-images.sh`,
no registry is needed) imported into containerd's `k8s.io` namespace. Used by the `real_node`
fixture in tests/e2e/conftest.py; everything it starts is stopped by PID, every mount under its
work directory unmounted and the bridge, firewall rules and cgroups removed.

Why these choices:
- The node is tainted and labelled (`REAL_NODE_TAINT`, `REAL_NODE_LABEL`): the kwok tests' pods
  name images that exist nowhere, so only pods that tolerate the taint land here.
- The kubelet authenticates with a TokenRequest token of a ServiceAccount bound to
  cluster-admin: the control plane's static token file is fixed at its start, and the kubelet's
  own authorization is not what these tests are about.
- cgroup v1 only on this machine: kubelet v1.35 refuses it unless `failCgroupV1: false`. Its
  pods live under their own cgroup root, removed at teardown.
- Pods reach the host only through the bridge's gateway address: the tests bind Redis and a
  forwarder to the API server there. Forwarding between the bridge and any other interface is
  dropped (iptables), so no pod traffic leaves the machine. The gateway address is also the
  node's IP (the kubelet refuses a loopback one): the API server reaches the kubelet there.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e import kubecluster, oci_images

KUBELET = kubecluster.TESTBIN / "kubelet"
# The bridge's subnet is fixed: the API server's certificate names the gateway, so pods can
# verify it. One real node per machine at a time.
GATEWAY_IP = kubecluster.NODE_GATEWAY_IP
SUBNET_PREFIX = GATEWAY_IP.rsplit(".", 1)[0]
BRIDGE = "wfe2e0"
# Held (flock) by the session whose node owns the bridge. The kernel drops it when that process
# dies, however it dies: a free lock beside an existing bridge means a dead session's leftovers.
NETWORK_LOCK = Path(tempfile.gettempdir()) / "workerfleet-e2e-node.lock"
NODE_NAME = "real-node-0"
REAL_NODE_LABEL = ("workerfleet.io/e2e-node", "real")
REAL_NODE_TAINT = ("workerfleet.io/e2e-real-node", "true", "NoSchedule")
PAUSE_IMAGE = "docker.io/workerfleet/pause:0.1.0"
CGROUP_V1_ROOT = Path("/sys/fs/cgroup")
START_TIMEOUT_SECONDS = 180.0
# The kubelet sets these kernel parameters to its defaults at start; teardown puts the
# machine's own values back.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
NODE_TOOLS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "ip", "iptables")
CNI_BIN = Path("/usr/lib/cni")


class NodeStartError(RuntimeError):
    """The real node did not come up; the message carries containerd's and the kubelet's logs."""


@dataclass
class RealNode:
    """Handle on the running node: its processes, network and how to tear it all down."""

    name: str
    workdir: Path
    socket: Path
    cgroup_name: str
    components: list[kubecluster.Component] = field(default_factory=list)
    forwarders: list[TcpForwarder] = field(default_factory=list)
    firewall_rules: list[list[str]] = field(default_factory=list)
    bridge_created: bool = False
    network_lock: int | None = None
    start_seconds: float = 0.0
    # Measurements the tests report in the terminal summary (drain timelines).
    reports: list[str] = field(default_factory=list)
    saved_sysctls: dict[str, str] = field(default_factory=dict)

    def ctr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """`ctr` against this node's containerd, in the kubelet's `k8s.io` namespace."""
        return run_checked(["ctr", "--address", str(self.socket), "-n", "k8s.io", *args], timeout)

    def apply_image(self, image: oci_images.Image) -> None:
        """Import an OCI archive into containerd (the kubelet never pulls: no registry here)."""
        self.ctr("images", "import", "--all-platforms", str(image.archive))

    def forward(self, target_port: int) -> int:
        """Listen on the gateway address and forward to 127.0.0.1:`target_port`; return the port."""
        forwarder = TcpForwarder(GATEWAY_IP, target_port)
        self.forwarders.append(forwarder)
        return forwarder.port

    def log_tails(self, lines: int = 40) -> str:
        return "\n".join(
            kubecluster.format_log_tail(c.name, c.log_path, lines) for c in self.components
        )

    def stop(self) -> None:
        """Kubelet first, then every container task, containerd and its shims, all by PID."""
        for forwarder in self.forwarders:
            forwarder.close()
        self.forwarders.clear()
        kubelet = [c for c in self.components if c.name == "kubelet"]
        for component in kubelet:
            kubecluster.stop_process(component.process)
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.kill_tasks()
        for component in reversed(self.components):
            kubecluster.stop_process(component.process)
        self.components.clear()
        for pid in self.shim_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        unmount_under(self.workdir)
        remove_cgroups(self.cgroup_name)
        for name, value in self.saved_sysctls.items():
            with contextlib.suppress(OSError):
                (Path("/proc/sys") / name).write_text(value)
        self.saved_sysctls.clear()
        for rule in reversed(self.firewall_rules):
            subprocess.run(["iptables", "-D", *rule], capture_output=True, timeout=30)
        self.firewall_rules.clear()
        if self.bridge_created:
            subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, timeout=30)
            self.bridge_created = False
        if self.network_lock is not None:
            os.close(self.network_lock)
            self.network_lock = None
        # Unpacked images and volumes are hundreds of MB: keep only the logs.
        for entry in self.workdir.iterdir():
            if entry.name != "logs" and not is_mount_point_below(entry):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)

    def kill_tasks(self) -> None:
        """SIGKILL every container process containerd still runs (the pods' and sandboxes')."""
        listing = self.ctr("tasks", "list", "-q", timeout=30).stdout.split()
        for task in listing:
            self.ctr("tasks", "kill", "-s", "SIGKILL", task, timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self.ctr("tasks", "list", "-q").stdout.split():
            time.sleep(0.2)

    def shim_pids(self) -> list[int]:
        """The runc shims serving this containerd (they name its socket on their command line)."""
        found = []
        needle = str(self.socket).encode()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if needle in (entry / "cmdline").read_bytes():
                        found.append(int(entry.name))
        return found


class TcpForwarder:
    """A thread forwarding TCP connections from (host, any port) to 127.0.0.1:target_port.

    Pods cannot reach loopback addresses of the host; the API server listens only there.
    """

    def __init__(self, host: str, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server((host, 0))
        self.port: int = self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self.accept_forever, daemon=True).start()

    def accept_forever(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(source, sink), daemon=True).start()

    def close(self) -> None:
        self.closed = True
        self.listener.close()


def pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    for s in (source, sink):
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)


def run_checked(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise kubecluster.ToolError(
            result.returncode, args, output=result.stdout, stderr=result.stderr
        )
    return result


def missing_node_tools() -> list[str]:
    """What the real node needs and this machine lacks (`make e2e` installs and builds it)."""
    missing = [tool for tool in NODE_TOOLS if shutil.which(tool) is None]
    missing += [f"{CNI_BIN}/{p}" for p in ("bridge", "host-local", "loopback")
                if not (CNI_BIN / p).exists()]  # fmt: skip
    if not os.access(KUBELET, os.X_OK):
        missing.append(str(KUBELET))
    if os.geteuid() != 0:
        missing.append("root (containerd, runc and the kubelet run as root)")
    return missing


def mount_points_under(root: Path) -> list[str]:
    """Mount points at or below `root` (from /proc/self/mountinfo)."""
    prefix = str(root.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return points


def is_mount_point_below(path: Path) -> bool:
    """Whether something is still mounted at or below `path` (then it must not be removed)."""
    return bool(mount_points_under(path))


def unmount_under(root: Path) -> None:
    """Unmount every mount point below `root`, deepest first (kubelet volumes, overlays)."""
    for _ in range(3):
        points = mount_points_under(root)
        if not points:
            return
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)


def cgroup_dirs(name: str) -> list[Path]:
    """This node's cgroup root in each cgroup v1 hierarchy."""
    return [
        h / name
        for h in sorted(CGROUP_V1_ROOT.iterdir())
        if h.is_dir() and h.name != "unified" and not h.is_symlink()
    ]


def apply_cgroup_root(name: str) -> None:
    """Create the node's cgroup root in every hierarchy (the kubelet requires it to exist)."""
    for top in cgroup_dirs(name):
        top.mkdir(exist_ok=True)
        if top.parent.name == "cpuset":
            # A new cpuset cgroup starts with no CPUs and no memory nodes: give it the parent's.
            for knob in ("cpuset.cpus", "cpuset.mems"):
                (top / knob).write_text((top.parent / knob).read_text())


def remove_cgroups(name: str) -> None:
    """rmdir the node's cgroup trees bottom-up (only empty cgroups can go; ours are by now)."""
    for top in cgroup_dirs(name):
        if not top.exists():
            continue
        for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                path.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def build_cni_config(ipam_dir: Path) -> dict[str, object]:
    """The pods' network: one bridge, host-local addresses, the gateway on the host, no NAT."""
    return {
        "cniVersion": "0.4.0",
        "name": "workerfleet-e2e",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": f"{SUBNET_PREFIX}.0/24", "gateway": GATEWAY_IP}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ipam_dir),
                },
            }
        ],
    }


def build_containerd_config(workdir: Path, socket_path: Path) -> str:
    """containerd's config: private root/state/socket, the CRI plugin with our CNI and pause."""
    return f"""version = 2
root = "{workdir / "root"}"
state = "{workdir / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{socket_path}"
[ttrpc]
  address = "{socket_path}.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{workdir / "opt"}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # This machine's root lacks CAP_SYS_RESOURCE, so no process may lower its oom_score_adj; the
  # kubelet asks -998 for every sandbox, which runc then fails to set ("failed to update
  # /proc/self/oom_score_adj: Permission denied"). Clamp at containerd's own score instead.
  restrict_oom_score_adj = true
  # Pod network namespaces are bind-mounted under the state directory (not the host's
  # /var/run/netns), so teardown finds and unmounts them with everything else.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{workdir / "net.d"}"
"""


def build_kubelet_config(
    workdir: Path, socket_path: Path, cgroup_name: str, port: int, healthz_port: int
) -> str:
    """The kubelet's KubeletConfiguration (JSON is YAML), tuned for a test machine."""
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # This machine has cgroup v1 only; v1.35 refuses it without this.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{cgroup_name}",
        "containerRuntimeEndpoint": f"unix://{socket_path}",
        # Kept with the node's own logs at teardown (the default is the host's /var/log/pods).
        "podLogsDir": str(workdir / "logs" / "pods"),
        # The node's address (the kubelet refuses a loopback node IP): the API server reaches
        # the kubelet there for logs and exec, over the private bridge.
        "address": GATEWAY_IP,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {
            "anonymous": {"enabled": True},
            "webhook": {"enabled": False},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "registerNode": True,
        "registerWithTaints": [
            {"key": REAL_NODE_TAINT[0], "value": REAL_NODE_TAINT[1], "effect": REAL_NODE_TAINT[2]}
        ],
        "failSwapOn": False,
        "resolvConf": "",
        "maxPods": 30,
        # Image-filesystem stats are unavailable on this machine's disk; the images cannot be
        # pulled again if garbage-collected, so neither eviction nor image GC may act.
        "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "localStorageCapacityIsolation": False,
        "serializeImagePulls": False,
        "syncFrequency": "5s",
        "fileCheckFrequency": "5s",
        "nodeStatusUpdateFrequency": "5s",
        "shutdownGracePeriod": "0s",
        "enableServer": True,
        "enableDebuggingHandlers": True,
        "staticPodPath": "",
        "protectKernelDefaults": False,
        "makeIPTablesUtilChains": False,
    }
    return json.dumps(config, indent=2)


def apply_node_identity(cluster: kubecluster.KubeCluster, path: Path) -> None:
    """A ServiceAccount bound to cluster-admin, and a kubeconfig with its token at `path`."""
    account = "workerfleet-e2e-node"
    cluster.kubectl("create", "sa", account, "-n", "kube-system")
    cluster.kubectl(
        "create", "clusterrolebinding", account, "--clusterrole=cluster-admin",
        f"--serviceaccount=kube-system:{account}",
    )  # fmt: skip
    token = cluster.fetch_service_account_token("kube-system", account, 24 * 3600)
    cluster.write_kubeconfig(path, token, account)


def firewall_rules_for(bridge: str) -> list[list[str]]:
    """The FORWARD rules that keep traffic from and to `bridge` on it."""
    return [
        ["FORWARD", "-i", bridge, "!", "-o", bridge, "-j", "DROP"],
        ["FORWARD", "!", "-i", bridge, "-o", bridge, "-j", "DROP"],
    ]


def bridge_exists(name: str) -> bool:
    """Whether a network link called `name` exists on this machine."""
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


def claim_network(lock_path: Path, bridge: str) -> tuple[int, list[str]]:
    """Take the one-real-node-per-machine lock, then remove what a dead session left of `bridge`.

    The fixed subnet allows one node per machine. A session that is killed (a CI job cancelled,
    a machine restarted under it) never reaches its teardown: its bridge and firewall rules stay
    and would refuse every later session. The lock tells the two cases apart: held means a live
    session owns the bridge (refused, naming its PID); free means the bridge is a leftover,
    removed here. Returns the lock's descriptor (closing it releases the lock) and what was
    removed.
    """
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(descriptor)
        raise NodeStartError(
            f"another real-node test session runs (PID {owner} holds {lock_path}): the node's "
            f"subnet allows one per machine; wait for it to end or end it"
        ) from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    removed = []
    for rule in firewall_rules_for(bridge):
        # Bounded: a session adds each rule once; a few dead sessions could have left copies.
        for _ in range(8):
            deleted = subprocess.run(["iptables", "-D", *rule], capture_output=True, timeout=30)
            if deleted.returncode != 0:
                break
            removed.append("iptables " + " ".join(rule))
    if bridge_exists(bridge):
        run_checked(["ip", "link", "del", bridge], 30)
        removed.append(f"bridge {bridge}")
    return descriptor, removed


def apply_network(node: RealNode) -> None:
    """The bridge with the gateway address, and the rules that keep pod traffic on it."""
    node.network_lock, removed = claim_network(NETWORK_LOCK, BRIDGE)
    if removed:
        node.reports.append("removed a dead real-node session's leftovers: " + "; ".join(removed))
    run_checked(["ip", "link", "add", BRIDGE, "type", "bridge"], 30)
    node.bridge_created = True
    run_checked(["ip", "addr", "add", f"{GATEWAY_IP}/24", "dev", BRIDGE], 30)
    run_checked(["ip", "link", "set", BRIDGE, "up"], 30)
    for rule in firewall_rules_for(BRIDGE):
        run_checked(["iptables", "-I", *rule], 30)
        node.firewall_rules.append(rule)


def wait_for(what: str, predicate: Callable[[], bool], deadline: float, node: RealNode) -> None:
    try:
        kubecluster.wait_until(what, predicate, deadline, node.components, interval=0.5)
    except kubecluster.ClusterStartError as error:
        raise NodeStartError(str(error)) from error


def start_real_node(
    cluster: kubecluster.KubeCluster, workdir: Path, images: list[oci_images.Image]
) -> RealNode:
    """Start containerd and the kubelet in `workdir`, import `images`, wait for node Ready.

    Raises NodeStartError with both logs if anything fails; the caller owns the node and must
    call `stop()` (partial starts are stopped before the error propagates).
    """
    missing = missing_node_tools()
    if missing:
        raise FileNotFoundError(
            "the real node needs: " + ", ".join(missing) + " (`make e2e` installs the Debian "
            "packages with scripts/ensure-node-deps.sh and builds the kubelet with make testbin)"
        )
    began = time.monotonic()
    deadline = began + START_TIMEOUT_SECONDS
    workdir.mkdir(parents=True, exist_ok=True)
    # A unix socket path must fit in 108 bytes: keep the runtime's own files short-pathed.
    socket_path = workdir / "containerd.sock"
    node = RealNode(NODE_NAME, workdir, socket_path, f"workerfleet-e2e-{secrets.token_hex(3)}")
    (workdir / "logs").mkdir(exist_ok=True)

    def launch(name: str, args: list[str]) -> None:
        node.components.append(kubecluster.start_component(name, args, workdir))

    try:
        apply_network(node)
        (workdir / "net.d").mkdir()
        (workdir / "net.d" / "10-workerfleet-e2e.conflist").write_text(
            json.dumps(build_cni_config(workdir / "ipam"), indent=2)
        )
        config = workdir / "containerd.toml"
        config.write_text(build_containerd_config(workdir, socket_path))
        launch("containerd", ["containerd", "--config", str(config)])
        wait_for(
            "containerd's socket",
            lambda: (
                subprocess.run(
                    ["ctr", "--address", str(socket_path), "version"], capture_output=True
                ).returncode
                == 0
            ),
            deadline,
            node,
        )
        for image in images:
            node.apply_image(image)
        apply_cgroup_root(node.cgroup_name)
        kubeconfig = workdir / "kubelet.kubeconfig"
        apply_node_identity(cluster, kubeconfig)
        for name in KUBELET_SYSCTLS:
            with contextlib.suppress(OSError):
                node.saved_sysctls[name] = (Path("/proc/sys") / name).read_text()
        healthz_port = kubecluster.fetch_free_port()
        kubelet_config = workdir / "kubelet.json"
        kubelet_config.write_text(
            build_kubelet_config(
                workdir, socket_path, node.cgroup_name, kubecluster.fetch_free_port(), healthz_port
            )
        )
        launch(
            "kubelet",
            [
                str(KUBELET),
                f"--config={kubelet_config}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={workdir / 'kubelet'}",
                f"--cert-dir={workdir / 'kubelet-pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={GATEWAY_IP}",
                f"--node-labels={REAL_NODE_LABEL[0]}={REAL_NODE_LABEL[1]}",
                "--v=2",
            ],
        )
        wait_for(
            f"node {NODE_NAME} Ready",
            lambda: cluster.kubectl(
                "get", "node", NODE_NAME, "-o",
                "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False,
            ).stdout == "True",
            deadline,
            node,
        )  # fmt: skip
    except BaseException:
        node.stop()
        raise
    node.start_seconds = time.monotonic() - began
    return node
