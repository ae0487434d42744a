"""kopf wiring: watch streams feed the store, and events ask for passes; nothing else.

Every kind the operator reads is indexed (`@kopf.index`): kopf lists each of them before any
other handler runs, and each watch event puts the object into the store before the event
handlers see it. Children are watched through a server-side label selector (only objects the
operator manages come over the wire). A pass reads the store, never the apiserver, so a pass
over an unchanged object sends no request; see passes.py for how passes are queued.

kopf keeps no bookkeeping on the custom resources (no create/update handlers, so no
last-handled annotation and no finalizer): a custom resource's own watch event asks for a pass
when its generation moved, when it is new to us, and when its deletion began.

What each event does (which passes it asks for, what a deletion forgets, which NodePools go)
and what a pass does are decided in reconcile/runtime.py; the handlers here only hand the
events over.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import kopf
import kubernetes

from alpaca_operator import __version__
from alpaca_operator.api import API_VERSION, GROUP, VERSION, finetune, model
from alpaca_operator.config import OperatorConfig
from alpaca_operator.kube import Kube
from alpaca_operator.metrics import Metrics
from alpaca_operator.passes import Key, Passes
from alpaca_operator.reconcile.apply import Applier
from alpaca_operator.reconcile.finetune import FineTuneContext
from alpaca_operator.reconcile.model import ModelContext
from alpaca_operator.reconcile.runtime import Runtime
from alpaca_operator.reconcile.serving import application_for
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
    workers = int(memo.get("workers") or 16)
    configuration = kubernetes.client.Configuration.get_default_copy()
    # a connection for every worker's pass (and room for the peering check): the client's
    # default pool is five per CPU, so more workers would queue for a connection
    configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize, workers + 2)
    client = kubernetes.client.ApiClient(configuration)
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
        passes=Passes(lambda key: rt.run_pass(key), workers=workers),
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


async def _become_ready(rt: Runtime) -> None:
    """The first event handler call after kopf's listing starts the passes and sweeps the
    NodePools whose owner went while the operator was away."""
    for name, owner in rt.become_ready():
        await _delete_nodepool(rt, name, owner)


async def _delete_nodepool(rt: Runtime, name: str, owner: Key) -> None:
    await asyncio.to_thread(rt.delete_nodepool, name, owner)


# --- the store's feeds -------------------------------------------------------------------


def _index_children(fn: Any) -> Any:
    for group, version, plural in CHILDREN:
        fn = kopf.index(*_resource(group, version, plural), labels=OURS)(fn)
    return fn


@_index_children
async def children(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Each child as it is now (kopf calls this before the event handlers below)."""
    memo.runtime.child_stored(dict(body))


@kopf.index(*MODEL)
@kopf.index(*FINETUNE)
async def custom_resources(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """An AlpacaModel or AlpacaFineTune: a pass when its spec moved (or it is new, or going)."""
    memo.runtime.custom_resource_seen(dict(body))


@kopf.index("v1", "nodes")
async def nodes(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A node as capacity sees it; wakes the models it concerns."""
    memo.runtime.node_seen(dict(body))


@kopf.index("apiextensions.k8s.io", "v1", "customresourcedefinitions")
async def crds(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Whether KubeRay and Karpenter are installed."""
    memo.runtime.crd_seen(dict(body))


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
    rt.child_event(event["type"], dict(body))


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
    obj = dict(body)
    meta = obj["metadata"]
    for pool in rt.custom_resource_deleted(obj):
        await _delete_nodepool(rt, pool, (obj["kind"], meta["namespace"], meta["name"]))


@kopf.on.event("v1", "nodes")
@kopf.on.event("apiextensions.k8s.io", "v1", "customresourcedefinitions")
async def cluster_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Our own CRDs are always there, so this runs as soon as kopf's listing is done."""
    rt: Runtime = memo.runtime
    await _become_ready(rt)
    if event["type"] == "DELETED":
        rt.cluster_object_deleted(dict(body))
