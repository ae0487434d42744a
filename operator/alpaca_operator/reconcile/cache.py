"""The shared weights cache: one PVC per weights identity, filled once by one Job.

Every user (AlpacaModel, AlpacaFineTune) is an owner reference on the PVC and none is its
controller, so the garbage collector removes the cache with its last user. The fill Job has the
same owners, not the PVC: a PVC is not deleted while any pod scheduled with it exists (the
pvc-protection finalizer; a Completed pod counts), so a Job owned by its PVC would wait for the
PVC and the PVC for the Job's pod until the Job's TTL. Its ServiceAccount and Role are the
PVC's.

A PVC's storage class and access modes never change (another class or mode names another
cache, `names.cache_identity`); its size only grows, where the StorageClass allows it. A failed
fill stays failed until something that could change its outcome changes (decision 36).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

from alpaca_operator.kube import ApiError, Kube
from alpaca_operator.observe.model import CacheState, condition_of
from alpaca_operator.reconcile.apply import Applier, owner_reference, shared_owners
from alpaca_operator.render import names, weights
from alpaca_operator.render.weights import CacheManifests, storage_bytes

REFUSED_MESSAGE_LIMIT = 500


def termination_message(kube: Kube, job: dict[str, Any]) -> str | None:
    """The newest termination message among a Job's pods (the weights CLI writes its reason
    there); pods of an earlier Job of the same name (a fill made again) are not its."""
    meta = job["metadata"]
    pods = kube.list("v1", "Pod", meta["namespace"], selector=f"job-name={meta['name']}")
    uid = meta.get("uid")
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""), reverse=True):
        refs = pod["metadata"].get("ownerReferences") or []
        if uid and refs and uid not in {r.get("uid") for r in refs}:
            continue
        for status in pod.get("status", {}).get("containerStatuses", []) or []:
            terminated = (status.get("state") or {}).get("terminated") or {}
            if terminated.get("message"):
                return str(terminated["message"]).strip()
    return None


def _requested(pvc: dict[str, Any] | None) -> str | None:
    """The storage a PVC asks for."""
    value = ((pvc or {}).get("spec") or {}).get("resources", {}).get("requests", {}).get("storage")
    return str(value) if value is not None else None


def _annotations(obj: dict[str, Any] | None) -> dict[str, str]:
    return dict(((obj or {}).get("metadata") or {}).get("annotations") or {})


def _settle_volume(desired: dict[str, Any], live: dict[str, Any] | None) -> str | None:
    """Make the desired PVC one the apiserver takes over `live`: its storage class and access
    modes as it was made (immutable), its size never smaller (a volume does not shrink), a
    growth the apiserver refused not asked for again. The size to grow it to in this pass,
    if any: only a bound claim can grow (its binding wakes the cache's users). A PVC of the
    cache's name that the operator did not make is not taken over (the apply is refused)."""
    cache = desired["metadata"]["name"]
    if live is None or (live["metadata"].get("labels") or {}).get(names.LABEL_CACHE) != cache:
        return None
    spec, made = desired["spec"], live.get("spec") or {}
    for field in ("storageClassName", "accessModes"):
        if field in made:
            spec[field] = made[field]
        else:
            spec.pop(field, None)
    have = _requested(live)
    if have is None:
        return None
    requests = spec["resources"]["requests"]
    want = str(requests["storage"])
    requests["storage"] = have
    live_annotations = _annotations(live)
    refused = live_annotations.get(weights.GROW_REFUSED_ANNOTATION)
    if refused is not None and storage_bytes(refused) > storage_bytes(have):
        # every user keeps the record (one without it would drop it, and the next ask again)
        desired["metadata"]["annotations"] |= {
            weights.GROW_REFUSED_ANNOTATION: refused,
            weights.GROW_REFUSED_MESSAGE_ANNOTATION: live_annotations.get(
                weights.GROW_REFUSED_MESSAGE_ANNOTATION, ""
            ),
        }
    else:
        refused = None
    if storage_bytes(want) <= storage_bytes(have):
        return None
    if refused is not None and storage_bytes(want) <= storage_bytes(refused):
        return None
    if (live.get("status") or {}).get("phase") != "Bound":
        return None
    return want


def _apply_volume(
    applier: Applier, desired: dict[str, Any], live: dict[str, Any] | None, grow: str | None
) -> dict[str, Any]:
    """Apply the PVC, grown to `grow` if given. A growth the apiserver refuses (its
    StorageClass cannot expand volumes) is recorded on the PVC, which stays as it is."""
    if grow is None:
        return applier.ensure(desired, live)
    attempt = copy.deepcopy(desired)
    attempt["spec"]["resources"]["requests"]["storage"] = grow
    for key in (weights.GROW_REFUSED_ANNOTATION, weights.GROW_REFUSED_MESSAGE_ANNOTATION):
        attempt["metadata"]["annotations"].pop(key, None)
    try:
        return applier.ensure(attempt, live)
    except ApiError as exc:
        if exc.status not in (403, 422):
            raise
        said = str(exc.body.get("message") or exc)[:REFUSED_MESSAGE_LIMIT]
        desired["metadata"]["annotations"] |= {
            weights.GROW_REFUSED_ANNOTATION: grow,
            weights.GROW_REFUSED_MESSAGE_ANNOTATION: said,
        }
        return applier.ensure(desired, live)


def _secret_of(job: dict[str, Any]) -> str | None:
    """The credentials Secret a fill Job's container takes its environment from."""
    for container in job["spec"]["template"]["spec"].get("containers") or []:
        for source in container.get("envFrom") or []:
            if name := (source.get("secretRef") or {}).get("name"):
                return str(name)
    return None


def _secret_version(kube: Kube, secret: str, namespace: str) -> str:
    return kube.resource_version("v1", "Secret", secret, namespace) or ""


def _made_under(
    kube: Kube, desired: CacheManifests, pvc: dict[str, Any], namespace: str
) -> dict[str, str]:
    """What a new fill Job's outcome depends on, to be compared when it fails: the cache's
    size, the credentials Secret's version, the retry the PVC asked for."""
    made = {weights.SIZE_ANNOTATION: _requested(pvc) or ""}
    if token := _annotations(pvc).get(weights.RETRY_ANNOTATION):
        made[weights.RETRY_ANNOTATION] = token
    if desired.credentials_secret:
        made[weights.SECRET_VERSION_ANNOTATION] = _secret_version(
            kube, desired.credentials_secret, namespace
        )
    return made


def _why_again(
    made: dict[str, str], secret: str | None, version: str | None, pvc: dict[str, Any]
) -> str | None:
    """Why a failed fill should run again: what it was made under changed."""
    recorded = made.get(weights.SECRET_VERSION_ANNOTATION)
    if secret is not None and recorded is not None and recorded != version:
        return f"Secret {secret} changed"
    size, was = _requested(pvc), made.get(weights.SIZE_ANNOTATION)
    if size and was and storage_bytes(size) > storage_bytes(was):
        return f"the cache grew from {was} to {size}"
    token = _annotations(pvc).get(weights.RETRY_ANNOTATION)
    if token and token != made.get(weights.RETRY_ANNOTATION):
        return f"{weights.RETRY_ANNOTATION}={token} on PVC {pvc['metadata']['name']}"
    return None


def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _failed_fill(
    kube: Kube, job: dict[str, Any], pvc: dict[str, Any], state: CacheState
) -> dict[str, Any] | None:
    """A failed fill Job stays (its TTL removed), so the failure stays on the status, until
    what it was made under changes: then it is deleted (None), and the next pass (its deletion
    wakes the cache's users) makes a fresh one, once. A Job made before these were recorded
    gets them now."""
    meta = job["metadata"]
    name, ns = meta["name"], meta["namespace"]
    made = _annotations(job)
    secret = _secret_of(job)
    version = _secret_version(kube, secret, ns) if secret else None
    if why := _why_again(made, secret, version, pvc):
        kube.delete("batch/v1", "Job", name, ns)
        state.retry = why
        return None
    state.credentials_secret = secret
    ops: list[dict[str, Any]] = []
    if "ttlSecondsAfterFinished" in job["spec"]:
        ops.append({"op": "remove", "path": "/spec/ttlSecondsAfterFinished"})
    record = {weights.SIZE_ANNOTATION: _requested(pvc) or ""}
    if secret is not None:
        record[weights.SECRET_VERSION_ANNOTATION] = version or ""
    missing = {k: v for k, v in record.items() if k not in made}
    if missing and not meta.get("annotations"):
        ops.append({"op": "add", "path": "/metadata/annotations", "value": missing})
    elif missing:
        ops += [
            {"op": "add", "path": "/metadata/annotations/" + _pointer(k), "value": v}
            for k, v in missing.items()
        ]
    return kube.json_patch("batch/v1", "Job", name, ns, ops) if ops else job


def ensure_cache(
    kube: Kube,
    applier: Applier,
    desired: CacheManifests,
    user: dict[str, Any],
    peers: Callable[[str], Iterable[dict[str, Any]]] | None = None,
) -> CacheState:
    """Make the cache exist with `user` among its owners, fill it if not filled; what is seen.
    `desired`: the cache's children as rendered for this pass (render/weights.cache_manifests).
    `peers`: the other users known to name a cache, asked only when `user` is not an owner
    yet; they join in the same write, so that ten models applied together cost the PVC and its
    fill Job one write each, not ten."""
    desired_pvc = desired.pvc
    cache, ns = desired_pvc["metadata"]["name"], desired_pvc["metadata"]["namespace"]
    live_pvc = kube.get("v1", "PersistentVolumeClaim", cache, ns)
    joining = user["metadata"]["uid"] not in _uids(live_pvc)
    others = peers(cache) if peers is not None and joining else ()
    desired_pvc["metadata"]["ownerReferences"] = shared_owners(live_pvc, user, others)
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
    grow = _settle_volume(desired_pvc, live_pvc)
    state.pvc = _apply_volume(applier, desired_pvc, live_pvc, grow)
    # the fill Job has the PVC's owners, whoever joined or left (decision 9), filled or not
    owners = state.pvc["metadata"].get("ownerReferences") or shared_owners(None, user)
    if state.filled:
        job = kube.get("batch/v1", "Job", names.fill_job_name(cache), ns)
        if job is not None:
            _own(kube, job, owners)
        return state
    owned = [owner_reference(state.pvc, controller=True, block=False)]  # nothing to wait for
    for obj in desired.rbac:
        obj["metadata"]["ownerReferences"] = owned
        live = kube.get(obj["apiVersion"], obj["kind"], obj["metadata"]["name"], ns)
        applier.ensure(obj, live)
    if job is None:
        desired_job = desired.fill_job
        desired_job["metadata"]["ownerReferences"] = owners
        desired_job["metadata"]["annotations"] = _made_under(kube, desired, state.pvc, ns)
        job = applier.ensure(desired_job, None)
    else:
        job = _own(kube, job, owners)
    failed = condition_of(job, "Failed")
    if failed and failed.get("status") == "True":
        job = _failed_fill(kube, job, state.pvc, state)
        if job is None:
            return state
    state.fill_job = job
    if (job.get("status") or {}).get("failed"):  # the Job failed, or an attempt did
        state.fill_pod_message = termination_message(kube, job)
    return state


def _uids(obj: dict[str, Any] | None) -> set[str]:
    return {str(r.get("uid")) for r in (obj or {}).get("metadata", {}).get("ownerReferences") or []}


def _own(kube: Kube, job: dict[str, Any], owners: list[dict[str, Any]]) -> dict[str, Any]:
    """The fill Job with `owners` (its cache PVC's). Only the owners change: a Job's template
    is immutable, and a newer operator's image must not be applied to a running fill."""
    if _uids(job) == {str(r.get("uid")) for r in owners}:
        return job
    op = {"op": "add", "path": "/metadata/ownerReferences", "value": owners}
    return kube.json_patch(
        "batch/v1", "Job", job["metadata"]["name"], job["metadata"]["namespace"], [op]
    )


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
        if names.LABEL_CACHE not in labels or name in keep:
            continue
        job = kube.get("batch/v1", "Job", names.fill_job_name(name), ns)
        # by the PVC's owners or the Job's: a stop between the two writes below leaves only
        # the PVC naming the user, which the next pass finishes
        if uid not in _uids(pvc) | _uids(job):
            continue
        others = [r for r in pvc["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
        if others:
            # the Job first: the PVC names the user until both are done
            if job is not None:
                _own(kube, job, others)
            op = [{"op": "replace", "path": "/metadata/ownerReferences", "value": others}]
            if uid in _uids(pvc):
                kube.json_patch("v1", "PersistentVolumeClaim", name, ns, op)
        else:
            if job is not None:
                kube.delete("batch/v1", "Job", job["metadata"]["name"], ns)
            if uid in _uids(pvc):  # never a PVC whose owners the operator did not set
                kube.delete("v1", "PersistentVolumeClaim", name, ns)
        released.append(name)
    return released
