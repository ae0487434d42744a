"""The configuration files of a one-node cluster on this machine: pure functions, settings in,
file text out. What each setting is for is said where it is set (see also
../shared/notes/real-node.md in the project's shared notes)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PAUSE_IMAGE = "registry.k8s.io/pause:3.10.2"
CLUSTER_DOMAIN = "cluster.local"
SOCKET_PATH_MAX = 104  # containerd's check (sun_path is 108 bytes with its NUL on Linux)


@dataclass(frozen=True)
class NodeLayout:
    """Where everything of one node lives, and its addresses."""

    name: str
    work: Path  # this run's folder: configs, sockets, state, logs, volumes
    containerd_root: Path  # content and snapshots: kept between runs (images are imported once)
    bin_dir: Path  # kubelet, kube-proxy, containerd, ctr, the runc shim, runc, coredns
    node_ip: str  # on a dummy interface the fixture creates; the apiserver listens here too
    pod_cidr: str = "10.244.0.0/24"
    cluster_cidr: str = "10.244.0.0/16"
    bridge: str = "alpaca-cni0"
    cgroup_root: str = "/alpaca-node"

    @property
    def containerd_socket(self) -> Path:
        return self.work / "containerd" / "containerd.sock"

    @property
    def sockets(self) -> list[Path]:
        """Every unix socket the node's daemons create under its folder: containerd's (which
        refuses paths over 104 bytes) and the kubelet's (the kernel's limit is 107)."""
        return [
            self.containerd_socket,
            self.containerd_socket.with_name("containerd.sock.ttrpc"),
            self.kubelet_root / "pod-resources" / "kubelet.sock",
            self.kubelet_root / "device-plugins" / "kubelet.sock",
        ]

    def too_long_sockets(self) -> list[str]:
        return [str(s) for s in self.sockets if len(str(s.absolute()).encode()) > SOCKET_PATH_MAX]

    @property
    def cni_conf_dir(self) -> Path:
        return self.work / "cni" / "net.d"

    @property
    def kubelet_root(self) -> Path:
        return self.work / "kubelet"

    @property
    def pv_root(self) -> Path:
        return self.work / "volumes"


def containerd_config(layout: NodeLayout) -> str:
    """containerd 2 (config version 3) for the CRI: runc from our build, cgroupfs, CNI from
    Debian's plugins with our conf dir, the locally built pause image pinned."""
    work = layout.work / "containerd"
    runc = {
        "runtime_type": "io.containerd.runc.v2",
        "options": {
            "BinaryName": str(layout.bin_dir / "runc"),
            "SystemdCgroup": False,
            "Root": str(work / "runc"),
        },
    }
    config: dict[str, Any] = {
        "version": 3,
        "root": str(layout.containerd_root),
        "state": str(work / "state"),
        "temp": str(work / "tmp"),
        "grpc": {"address": str(layout.containerd_socket)},
        "ttrpc": {"address": str(layout.sockets[1])},
        "plugins": {
            "io.containerd.cri.v1.runtime": {
                # this VM lacks CAP_SYS_RESOURCE: without it every sandbox fails to start
                "restrict_oom_score_adj": True,
                "containerd": {"default_runtime_name": "runc", "runtimes": {"runc": runc}},
                "cni": {"bin_dirs": ["/usr/lib/cni"], "conf_dir": str(layout.cni_conf_dir)},
            },
            "io.containerd.cri.v1.images": {
                "snapshotter": "overlayfs",
                "pinned_images": {"sandbox": PAUSE_IMAGE},
                # nothing is ever pulled: every image is imported from a local build
                "image_pull_progress_timeout": "5m0s",
            },
            "io.containerd.grpc.v1.cri": {},
            "io.containerd.internal.v1.opt": {"path": str(work / "opt")},
            "io.containerd.nri.v1.nri": {"disable": True},
        },
    }
    return _toml(config)


