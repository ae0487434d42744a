"""reconcile/upgrade.py: a changed model settles its running RayCluster in place (worker
min/max patched) or by deleting it (pod templates changed), never two clusters (decision 11)."""

from __future__ import annotations

import copy
from typing import Any

from alpaca_operator import conditions as cond
from alpaca_operator.api import AlpacaModelSpec
from alpaca_operator.reconcile.serving import application_for
from alpaca_operator.reconcile.upgrade import RECREATED, RESCALED, settle_cluster
from alpaca_operator.render import capacity, names, rayservice

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


def _rendered(adapters: list[dict[str, Any]]) -> dict[str, Any]:
    """smollm2's RayService as rendered, with `adapters`, its status naming CLUSTER."""
    spec = AlpacaModelSpec.model_validate(
        {**example("alpaca-local.yaml")["spec"], "adapters": adapters}
    )
    place = capacity.placement(spec.capacity, spec.resources, NS, "smollm2")
    app = application_for(spec, "/models/x", "smollm2")
    rs = rayservice.rayservice(spec, "smollm2", NS, app, "img", "2.60.0", place)
    return {**rs, "status": {"activeServiceStatus": {"rayClusterName": CLUSTER}}}


def _envs(rs: dict[str, Any]) -> list[Any]:
    cluster = rs["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]
    return [c.get("env") for t in templates for c in t["spec"]["containers"]]


def test_a_model_changing_request_path_recreates_its_cluster():
    """Ray reads the fast path's variables when its processes start: a model given its first
    adapter (or losing its last) needs new pods, and gets them with the adapter volumes."""
    fast, standard = _rendered([]), _rendered([{"name": "a", "source": "hf://o/a"}])
    assert all(_envs(fast)) and not any(_envs(standard))
    for live, desired in ((fast, standard), (standard, fast)):
        kube = FakeKube()
        _cluster(kube, live)
        assert settle_cluster(kube, desired, desired) == RECREATED


def test_a_cluster_made_before_the_fast_path_is_not_recreated_for_it():
    """Upgrading the operator does not take every model down once: a cluster without the
    variables serves on the standard path (which works) until it is recreated for a change."""
    desired = _rendered([])
    before = copy.deepcopy(desired)
    for container in [
        *before["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"],
        *before["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"][
            "containers"
        ],
    ]:
        del container["env"]
    kube = FakeKube()
    _cluster(kube, before)
    assert settle_cluster(kube, desired, desired) is None
    assert kube.writes == 0
