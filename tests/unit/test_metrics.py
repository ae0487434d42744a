"""metrics.py: stage durations from condition transitions, objects per phase."""

from __future__ import annotations

import datetime

from alpaca_operator import conditions as cond
from alpaca_operator.metrics import Metrics

NOW = datetime.datetime(2026, 11, 24, 12, 0, tzinfo=datetime.UTC)


def _sample(metrics: Metrics, name: str, labels: dict[str, str]) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_a_stage_that_became_ready_observes_how_long_it_waited():
    metrics = Metrics()
    before = [
        {"type": cond.WEIGHTS, "status": "False", "lastTransitionTime": "2026-11-24T11:50:00Z"},
        {"type": cond.CAPACITY, "status": "True", "lastTransitionTime": "2026-11-24T11:00:00Z"},
        {"type": cond.SERVING, "status": "False", "lastTransitionTime": "2026-11-24T11:55:00Z"},
    ]
    after = [
        {"type": cond.WEIGHTS, "status": "True"},
        {"type": cond.CAPACITY, "status": "True"},  # already ready: not a new observation
        {"type": cond.SERVING, "status": "False"},
        {"type": cond.READY, "status": "True"},  # no previous condition: nothing to measure
    ]
    metrics.record_stages("AlpacaModel", before, after, NOW)
    labels = {"kind": "AlpacaModel", "stage": cond.WEIGHTS}
    assert _sample(metrics, "alpaca_stage_duration_seconds_count", labels) == 1
    assert _sample(metrics, "alpaca_stage_duration_seconds_sum", labels) == 600
    for stage in (cond.CAPACITY, cond.SERVING, cond.READY):
        labels = {"kind": "AlpacaModel", "stage": stage}
        assert _sample(metrics, "alpaca_stage_duration_seconds_count", labels) is None


def test_objects_are_counted_by_their_last_phase_and_forgotten_when_deleted():
    metrics = Metrics()
    metrics.phases.set("AlpacaModel", "ns", "a", "Ready")
    metrics.phases.set("AlpacaModel", "ns", "b", "Ready")
    metrics.phases.set("AlpacaModel", "ns", "b", "Failed")
    metrics.phases.set("AlpacaFineTune", "ns", "f", "Running")
    assert _sample(metrics, "alpaca_objects", {"kind": "AlpacaModel", "phase": "Ready"}) == 1
    assert _sample(metrics, "alpaca_objects", {"kind": "AlpacaModel", "phase": "Failed"}) == 1
    metrics.phases.set("AlpacaModel", "ns", "b", None)
    assert _sample(metrics, "alpaca_objects", {"kind": "AlpacaModel", "phase": "Failed"}) is None
    assert _sample(metrics, "alpaca_objects", {"kind": "AlpacaFineTune", "phase": "Running"}) == 1
