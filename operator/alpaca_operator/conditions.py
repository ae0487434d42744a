"""Conditions in the metav1.Condition shape: pure functions over the status's list.

Condition types and reasons are named constants, each reason under the condition type that
carries it (`REASONS_OF` lists them by type); messages are written for a person. Reasons are
API: users, Events and the Argo CD health checks (docs/argocd/) read them, so their values
never change.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from alpaca_weights import contract as weights_contract

# --- condition types --------------------------------------------------------------------

# An AlpacaModel's, in stage order.
ACCEPTED = "Accepted"
CAPACITY = "CapacityReady"
WEIGHTS = "WeightsReady"
SERVING = "ServingReady"
READY = "Ready"
UPGRADING = "Upgrading"  # beside the stages: a change that needs new pods reaching a serving model
# An AlpacaFineTune's, after Accepted and WeightsReady (its base weights).
TRAINING = "Training"
SUCCEEDED = "Succeeded"
SERVED = "Served"  # only with spec.serve

MODEL_CONDITIONS = (ACCEPTED, CAPACITY, WEIGHTS, SERVING, READY, UPGRADING)
FINETUNE_CONDITIONS = (ACCEPTED, WEIGHTS, TRAINING, SUCCEEDED, SERVED)

# --- Accepted ---------------------------------------------------------------------------

SPEC_VALID = "SpecValid"
INVALID_SPEC = "InvalidSpec"  # also Ready's while the spec is invalid
# valid, but the operator's policy (allowedImagePrefixes, allowRemoteCode) does not allow it;
# also Ready's meanwhile
FORBIDDEN_BY_POLICY = "ForbiddenByPolicy"

# --- CapacityReady ----------------------------------------------------------------------

NODEPOOL_CRD_MISSING = "NodePoolCRDMissing"  # provisioner karpenter, Karpenter not installed
NODEPOOL_CREATING = "NodePoolCreating"
WAITING_FOR_NODEPOOL = "WaitingForNodePool"  # created; Karpenter has not said Ready yet
NODEPOOL_READY = "NodePoolReady"
NODEPOOL_REJECTED = "NodePoolRejected"  # Karpenter says the NodePool is not ready
CPU_ONLY = "CPUOnly"  # no GPUs requested on existing nodes: nothing to wait for
WAITING_FOR_NODES = "WaitingForNodes"  # no node matches the node selector
INSUFFICIENT_GPU = "InsufficientGPU"  # nodes match, none has the GPUs one replica needs
NODES_AVAILABLE = "NodesAvailable"
CAPACITY_TIMEOUT = "CapacityTimeout"  # still not ready after the stage's deadline

# --- WeightsReady (a model's cache and its adapters', a fine-tune's base weights) -------

CACHE_CREATING = "CacheCreating"  # the cache PVC does not exist yet
FILL_PENDING = "FillPending"  # the fill Job is being created, or waits for its pod
DOWNLOADING = "Downloading"
DOWNLOAD_RETRYING = "DownloadRetrying"  # an attempt failed; the next resumes where it stopped
CONVERTING = "Converting"  # the CLI's fill-phase after the download: .bin -> safetensors
RECOVERING = "Recovering"  # the CLI's fill-phase: weight diff + base -> the model
VERIFYING = "Verifying"  # the CLI's fill-phase: writing the manifest
CACHE_VERIFYING = "CacheVerifying"  # the fill Job completed; the PVC is being marked filled
CACHE_FILLED = "CacheFilled"
# filled, and its volume is not the size spec.weights.cache.size asks for (status True):
CACHE_EXPANDING = "CacheExpanding"  # the PVC grows to the new size
CACHE_EXPANSION_REFUSED = "CacheExpansionRefused"  # the apiserver refused to grow it
CACHE_NOT_SHRUNK = "CacheNotShrunk"  # the size is smaller: a volume never shrinks, it stays
FILL_FAILED = "FillFailed"  # the fill Job failed without one of the CLI's own reasons
WEIGHTS_TIMEOUT = "WeightsTimeout"  # still not ready after the stage's deadline
FILL_FAILURES = frozenset(weights_contract.REASONS)
"""The weights CLI's reasons (`alpaca_weights.contract`): the WeightsReady reason when the
fill Job failed with one of them."""

# --- ServingReady -----------------------------------------------------------------------

KUBERAY_MISSING = "KubeRayMissing"  # the RayService CRD is not installed
WAITING_FOR_WEIGHTS = "WaitingForWeights"  # also Training's, for the base weights
DEPLOYING = "Deploying"  # the RayService is being created
WAITING_FOR_RAY_CLUSTER = "WaitingForRayCluster"  # head and workers are starting
ENGINE_LOADING = "EngineLoading"  # Ray Serve deploys: vLLM loads the model
SERVE_DEPLOY_FAILED = "ServeDeployFailed"  # Ray Serve reports DEPLOY_FAILED or UNHEALTHY
ENDPOINT_SERVING = "Serving"  # the RayService is Ready: the API answers
SERVING_TIMEOUT = "ServingTimeout"  # still not ready after the stage's deadline

# --- Ready (an AlpacaModel's) -----------------------------------------------------------

STAGES_PENDING = "StagesPending"  # accepted; the stages are not observed yet
ALL_STAGES_READY = "Ready"
# Otherwise Ready carries the reason of the first stage that is not ready (or Accepted's).

# --- Upgrading (an AlpacaModel's; spec.upgrade) ----------------------------------------

UP_TO_DATE = "UpToDate"  # False: the running RayCluster is the spec's (or none runs yet)
WAITING_FOR_CAPACITY = "WaitingForCapacity"  # no room for the new cluster beside the old yet
NEW_CLUSTER_STARTING = "NewClusterStarting"  # the new cluster starts; traffic stays on the old
SWITCHING_TRAFFIC = "SwitchingTraffic"  # the new cluster serves; the endpoint moves to it
RECREATING_WITH_OUTAGE = "RecreatingWithOutage"  # the old cluster went first: serving pauses

# --- Training ---------------------------------------------------------------------------

SUSPENDED = "Suspended"  # spec.suspend, or a suspended Job without a Kueue queue
QUEUED = "Queued"  # the Job waits for admission in its Kueue queue
JOB_CREATING = "JobCreating"
WAITING_FOR_PODS = "WaitingForPods"  # fewer ranks ready than nodes
RUNNING = "Running"
FINISHING = "Finishing"  # some ranks finished, the rest are ending
COMPLETED = "Completed"  # the Job completed: Training is False, Succeeded is True
TRAINING_FAILED = "TrainingFailed"

# --- Succeeded --------------------------------------------------------------------------

NOT_FINISHED = "NotFinished"
TRAINING_SUCCEEDED = "Succeeded"

# --- Served -----------------------------------------------------------------------------

WAITING_FOR_TRAINING = "WaitingForTraining"  # the AlpacaModel is created when training succeeds
MODEL_CREATED = "ModelCreated"

# --- Events that belong to no condition -------------------------------------------------

RAYCLUSTER_RECREATED = "RayClusterRecreated"  # the pod templates changed: RayCluster deleted
RAYCLUSTER_RESCALED = "RayClusterRescaled"  # worker min/max replicas patched in place
API_REFUSED = "ApiRefused"  # the apiserver refused a write of a pass (quota, RBAC, immutable)

# --- reasons by condition type, and what they mean --------------------------------------

_CAPACITY_REASONS = frozenset(
    {
        NODEPOOL_CRD_MISSING,
        NODEPOOL_CREATING,
        WAITING_FOR_NODEPOOL,
        NODEPOOL_READY,
        NODEPOOL_REJECTED,
        CPU_ONLY,
        WAITING_FOR_NODES,
        INSUFFICIENT_GPU,
        NODES_AVAILABLE,
        CAPACITY_TIMEOUT,
    }
)
_WEIGHTS_REASONS = (
    frozenset(
        {
            CACHE_CREATING,
            FILL_PENDING,
            DOWNLOADING,
            DOWNLOAD_RETRYING,
            CONVERTING,
            RECOVERING,
            VERIFYING,
            CACHE_VERIFYING,
            CACHE_FILLED,
            CACHE_EXPANDING,
            CACHE_EXPANSION_REFUSED,
            CACHE_NOT_SHRUNK,
            FILL_FAILED,
            WEIGHTS_TIMEOUT,
        }
    )
    | FILL_FAILURES
)
_SERVING_REASONS = frozenset(
    {
        KUBERAY_MISSING,
        WAITING_FOR_WEIGHTS,
        DEPLOYING,
        WAITING_FOR_RAY_CLUSTER,
        ENGINE_LOADING,
        SERVE_DEPLOY_FAILED,
        ENDPOINT_SERVING,
        SERVING_TIMEOUT,
    }
)

REASONS_OF: dict[str, frozenset[str]] = {
    ACCEPTED: frozenset({SPEC_VALID, INVALID_SPEC, FORBIDDEN_BY_POLICY}),
    CAPACITY: _CAPACITY_REASONS,
    WEIGHTS: _WEIGHTS_REASONS,
    SERVING: _SERVING_REASONS,
    READY: frozenset({STAGES_PENDING, ALL_STAGES_READY, INVALID_SPEC, FORBIDDEN_BY_POLICY})
    | _CAPACITY_REASONS
    | _WEIGHTS_REASONS
    | _SERVING_REASONS,
    TRAINING: frozenset(
        {
            SUSPENDED,
            QUEUED,
            WAITING_FOR_WEIGHTS,
            JOB_CREATING,
            WAITING_FOR_PODS,
            RUNNING,
            FINISHING,
            COMPLETED,
            TRAINING_FAILED,
        }
    ),
    UPGRADING: frozenset(
        {
            UP_TO_DATE,
            WAITING_FOR_CAPACITY,
            NEW_CLUSTER_STARTING,
            SWITCHING_TRAFFIC,
            RECREATING_WITH_OUTAGE,
        }
    ),
    SUCCEEDED: frozenset({NOT_FINISHED, TRAINING_SUCCEEDED}),
    SERVED: frozenset({WAITING_FOR_TRAINING, MODEL_CREATED}),
}
"""Every reason each condition type can carry."""

EVENT_REASONS = frozenset({RAYCLUSTER_RECREATED, RAYCLUSTER_RESCALED, API_REFUSED})
"""Reasons of Events that are not a condition's transition."""

