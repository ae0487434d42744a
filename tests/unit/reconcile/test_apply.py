"""reconcile/apply.py: owner references, shared owners, and writes only when something changed."""

from __future__ import annotations

from typing import Any

from alpaca_operator.reconcile.apply import (
    HASH_ANNOTATION,
    Applier,
    content_hash,
    owner_reference,
    shared_owners,
)

from .fake_kube import FakeKube


def _user(name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "alpaca.dev/v1alpha1",
        "kind": "AlpacaModel",
        "metadata": {"name": name, "namespace": "ns", "uid": uid},
    }


def _service(port: int = 80) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "svc", "namespace": "ns"},
        "spec": {"ports": [{"port": port}]},
    }


def test_owner_reference_blocks_deletion_and_says_whether_it_controls():
    ref = owner_reference(_user("a", "u1"))
    assert ref == {
        "apiVersion": "alpaca.dev/v1alpha1",
        "kind": "AlpacaModel",
        "name": "a",
        "uid": "u1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert owner_reference(_user("a", "u1"), controller=False)["controller"] is False


def test_shared_owners_add_a_user_once_none_controlling_in_uid_order():
    first = shared_owners(None, _user("b", "u2"))
    assert [(r["name"], r["controller"]) for r in first] == [("b", False)]
    live = {"metadata": {"ownerReferences": first}}
    both = shared_owners(live, _user("a", "u1"))
    assert [r["name"] for r in both] == ["a", "b"]  # sorted by uid: stable, so no spurious diff
    assert not any(r["controller"] for r in both)
    again = shared_owners({"metadata": {"ownerReferences": both}}, _user("b", "u2"))
    assert again == both


def test_content_hash_ignores_key_order():
    assert content_hash({"a": 1, "b": [1, 2]}) == content_hash({"b": [1, 2], "a": 1})
    assert content_hash({"a": 1}) != content_hash({"a": 2})


def test_ensure_writes_once_and_marks_what_it_applied():
    kube = FakeKube()
    applier = Applier(kube)
    desired = _service()
    live = applier.ensure(desired, None)
    assert live["metadata"]["annotations"][HASH_ANNOTATION] == content_hash(desired)
    assert "annotations" not in desired["metadata"]  # the caller's dict is left alone
    assert applier.ensure(_service(), live) is live
    assert kube.writes == 1


def test_ensure_applies_a_changed_desired_object():
    kube = FakeKube()
    applier = Applier(kube)
    live = applier.ensure(_service(80), None)
    live = applier.ensure(_service(81), live)
    assert live["spec"]["ports"] == [{"port": 81}] and kube.writes == 2


def test_a_hand_edit_of_a_child_is_corrected():
    kube = FakeKube()
    applier = Applier(kube)
    applier.ensure(_service(80), None)
    # someone edits the spec: the hash annotation stays, the generation moves
    kube.json_patch(
        "v1", "Service", "svc", "ns", [{"op": "replace", "path": "/spec/ports/0/port", "value": 9}]
    )
    edited = kube.get("v1", "Service", "svc", "ns")
    fixed = applier.ensure(_service(80), edited)
    assert fixed["spec"]["ports"] == [{"port": 80}]


def test_a_restarted_operator_trusts_the_hash():
    """A new Applier remembers no generation: the hash alone says the child is as applied."""
    kube = FakeKube()
    live = Applier(kube).ensure(_service(), None)
    writes = kube.writes
    assert Applier(kube).ensure(_service(), live) == live
    assert kube.writes == writes
