"""The operator's running state, and what each watch event and each pass does with it.

kopf's handlers (handlers.py) hand every event over to a method here and do nothing else but
run it on kopf's loop (NodePool deletions in a thread); everything they used to decide — which
passes to ask for, what a deletion forgets, which NodePools go, what a pass posts and records —
is decided here and unit-tested without kopf.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from alpaca_operator import conditions as cond
from alpaca_operator import events
from alpaca_operator.accept import Event
from alpaca_operator.api import API_VERSION, model
from alpaca_operator.kube import ApiError
from alpaca_operator.metrics import Metrics
from alpaca_operator.passes import Key, Passes
from alpaca_operator.reconcile.finetune import FineTuneContext, run_finetune
from alpaca_operator.reconcile.model import NODEPOOL_CRD, RAYSERVICE_CRD, ModelContext, run_model
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

WATCHED_CRDS = (RAYSERVICE_CRD, NODEPOOL_CRD)
"""The CRDs whose coming or going wakes every model (KubeRay's and Karpenter's)."""
OUTRANKED_RETRY = 60.0
"""Seconds until a replica outranked by a peer looks again."""


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def summary(status: dict[str, Any]) -> str:
    """The log line of a status change: the phase and the first condition not true (Upgrading:
    while it is true, an upgrade runs)."""
    conditions = status.get("conditions") or []
    waiting = next(
        (c for c in conditions if c.get("status") != "True" and c.get("type") != cond.UPGRADING),
        None,
    )
    upgrading = next(
        (c for c in conditions if c.get("type") == cond.UPGRADING and c.get("status") == "True"),
        None,
    )
    why = f"{waiting['type']} {waiting['reason']}" if waiting else "all stages ready"
    if upgrading:
        why += f"; Upgrading {upgrading['reason']}"
    return f"status written, phase {status.get('phase')} ({why})"


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
    echoes: set[tuple[str, str, str, str, str]] = field(default_factory=set)
    """Children whose watch event shows a version the store held already: the operator's own
    write, whose answer the pass that wrote it has seen (apiVersion, kind, namespace, name,
    resourceVersion). Their event wakes no one."""
    ready: bool = False
    clock: Callable[[], datetime.datetime] = utc_now

    # --- passes ---------------------------------------------------------------------------

    def _outranked(self, now: datetime.datetime) -> bool:
        """With peering: whether a live replica of higher priority exists (kopf then pauses
        this replica's watches; passes already queued or timed wait too)."""
        if not self.peering:
            return False
        peering = self.kube.get("kopf.dev/v1", "ClusterKopfPeering", self.peering)
        return outranked(peering, self.priority, now)

    def run_pass(self, key: Key) -> float | None:
        """One pass over one custom resource, from the store: reconcile, write the status if it
        changed, post the Events of its transitions. Seconds until its next deadline, if any."""
        kind, ns, name = key
        body = self.store.get(API_VERSION, kind, name, ns)
        if not alive(body) or not in_scope(self.namespaces, ns):
            return None
        now = self.clock()
        if self._outranked(now):
            return OUTRANKED_RETRY  # look again later; the replica that works has it meanwhile
        metrics = self.metrics
        is_model = kind == model.KIND
        with metrics.duration.labels(kind).time():
            try:
                if is_model:
                    outcome = run_model(self.models, body, now)
                else:
                    outcome = run_finetune(self.finetunes, body, now)
                if write_status(self.kube, body, outcome.status):
                    log.info("%s %s/%s: %s", kind, ns, name, summary(outcome.status))
                events.post(self.kube, body, outcome.events, now)
            except ApiError as exc:
                metrics.reconciles.labels(kind, "error").inc()
                self._refused(key, body, exc, now)
                raise
            except Exception:
                metrics.reconciles.labels(kind, "error").inc()
                raise
        self.refusals.pop(key, None)
        metrics.reconciles.labels(kind, "ok").inc()
        before = (body.get("status") or {}).get("conditions") or []
        metrics.record_stages(kind, before, outcome.status.get("conditions") or [], now)
        metrics.phases.set(kind, ns, name, outcome.status.get("phase"))
        if is_model:
            self.selectors.pop(key, None)
            if outcome.node_selector is not None:
                self.selectors[key] = outcome.node_selector
        if outcome.requeue_at is None:
            return None
        return max(0.0, (outcome.requeue_at - now).total_seconds())

    def _refused(
        self, key: Key, body: dict[str, Any], exc: ApiError, now: datetime.datetime
    ) -> None:
        """A write the apiserver refused (a quota's 403, an immutable field's 422) is said on
        the object as a Warning Event, once per distinct refusal, not only in the operator's
        log; the pass is retried with backoff."""
        message = f"The apiserver refused a write of this pass ({exc}); retrying with backoff."
        if self.refusals.get(key) == message:
            return
        self.refusals[key] = message
        try:
            events.post(self.kube, body, [Event("Warning", cond.API_REFUSED, message)], now)
        except Exception:
            log.exception("posting the refusal on %s %s/%s failed", *key)

    def _request(self, keys: list[Key]) -> None:
        for key in keys:
            self.passes.request(key)

    def all_models(self) -> list[Key]:
        return [
            (model.KIND, m["metadata"]["namespace"], m["metadata"]["name"])
            for m in self.store.list(API_VERSION, model.KIND)
        ]

    # --- start-up and NodePools -----------------------------------------------------------

    def become_ready(self) -> list[tuple[str, Key]]:
        """kopf has listed every indexed kind (it runs no other handler before that): passes
        may read the store now. The NodePools to delete: those whose AlpacaModel or
        AlpacaFineTune went while the operator was away (name, owner); none after the first
        call."""
        if self.ready:
            return []
        self.ready = True
        self.passes.start()
        orphans = []
        for pool in self.store.list("karpenter.sh/v1", "NodePool"):
            owner = nodepool_owner(pool["metadata"].get("labels") or {})
            # an owner in a namespace this operator does not watch is another's to judge
            if (
                owner
                and in_scope(self.namespaces, owner[1])
                and self.store.get(API_VERSION, owner[0], owner[2], owner[1]) is None
            ):
                orphans.append((pool["metadata"]["name"], owner))
        return orphans

    def delete_nodepool(self, name: str, owner: Key) -> None:
        """Delete a NodePool whose owner is gone (blocking: the handlers run it in a thread);
        a failure is logged, and the next start-up's sweep tries again."""
        log.info("deleting NodePool %s: %s %s/%s is gone", name, *owner)
        try:
            self.kube.delete("karpenter.sh/v1", "NodePool", name)
        except Exception:
            log.exception("deleting NodePool %s failed", name)

    # --- watch events ---------------------------------------------------------------------

    def custom_resource_seen(self, obj: dict[str, Any]) -> None:
        """An AlpacaModel or AlpacaFineTune as its watch shows it: a pass when its spec moved
        (or it is new, or going)."""
        meta = obj["metadata"]
        self.store.put(obj)
        key, mark = (obj["kind"], meta["namespace"], meta["name"]), spec_mark(obj)
        if self.marks.get(key) != mark:
            self.marks[key] = mark
            self.passes.request(key)

    def custom_resource_deleted(self, obj: dict[str, Any]) -> list[str]:
        """A custom resource is gone: forget it everywhere (store, queue, selectors, marks,
        refusals, the phase metric). Its children go by owner references; the NodePools it
        owned (cluster-scoped, no owner reference) are returned to be deleted."""
        meta = obj["metadata"]
        key = (obj["kind"], meta["namespace"], meta["name"])
        self.store.discard(API_VERSION, obj["kind"], meta["name"], meta["namespace"])
        self.passes.forget(key)
        self.selectors.pop(key, None)
        self.marks.pop(key, None)
        self.refusals.pop(key, None)
        self.metrics.phases.set(obj["kind"], meta["namespace"], meta["name"], None)
        log.info("deleted %s %s/%s; children go by owner references", *key)
        return [
            pool["metadata"]["name"]
            for pool in self.store.list("karpenter.sh/v1", "NodePool")
            if nodepool_owner(pool["metadata"].get("labels") or {}) == key
        ]

    @staticmethod
    def _version_key(obj: dict[str, Any]) -> tuple[str, str, str, str, str]:
        meta = obj["metadata"]
        return (
            obj["apiVersion"],
            obj["kind"],
            meta.get("namespace") or "",
            meta["name"],
            str(meta.get("resourceVersion") or ""),
        )

    def child_stored(self, obj: dict[str, Any]) -> None:
        """A child as its watch shows it (kopf's index handler, before `child_event`): into the
        store; remembered as an echo when the store held this version already."""
        if not self.store.put(obj) and obj["metadata"].get("resourceVersion"):
            self.echoes.add(self._version_key(obj))

    def child_event(self, event_type: str, obj: dict[str, Any]) -> None:
        """A child changed (the store has it already, from its index handler) or went: the
        custom resources it belongs to recompute. The echo of the operator's own write wakes
        no one: the pass that wrote it saw the apiserver's answer (on a shared cache, ten
        models each adding their owner reference made a hundred passes)."""
        meta = obj["metadata"]
        ns = meta.get("namespace")
        version = self._version_key(obj)
        if version in self.echoes:
            self.echoes.discard(version)
            if event_type != "DELETED":
                return
        if event_type == "DELETED":
            self.store.discard(obj["apiVersion"], obj["kind"], meta["name"], ns)
        cache = (meta.get("labels") or {}).get(names.LABEL_CACHE)
        pvc = self.store.get("v1", "PersistentVolumeClaim", cache, ns) if cache else None
        self._request(child_wakes(obj, pvc))

    def node_seen(self, obj: dict[str, Any]) -> None:
        """A node as capacity sees it; a change of its labels, GPUs or schedulability wakes
        only the models whose node selector matches it before or after (heartbeats wake no
        one), and so does a node new after start-up."""
        name = obj["metadata"]["name"]
        before = self.store.get("v1", "Node", name)
        self.store.put(obj)
        after = self.store.get("v1", "Node", name)
        if after is None:
            return
        if before is not None and node_key(before) != node_key(after):
            labels = (before["metadata"].get("labels"), after["metadata"].get("labels"))
            self._request(node_wakes(labels[0], labels[1], self.selectors))
        elif before is None and self.ready:
            self._request(node_wakes(None, after["metadata"].get("labels"), self.selectors))

    def crd_seen(self, obj: dict[str, Any]) -> None:
        """Whether KubeRay and Karpenter are installed: when that changes after start-up, every
        model recomputes (the models say so, and go on when they are)."""
        name = obj["metadata"]["name"]
        if name not in WATCHED_CRDS:
            return
        before = self.kube.crd_installed(name)
        self.store.put(obj)
        if self.ready and self.kube.crd_installed(name) != before:
            self._request(self.all_models())

    def cluster_object_deleted(self, obj: dict[str, Any]) -> None:
        """A node or a CRD went: a node wakes the models that selected it, a watched CRD every
        model."""
        name = obj["metadata"]["name"]
        self.store.discard(obj["apiVersion"], obj["kind"], name, None)
        if obj["kind"] == "Node":
            self._request(node_wakes(obj["metadata"].get("labels"), None, self.selectors))
        elif name in WATCHED_CRDS:
            self._request(self.all_models())
