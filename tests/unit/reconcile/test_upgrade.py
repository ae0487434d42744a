"""reconcile/upgrade.py: a changed model settles its running RayCluster in place (worker
min/max patched), beside it when there is room, or in its place (decision 41)."""

from __future__ import annotations

import copy
import datetime
from typing import Any

from alpaca_operator import conditions as cond
from alpaca_operator.api import AlpacaModelSpec
from alpaca_operator.api.model import Upgrade
from alpaca_operator.reconcile.serving import application_for
from alpaca_operator.reconcile.upgrade import (
    AT_REST,
    NEW_CLUSTER,
    RECHECK,
    RECREATED,
    RESCALED,
    Plan,
    Room,
    carry_out,
    clusters,
    plan,
)
from alpaca_operator.render import capacity, names, rayservice

from .fake_kube import FakeKube
from .support import (
    ALL_CRDS,
    API,
    NOW,
    NS,
    complete_job,
    create,
    example,
    model_context,
    model_pass,
    rayservice_ready,
)

CLUSTER = "smollm2-abcde"
NEW = "smollm2-fghij"


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
    _cluster_named(kube, desired, CLUSTER, **meta)


def _cluster_named(kube: FakeKube, desired: dict[str, Any], name: str, **meta: Any) -> None:
    """The RayCluster KubeRay made from a RayService (its autoscaler sidecar on the head)."""
    spec = copy.deepcopy(desired["spec"]["rayClusterConfig"])
    spec["headGroupSpec"]["template"]["spec"]["containers"].append(
        {"name": "autoscaler", "image": "kuberay/autoscaler", "resources": {"cpu": "100m"}}
    )
    kube.put(
        {
            "apiVersion": "ray.io/v1",
            "kind": "RayCluster",
            "metadata": {"name": name, "namespace": NS, **meta},
            "spec": spec,
        }
    )


def settle(
    kube: FakeKube,
    observed: dict[str, Any],
    desired: dict[str, Any],
    strategy: str = "Auto",
    fits: bool | None = True,
    previous: dict[str, Any] | None = None,
    now: datetime.datetime = NOW,
    unschedulable: str | None = None,
) -> tuple[Plan, str | None]:
    """One pass's decision on the clusters `observed` names (the scheduler saying
    `unschedulable` of a new cluster's pods), and what carrying it out did."""
    active, pending = clusters(kube, observed, NS)
    step = plan(
        Upgrade(strategy=strategy),
        observed,
        active,
        pending,
        desired,
        room=lambda: Room(fits, "test room"),
        unschedulable=lambda c: unschedulable and f"{unschedulable} (cluster {c})",
        previous=previous,
        now=now,
    )
    return step, carry_out(kube, NS, step)


def test_nothing_to_settle_without_a_cluster_or_a_change():
    kube = FakeKube()
    desired = _rayservice()
    step, done = settle(kube, {**desired, "status": {}}, desired)  # none reported
    assert (step.verdict.reason, step.strategy, done) == (cond.UP_TO_DATE, AT_REST, None)
    assert settle(kube, desired, desired)[1] is None  # reported, not there (yet)
    _cluster(kube, desired)
    step, done = settle(kube, desired, desired)  # KubeRay's sidecar is not a change
    assert (step.verdict.reason, done) == (cond.UP_TO_DATE, None)
    _cluster(kube, _rayservice(image="serving:2"), deletionTimestamp="2026-11-24T12:00:00Z")
    assert settle(kube, desired, desired)[1] is None  # already going
    assert kube.writes == 0


