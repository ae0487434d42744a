"""reconcile/upgrade.py: a changed model settles its running RayCluster in place (worker
min/max patched) or by deleting it (pod templates changed), never two clusters (decision 11)."""

from __future__ import annotations

import copy
from typing import Any

from alpaca_operator import conditions as cond
from alpaca_operator.reconcile.upgrade import RECREATED, RESCALED, settle_cluster
from alpaca_operator.render import names

from .fake_kube import FakeKube
from .support import (
    ALL_CRDS,
    API,
    NS,
    complete_job,
    create,
    example,
    model_context,
    model_pass,
    rayservice_ready,
)

CLUSTER = "smollm2-abcde"


def _rayservice(workers: tuple[int, int] = (1, 1), image: str = "serving:1") -> dict[str, Any]:
    pod = {"spec": {"containers": [{"name": "ray", "image": image, "resources": {}}]}}
    return {
        "metadata": {"name": "smollm2", "namespace": NS},
        "spec": {
            "rayClusterConfig": {
                "headGroupSpec": {"template": copy.deepcopy(pod)},
                "workerGroupSpecs": [
                    {
                        "groupName": "cpu-worker",
                        "minReplicas": workers[0],
                        "maxReplicas": workers[1],
                        "template": copy.deepcopy(pod),
                    }
                ],
            }
        },
        "status": {"activeServiceStatus": {"rayClusterName": CLUSTER}},
    }


def _cluster(kube: FakeKube, desired: dict[str, Any], **meta: Any) -> None:
    """The RayCluster KubeRay made from a RayService (its autoscaler sidecar on the head)."""
    spec = copy.deepcopy(desired["spec"]["rayClusterConfig"])
    spec["headGroupSpec"]["template"]["spec"]["containers"].append(
        {"name": "autoscaler", "image": "kuberay/autoscaler", "resources": {"cpu": "100m"}}
    )
    kube.put(
        {
            "apiVersion": "ray.io/v1",
            "kind": "RayCluster",
            "metadata": {"name": CLUSTER, "namespace": NS, **meta},
            "spec": spec,
        }
    )


def test_nothing_to_settle_without_a_cluster_or_a_change():
    kube = FakeKube()
    desired = _rayservice()
    assert settle_cluster(kube, {**desired, "status": {}}, desired) is None  # none reported
    assert settle_cluster(kube, desired, desired) is None  # reported, not there (yet)
    _cluster(kube, desired)
    assert settle_cluster(kube, desired, desired) is None  # KubeRay's sidecar is not a change
    _cluster(kube, _rayservice(image="serving:2"), deletionTimestamp="2026-11-24T12:00:00Z")
    assert settle_cluster(kube, desired, desired) is None  # already going
    assert kube.writes == 0


def test_worker_min_max_are_patched_in_place():
    kube = FakeKube()
    _cluster(kube, _rayservice((1, 1)))
    desired = _rayservice((0, 3))
    assert settle_cluster(kube, desired, desired) == RESCALED
    [write] = kube.writes_log
    assert (write.verb, write.kind, write.name) == ("json-patch", "RayCluster", CLUSTER)
    assert write.detail == [
        {"op": "replace", "path": "/spec/workerGroupSpecs/0/minReplicas", "value": 0},
        {"op": "replace", "path": "/spec/workerGroupSpecs/0/maxReplicas", "value": 3},
    ]
    group = kube.stored("ray.io/v1", "RayCluster", CLUSTER, NS)["spec"]["workerGroupSpecs"][0]
    assert (group["minReplicas"], group["maxReplicas"]) == (0, 3)


def test_a_pod_template_change_deletes_the_cluster():
    kube = FakeKube()
    _cluster(kube, _rayservice(image="serving:1"))
    desired = _rayservice((0, 3), image="serving:2")
    assert settle_cluster(kube, desired, desired) == RECREATED
    assert [(w.verb, w.kind) for w in kube.writes_log] == [("delete", "RayCluster")]
    assert kube.names("RayCluster") == []


def test_the_pending_cluster_is_settled_when_there_is_no_active_one():
    kube = FakeKube()
    _cluster(kube, _rayservice((1, 1)))
    desired = _rayservice((1, 2))
    observed = {**desired, "status": {"pendingServiceStatus": {"rayClusterName": CLUSTER}}}
    assert settle_cluster(kube, observed, desired) == RESCALED


def _ready_model(kube: FakeKube) -> None:
    """smollm2 serving on a RayCluster made from its RayService."""
    ctx = model_context(kube)
    doc = example("alpaca-local.yaml")
    create(kube, doc)
    model_pass(ctx, "smollm2")
    complete_job(kube, kube.names("Job")[0])
    model_pass(ctx, "smollm2")
    _cluster(kube, kube.stored("ray.io/v1", "RayService", "smollm2", NS))
    rayservice_ready(kube, "smollm2", workers=1, cluster=CLUSTER)
    obj, _ = model_pass(ctx, "smollm2")
    assert obj["status"]["phase"] == "Ready"


def _edit(kube: FakeKube, **spec: Any) -> None:
    model = kube.stored(API, "AlpacaModel", "smollm2", NS)
    model["spec"].update(spec)
    model["metadata"]["generation"] += 1
    kube.objects[(API, "AlpacaModel", NS, "smollm2")] = model


def test_a_model_scaled_out_rescales_its_cluster_with_an_event():
    kube = FakeKube(ALL_CRDS)
    _ready_model(kube)
    _edit(kube, autoscaling={"minReplicas": 1, "maxReplicas": 3})
    kube.writes_log.clear()
    _, outcome = model_pass(model_context(kube), "smollm2")
    assert [(w.verb, w.kind) for w in kube.writes_log if w.kind.startswith("Ray")] == [
        ("apply", "RayService"),
        ("json-patch", "RayCluster"),
    ]
    assert ("Normal", cond.RAYCLUSTER_RESCALED) in [(e.type, e.reason) for e in outcome.events]
    assert kube.names("RayCluster") == [CLUSTER]


def test_a_model_given_more_memory_recreates_its_cluster_with_an_event():
    kube = FakeKube(ALL_CRDS)
    _ready_model(kube)
    _edit(kube, resources={"gpus": 0, "cpu": "1", "memory": "8Gi"})
    _, outcome = model_pass(model_context(kube), "smollm2")
    assert kube.names("RayCluster") == []  # KubeRay makes it again from the new spec
    assert ("Normal", cond.RAYCLUSTER_RECREATED) in [(e.type, e.reason) for e in outcome.events]
    assert names.rayservice_name("smollm2") in kube.names("RayService")
