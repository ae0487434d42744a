"""reconcile/triggers.py: which objects a watch event or the resync loop reconciles."""

from __future__ import annotations

import datetime
from typing import Any

from alpaca_operator.api import AlpacaModelSpec
from alpaca_operator.reconcile import triggers
from alpaca_operator.render import capacity

from .support import example

NOW = datetime.datetime(2026, 11, 24, 12, 0, tzinfo=datetime.UTC)


def _obj(namespace: str, provisioner: str | None = None, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "m", "namespace": namespace}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-24T12:00:00Z"
    spec = {"capacity": {"provisioner": provisioner}} if provisioner else {}
    return {"metadata": meta, "spec": spec}


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


def test_a_resync_skips_objects_out_of_scope_or_being_deleted():
    objects = [_obj("team-a"), _obj("other"), _obj("team-b", deleting=True)]
    assert triggers.to_reconcile(objects, ["team-*"]) == [objects[0]]
    assert triggers.to_reconcile(objects, []) == objects[:2]
    assert not triggers.alive(None)


def test_node_changes_matter_only_to_models_on_existing_nodes():
    assert triggers.on_existing_nodes(_obj("ns"))  # the default provisioner
    assert triggers.on_existing_nodes(_obj("ns", "existing"))
    assert not triggers.on_existing_nodes(_obj("ns", "karpenter"))


def test_only_node_changes_capacity_sees_wake_models():
    seen: dict[str, Any] = {}
    assert not triggers.node_moved(seen, None, _node())  # the initial listing records
    assert not triggers.node_moved(seen, "MODIFIED", _node())  # a heartbeat
    heartbeat = _node()
    heartbeat["status"]["conditions"] = [{"type": "Ready", "lastHeartbeatTime": "later"}]
    assert not triggers.node_moved(seen, "MODIFIED", heartbeat)
    assert triggers.node_moved(seen, "MODIFIED", _node(gpus="8"))
    assert triggers.node_moved(seen, "MODIFIED", _node(gpus="8", pool="gpu"))
    assert triggers.node_moved(seen, "MODIFIED", _node(gpus="8", unschedulable=True, pool="gpu"))
    assert triggers.node_moved(seen, "DELETED", _node())
    assert seen == {}
    assert not triggers.node_moved(seen, "DELETED", _node())  # never seen: nothing moved
    assert triggers.node_moved(seen, "ADDED", _node())


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


def test_a_rendered_nodepool_names_its_model():
    spec = AlpacaModelSpec.model_validate(example("alpaca-karpenter.yaml")["spec"])
    pool = capacity.nodepool(spec.capacity, spec.resources, "team", "alpaca-7b-spot")
    assert pool is not None
    assert triggers.nodepool_owner(pool["metadata"]["labels"]) == ("team", "alpaca-7b-spot")
    assert triggers.nodepool_owner({"alpaca.dev/owner-name": "x"}) is None


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
