"""kopf wiring: watch streams feed the store, and events ask for passes; nothing else.

Every kind the operator reads is indexed (`@kopf.index`): kopf lists each of them before any
other handler runs, and each watch event puts the object into the store before the event
handlers see it. Children are watched through a server-side label selector (only objects the
operator manages come over the wire). A pass reads the store, never the apiserver, so a pass
over an unchanged object sends no request; see passes.py for how passes are queued.

kopf keeps no bookkeeping on the custom resources (no create/update handlers, so no
last-handled annotation and no finalizer): a custom resource's own watch event asks for a pass
when its generation moved, when it is new to us, and when its deletion began.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
from dataclasses import dataclass, field
from typing import Any

import kopf
import kubernetes

from alpaca_operator import __version__, events
from alpaca_operator import conditions as cond
from alpaca_operator.accept import Event
from alpaca_operator.api import API_VERSION, GROUP, VERSION, finetune, model
from alpaca_operator.config import OperatorConfig
from alpaca_operator.kube import ApiError, Kube
from alpaca_operator.metrics import Metrics
from alpaca_operator.passes import Key, Passes
from alpaca_operator.reconcile.apply import Applier
from alpaca_operator.reconcile.finetune import FineTuneContext, run_finetune
from alpaca_operator.reconcile.model import (
    NODEPOOL_CRD,
    RAYSERVICE_CRD,
    ModelContext,
    run_model,
)
from alpaca_operator.reconcile.serving import application_for
from alpaca_operator.reconcile.status import write_status
from alpaca_operator.reconcile.triggers import (
    alive,
    child_wakes,
    in_scope,
    node_key,
    node_wakes,
    nodepool_owner,
    outranked,
    spec_mark,
)
from alpaca_operator.render import names
from alpaca_operator.store import CachedKube, Store

log = logging.getLogger(__name__)

MODEL = (GROUP, VERSION, model.PLURAL)
FINETUNE = (GROUP, VERSION, finetune.PLURAL)
OURS = {"app.kubernetes.io/managed-by": names.PART_OF}
OURS_SELECTOR = f"app.kubernetes.io/managed-by={names.PART_OF}"

# (group, version, plural) of the children, and the (apiVersion, kind) the store keeps them by
CHILDREN: dict[tuple[str, str, str], tuple[str, str]] = {
    ("", "v1", "services"): ("v1", "Service"),
    ("", "v1", "persistentvolumeclaims"): ("v1", "PersistentVolumeClaim"),
    ("", "v1", "serviceaccounts"): ("v1", "ServiceAccount"),
    ("batch", "v1", "jobs"): ("batch/v1", "Job"),
    ("rbac.authorization.k8s.io", "v1", "roles"): ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io", "v1", "rolebindings"): (
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
    ),
    ("networking.k8s.io", "v1", "networkpolicies"): ("networking.k8s.io/v1", "NetworkPolicy"),
    ("ray.io", "v1", "rayservices"): ("ray.io/v1", "RayService"),
    ("ray.io", "v1", "rayclusters"): ("ray.io/v1", "RayCluster"),
    ("karpenter.sh", "v1", "nodepools"): ("karpenter.sh/v1", "NodePool"),
}
STORED = {
    *CHILDREN.values(),
    (API_VERSION, model.KIND),
    (API_VERSION, finetune.KIND),
    ("v1", "Node"),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
}
WATCHED_CRDS = (RAYSERVICE_CRD, NODEPOOL_CRD)


@dataclass
class Runtime:
    """What every handler and pass shares. One object, set on the operator's memo at start-up:
    kopf gives each object's handlers a shallow copy of that memo, so state set on a handler's
    memo would stay with that object."""

    metrics: Metrics
    store: Store
    kube: CachedKube
    models: ModelContext
    finetunes: FineTuneContext
    passes: Passes
    namespaces: list[str] = field(default_factory=list)
    peering: str | None = None
    priority: int = 0
    selectors: dict[Key, dict[str, str] | None] = field(default_factory=dict)
    """Models on existing GPU nodes -> their node selector (None: not known yet)."""
    refusals: dict[Key, str] = field(default_factory=dict)
    """Objects whose last pass the apiserver refused -> the refusal posted (posted once)."""
    marks: dict[Key, tuple[Any, ...]] = field(default_factory=dict)
    """Custom resources -> their spec mark as their watch events last showed it (not the
    store, which our own writes update first: a model a fine-tune creates must get a pass)."""
    ready: bool = False


def _resource(group: str, version: str, plural: str) -> tuple[str, ...]:
    return (version, plural) if not group else (group, version, plural)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Operator-wide settings, the store, the client every pass shares, the pass queue."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = logging.WARNING  # kopf's own INFO logs are not posted as Events
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
    for group, _, plural in CHILDREN:
        # only the operator's own children come over the wire (kopf's labels= filters are
        # client-side: without this every Service, PVC and Job of the cluster would be sent)
        settings.watching.label_selectors[(group, plural) if group else plural] = OURS_SELECTOR
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    metrics, store = Metrics(), Store(STORED)
    client = kubernetes.client.ApiClient()
    client.user_agent = f"alpaca-operator/{__version__}"  # how audit logs name our requests
    kube = CachedKube(
        Kube(
            client,
            on_write=lambda kind: metrics.writes.labels(kind).inc(),
            on_request=lambda verb, _: metrics.requests.labels(verb).inc(),
        ),
        store,
    )
    # images from the environment, the policy from the command line (cli.py)
    config = dataclasses.replace(OperatorConfig.from_env(), **(memo.get("settings") or {}))
    applier = Applier(kube)
    log.info(
        "policy: image overrides from %s; remote code %s; Ray dashboards open to namespaces %s",
        ", ".join(config.image_prefixes),
        "allowed" if config.allow_remote_code else "refused",
        ", ".join(config.dashboard_namespaces) or "none",
    )
    rt = Runtime(
        metrics=metrics,
        store=store,
        kube=kube,
        models=ModelContext(kube, applier, config, application_for),
        finetunes=FineTuneContext(kube, applier, config),
        passes=Passes(lambda key: run_pass(rt, key), workers=int(memo.get("workers") or 4)),
        namespaces=list(memo.get("namespaces") or []),
        peering=memo.get("peering"),
        priority=int(memo.get("priority") or 0),
    )
    memo.runtime = rt
    metrics.queue_depth.set_function(rt.passes.depth)
    if memo.get("metrics_port"):
        metrics.serve(int(memo.metrics_port))


@kopf.on.cleanup()
async def stop_passes(memo: kopf.Memo, **_: Any) -> None:
    if memo.get("runtime") is not None:
        await memo.runtime.passes.stop()


# --- passes ------------------------------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _outranked(rt: Runtime, now: datetime.datetime) -> bool:
    """With peering: whether a live replica of higher priority exists (kopf then pauses this
    replica's watches; passes already queued or timed wait too)."""
    if not rt.peering:
        return False
    peering = rt.kube.get("kopf.dev/v1", "ClusterKopfPeering", rt.peering)
    return outranked(peering, rt.priority, now)


def run_pass(rt: Runtime, key: Key) -> float | None:
    """One pass over one custom resource, from the store: reconcile, write the status if it
    changed, post the Events of its transitions. Seconds until its next deadline, if any."""
    kind, ns, name = key
    body = rt.store.get(API_VERSION, kind, name, ns)
    if not alive(body) or not in_scope(rt.namespaces, ns):
        return None
    now = _now()
    if _outranked(rt, now):
        return 60.0  # look again later; the replica that works has it meanwhile
    metrics = rt.metrics
    is_model = kind == model.KIND
    reconcile, context = (run_model, rt.models) if is_model else (run_finetune, rt.finetunes)
    with metrics.duration.labels(kind).time():
        try:
            outcome = reconcile(context, body, now)
            if write_status(rt.kube, body, outcome.status):
                log.info("%s %s/%s: %s", kind, ns, name, _summary(outcome.status))
            events.post(rt.kube, body, outcome.events, now)
        except ApiError as exc:
            metrics.reconciles.labels(kind, "error").inc()
            _refused(rt, key, body, exc, now)
            raise
        except Exception:
            metrics.reconciles.labels(kind, "error").inc()
            raise
    rt.refusals.pop(key, None)
    metrics.reconciles.labels(kind, "ok").inc()
    before = (body.get("status") or {}).get("conditions") or []
    metrics.record_stages(kind, before, outcome.status.get("conditions") or [], now)
    metrics.phases.set(kind, ns, name, outcome.status.get("phase"))
    if is_model:
        rt.selectors.pop(key, None)
        if outcome.node_selector is not None:
            rt.selectors[key] = outcome.node_selector
    if outcome.requeue_at is None:
        return None
    return max(0.0, (outcome.requeue_at - now).total_seconds())


def _refused(
    rt: Runtime, key: Key, body: dict[str, Any], exc: ApiError, now: datetime.datetime
) -> None:
    """A write the apiserver refused (a quota's 403, an immutable field's 422) is said on the
    object as a Warning Event, once per distinct refusal, not only in the operator's log; the
    pass is retried with backoff."""
    message = f"The apiserver refused a write of this pass ({exc}); retrying with backoff."
    if rt.refusals.get(key) == message:
        return
    rt.refusals[key] = message
    try:
        events.post(rt.kube, body, [Event("Warning", cond.API_REFUSED, message)], now)
    except Exception:
        log.exception("posting the refusal on %s %s/%s failed", *key)


def _summary(status: dict[str, Any]) -> str:
    """The log line of a status change: the phase and the first condition not true."""
    waiting = next((c for c in status.get("conditions") or [] if c.get("status") != "True"), None)
    why = f"{waiting['type']} {waiting['reason']}" if waiting else "all conditions true"
    return f"status written, phase {status.get('phase')} ({why})"


def _request(rt: Runtime, keys: list[Key]) -> None:
    for key in keys:
        rt.passes.request(key)


async def _become_ready(rt: Runtime) -> None:
    """kopf has listed every indexed kind (it runs no other handler before that): passes may
    read the store now. Deleted models' NodePools left from while the operator was away go."""
    if rt.ready:
        return
    rt.ready = True
    rt.passes.start()
    for pool in rt.store.list("karpenter.sh/v1", "NodePool"):
        owner = nodepool_owner(pool["metadata"].get("labels") or {})
        if owner and rt.store.get(API_VERSION, owner[0], owner[2], owner[1]) is None:
            await _delete_nodepool(rt, pool["metadata"]["name"], owner)


async def _delete_nodepool(rt: Runtime, name: str, owner: Key) -> None:
    log.info("deleting NodePool %s: %s %s/%s is gone", name, *owner)
    try:
        await asyncio.to_thread(rt.kube.delete, "karpenter.sh/v1", "NodePool", name)
    except Exception:
        log.exception("deleting NodePool %s failed", name)


# --- the store's feeds -------------------------------------------------------------------


def _index_children(fn: Any) -> Any:
    for group, version, plural in CHILDREN:
        fn = kopf.index(*_resource(group, version, plural), labels=OURS)(fn)
    return fn


@_index_children
async def children(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Each child as it is now (kopf calls this before the event handlers below)."""
    memo.runtime.store.put(dict(body))


@kopf.index(*MODEL)
@kopf.index(*FINETUNE)
async def custom_resources(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """An AlpacaModel or AlpacaFineTune: a pass when its spec moved (or it is new, or going)."""
    rt: Runtime = memo.runtime
    obj = dict(body)
    meta = obj["metadata"]
    rt.store.put(obj)
    key, mark = (obj["kind"], meta["namespace"], meta["name"]), spec_mark(obj)
    if rt.marks.get(key) != mark:
        rt.marks[key] = mark
        rt.passes.request(key)


@kopf.index("v1", "nodes")
async def nodes(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A node as capacity sees it; a change of its labels, GPUs or schedulability wakes only the
    models whose node selector matches it before or after (heartbeats wake no one)."""
    rt: Runtime = memo.runtime
    name = body["metadata"]["name"]
    before = rt.store.get("v1", "Node", name)
    rt.store.put(dict(body))
    after = rt.store.get("v1", "Node", name)
    if after is None:
        return
    if before is not None and node_key(before) != node_key(after):
        labels = (before["metadata"].get("labels"), after["metadata"].get("labels"))
        _request(rt, node_wakes(labels[0], labels[1], rt.selectors))
    elif before is None and rt.ready:  # a new node
        _request(rt, node_wakes(None, after["metadata"].get("labels"), rt.selectors))


@kopf.index("apiextensions.k8s.io", "v1", "customresourcedefinitions")
async def crds(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Whether KubeRay and Karpenter are installed: the models say so, and go on when they are."""
    rt: Runtime = memo.runtime
    name = body["metadata"]["name"]
    if name not in WATCHED_CRDS:
        return
    before = rt.kube.crd_installed(name)
    rt.store.put(dict(body))
    if rt.ready and rt.kube.crd_installed(name) != before:
        _request(rt, _all_models(rt))


def _all_models(rt: Runtime) -> list[Key]:
    return [
        (model.KIND, m["metadata"]["namespace"], m["metadata"]["name"])
        for m in rt.store.list(API_VERSION, model.KIND)
    ]


# --- events: wakes and deletions ---------------------------------------------------------


def _on_children(fn: Any) -> Any:
    for group, version, plural in CHILDREN:
        fn = kopf.on.event(*_resource(group, version, plural), labels=OURS)(fn)
    return fn


@_on_children
async def child_changed(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A child changed: the custom resources it belongs to recompute."""
    rt: Runtime = memo.runtime
    await _become_ready(rt)
    obj = dict(body)
    meta = obj["metadata"]
    ns = meta.get("namespace")
    if event["type"] == "DELETED":
        rt.store.discard(obj["apiVersion"], obj["kind"], meta["name"], ns)
    cache = (meta.get("labels") or {}).get(names.LABEL_CACHE)
    pvc = rt.store.get("v1", "PersistentVolumeClaim", cache, ns) if cache else None
    _request(rt, child_wakes(obj, pvc))


@kopf.on.event(*MODEL)
@kopf.on.event(*FINETUNE)
async def custom_resource_event(
    event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """The first events after kopf's listing start the passes; a deletion is forgotten (its
    children go by owner references, its NodePool here)."""
    rt: Runtime = memo.runtime
    await _become_ready(rt)
    if event["type"] != "DELETED":
        return
    meta = body["metadata"]
    key = (body["kind"], meta["namespace"], meta["name"])
    rt.store.discard(API_VERSION, body["kind"], meta["name"], meta["namespace"])
    rt.passes.forget(key)
    rt.selectors.pop(key, None)
    rt.marks.pop(key, None)
    rt.refusals.pop(key, None)
    rt.metrics.phases.set(body["kind"], meta["namespace"], meta["name"], None)
    log.info("deleted %s %s/%s; children go by owner references", *key)
    for pool in rt.store.list("karpenter.sh/v1", "NodePool"):
        owner = nodepool_owner(pool["metadata"].get("labels") or {})
        if owner == key:
            await _delete_nodepool(rt, pool["metadata"]["name"], owner)


@kopf.on.event("v1", "nodes")
@kopf.on.event("apiextensions.k8s.io", "v1", "customresourcedefinitions")
async def cluster_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Our own CRDs are always there, so this runs as soon as kopf's listing is done."""
    rt: Runtime = memo.runtime
    await _become_ready(rt)
    if event["type"] != "DELETED":
        return
    obj = dict(body)
    name = obj["metadata"]["name"]
    rt.store.discard(obj["apiVersion"], obj["kind"], name, None)
    if obj["kind"] == "Node":
        _request(rt, node_wakes(obj["metadata"].get("labels"), None, rt.selectors))
    elif name in WATCHED_CRDS:
        _request(rt, _all_models(rt))
