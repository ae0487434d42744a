"""The cluster's controllers as the chaos suite plays them: what the Job controller, KubeRay and
Karpenter would write on the operator's children, from a thread of the test.

- fill Jobs complete a moment after they appear (or fail, for weights that cannot be filled);
- training Jobs start (a ready pod), then complete or fail, or keep running, by the
  fine-tune's fate; a suspended Job's pods go;
- each RayService gets a RayCluster of its own (KubeRay's name, labels and owner), made again
  when the operator deletes it for a pod-template change, and a Ready status for its
  generation with its workers' replicas;
- NodePools are Ready;
- claims are bound (the PV controller) at their size, and grow when their request does (the
  resizer).

Each step waits `settle` seconds after the object first appeared, so operator kills land
between the states. Errors (the apiserver restarting) are counted and the next round tries
again.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from alpaca_operator.kube import Kube
from alpaca_operator.render import names

TS = "2026-12-03T12:00:00Z"
OURS = "app.kubernetes.io/managed-by=alpaca-operator"
KUBERAY_LABELS = ("ray.io/originated-from-crd", "ray.io/originated-from-cr-name")


class ClusterClient(Kube):
    """The operator's thin client, plus the status merge patch a controller sends."""

    def merge_status(
        self, api_version: str, kind: str, name: str, namespace: str | None, status: dict[str, Any]
    ) -> dict[str, Any]:
        from alpaca_operator.kube import KINDS

        self._wrote(kind)
        return self._request(
            "PATCH",
            KINDS[(api_version, kind)].path(namespace, name) + "/status",
            body={"status": status},
            content_type="application/merge-patch+json",
        )


def condition(obj: dict[str, Any], type_: str) -> bool:
    return any(
        c.get("type") == type_ and c.get("status") == "True"
        for c in (obj.get("status") or {}).get("conditions") or []
    )


