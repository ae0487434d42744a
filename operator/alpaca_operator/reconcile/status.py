"""Writing a custom resource's status: server-side apply of the fields the operator owns,
only when they changed."""

from __future__ import annotations

from typing import Any

from alpaca_operator.kube import Kube

OWNED = (
    "phase",
    "observedGeneration",
    "conditions",
    "endpoint",
    "replicas",
    "readyReplicas",
    "ready",
    "output",
)


def _owned(status: dict[str, Any]) -> dict[str, Any]:
    return {k: status[k] for k in OWNED if status.get(k) not in (None, "")}


def write_status(kube: Kube, body: dict[str, Any], status: dict[str, Any]) -> bool:
    """Apply the status if it differs from the live one; True when a write was sent."""
    new = _owned(status)
    if new == _owned(body.get("status") or {}):
        return False
    meta = body["metadata"]
    kube.apply(
        {
            "apiVersion": body["apiVersion"],
            "kind": body["kind"],
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "status": new,
        },
        subresource="status",
    )
    return True