def test_worker_min_max_are_patched_in_place():
    kube = FakeKube()
    _cluster(kube, _rayservice((1, 1)))
    desired = _rayservice((0, 3))
    step, done = settle(kube, desired, desired)
    assert (done, step.strategy) == (RESCALED, AT_REST)
    [write] = kube.writes_log
    assert (write.verb, write.kind, write.name) == ("json-patch", "RayCluster", CLUSTER)
    assert write.detail == [
        {"op": "replace", "path": "/spec/workerGroupSpecs/0/minReplicas", "value": 0},
        {"op": "replace", "path": "/spec/workerGroupSpecs/0/maxReplicas", "value": 3},
    ]
    group = kube.stored("ray.io/v1", "RayCluster", CLUSTER, NS)["spec"]["workerGroupSpecs"][0]
    assert (group["minReplicas"], group["maxReplicas"]) == (0, 3)


def test_recreate_deletes_the_serving_cluster_and_says_so():
    kube = FakeKube()
    _cluster(kube, _rayservice(image="serving:1"))
    desired = _rayservice((0, 3), image="serving:2")
    step, done = settle(kube, desired, desired, strategy="Recreate")
    assert done == RECREATED and step.strategy == AT_REST
    assert (step.verdict.status, step.verdict.reason) == ("True", cond.RECREATING_WITH_OUTAGE)
    assert "Recreate" in step.verdict.message and CLUSTER in step.verdict.message
    assert [(w.verb, w.kind) for w in kube.writes_log] == [("delete", "RayCluster")]
    assert kube.names("RayCluster") == []


def test_with_room_the_new_cluster_starts_beside_the_serving_one():
    for strategy, fits in (("Auto", True), ("Auto", None), ("ZeroDowntime", False)):
        kube = FakeKube()
        _cluster(kube, _rayservice(image="serving:1"))
        desired = _rayservice(image="serving:2")
        step, done = settle(kube, desired, desired, strategy=strategy, fits=fits)
        assert (step.strategy, step.hold, done) == (NEW_CLUSTER, False, None), strategy
        assert step.verdict.reason == cond.NEW_CLUSTER_STARTING
        assert kube.writes == 0  # KubeRay starts the new cluster; nothing is deleted


def test_without_room_auto_waits_then_recreates_at_the_deadline():
    kube = FakeKube()
    _cluster(kube, _rayservice(image="serving:1"))
    desired = _rayservice(image="serving:2")
    step, done = settle(kube, desired, desired, fits=False)
    assert (step.verdict.reason, step.hold, step.strategy, done) == (
        cond.WAITING_FOR_CAPACITY,
        True,  # the serving cluster keeps the spec it serves
        AT_REST,
        None,
    )
    assert step.requeue_at == NOW + RECHECK
    assert "2026-11-24T12:10:00Z" in step.verdict.message  # began now, capacityTimeout 10m
    waiting = {
        "type": cond.UPGRADING,
        "status": "True",
        "lastTransitionTime": "2026-11-24T12:00:00Z",
    }
    later = NOW + datetime.timedelta(minutes=9, seconds=50)
    step, done = settle(kube, desired, desired, fits=False, previous=waiting, now=later)
    assert step.verdict.reason == cond.WAITING_FOR_CAPACITY and done is None
    assert step.requeue_at == NOW + datetime.timedelta(minutes=10)  # the deadline, not later
    step, done = settle(
        kube,
        desired,
        desired,
        fits=False,
        previous=waiting,
        now=NOW + datetime.timedelta(minutes=10),
    )
    assert (step.verdict.reason, done) == (cond.RECREATING_WITH_OUTAGE, RECREATED)
    assert "capacityTimeout" in step.verdict.message
    assert kube.names("RayCluster") == []


def _upgrading(kube: FakeKube, running: bool = False) -> dict[str, Any]:
    """CLUSTER serving the old image, NEW starting with the new one, as KubeRay reports them."""
    _cluster(kube, _rayservice(image="serving:1"))
    new = _rayservice(image="serving:2")
    spec = copy.deepcopy(new["spec"]["rayClusterConfig"])
    kube.put(
        {
            "apiVersion": "ray.io/v1",
            "kind": "RayCluster",
            "metadata": {"name": NEW, "namespace": NS},
            "spec": spec,
        }
    )
    pending: dict[str, Any] = {"rayClusterName": NEW}
    if running:
        pending["applicationStatuses"] = {"alpaca": {"status": "RUNNING"}}
    new["status"] = {
        "activeServiceStatus": {"rayClusterName": CLUSTER},
        "pendingServiceStatus": pending,
    }
    return new


