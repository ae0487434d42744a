"""Changes to a cache that a PVC cannot take as they are (decision 36): a new size is grown or
kept, never shrunk; another storage class or access mode is another cache; a failed fill stays
failed until what it was made under changes, then runs once more.

The fake here plays the apiserver's rules for PVCs (spec immutable but for growing a bound
claim; the PersistentVolumeClaimResize admission plugin) so that a pass that would send a
refused write fails the test instead of passing on the fake."""

from __future__ import annotations

import copy
import datetime
from typing import Any

import pytest
from kubernetes.utils.quantity import parse_quantity

from alpaca_operator import conditions as cond
from alpaca_operator.api import AlpacaModelSpec
from alpaca_operator.api.weights import Weights
from alpaca_operator.kube import ApiError
from alpaca_operator.observe import model as observe
from alpaca_operator.reconcile.apply import Applier
from alpaca_operator.reconcile.cache import ensure_cache
from alpaca_operator.render import names, weights
from alpaca_operator.render.weights import cache_manifests
from alpaca_weights import contract

from .fake_kube import FakeKube, Write
from .support import (
    ALL_CRDS,
    API,
    NOW,
    NS,
    TS,
    complete_job,
    create,
    example,
    fail_job,
    model_context,
    model_pass,
    rayservice_ready,
    reasons,
    terminated_pod,
)

IMAGE = "alpaca-weights:test"
REFUSED = (
    'persistentvolumeclaims "x" is forbidden: only dynamically provisioned pvc can be resized '
    "and the storageclass that provisions the pvc must support resize"
)


class PvcRules(FakeKube):
    """The fake, with the apiserver's PVC rules: storageClassName and accessModes never change,
    the size never shrinks and grows only on a bound claim whose class allows expansion."""

    def __init__(self, crds=(), expandable: bool = True) -> None:
        super().__init__(crds)
        self.expandable = expandable

    def apply(self, obj: dict[str, Any], subresource: str | None = None) -> dict[str, Any]:
        meta = obj["metadata"]
        live = self.objects.get(("v1", obj["kind"], meta.get("namespace") or "", meta["name"]))
        if obj["kind"] == "PersistentVolumeClaim" and live is not None and not subresource:
            self._check(obj, live)
        return super().apply(obj, subresource)

    def _check(self, obj: dict[str, Any], live: dict[str, Any]) -> None:
        spec, made = obj["spec"], live["spec"]
        for field in ("storageClassName", "accessModes"):
            if spec.get(field) != made.get(field):
                self._refuse(422, f"spec.{field}: spec is immutable after creation")
        want = parse_quantity(spec["resources"]["requests"]["storage"])
        have = parse_quantity(made["resources"]["requests"]["storage"])
        if want < have:
            self._refuse(
                422, "spec.resources.requests.storage: field can not be less than previous value"
            )
        if want > have and (live.get("status") or {}).get("phase") != "Bound":
            self._refuse(
                422,
                "spec: spec is immutable after creation except resources.requests for bound claims",
            )
        if want > have and not self.expandable:
            self._refuse(403, REFUSED)

    def _refuse(self, status: int, message: str) -> None:
        self._wrote("PersistentVolumeClaim")
        self.writes_log.append(Write("refused", "PersistentVolumeClaim", message))
        raise ApiError(
            status, {"reason": "Invalid" if status == 422 else "Forbidden", "message": message}
        )


def _doc(**cache: Any) -> dict[str, Any]:
    doc = example("alpaca-local.yaml")
    doc["spec"]["weights"]["cache"] |= cache
    return doc


def _cache(doc: dict[str, Any]) -> str:
    return names.cache_name(AlpacaModelSpec.model_validate(doc["spec"]).weights)


def _change(kube: FakeKube, name: str, **cache: Any) -> dict[str, Any]:
    """`kubectl edit` of the model's spec.weights.cache."""
    obj = kube.objects[(API, "AlpacaModel", NS, name)]
    obj["spec"]["weights"]["cache"] |= cache
    obj["metadata"]["generation"] += 1
    return copy.deepcopy(obj)


