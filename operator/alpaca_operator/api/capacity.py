"""GPU node capacity: a Karpenter NodePool, or nodes that already exist."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from alpaca_operator.api.base import ApiModel, Duration, Quantity, Rule


class Toleration(ApiModel):
    """A toleration added to the pods that need GPUs (corev1.Toleration)."""

    key: str | None = Field(
        default=None, description="The taint key; empty with Exists matches all."
    )
    operator: Literal["Exists", "Equal"] = Field(
        default="Equal", description="Equal matches key and value; Exists matches the key alone."
    )
    value: str | None = Field(default=None, description="The taint value, with operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="The taint effect to tolerate; all effects when unset."
    )
    toleration_seconds: int | None = Field(
        default=None,
        ge=0,
        description="With NoExecute: how long the pod stays bound after the taint appears.",
    )


class NodeClassRef(ApiModel):
    """The cloud-specific node class a Karpenter NodePool launches from."""

    group: str = Field(default="karpenter.k8s.aws", description="API group of the node class.")
    kind: str = Field(default="EC2NodeClass", description="Kind of the node class.")
    name: str = Field(min_length=1, description="Name of the node class (for example `default`).")


class Karpenter(ApiModel):
    """How the operator's Karpenter NodePool (karpenter.sh/v1) launches GPU nodes."""

    node_class_ref: NodeClassRef = Field(
        description="The node class (EC2NodeClass, AKSNodeClass, ...) nodes are launched from."
    )
    instance_families: list[str] = Field(
        default_factory=list,
        description="Instance families to choose from (for example g5, g6, p4d); any GPU family "
        "when empty.",
    )
    capacity_types: list[Literal["on-demand", "spot", "reserved"]] = Field(
        default_factory=lambda: ["on-demand"],
        min_length=1,
        description="Which capacity types Karpenter may buy. spot is cheaper and can be reclaimed; "
        "fine-tunes resume from their last checkpoint.",
    )
    gpu_limit: int | None = Field(
        default=None,
        ge=1,
        description="Upper bound on nvidia.com/gpu across all nodes of the pool (a cost guard).",
    )
    consolidate_after: Duration = Field(
        default="10m",
        description="How long a GPU node must be empty or underused before Karpenter removes it.",
    )


class Capacity(ApiModel):
    """Where the GPU pods run."""

    RULES = (
        Rule(
            "self.provisioner != 'karpenter' || has(self.karpenter)",
            "provisioner karpenter needs capacity.karpenter.nodeClassRef",
            ".karpenter",
            lambda c: c.provisioner != "karpenter" or c.karpenter is not None,
        ),
        Rule(
            "!has(self.karpenter) || self.provisioner == 'karpenter'",
            "capacity.karpenter is only used with provisioner: karpenter",
            ".karpenter",
            lambda c: c.karpenter is None or c.provisioner == "karpenter",
        ),
    )

    provisioner: Literal["existing", "karpenter"] = Field(
        default="existing",
        description="existing: schedule on nodes already in the cluster that match nodeSelector "
        "(the operator checks that their allocatable GPUs can fit the pods). karpenter: the "
        "operator creates a Karpenter NodePool for this workload.",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Node labels the GPU pods require (for example "
        "nvidia.com/gpu.product: NVIDIA-L4).",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        description="Extra tolerations for the GPU pods. The NodePool's own taint (karpenter) and "
        "nvidia.com/gpu:NoSchedule are tolerated already.",
    )
    karpenter: Karpenter | None = Field(
        default=None, description="NodePool settings, with provisioner karpenter."
    )


class Resources(ApiModel):
    """What one pod (one serving replica, or one training node) gets."""

    RULES = (
        Rule(
            "!has(self.gpuType) || self.gpus > 0",
            "gpuType needs gpus greater than 0",
            ".gpuType",
            lambda r: r.gpu_type is None or r.gpus > 0,
        ),
    )

    gpus: int = Field(
        default=1,
        ge=0,
        le=16,
        description="nvidia.com/gpu per pod. 0 runs on CPU (development and tests only).",
    )
    gpu_type: str | None = Field(
        default=None,
        max_length=128,
        description="The GPU product, matched against the node label nvidia.com/gpu.product "
        "(existing nodes) or turned into an instance requirement (karpenter), for example "
        "NVIDIA-A10G or NVIDIA-L4.",
    )
    cpu: Quantity = Field(default="8", description="CPU request and limit per pod.")
    memory: Quantity = Field(default="32Gi", description="Memory request and limit per pod.")
