"""One pass over an AlpacaModel: capacity, weights cache, serving; then its status.

Called from the handlers on create/update/resume, on every child's change, and by a timer.
Writes only what differs (see apply.Applier); reads children from the watch-fed store.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from alpaca_operator import conditions as cond
from alpaca_operator import policy
from alpaca_operator.accept import Event, Outcome, accept, transition_events
from alpaca_operator.api.model import AlpacaModelSpec
from alpaca_operator.config import OperatorConfig
from alpaca_operator.kube import Kube
from alpaca_operator.observe import model as observe
from alpaca_operator.reconcile.apply import Applier, owner_reference
from alpaca_operator.reconcile.cache import claim_names, ensure_cache, release_caches
from alpaca_operator.reconcile.upgrade import RECREATED, settle_cluster
from alpaca_operator.render import capacity as render_capacity
from alpaca_operator.render import names, networkpolicy, rayservice
from alpaca_operator.validation import Invalid

RAYSERVICE_CRD = "rayservices.ray.io"
NODEPOOL_CRD = "nodepools.karpenter.sh"

ApplicationFor = Callable[[AlpacaModelSpec, str, str], dict[str, Any]]
"""(spec, model path in the pods, served model name) -> the serveConfigV2 application entry."""


@dataclass
class ModelContext:
    """What one reconcile needs besides the object: the client, settings, the app renderer."""

    kube: Kube
    applier: Applier
    config: OperatorConfig
    application_for: ApplicationFor


def _crds(kube: Kube, spec: AlpacaModelSpec) -> set[str]:
    wanted = [RAYSERVICE_CRD] + ([NODEPOOL_CRD] if spec.capacity.provisioner == "karpenter" else [])
    return {name for name in wanted if kube.crd_installed(name)}


def _on_existing_gpu_nodes(spec: AlpacaModelSpec) -> bool:
    """Whether capacity is read from the cluster's nodes (so node changes matter)."""
    return spec.capacity.provisioner == "existing" and spec.resources.gpus > 0


def _capacity(
    ctx: ModelContext, spec: AlpacaModelSpec, name: str, ns: str, children: observe.ModelChildren
) -> None:
    desired = render_capacity.nodepool(spec.capacity, spec.resources, ns, name)
    if desired is not None and NODEPOOL_CRD in children.crds:
        live = ctx.kube.get("karpenter.sh/v1", "NodePool", desired["metadata"]["name"])
        children.nodepool = ctx.applier.ensure(desired, live)
    elif _on_existing_gpu_nodes(spec):
        children.nodes = ctx.kube.list("v1", "Node")


def _weights(
    ctx: ModelContext, spec: AlpacaModelSpec, body: dict[str, Any], children: observe.ModelChildren
) -> None:
    image = spec.images.weights or ctx.config.weights_image
    children.cache = ensure_cache(ctx.kube, ctx.applier, spec.weights, body, image)
    for adapter in spec.adapters:
        weights = adapter.as_weights(spec.weights)
        children.adapter_caches[adapter.name] = ensure_cache(
            ctx.kube, ctx.applier, weights, body, image
        )


def _network_policy(ctx: ModelContext, body: dict[str, Any]) -> None:
    """Who may reach the Ray pods: in place before the RayService starts any."""
    name, ns = body["metadata"]["name"], body["metadata"]["namespace"]
    desired = networkpolicy.ray_network_policy(name, ns, ctx.config.dashboard_namespaces)
    desired["metadata"]["ownerReferences"] = [owner_reference(body)]
    live = ctx.kube.get("networking.k8s.io/v1", "NetworkPolicy", desired["metadata"]["name"], ns)
    ctx.applier.ensure(desired, live)


def _serving(
    ctx: ModelContext,
    spec: AlpacaModelSpec,
    body: dict[str, Any],
    children: observe.ModelChildren,
    place: render_capacity.Placement,
) -> None:
    name, ns = body["metadata"]["name"], body["metadata"]["namespace"]
    filled = children.cache.filled and all(c.filled for c in children.adapter_caches.values())
    if RAYSERVICE_CRD not in children.crds or not filled:
        return
    cache = names.cache_name(spec.weights)
    served = spec.served_model_name or name
    application = ctx.application_for(spec, rayservice.model_path(cache), served)
    desired = rayservice.rayservice(
        spec,
        name,
        ns,
        application,
        spec.images.serving or ctx.config.serving_image,
        ctx.config.ray_version,
        place,
    )
    owner = [owner_reference(body)]
    desired["metadata"]["ownerReferences"] = owner
    live = ctx.kube.get("ray.io/v1", "RayService", desired["metadata"]["name"], ns)
    children.rayservice = ctx.applier.ensure(desired, live)
    children.cluster_action = settle_cluster(ctx.kube, children.rayservice, desired)
    service = rayservice.endpoint_service(name, ns)
    service["metadata"]["ownerReferences"] = owner
    ctx.applier.ensure(service, ctx.kube.get("v1", "Service", service["metadata"]["name"], ns))


