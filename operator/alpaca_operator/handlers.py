"""kopf handlers: thin wrappers that guard, delegate to the reconcilers and apply results.

kopf keeps its own bookkeeping in annotations under alpaca.dev (not in status), and no handler
needs a finalizer: namespaced children are garbage-collected through owner references, and
NodePools (cluster-scoped, so they cannot be owned by a namespaced object) are swept by a timer.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

import kopf
import kubernetes

from alpaca_operator.accept import Outcome
from alpaca_operator.api import API_VERSION, GROUP, VERSION, finetune, model
from alpaca_operator.config import OperatorConfig
from alpaca_operator.kube import Kube
from alpaca_operator.metrics import Metrics
from alpaca_operator.reconcile.apply import Applier
from alpaca_operator.reconcile.finetune import FineTuneContext, run_finetune
from alpaca_operator.reconcile.model import ModelContext, run_model
from alpaca_operator.reconcile.serving import application_for
from alpaca_operator.reconcile.status import write_status
from alpaca_operator.reconcile.triggers import (
    alive,
    cache_users,
    node_moved,
    nodepool_owner,
    on_existing_nodes,
    outranked,
    to_reconcile,
)
from alpaca_operator.render import names

MODEL = (GROUP, VERSION, model.PLURAL)
FINETUNE = (GROUP, VERSION, finetune.PLURAL)
RESYNC_SECONDS = 60.0


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Operator-wide settings, and the API client every handler shares."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = logging.WARNING  # kopf's own INFO logs are not posted as Events
    settings.watching.server_timeout = 300
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    memo.metrics = Metrics()
    kube = Kube(
        kubernetes.client.ApiClient(), on_write=lambda kind: memo.metrics.writes.labels(kind).inc()
    )
    memo.kube = kube
    applier, config = Applier(kube), OperatorConfig.from_env()
    memo.models = ModelContext(kube, applier, config, application_for)
    memo.finetunes = FineTuneContext(kube, applier, config)
    if memo.get("metrics_port"):
        memo.metrics.serve(int(memo.metrics_port))


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _publish(
    memo: kopf.Memo, body: dict[str, Any], outcome: Outcome, now: datetime.datetime
) -> None:
    meta = body["metadata"]
    write_status(memo.kube, body, outcome.status)
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1024])
    metrics: Metrics = memo.metrics
    before = (body.get("status") or {}).get("conditions") or []
    metrics.record_stages(body["kind"], before, outcome.status.get("conditions") or [], now)
    metrics.phases.set(body["kind"], meta["namespace"], meta["name"], outcome.status.get("phase"))


def _run(memo: kopf.Memo, body: dict[str, Any], reconcile: Any, context: Any) -> None:
    """One reconcile pass, timed and counted."""
    metrics: Metrics = memo.metrics
    kind = body["kind"]
    now = _now()
    with metrics.duration.labels(kind).time():
        try:
            outcome = reconcile(context, body, now)
            _publish(memo, body, outcome, now)
        except Exception:
            metrics.reconciles.labels(kind, "error").inc()
            raise
    metrics.reconciles.labels(kind, "ok").inc()


def _reconcile_model(memo: kopf.Memo, body: dict[str, Any]) -> None:
    _run(memo, body, run_model, memo.models)


def _reconcile_finetune(memo: kopf.Memo, body: dict[str, Any]) -> None:
    _run(memo, body, run_finetune, memo.finetunes)


def _wake(memo: kopf.Memo, kind: str, namespace: str, name: str) -> None:
    """Recompute a parent after one of its children changed."""
    parent = memo.kube.get(API_VERSION, kind, name, namespace)
    if alive(parent):
        (_reconcile_model if kind == model.KIND else _reconcile_finetune)(memo, parent)


@kopf.on.resume(*MODEL)
@kopf.on.create(*MODEL)
@kopf.on.update(*MODEL, field="spec")
def model_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """AlpacaModel created, changed, or found at start-up."""
    _reconcile_model(memo, dict(body))


def _namespaces(memo: kopf.Memo) -> list[str]:
    return list(memo.get("namespaces") or [])


def _outranked(memo: kopf.Memo, now: datetime.datetime) -> bool:
    """With peering: whether a live replica of higher priority exists. kopf pauses this
    replica's handlers then; the resync loop pauses too."""
    if not memo.get("peering"):
        return False
    peering = memo.kube.get("kopf.dev/v1", "ClusterKopfPeering", memo.peering)
    return outranked(peering, int(memo.priority), now)


