"""reconcile/triggers.py: which custom resources a watch event concerns."""

from __future__ import annotations

import datetime
from typing import Any

from alpaca_operator.api import AlpacaModelSpec
from alpaca_operator.reconcile import triggers
from alpaca_operator.render import capacity

from .support import example

NOW = datetime.datetime(2026, 11, 24, 12, 0, tzinfo=datetime.UTC)


def _obj(namespace: str, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "m", "namespace": namespace}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-24T12:00:00Z"
    return {"metadata": meta, "spec": {}}


def _node(gpus: str = "4", unschedulable: bool = False, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "n1", "labels": labels, "resourceVersion": "7"},
        "spec": {"unschedulable": unschedulable},
        "status": {"allocatable": {"nvidia.com/gpu": gpus}, "conditions": [{"type": "Ready"}]},
    }


def test_namespace_scope_is_globs_and_all_when_empty():
    assert triggers.in_scope([], "anything")
    assert triggers.in_scope(["team-*", "ml"], "team-a")
    assert not triggers.in_scope(["team-*", "ml"], "other")


def test_dead_objects_are_not_reconciled():
    assert triggers.alive(_obj("team-a"))
    assert not triggers.alive(_obj("team-b", deleting=True))
    assert not triggers.alive(None)


def test_only_node_changes_capacity_sees_count():
    base = triggers.node_key(_node())
    heartbeat = _node()
    heartbeat["status"]["conditions"] = [{"type": "Ready", "lastHeartbeatTime": "later"}]
    assert triggers.node_key(heartbeat) == base
    assert triggers.node_key(_node(gpus="8")) != base
    assert triggers.node_key(_node(pool="gpu")) != base
    assert triggers.node_key(_node(unschedulable=True)) != base


def test_a_node_change_wakes_the_models_whose_selector_matches_before_or_after():
    selectors: dict[triggers.Key, dict[str, str] | None] = {
        ("AlpacaModel", "a", "on-a10"): {"gpu": "a10"},
        ("AlpacaModel", "a", "on-l4"): {"gpu": "l4"},
        ("AlpacaModel", "b", "anywhere"): {},
        ("AlpacaModel", "b", "unknown"): None,  # no pass yet: woken by any change
    }
    moved = triggers.node_wakes({"gpu": "a10"}, {"gpu": "l4"}, selectors)
    assert sorted(k[2] for k in moved) == ["anywhere", "on-a10", "on-l4", "unknown"]
    added = triggers.node_wakes(None, {"gpu": "h100"}, selectors)
    assert sorted(k[2] for k in added) == ["anywhere", "unknown"]
    gone = triggers.node_wakes({"gpu": "l4"}, None, selectors)
    assert sorted(k[2] for k in gone) == ["anywhere", "on-l4", "unknown"]


def _cr(generation: int, deleting: bool = False, uid: str = "u1") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "m", "namespace": "ns", "generation": generation, "uid": uid}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-24T12:00:00Z"
    return {"metadata": meta, "status": {"phase": "Ready" if generation else ""}}


def test_a_pass_follows_a_spec_change_not_a_status_write():
    mark = triggers.spec_mark(_cr(1))
    status_written = _cr(1)
    status_written["status"] = {"phase": "Deploying"}
    assert triggers.spec_mark(status_written) == mark  # a status write, an annotation
    assert triggers.spec_mark(_cr(2)) != mark
    assert triggers.spec_mark(_cr(1, deleting=True)) != mark
    assert triggers.spec_mark(_cr(1, uid="u2")) != mark  # deleted and created again


