"""One pass over an AlpacaModel: capacity, weights cache, serving; then its status.

Run as a pass (reconcile/runtime.py) when the model's spec moves, a child or a node it
concerns changes, or a deadline comes.
Writes only what differs (see apply.Applier); reads children from the watch-fed store.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from alpaca_operator import conditions as cond
from alpaca_operator import policy
from alpaca_operator.accept import Event, Outcome, accept, transition_events
from alpaca_operator.api import model
from alpaca_operator.api.base import API_VERSION
from alpaca_operator.api.model import AlpacaModelSpec
from alpaca_operator.config import OperatorConfig
from alpaca_operator.kube import Kube
from alpaca_operator.observe import model as observe
from alpaca_operator.reconcile import room, upgrade
from alpaca_operator.reconcile.apply import Applier, owner_reference
from alpaca_operator.reconcile.cache import claim_names, ensure_cache, release_caches
from alpaca_operator.reconcile.locks import CACHES
from alpaca_operator.reconcile.triggers import nodepool_owner
from alpaca_operator.reconcile.upgrade import RECREATED
from alpaca_operator.render import capacity as render_capacity
from alpaca_operator.render import names, networkpolicy, rayservice
from alpaca_operator.render.weights import CacheManifests, cache_manifests
from alpaca_operator.validation import Invalid

RAYSERVICE_CRD = "rayservices.ray.io"
NODEPOOL_CRD = "nodepools.karpenter.sh"
SCHEDULER_REFUSED = frozenset({"Unschedulable"})  # kube-scheduler's reasons on PodScheduled

ApplicationFor = Callable[[AlpacaModelSpec, str, str], dict[str, Any]]
"""(spec, model path in the pods, served model name) -> the serveConfigV2 application entry."""


@dataclass
class ModelContext:
    """What one reconcile needs besides the object: the client, settings, the app renderer."""

    kube: Kube
    applier: Applier
    config: OperatorConfig
    application_for: ApplicationFor
    cache_uses: dict[tuple[str, Any], frozenset[str]] = field(default_factory=dict)
    """The caches each AlpacaModel's spec names, by (uid, generation): see `caches_named`."""


@dataclass
class ModelManifests:
    """Every child a model's passes render, before owner references: what a pass applies (each
    in its stage) and what the golden files show."""

    placement: render_capacity.Placement
    nodepool: dict[str, Any] | None
    cache: CacheManifests
    adapter_caches: dict[str, CacheManifests]
    """Adapter name -> its cache."""
    rayservice: dict[str, Any]
    endpoint_service: dict[str, Any]
    network_policy: dict[str, Any]

    def all(self) -> list[dict[str, Any]]:
        out = [
            self.nodepool,
            *self.cache.all(),
            *[obj for cache in self.adapter_caches.values() for obj in cache.all()],
            self.rayservice,
            self.endpoint_service,
            self.network_policy,
        ]
        return [o for o in out if o is not None]


def model_manifests(
    spec: AlpacaModelSpec,
    name: str,
    namespace: str,
    config: OperatorConfig,
    application_for: ApplicationFor,
) -> ModelManifests:
    """The model's children for `spec`. Pure."""
    place = render_capacity.placement(spec.capacity, spec.resources, namespace, name)
    weights_image = spec.images.weights or config.weights_image
    cache = names.cache_name(spec.weights)
    application = application_for(
        spec, rayservice.model_path(cache), spec.served_model_name or name
    )
    return ModelManifests(
        placement=place,
        nodepool=render_capacity.nodepool(spec.capacity, spec.resources, namespace, name),
        cache=cache_manifests(spec.weights, namespace, weights_image),
        adapter_caches={
            a.name: cache_manifests(a.as_weights(spec.weights), namespace, weights_image)
            for a in spec.adapters
        },
        rayservice=rayservice.rayservice(
            spec,
            name,
            namespace,
            application,
            spec.images.serving or config.serving_image,
            config.ray_version,
            place,
        ),
        endpoint_service=rayservice.endpoint_service(name, namespace),
        network_policy=networkpolicy.ray_network_policy(
            name, namespace, config.dashboard_namespaces
        ),
    )


def _crds(kube: Kube, spec: AlpacaModelSpec) -> set[str]:
    wanted = [RAYSERVICE_CRD] + ([NODEPOOL_CRD] if spec.capacity.provisioner == "karpenter" else [])
    return {name for name in wanted if kube.crd_installed(name)}


def _on_existing_gpu_nodes(spec: AlpacaModelSpec) -> bool:
    """Whether capacity is read from the cluster's nodes (so node changes matter)."""
    return spec.capacity.provisioner == "existing" and spec.resources.gpus > 0


