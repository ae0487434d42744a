"""What the operator has seen of the cluster: one copy of every watched object, fed by kopf's
watch streams (index handlers, so kopf lists every kind before any handler runs) and by the
operator's own writes (the apiserver's answer to a write is newer than any event before it).

Reconcile passes read here instead of the apiserver, so a pass over an unchanged object sends
no request. Reads hand out copies (of nodes and CRDs, the read-only summaries); a thread lock guards the maps (kopf feeds them from its event
loop, passes read them from worker threads).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from alpaca_operator.kube import Kube
from alpaca_operator.render.capacity import GPU_RESOURCE

KindKey = tuple[str, str]  # (apiVersion, kind)


def clone(obj: Any) -> Any:
    """A deep copy of a JSON tree (dicts, lists, scalars): several times faster than
    copy.deepcopy, which keeps a memo for shared and cyclic references a JSON tree never has.
    Every read of the store hands one out (a pass over an existing-nodes model reads every
    matching node)."""
    if isinstance(obj, dict):
        return {k: clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [clone(v) for v in obj]
    return obj


def _version(obj: Mapping[str, Any]) -> int | None:
    rv = str(obj.get("metadata", {}).get("resourceVersion") or "")
    return int(rv) if rv.isdigit() else None


def trim_node(node: Mapping[str, Any]) -> dict[str, Any]:
    """What capacity needs of a node (its image list and conditions are most of its size)."""
    meta, spec, status = node["metadata"], node.get("spec") or {}, node.get("status") or {}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            k: meta[k]
            for k in ("name", "uid", "resourceVersion", "labels", "deletionTimestamp")
            if k in meta
        },
        "spec": {k: spec[k] for k in ("taints", "unschedulable") if k in spec},
        "status": {
            "allocatable": {
                k: v for k, v in (status.get("allocatable") or {}).items() if k == GPU_RESOURCE
            }
        },
    }


def trim_crd(crd: Mapping[str, Any]) -> dict[str, Any]:
    """Whether a CRD is there and not being deleted (its schemas can be megabytes)."""
    meta = crd["metadata"]
    keep = ("name", "uid", "resourceVersion", "deletionTimestamp")
    return {
        "apiVersion": crd.get("apiVersion", "apiextensions.k8s.io/v1"),
        "kind": "CustomResourceDefinition",
        "metadata": {k: meta[k] for k in keep if k in meta},
    }


# Kinds kept as summaries. Reads hand out the summary itself, not a copy (a pass over a model
# on existing nodes reads every matching node): no caller may change one, and `put` always
# replaces a summary rather than changing it.
TRIM: dict[KindKey, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    ("v1", "Node"): trim_node,
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): trim_crd,
}


def _matches(obj: Mapping[str, Any], selector: Mapping[str, str] | None) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in (selector or {}).items())


class Store:
    """Watched objects by kind, namespace and name. A namespace's list reads that namespace
    only, not every object of the kind in the cluster (at 1,000 models in 100 namespaces, a
    hundredth of them), under the lock every pass takes."""

    def __init__(self, kinds: set[KindKey]) -> None:
        self.kinds = frozenset(kinds)  # what is watched: reads of other kinds go to the API
        self._lock = threading.Lock()
        # kind -> namespace ("" for cluster-scoped kinds) -> name -> object
        self._objects: dict[KindKey, dict[str, dict[str, dict[str, Any]]]] = {k: {} for k in kinds}

    def watches(self, api_version: str, kind: str) -> bool:
        return (api_version, kind) in self.kinds

    def put(self, obj: Mapping[str, Any]) -> bool:
        """Keep `obj` unless the copy held is newer (an event that overtook our own write).
        Whether it was news: False when the store held this very version already (the watch
        event of the operator's own write, whose answer went in first) or a newer one."""
        key = (str(obj["apiVersion"]), str(obj["kind"]))
        if key not in self.kinds:
            return False
        held = TRIM.get(key, dict)(obj)
        meta = held["metadata"]
        if "managedFields" in meta:
            # never read, and often as large as the rest of the object: at 1,000 models the
            # RayServices' and RayClusters' were tens of MiB of the operator's memory
            meta = {k: v for k, v in meta.items() if k != "managedFields"}
            held = {**held, "metadata": meta}
        ns, name = meta.get("namespace") or "", meta["name"]
        with self._lock:
            space = self._objects[key].setdefault(ns, {})
            old = space.get(name)
            new_v, old_v = _version(held), _version(old) if old is not None else None
            if old is not None and new_v is not None and old_v is not None and new_v <= old_v:
                return False
            space[name] = clone(dict(held))
            return True

    def discard(self, api_version: str, kind: str, name: str, namespace: str | None) -> None:
        with self._lock:
            spaces = self._objects.get((api_version, kind), {})
            space = spaces.get(namespace or "")
            if space is not None:
                space.pop(name, None)
                if not space:
                    del spaces[namespace or ""]

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        with self._lock:
            obj = self._objects[(api_version, kind)].get(namespace or "", {}).get(name)
            if obj is None or (api_version, kind) in TRIM:
                return obj
            return clone(obj)

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        selector: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        with self._lock:
            spaces = self._objects[(api_version, kind)]
            found = [
                obj
                for space in (spaces.values() if namespace is None else [spaces.get(namespace, {})])
                for obj in space.values()
                if _matches(obj, selector)
            ]
            return found if (api_version, kind) in TRIM else clone(found)

    def count(self, api_version: str, kind: str) -> int:
        with self._lock:
            return sum(len(space) for space in self._objects[(api_version, kind)].values())


def parse_selector(selector: str | None) -> dict[str, str]:
    """`a=b,c=d` (the only form the operator uses for cached kinds)."""
    pairs = [part.split("=", 1) for part in (selector or "").split(",") if part]
    return {k.strip(): v.strip() for k, v in pairs}


class CachedKube(Kube):
    """The operator's client: reads of watched kinds come from the store, every write's answer
    goes into it; everything is sent through `inner`. Other kinds (a failed Job's pods, the
    peering object) are read from the API."""

    def __init__(self, inner: Kube, store: Store) -> None:
        super().__init__(inner.api, inner.field_manager, inner.on_write, inner.on_request)
        self.inner = inner
        self.store = store

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        if self.store.watches(api_version, kind):
            return self.store.get(api_version, kind, name, namespace)
        return self.inner.get(api_version, kind, name, namespace)

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        selector: str | None = None,
        fields: str | None = None,
    ) -> list[dict[str, Any]]:
        if self.store.watches(api_version, kind) and not fields:
            return self.store.list(api_version, kind, namespace, parse_selector(selector))
        return self.inner.list(api_version, kind, namespace, selector, fields)

    def resource_version(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> str | None:
        return self.inner.resource_version(api_version, kind, name, namespace)

    def apply(self, obj: dict[str, Any], subresource: str | None = None) -> dict[str, Any]:
        result = self.inner.apply(obj, subresource)
        self.store.put(result)
        return result

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.inner.create(obj)

    def json_patch(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None,
        ops: list[dict[str, Any]],
    ) -> dict[str, Any]:
        result = self.inner.json_patch(api_version, kind, name, namespace, ops)
        self.store.put(result)
        return result

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        # the store keeps the object until its DELETED event (or, with finalizers, shows its
        # deletionTimestamp when the watch brings it)
        return self.inner.delete(api_version, kind, name, namespace)
