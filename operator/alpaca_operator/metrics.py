"""Prometheus metrics of the operator: reconciles, errors and durations per kind, objects per
phase, time each stage took, API writes. Served on --metrics-port (the chart's ServiceMonitor
scrapes it)."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

STAGE_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)


class PhaseTracker(Collector):
    """Objects per kind and phase, from the phases the operator last wrote."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str, str], str] = {}

    def set(self, kind: str, namespace: str, name: str, phase: str | None) -> None:
        with self._lock:
            if phase:
                self._phases[(kind, namespace, name)] = phase
            else:
                self._phases.pop((kind, namespace, name), None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "alpaca_objects", "Custom resources by kind and phase.", labels=["kind", "phase"]
        )
        counts: dict[tuple[str, str], int] = {}
        with self._lock:
            for (kind, _, _), phase in self._phases.items():
                counts[(kind, phase)] = counts.get((kind, phase), 0) + 1
        for (kind, phase), n in sorted(counts.items()):
            family.add_metric([kind, phase], n)
        yield family


class Metrics:
    """The operator's metrics, in a registry of their own (no process-global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "alpaca_reconcile", "Reconcile passes.", ["kind", "result"], registry=self.registry
        )
        self.duration = Histogram(
            "alpaca_reconcile_duration_seconds",
            "Time of one reconcile pass.",
            ["kind"],
            registry=self.registry,
        )
        self.stage = Histogram(
            "alpaca_stage_duration_seconds",
            "Time a stage took from not ready to ready (capacity, weights, serving, training).",
            ["kind", "stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.writes = Counter(
            "alpaca_api_writes",
            "Writes sent to the Kubernetes API.",
            ["kind"],
            registry=self.registry,
        )
        self.requests = Counter(
            "alpaca_api_requests",
            "Requests the operator's passes sent to the Kubernetes API (kopf's watches aside).",
            ["verb"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "alpaca_work_queue_depth",
            "Objects waiting for a reconcile pass or in one.",
            registry=self.registry,
        )
        self.phases = PhaseTracker()
        self.registry.register(self.phases)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)

    def record_stages(
        self,
        kind: str,
        before: list[dict[str, Any]],
        after: list[dict[str, Any]],
        now: datetime.datetime,
    ) -> None:
        """Observe how long each stage that just became ready had been waiting."""
        old = {c["type"]: c for c in before}
        for c in after:
            prev = old.get(c["type"])
            if (
                c["status"] == "True"
                and prev
                and prev.get("status") == "False"
                and prev.get("lastTransitionTime")
            ):
                since = datetime.datetime.fromisoformat(
                    prev["lastTransitionTime"].replace("Z", "+00:00")
                )
                self.stage.labels(kind, c["type"]).observe(max((now - since).total_seconds(), 0.0))
