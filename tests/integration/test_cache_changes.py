"""Changing a cache's size, storage class or access mode, and a failed fill, on the real
apiserver (its PVC validation and PersistentVolumeClaimResize admission, StorageClasses with
and without allowVolumeExpansion): no pass is refused, nothing loops (decision 36).

Every one of these failed before: each pass re-applied the whole PVC spec and got a 422 (an
immutable class or mode, a smaller size) or a 403 (a class that cannot expand), forever; a
failed fill Job was deleted by its TTL and made again every hour.

Child statuses (PVC binding, Job outcome) are patched by the test as their controllers would.
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from alpaca_operator.api import AlpacaModelSpec
from alpaca_operator.config import OperatorConfig
from alpaca_operator.reconcile.apply import Applier
from alpaca_operator.reconcile.model import ModelContext, run_model
from alpaca_operator.reconcile.serving import application_for
from alpaca_operator.reconcile.status import write_status
from alpaca_operator.render import names, weights

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
NOW = datetime.datetime(2026, 11, 24, 12, 0, tzinfo=datetime.UTC)
TS = "2026-11-24T12:00:00Z"


@pytest.fixture
def ctx(kube, thirdparty_crds) -> ModelContext:
    return ModelContext(kube, Applier(kube), OperatorConfig(), application_for)


@pytest.fixture(scope="module")
def classes(control_plane) -> Iterator[dict[str, str]]:
    """Two StorageClasses (nothing provisions them: the test binds the claims): one that
    allows volume expansion, one that does not."""
    suffix = uuid.uuid4().hex[:6]
    made = {"expandable": f"expandable-{suffix}", "fixed": f"fixed-{suffix}"}
    for key, name in made.items():
        sc = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": name},
            "provisioner": "example.com/none",
            "allowVolumeExpansion": key == "expandable",
            "volumeBindingMode": "WaitForFirstConsumer",
        }
        control_plane.kubectl_run("apply", "-f", "-", input=json.dumps(sc))
    yield made
    control_plane.kubectl_run("delete", "storageclass", *made.values(), "--wait=false")


def _doc(**cache: Any) -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "examples" / "alpaca-local.yaml").read_text())
    doc["spec"]["weights"]["cache"] |= cache
    return dict(doc)


def _cache(doc: dict[str, Any]) -> str:
    return names.cache_name(AlpacaModelSpec.model_validate(doc["spec"]).weights)


def _create(cp, ns: str, doc: dict[str, Any]) -> None:
    cp.kubectl_run("apply", "-n", ns, "-f", "-", input=json.dumps(doc))


def _edit_cache(cp, ns: str, **cache: Any) -> None:
    patch = {"spec": {"weights": {"cache": cache}}}
    cp.kubectl_run(
        "patch", "-n", ns, "alpacamodel", "smollm2", "--type=merge", "-p", json.dumps(patch)
    )


def _pass(ctx: ModelContext, cp, ns: str, now: datetime.datetime = NOW) -> dict[str, Any]:
    """One reconcile + status write, as the handlers do (an exception fails the test: the
    runtime would retry such a pass forever); the fresh AlpacaModel."""
    body = cp.get_json("alpacamodel", "smollm2", ns)
    outcome = run_model(ctx, body, now)
    write_status(ctx.kube, body, outcome.status)
    fresh = cp.get_json("alpacamodel", "smollm2", ns)
    fresh["requeue_at"] = outcome.requeue_at
    return dict(fresh)


def _weights(obj: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == "WeightsReady")


def _bind(cp, ns: str, cache: str, capacity: str) -> None:
    """What the PV controller (and, after a growth, the resizer) reports."""
    status = {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": capacity}}
    cp.patch_status("pvc", cache, status, ns)


def _fail(cp, ns: str, job: str) -> None:
    """What the Job controller reports when the podFailurePolicy failed the Job."""
    condition = {"status": "True", "reason": "PodFailurePolicy", "lastTransitionTime": TS}
    condition["lastProbeTime"] = TS
    status = {
        "failed": 1,
        "startTime": TS,
        "conditions": [{"type": "FailureTarget", **condition}, {"type": "Failed", **condition}],
    }
    cp.patch_status("job", job, status, ns)


def _filled(ctx, cp, ns: str, doc: dict[str, Any]) -> str:
    """The model created, its cache bound and filled: the cache's name."""
    _create(cp, ns, doc)
    cache = _cache(doc)
    _pass(ctx, cp, ns)
    _bind(cp, ns, cache, doc["spec"]["weights"]["cache"]["size"])
    cp.complete_job(ns, names.fill_job_name(cache))
    obj = _pass(ctx, cp, ns)
    assert _weights(obj)["reason"] == "CacheFilled"
    return cache