def _bind(kube: FakeKube, cache: str, capacity: str) -> None:
    """What the PV controller reports once a volume is bound (and the resizer, once grown)."""
    kube.set_status(
        "v1",
        "PersistentVolumeClaim",
        cache,
        NS,
        {"phase": "Bound", "capacity": {"storage": capacity}},
    )


def _pvc(kube: FakeKube, cache: str) -> dict[str, Any]:
    return kube.stored("v1", "PersistentVolumeClaim", cache, NS)


def _size(pvc: dict[str, Any]) -> str:
    return pvc["spec"]["resources"]["requests"]["storage"]


def _weights(obj: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == cond.WEIGHTS)


def _serving(kube: PvcRules, doc: dict[str, Any], name: str = "smollm2") -> str:
    """A model created, filled, its cache bound and its RayService ready: the cache's name."""
    ctx = model_context(kube)
    create(kube, doc, name)
    cache = _cache(doc)
    model_pass(ctx, name)
    _bind(kube, cache, doc["spec"]["weights"]["cache"]["size"])
    complete_job(kube, names.fill_job_name(cache))
    model_pass(ctx, name)
    rayservice_ready(kube, name, 1)
    obj, _ = model_pass(ctx, name)
    assert obj["status"]["phase"] == "Ready"
    return cache


# --- names ----------------------------------------------------------------------------


def test_a_cache_is_named_by_its_storage_class_and_access_mode_only_when_not_the_defaults():
    plain = Weights(source="hf://o/m")
    legacy = contract.key_of(names.weights_identity(plain))  # the name before volumes counted
    assert names.cache_name(plain) == legacy
    assert names.cache_name(Weights(source="hf://o/m", cache={"size": "80Gi"})) == legacy
    efs = Weights(source="hf://o/m", cache={"storageClassName": "efs"})
    nfs = Weights(source="hf://o/m", cache={"storageClassName": "nfs"})
    rwo = Weights(source="hf://o/m", cache={"accessMode": "ReadWriteOnce"})
    rwm = Weights(source="hf://o/m", cache={"accessMode": "ReadWriteMany"})
    assert names.cache_name(rwm) == legacy
    found = {names.cache_name(w) for w in (plain, efs, nfs, rwo)}
    assert len(found) == 4
    assert names.cache_name(Weights(source="hf://o/m", cache={"storageClassName": "efs"})) == (
        names.cache_name(efs)
    )
    assert all(n.startswith("weights-m-") and len(n) <= 49 for n in found)


def test_models_share_a_cache_of_one_class_and_not_of_two():
    kube = PvcRules(ALL_CRDS)
    ctx = model_context(kube)
    create(kube, _doc(storageClassName="efs"), "a")
    create(kube, _doc(storageClassName="efs"), "b")
    create(kube, _doc(storageClassName="nfs"), "c")
    for name in ("a", "b", "c"):
        model_pass(ctx, name)
    efs, nfs = _cache(_doc(storageClassName="efs")), _cache(_doc(storageClassName="nfs"))
    assert kube.names("PersistentVolumeClaim") == sorted([efs, nfs])
    assert _pvc(kube, efs)["spec"]["storageClassName"] == "efs"
    assert _pvc(kube, nfs)["spec"]["storageClassName"] == "nfs"
    assert len(kube.names("Job")) == 2


# --- size -----------------------------------------------------------------------------


def test_a_larger_size_grows_the_bound_cache_in_place():
    kube = PvcRules(ALL_CRDS)
    ctx = model_context(kube)
    cache = _serving(kube, _doc(storageClassName="expandable"))
    _change(kube, "smollm2", size="3Gi")
    obj, _ = model_pass(ctx, "smollm2")  # a 422 before: the whole spec was re-applied
    assert _size(_pvc(kube, cache)) == "3Gi"
    assert kube.names("PersistentVolumeClaim") == [cache]
    assert obj["status"]["phase"] == "Ready"
    assert (_weights(obj)["status"], _weights(obj)["reason"]) == ("True", cond.CACHE_EXPANDING)
    assert "grows from 1Gi to 3Gi" in _weights(obj)["message"]
    _bind(kube, cache, "3Gi")  # the resizer is done
    obj, _ = model_pass(ctx, "smollm2")
    assert _weights(obj)["reason"] == cond.CACHE_FILLED


