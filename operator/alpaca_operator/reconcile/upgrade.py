"""Rolling a changed AlpacaModel onto its running RayCluster without ever needing twice the GPUs.

The RayService uses KubeRay's upgrade strategy `None`: KubeRay applies Serve config changes
(engine options, adapters, Serve autoscaling) in place and never starts a second cluster. What
it then leaves stale on the running RayCluster, the operator settles here:

- worker min/max replicas: patched on the RayCluster in place (no restart);
- anything in the pod templates (image, GPUs, CPU, memory, placement, volumes): the RayCluster
  is deleted and KubeRay creates it again from the new spec — a short outage, GPUs released
  before new ones are asked for.
"""

from __future__ import annotations

from typing import Any

from alpaca_operator.kube import Kube

RECREATED = "Recreated"
RESCALED = "Rescaled"


def _pod_shape(template: dict[str, Any]) -> dict[str, Any]:
    """What needs new pods when it changes. Not the containers' env: its only variables, Ray
    Serve's fast path (decision 39), change with the adapter volumes (a model takes the standard
    path exactly when it has adapters), so a model moving between paths is recreated anyway;
    and a cluster made before the fast path existed keeps serving on the standard path, which
    works, rather than every model going down once when the operator is upgraded."""
    spec = template.get("spec", {})
    return {
        "containers": [
            {"name": c.get("name"), "image": c.get("image"), "resources": c.get("resources", {})}
            for c in spec.get("containers", [])
            if c.get("name") != "autoscaler"  # KubeRay's own sidecar
        ],
        "nodeSelector": spec.get("nodeSelector") or {},
        "tolerations": spec.get("tolerations") or [],
        "volumes": spec.get("volumes") or [],
    }


def _shape(cluster_spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "head": _pod_shape(cluster_spec.get("headGroupSpec", {}).get("template", {})),
        "workers": {
            g.get("groupName"): _pod_shape(g.get("template", {}))
            for g in cluster_spec.get("workerGroupSpecs", [])
        },
    }


def _scale_ops(live: dict[str, Any], want: dict[str, Any]) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = []
    wanted = {g["groupName"]: g for g in want.get("workerGroupSpecs", [])}
    for i, group in enumerate(live.get("workerGroupSpecs", [])):
        target = wanted.get(group.get("groupName"))
        if target is None:
            continue
        for key in ("minReplicas", "maxReplicas"):
            if group.get(key) != target.get(key):
                ops.append(
                    {
                        "op": "replace",
                        "path": f"/spec/workerGroupSpecs/{i}/{key}",
                        "value": target[key],
                    }
                )
    return ops


def settle_cluster(kube: Kube, rayservice: dict[str, Any], desired: dict[str, Any]) -> str | None:
    """Bring the active RayCluster in line with the desired RayService; what was done, if anything."""
    status = rayservice.get("status", {})
    name = (status.get("activeServiceStatus") or {}).get("rayClusterName") or (
        status.get("pendingServiceStatus") or {}
    ).get("rayClusterName")
    ns = rayservice["metadata"]["namespace"]
    cluster = kube.get("ray.io/v1", "RayCluster", name, ns) if name else None
    if cluster is None or cluster["metadata"].get("deletionTimestamp"):
        return None
    want = desired["spec"]["rayClusterConfig"]
    if _shape(cluster["spec"]) != _shape(want):
        kube.delete("ray.io/v1", "RayCluster", name, ns)
        return RECREATED
    ops = _scale_ops(cluster["spec"], want)
    if ops:
        kube.json_patch("ray.io/v1", "RayCluster", name, ns, ops)
        return RESCALED
    return None
