"""What the chaos left behind, counted from the apiserver: children by identity, owners, the
custom resources' statuses, finalizers, Events.

A child's identity is the label that names what it belongs to (a model, a fine-tune, a weights
cache, a NodePool's owner) with its kind and component: two live objects of one identity are a
duplicate. A child is an orphan when no live owner holds it, or, for a weights cache (its PVC
and fill Job), when an owner no longer uses it (a cache-sized volume nobody will delete).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from alpaca_operator.api import AlpacaFineTuneSpec, AlpacaModelSpec
from alpaca_operator.kube import Kube
from alpaca_operator.reconcile.cache import claim_names
from alpaca_operator.render import names
from tests.chaos.driver import OURS

API_VERSION = "alpaca.dev/v1alpha1"
NAMESPACED_CHILDREN = (
    ("v1", "PersistentVolumeClaim"),
    ("v1", "Service"),
    ("v1", "ServiceAccount"),
    ("batch/v1", "Job"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("ray.io/v1", "RayService"),
    ("ray.io/v1", "RayCluster"),
)
IDENTITY_LABELS = (names.LABEL_MODEL, names.LABEL_FINETUNE, names.LABEL_CACHE)
OUR_FINALIZERS = ("kopf.zalando.org/", "kopf.dev/", "alpaca.dev/")


LEFT_KARPENTER = "no longer runs on Karpenter"


def pool_owner(pool: dict[str, Any]) -> tuple[str, str, str]:
    """(kind, namespace, name) of the custom resource a NodePool's labels name."""
    labels = pool["metadata"].get("labels") or {}
    kind, ns, name = (names.LABEL_OWNER_KIND, names.LABEL_OWNER_NAMESPACE, names.LABEL_OWNER_NAME)
    return labels.get(kind, ""), labels.get(ns, ""), labels.get(name, "")


def _ref(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj['kind']} {where}{meta['name']}"