def test_a_child_wakes_its_owner_and_a_cache_object_every_user():
    service = {"metadata": {"namespace": "ns", "labels": {"alpaca.dev/model": "m"}}}
    assert triggers.child_wakes(service, None) == [("AlpacaModel", "ns", "m")]
    training = {"metadata": {"namespace": "ns", "labels": {"alpaca.dev/finetune": "f"}}}
    assert triggers.child_wakes(training, None) == [("AlpacaFineTune", "ns", "f")]
    users = [{"kind": "AlpacaModel", "name": "a"}, {"kind": "AlpacaFineTune", "name": "f"}]
    pvc = {"metadata": {"namespace": "ns", "labels": {"alpaca.dev/weights-cache": "c"}}}
    pvc["metadata"]["ownerReferences"] = users
    role = {"metadata": {"namespace": "ns", "labels": {"alpaca.dev/weights-cache": "c"}}}
    expected = [("AlpacaModel", "ns", "a"), ("AlpacaFineTune", "ns", "f")]
    assert triggers.child_wakes(pvc, pvc) == expected
    assert triggers.child_wakes(role, pvc) == expected
    spec = AlpacaModelSpec.model_validate(example("alpaca-karpenter.yaml")["spec"])
    pool = capacity.nodepool(spec.capacity, spec.resources, "team", "spot")
    assert pool is not None
    assert ("AlpacaModel", "team", "spot") in triggers.child_wakes(pool, None)


def test_a_caches_users_are_its_models_and_finetunes():
    pvc = {
        "metadata": {
            "ownerReferences": [
                {"kind": "AlpacaModel", "name": "a"},
                {"kind": "AlpacaFineTune", "name": "f"},
                {"kind": "Something", "name": "x"},
            ]
        }
    }
    assert triggers.cache_users(pvc) == [("AlpacaModel", "a"), ("AlpacaFineTune", "f")]
    assert triggers.cache_users(None) == []


def test_a_rendered_nodepool_names_its_owner():
    spec = AlpacaModelSpec.model_validate(example("alpaca-karpenter.yaml")["spec"])
    pool = capacity.nodepool(spec.capacity, spec.resources, "team", "alpaca-7b-spot")
    assert pool is not None
    owner = ("AlpacaModel", "team", "alpaca-7b-spot")
    assert triggers.nodepool_owner(pool["metadata"]["labels"]) == owner
    assert triggers.child_wakes(pool, None) == [owner]
    tune = capacity.nodepool(spec.capacity, spec.resources, "team", "t", "AlpacaFineTune")
    assert tune is not None
    assert triggers.nodepool_owner(tune["metadata"]["labels"]) == ("AlpacaFineTune", "team", "t")
    # a model's and a fine-tune's of the same name are two NodePools
    assert (
        tune["metadata"]["name"]
        != capacity.nodepool(spec.capacity, spec.resources, "team", "t")["metadata"]["name"]
    )
    # NodePools from before the kind label were all models'
    legacy = {"alpaca.dev/owner-namespace": "team", "alpaca.dev/owner-name": "m"}
    assert triggers.nodepool_owner(legacy) == ("AlpacaModel", "team", "m")
    assert triggers.nodepool_owner({"alpaca.dev/owner-name": "x"}) is None
    assert triggers.nodepool_owner({**legacy, "alpaca.dev/owner-kind": "Pod"}) is None


def _peering(priority: int, lastseen: str, lifetime: int = 60) -> dict[str, Any]:
    return {
        "status": {"peer-a": {"priority": priority, "lastseen": lastseen, "lifetime": lifetime}}
    }


def test_outranked_only_by_a_live_peer_of_higher_priority():
    recent = "2026-11-24T11:59:30"
    assert triggers.outranked(_peering(10, recent), 5, NOW)
    assert not triggers.outranked(_peering(5, recent), 5, NOW)  # equal does not outrank
    assert not triggers.outranked(_peering(10, "2026-11-24T11:50:00"), 5, NOW)  # gone quiet
    assert triggers.outranked(_peering(10, "2026-11-24T11:50:00+00:00", lifetime=900), 5, NOW)
    assert not triggers.outranked(None, 5, NOW)
    assert not triggers.outranked({"status": {"note": "not a peer"}}, 5, NOW)