def reconcile_model(
    ctx: ModelContext,
    body: dict[str, Any],
    spec: AlpacaModelSpec,
    accepted: list[dict[str, Any]],
    now: datetime.datetime,
) -> Outcome:
    """Bring the children to the spec and compute the status that follows (`accepted`: the
    conditions after validation, with Accepted set)."""
    name, ns = body["metadata"]["name"], body["metadata"]["namespace"]
    generation = body["metadata"].get("generation")
    place = render_capacity.placement(spec.capacity, spec.resources, ns, name)
    children = observe.ModelChildren(crds=_crds(ctx.kube, spec))
    _capacity(ctx, spec, name, ns, children)
    _weights(ctx, spec, body, children)
    _network_policy(ctx, body)
    _serving(ctx, spec, body, children, place)
    keep = {names.cache_name(spec.weights)}
    keep |= {names.cache_name(a.as_weights(spec.weights)) for a in spec.adapters}
    live = children.rayservice or ctx.kube.get("ray.io/v1", "RayService", name, ns)
    keep |= claim_names(live)  # serving switches to new weights only once they are filled
    release_caches(ctx.kube, body, keep)
    outcome = model_status(
        spec,
        generation,
        body.get("status") or {},
        accepted,
        children,
        place,
        rayservice.endpoint_url(name, ns),
        now,
    )
    if _on_existing_gpu_nodes(spec):
        outcome.node_selector = place.node_selector
    return outcome


def model_status(
    spec: AlpacaModelSpec,
    generation: int | None,
    status: dict[str, Any],
    accepted: list[dict[str, Any]],
    children: observe.ModelChildren,
    place: render_capacity.Placement,
    endpoint: str,
    now: datetime.datetime,
) -> Outcome:
    """The status (conditions, phase, endpoint, replicas) and the Events of its transitions. Pure."""
    previous = list(status.get("conditions") or [])
    stages = observe.stages(spec, children, place.node_selector, endpoint, previous, now)
    timestamp = now.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    conditions = list(accepted)
    for type_ in (cond.CAPACITY, cond.WEIGHTS, cond.SERVING, cond.READY):
        v = stages[type_]
        conditions = cond.set_condition(
            conditions, type_, v.status, v.reason, v.message, generation, timestamp
        )
    was_ready = status.get("phase") in ("Ready", "Degraded")
    wanted, ready_n = observe.replicas(children.rayservice)
    new_status: dict[str, Any] = {
        "phase": observe.phase(stages, was_ready),
        "observedGeneration": generation,
        "conditions": conditions,
        "endpoint": endpoint if stages[cond.SERVING].ok else "",
        "replicas": wanted,
        "readyReplicas": ready_n,
        "ready": f"{ready_n}/{wanted}",
    }
    events: list[Event] = transition_events(previous, conditions)
    if children.cluster_action == RECREATED:
        events.append(
            Event(
                "Normal",
                cond.RAYCLUSTER_RECREATED,
                "The pod templates changed (image, GPUs, CPU, memory or placement): the RayCluster is recreated from the new spec; serving pauses until it is up.",
            )
        )
    elif children.cluster_action:
        events.append(
            Event("Normal", cond.RAYCLUSTER_RESCALED, "Worker min/max replicas updated in place.")
        )
    return Outcome(
        status=new_status,
        events=events,
        requeue_at=observe.next_deadline(stages, conditions, now),
    )


def run_model(ctx: ModelContext, body: dict[str, Any], now: datetime.datetime) -> Outcome:
    """Validate and hold to the policy, then reconcile; a spec not accepted stops before any
    child is touched (nothing is deleted either)."""
    generation = body["metadata"].get("generation")
    status = body.get("status") or {}
    raw = dict(body.get("spec") or {})

    def allowed(spec: AlpacaModelSpec) -> list[Invalid]:
        return policy.model_problems(spec, ctx.config)

    accepted = accept(raw, AlpacaModelSpec, generation, status, "Pending", policy=allowed)
    if accepted.status["phase"] == "Failed":
        return accept(
            raw, AlpacaModelSpec, generation, status, "Pending", pending_message="", policy=allowed
        )
    spec = AlpacaModelSpec.model_validate(body["spec"])
    # its Events cover every condition, Accepted included (accept's too would post it twice)
    return reconcile_model(ctx, body, spec, accepted.status["conditions"], now)