def test_an_upgrade_in_progress_is_left_to_kuberay_and_reported():
    kube = FakeKube()
    observed = _upgrading(kube)
    step, done = settle(kube, observed, observed)
    assert (step.verdict.reason, step.strategy, done) == (
        cond.NEW_CLUSTER_STARTING,
        NEW_CLUSTER,
        None,
    )
    kube = FakeKube()
    observed = _upgrading(kube, running=True)
    step, done = settle(kube, observed, observed)
    assert (step.verdict.reason, step.strategy, done) == (cond.SWITCHING_TRAFFIC, NEW_CLUSTER, None)
    assert kube.writes == 0


def test_a_new_cluster_that_cannot_be_placed_waits_then_takes_the_old_ones_gpus():
    began = {"type": cond.UPGRADING, "status": "True", "lastTransitionTime": "2026-11-24T12:00:00Z"}

    def decide(strategy: str, now: datetime.datetime) -> tuple[Plan, FakeKube]:
        kube = FakeKube()
        observed = _upgrading(kube)
        step, _ = settle(
            kube,
            observed,
            observed,
            strategy,
            fits=None,  # not asked: the new cluster exists
            previous=began,
            now=now,
            unschedulable="0/3 nodes are available",
        )
        return step, kube

    step, kube = decide("Auto", NOW + datetime.timedelta(minutes=5))
    assert (step.verdict.reason, step.strategy) == (cond.WAITING_FOR_CAPACITY, NEW_CLUSTER)
    assert "0/3 nodes" in step.verdict.message and kube.writes == 0
    step, kube = decide("Auto", NOW + datetime.timedelta(minutes=10))
    assert step.verdict.reason == cond.RECREATING_WITH_OUTAGE
    assert kube.names("RayCluster") == [NEW]  # the old one went, the new one gets its GPUs
    step, kube = decide("ZeroDowntime", NOW + datetime.timedelta(hours=5))
    assert step.verdict.reason == cond.WAITING_FOR_CAPACITY and kube.writes == 0


def test_after_a_recreate_the_condition_holds_until_the_new_cluster_serves():
    kube = FakeKube()
    desired = _rayservice(image="serving:2")
    recreating = {
        "type": cond.UPGRADING,
        "status": "True",
        "reason": cond.RECREATING_WITH_OUTAGE,
        "message": "going",
        "lastTransitionTime": "2026-11-24T12:00:00Z",
    }
    starting = {**desired, "status": {"pendingServiceStatus": {"rayClusterName": NEW}}}
    step, _ = settle(kube, starting, desired, previous=recreating)
    assert (step.verdict.reason, step.verdict.message) == (cond.RECREATING_WITH_OUTAGE, "going")
    _cluster(kube, desired)  # KubeRay promoted it (named CLUSTER here)
    step, _ = settle(kube, desired, desired, previous=recreating)
    assert (step.verdict.status, step.verdict.reason) == ("False", cond.UP_TO_DATE)


def test_a_cluster_that_never_served_is_made_again_from_the_new_spec():
    kube = FakeKube()
    _cluster(kube, _rayservice((1, 1)))
    desired = _rayservice((1, 2), image="serving:2")
    observed = {**desired, "status": {"pendingServiceStatus": {"rayClusterName": CLUSTER}}}
    step, done = settle(kube, observed, desired, strategy="ZeroDowntime")
    assert (done, step.strategy, step.verdict.reason) == (RECREATED, AT_REST, cond.UP_TO_DATE)
    assert kube.names("RayCluster") == []


def test_the_pending_cluster_is_settled_when_there_is_no_active_one():
    kube = FakeKube()
    _cluster(kube, _rayservice((1, 1)))
    desired = _rayservice((1, 2))
    observed = {**desired, "status": {"pendingServiceStatus": {"rayClusterName": CLUSTER}}}
    assert settle(kube, observed, desired)[1] == RESCALED


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


