"""reconcile/status.py: the operator applies only the status fields it owns, and only when they
changed (the trainer's status.progress is not its to write)."""

from __future__ import annotations

from typing import Any

from alpaca_operator.reconcile.status import OWNED, write_status

from .fake_kube import FakeKube

API = "alpaca.dev/v1alpha1"


def _body(kube: FakeKube, status: dict[str, Any]) -> dict[str, Any]:
    kube.put(
        {"apiVersion": API, "kind": "AlpacaFineTune", "metadata": {"name": "ft", "namespace": "ns"}}
    )
    kube.set_status(API, "AlpacaFineTune", "ft", "ns", status)
    return kube.stored(API, "AlpacaFineTune", "ft", "ns")


def test_an_unchanged_status_is_not_written():
    kube = FakeKube()
    live = {"phase": "Running", "observedGeneration": 2, "conditions": [], "progress": {"step": 5}}
    body = _body(kube, live)
    # the trainer's progress and empty or missing fields are not the operator's to compare
    assert not write_status(
        kube,
        body,
        {
            "phase": "Running",
            "observedGeneration": 2,
            "conditions": [],
            "endpoint": "",
            "output": None,
        },
    )
    assert kube.writes == 0


def test_a_changed_status_sends_only_the_owned_fields():
    kube = FakeKube()
    body = _body(kube, {"phase": "Running", "progress": {"step": 5}})
    new = {"phase": "Succeeded", "output": "pvc://ft-output/final", "endpoint": "", "extra": 1}
    assert write_status(kube, body, new)
    [write] = kube.writes_log
    assert (write.verb, write.kind, write.name) == ("apply/status", "AlpacaFineTune", "ft")
    assert kube.stored(API, "AlpacaFineTune", "ft", "ns")["status"] == {
        "phase": "Succeeded",
        "output": "pvc://ft-output/final",
        "progress": {"step": 5},  # the trainer's, untouched
    }


def test_the_owned_fields_are_the_ones_the_crds_status_holds():
    assert "progress" not in OWNED
    assert {"phase", "observedGeneration", "conditions"} <= set(OWNED)
