"""events.py: the Event the operator posts on a custom resource."""

from __future__ import annotations

import datetime

from alpaca_operator.accept import Event
from alpaca_operator.events import MESSAGE_MAX, event_object

BODY = {
    "apiVersion": "alpaca.dev/v1alpha1",
    "kind": "AlpacaModel",
    "metadata": {"name": "m", "namespace": "team", "uid": "u-1"},
}


def test_an_event_names_its_object_and_is_new_each_time():
    now = datetime.datetime(2026, 12, 2, 1, 2, 3, 456789, tzinfo=datetime.UTC)
    event = event_object(BODY, Event("Warning", "CapacityTimeout", "x" * 5000), now)
    assert event["metadata"] == {"generateName": "m.", "namespace": "team"}
    assert event["involvedObject"] == {
        "apiVersion": "alpaca.dev/v1alpha1",
        "kind": "AlpacaModel",
        "name": "m",
        "namespace": "team",
        "uid": "u-1",
    }
    assert (event["type"], event["reason"]) == ("Warning", "CapacityTimeout")
    assert len(event["message"]) == MESSAGE_MAX
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2026-12-02T01:02:03Z"
    assert event["source"] == {"component": "alpaca-operator"}
