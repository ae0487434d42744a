"""The shared weights cache: one PVC per weights identity, filled once by one Job.

Every user (AlpacaModel, AlpacaFineTune) is an owner reference on the PVC and none is its
controller, so the garbage collector removes the cache with its last user. The fill Job has the
same owners, not the PVC: a PVC is not deleted while any pod scheduled with it exists (the
pvc-protection finalizer; a Completed pod counts), so a Job owned by its PVC would wait for the
PVC and the PVC for the Job's pod until the Job's TTL. Its ServiceAccount and Role are the
PVC's.
"""

from __future__ import annotations

from typing import Any

from alpaca_operator.kube import Kube
from alpaca_operator.observe.model import CacheState, condition_of
from alpaca_operator.reconcile.apply import Applier, owner_reference, shared_owners
from alpaca_operator.render import names, weights
from alpaca_operator.render.weights import CacheManifests


def termination_message(kube: Kube, job: dict[str, Any]) -> str | None:
    """The newest termination message among a Job's pods (the weights CLI writes its reason there)."""
    meta = job["metadata"]
    pods = kube.list("v1", "Pod", meta["namespace"], selector=f"job-name={meta['name']}")
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""), reverse=True):
        for status in pod.get("status", {}).get("containerStatuses", []) or []:
            terminated = (status.get("state") or {}).get("terminated") or {}
            if terminated.get("message"):
                return str(terminated["message"]).strip()
    return None


def ensure_cache(
    kube: Kube, applier: Applier, desired: CacheManifests, user: dict[str, Any]
) -> CacheState:
    """Make the cache exist with `user` among its owners, fill it if not filled; what is seen.
    `desired`: the cache's children as rendered for this pass (render/weights.cache_manifests)."""
    desired_pvc = desired.pvc
    cache, ns = desired_pvc["metadata"]["name"], desired_pvc["metadata"]["namespace"]
    live_pvc = kube.get("v1", "PersistentVolumeClaim", cache, ns)
    desired_pvc["metadata"]["ownerReferences"] = shared_owners(live_pvc, user)
    state = CacheState(pvc=live_pvc)
    annotations = desired_pvc["metadata"]["annotations"]
    job = None
    if state.filled:
        annotations[weights.FILLED_ANNOTATION] = "true"
    else:
        job = kube.get("batch/v1", "Job", names.fill_job_name(cache), ns)
        complete = condition_of(job, "Complete")
        if complete and complete.get("status") == "True":
            annotations[weights.FILLED_ANNOTATION] = "true"
    state.pvc = applier.ensure(desired_pvc, live_pvc)
    if state.filled:
        return state
    owned = [owner_reference(state.pvc, controller=True, block=False)]  # nothing to wait for
    for obj in desired.rbac:
        obj["metadata"]["ownerReferences"] = owned
        live = kube.get(obj["apiVersion"], obj["kind"], obj["metadata"]["name"], ns)
        applier.ensure(obj, live)
    owners = shared_owners(job, user)
    if job is None:
        desired_job = desired.fill_job
        desired_job["metadata"]["ownerReferences"] = owners
        job = applier.ensure(desired_job, None)
    elif job["metadata"].get("ownerReferences") != owners:
        # a new user: only the owners change (a Job's template is immutable, and a newer
        # operator's image must not be applied to a running fill)
        op = {"op": "add", "path": "/metadata/ownerReferences", "value": owners}
        job = kube.json_patch("batch/v1", "Job", job["metadata"]["name"], ns, [op])
    state.fill_job = job
    if (job.get("status") or {}).get("failed"):  # the Job failed, or an attempt did
        state.fill_pod_message = termination_message(kube, job)
    return state


def claim_names(obj: Any) -> set[str]:
    """Every PVC a manifest mounts (its volumes' claimName, at any depth)."""
    if isinstance(obj, dict):
        found = {str(obj["claimName"])} if isinstance(obj.get("claimName"), str) else set()
        for value in obj.values():
            found |= claim_names(value)
        return found
    if isinstance(obj, list):
        return set().union(*(claim_names(v) for v in obj)) if obj else set()
    return set()


def release_caches(kube: Kube, user: dict[str, Any], keep: set[str]) -> list[str]:
    """Stop owning the weights caches `user` no longer uses (its weights or adapters changed,
    and nothing it runs mounts them any more): another user keeps them; the last user deletes
    the cache and its fill Job, which the garbage collector would never do for an object
    whose owner list was emptied. The names released."""
    meta = user["metadata"]
    ns, uid = meta["namespace"], meta["uid"]
    released = []
    for pvc in kube.list("v1", "PersistentVolumeClaim", ns):
        name = pvc["metadata"]["name"]
        labels = pvc["metadata"].get("labels") or {}
        refs = pvc["metadata"].get("ownerReferences") or []
        if (
            names.LABEL_CACHE not in labels
            or name in keep
            or uid not in {r.get("uid") for r in refs}
        ):
            continue
        others = [r for r in refs if r.get("uid") != uid]
        job = kube.get("batch/v1", "Job", names.fill_job_name(name), ns)
        if others:
            op = [{"op": "replace", "path": "/metadata/ownerReferences", "value": others}]
            kube.json_patch("v1", "PersistentVolumeClaim", name, ns, op)
            if job is not None:
                job_others = [
                    r for r in job["metadata"].get("ownerReferences") or [] if r.get("uid") != uid
                ]
                op = [{"op": "replace", "path": "/metadata/ownerReferences", "value": job_others}]
                kube.json_patch("batch/v1", "Job", job["metadata"]["name"], ns, op)
        else:
            if job is not None:
                kube.delete("batch/v1", "Job", job["metadata"]["name"], ns)
            kube.delete("v1", "PersistentVolumeClaim", name, ns)
        released.append(name)
    return released
