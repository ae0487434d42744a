"""Simulated capacity on the real control plane: KWOK plays the kubelets of GPU nodes that do
not exist (nodes go Ready, scheduled pods run, Job pods complete, PVCs bind), Karpenter's own
controller with its KWOK cloud provider turns NodePools into NodeClaims and KWOK nodes, and the
real Kueue admits suspended Jobs against ClusterQueue quota. Everything else is real: the
apiserver, kube-scheduler, kube-controller-manager, the KubeRay operator, the operator.

Each piece runs as a process of the ControlPlane (its log in the control plane's folder, stopped
with it); the binaries come from scripts/thirdparty.sh (built from their Go modules, cached).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from alpaca_dev.controlplane import ControlPlane, free_port, wait_for
from alpaca_dev.stack import thirdparty

FAKE_NODE = ("kwok.x-k8s.io/node", "fake")
"""The annotation KWOK manages nodes by (Karpenter's KWOK provider sets it on its nodes)."""
GPU = "nvidia.com/gpu"
POD_CIDR = "10.123.0.0/16"  # KWOK's pods' addresses (nothing answers there; see fakeray.py)
GPU_TAINT = {"key": GPU, "value": "true", "effect": "NoSchedule"}
NODE_STAGES = ("node-initialize.yaml", "node-heartbeat.yaml")
POD_STAGES = ("pod-ready.yaml", "pod-complete.yaml", "pod-delete.yaml")
VOLUME_STAGES = ("pvc-provision.yaml", "pv-bind.yaml", "pv-delete.yaml", "pvc-delete.yaml")
STORAGE_CLASS = "storage-class.yaml"  # kwok-volume, the default class: PVCs bind at once


def node(
    name: str,
    *,
    gpus: int = 0,
    gpu_product: str = "NVIDIA-A10G",
    labels: dict[str, str] | None = None,
    cpu: str = "32",
    memory: str = "256Gi",
    pods: int = 110,
) -> dict[str, Any]:
    """A Node KWOK keeps Ready: GPU nodes carry NVIDIA's labels, the GPU taint and allocatable
    nvidia.com/gpu, as the device plugin and GPU feature discovery would report them."""
    resources = {"cpu": cpu, "memory": memory, "pods": str(pods)}
    all_labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
    }
    taints: list[dict[str, str]] = []
    if gpus:
        resources[GPU] = str(gpus)
        all_labels |= {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": gpu_product}
        taints.append(GPU_TAINT)
    all_labels |= labels or {}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": all_labels,
            "annotations": {FAKE_NODE[0]: FAKE_NODE[1], "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": taints},
        "status": {"capacity": resources, "allocatable": resources},
    }


def start_kwok(cp: ControlPlane) -> None:
    """KWOK with the "fast" node, pod and volume stages, managing the annotated nodes only
    (a real node beside them stays its kubelet's)."""
    assert cp.workdir is not None
    folder = thirdparty("kwok")
    cp.kubectl_run("apply", "-f", str(folder / STORAGE_CLASS))
    docs = [
        yaml.safe_load((folder / stage).read_text())
        for stage in (*NODE_STAGES, *POD_STAGES, *VOLUME_STAGES)
    ]
    config = cp.workdir / "kwok.yaml"
    config.write_text(yaml.safe_dump_all(docs))
    cp.spawn(
        "kwok",
        [
            str(folder / "kwok"),
            f"--kubeconfig={cp.kubeconfig}",
            f"--config={config}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={FAKE_NODE[0]}={FAKE_NODE[1]}",
            f"--cidr={POD_CIDR}",
            "--node-ip=10.123.0.1",
            f"--server-address=127.0.0.1:{free_port()}",
        ],
    )


def gpu_instance_types(*, gpu_name: str = "a10g", gpus: tuple[int, ...] = (1, 4)) -> list[Any]:
    """A small instance-type catalogue for Karpenter's KWOK provider: on-demand and spot GPU
    instances (16 CPU and 64 GiB per GPU), one zone."""
    out = []
    for n in gpus:
        offerings = [
            {
                "Price": price * n,
                "Available": True,
                "Requirements": [
                    {"key": "karpenter.sh/capacity-type", "operator": "In", "values": [kind]},
                    {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["zone-a"]},
                ],
            }
            for kind, price in (("on-demand", 1.0), ("spot", 0.4))
        ]
        out.append(
            {
                "name": f"g-{gpu_name}-{n}x",
                "offerings": offerings,
                "architecture": "amd64",
                "operatingSystems": ["linux"],
                "resources": {
                    "cpu": str(16 * n),
                    "memory": f"{64 * n}Gi",
                    "ephemeral-storage": "600Gi",
                    "pods": "110",
                    GPU: str(n),
                },
            }
        )
    return out


