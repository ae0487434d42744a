"""A fine-tune's status from its cache and Job: pure, no cluster."""

from __future__ import annotations

from typing import Any

import pytest

from alpaca_operator import conditions as cond
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


def _suspended_job() -> dict[str, Any]:
    return {"metadata": {"name": "ft-train"}, "spec": {"suspend": True}, "status": {}}


def test_a_suspended_job_is_queued_in_kueue_or_suspended():
    queued = SPEC.model_copy(update={"queue_name": "gpus"})
    children = observe.FineTuneChildren(cache=FILLED, job=_suspended_job())
    verdicts = observe.verdicts(queued, children, "x")
    assert verdicts[observe.TRAINING].reason == cond.QUEUED
    assert "gpus" in verdicts[observe.TRAINING].message
    assert observe.phase(queued, verdicts) == "Suspended"
    # spec.suspend wins over the queue; without a queue a suspended Job is suspended too
    for spec in (queued.model_copy(update={"suspend": True}), SPEC):
        assert observe.training(spec, children).reason == cond.SUSPENDED


def test_the_job_is_being_created_once_the_weights_are_filled():
    verdicts = observe.verdicts(SPEC, observe.FineTuneChildren(cache=FILLED), "x")
    assert verdicts[observe.TRAINING].reason == cond.JOB_CREATING
    assert verdicts[observe.SUCCEEDED].reason == cond.NOT_FINISHED
    assert observe.SERVED not in verdicts  # no spec.serve


def test_suspending_a_finished_run_does_not_unfinish_it():
    spec = SPEC.model_copy(update={"suspend": True})
    children = observe.FineTuneChildren(cache=FILLED, job=_job({"succeeded": 2}, "Complete"))
    verdicts = observe.verdicts(spec, children, "pvc://ft-output/final")
    assert verdicts[observe.TRAINING].reason == cond.COMPLETED
    assert observe.phase(spec, verdicts) == "Succeeded"
    assert (
        verdicts[observe.SUCCEEDED].message == "The fine-tuned adapter is at pvc://ft-output/final."
    )


def test_served_says_when_the_model_is_created():
    spec = AlpacaFineTuneSpec.model_validate(
        {
            "baseModel": {"source": "hf://o/base"},
            "dataset": {"source": "https://d/alpaca.json"},
            "serve": {"name": "mine"},
        }
    )
    waiting = observe.verdicts(spec, observe.FineTuneChildren(cache=FILLED), "x")
    assert (waiting[observe.SERVED].reason, waiting[observe.SERVED].ok) == (
        cond.WAITING_FOR_TRAINING,
        False,
    )
    children = observe.FineTuneChildren(
        cache=FILLED, job=_job({"succeeded": 1}, "Complete"), served={"metadata": {}}
    )
    done = observe.verdicts(spec, children, "pvc://o/final")
    assert (done[observe.SERVED].reason, done[observe.SERVED].ok) == (cond.MODEL_CREATED, True)
    assert done[observe.SUCCEEDED].message == "The fine-tuned model is at pvc://o/final."


@pytest.mark.parametrize(
    ("pod_message", "condition", "shown"),
    [
        ("CUDA out of memory", {"message": "backoff", "reason": "BackoffLimitExceeded"}, "CUDA"),
        (None, {"message": "backoff", "reason": "BackoffLimitExceeded"}, "backoff"),
        (None, {"reason": "DeadlineExceeded"}, "DeadlineExceeded"),
        (None, {}, "see the pod logs"),
    ],
)
def test_a_training_failure_says_the_most_precise_thing_known(pod_message, condition, shown):
    job = _job({"failed": 1})
    job["status"]["conditions"] = [{"type": "Failed", "status": "True", **condition}]
    children = observe.FineTuneChildren(cache=FILLED, job=job, failure_message=pod_message)
    verdict = observe.training(SPEC, children)
    assert verdict.reason == cond.TRAINING_FAILED
    assert shown in verdict.message
    assert verdict.reason in cond.FAILURE_REASONS  # phase Failed and a Warning Event
