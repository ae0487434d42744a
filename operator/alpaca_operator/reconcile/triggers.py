"""Which custom resources a watch event concerns: the runtime's decisions, pure.

The runtime (`reconcile/runtime.py`) takes what kopf's handlers hand it, asks here which
objects to reconcile, and queues their passes; nothing here touches the API.
"""

from __future__ import annotations

import datetime
import fnmatch
from collections.abc import Sequence
from typing import Any, TypeGuard

from alpaca_operator.api import finetune, model
from alpaca_operator.render import names
from alpaca_operator.render.capacity import GPU_RESOURCE

NodeKey = tuple[Any, ...]
Key = tuple[str, str, str]  # (kind, namespace, name) of a custom resource to reconcile


def alive(obj: dict[str, Any] | None) -> TypeGuard[dict[str, Any]]:
    """The object exists and is not being deleted."""
    return obj is not None and not obj["metadata"].get("deletionTimestamp")


def in_scope(patterns: Sequence[str], namespace: str) -> bool:
    """Whether the operator watches a namespace (globs; all when there are none)."""
    return not patterns or any(fnmatch.fnmatch(namespace, p) for p in patterns)


def node_key(body: dict[str, Any]) -> NodeKey:
    """What of a node matters to capacity: its labels, GPUs and whether it takes pods."""
    labels = body["metadata"].get("labels") or {}
    gpus = (body.get("status") or {}).get("allocatable", {}).get(GPU_RESOURCE)
    return tuple(sorted(labels.items())), gpus, bool((body.get("spec") or {}).get("unschedulable"))


def spec_mark(obj: dict[str, Any]) -> tuple[Any, ...]:
    """What of a custom resource asks for a pass when it moves: its uid (deleted and created
    again), its generation (the spec), whether its deletion began. Status writes (ours, the
    trainer's) and annotations do not move it."""
    meta = obj["metadata"]
    return meta.get("uid"), meta.get("generation"), bool(meta.get("deletionTimestamp"))


def child_wakes(body: dict[str, Any], cache_pvc: dict[str, Any] | None) -> list[Key]:
    """The custom resources a child's change concerns, from its labels and owners (and, for a
    weights cache's objects, the cache PVC's owners: every user of the cache)."""
    meta = body["metadata"]
    ns, labels = meta.get("namespace") or "", meta.get("labels") or {}
    keys: list[Key] = []
    if name_ := labels.get(names.LABEL_MODEL):
        keys.append((model.KIND, ns, name_))
    if tune := labels.get(names.LABEL_FINETUNE):
        keys.append((finetune.KIND, ns, tune))
    if labels.get(names.LABEL_CACHE):
        for kind, name in cache_users(body) + cache_users(cache_pvc):
            keys.append((kind, ns, name))
    if owner := nodepool_owner(labels):
        keys.append(owner)
    return list(dict.fromkeys(keys))


def selector_matches(selector: dict[str, str], labels: dict[str, str] | None) -> bool:
    return labels is not None and all(labels.get(k) == v for k, v in selector.items())


def node_wakes(
    before: dict[str, str] | None,
    after: dict[str, str] | None,
    selectors: dict[Key, dict[str, str] | None],
) -> list[Key]:
    """The models on existing nodes a node's change concerns: those whose node selector matches
    the node's labels before or after it (None: a model not yet seen through a pass)."""
    return [
        key
        for key, selector in selectors.items()
        if selector is None
        or selector_matches(selector, before)
        or selector_matches(selector, after)
    ]


def cache_users(pvc: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(kind, name) of every AlpacaModel and AlpacaFineTune that owns a weights cache."""
    refs = (pvc or {}).get("metadata", {}).get("ownerReferences") or []
    return [
        (ref["kind"], ref["name"]) for ref in refs if ref.get("kind") in (model.KIND, finetune.KIND)
    ]


def nodepool_owner(labels: dict[str, str]) -> Key | None:
    """(kind, namespace, name) of the AlpacaModel or AlpacaFineTune a NodePool's labels name
    (`names.nodepool_labels`), if they name one. NodePools from before the kind label were all
    models'."""
    namespace = labels.get(names.LABEL_OWNER_NAMESPACE)
    name = labels.get(names.LABEL_OWNER_NAME)
    kind = labels.get(names.LABEL_OWNER_KIND, model.KIND)
    if not namespace or not name or kind not in (model.KIND, finetune.KIND):
        return None
    return kind, namespace, name


def outranked(peering: dict[str, Any] | None, priority: int, now: datetime.datetime) -> bool:
    """Whether kopf's peering object shows a live replica of higher priority than ours."""
    for peer in ((peering or {}).get("status") or {}).values():
        if not isinstance(peer, dict) or int(peer.get("priority", 0)) <= priority:
            continue
        seen = datetime.datetime.fromisoformat(str(peer.get("lastseen", "1970-01-01T00:00:00")))
        seen = seen if seen.tzinfo else seen.replace(tzinfo=datetime.UTC)
        if (now - seen).total_seconds() < float(peer.get("lifetime", 60)):
            return True
    return False