def test_a_growth_the_class_refuses_is_said_once_and_not_asked_again():
    kube = PvcRules(ALL_CRDS, expandable=False)
    ctx = model_context(kube)
    cache = _serving(kube, _doc(storageClassName="fixed"))
    _change(kube, "smollm2", size="3Gi")
    obj, outcome = model_pass(ctx, "smollm2")  # no exception: the pass goes on
    pvc = _pvc(kube, cache)
    assert _size(pvc) == "1Gi"
    assert pvc["metadata"]["annotations"][weights.GROW_REFUSED_ANNOTATION] == "3Gi"
    weights_ = _weights(obj)
    assert (weights_["status"], weights_["reason"]) == ("True", cond.CACHE_EXPANSION_REFUSED)
    assert "spec.weights.cache.size" in weights_["message"]
    assert "must support resize" in weights_["message"]
    assert obj["status"]["phase"] == "Ready"  # it keeps serving from the cache it has
    assert kube.names("PersistentVolumeClaim") == [cache]
    assert ("Warning", cond.CACHE_EXPANSION_REFUSED) in [(e.type, e.reason) for e in outcome.events]

    writes = kube.writes
    obj, outcome = model_pass(ctx, "smollm2")
    assert kube.writes == writes, kube.writes_log[-3:]  # not asked again, nothing written
    assert not outcome.events

    # another user of the cache, at the old size, keeps the record (and asks for nothing)
    create(kube, _doc(storageClassName="fixed"), "other")
    model_pass(ctx, "other")
    model_pass(ctx, "smollm2")
    assert weights.GROW_REFUSED_ANNOTATION in _pvc(kube, cache)["metadata"]["annotations"]
    assert len([w for w in kube.writes_log if w.verb == "refused"]) == 1

    # back to the size it has: filled as it is (the record stays, for whoever asks for 3Gi)
    _change(kube, "smollm2", size="1Gi")
    obj, _ = model_pass(ctx, "smollm2")
    assert _weights(obj)["reason"] == cond.CACHE_FILLED
    assert len([w for w in kube.writes_log if w.verb == "refused"]) == 1


def test_a_smaller_size_is_never_asked_for_and_the_larger_cache_stays():
    kube = PvcRules(ALL_CRDS)
    ctx = model_context(kube)
    cache = _serving(kube, _doc(storageClassName="expandable", size="2Gi"))
    writes = kube.writes
    _change(kube, "smollm2", size="1Gi")
    obj, outcome = model_pass(ctx, "smollm2")
    assert _size(_pvc(kube, cache)) == "2Gi"
    assert [w for w in kube.writes_log[writes:] if w.kind == "PersistentVolumeClaim"] == []
    weights_ = _weights(obj)
    assert (weights_["status"], weights_["reason"]) == ("True", cond.CACHE_NOT_SHRUNK)
    assert "stays 2Gi" in weights_["message"] and "spec.weights.cache.size" in weights_["message"]
    assert (cond.CACHE_NOT_SHRUNK, "Normal") in [(e.reason, e.type) for e in outcome.events]
    assert obj["status"]["phase"] == "Ready"


def test_a_growth_waits_until_the_claim_is_bound():
    kube = PvcRules(ALL_CRDS)
    ctx = model_context(kube)
    create(kube, _doc(storageClassName="expandable"), "smollm2")
    cache = _cache(_doc(storageClassName="expandable"))
    model_pass(ctx, "smollm2")  # a WaitForFirstConsumer class: Pending until the fill's pod
    _change(kube, "smollm2", size="3Gi")
    model_pass(ctx, "smollm2")
    assert _size(_pvc(kube, cache)) == "1Gi"
    _bind(kube, cache, "1Gi")  # its binding wakes the cache's users
    model_pass(ctx, "smollm2")
    assert _size(_pvc(kube, cache)) == "3Gi"


# --- storage class and access mode ----------------------------------------------------


