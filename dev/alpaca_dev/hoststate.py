"""What a node on this machine changes outside its own folder, recorded before and put back
after: a dummy interface and the CNI bridge, sysctls, iptables chains, cgroups, mounts, and the
folders that kubelet, containerd and the CNI plugins create at fixed paths. The host's cgroup
mounts are never touched: only the cgroup folders the kubelet made under them are removed."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

SYSCTLS = {
    # forwarding between the pods' bridge and the node; Service traffic between pods on the
    # same bridge must pass iptables (kube-proxy's DNAT)
    "net.ipv4.ip_forward": "1",
    "net.bridge.bridge-nf-call-iptables": "1",
}
# the kubelet sets these itself (protectKernelDefaults: false); they are put back afterwards
KUBELET_SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
)
# folders the node's programs create at fixed paths, whatever their configuration
FIXED_PATHS = (
    "/var/log/containers",
    "/var/lib/cni",
    "/var/lib/kubelet",
    "/run/containerd",
    "/var/run/netns",
    "/etc/cni",
    "/opt/cni",
)
CHAIN_PREFIXES = ("KUBE-", "CNI-")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def read_sysctl(key: str) -> str | None:
    try:
        return _sysctl_path(key).read_text().strip()
    except OSError:
        return None


def write_sysctl(key: str, value: str) -> None:
    _sysctl_path(key).write_text(value)


def _run(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check)


def mounts_under(folder: Path) -> list[str]:
    """Mount points at or under `folder`, deepest first (from /proc/self/mountinfo)."""
    prefix = str(folder.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(set(points), key=lambda p: p.count("/"), reverse=True)


def unmount_all(folder: Path) -> None:
    for point in mounts_under(folder):
        if _run("umount", point).returncode != 0:
            _run("umount", "-l", point)


def unmount_folder(folder: Path) -> list[str]:
    """Unmount everything at or under `folder`; the mounts that stayed, as problems."""
    unmount_all(folder)
    return [f"mount {m}" for m in mounts_under(folder)]


def kube_proxy_cleanup(node_bins: Path) -> None:
    """kube-proxy's own removal of the rules it made (`--cleanup`)."""
    proxy = node_bins / "kube-proxy"
    if proxy.exists():
        _run(str(proxy), "--cleanup")


def iptables_chains() -> set[tuple[str, str, str]]:
    """(tool, table, chain) of every KUBE-/CNI- chain in the IPv4 and IPv6 tables."""
    found = set()
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table in ("filter", "nat", "mangle"):
            out = _run(tool, "-w", "-t", table, "-S").stdout
            for line in out.splitlines():
                if line.startswith("-N ") and line.split()[1].startswith(CHAIN_PREFIXES):
                    found.add((tool, table, line.split()[1]))
    return found


def remove_chains(chains: set[tuple[str, str, str]]) -> None:
    """Remove the rules that jump to these chains, then the chains themselves."""
    for tool, table in {(t, tb) for t, tb, _ in chains}:
        ours = {c for t, tb, c in chains if (t, tb) == (tool, table)}
        for line in _run(tool, "-w", "-t", table, "-S").stdout.splitlines():
            parts = shlex.split(line)  # a rule's comment is quoted and has spaces (CNI's do)
            if parts[:1] == ["-A"] and any(p in ours for p in parts[2:]):
                _run(tool, "-w", "-t", table, "-D", *parts[1:])
        for chain in ours:
            _run(tool, "-w", "-t", table, "-F", chain)
        for chain in ours:
            _run(tool, "-w", "-t", table, "-X", chain)


def interfaces() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def remove_interface(name: str) -> None:
    if Path("/sys/class/net", name).exists():
        _run("ip", "link", "delete", name)


def veths_of(bridge: str) -> set[str]:
    brif = Path("/sys/class/net", bridge, "brif")
    return set(os.listdir(brif)) if brif.is_dir() else set()


def cgroup_dirs(name: str) -> list[Path]:
    """The cgroup folders named `name` under each mounted hierarchy (v1 controllers and v2)."""
    dirs = []
    for hierarchy in CGROUP_ROOT.iterdir():
        candidate = hierarchy / name.strip("/")
        if candidate.is_dir():
            dirs.append(candidate)
    return dirs


def make_cgroups(name: str) -> None:
    """The kubelet's cgroup root in every hierarchy (it must exist before the kubelet starts);
    a v1 cpuset cgroup needs its CPUs and memory nodes before anything can join it."""
    for hierarchy in CGROUP_ROOT.iterdir():
        if not hierarchy.is_dir() or hierarchy.is_symlink():
            continue
        folder = hierarchy / name.strip("/")
        folder.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if (folder / knob).exists() and not (folder / knob).read_text().strip():
                (folder / knob).write_text((hierarchy / knob).read_text())


def remove_cgroups(name: str) -> list[str]:
    """rmdir the cgroup tree `name` (deepest first) in every hierarchy; returns what stayed."""
    left = []
    for top in cgroup_dirs(name):
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: w[0].count("/"), reverse=True):
            try:
                os.rmdir(dirpath)
            except OSError:
                left.append(dirpath)
    return left


@dataclass
class HostState:
    """The host as it was before a node started, and how to put it back."""

    sysctls: dict[str, str | None] = field(default_factory=dict)
    chains: set[tuple[str, str, str]] = field(default_factory=set)
    interfaces: set[str] = field(default_factory=set)
    existing_paths: set[str] = field(default_factory=set)

    @classmethod
    def record(cls) -> HostState:
        return cls(
            sysctls={k: read_sysctl(k) for k in (*SYSCTLS, *KUBELET_SYSCTLS)},
            chains=iptables_chains(),
            interfaces=interfaces(),
            existing_paths={p for p in FIXED_PATHS if os.path.lexists(p)},
        )

    def apply_sysctls(self) -> None:
        for key, value in SYSCTLS.items():
            write_sysctl(key, value)

    def restore(self, cgroup_root: str) -> list[str]:
        """Put the host back; returns what could not be (empty when clean)."""
        problems = []
        remove_chains(iptables_chains() - self.chains)
        problems += [
            f"iptables chain {c[0]} -t {c[1]} {c[2]}" for c in iptables_chains() - self.chains
        ]
        for name in interfaces() - self.interfaces:
            remove_interface(name)
        problems += [f"network interface {n}" for n in interfaces() - self.interfaces]
        for key, value in self.sysctls.items():
            if value is not None and read_sysctl(key) != value:
                with contextlib.suppress(OSError):
                    write_sysctl(key, value)
        left = remove_cgroups(cgroup_root)
        if left:  # deepest first: the first one names the pod, the count says how many more
            problems.append(f"{len(left)} cgroup folders under {cgroup_root}, e.g. {left[0]}")
        for path in set(FIXED_PATHS) - self.existing_paths:
            if os.path.isdir(path) and not os.path.islink(path):
                unmount_all(Path(path))
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.lexists(path):
                os.unlink(path)
        problems += [
            f"path {p}" for p in set(FIXED_PATHS) - self.existing_paths if os.path.lexists(p)
        ]
        return problems


def leftover_processes(pids: list[int]) -> list[int]:
    return [pid for pid in pids if Path(f"/proc/{pid}").exists() and not _zombie(pid)]


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return re.sub(r"^.*\) ", "", stat).startswith("Z")
