"""Whether a second RayCluster fits beside a model's running one: the capacity rule of
`spec.upgrade.strategy: Auto` (decision 41).

The new cluster needs its workers' GPUs at the start: `minReplicas` workers, and at least one
while the running cluster serves with any (so the switch does not leave the endpoint without a
replica). Its head needs no GPU. Room is what the nodes the model may use have free (their
allocatable GPUs less what the pods bound to them request) plus, on Karpenter capacity, what
the model's NodePool may still launch (its GPU limit less what it has launched; no limit: room
enough). A CPU-only model needs no GPU: the scheduler places its pods as they come.

Read only when an upgrade decides (and while one waits, at most every 30 s): the pods of the
matching nodes, one LIST per node, stopping once the room is found.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from alpaca_operator.api.model import AlpacaModelSpec
from alpaca_operator.kube import ApiError, Kube
from alpaca_operator.reconcile.upgrade import Room
from alpaca_operator.render.capacity import GPU_RESOURCE, Placement

_TERMINAL = "status.phase!=Succeeded,status.phase!=Failed"


def gpus_of(quantity: Any) -> int:
    try:
        return int(str(quantity))
    except ValueError:
        return 0


def pod_gpus(pod: dict[str, Any]) -> int:
    """The GPUs a pod holds on its node (extended resources: requests equal limits)."""
    total = 0
    for c in (pod.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        total += gpus_of((res.get("requests") or res.get("limits") or {}).get(GPU_RESOURCE, 0))
    return total


def _tolerated(node: dict[str, Any], tolerations: list[dict[str, Any]]) -> bool:
    """Whether pods with these tolerations may land on the node (NoSchedule/NoExecute taints)."""
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not any(
            t.get("key") in (None, taint.get("key"))
            and (t.get("operator") == "Exists" or t.get("value") == taint.get("value"))
            and t.get("effect") in (None, "", taint.get("effect"))
            for t in tolerations
        ):
            return False
    return True


def workers_needed(spec: AlpacaModelSpec, running: int) -> int:
    """Workers the new cluster must get before traffic moves to it."""
    return max(spec.autoscaling.min_replicas, 1 if running > 0 else 0)


def running_workers(cluster: dict[str, Any] | None) -> int:
    status = (cluster or {}).get("status") or {}
    return int(status.get("readyWorkerReplicas") or status.get("availableWorkerReplicas") or 0)


def free_replicas(nodes: Iterable[dict[str, Any]], pods_on: Any, gpus: int, enough: int) -> int:
    """Whole replicas (`gpus` each) that fit in what the nodes have free; counts up to
    `enough` (then stops reading). `pods_on(node name)` lists the pods bound to a node."""
    found = 0
    if enough <= 0:
        return found
    for node in nodes:
        allocatable = gpus_of(
            ((node.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE, 0)
        )
        if allocatable < gpus:
            continue
        used = sum(pod_gpus(p) for p in pods_on(node["metadata"]["name"]))
        found += max(allocatable - used, 0) // gpus
        if found >= enough:
            break
    return found


def room(
    kube: Kube,
    spec: AlpacaModelSpec,
    placement: Placement,
    nodepool: dict[str, Any] | None,
    active: dict[str, Any] | None,
) -> Room:
    """Whether the new cluster of `spec` fits now beside the running `active` one."""
    gpus = spec.resources.gpus
    if gpus == 0:
        return Room(True, "CPU-only replicas need no free GPU")
    need = workers_needed(spec, running_workers(active))
    if need == 0:
        return Room(True, "no replica runs and minReplicas is 0: it starts without GPUs")
    launchable = 0
    if nodepool is not None:
        limit = ((nodepool.get("spec") or {}).get("limits") or {}).get(GPU_RESOURCE)
        if limit is None:
            return Room(True, f"NodePool {nodepool['metadata']['name']} has no GPU limit")
        launched = gpus_of(
            ((nodepool.get("status") or {}).get("resources") or {}).get(GPU_RESOURCE, 0)
        )
        launchable = max(gpus_of(limit) - launched, 0) // gpus
    selector = ",".join(f"{k}={v}" for k, v in placement.node_selector.items()) or None
    nodes = [
        n
        for n in kube.list("v1", "Node", selector=selector)
        if not n["metadata"].get("deletionTimestamp") and _tolerated(n, placement.tolerations)
    ]

    def pods_on(node: str) -> list[dict[str, Any]]:
        return kube.list("v1", "Pod", fields=f"spec.nodeName={node},{_TERMINAL}")

    try:
        free = free_replicas(nodes, pods_on, gpus, max(need - launchable, 0))
    except ApiError as exc:
        if exc.status != 403:
            raise
        return Room(None, "the operator may not list the pods on the nodes to count free GPUs")
    wanted = f"{need} worker(s) of {gpus} {GPU_RESOURCE}"
    where = f"{free} fit on the {len(nodes)} matching node(s)"
    if nodepool is not None:
        where += f", {launchable} more within NodePool {nodepool['metadata']['name']}'s GPU limit"
    return Room(free + launchable >= need, f"it needs {wanted}; {where}")