FAILURE_REASONS = (
    frozenset(
        {
            INVALID_SPEC,
            FORBIDDEN_BY_POLICY,
            NODEPOOL_CRD_MISSING,
            KUBERAY_MISSING,
            INSUFFICIENT_GPU,
            NODEPOOL_REJECTED,
            FILL_FAILED,
            SERVE_DEPLOY_FAILED,
            TRAINING_FAILED,
        }
    )
    # the weights CLI's reasons, when its Job failed
    | FILL_FAILURES
)
"""Reasons that need a person to change something: phase Failed and a Warning Event."""

TIMEOUT_REASONS = frozenset({CAPACITY_TIMEOUT, WEIGHTS_TIMEOUT, SERVING_TIMEOUT})
"""A stage waited longer than its deadline: a Warning Event; the phase stays."""

NOTICE_REASONS = frozenset({CACHE_EXPANSION_REFUSED})
"""A stage that works, but not as the spec asks: a Warning Event; the phase stays."""

OUTAGE_REASONS = frozenset({RECREATING_WITH_OUTAGE})
"""Serving pauses while a new RayCluster replaces the old one: a Warning Event."""

WARNING_REASONS = FAILURE_REASONS | TIMEOUT_REASONS | NOTICE_REASONS | OUTAGE_REASONS


