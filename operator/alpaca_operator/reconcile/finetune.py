"""One pass over an AlpacaFineTune: base weights, output volume, trainer account, the Indexed
Job; on success, the AlpacaModel that serves the result."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from alpaca_operator import conditions as cond
from alpaca_operator import policy
from alpaca_operator.accept import Outcome, accept, transition_events
from alpaca_operator.api.finetune import KIND, AlpacaFineTuneSpec
from alpaca_operator.config import OperatorConfig
from alpaca_operator.kube import Kube
from alpaca_operator.observe import finetune as observe
from alpaca_operator.observe.model import condition_of, secret_recheck
from alpaca_operator.reconcile.apply import Applier, owner_reference, shared_owners
from alpaca_operator.reconcile.cache import ensure_cache, termination_message
from alpaca_operator.reconcile.locks import CACHES
from alpaca_operator.reconcile.model import NODEPOOL_CRD
from alpaca_operator.render import capacity as render_capacity
from alpaca_operator.render import finetune as render
from alpaca_operator.render import names
from alpaca_operator.render.weights import CacheManifests, cache_manifests
from alpaca_operator.validation import Invalid


@dataclass
class FineTuneContext:
    kube: Kube
    applier: Applier
    config: OperatorConfig


@dataclass
class FineTuneManifests:
    """Every child a fine-tune's passes render, before owner references: what a pass applies
    (each in its stage) and what the golden files show."""

    cache: CacheManifests
    output_pvc: dict[str, Any]
    rendezvous_service: dict[str, Any]
    trainer_rbac: list[dict[str, Any]]
    nodepool: dict[str, Any] | None
    training_job: dict[str, Any]
    served_model: dict[str, Any] | None

    def all(self) -> list[dict[str, Any]]:
        """In the order the passes create them (the served model last, on success)."""
        out = [
            *self.cache.all(),
            self.output_pvc,
            self.rendezvous_service,
            *self.trainer_rbac,
            self.nodepool,
            self.training_job,
            self.served_model,
        ]
        return [o for o in out if o is not None]


def finetune_manifests(
    spec: AlpacaFineTuneSpec,
    name: str,
    namespace: str,
    config: OperatorConfig,
    job: dict[str, Any] | None = None,
) -> FineTuneManifests:
    """The fine-tune's children for `spec` (`job`: the live training Job, whose suspension
    Kueue may own; None before it exists). Pure."""
    place = render_capacity.placement(spec.capacity, spec.resources, namespace, name, KIND)
    return FineTuneManifests(
        cache=cache_manifests(spec.base_model, namespace, config.weights_image),
        output_pvc=render.output_pvc(spec, name, namespace),
        rendezvous_service=render.rendezvous_service(name, namespace),
        trainer_rbac=render.trainer_rbac(name, namespace),
        nodepool=render_capacity.nodepool(spec.capacity, spec.resources, namespace, name, KIND),
        training_job=render.training_job(
            spec,
            name,
            namespace,
            names.cache_name(spec.base_model),
            spec.image or config.training_image,
            config.weights_image,
            place,
            suspend=_suspend(spec, job),
        ),
        served_model=render.served_model(spec, name, namespace, spec.base_model.to_wire()),
    )


def _output_volume(
    ctx: FineTuneContext,
    desired: dict[str, Any],
    body: dict[str, Any],
    served: dict[str, Any] | None,
) -> None:
    """The output PVC: owned by the fine-tune and, once it exists, by the model serving it, so
    deleting the AlpacaFineTune record does not take the served weights away."""
    ns = body["metadata"]["namespace"]
    live = ctx.kube.get("v1", "PersistentVolumeClaim", desired["metadata"]["name"], ns)
    owners = shared_owners(live, body)
    if served is not None:
        owners = shared_owners({"metadata": {"ownerReferences": owners}}, served)
    desired["metadata"]["ownerReferences"] = owners
    ctx.applier.ensure(desired, live)


def _owned(ctx: FineTuneContext, desired: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    desired["metadata"]["ownerReferences"] = [owner_reference(body)]
    meta = desired["metadata"]
    live = ctx.kube.get(desired["apiVersion"], desired["kind"], meta["name"], meta.get("namespace"))
    return ctx.applier.ensure(desired, live)


def _served_model(
    ctx: FineTuneContext,
    desired: dict[str, Any] | None,
    body: dict[str, Any],
    job: dict[str, Any] | None,
) -> dict[str, Any] | None:
    if desired is None:
        return None
    ns = body["metadata"]["namespace"]
    live = ctx.kube.get("alpaca.dev/v1alpha1", "AlpacaModel", desired["metadata"]["name"], ns)
    complete = condition_of(job, "Complete")
    if not (complete and complete.get("status") == "True"):
        return live
    return ctx.applier.ensure(desired, live)


def _suspend(spec: AlpacaFineTuneSpec, job: dict[str, Any] | None) -> bool:
    """spec.suspend wins; with a Kueue queue the Job starts suspended and Kueue owns the flag
    after that (the operator mirrors it instead of fighting the admission)."""
    if spec.suspend:
        return True
    if spec.queue_name:
        return bool(job["spec"].get("suspend")) if job is not None else True
    return False


def _succeeded(body: dict[str, Any]) -> bool:
    status = body.get("status") or {}
    generation = body["metadata"].get("generation")
    return status.get("phase") == "Succeeded" and status.get("observedGeneration") == generation


def _settle_job(
    ctx: FineTuneContext, live: dict[str, Any], desired: dict[str, Any]
) -> dict[str, Any]:
    """A running training Job gets only what a Job lets change: `suspend` and labels (the
    Kueue queue). Its pod template is immutable, and a newer operator's default image must not
    be applied to a run that started with the old one (it would be refused, on every pass)."""
    ops: list[dict[str, Any]] = []
    want = bool(desired["spec"].get("suspend"))
    if bool(live["spec"].get("suspend")) != want:
        ops.append({"op": "replace", "path": "/spec/suspend", "value": want})
    labels = live["metadata"].get("labels") or {}
    for key, value in (desired["metadata"].get("labels") or {}).items():
        if labels.get(key) != value:
            path = "/metadata/labels/" + key.replace("~", "~0").replace("/", "~1")
            ops.append({"op": "add", "path": path, "value": value})
    if not ops:
        return live
    meta = live["metadata"]
    return ctx.kube.json_patch("batch/v1", "Job", meta["name"], meta["namespace"], ops)


def _nodepool(ctx: FineTuneContext, desired: dict[str, Any] | None) -> None:
    """The NodePool its pods select on provisioner karpenter (deleted with the fine-tune on its
    DELETED event, reconcile/runtime.py: cluster-scoped, it has no owner reference)."""
    if desired is None or not ctx.kube.crd_installed(NODEPOOL_CRD):
        return
    live = ctx.kube.get("karpenter.sh/v1", "NodePool", desired["metadata"]["name"])
    ctx.applier.ensure(desired, live)


def reconcile_finetune(
    ctx: FineTuneContext,
    body: dict[str, Any],
    spec: AlpacaFineTuneSpec,
    accepted: list[dict[str, Any]],
    now: datetime.datetime,
) -> Outcome:
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    job = ctx.kube.get("batch/v1", "Job", names.training_job_name(name), ns)
    desired = finetune_manifests(spec, name, ns, ctx.config, job)
    children = observe.FineTuneChildren()
    with CACHES.hold(ns):
        children.cache = ensure_cache(ctx.kube, ctx.applier, desired.cache, body)
    children.served = _served_model(ctx, desired.served_model, body, job)
    _output_volume(ctx, desired.output_pvc, body, children.served)
    _owned(ctx, desired.rendezvous_service, body)
    for obj in desired.trainer_rbac:
        _owned(ctx, obj, body)
    if children.cache.filled and job is None and _succeeded(body):
        # the run is over and its Job went (its TTL, a hand): never train again
        return Outcome(status=dict(body.get("status") or {}))
    _nodepool(ctx, desired.nodepool)
    if children.cache.filled:
        training = desired.training_job
        job = _owned(ctx, training, body) if job is None else _settle_job(ctx, job, training)
    children.job = job
    failed = condition_of(job, "Failed")
    if failed and failed.get("status") == "True":
        children.failure_message = termination_message(ctx.kube, job)
    return finetune_status(spec, body, accepted, children, now)


def finetune_status(
    spec: AlpacaFineTuneSpec,
    body: dict[str, Any],
    accepted: list[dict[str, Any]],
    children: observe.FineTuneChildren,
    now: datetime.datetime,
) -> Outcome:
    """Conditions, phase and output location, and the Events of the transitions. Pure."""
    name = body["metadata"]["name"]
    generation = body["metadata"].get("generation")
    previous = list((body.get("status") or {}).get("conditions") or [])
    output = f"pvc://{names.output_pvc_name(name)}/final"
    verdicts = observe.verdicts(spec, children, output)
    timestamp = now.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    conditions = list(accepted)
    for type_, v in verdicts.items():
        conditions = cond.set_condition(
            conditions, type_, v.status, v.reason, v.message, generation, timestamp
        )
    status: dict[str, Any] = {
        "phase": observe.phase(spec, verdicts),
        "observedGeneration": generation,
        "conditions": conditions,
    }
    if verdicts[observe.SUCCEEDED].ok:
        status["output"] = output
    return Outcome(
        status=status,
        events=transition_events(previous, conditions),
        requeue_at=secret_recheck([children.cache], now),
    )


def run_finetune(ctx: FineTuneContext, body: dict[str, Any], now: datetime.datetime) -> Outcome:
    """Validate and hold to the policy, then reconcile; a spec not accepted stops before any
    child is touched (nothing is deleted either)."""
    generation = body["metadata"].get("generation")
    raw = dict(body.get("spec") or {})
    status = body.get("status") or {}
    trained = status.get("phase") == "Succeeded"

    def allowed(spec: AlpacaFineTuneSpec) -> list[Invalid]:
        return policy.finetune_problems(spec, ctx.config, trained)

    accepted = accept(raw, AlpacaFineTuneSpec, generation, status, "Pending", policy=allowed)
    if accepted.status["phase"] == "Failed":
        return accepted
    spec = AlpacaFineTuneSpec.model_validate(raw)
    # its Events cover every condition, Accepted included (accept's too would post it twice)
    return reconcile_finetune(ctx, body, spec, accepted.status["conditions"], now)
