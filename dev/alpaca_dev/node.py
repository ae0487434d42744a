"""A real one-node Kubernetes cluster on this machine: the local control plane plus
kube-controller-manager and kube-scheduler, containerd with runc, one kubelet, kube-proxy
(iptables), CoreDNS and local PersistentVolumes. Pods run for real from images built here
(`alpaca_dev.images`) and imported into containerd; nothing is pulled.

Needs root on a Linux host with cgroups (hybrid or v2), overlayfs and iptables. Everything
lives in one folder per run except containerd's content store and snapshots (kept between runs
so an image is imported once). `stop()` removes the workloads through the API, stops every
process by its pid, and puts the host back (interfaces, iptables chains, sysctls, cgroups,
mounts, the folders the programs create at fixed paths); what it could not put back is an
error, not a warning.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alpaca_dev import hoststate, nodeconfig, nodeledger
from alpaca_dev.controlplane import ControlPlane, ControlPlaneError, _tail, free_port, wait_for
from alpaca_dev.imageimport import forget_older, import_into_containerd
from alpaca_dev.images import BuiltImage
from alpaca_dev.pki import issue_client_cert

NODE_NAME = "alpaca-node"
NODE_IP = "10.255.255.1"  # on an interface this fixture creates and removes
NODE_INTERFACE = "alpaca-node0"
KUBERNETES_SERVICE_IP = "10.96.0.1"
NODE_BINARIES = ("kubelet", "kube-proxy", "containerd", "ctr", "containerd-shim-runc-v2", "runc")
CNI_PLUGINS = ("bridge", "host-local", "portmap", "loopback")
SYSTEM_NAMESPACES = {"default", "kube-system", "kube-public", "kube-node-lease"}


class NodeUnavailable(RuntimeError):
    """This machine cannot run a node (not root, no cgroups, binaries missing): the reason."""


def check_host(node_bins: Path) -> None:
    """Raise NodeUnavailable with what is missing."""
    if os.geteuid() != 0:
        raise NodeUnavailable("a kubelet and containerd need root")
    if not Path("/sys/fs/cgroup").is_dir() or not os.listdir("/sys/fs/cgroup"):
        raise NodeUnavailable("no cgroup hierarchy is mounted at /sys/fs/cgroup")
    missing = [b for b in (*NODE_BINARIES, "coredns") if not (node_bins / b).is_file()]
    if missing:
        raise NodeUnavailable(f"{', '.join(missing)} not in {node_bins}: run `make node-bins`")
    plugins = [p for p in CNI_PLUGINS if not Path("/usr/lib/cni", p).is_file()]
    tools = [t for t in ("iptables", "ip", "mount") if shutil.which(t) is None]
    if plugins or tools:
        raise NodeUnavailable(
            f"missing {', '.join(plugins + tools)}: run scripts/host-packages.sh (as root)"
        )


@dataclass
class Node:
    """One node and its control plane. Use as a context manager, or call start() and stop()."""

    k8s_bins: Path  # kube-apiserver, etcd, kubectl, kube-controller-manager, kube-scheduler
    node_bins: Path  # kubelet, kube-proxy, containerd, ctr, the runc shim, runc, coredns
    work: Path
    containerd_root: Path
    images: list[BuiltImage] = field(default_factory=list)  # imported unless containerd has them
    volumes: int = 16
    volume_size: str = "20Gi"
    cp: ControlPlane = field(init=False)
    layout: nodeconfig.NodeLayout = field(init=False)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    host: hoststate.HostState | None = None
    lock_timeout: float = 1800  # another node on this machine: wait this long for it
    lock: nodeledger.MachineLock = field(default_factory=nodeledger.MachineLock)

    def __post_init__(self) -> None:
        self.layout = nodeconfig.NodeLayout(
            name=NODE_NAME,
            work=self.work,
            containerd_root=self.containerd_root,
            bin_dir=self.node_bins,
            node_ip=NODE_IP,
        )
        self.cp = ControlPlane(
            bin_dir=self.k8s_bins,
            workdir=self.work / "cp",
            address=NODE_IP,
            extra_sans=(KUBERNETES_SERVICE_IP,),
        )

    def __enter__(self) -> Node:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- start ------------------------------------------------------------------------

    def start(self, timeout: float = 180) -> None:
        if too_long := self.layout.too_long_sockets():  # before anything on the host changes
            raise ControlPlaneError(
                f"the node's folder {self.work} is too deep for its daemons' sockets (at most "
                f"{nodeconfig.SOCKET_PATH_MAX} bytes): {', '.join(too_long)}; give it a shorter one"
            )
        check_host(self.node_bins)
        self.lock.acquire(self.lock_timeout)  # not in the try: another node's state is not ours
        try:
            self._recover_dead_node()
        except BaseException:
            self.lock.release(keep_ledger=True)  # what could not be put back stays on record
            raise
        try:
            self.work.mkdir(parents=True, exist_ok=True)
            self.host = hoststate.HostState.record()
            self.lock.record(
                nodeledger.Ledger(
                    pid=os.getpid(),
                    work=str(self.work.resolve()),
                    cgroup_root=self.layout.cgroup_root,
                    node_bins=str(self.node_bins),
                    host=nodeledger.host_state_to_json(self.host),
                )
            )
            self._network()
            self.cp.start()
            self.cp.start_controller_manager(["*"])
            self.cp.start_scheduler()
            self._write_configs()
            self._start_containerd(timeout)
            ctr, address = self.node_bins / "ctr", str(self.layout.containerd_socket)
            import_into_containerd(ctr, address, self.images, self.containerd_root)
            forget_older(ctr, address, self.images)
            self._start_kubelet(timeout)
            self._start_kube_proxy(timeout)
            self._start_coredns(timeout)
            self._storage()
            wait_for(self._default_account, "the default ServiceAccount", timeout)
        except BaseException:
            self.stop()
            raise

    def _recover_dead_node(self) -> None:
        """Put back what a node that died without stopping left (its ledger says what)."""
        dead = self.lock.left_behind()
        if dead is not None:
            problems = nodeledger.recover(dead)
            if problems:
                raise ControlPlaneError(
                    f"a node that died (pid {dead.pid}, folder {dead.work}) left behind what "
                    f"could not be put back: {'; '.join(problems)}"
                )
            self.lock.release_ledger()
        if Path("/sys/class/net", NODE_INTERFACE).exists():
            raise NodeUnavailable(
                f"interface {NODE_INTERFACE} exists but no node holds this machine and no "
                f"ledger says whose it is: remove it (ip link delete {NODE_INTERFACE}) and the "
                "rest of that node (kube-proxy --cleanup, its mounts) by hand"
            )

    def _network(self) -> None:
        # a bridge without ports holds the address (this kernel has no dummy interfaces)
        subprocess.run(["ip", "link", "add", NODE_INTERFACE, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", f"{NODE_IP}/32", "dev", NODE_INTERFACE], check=True)
        subprocess.run(["ip", "link", "set", NODE_INTERFACE, "up"], check=True)
        assert self.host is not None
        self.host.apply_sysctls()
        hoststate.make_cgroups(self.layout.cgroup_root)

    def _write_configs(self) -> None:
        layout, pki = self.layout, self.cp.pki
        assert pki is not None
        certs = self.work / "certs"
        kubelet_cert = issue_client_cert(
            pki, certs, "kubelet", f"system:node:{NODE_NAME}", "system:nodes"
        )
        proxy_cert = issue_client_cert(pki, certs, "kube-proxy", "system:kube-proxy")
        for name, cert, user in (
            ("kubelet", kubelet_cert, f"system:node:{NODE_NAME}"),
            ("kube-proxy", proxy_cert, "system:kube-proxy"),
            ("coredns", pki.admin_cert, "alpaca-admin"),
        ):
            key = cert.with_suffix(".key") if name != "coredns" else pki.admin_key
            text = nodeconfig.kubeconfig(self.cp.url, pki.ca_cert, cert, key, user)
            (self.work / f"{name}.kubeconfig").write_text(text)
        (self.work / "containerd").mkdir(exist_ok=True)
        (self.work / "containerd" / "config.toml").write_text(nodeconfig.containerd_config(layout))
        layout.cni_conf_dir.mkdir(parents=True, exist_ok=True)
        (layout.cni_conf_dir / "10-alpaca.conflist").write_text(nodeconfig.cni_config(layout))
        (self.work / "resolv.conf").write_text("")  # pods resolve cluster names only
        self.kubelet_port = free_port()
        kubelet = nodeconfig.kubelet_config(layout, pki.ca_cert, self.kubelet_port, NODE_IP)
        (self.work / "kubelet.yaml").write_text(kubelet)
        proxy = nodeconfig.kube_proxy_config(layout, self.work / "kube-proxy.kubeconfig")
        (self.work / "kube-proxy.yaml").write_text(proxy)
        self.coredns_ready = free_port()
        corefile = nodeconfig.corefile(NODE_IP, self.work / "coredns.kubeconfig")
        corefile = corefile.replace(
            "    errors\n", f"    errors\n    ready 127.0.0.1:{self.coredns_ready}\n"
        )
        (self.work / "Corefile").write_text(corefile)

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.work / f"{name}.log").open("wb")
        path = f"{self.node_bins}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        self.processes[name] = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.work,
            env={**os.environ, "PATH": path, **(env or {})},
        )
        log.close()

    def _alive(self, name: str) -> None:
        proc = self.processes[name]
        if proc.poll() is not None:
            raise ControlPlaneError(
                f"{name} exited with {proc.returncode}:\n{_tail(self.work / f'{name}.log')}"
            )

    def ctr(self, *args: str, check: bool = True, timeout: float = 600) -> str:
        """`ctr` against this node's containerd, in the CRI's namespace."""
        command = [str(self.node_bins / "ctr"), "-a", str(self.layout.containerd_socket)]
        done = subprocess.run(
            [*command, "-n", "k8s.io", *args], capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise ControlPlaneError(f"ctr {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def _start_containerd(self, timeout: float) -> None:
        config = self.work / "containerd" / "config.toml"
        self._spawn("containerd", [str(self.node_bins / "containerd"), "--config", str(config)])

        def up() -> bool:
            self._alive("containerd")
            return self.layout.containerd_socket.exists() and (
                subprocess.run(
                    [
                        str(self.node_bins / "ctr"),
                        "-a",
                        str(self.layout.containerd_socket),
                        "version",
                    ],
                    capture_output=True,
                ).returncode
                == 0
            )

        wait_for(up, "containerd", timeout)

    def _start_kubelet(self, timeout: float) -> None:
        self._spawn(
            "kubelet",
            [
                str(self.node_bins / "kubelet"),
                f"--config={self.work / 'kubelet.yaml'}",
                f"--kubeconfig={self.work / 'kubelet.kubeconfig'}",
                f"--root-dir={self.layout.kubelet_root}",
                f"--cert-dir={self.work / 'kubelet-pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                "--v=1",
            ],
        )

        def ready() -> bool:
            self._alive("kubelet")
            node = self.cp.get_json("node", NODE_NAME) or {}
            conds = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
            return conds.get("Ready") == "True"

        wait_for(ready, f"node {NODE_NAME} Ready", timeout, interval=1)

    def _start_kube_proxy(self, timeout: float) -> None:
        self._spawn(
            "kube-proxy",
            [str(self.node_bins / "kube-proxy"), f"--config={self.work / 'kube-proxy.yaml'}"],
        )
        assert self.cp.pki is not None
        ctx = ssl.create_default_context(cafile=str(self.cp.pki.ca_cert))

        def routed() -> bool:  # the `kubernetes` Service answers through kube-proxy's rules
            self._alive("kube-proxy")
            try:
                url = f"https://{KUBERNETES_SERVICE_IP}/readyz"
                with urllib.request.urlopen(url, context=ctx, timeout=3):
                    return True
            except urllib.error.HTTPError:
                return True  # 401/403: reached the apiserver
            except OSError:
                return False

        wait_for(routed, "the kubernetes Service through kube-proxy", timeout, interval=1)

    def _start_coredns(self, timeout: float) -> None:
        self._spawn(
            "coredns", [str(self.node_bins / "coredns"), "-conf", str(self.work / "Corefile")]
        )

        def ready() -> bool:
            self._alive("coredns")
            try:
                url = f"http://127.0.0.1:{self.coredns_ready}/ready"
                with urllib.request.urlopen(url, timeout=3) as resp:
                    return resp.status == 200
            except OSError:
                return False

        wait_for(ready, "CoreDNS", timeout, interval=1)

    def _storage(self) -> None:
        self.layout.pv_root.mkdir(parents=True, exist_ok=True)
        objects: list[dict[str, Any]] = [nodeconfig.storage_class()]
        for pv in nodeconfig.local_volumes(self.layout, self.volumes, self.volume_size):
            folder = Path(pv["spec"]["hostPath"]["path"])
            folder.mkdir(exist_ok=True)
            folder.chmod(0o1777)  # hostPath ignores fsGroup: any pod user may write
            objects.append(pv)
        self.cp.kubectl_run(
            "apply",
            "-f",
            "-",
            input=json.dumps({"kind": "List", "apiVersion": "v1", "items": objects}),
        )

    def _default_account(self) -> bool:
        return self.cp.get_json("serviceaccount", "default", "default") is not None

    # --- use --------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        return self.cp.env()

    def resolve(self, name: str) -> str | None:
        """An address CoreDNS gives for a cluster name (A record), or None."""
        query = _dns_query(name)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(3)
            sock.sendto(query, (NODE_IP, 53))
            try:
                answer = sock.recv(4096)
            except OSError:
                return None
        return _first_a_record(answer)

    # --- stop -------------------------------------------------------------------------

    def stop(self) -> None:
        if not self.lock.held:
            return  # started nothing: the machine is another node's or nobody's
        problems: list[str] = []
        if "kubelet" in self.processes and self.cp.processes:
            with contextlib.suppress(Exception):
                self._delete_workloads()
        for name in ("kube-proxy", "coredns", "kubelet"):
            self._stop(name)
        hoststate.kube_proxy_cleanup(self.node_bins)
        if "containerd" in self.processes and self.processes["containerd"].poll() is None:
            with contextlib.suppress(Exception):
                self._remove_containers()
        self._stop("containerd")
        with contextlib.suppress(Exception):
            self.cp.stop()
        problems += hoststate.unmount_folder(self.work)
        if self.host is not None:
            problems += self.host.restore(self.layout.cgroup_root)
        shutil.rmtree(self.work / "containerd", ignore_errors=True)
        # with leftovers the ledger stays: the next node on this machine puts them back
        self.lock.release(keep_ledger=bool(problems))
        if problems:
            raise ControlPlaneError("the node left behind: " + "; ".join(problems))

    def _stop(self, name: str, timeout: float = 30) -> None:
        proc = self.processes.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def _delete_workloads(self, timeout: float = 120) -> None:
        """Every namespace of the tests, and whatever pods are left: the kubelet tears down
        their containers, volumes and network (CNI DEL) as in any cluster."""
        out = self.cp.kubectl_run("get", "namespaces", "-o", "name").stdout.split()
        for ns in (n.removeprefix("namespace/") for n in out):
            if ns not in SYSTEM_NAMESPACES:
                self.cp.kubectl_run("delete", "namespace", ns, "--wait=false", check=False)
        self.cp.kubectl_run("delete", "pods", "--all", "-A", "--wait=false", check=False)
        deadline = time.monotonic() + timeout
        while self._pods_on_node() and time.monotonic() < deadline:
            time.sleep(1)
        self.cp.kubectl_run(
            "delete", "pods", "--all", "-A", "--grace-period=0", "--force", check=False
        )

    def _pods_on_node(self) -> list[str]:
        return self.ctr("tasks", "ls", "-q", check=False).split()

    def _remove_containers(self) -> None:
        """Containers (sandboxes too) left in containerd's store, so the next run starts
        clean; the images stay."""
        for task in self.ctr("tasks", "ls", "-q", check=False).split():
            self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
        time.sleep(1)
        for task in self.ctr("tasks", "ls", "-q", check=False).split():
            self.ctr("tasks", "delete", "-f", task, check=False)
        for container in self.ctr("containers", "ls", "-q", check=False).split():
            self.ctr("containers", "delete", container, check=False)


def _dns_query(name: str) -> bytes:
    """A minimal DNS query (A, recursion desired) for `name`."""
    header = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split("."))
    return header + labels + b"\x00\x00\x01\x00\x01"


def _first_a_record(answer: bytes) -> str | None:
    if len(answer) < 12 or int.from_bytes(answer[6:8], "big") == 0:
        return None
    pos = 12
    while answer[pos] != 0:  # skip the question's name
        pos += answer[pos] + 1
    pos += 5
    for _ in range(int.from_bytes(answer[6:8], "big")):
        pos += 2 if answer[pos] & 0xC0 == 0xC0 else answer.index(b"\x00", pos) + 1 - pos
        rtype, length = (
            int.from_bytes(answer[pos : pos + 2], "big"),
            int.from_bytes(answer[pos + 8 : pos + 10], "big"),
        )
        pos += 10
        if rtype == 1 and length == 4:
            return ".".join(str(b) for b in answer[pos : pos + 4])
        pos += length
    return None