def start_karpenter(cp: ControlPlane, instance_types: list[Any]) -> None:
    """Karpenter's controller with the KWOK cloud provider, its CRDs (NodePool, NodeClaim,
    NodeOverlay, KWOKNodeClass) and a Ready KWOKNodeClass `default` (no controller of that
    provider reports one)."""
    assert cp.workdir is not None
    folder = thirdparty("karpenter-kwok")
    cp.kubectl_run("apply", "--server-side", "--force-conflicts", "-f", str(folder), timeout=120)
    cp.wait_established(
        "nodepools.karpenter.sh", "nodeclaims.karpenter.sh", "kwoknodeclasses.karpenter.kwok.sh"
    )
    cp.kubectl_run(
        "apply",
        "-f",
        "-",
        input=yaml.safe_dump(
            {
                "apiVersion": "karpenter.kwok.sh/v1alpha1",
                "kind": "KWOKNodeClass",
                "metadata": {"name": "default"},
            }
        ),
    )
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "Ready",
        "message": "",
        "lastTransitionTime": "2026-12-01T00:00:00Z",
        "observedGeneration": 1,
    }
    cp.patch_status("kwoknodeclass", "default", {"conditions": [ready]})
    types = cp.workdir / "instance-types.json"
    types.write_text(json.dumps(instance_types))
    cp.spawn(
        "karpenter",
        [
            str(folder / "karpenter-kwok"),  # its own flag set has no --kubeconfig
            f"--instance-types-file-path={types}",
            "--disable-leader-election",
            f"--metrics-port={free_port()}",
            f"--health-probe-port={free_port()}",
            "--batch-idle-duration=1s",
            "--batch-max-duration=3s",
            "--log-level=info",
        ],
        env=cp.env() | {"SYSTEM_NAMESPACE": "kube-system"},
    )


# Kueue without its internal certificate management (which needs its webhook configurations
# and conversion webhooks installed) reads its metrics certificate from this fixed path.
KUEUE_METRICS_CERTS = "/etc/kueue/metrics/certs"


def start_kueue(cp: ControlPlane) -> None:
    """Kueue managing batch/v1 Jobs that name a LocalQueue. Its webhooks are not registered
    with the apiserver (the Jobs the operator creates are suspended already), so its servers
    only need some certificate to start: the apiserver's own. It runs in a mount namespace of
    its own where an overlay on /etc holds the certificate at its fixed path; the machine's
    /etc is untouched, and the overlay goes with the process."""
    assert cp.workdir is not None and cp.pki is not None
    folder = thirdparty("kueue")
    cp.kubectl_run("apply", "--server-side", "-f", str(folder / "crds"), timeout=120)
    cp.wait_established(
        "clusterqueues.kueue.x-k8s.io",
        "localqueues.kueue.x-k8s.io",
        "resourceflavors.kueue.x-k8s.io",
        "workloads.kueue.x-k8s.io",
    )
    cp.kubectl_run("create", "namespace", "kueue-system", check=False)
    work = cp.workdir / "kueue"
    certs = work / "certs"
    for sub in (certs, work / "etc-upper", work / "etc-work"):
        sub.mkdir(parents=True, exist_ok=True)
    shutil.copy(cp.pki.serving_cert, certs / "tls.crt")
    shutil.copy(cp.pki.serving_key, certs / "tls.key")
    config = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": "kueue-system",
        "health": {"healthProbeBindAddress": f"127.0.0.1:{free_port()}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"host": "127.0.0.1", "port": free_port(), "certDir": str(certs)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "integrations": {"frameworks": ["batch/job"]},
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    script = (
        'mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1/etc-upper,workdir=$1/etc-work" /etc'
        f" && mkdir -p {Path(KUEUE_METRICS_CERTS).parent}"
        f' && ln -sfn "$1/certs" {KUEUE_METRICS_CERTS}'
        ' && shift && exec "$@"'
    )
    cp.spawn(
        "kueue",
        [
            *("unshare", "--mount", "--propagation", "private", "--"),
            *("sh", "-c", script, "kueue-in-its-namespace", str(work)),
            *(str(folder / "kueue"), f"--config={path}", f"--kubeconfig={cp.kubeconfig}"),
            # its on-demand visibility API server wants yet another certificate, at /visibility
            "--feature-gates=VisibilityOnDemand=false",
        ],
    )


def kueue_queue(
    cp: ControlPlane, namespace: str, queue: str, gpus: int, cluster_queue: str = "gpus"
) -> None:
    """A ResourceFlavor, a ClusterQueue with `gpus` of nominal GPU quota (CPU and memory
    plentiful) and a LocalQueue `queue` in `namespace` pointing at it; applied again, the
    quota changes."""
    docs = [
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ResourceFlavor",
            "metadata": {"name": "kwok-gpu"},
        },
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ClusterQueue",
            "metadata": {"name": cluster_queue},
            "spec": {
                "namespaceSelector": {},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory", GPU],
                        "flavors": [
                            {
                                "name": "kwok-gpu",
                                "resources": [
                                    {"name": "cpu", "nominalQuota": "1000"},
                                    {"name": "memory", "nominalQuota": "10Ti"},
                                    {"name": GPU, "nominalQuota": str(gpus)},
                                ],
                            }
                        ],
                    }
                ],
            },
        },
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "LocalQueue",
            "metadata": {"name": queue, "namespace": namespace},
            "spec": {"clusterQueue": cluster_queue},
        },
    ]
    cp.kubectl_run("apply", "-f", "-", input=yaml.safe_dump_all(docs))


def wait_node_ready(cp: ControlPlane, name: str, timeout: float = 60) -> None:
    def ready() -> bool:
        obj = cp.get_json("node", name) or {}
        conditions = obj.get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    wait_for(ready, f"node {name} Ready", timeout)