def _size(cp, ns: str, cache: str) -> str:
    return str(cp.get_json("pvc", cache, ns)["spec"]["resources"]["requests"]["storage"])


def test_a_cache_grows_where_its_class_allows_and_never_shrinks(
    control_plane, ctx, namespace, classes
):
    cp, ns = control_plane, namespace
    cache = _filled(ctx, cp, ns, _doc(storageClassName=classes["expandable"]))
    _edit_cache(cp, ns, size="2Gi")
    obj = _pass(ctx, cp, ns)
    assert _size(cp, ns, cache) == "2Gi"  # expanded in place, the same volume
    assert (_weights(obj)["status"], _weights(obj)["reason"]) == ("True", "CacheExpanding")
    _bind(cp, ns, cache, "2Gi")
    assert _weights(_pass(ctx, cp, ns))["reason"] == "CacheFilled"

    _edit_cache(cp, ns, size="1Gi")
    before = ctx.kube.writes
    obj = _pass(ctx, cp, ns)
    assert _size(cp, ns, cache) == "2Gi"
    weights_ = _weights(obj)
    assert (weights_["status"], weights_["reason"]) == ("True", "CacheNotShrunk")
    assert "spec.weights.cache.size" in weights_["message"]
    assert ctx.kube.writes == before + 1  # the status only: no shrink is ever sent
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]


