"""reconcile/cache.py: one cache PVC per weights identity, owned by all its users, filled once
by one Job that has the same owners (decisions 9 and 27)."""

from __future__ import annotations

from typing import Any

from alpaca_operator.api import AlpacaModelSpec
from alpaca_operator.api.weights import Weights
from alpaca_operator.observe.model import CacheState
from alpaca_operator.reconcile.apply import Applier
from alpaca_operator.reconcile.cache import ensure_cache, termination_message
from alpaca_operator.render import names
from alpaca_operator.render.weights import FILLED_ANNOTATION, cache_manifests

from .fake_kube import FakeKube
from .support import (
    NS,
    complete_job,
    create,
    example,
    fail_job,
    owners,
    terminated_pod,
)

SPEC = AlpacaModelSpec.model_validate(example("alpaca-local.yaml")["spec"]).weights
CACHE = names.cache_name(SPEC)
JOB = names.fill_job_name(CACHE)
IMAGE = "alpaca-weights:test"


def _user(kube: FakeKube, name: str) -> dict[str, Any]:
    return create(kube, example("alpaca-local.yaml"), name)


def _ensure(
    kube: FakeKube,
    applier: Applier,
    user: dict[str, Any],
    image: str = IMAGE,
    spec: Weights = SPEC,
) -> CacheState:
    """A pass's ensure_cache for `user`, with the cache rendered as its reconciler renders it."""
    return ensure_cache(kube, applier, cache_manifests(spec, NS, image), user)


def _pvc(kube: FakeKube) -> dict[str, Any]:
    return kube.stored("v1", "PersistentVolumeClaim", CACHE, NS)


def _job(kube: FakeKube) -> dict[str, Any]:
    return kube.stored("batch/v1", "Job", JOB, NS)


def test_first_user_creates_the_cache_its_account_and_its_fill_job():
    kube = FakeKube()
    state = _ensure(kube, Applier(kube), _user(kube, "first"))
    assert owners(_pvc(kube)) == [("AlpacaModel", "first", False)]
    # the Job has the PVC's owners, not the PVC (pvc-protection would hold both: decision 27)
    assert owners(_job(kube)) == [("AlpacaModel", "first", False)]
    assert _job(kube)["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE
    account = names.fill_account_name(CACHE)
    for kind in ("ServiceAccount", "Role", "RoleBinding"):
        api = "v1" if kind == "ServiceAccount" else "rbac.authorization.k8s.io/v1"
        assert owners(kube.stored(api, kind, account, NS)) == [
            ("PersistentVolumeClaim", CACHE, True)
        ]
    assert state.pvc is not None and not state.filled
    assert state.fill_job is not None and state.fill_job["metadata"]["name"] == JOB
    assert state.fill_pod_message is None


def test_an_unchanged_second_pass_writes_nothing():
    kube = FakeKube()
    applier = Applier(kube)
    user = _user(kube, "first")
    _ensure(kube, applier, user)
    writes = kube.writes
    _ensure(kube, applier, user)
    assert kube.writes == writes


def test_a_second_user_is_added_to_the_pvc_and_by_a_patch_to_the_job():
    kube = FakeKube()
    applier = Applier(kube)
    _ensure(kube, applier, _user(kube, "first"))
    template = _job(kube)["spec"]["template"]
    kube.writes_log.clear()
    # a newer operator with another image: the running fill keeps its template
    state = _ensure(kube, applier, _user(kube, "second"), "alpaca-weights:newer")
    both = [("AlpacaModel", "first", False), ("AlpacaModel", "second", False)]
    assert owners(_pvc(kube)) == both
    assert owners(_job(kube)) == both
    assert _job(kube)["spec"]["template"] == template
    job_writes = [w for w in kube.writes_log if w.kind == "Job"]
    assert [w.verb for w in job_writes] == ["json-patch"]
    assert [op["path"] for op in job_writes[0].detail] == ["/metadata/ownerReferences"]
    assert owners(state.fill_job) == both
    assert kube.names("Job") == [JOB]  # two users, one fill


def test_a_completed_fill_marks_the_cache_and_a_filled_cache_needs_no_job():
    kube = FakeKube()
    applier = Applier(kube)
    user = _user(kube, "first")
    _ensure(kube, applier, user)
    complete_job(kube, JOB)
    state = _ensure(kube, applier, user)
    assert state.filled
    assert _pvc(kube)["metadata"]["annotations"][FILLED_ANNOTATION] == "true"
    assert state.fill_job is None

    kube.delete("batch/v1", "Job", JOB, NS)  # ttlSecondsAfterFinished
    writes = kube.writes
    state = _ensure(kube, applier, user)
    assert state.filled and kube.writes == writes
    assert kube.names("Job") == []  # the annotation remembers: no second fill

    # a user that comes later finds it filled: it is added to the PVC, and no Job is made
    state = _ensure(kube, applier, _user(kube, "late"))
    assert state.filled and kube.names("Job") == []
    assert [o[1] for o in owners(_pvc(kube))] == ["first", "late"]


def test_a_failed_attempt_reads_the_newest_termination_message():
    kube = FakeKube()
    applier = Applier(kube)
    user = _user(kube, "first")
    _ensure(kube, applier, user)
    terminated_pod(kube, JOB, "old", "DownloadStalled: first", created="2026-11-24T11:00:00Z")
    terminated_pod(kube, JOB, "new", "SourceNotFound: second", created="2026-11-24T11:30:00Z")
    terminated_pod(kube, "another-job", "other", "Unauthorized: not ours")
    assert _ensure(kube, applier, user).fill_pod_message is None  # no failure
    fail_job(kube, JOB, "PodFailurePolicy")
    state = _ensure(kube, applier, user)
    assert state.fill_pod_message == "SourceNotFound: second"


def test_termination_message_skips_pods_without_one():
    kube = FakeKube()
    job = {"metadata": {"name": "j", "namespace": NS}}
    assert termination_message(kube, job) is None
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "namespace": NS, "labels": {"job-name": "j"}},
            "status": {"containerStatuses": [{"name": "c", "state": {"running": {}}}]},
        }
    )
    assert termination_message(kube, job) is None
    terminated_pod(kube, "j", "q", "  InternalError: boom \n")
    assert termination_message(kube, job) == "InternalError: boom"


def test_users_of_different_weights_get_different_caches():
    kube = FakeKube()
    applier = Applier(kube)
    other = SPEC.model_copy(update={"revision": "v2"})
    _ensure(kube, applier, _user(kube, "a"))
    _ensure(kube, applier, _user(kube, "b"), spec=other)
    assert kube.names("PersistentVolumeClaim") == sorted([CACHE, names.cache_name(other)])
    assert len(kube.names("Job")) == 2
