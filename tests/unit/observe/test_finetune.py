"""A fine-tune's status from its cache and Job: pure, no cluster."""

from __future__ import annotations

from typing import Any

import pytest

from alpaca_operator.api import AlpacaFineTuneSpec
from alpaca_operator.observe import finetune as observe
from alpaca_operator.observe.model import CacheState
from alpaca_operator.render.weights import FILLED_ANNOTATION

SPEC = AlpacaFineTuneSpec.model_validate(
    {
        "baseModel": {"source": "hf://o/base"},
        "dataset": {"source": "https://d/alpaca.json"},
        "method": "lora",
        "resources": {"gpus": 1, "nodes": 2},
        "hyperparameters": {"globalBatchSize": 8, "perDeviceBatchSize": 4},
    }
)
FILLED = CacheState(pvc={"metadata": {"annotations": {FILLED_ANNOTATION: "true"}}})


def _job(status: dict[str, Any], *conditions: str) -> dict[str, Any]:
    conds = [{"type": c, "status": "True"} for c in conditions]
    return {"metadata": {"name": "ft-train"}, "spec": {}, "status": status | {"conditions": conds}}


@pytest.mark.parametrize(
    ("status", "conditions", "reason", "phase"),
    [
        ({"active": 2, "ready": 0}, (), "WaitingForPods", "Pending"),
        ({"active": 2, "ready": 2}, (), "Running", "Running"),
        # rank 1 is done, rank 0 still writes the final adapter: still running, not pending
        ({"active": 1, "ready": 1, "succeeded": 1}, (), "Finishing", "Running"),
        ({"succeeded": 2}, (), "Finishing", "Running"),
        # both ranks ended, the Job controller has not counted them yet
        ({"uncountedTerminatedPods": {"succeeded": ["u0", "u1"]}}, (), "Finishing", "Running"),
        ({"succeeded": 2}, ("SuccessCriteriaMet", "Complete"), "Completed", "Succeeded"),
        ({"failed": 12}, ("Failed",), "TrainingFailed", "Failed"),
    ],
)
def test_training_stage_and_phase_follow_the_job(status, conditions, reason, phase):
    children = observe.FineTuneChildren(cache=FILLED, job=_job(status, *conditions))
    verdicts = observe.verdicts(SPEC, children, "pvc://ft-output/final")
    assert verdicts[observe.TRAINING].reason == reason
    assert observe.phase(SPEC, verdicts) == phase


def test_nothing_trains_before_the_base_weights_are_filled():
    children = observe.FineTuneChildren(cache=CacheState(pvc={"metadata": {}}))
    verdicts = observe.verdicts(SPEC, children, "pvc://ft-output/final")
    assert verdicts[observe.TRAINING].reason == "WaitingForWeights"
    assert observe.phase(SPEC, verdicts) == "Pending"


def test_suspended_says_how_to_resume():
    spec = SPEC.model_copy(update={"suspend": True})
    verdicts = observe.verdicts(spec, observe.FineTuneChildren(cache=FILLED), "x")
    assert verdicts[observe.TRAINING].reason == "Suspended"
    assert "resume" in verdicts[observe.TRAINING].message
    assert observe.phase(spec, verdicts) == "Suspended"
