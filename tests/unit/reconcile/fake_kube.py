"""An in-memory stand-in for the few `Kube` calls the reconcilers make.

Enough of the apiserver to test what a reconcile decides, not how the apiserver behaves (the
real-apiserver tests in tests/integration stay the authority):

- server-side apply stores the object under the operator's ownership: labels and annotations
  are merged with what others wrote (the weights CLI's progress on its Job), everything else
  the operator applies replaces what was there; `metadata.generation` moves when anything but
  metadata and status changed; uid, resourceVersion and creationTimestamp are set;
- a Job's pod template is immutable, as on a real apiserver: applying a different one fails;
- `create` names an object from its generateName (the Events the operator posts);
- every request that could change state is logged in `writes_log` and counted in `writes`.

Tests play the other controllers with `put` (an object as another writer created it) and
`set_status` (what the Job controller, KubeRay or Karpenter would report).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable
from typing import Any, NamedTuple, cast

from kubernetes.client import ApiClient

from alpaca_operator.kube import ApiError, Kube

Key = tuple[str, str, str, str]  # apiVersion, kind, namespace ("" when cluster-scoped), name
CREATED = "2026-11-24T12:00:00Z"
# Kinds whose objects have no metadata.generation on a real apiserver (their edits leave no
# trace but the resourceVersion).
NO_GENERATION = {
    "Service",
    "PersistentVolumeClaim",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "Node",
    "Pod",
}


class Write(NamedTuple):
    verb: str  # apply, apply/status, create, json-patch, delete
    kind: str
    name: str
    detail: Any = None  # the JSON patch's operations


def _key(api_version: str, kind: str, name: str, namespace: str | None) -> Key:
    return api_version, kind, namespace or "", name


def _content(obj: dict[str, Any]) -> dict[str, Any]:
    """What moves metadata.generation: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _matches(obj: dict[str, Any], selector: str | None) -> bool:
    labels = obj["metadata"].get("labels") or {}
    for term in filter(None, (selector or "").split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


def _field_matches(obj: dict[str, Any], fields: str | None) -> bool:
    """The field selectors the operator sends: spec.nodeName=X and status.phase!=Y."""
    for term in filter(None, (fields or "").split(",")):
        negate = "!=" in term
        path, _, value = term.partition("!=" if negate else "=")
        found: Any = obj
        for part in path.split("."):
            found = (found or {}).get(part)
        if (str(found or "") == value) == negate:
            return False
    return True


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def _patch(obj: dict[str, Any], op: dict[str, Any]) -> None:
    """One RFC 6902 operation (add, replace, remove) on dicts and lists."""
    *parents, last = _pointer(op["path"])
    target: Any = obj
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if isinstance(target, list):
        index = len(target) if last == "-" else int(last)
        if op["op"] == "add":
            target.insert(index, copy.deepcopy(op["value"]))
        elif op["op"] == "replace":
            target[index] = copy.deepcopy(op["value"])
        else:
            del target[index]
    elif op["op"] == "remove":
        del target[last]
    else:
        if op["op"] == "replace" and last not in target:
            raise ApiError(422, {"reason": "Invalid", "message": f"{op['path']} does not exist"})
        target[last] = copy.deepcopy(op["value"])


class FakeKube(Kube):
    """`Kube` over a dict; the methods the reconcilers call, with the same signatures."""

    def __init__(self, crds: Iterable[str] = ()) -> None:
        super().__init__(cast(ApiClient, None))  # never used: every call below is overridden
        self.objects: dict[Key, dict[str, Any]] = {}
        self.crds = set(crds)
        self.writes_log: list[Write] = []
        self._uids = itertools.count(1)
        self._versions = itertools.count(1)
        self._generated = itertools.count(1)

    # --- what a test does as another controller or a user -------------------------------

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store an object as another writer made it (not counted as the operator's write)."""
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        meta.setdefault("uid", f"uid-{next(self._uids)}")
        if obj["kind"] not in NO_GENERATION:
            meta.setdefault("generation", 1)
        meta.setdefault("creationTimestamp", CREATED)
        meta["resourceVersion"] = str(next(self._versions))
        key = _key(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
        self.objects[key] = obj
        return copy.deepcopy(obj)

    def stored(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any]:
        """The stored object (a copy), which must exist."""
        return copy.deepcopy(self.objects[_key(api_version, kind, name, namespace)])

    def names(self, kind: str) -> list[str]:
        return sorted(name for (_, k, _, name) in self.objects if k == kind)

    def set_status(
        self, api_version: str, kind: str, name: str, namespace: str | None, status: dict[str, Any]
    ) -> None:
        """Replace the status, as the object's controller would."""
        obj = self.objects[_key(api_version, kind, name, namespace)]
        obj["status"] = copy.deepcopy(status)
        obj["metadata"]["resourceVersion"] = str(next(self._versions))

    def annotate(
        self, api_version: str, kind: str, name: str, namespace: str | None, **annotations: str
    ) -> None:
        """Annotations another writer adds (the weights CLI's progress on its Job)."""
        obj = self.objects[_key(api_version, kind, name, namespace)]
        obj["metadata"].setdefault("annotations", {}).update(annotations)

    # --- Kube ---------------------------------------------------------------------------

    def apply(self, obj: dict[str, Any], subresource: str | None = None) -> dict[str, Any]:
        meta = obj["metadata"]
        key = _key(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
        live = self.objects.get(key)
        self._wrote(obj["kind"])
        self.writes_log.append(
            Write("apply/status" if subresource else "apply", obj["kind"], meta["name"])
        )
        if subresource == "status":
            if live is None:
                raise ApiError(404, {"reason": "NotFound", "message": f"{meta['name']} not found"})
            live["status"] = {**(live.get("status") or {}), **copy.deepcopy(obj["status"])}
            live["metadata"]["resourceVersion"] = str(next(self._versions))
            return copy.deepcopy(live)
        if live is None:
            return self.put(obj)
        if obj["kind"] == "Job":
            template = (obj.get("spec") or {}).get("template")
            if template != live["spec"].get("template"):
                raise ApiError(
                    422, {"reason": "Invalid", "message": "spec.template: field is immutable"}
                )
        merged = copy.deepcopy(obj)
        merged["metadata"] = {**live["metadata"], **copy.deepcopy(meta)}
        for field in ("labels", "annotations"):
            merged["metadata"][field] = {
                **(live["metadata"].get(field) or {}),
                **(meta.get(field) or {}),
            }
        if "status" in live:
            merged["status"] = live["status"]
        if _content(merged) != _content(live) and "generation" in live["metadata"]:
            merged["metadata"]["generation"] = live["metadata"]["generation"] + 1
        merged["metadata"]["resourceVersion"] = str(next(self._versions))
        self.objects[key] = merged
        return copy.deepcopy(merged)

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        name = meta.get("name") or f"{meta['generateName']}{next(self._generated):05x}"
        self._wrote(obj["kind"])
        self.writes_log.append(Write("create", obj["kind"], name))
        if _key(obj["apiVersion"], obj["kind"], name, meta.get("namespace")) in self.objects:
            raise ApiError(409, {"reason": "AlreadyExists", "message": f"{name} exists"})
        return self.put({**obj, "metadata": {**meta, "name": name}})

    def json_patch(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None,
        ops: list[dict[str, Any]],
    ) -> dict[str, Any]:
        self._wrote(kind)
        self.writes_log.append(Write("json-patch", kind, name, copy.deepcopy(ops)))
        live = self.objects.get(_key(api_version, kind, name, namespace))
        if live is None:
            raise ApiError(404, {"reason": "NotFound", "message": f"{name} not found"})
        before = _content(copy.deepcopy(live))
        for op in ops:
            _patch(live, op)
        if _content(live) != before and "generation" in live["metadata"]:
            live["metadata"]["generation"] += 1
        live["metadata"]["resourceVersion"] = str(next(self._versions))
        return copy.deepcopy(live)

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        obj = self.objects.get(_key(api_version, kind, name, namespace))
        return copy.deepcopy(obj) if obj is not None else None

    def resource_version(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> str | None:
        obj = self.objects.get(_key(api_version, kind, name, namespace))
        return obj["metadata"]["resourceVersion"] if obj is not None else None

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        selector: str | None = None,
        fields: str | None = None,
    ) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(obj)
            for (v, k, ns, _), obj in sorted(self.objects.items())
            if (v, k) == (api_version, kind)
            and (namespace is None or ns == namespace)
            and _matches(obj, selector)
            and _field_matches(obj, fields)
        ]

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        self._wrote(kind)
        self.writes_log.append(Write("delete", kind, name))
        return self.objects.pop(_key(api_version, kind, name, namespace), None) is not None

    def crd_installed(self, name: str) -> bool:
        return name in self.crds