def _drop_nodepool(kube: Kube, body: dict[str, Any]) -> None:
    """A model that no longer runs on Karpenter gives its NodePool up: cluster-scoped, the pool
    has no owner reference to the model, so nothing else takes it before the model's deletion
    (a NodePool of that name whose labels name another owner is not ours to delete)."""
    meta = body["metadata"]
    name = names.nodepool_name(meta["namespace"], meta["name"])
    live = kube.get("karpenter.sh/v1", "NodePool", name)
    if live is None or live["metadata"].get("deletionTimestamp"):
        return
    owner = nodepool_owner(live["metadata"].get("labels") or {})
    if owner == (body["kind"], meta["namespace"], meta["name"]):
        kube.delete("karpenter.sh/v1", "NodePool", name)


def _capacity(
    ctx: ModelContext,
    spec: AlpacaModelSpec,
    desired: ModelManifests,
    body: dict[str, Any],
    children: observe.ModelChildren,
) -> None:
    pool = desired.nodepool
    if pool is not None and NODEPOOL_CRD in children.crds:
        live = ctx.kube.get("karpenter.sh/v1", "NodePool", pool["metadata"]["name"])
        children.nodepool = ctx.applier.ensure(pool, live)
        return
    if pool is None:
        _drop_nodepool(ctx.kube, body)
    if _on_existing_gpu_nodes(spec):
        # only the nodes the selector matches (label values hold no commas): a copy of every
        # node per pass was most of a pass's time on a cluster of 500 nodes
        selector = desired.placement.node_selector
        children.nodes = ctx.kube.list(
            "v1", "Node", selector=",".join(f"{k}={v}" for k, v in selector.items()) or None
        )


def _weights(
    ctx: ModelContext,
    desired: ModelManifests,
    body: dict[str, Any],
    children: observe.ModelChildren,
) -> None:
    with CACHES.hold(body["metadata"]["namespace"]):
        by_cache = functools.cache(lambda: _cache_peers(ctx, body))  # once a pass, if asked

        def peers(cache: str) -> list[dict[str, Any]]:
            return by_cache().get(cache, [])

        children.cache = ensure_cache(ctx.kube, ctx.applier, desired.cache, body, peers)
        for adapter, cache in desired.adapter_caches.items():
            children.adapter_caches[adapter] = ensure_cache(
                ctx.kube, ctx.applier, cache, body, peers
            )


def caches_of(spec: AlpacaModelSpec) -> set[str]:
    """The weights caches a spec names: its weights' and its adapters'."""
    return {names.cache_name(spec.weights)} | {
        names.cache_name(a.as_weights(spec.weights)) for a in spec.adapters
    }


USES_KEPT = 20_000
"""How many specs' caches a context remembers (it forgets them all when it has more)."""


def caches_named(ctx: ModelContext, body: dict[str, Any]) -> frozenset[str]:
    """The weights caches an AlpacaModel's spec names (its weights' and its adapters'); none
    when the spec is not accepted (its pass touches no child). Parsed once per generation."""
    meta = body["metadata"]
    key = (str(meta.get("uid")), meta.get("generation"))
    if (known := ctx.cache_uses.get(key)) is not None:
        return known
    try:
        spec = AlpacaModelSpec.model_validate(body.get("spec") or {})
    except ValueError:
        uses: frozenset[str] = frozenset()
    else:
        if policy.model_problems(spec, ctx.config):
            uses = frozenset()
        else:
            uses = frozenset(caches_of(spec))
    if len(ctx.cache_uses) >= USES_KEPT:
        ctx.cache_uses.clear()
    ctx.cache_uses[key] = uses
    return uses