def _cond(type_: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {
        "type": type_,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": TS,
        "lastProbeTime": TS,
    }


def job_complete(indexed: bool) -> dict[str, Any]:
    done = {
        "active": 0,
        "ready": 0,
        "succeeded": 1,
        "startTime": TS,
        "completionTime": TS,
        "conditions": [_cond("SuccessCriteriaMet"), _cond("Complete")],
    }
    return done | ({"completedIndexes": "0"} if indexed else {})


def job_failed(reason: str, message: str) -> dict[str, Any]:
    return {
        "active": 0,
        "ready": 0,
        "failed": 1,
        "startTime": TS,
        "conditions": [_cond("FailureTarget", reason, message), _cond("Failed", reason, message)],
    }


def rayservice_ready(rs: dict[str, Any], cluster: str) -> dict[str, Any]:
    workers = sum(
        int(g.get("minReplicas", g.get("replicas", 0)) or 0)
        for g in rs["spec"]["rayClusterConfig"].get("workerGroupSpecs") or []
    )
    ready = {
        k: v for k, v in _cond("Ready", "NonZeroServeEndpoints").items() if k != "lastProbeTime"
    }
    return {
        "observedGeneration": rs["metadata"]["generation"],
        "conditions": [ready],
        "serviceStatus": "Running",
        "numServeEndpoints": workers + 1,
        "activeServiceStatus": {
            "rayClusterName": cluster,
            "applicationStatuses": {"alpaca": {"status": "RUNNING"}},
            "rayClusterStatus": {"desiredWorkerReplicas": workers, "readyWorkerReplicas": workers},
        },
    }


def _source(job: dict[str, Any]) -> str:
    args = job["spec"]["template"]["spec"]["containers"][0].get("args") or []
    return args[args.index("--source") + 1] if "--source" in args else ""


def _alive(obj: dict[str, Any]) -> bool:
    return not obj["metadata"].get("deletionTimestamp")


class Driver(threading.Thread):
    """Plays the controllers until stopped; counts what it did and the errors it met."""

    def __init__(
        self,
        kube: ClusterClient,
        namespaces: tuple[str, ...],
        fate: Callable[[str], str],
        broken: str,
        settle: float = 1.0,
        interval: float = 0.6,
        seed: int = 0,
    ) -> None:
        super().__init__(name="chaos-driver", daemon=True)
        self.kube, self.namespaces, self.fate, self.broken = kube, namespaces, fate, broken
        self.settle, self.interval = settle, interval
        self.random = random.Random(seed)
        self.done: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.last_action = time.monotonic()
        self._first_seen: dict[tuple[str, str], float] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                self.step()
            except Exception as exc:  # the apiserver away, an object gone meanwhile
                status = getattr(exc, "status", None)  # an ApiError's
                self.errors[type(exc).__name__ + (f" {status}" if status else "")] += 1

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=60)

    def idle_for(self) -> float:
        return time.monotonic() - self.last_action

    # --- one round ------------------------------------------------------------------------

    def _due(self, what: str, uid: str, after: float = 1.0) -> bool:
        """Whether `what` may happen to object `uid`: `after` x settle seconds since the
        driver first saw it wanting that."""
        first = self._first_seen.setdefault((what, uid), time.monotonic())
        return time.monotonic() - first >= after * self.settle

    def _did(self, what: str) -> None:
        self.done[what] += 1
        self.last_action = time.monotonic()

    def _ours(self, obj: dict[str, Any]) -> bool:
        return obj["metadata"].get("namespace") in self.namespaces and _alive(obj)

    def step(self) -> None:
        for job in self.kube.list("batch/v1", "Job", selector=OURS):
            if self._ours(job):
                self._job(job)
        clusters: dict[str, list[dict[str, Any]]] = {}
        for rc in self.kube.list("ray.io/v1", "RayCluster", selector=OURS):
            for ref in rc["metadata"].get("ownerReferences") or []:
                if _alive(rc):
                    clusters.setdefault(ref["uid"], []).append(rc)
        for rs in self.kube.list("ray.io/v1", "RayService", selector=OURS):
            if self._ours(rs):
                self._rayservice(rs, clusters.get(rs["metadata"]["uid"], []))
        for pool in self.kube.list("karpenter.sh/v1", "NodePool", selector=OURS):
            self._nodepool(pool)
        for pvc in self.kube.list("v1", "PersistentVolumeClaim", selector=OURS):
            if self._ours(pvc):
                self._claim(pvc)

    def _claim(self, pvc: dict[str, Any]) -> None:
        """The PV controller binds a claim at the size it asks; the resizer reports a grown
        one (the apiserver let the request grow only where the class allows expansion)."""
        meta, status = pvc["metadata"], pvc.get("status") or {}
        request = pvc["spec"]["resources"]["requests"]["storage"]
        if (
            status.get("phase") == "Bound"
            and (status.get("capacity") or {}).get("storage") == request
        ):
            return
        if not self._due("bind", meta["uid"]):
            return
        bound = {
            "phase": "Bound",
            "accessModes": pvc["spec"]["accessModes"],
            "capacity": {"storage": request},
        }
        self.kube.merge_status(
            "v1", "PersistentVolumeClaim", meta["name"], meta["namespace"], bound
        )
        self._did("PVC bound" if status.get("phase") != "Bound" else "PVC grown")

    def _nodepool(self, pool: dict[str, Any]) -> None:
        meta = pool["metadata"]
        owner_ns = (meta.get("labels") or {}).get(names.LABEL_OWNER_NAMESPACE)
        if owner_ns not in self.namespaces or not _alive(pool) or condition(pool, "Ready"):
            return
        if self._due("pool", meta["uid"]):
            ready = {k: v for k, v in _cond("Ready", "Ready").items() if k != "lastProbeTime"}
            status = {"conditions": [ready]}
            self.kube.merge_status("karpenter.sh/v1", "NodePool", meta["name"], None, status)
            self._did("NodePool ready")

    def _job(self, job: dict[str, Any]) -> None:
        meta, status = job["metadata"], job.get("status") or {}
        uid, labels = meta["uid"], meta.get("labels") or {}
        if condition(job, "Complete") or condition(job, "Failed"):
            return
        patch: Callable[[dict[str, Any]], Any] = lambda s: self.kube.merge_status(  # noqa: E731
            "batch/v1", "Job", meta["name"], meta["namespace"], s
        )
        if job["spec"].get("suspend"):
            if status.get("active"):  # the Job controller deletes a suspended Job's pods
                patch({"active": 0, "ready": 0})
                self._did("Job suspended")
            return
        if names.LABEL_CACHE in labels:  # a fill Job
            if not self._due("fill", uid):
                return
            if self.broken in _source(job):
                patch(job_failed("PodFailurePolicy", "Container fill for pod exited with code 3"))
                self._did("fill Job failed")
            else:
                patch(job_complete(indexed=False))
                self._did("fill Job complete")
            return
        tune = labels.get(names.LABEL_FINETUNE)
        if tune is None:
            return
        if not status.get("active"):
            if self._due("start", uid):
                patch({"active": 1, "ready": 1, "startTime": TS})
                self._did("training Job running")
            return
        fate = self.fate(tune)
        if fate == "run" or not self._due("finish", uid, after=2):
            return
        if fate == "fail":
            patch(job_failed("BackoffLimitExceeded", "Job has reached the specified backoff limit"))
            self._did("training Job failed")
        else:
            patch(job_complete(indexed=True))
            self._did("training Job complete")

    def _rayservice(self, rs: dict[str, Any], clusters: list[dict[str, Any]]) -> None:
        meta, status = rs["metadata"], rs.get("status") or {}
        if not self._due("serve", meta["uid"]):
            return
        active = (status.get("activeServiceStatus") or {}).get("rayClusterName")
        mine = {c["metadata"]["name"] for c in clusters}
        if active in mine and status.get("observedGeneration") == meta["generation"]:
            return
        if active not in mine:
            # KubeRay makes a RayCluster when the active one is gone (the operator deletes it
            # when the pod templates change): one of its own if it made one already
            active = min(mine) if mine else self._make_cluster(rs)
        self.kube.merge_status(
            "ray.io/v1", "RayService", meta["name"], meta["namespace"], rayservice_ready(rs, active)
        )
        self._did("RayService ready")

    def _make_cluster(self, rs: dict[str, Any]) -> str:
        meta = rs["metadata"]
        suffix = "".join(self.random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))
        name = f"{meta['name']}-{suffix}"
        labels = dict(meta.get("labels") or {})
        labels |= dict(zip(KUBERAY_LABELS, ("RayService", meta["name"]), strict=True))
        owner = {
            "apiVersion": "ray.io/v1",
            "kind": "RayService",
            "name": meta["name"],
            "uid": meta["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        cluster = {
            "apiVersion": "ray.io/v1",
            "kind": "RayCluster",
            "metadata": {
                "name": name,
                "namespace": meta["namespace"],
                "labels": labels,
                "ownerReferences": [owner],
            },
            "spec": json.loads(json.dumps(rs["spec"]["rayClusterConfig"])),
        }
        self.kube.create(cluster)
        self._did("RayCluster created")
        return name
