"""Shapes the reconcile tests share: examples as stored objects, other controllers' moves, one
pass as the handlers run it (reconcile, then write the status)."""

from __future__ import annotations

import copy
import datetime
from pathlib import Path
from typing import Any

import yaml

from alpaca_operator import conditions as cond
from alpaca_operator.accept import Outcome
from alpaca_operator.config import OperatorConfig
from alpaca_operator.reconcile.apply import Applier
from alpaca_operator.reconcile.finetune import FineTuneContext, run_finetune
from alpaca_operator.reconcile.model import NODEPOOL_CRD, RAYSERVICE_CRD, ModelContext, run_model
from alpaca_operator.reconcile.serving import application_for
from alpaca_operator.reconcile.status import write_status

from .fake_kube import FakeKube

REPO = Path(__file__).resolve().parents[3]
NS = "team"
NOW = datetime.datetime(2026, 11, 24, 12, 0, tzinfo=datetime.UTC)
TS = "2026-11-24T12:00:00Z"
API = "alpaca.dev/v1alpha1"
CONFIG = OperatorConfig(
    serving_image="alpaca-serving:test",
    weights_image="alpaca-weights:test",
    training_image="alpaca-training:test",
)
ALL_CRDS = (RAYSERVICE_CRD, NODEPOOL_CRD)


def example(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / "examples" / name).read_text()))


def create(kube: FakeKube, doc: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """A custom resource as `kubectl apply` leaves it: uid, generation 1, no status."""
    doc = copy.deepcopy(doc)
    doc["metadata"]["namespace"] = NS
    if name:
        doc["metadata"]["name"] = name
    return kube.put(doc)


def model_context(kube: FakeKube) -> ModelContext:
    return ModelContext(kube, Applier(kube), CONFIG, application_for)


def finetune_context(kube: FakeKube) -> FineTuneContext:
    return FineTuneContext(kube, Applier(kube), CONFIG)


def model_pass(
    ctx: ModelContext, name: str, now: datetime.datetime = NOW
) -> tuple[dict[str, Any], Outcome]:
    """One reconcile and status write, as the handlers do; the fresh AlpacaModel and what the
    pass decided."""
    kube = ctx.kube
    body = kube.stored(API, "AlpacaModel", name, NS)
    outcome = run_model(ctx, body, now)
    write_status(kube, body, outcome.status)
    return kube.stored(API, "AlpacaModel", name, NS), outcome


def finetune_pass(
    ctx: FineTuneContext, name: str, now: datetime.datetime = NOW
) -> tuple[dict[str, Any], Outcome]:
    kube = ctx.kube
    body = kube.stored(API, "AlpacaFineTune", name, NS)
    outcome = run_finetune(ctx, body, now)
    write_status(kube, body, outcome.status)
    return kube.stored(API, "AlpacaFineTune", name, NS), outcome


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The conditions by type; each reason must be one its type can carry."""
    out = {c["type"]: c for c in obj["status"]["conditions"]}
    for type_, c in out.items():
        assert c["reason"] in cond.REASONS_OF[type_], (type_, c["reason"])
    return out


def reasons(obj: dict[str, Any]) -> dict[str, str]:
    return {type_: c["reason"] for type_, c in conditions(obj).items()}


def complete_job(kube: FakeKube, name: str, **status: Any) -> None:
    """What the Job controller reports when every index succeeded."""
    kube.set_status(
        "batch/v1",
        "Job",
        name,
        NS,
        {
            "succeeded": 1,
            "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": TS},
                {"type": "Complete", "status": "True", "lastTransitionTime": TS},
            ],
            **status,
        },
    )


def fail_job(kube: FakeKube, name: str, reason: str = "BackoffLimitExceeded") -> None:
    kube.set_status(
        "batch/v1",
        "Job",
        name,
        NS,
        {
            "failed": 1,
            "conditions": [
                {"type": "Failed", "status": "True", "reason": reason, "lastTransitionTime": TS}
            ],
        },
    )


def rayservice_ready(kube: FakeKube, name: str, workers: int, cluster: str = "") -> None:
    """What KubeRay reports once the app runs on the active RayCluster."""
    kube.set_status(
        "ray.io/v1",
        "RayService",
        name,
        NS,
        {
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": TS}],
            "activeServiceStatus": {
                "rayClusterName": cluster or f"{name}-abcde",
                "applicationStatuses": {"alpaca": {"status": "RUNNING"}},
                "rayClusterStatus": {
                    "desiredWorkerReplicas": workers,
                    "readyWorkerReplicas": workers,
                },
            },
        },
    )


def terminated_pod(kube: FakeKube, job: str, pod: str, message: str, created: str = TS) -> None:
    """A pod of a Job that ended with a termination message."""
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod,
                "namespace": NS,
                "labels": {"job-name": job},
                "creationTimestamp": created,
            },
            "status": {
                "containerStatuses": [
                    {"name": "main", "state": {"terminated": {"exitCode": 3, "message": message}}}
                ]
            },
        }
    )


def owners(obj: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(kind, name, controller) of each owner reference."""
    return [
        (r["kind"], r["name"], bool(r.get("controller")))
        for r in obj["metadata"].get("ownerReferences") or []
    ]