def _cache_peers(ctx: ModelContext, body: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The other AlpacaModels of the namespace (in the store, none going) by the caches their
    specs name: made owners with this one, each cache's owners are written once for every
    user already there rather than once per user's pass."""
    meta = body["metadata"]
    peers: dict[str, list[dict[str, Any]]] = {}
    for other in ctx.kube.list(API_VERSION, model.KIND, meta["namespace"]):
        ometa = other["metadata"]
        if ometa.get("uid") == meta.get("uid") or ometa.get("deletionTimestamp"):
            continue
        for cache in caches_named(ctx, other):
            peers.setdefault(cache, []).append(other)
    return peers


def _network_policy(ctx: ModelContext, desired: dict[str, Any], body: dict[str, Any]) -> None:
    """Who may reach the Ray pods: in place before the RayService starts any."""
    ns = body["metadata"]["namespace"]
    desired["metadata"]["ownerReferences"] = [owner_reference(body)]
    live = ctx.kube.get("networking.k8s.io/v1", "NetworkPolicy", desired["metadata"]["name"], ns)
    ctx.applier.ensure(desired, live)


def _unschedulable(kube: Kube, cluster: str, namespace: str) -> str | None:
    """What the scheduler says of a RayCluster's pods that it cannot place, if any."""
    for pod in kube.list(
        "v1", "Pod", namespace, selector=f"{rayservice.RAY_CLUSTER_LABEL}={cluster}"
    ):
        for c in (pod.get("status") or {}).get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("reason") in SCHEDULER_REFUSED:
                return f"pod {pod['metadata']['name']}: {c.get('message') or 'unschedulable'}"
    return None


def _serving(
    ctx: ModelContext,
    spec: AlpacaModelSpec,
    desired: ModelManifests,
    body: dict[str, Any],
    children: observe.ModelChildren,
    now: datetime.datetime,
) -> None:
    name, ns = body["metadata"]["name"], body["metadata"]["namespace"]
    filled = children.cache.filled and all(c.filled for c in children.adapter_caches.values())
    if RAYSERVICE_CRD not in children.crds or not filled:
        return
    owner = [owner_reference(body)]
    ray = desired.rayservice
    ray["metadata"]["ownerReferences"] = owner
    live = ctx.kube.get("ray.io/v1", "RayService", ray["metadata"]["name"], ns)
    active, pending = upgrade.clusters(ctx.kube, live, ns)
    step = upgrade.plan(
        spec.upgrade,
        live,
        active,
        pending,
        ray,
        room=lambda: room.room(ctx.kube, spec, desired.placement, children.nodepool, active),
        unschedulable=lambda cluster: _unschedulable(ctx.kube, cluster, ns),
        previous=cond.find((body.get("status") or {}).get("conditions"), cond.UPGRADING),
        now=now,
    )
    ray["spec"]["upgradeStrategy"] = {"type": step.strategy}
    # waiting for room: the running cluster keeps the spec it serves (KubeRay would otherwise
    # hand it the new Serve config, which may name weights its pods do not mount)
    children.rayservice = live if step.hold and live is not None else ctx.applier.ensure(ray, live)
    children.cluster_action = upgrade.carry_out(ctx.kube, ns, step)
    children.upgrade, children.upgrade_at = step.verdict, step.requeue_at
    # the endpoint follows the cluster KubeRay names; until it names one there is nothing to
    # send traffic to, so the Service is made then, in one write rather than two at scale
    cluster = upgrade.serving_cluster(children.rayservice)
    if cluster:
        service = rayservice.endpoint_service(name, ns, cluster)
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
    desired = model_manifests(spec, name, ns, ctx.config, ctx.application_for)
    place = desired.placement
    children = observe.ModelChildren(crds=_crds(ctx.kube, spec))
    _capacity(ctx, spec, desired, body, children)
    _weights(ctx, desired, body, children)
    _network_policy(ctx, desired.network_policy, body)
    _serving(ctx, spec, desired, body, children, now)
    keep = caches_of(spec)
    live = children.rayservice or ctx.kube.get("ray.io/v1", "RayService", name, ns)
    keep |= claim_names(live)  # serving switches to new weights only once they are filled
    with CACHES.hold(ns):
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


def _kept(previous: list[dict[str, Any]]) -> cond.Verdict:
    """Upgrading when serving was not reconciled in this pass (new weights still filling):
    as it was, else nothing runs yet."""
    was = cond.find(previous, cond.UPGRADING)
    if was is None:
        return upgrade.NOTHING_RUNS
    return cond.Verdict(str(was["status"]), str(was["reason"]), str(was.get("message") or ""))


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
    upgrading = children.upgrade or _kept(previous)
    conditions = cond.set_condition(
        conditions,
        cond.UPGRADING,
        upgrading.status,
        upgrading.reason,
        upgrading.message,
        generation,
        timestamp,
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
    if children.cluster_action == RECREATED and upgrading.reason != cond.RECREATING_WITH_OUTAGE:
        events.append(
            Event(
                "Normal",
                cond.RAYCLUSTER_RECREATED,
                "The pod templates changed (image, GPUs, CPU, memory or placement) before the RayCluster served: it is made again from the new spec.",
            )
        )
    elif children.cluster_action:
        events.append(
            Event("Normal", cond.RAYCLUSTER_RESCALED, "Worker min/max replicas updated in place.")
        )
    return Outcome(
        status=new_status,
        events=events,
        requeue_at=observe.earliest(
            observe.next_deadline(stages, conditions, now),
            observe.secret_recheck([children.cache, *children.adapter_caches.values()], now),
            children.upgrade_at,
        ),
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