@dataclass
class Census:
    models: list[dict[str, Any]] = field(default_factory=list)
    finetunes: list[dict[str, Any]] = field(default_factory=list)
    children: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def take(cls, kube: Kube, namespaces: tuple[str, ...]) -> Census:
        out = cls()
        for ns in namespaces:
            out.models += kube.list(API_VERSION, "AlpacaModel", ns)
            out.finetunes += kube.list(API_VERSION, "AlpacaFineTune", ns)
            for api_version, kind in NAMESPACED_CHILDREN:
                for obj in kube.list(api_version, kind, ns, selector=OURS):
                    out.children.append(obj | {"apiVersion": api_version, "kind": kind})
            out.events += kube.list("v1", "Event", ns)
        for pool in kube.list("karpenter.sh/v1", "NodePool", selector=OURS):
            if (pool["metadata"].get("labels") or {}).get(
                names.LABEL_OWNER_NAMESPACE
            ) in namespaces:
                out.children.append(pool | {"apiVersion": "karpenter.sh/v1", "kind": "NodePool"})
        for obj in out.models:
            obj.setdefault("kind", "AlpacaModel")
        for obj in out.finetunes:
            obj.setdefault("kind", "AlpacaFineTune")
        return out

    @property
    def custom_resources(self) -> list[dict[str, Any]]:
        return self.models + self.finetunes

    # --- duplicates -------------------------------------------------------------------------

    def identities(self) -> Counter[tuple[str, ...]]:
        """Live children per identity."""
        found: Counter[tuple[str, ...]] = Counter()
        for obj in self.children:
            meta = obj["metadata"]
            labels = meta.get("labels") or {}
            if meta.get("deletionTimestamp"):
                continue
            if obj["kind"] == "NodePool":
                found[("NodePool", *pool_owner(obj))] += 1
                continue
            label = next((k for k in IDENTITY_LABELS if k in labels), None)
            component = labels.get(names.LABEL_COMPONENT, "")
            found[
                (obj["kind"], meta["namespace"], f"{label}={labels.get(label or '')}", component)
            ] += 1
        return found

    def duplicates(self) -> dict[tuple[str, ...], int]:
        return {identity: n for identity, n in self.identities().items() if n > 1}

    # --- orphans ----------------------------------------------------------------------------

    def _uses(self, owner: dict[str, Any]) -> set[str]:
        """The weights caches a live model or fine-tune uses: its spec's, and what its
        RayService still mounts (serving switches once the new cache is filled)."""
        meta = owner["metadata"]
        if owner["kind"] == "AlpacaFineTune":
            return {names.cache_name(AlpacaFineTuneSpec.model_validate(owner["spec"]).base_model)}
        spec = AlpacaModelSpec.model_validate(owner["spec"])
        used = {names.cache_name(spec.weights)}
        used |= {names.cache_name(a.as_weights(spec.weights)) for a in spec.adapters}
        serving = ("RayService", meta["namespace"], names.rayservice_name(meta["name"]))
        for rs in self.children:
            if (rs["kind"], rs["metadata"].get("namespace"), rs["metadata"]["name"]) == serving:
                used |= claim_names(rs["spec"])
        return used

    def _live(self) -> dict[str, dict[str, Any]]:
        """Objects by uid, those being deleted left out."""
        return {
            obj["metadata"]["uid"]: obj
            for obj in self.custom_resources + self.children
            if not obj["metadata"].get("deletionTimestamp")
        }

    def orphans(self) -> list[str]:
        live = self._live()
        by_name = {
            (o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o
            for o in self.custom_resources
        }
        found = []
        for obj in self.children:
            meta = obj["metadata"]
            if obj["kind"] == "NodePool":
                owner = by_name.get(pool_owner(obj))
                if owner is None:
                    found.append(f"{_ref(obj)}: {' '.join(pool_owner(obj))} is gone")
                elif (owner["spec"].get("capacity") or {}).get("provisioner") != "karpenter":
                    found.append(f"{_ref(obj)}: {_ref(owner)} {LEFT_KARPENTER}")
                continue
            refs = meta.get("ownerReferences") or []
            owners = [live[r["uid"]] for r in refs if r["uid"] in live]
            if not refs:
                found.append(
                    f"{_ref(obj)}: no owner reference at all (the collector never takes it)"
                )
                continue
            if not owners:
                gone = ", ".join(f"{r['kind']} {r['name']} ({r['uid'][:8]})" for r in refs)
                found.append(f"{_ref(obj)}: every owner is gone: {gone}")
                continue
            cache = (meta.get("labels") or {}).get(names.LABEL_CACHE)
            if cache and obj["kind"] in ("PersistentVolumeClaim", "Job"):
                for owner in owners:
                    if owner["kind"] in (
                        "AlpacaModel",
                        "AlpacaFineTune",
                    ) and cache not in self._uses(owner):
                        found.append(
                            f"{_ref(obj)}: owned by {_ref(owner)}, which no longer uses it"
                        )
        return found

    def fill_jobs(self) -> dict[str, tuple[dict[str, Any], dict[str, Any] | None]]:
        """Every fill Job (by its reference) with its cache PVC, if that exists."""
        pvcs = {
            (o["metadata"]["namespace"], o["metadata"]["name"]): o
            for o in self.children
            if o["kind"] == "PersistentVolumeClaim"
        }
        out = {}
        for job in self.children:
            cache = (job["metadata"].get("labels") or {}).get(names.LABEL_CACHE)
            if job["kind"] == "Job" and cache:
                out[_ref(job)] = (job, pvcs.get((job["metadata"]["namespace"], cache)))
        return out

    def fill_job_drift(self) -> list[str]:
        """Fill Jobs whose live owners are not their cache PVC's (decision 9: the same owners,
        so the Job goes with the cache's last user)."""
        found, live = [], self._live()
        for ref, (job, pvc) in self.fill_jobs().items():
            if pvc is None:
                continue
            mine, its = (
                sorted(
                    r["name"]
                    for r in o["metadata"].get("ownerReferences") or []
                    if r["uid"] in live
                )
                for o in (job, pvc)
            )
            if mine != its:
                found.append(f"{ref}: owners {mine}, its PVC's {its}")
        return found

    def collectable(self) -> list[str]:
        """Orphans the garbage collector is still to take: owner references, none alive."""
        return [o for o in self.orphans() if ": every owner is gone" in o]

    # --- statuses, finalizers, Events -------------------------------------------------------

    def finalizers(self) -> list[str]:
        return [
            f"{_ref(obj)}: {f}"
            for obj in self.custom_resources + self.children
            for f in obj["metadata"].get("finalizers") or []
            if f.startswith(OUR_FINALIZERS)
        ]

    def terminating(self) -> list[str]:
        return [
            _ref(o)
            for o in self.custom_resources + self.children
            if o["metadata"].get("deletionTimestamp")
        ]

    def event_counts(self) -> Counter[tuple[str, str, str, str]]:
        """Events per (object, uid, reason, message)."""
        counts: Counter[tuple[str, str, str, str]] = Counter()
        for e in self.events:
            inv = e["involvedObject"]
            key = (
                f"{inv.get('kind')} {inv.get('namespace')}/{inv.get('name')}",
                inv.get("uid", ""),
                e["reason"],
                e.get("message", ""),
            )
            counts[key] += int(e.get("count") or 1)
        return counts

    def events_by_reason(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for e in self.events:
            counts[e["reason"]] += int(e.get("count") or 1)
        return counts