def test_another_storage_class_fills_a_new_cache_and_releases_the_old_once_served():
    kube = PvcRules(ALL_CRDS)
    ctx = model_context(kube)
    old = _serving(kube, _doc(storageClassName="fixed"))
    new = _cache(_doc(storageClassName="fast"))
    _change(kube, "smollm2", storageClassName="fast")
    obj, _ = model_pass(ctx, "smollm2")  # a 422 before: storageClassName is immutable
    assert kube.names("PersistentVolumeClaim") == sorted([old, new])
    assert _pvc(kube, new)["spec"]["storageClassName"] == "fast"
    assert _pvc(kube, old)["spec"]["storageClassName"] == "fixed"
    claims = str(kube.stored("ray.io/v1", "RayService", "smollm2", NS))
    assert old in claims and new not in claims  # it serves from the old cache meanwhile
    assert _weights(obj)["reason"] in (cond.FILL_PENDING, cond.DOWNLOADING)
    _bind(kube, new, "1Gi")
    complete_job(kube, names.fill_job_name(new))
    model_pass(ctx, "smollm2")  # serving switches, the old cache goes
    assert kube.names("PersistentVolumeClaim") == [new]
    assert new in str(kube.stored("ray.io/v1", "RayService", "smollm2", NS))


def test_another_access_mode_is_another_cache():
    kube = PvcRules(ALL_CRDS)
    ctx = model_context(kube)
    old = _serving(kube, _doc())  # ReadWriteOnce
    _change(kube, "smollm2", accessMode="ReadWriteMany")
    model_pass(ctx, "smollm2")
    new = _cache(_doc(accessMode="ReadWriteMany"))
    assert kube.names("PersistentVolumeClaim") == sorted([old, new])
    assert _pvc(kube, new)["spec"]["accessModes"] == ["ReadWriteMany"]


def test_a_cache_made_with_other_class_or_mode_is_used_as_it_was_made():
    """A cache from before class and mode named it: another user of the same name (the
    defaults) takes its class and modes instead of asking the apiserver to change them."""
    kube = PvcRules(ALL_CRDS)
    spec = Weights(source="hf://o/m")
    made = cache_manifests(spec, NS, IMAGE).pvc
    made["spec"] |= {"storageClassName": "efs", "accessModes": ["ReadWriteOnce"]}
    kube.put(made)
    user = create(kube, example("alpaca-local.yaml"), "user")
    state = ensure_cache(kube, Applier(kube), cache_manifests(spec, NS, IMAGE), user)
    assert state.pvc["spec"]["storageClassName"] == "efs"
    assert state.pvc["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_a_pvc_of_the_caches_name_made_by_hand_is_not_taken_over():
    kube = PvcRules(ALL_CRDS)
    spec = Weights(source="hf://o/m")
    squatter = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": names.cache_name(spec), "namespace": NS},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}},
    }
    kube.put(squatter)
    user = create(kube, example("alpaca-local.yaml"), "user")
    # refused, and said on the object as ApiRefused (reconcile/runtime.py)
    with pytest.raises(ApiError) as refused:
        ensure_cache(kube, Applier(kube), cache_manifests(spec, NS, IMAGE), user)
    assert refused.value.status == 422


# --- a failed fill --------------------------------------------------------------------


def _secret(kube: FakeKube, name: str, token: str) -> None:
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": NS},
            "stringData": {"HF_TOKEN": token},
        }
    )


def _failing(kube: FakeKube, secret: str | None = None) -> tuple[str, str]:
    """A model whose fill failed (Unauthorized): its cache and fill Job names."""
    doc = example("alpaca-local.yaml")
    if secret:
        doc["spec"]["weights"]["credentialsSecret"] = secret
    create(kube, doc, "smollm2")
    cache = _cache(doc)
    job = names.fill_job_name(cache)
    model_pass(model_context(kube), "smollm2")
    kube.objects[("batch/v1", "Job", NS, job)]["metadata"]["uid"] = "job-1"
    terminated_pod(kube, job, f"{job}-a", "Unauthorized: the source refused the token")
    fail_job(kube, job, "PodFailurePolicy")
    return cache, job


