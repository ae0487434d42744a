"""Posting an Event on a custom resource: core/v1, as `kubectl describe` shows them.

Posted by the operator itself rather than kopf.event, which only works inside a kopf handler:
passes run in the operator's own workers (deadlines, backoff, wakes from other objects)."""

from __future__ import annotations

import datetime
import os
import socket
from typing import Any

from alpaca_operator.accept import Event
from alpaca_operator.kube import Kube

COMPONENT = "alpaca-operator"
MESSAGE_MAX = 1024


def event_object(body: dict[str, Any], event: Event, now: datetime.datetime) -> dict[str, Any]:
    """The Event object for `event` on `body`. Pure."""
    meta = body["metadata"]
    stamp = now.astimezone(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": body["apiVersion"],
            "kind": body["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message[:MESSAGE_MAX],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": os.environ.get("POD_NAME") or socket.gethostname(),
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def post(kube: Kube, body: dict[str, Any], events: list[Event], now: datetime.datetime) -> None:
    for event in events:
        kube.create(event_object(body, event, now))