def _upgrading_condition(obj: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == cond.UPGRADING)


def test_a_model_given_more_memory_starts_a_new_cluster_beside_the_serving_one():
    """Auto, CPU-only: no GPU to wait for; the endpoint stays on the serving cluster."""
    kube = FakeKube(ALL_CRDS)
    _ready_model(kube)
    assert _upgrading_condition(kube.stored(API, "AlpacaModel", "smollm2", NS))["reason"] == (
        cond.UP_TO_DATE
    )
    _edit(kube, resources={"gpus": 0, "cpu": "1", "memory": "8Gi"})
    obj, outcome = model_pass(model_context(kube), "smollm2")
    assert kube.names("RayCluster") == [CLUSTER]  # still serving
    rs = kube.stored("ray.io/v1", "RayService", "smollm2", NS)
    assert rs["spec"]["upgradeStrategy"] == {"type": NEW_CLUSTER}
    assert (
        rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0][
            "resources"
        ]["limits"]["memory"]
        == "8Gi"
    )
    upgrading = _upgrading_condition(obj)
    assert (upgrading["status"], upgrading["reason"]) == ("True", cond.NEW_CLUSTER_STARTING)
    assert ("Normal", cond.NEW_CLUSTER_STARTING) in [(e.type, e.reason) for e in outcome.events]
    assert obj["status"]["phase"] == "Ready"
    service = kube.stored("v1", "Service", names.endpoint_service_name("smollm2"), NS)
    assert service["spec"]["selector"]["ray.io/cluster"] == CLUSTER
    # KubeRay promotes the new cluster once its app runs: the endpoint follows, and at rest
    # the RayService goes back to strategy None
    kube.objects.pop(("ray.io/v1", "RayCluster", NS, CLUSTER))
    _cluster_named(kube, rs, NEW)
    rayservice_ready(kube, "smollm2", workers=1, cluster=NEW)
    obj, _ = model_pass(model_context(kube), "smollm2")
    assert _upgrading_condition(obj)["reason"] == cond.UP_TO_DATE
    assert kube.stored("ray.io/v1", "RayService", "smollm2", NS)["spec"]["upgradeStrategy"] == {
        "type": AT_REST
    }
    service = kube.stored("v1", "Service", names.endpoint_service_name("smollm2"), NS)
    assert service["spec"]["selector"]["ray.io/cluster"] == NEW


def test_a_model_given_more_memory_with_recreate_deletes_its_cluster_with_a_warning():
    kube = FakeKube(ALL_CRDS)
    _ready_model(kube)
    _edit(
        kube,
        resources={"gpus": 0, "cpu": "1", "memory": "8Gi"},
        upgrade={"strategy": "Recreate"},
    )
    obj, outcome = model_pass(model_context(kube), "smollm2")
    assert kube.names("RayCluster") == []  # KubeRay makes it again from the new spec
    events = [(e.type, e.reason) for e in outcome.events]
    assert ("Warning", cond.RECREATING_WITH_OUTAGE) in events
    assert cond.RAYCLUSTER_RECREATED not in [r for _, r in events]  # one Event for one step
    assert _upgrading_condition(obj)["reason"] == cond.RECREATING_WITH_OUTAGE
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
    usage_off = [{"name": "RAY_USAGE_STATS_ENABLED", "value": "0"}]
    assert all(env != usage_off for env in _envs(fast))
    assert _envs(standard) == [usage_off, usage_off]
    for live, desired in ((fast, standard), (standard, fast)):
        kube = FakeKube()
        _cluster(kube, live)
        assert settle(kube, desired, desired, strategy="Recreate")[1] == RECREATED


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
    step, done = settle(kube, desired, desired)
    assert (step.verdict.reason, done) == (cond.UP_TO_DATE, None)
    assert kube.writes == 0