def _toml(data: dict[str, Any], prefix: str = "") -> str:
    """The TOML subset containerd's config needs (tables, strings, bools, ints, string lists)."""
    scalars, tables = [], []
    for key, value in data.items():
        name = f'"{key}"' if "." in key else key
        if isinstance(value, dict):
            tables.append((f"{prefix}.{name}" if prefix else name, value))
        else:
            scalars.append(f"{name} = {json.dumps(value)}")
    out = ([f"[{prefix}]"] if prefix and (scalars or not tables) else []) + scalars
    text = "\n".join(out) + ("\n" if out else "")
    for table, value in tables:
        text += ("\n" if text else "") + _toml(value, table)
    return text


def cni_config(layout: NodeLayout) -> str:
    """A bridge with the node's pod subnet, NAT out, hairpin (a pod reaching itself through a
    Service), portmap; IPAM state in this run's folder."""
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "alpaca",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": layout.bridge,
                    "isGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(layout.work / "cni" / "ipam"),
                        "ranges": [[{"subnet": layout.pod_cidr}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        },
        indent=2,
    )


def kubeconfig(server: str, ca: Path, cert: Path, key: Path, user: str) -> str:
    """A kubeconfig with a client certificate (the node agents' and CoreDNS's)."""
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "local", "cluster": {"server": server, "certificate-authority": str(ca)}}
            ],
            "users": [
                {"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}
            ],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
            "current-context": "local",
        }
    )


def kubelet_config(layout: NodeLayout, ca: Path, port: int, dns: str) -> str:
    """KubeletConfiguration for this hybrid-cgroup VM: cgroup v1 allowed, cgroupfs, no swap
    check, eviction thresholds near zero (images cannot be pulled back, so never collect
    them), webhook authn/authz against the apiserver, our pods' cgroups under one root."""
    return yaml.safe_dump(
        {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": layout.node_ip,
            "port": port,
            "readOnlyPort": 0,
            "healthzPort": 0,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(ca)},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": layout.cgroup_root,
            "failCgroupV1": False,
            "failSwapOn": False,
            "clusterDNS": [dns],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": str(layout.work / "resolv.conf"),
            "podLogsDir": str(layout.work / "pod-logs"),
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "mergeDefaultEvictionSettings": False,
            "serializeImagePulls": False,
            "maxPods": 60,
            "staticPodPath": "",
            "registerNode": True,
            "shutdownGracePeriod": "0s",
        }
    )


def kube_proxy_config(layout: NodeLayout, kubeconfig_path: Path) -> str:
    """iptables mode; conntrack settings zero so kube-proxy changes no sysctls; NodePorts not
    on loopback."""
    return yaml.safe_dump(
        {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(kubeconfig_path)},
            "hostnameOverride": layout.name,
            "bindAddress": layout.node_ip,
            "clusterCIDR": layout.cluster_cidr,
            "healthzBindAddress": "",
            "metricsBindAddress": "",
            "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        }
    )


def corefile(node_ip: str, kubeconfig_path: Path) -> str:
    """Cluster DNS for Service and pod names, answering on the node's address."""
    return f""".:53 {{
    bind {node_ip}
    errors
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig_path} local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
    loadbalance
}}
"""


def local_volumes(layout: NodeLayout, count: int, size: str) -> list[dict[str, Any]]:
    """PersistentVolumes backed by folders of this run, for PVCs of any access mode (one node:
    ReadWriteMany holds), bound by the controller-manager's PV controller like any PV."""
    volumes = []
    for i in range(count):
        volumes.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"local-{i:02d}", "labels": {"alpaca.dev/local-volume": "1"}},
                "spec": {
                    "capacity": {"storage": size},
                    "accessModes": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "local",
                    "hostPath": {"path": str(layout.pv_root / f"local-{i:02d}")},
                },
            }
        )
    return volumes


def storage_class() -> dict[str, Any]:
    """The default StorageClass: no provisioner, PVCs bind to the pre-made local volumes."""
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": "local",
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": "kubernetes.io/no-provisioner",
        "reclaimPolicy": "Retain",
        "volumeBindingMode": "Immediate",
    }
