"""store.py: the watch-fed copy the passes read, and the client that reads it."""

from __future__ import annotations

from typing import Any

from alpaca_operator.store import CachedKube, Store, clone, parse_selector, trim_node

from .reconcile.fake_kube import FakeKube

SERVICE = ("v1", "Service")


def _svc(name: str, rv: str, **labels: str) -> dict[str, Any]:
    meta = {"name": name, "namespace": "ns", "resourceVersion": rv, "labels": labels}
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta}


def test_a_newer_copy_is_never_replaced_by_an_older_event():
    store = Store({SERVICE})
    assert store.put(_svc("a", "10", v="write"))  # our write's answer: news
    assert not store.put(_svc("a", "9", v="event"))  # the watch event from before it
    assert store.get("v1", "Service", "a", "ns")["metadata"]["labels"] == {"v": "write"}
    assert not store.put(_svc("a", "10", v="write"))  # the watch event of the write: an echo
    assert store.put(_svc("a", "11", v="later"))
    assert store.get("v1", "Service", "a", "ns")["metadata"]["labels"] == {"v": "later"}


def test_managed_fields_are_not_kept():
    """Nothing reads them, and on KubeRay's objects they are as large as the spec."""
    obj = _svc("a", "1", app="x")
    obj["metadata"]["managedFields"] = [{"manager": "kuberay-operator", "fieldsV1": {"f:spec": {}}}]
    store = Store({SERVICE})
    assert store.put(obj)
    held = store.get("v1", "Service", "a", "ns")
    assert "managedFields" not in held["metadata"]
    assert held["metadata"]["labels"] == {"app": "x"}
    assert "managedFields" in obj["metadata"]  # the caller's object is left as it was


def test_a_clone_is_a_deep_copy_of_a_json_tree():
    tree = {"a": [{"b": 1}, "c", None], "d": {"e": [1.5, True]}}
    copied = clone(tree)
    assert copied == tree
    copied["a"][0]["b"] = 2
    copied["d"]["e"].append(3)
    assert tree == {"a": [{"b": 1}, "c", None], "d": {"e": [1.5, True]}}


def test_reads_are_copies_and_lists_filter_by_namespace_and_labels():
    store = Store({SERVICE})
    store.put(_svc("a", "1", app="x"))
    store.put(_svc("b", "1", app="y"))
    store.get("v1", "Service", "a", "ns")["metadata"]["labels"]["app"] = "changed"
    assert store.get("v1", "Service", "a", "ns")["metadata"]["labels"] == {"app": "x"}
    assert [o["metadata"]["name"] for o in store.list("v1", "Service", "ns", {"app": "y"})] == ["b"]
    assert store.list("v1", "Service", "other") == []
    store.discard("v1", "Service", "a", "ns")
    assert store.get("v1", "Service", "a", "ns") is None
    assert parse_selector("a=b, c=d") == {"a": "b", "c": "d"}


def test_namespaces_are_kept_apart_and_cluster_scoped_objects_listed_whole():
    store = Store({SERVICE, ("v1", "Node")})
    for ns in ("ns", "other"):
        for name in ("a", "b"):
            svc = _svc(name, "1", app=name)
            svc["metadata"]["namespace"] = ns
            store.put(svc)
    store.put({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n", "labels": {}}})
    assert sorted(o["metadata"]["name"] for o in store.list("v1", "Service", "other")) == ["a", "b"]
    assert len(store.list("v1", "Service")) == 4  # every namespace
    assert [o["metadata"]["name"] for o in store.list("v1", "Node")] == ["n"]
    assert store.get("v1", "Node", "n")["metadata"]["name"] == "n"
    store.discard("v1", "Service", "a", "other")
    store.discard("v1", "Service", "b", "other")
    store.discard("v1", "Service", "a", "gone")  # nothing there: no error
    assert store.list("v1", "Service", "other") == []
    assert store.count("v1", "Service") == 2
    assert store.get("v1", "Service", "a", "ns") is not None


def test_a_node_is_kept_as_capacity_sees_it():
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "n", "resourceVersion": "3", "labels": {"gpu": "a10"}},
        "spec": {"unschedulable": True, "podCIDR": "10.0.0.0/24"},
        "status": {
            "allocatable": {"nvidia.com/gpu": "4", "cpu": "8"},
            "images": [{"names": ["x"] * 100}],
        },
    }
    kept = trim_node(node)
    assert kept["status"] == {"allocatable": {"nvidia.com/gpu": "4"}}
    assert kept["spec"] == {"unschedulable": True}
    assert kept["metadata"]["labels"] == {"gpu": "a10"}


def test_the_client_reads_watched_kinds_from_the_store_and_writes_through():
    api = FakeKube(())
    store = Store({SERVICE})
    kube = CachedKube(api, store)
    assert kube.get("v1", "Service", "a", "ns") is None  # not in the store: not asked either
    written = kube.apply(_svc("a", "0", app="x"))
    assert store.get("v1", "Service", "a", "ns") == written
    api.put(_svc("other", "5"))  # the API has it, the store does not (yet)
    assert kube.get("v1", "Service", "other", "ns") is None


def test_a_terminating_crd_is_not_installed():
    crds = ("apiextensions.k8s.io/v1", "CustomResourceDefinition")
    store = Store({crds})
    kube = CachedKube(FakeKube(()), store)
    crd = {
        "apiVersion": crds[0],
        "kind": crds[1],
        "metadata": {"name": "rayservices.ray.io", "resourceVersion": "1"},
        "spec": {"versions": [{"schema": "megabytes"}]},
    }
    store.put(crd)
    assert kube.crd_installed("rayservices.ray.io")
    assert "spec" not in store.get(*crds, "rayservices.ray.io")  # kept trimmed
    crd["metadata"] |= {"resourceVersion": "2", "deletionTimestamp": "2026-12-02T00:00:00Z"}
    store.put(crd)
    assert not kube.crd_installed("rayservices.ray.io")
    assert not kube.crd_installed("nodepools.karpenter.sh")
