"""AlpacaFineTune status from its base-weights cache and its training Job."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alpaca_operator import conditions as cond
from alpaca_operator.api.finetune import AlpacaFineTuneSpec
from alpaca_operator.conditions import SERVED, SUCCEEDED, TRAINING, WEIGHTS, Verdict
from alpaca_operator.observe.model import CacheState, condition_of, weights

_SUSPENDED = Verdict(  # spec.suspend, or a Job suspended without a queue
    "False",
    cond.SUSPENDED,
    "spec.suspend is true: no training pods run; set it to false to resume from the last checkpoint.",
)


@dataclass
class FineTuneChildren:
    """What the operator saw of a fine-tune's world in one pass."""

    cache: CacheState = field(default_factory=CacheState)
    job: dict[str, Any] | None = None
    failure_message: str | None = None
    served: dict[str, Any] | None = None


def _true(obj: dict[str, Any] | None, type_: str) -> bool:
    c = condition_of(obj, type_)
    return bool(c and c.get("status") == "True")


def training(spec: AlpacaFineTuneSpec, children: FineTuneChildren) -> Verdict:
    if spec.suspend and not _true(children.job, "Complete"):
        return _SUSPENDED
    if not children.cache.filled:
        return Verdict(
            "False",
            cond.WAITING_FOR_WEIGHTS,
            "Training starts once the base weights cache is filled.",
        )
    job = children.job
    if job is None:
        return Verdict("False", cond.JOB_CREATING, "Creating the training Job.")
    if _true(job, "Complete"):
        return Verdict("False", cond.COMPLETED, "Training finished.")
    if _true(job, "Failed"):
        failed = condition_of(job, "Failed") or {}
        detail = (
            children.failure_message
            or failed.get("message")
            or failed.get("reason")
            or "see the pod logs"
        )
        return Verdict(
            "False",
            cond.TRAINING_FAILED,
            f"The training Job failed ({failed.get('reason', 'Failed')}): {detail[:800]}",
        )
    if job.get("spec", {}).get("suspend"):
        if spec.queue_name and not spec.suspend:
            return Verdict(
                "False", cond.QUEUED, f"Waiting in Kueue queue {spec.queue_name} for quota."
            )
        return _SUSPENDED
    status = job.get("status", {})
    ready = int(status.get("ready", 0) or 0)
    # pods that finished and the Job controller has not counted yet are done all the same
    uncounted = (status.get("uncountedTerminatedPods") or {}).get("succeeded") or []
    succeeded = int(status.get("succeeded", 0) or 0) + len(uncounted)
    nodes = spec.resources.nodes
    if ready >= nodes:
        return Verdict("True", cond.RUNNING, f"All {nodes} node(s) are training.")
    if succeeded and ready + succeeded >= nodes:  # ranks end one by one, then the Job completes
        return Verdict(
            "True",
            cond.FINISHING,
            f"{succeeded} of {nodes} node(s) finished; the rest are finishing.",
        )
    return Verdict(
        "False",
        cond.WAITING_FOR_PODS,
        f"{ready} of {nodes} training pod(s) ready; waiting for GPUs and images.",
    )


def phase(spec: AlpacaFineTuneSpec, verdicts: dict[str, Verdict]) -> str:
    if any(v.reason in cond.FAILURE_REASONS for v in verdicts.values()):
        return "Failed"
    if verdicts[SUCCEEDED].ok:
        return "Succeeded"
    if verdicts[TRAINING].reason in (cond.SUSPENDED, cond.QUEUED):
        return "Suspended"
    if verdicts[TRAINING].ok:
        return "Running"
    return "Pending"


def verdicts(
    spec: AlpacaFineTuneSpec, children: FineTuneChildren, output: str
) -> dict[str, Verdict]:
    out = {
        WEIGHTS: weights(spec.base_model, children.cache, "spec.baseModel"),
        TRAINING: training(spec, children),
    }
    done = _true(children.job, "Complete")
    out[SUCCEEDED] = (
        Verdict(
            "True",
            cond.TRAINING_SUCCEEDED,
            f"The fine-tuned {'adapter' if spec.method == 'lora' else 'model'} is at {output}.",
        )
        if done
        else Verdict("False", cond.NOT_FINISHED, "Training has not finished.")
    )
    if spec.serve is not None:
        if children.served is not None:
            out[SERVED] = Verdict(
                "True",
                cond.MODEL_CREATED,
                f"AlpacaModel {spec.serve.name} serves the result; its own status tells when it is ready.",
            )
        else:
            out[SERVED] = Verdict(
                "False",
                cond.WAITING_FOR_TRAINING,
                f"AlpacaModel {spec.serve.name} is created when training succeeds.",
            )
    return out
