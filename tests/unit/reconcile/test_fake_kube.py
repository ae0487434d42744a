"""The fake behaves as the reconcile tests assume (and keeps `Kube`'s signatures)."""

from __future__ import annotations

import inspect

import pytest

from alpaca_operator.kube import ApiError, Kube

from .fake_kube import FakeKube

JOB = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {"name": "j", "namespace": "ns", "labels": {"a": "1"}},
    "spec": {"suspend": True, "template": {"spec": {"containers": [{"image": "x"}]}}},
}


@pytest.mark.parametrize(
    "method", ["apply", "json_patch", "get", "list", "delete", "crd_installed"]
)
def test_the_fake_keeps_the_clients_signatures(method):
    assert inspect.signature(getattr(FakeKube, method)) == inspect.signature(getattr(Kube, method))


def test_apply_creates_then_moves_generation_only_when_content_changes():
    kube = FakeKube()
    first = kube.apply(JOB)
    assert first["metadata"]["generation"] == 1 and first["metadata"]["uid"]
    kube.annotate("batch/v1", "Job", "j", "ns", progress="10")  # another writer's annotation
    same = kube.apply(JOB)
    assert same["metadata"]["generation"] == 1
    assert same["metadata"]["uid"] == first["metadata"]["uid"]
    assert same["metadata"]["annotations"] == {"progress": "10"}
    assert int(same["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    changed = kube.apply({**JOB, "spec": {**JOB["spec"], "suspend": False}})
    assert changed["metadata"]["generation"] == 2
    assert kube.writes == 3 and [w.verb for w in kube.writes_log] == ["apply"] * 3


def test_a_jobs_template_is_immutable():
    kube = FakeKube()
    kube.apply(JOB)
    other = {**JOB, "spec": {**JOB["spec"], "template": {"spec": {"containers": []}}}}
    with pytest.raises(ApiError, match="immutable"):
        kube.apply(other)


def test_json_patch_list_selector_and_delete():
    kube = FakeKube()
    kube.apply(JOB)
    patched = kube.json_patch(
        "batch/v1", "Job", "j", "ns", [{"op": "replace", "path": "/spec/suspend", "value": False}]
    )
    assert patched["spec"]["suspend"] is False and patched["metadata"]["generation"] == 2
    assert [o["metadata"]["name"] for o in kube.list("batch/v1", "Job", "ns", "a=1")] == ["j"]
    assert kube.list("batch/v1", "Job", "ns", "a=2") == []
    assert kube.list("batch/v1", "Job", "other") == []
    assert kube.delete("batch/v1", "Job", "j", "ns") is True
    assert kube.delete("batch/v1", "Job", "j", "ns") is False
    assert kube.get("batch/v1", "Job", "j", "ns") is None


def test_status_apply_merges_and_leaves_the_spec():
    kube = FakeKube()
    kube.put({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "n"}})
    kube.set_status("v1", "Service", "s", "n", {"progress": {"step": 3}})
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "s", "namespace": "n"},
            "status": {"phase": "Ready"},
        },
        subresource="status",
    )
    assert kube.stored("v1", "Service", "s", "n")["status"] == {
        "progress": {"step": 3},
        "phase": "Ready",
    }
    assert kube.writes_log[-1].verb == "apply/status"