@dataclass(frozen=True)
class Verdict:
    """One stage's condition: status, CamelCase reason, message for a person."""

    status: str  # True, False, Unknown
    reason: str
    message: str

    @property
    def ok(self) -> bool:
        return self.status == "True"


def now() -> str:
    """The current time as the apiserver writes it (RFC 3339, seconds, UTC)."""
    return (
        datetime.datetime.now(datetime.UTC)
        .replace(microsecond=0)
        .isoformat()
        .replace("+00:00", "Z")
    )


def find(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    """The condition of a type, if present."""
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int | None,
    timestamp: str | None = None,
) -> list[dict[str, Any]]:
    """A new list with the condition set; lastTransitionTime moves only when status changes."""
    previous = find(conditions, type_)
    transition = (
        previous["lastTransitionTime"]
        if previous and previous.get("status") == status and previous.get("lastTransitionTime")
        else timestamp or now()
    )
    condition = {
        "type": type_,
        "status": status,
        "observedGeneration": generation,
        "lastTransitionTime": transition,
        "reason": reason,
        "message": message,
    }
    others = [c for c in conditions or [] if c.get("type") != type_]
    return [*others, condition]


def changed(before: dict[str, Any] | None, after: dict[str, Any]) -> bool:
    """Whether a condition moved (status or reason) between two observations."""
    return before is None or (before.get("status"), before.get("reason")) != (
        after["status"],
        after["reason"],
    )
