"""What a watch event or the resync loop reconciles: the handlers' decisions, pure.

The handlers in `handlers.py` read what kopf and the API give them, ask here which objects
to reconcile, and call the reconcilers; nothing here touches the API.
"""

from __future__ import annotations

import datetime
import fnmatch
from collections.abc import Iterable, MutableMapping, Sequence
from typing import Any, TypeGuard

from alpaca_operator.api import finetune, model
from alpaca_operator.render.capacity import GPU_RESOURCE

# The labels render/capacity.py puts on a NodePool to name its AlpacaModel (cluster-scoped, it
# cannot carry an owner reference to a namespaced object).
OWNER_NAMESPACE_LABEL = "alpaca.dev/owner-namespace"
OWNER_NAME_LABEL = "alpaca.dev/owner-name"

NodeKey = tuple[Any, ...]


def alive(obj: dict[str, Any] | None) -> TypeGuard[dict[str, Any]]:
    """The object exists and is not being deleted."""
    return obj is not None and not obj["metadata"].get("deletionTimestamp")


def in_scope(patterns: Sequence[str], namespace: str) -> bool:
    """Whether the operator watches a namespace (globs; all when there are none)."""
    return not patterns or any(fnmatch.fnmatch(namespace, p) for p in patterns)


def to_reconcile(
    objects: Iterable[dict[str, Any]], patterns: Sequence[str]
) -> list[dict[str, Any]]:
    """The listed objects a resync reconciles: in a watched namespace, not being deleted."""
    return [o for o in objects if alive(o) and in_scope(patterns, o["metadata"]["namespace"])]


def on_existing_nodes(obj: dict[str, Any]) -> bool:
    """An AlpacaModel whose capacity is existing nodes (the default), so node changes matter."""
    capacity = (obj.get("spec") or {}).get("capacity") or {}
    return bool(capacity.get("provisioner", "existing") == "existing")


def node_key(body: dict[str, Any]) -> NodeKey:
    """What of a node matters to capacity: its labels, GPUs and whether it takes pods."""
    labels = body["metadata"].get("labels") or {}
    gpus = (body.get("status") or {}).get("allocatable", {}).get(GPU_RESOURCE)
    return tuple(sorted(labels.items())), gpus, bool((body.get("spec") or {}).get("unschedulable"))


def node_moved(
    seen: MutableMapping[str, NodeKey], event_type: str | None, body: dict[str, Any]
) -> bool:
    """Record a node event in `seen`; whether it changed what capacity sees.

    Heartbeats (most node events) change nothing here; the initial listing (type None) only
    records what is there (the resume handlers reconcile at start-up).
    """
    name = body["metadata"]["name"]
    now = None if event_type == "DELETED" else node_key(body)
    before = seen.pop(name, None) if now is None else seen.get(name)
    if now is not None:
        seen[name] = now
    return event_type is not None and now != before


def cache_users(pvc: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(kind, name) of every AlpacaModel and AlpacaFineTune that owns a weights cache."""
    refs = (pvc or {}).get("metadata", {}).get("ownerReferences") or []
    return [
        (ref["kind"], ref["name"]) for ref in refs if ref.get("kind") in (model.KIND, finetune.KIND)
    ]


def nodepool_owner(labels: dict[str, str]) -> tuple[str, str] | None:
    """(namespace, name) of the AlpacaModel a NodePool's labels name, if they name one."""
    namespace, name = labels.get(OWNER_NAMESPACE_LABEL), labels.get(OWNER_NAME_LABEL)
    return (namespace, name) if namespace and name else None


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