def test_a_growth_the_class_cannot_make_is_said_and_not_retried(
    control_plane, ctx, namespace, classes
):
    cp, ns = control_plane, namespace
    cache = _filled(ctx, cp, ns, _doc(storageClassName=classes["fixed"]))
    _edit_cache(cp, ns, size="2Gi")
    obj = _pass(ctx, cp, ns)  # the apiserver refused the growth (403): the pass goes on
    pvc = cp.get_json("pvc", cache, ns)
    assert pvc["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert pvc["metadata"]["annotations"][weights.GROW_REFUSED_ANNOTATION] == "2Gi"
    weights_ = _weights(obj)
    assert (weights_["status"], weights_["reason"]) == ("True", "CacheExpansionRefused")
    assert "spec.weights.cache.size" in weights_["message"]
    assert "must support resize" in weights_["message"]  # the apiserver's own words
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    before = ctx.kube.writes
    _pass(ctx, cp, ns)
    assert ctx.kube.writes == before  # not asked again


def test_another_class_or_mode_fills_a_new_cache_and_the_old_goes_once_unused(
    control_plane, ctx, namespace, classes
):
    cp, ns = control_plane, namespace
    old = _filled(ctx, cp, ns, _doc(storageClassName=classes["fixed"]))
    assert cp.get_json("rayservice", "smollm2", ns) is not None
    _edit_cache(cp, ns, storageClassName=classes["expandable"])
    _pass(ctx, cp, ns)
    new = _cache(_doc(storageClassName=classes["expandable"]))
    assert new != old
    assert cp.get_json("pvc", new, ns)["spec"]["storageClassName"] == classes["expandable"]
    assert cp.get_json("pvc", old, ns)["spec"]["storageClassName"] == classes["fixed"]
    assert old in json.dumps(cp.get_json("rayservice", "smollm2", ns)["spec"])  # still served
    _bind(cp, ns, new, "1Gi")
    cp.complete_job(ns, names.fill_job_name(new))
    obj = _pass(ctx, cp, ns)
    assert new in json.dumps(cp.get_json("rayservice", "smollm2", ns)["spec"])
    gone = cp.get_json("pvc", old, ns)
    assert gone is None or gone["metadata"].get("deletionTimestamp")  # pvc-protection holds it
    assert _weights(obj)["reason"] == "CacheFilled"

    _edit_cache(cp, ns, accessMode="ReadWriteMany")
    _pass(ctx, cp, ns)
    rwx = _cache(_doc(storageClassName=classes["expandable"], accessMode="ReadWriteMany"))
    assert cp.get_json("pvc", rwx, ns)["spec"]["accessModes"] == ["ReadWriteMany"]


def test_two_classes_two_caches_one_class_one_cache(control_plane, ctx, namespace, classes):
    cp, ns = control_plane, namespace
    for name, sc in (("a", "fixed"), ("b", "fixed"), ("c", "expandable")):
        doc = _doc(storageClassName=classes[sc])
        doc["metadata"]["name"] = name
        _create(cp, ns, doc)
        body = cp.get_json("alpacamodel", name, ns)
        write_status(ctx.kube, body, run_model(ctx, body, NOW).status)
    pvcs = {p["metadata"]["name"]: p for p in cp.items("pvc", ns)}
    assert sorted(pvcs) == sorted(_cache(_doc(storageClassName=classes[c])) for c in classes)
    shared = pvcs[_cache(_doc(storageClassName=classes["fixed"]))]
    assert sorted(r["name"] for r in shared["metadata"]["ownerReferences"]) == ["a", "b"]


def test_a_failed_fill_stays_failed_until_its_secret_changes_or_a_retry(
    control_plane, ctx, namespace
):
    cp, ns = control_plane, namespace
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "hf"},
        "stringData": {"HF_TOKEN": "wrong"},
    }
    _create(cp, ns, secret)
    doc = _doc()
    doc["spec"]["weights"]["credentialsSecret"] = "hf"
    _create(cp, ns, doc)
    cache = _cache(doc)
    job = names.fill_job_name(cache)
    _pass(ctx, cp, ns)
    made = cp.get_json("job", job, ns)
    version = cp.get_json("secret", "hf", ns)["metadata"]["resourceVersion"]
    assert made["metadata"]["annotations"][weights.SECRET_VERSION_ANNOTATION] == version
    assert made["spec"]["ttlSecondsAfterFinished"] == 3600

    _fail(cp, ns, job)
    obj = _pass(ctx, cp, ns)
    assert obj["status"]["phase"] == "Failed"
    assert _weights(obj)["reason"] == "FillFailed"
    assert "Secret hf changes" in _weights(obj)["message"]
    # kept: its TTL would have deleted it in an hour and the next pass made another
    assert "ttlSecondsAfterFinished" not in cp.get_json("job", job, ns)["spec"]
    assert obj["requeue_at"] == NOW + datetime.timedelta(seconds=30)  # the Secret, again
    before = ctx.kube.writes
    later = _pass(ctx, cp, ns, NOW + datetime.timedelta(hours=2))
    assert ctx.kube.writes == before
    assert later["status"] == obj["status"]
    uid = cp.get_json("job", job, ns)["metadata"]["uid"]

    secret["stringData"]["HF_TOKEN"] = "right"  # fixed
    _create(cp, ns, secret)
    obj = _pass(ctx, cp, ns, NOW + datetime.timedelta(hours=2))
    assert cp.get_json("job", job, ns) is None
    assert "Secret hf changed" in _weights(obj)["message"]
    _pass(ctx, cp, ns)
    fresh = cp.get_json("job", job, ns)
    assert fresh["metadata"]["uid"] != uid
    assert fresh["metadata"]["annotations"][weights.SECRET_VERSION_ANNOTATION] != version
    before = ctx.kube.writes
    _pass(ctx, cp, ns)
    assert ctx.kube.writes == before  # once

    _fail(cp, ns, job)
    _pass(ctx, cp, ns)
    uid = cp.get_json("job", job, ns)["metadata"]["uid"]
    annotate = f"{weights.RETRY_ANNOTATION}=1"
    cp.kubectl_run("annotate", "-n", ns, "pvc", cache, annotate, "--overwrite")
    _pass(ctx, cp, ns)
    assert cp.get_json("job", job, ns) is None
    _pass(ctx, cp, ns)
    assert cp.get_json("job", job, ns)["metadata"]["uid"] != uid