def test_a_failed_fill_stays_failed_and_keeps_its_job():
    kube = FakeKube(ALL_CRDS)
    ctx = model_context(kube)
    cache, job = _failing(kube)
    assert kube.stored("batch/v1", "Job", job, NS)["spec"]["ttlSecondsAfterFinished"] == 3600
    obj, outcome = model_pass(ctx, "smollm2")
    assert reasons(obj)[cond.WEIGHTS] == "Unauthorized"
    assert f"kubectl annotate pvc {cache} alpaca.dev/retry-fill=" in _weights(obj)["message"]
    # the TTL would delete it in an hour, and the next pass would make another: no more
    assert "ttlSecondsAfterFinished" not in kube.stored("batch/v1", "Job", job, NS)["spec"]
    assert outcome.requeue_at is None  # no Secret to look at: nothing to wait for
    writes = kube.writes
    for _ in range(3):
        obj, _ = model_pass(ctx, "smollm2", NOW + datetime.timedelta(hours=2))
    assert kube.writes == writes
    assert reasons(obj)[cond.WEIGHTS] == "Unauthorized"
    assert kube.stored("batch/v1", "Job", job, NS)["metadata"]["uid"] == "job-1"


def test_a_changed_secret_fills_again_once():
    kube = FakeKube(ALL_CRDS)
    ctx = model_context(kube)
    _secret(kube, "hf", "wrong")
    cache, job = _failing(kube, secret="hf")
    version = kube.stored("v1", "Secret", "hf", NS)["metadata"]["resourceVersion"]
    made = kube.stored("batch/v1", "Job", job, NS)["metadata"]["annotations"]
    assert made[weights.SECRET_VERSION_ANNOTATION] == version

    obj, outcome = model_pass(ctx, "smollm2")
    assert reasons(obj)[cond.WEIGHTS] == "Unauthorized"
    assert "Secret hf changes" in _weights(obj)["message"]
    # the Secret is not watched: the pass comes back to it, 30 s after the failure at first
    failed_at = datetime.datetime.fromisoformat(TS.replace("Z", "+00:00"))
    assert outcome.requeue_at == failed_at + datetime.timedelta(seconds=30)

    _secret(kube, "hf", "right")  # fixed
    obj, outcome = model_pass(ctx, "smollm2", NOW + datetime.timedelta(seconds=30))
    assert kube.names("Job") == []  # the failed Job goes; its deletion wakes the next pass
    assert reasons(obj)[cond.WEIGHTS] == cond.FILL_PENDING
    assert "Secret hf changed" in _weights(obj)["message"]
    model_pass(ctx, "smollm2")
    fresh = kube.stored("batch/v1", "Job", job, NS)
    assert fresh["metadata"]["uid"] != "job-1" and "status" not in fresh
    assert fresh["metadata"]["annotations"][weights.SECRET_VERSION_ANNOTATION] != version
    writes = kube.writes
    model_pass(ctx, "smollm2")
    assert kube.writes == writes  # once
    assert cache in kube.names("PersistentVolumeClaim")


def test_a_retry_annotation_on_the_cache_fills_again_once_per_value():
    kube = FakeKube(ALL_CRDS)
    ctx = model_context(kube)
    cache, job = _failing(kube)
    model_pass(ctx, "smollm2")
    kube.annotate("v1", "PersistentVolumeClaim", cache, NS, **{weights.RETRY_ANNOTATION: "1"})
    obj, _ = model_pass(ctx, "smollm2")
    assert kube.names("Job") == []
    assert "alpaca.dev/retry-fill=1" in _weights(obj)["message"]
    model_pass(ctx, "smollm2")
    assert (
        kube.stored("batch/v1", "Job", job, NS)["metadata"]["annotations"][weights.RETRY_ANNOTATION]
        == "1"
    )
    fail_job(kube, job, "PodFailurePolicy")  # fails again
    model_pass(ctx, "smollm2")
    obj, _ = model_pass(ctx, "smollm2")
    assert kube.names("Job") == [job] and reasons(obj)[cond.WEIGHTS] == "Unauthorized"
    kube.annotate("v1", "PersistentVolumeClaim", cache, NS, **{weights.RETRY_ANNOTATION: "2"})
    model_pass(ctx, "smollm2")
    assert kube.names("Job") == []