async def _resync_kind(memo: kopf.Memo, kind: str, reconcile: Any) -> None:
    log = logging.getLogger(__name__)
    try:
        bodies = await asyncio.to_thread(memo.kube.list, API_VERSION, kind)
    except Exception:  # the apiserver may be briefly away; try again next round
        log.exception("resync: listing %s failed", kind)
        return
    for body in to_reconcile(bodies, _namespaces(memo)):
        meta = body["metadata"]
        try:
            await asyncio.to_thread(reconcile, memo, body)
        except Exception:
            log.exception("resync of %s %s/%s failed", kind, meta["namespace"], meta["name"])


async def _resync(memo: kopf.Memo) -> None:
    """Every model and fine-tune once a minute: stage deadlines, nodes, CRDs installed later.

    One operator-level loop rather than a kopf timer per object: kopf puts a finalizer on
    objects with timers, and nothing here needs one.
    """
    while True:
        await asyncio.sleep(memo.get("resync_seconds", RESYNC_SECONDS))
        if await asyncio.to_thread(_outranked, memo, _now()):
            continue
        await _resync_kind(memo, model.KIND, _reconcile_model)
        await _resync_kind(memo, finetune.KIND, _reconcile_finetune)


@kopf.on.startup()
async def start_resync(memo: kopf.Memo, **_: Any) -> None:
    memo.resync_task = asyncio.create_task(_resync(memo))


@kopf.on.cleanup()
async def stop_resync(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("resync_task")
    if task is not None:
        task.cancel()


@kopf.on.event("ray.io", "v1", "rayservices", labels={names.LABEL_MODEL: kopf.PRESENT})
@kopf.on.event("v1", "services", labels={names.LABEL_MODEL: kopf.PRESENT})
def serving_child_changed(labels: kopf.Labels, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    """A RayService or endpoint Service changed: its AlpacaModel recomputes."""
    _wake(memo, model.KIND, namespace, labels[names.LABEL_MODEL])


@kopf.on.event("v1", "nodes")
def node_changed(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A node came, went, or changed its labels or GPUs: the models on existing nodes
    recompute their capacity. Heartbeats (most node events) change nothing here and wake no one;
    the initial listing only records what is there (the resume handlers reconcile at start)."""
    if not node_moved(memo.setdefault("nodes_seen", {}), event["type"], dict(body)):
        return
    for obj in to_reconcile(memo.kube.list(API_VERSION, model.KIND), _namespaces(memo)):
        if on_existing_nodes(obj):
            _reconcile_model(memo, obj)


@kopf.on.event("v1", "persistentvolumeclaims", labels={names.LABEL_CACHE: kopf.PRESENT})
@kopf.on.event("batch", "v1", "jobs", labels={names.LABEL_CACHE: kopf.PRESENT})
def cache_child_changed(labels: kopf.Labels, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    """A weights cache or its fill Job changed: every user of the cache recomputes."""
    pvc = memo.kube.get("v1", "PersistentVolumeClaim", labels[names.LABEL_CACHE], namespace)
    for kind, name in cache_users(pvc):
        _wake(memo, kind, namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels={names.LABEL_FINETUNE: kopf.PRESENT})
def training_job_changed(labels: kopf.Labels, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    """The training Job changed (pods started, finished, failed): its fine-tune recomputes."""
    _wake(memo, finetune.KIND, namespace, labels[names.LABEL_FINETUNE])


@kopf.timer(
    "karpenter.sh",
    "v1",
    "nodepools",
    labels={"app.kubernetes.io/managed-by": names.PART_OF},
    interval=RESYNC_SECONDS,
)
def sweep_nodepool(
    labels: kopf.Labels, name: str, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Delete a NodePool whose AlpacaModel is gone (no finalizer needed on the model)."""
    owner = nodepool_owner(dict(labels))
    if owner and memo.kube.get(API_VERSION, model.KIND, owner[1], owner[0]) is None:
        logger.info("deleting NodePool %s: AlpacaModel %s/%s is gone", name, *owner)
        memo.kube.delete("karpenter.sh/v1", "NodePool", name)


@kopf.on.resume(*FINETUNE)
@kopf.on.create(*FINETUNE)
@kopf.on.update(*FINETUNE, field="spec")
def finetune_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """AlpacaFineTune created, changed, or found at start-up."""
    _reconcile_finetune(memo, dict(body))


@kopf.on.delete(*MODEL, optional=True)
@kopf.on.delete(*FINETUNE, optional=True)
def deleted(
    body: kopf.Body, name: str, namespace: str, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Log a deletion. optional=True: no finalizer; children go by owner references."""
    memo.metrics.phases.set(body["kind"], namespace, name, None)
    logger.info(
        "deleted %s/%s; children are garbage-collected by owner references", namespace, name
    )
