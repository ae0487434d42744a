"""Capacity: the Karpenter NodePool (karpenter.sh/v1) of a workload, and where its GPU pods go."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alpaca_operator.api.capacity import Capacity, Karpenter, Resources
from alpaca_operator.render import names

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"  # set by NVIDIA GPU feature discovery
GPU_TAINT = {"key": GPU_RESOURCE, "value": "true", "effect": "NoSchedule"}

# Instance labels by node-class provider: (family, GPU count, GPU name).
_PROVIDER_LABELS = {
    "karpenter.k8s.aws": (
        "karpenter.k8s.aws/instance-family",
        "karpenter.k8s.aws/instance-gpu-count",
        "karpenter.k8s.aws/instance-gpu-name",
    ),
    "karpenter.azure.com": (
        "karpenter.azure.com/sku-family",
        "karpenter.azure.com/sku-gpu-count",
        "karpenter.azure.com/sku-gpu-name",
    ),
}


@dataclass(frozen=True)
class Placement:
    """What a GPU pod needs to land on the capacity: node selector and tolerations."""

    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)


def gpu_name(gpu_type: str) -> str:
    """`NVIDIA-A10G` -> `a10g`: the form cloud instance labels use."""
    return gpu_type.lower().removeprefix("nvidia-").removeprefix("tesla-")


def _requirements(karpenter: Karpenter, resources: Resources) -> list[dict[str, Any]]:
    reqs: list[dict[str, Any]] = [
        {
            "key": "karpenter.sh/capacity-type",
            "operator": "In",
            "values": list(karpenter.capacity_types),
        },
        {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
    ]
    labels = _PROVIDER_LABELS.get(karpenter.node_class_ref.group)
    if labels is None:
        return reqs
    family, count, name = labels
    if karpenter.instance_families:
        reqs.append({"key": family, "operator": "In", "values": list(karpenter.instance_families)})
    if resources.gpus > 0:
        reqs.append({"key": count, "operator": "Gt", "values": [str(resources.gpus - 1)]})
    if resources.gpu_type:
        reqs.append({"key": name, "operator": "In", "values": [gpu_name(resources.gpu_type)]})
    return reqs


def nodepool(
    capacity: Capacity,
    resources: Resources,
    namespace: str,
    name: str,
    owner_kind: str = "AlpacaModel",
) -> dict[str, Any] | None:
    """The NodePool for provisioner karpenter (an AlpacaModel's or an AlpacaFineTune's); None
    for existing nodes."""
    if capacity.provisioner != "karpenter" or capacity.karpenter is None:
        return None
    karpenter = capacity.karpenter
    pool = names.nodepool_name(namespace, name, owner_kind)
    spec: dict[str, Any] = {
        "template": {
            "metadata": {"labels": {names.LABEL_NODEPOOL: pool}},
            "spec": {
                "nodeClassRef": karpenter.node_class_ref.to_wire(),
                "requirements": _requirements(karpenter, resources),
                "taints": [GPU_TAINT] if resources.gpus > 0 else [],
            },
        },
        # WhenEmpty: a node goes only when no pod of ours runs there, so consolidation never
        # evicts a serving replica or a training rank; scale-to-zero empties the nodes.
        "disruption": {
            "consolidationPolicy": "WhenEmpty",
            "consolidateAfter": karpenter.consolidate_after,
        },
    }
    if karpenter.gpu_limit is not None:
        spec["limits"] = {GPU_RESOURCE: str(karpenter.gpu_limit)}
    return {
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodePool",
        "metadata": {"name": pool, "labels": names.nodepool_labels(owner_kind, namespace, name)},
        "spec": spec,
    }


def placement(
    capacity: Capacity,
    resources: Resources,
    namespace: str,
    name: str,
    owner_kind: str = "AlpacaModel",
) -> Placement:
    """Node selector and tolerations for the pods that use the capacity."""
    selector = dict(capacity.node_selector)
    tolerations = [t.to_wire() for t in capacity.tolerations]
    if resources.gpus > 0:
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    if capacity.provisioner == "karpenter":
        selector[names.LABEL_NODEPOOL] = names.nodepool_name(namespace, name, owner_kind)
    elif resources.gpu_type:
        selector[GPU_PRODUCT_LABEL] = resources.gpu_type
    return Placement(node_selector=selector, tolerations=tolerations)
