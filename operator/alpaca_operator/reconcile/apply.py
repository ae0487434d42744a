"""Apply a desired child only when it differs from what is live: an unchanged reconcile writes nothing."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from alpaca_operator.kube import Kube

HASH_ANNOTATION = "alpaca.dev/applied-hash"


def owner_reference(
    owner: dict[str, Any], controller: bool = True, block: bool = True
) -> dict[str, Any]:
    """`block`: the owner's foreground deletion waits for this child (blockOwnerDeletion);
    where the apiserver enforces owner-reference permissions, that needs update on the owner's
    finalizers, which the chart grants for AlpacaModels and AlpacaFineTunes only."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": controller,
        "blockOwnerDeletion": block,
    }


def shared_owners(
    live: dict[str, Any] | None, owner: dict[str, Any], peers: Iterable[dict[str, Any]] = ()
) -> list[dict[str, Any]]:
    """The live object's owners plus this one and `peers` (none a controller): a shared child
    is garbage-collected only when its last user is gone."""
    refs = {
        str(r.get("uid")): r
        for r in ((live or {}).get("metadata", {}).get("ownerReferences") or [])
    }
    for user in (*peers, owner):
        ref = owner_reference(user, controller=False)
        refs[ref["uid"]] = ref
    return sorted(refs.values(), key=lambda r: str(r["uid"]))


def content_hash(obj: dict[str, Any]) -> str:
    return hashlib.sha256(
        json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()[:16]


def contains(live: Any, want: Any) -> bool:
    """Whether `live` holds everything `want` says (the apiserver adds defaults, never changes
    what was set): maps by key, lists element by element, values equal."""
    if isinstance(want, dict):
        return isinstance(live, dict) and all(
            k in live and contains(live[k], v) for k, v in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(live, list)
            and len(live) == len(want)
            and all(contains(a, b) for a, b in zip(live, want, strict=True))
        )
    return bool(live == want)


class Applier:
    """Applies desired children, remembering the generation each apply produced so that a
    hand edit of a child (generation moved, hash annotation unchanged) is corrected. Kinds
    without a generation (Service, PVC, ServiceAccount, Role, RoleBinding) are compared field
    by field with what is desired instead."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._applied: dict[tuple[str, str, str], int] = {}

    def ensure(self, desired: dict[str, Any], live: dict[str, Any] | None) -> dict[str, Any]:
        """Server-side apply `desired` unless the live object already is what we applied."""
        digest = content_hash(desired)
        meta = desired["metadata"]
        key = (desired["kind"], meta.get("namespace", ""), meta["name"])
        if (
            live is not None
            and (live["metadata"].get("annotations") or {}).get(HASH_ANNOTATION) == digest
        ):
            generation = live["metadata"].get("generation")
            if generation is None:
                if contains(live, desired):
                    return live
            else:
                remembered = self._applied.get(key)
                if remembered is None or remembered == generation:
                    return live
        body = json.loads(json.dumps(desired))
        body["metadata"].setdefault("annotations", {})[HASH_ANNOTATION] = digest
        result = self.kube.apply(body)
        self._applied[key] = result["metadata"].get("generation")
        return result