def test_a_fill_that_ran_out_of_space_fills_again_when_the_cache_grows():
    kube = PvcRules(ALL_CRDS)
    ctx = model_context(kube)
    doc = _doc(storageClassName="expandable")
    create(kube, doc, "smollm2")
    cache = _cache(doc)
    job = names.fill_job_name(cache)
    model_pass(ctx, "smollm2")
    _bind(kube, cache, "1Gi")
    terminated_pod(kube, job, f"{job}-a", "NoSpaceLeft: the cache volume is full")
    fail_job(kube, job, "PodFailurePolicy")
    obj, _ = model_pass(ctx, "smollm2")
    assert reasons(obj)[cond.WEIGHTS] == "NoSpaceLeft"
    _change(kube, "smollm2", size="3Gi")
    obj, _ = model_pass(ctx, "smollm2")
    assert _size(_pvc(kube, cache)) == "3Gi" and kube.names("Job") == []
    assert "the cache grew from 1Gi to 3Gi" in _weights(obj)["message"]
    model_pass(ctx, "smollm2")
    made = kube.stored("batch/v1", "Job", job, NS)["metadata"]["annotations"]
    assert made[weights.SIZE_ANNOTATION] == "3Gi"


def test_a_failed_job_made_before_keeps_failing_until_a_change():
    """A failed fill Job an older operator made (no record of what it was made under): what
    holds now is recorded, nothing runs again."""
    kube = FakeKube(ALL_CRDS)
    ctx = model_context(kube)
    _secret(kube, "hf", "wrong")
    _, job = _failing(kube, secret="hf")
    kube.objects[("batch/v1", "Job", NS, job)]["metadata"]["annotations"] = {}
    model_pass(ctx, "smollm2")
    assert kube.names("Job") == [job]
    made = kube.stored("batch/v1", "Job", job, NS)["metadata"]["annotations"]
    assert made[weights.SECRET_VERSION_ANNOTATION] == kube.resource_version(
        "v1", "Secret", "hf", NS
    )
    assert made[weights.SIZE_ANNOTATION] == "1Gi"
    _secret(kube, "hf", "right")
    model_pass(ctx, "smollm2")
    assert kube.names("Job") == []


def test_the_termination_message_is_the_current_jobs_not_an_earlier_ones():
    kube = FakeKube(ALL_CRDS)
    _, job = _failing(kube)
    pods = kube.objects[("v1", "Pod", NS, f"{job}-a")]["metadata"]
    pods["ownerReferences"] = [{"kind": "Job", "name": job, "uid": "job-0"}]  # the Job before
    terminated_pod(kube, job, f"{job}-b", "SourceNotFound: gone", created="2026-11-24T11:00:00Z")
    kube.objects[("v1", "Pod", NS, f"{job}-b")]["metadata"]["ownerReferences"] = [
        {"kind": "Job", "name": job, "uid": "job-1"}
    ]
    obj, _ = model_pass(model_context(kube), "smollm2")
    assert reasons(obj)[cond.WEIGHTS] == "SourceNotFound"


def test_the_secret_is_looked_at_with_backoff_up_to_every_ten_minutes():
    failed = datetime.datetime(2026, 11, 24, 12, 0, tzinfo=datetime.UTC)
    job = {
        "metadata": {"name": "j"},
        "status": {"conditions": [{"type": "Failed", "status": "True", "lastTransitionTime": TS}]},
    }
    state = observe.CacheState(fill_job=job, credentials_secret="hf")
    seen = []
    now = failed
    for _ in range(8):
        now = observe.secret_recheck([state], now)
        seen.append(int((now - failed).total_seconds()))
    assert seen == [30, 90, 210, 450, 930, 1530, 2130, 2730]
    later = failed + datetime.timedelta(days=3, seconds=7)
    at = observe.secret_recheck([state], later)
    assert datetime.timedelta(0) < at - later <= observe.SECRET_RECHECK_MAX
    assert observe.secret_recheck([observe.CacheState(fill_job=job)], now) is None
