"""reconcile/room.py: the capacity rule of spec.upgrade.strategy Auto (decision 41)."""

from __future__ import annotations

from typing import Any

from alpaca_operator.api import AlpacaModelSpec
from alpaca_operator.kube import ApiError
from alpaca_operator.reconcile.room import free_replicas, room, workers_needed
from alpaca_operator.render import capacity
from alpaca_operator.render.capacity import GPU_RESOURCE, GPU_TAINT

from .fake_kube import FakeKube
from .support import NS


def _spec(**over: Any) -> AlpacaModelSpec:
    return AlpacaModelSpec.model_validate(
        {
            "weights": {"source": "hf://o/m"},
            "resources": {"gpus": 2, "gpuType": "NVIDIA-L4"},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 4},
            **over,
        }
    )


def _node(kube: FakeKube, name: str, gpus: int, tainted: bool = True, **labels: str) -> None:
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {capacity.GPU_PRODUCT_LABEL: "NVIDIA-L4", **labels},
            },
            "spec": {"taints": [GPU_TAINT] if tainted else []},
            "status": {"allocatable": {GPU_RESOURCE: str(gpus)}},
        }
    )


def _pod(kube: FakeKube, name: str, node: str, gpus: int, phase: str = "Running") -> None:
    limits = {GPU_RESOURCE: str(gpus)} if gpus else {}
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "other"},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "c", "resources": {"limits": limits}}],
            },
            "status": {"phase": phase},
        }
    )


def _room(kube: FakeKube, spec: AlpacaModelSpec, running: int = 1, pool: Any = None) -> Any:
    place = capacity.placement(spec.capacity, spec.resources, NS, "m")
    active = {"status": {"readyWorkerReplicas": running}}
    return room(kube, spec, place, pool, active)


def test_free_gpus_on_matching_nodes_count_in_whole_replicas():
    kube = FakeKube()
    _node(kube, "a", 8)
    _node(kube, "b", 4)
    _node(kube, "c", 8, **{capacity.GPU_PRODUCT_LABEL: "NVIDIA-A100"})  # not the model's type
    _pod(kube, "p1", "a", 7)  # 1 left on a: no 2-GPU replica
    _pod(kube, "p2", "b", 3)  # 1 left on b
    _pod(kube, "done", "b", 3, phase="Succeeded")  # holds nothing
    verdict = _room(kube, _spec())
    assert verdict.fits is False
    assert "needs 1 worker(s) of 2 nvidia.com/gpu; 0 fit on the 2 matching node(s)" in (
        verdict.message
    )
    kube.objects.pop(("v1", "Pod", "other", "p2"))
    assert _room(kube, _spec()).fits is True


def test_the_new_cluster_needs_min_replicas_and_one_while_the_old_serves():
    spec = _spec(autoscaling={"minReplicas": 0, "maxReplicas": 4})
    assert workers_needed(spec, running=0) == 0
    assert workers_needed(spec, running=3) == 1
    assert workers_needed(_spec(autoscaling={"minReplicas": 2, "maxReplicas": 4}), 1) == 2
    kube = FakeKube()  # no node at all
    assert _room(kube, spec, running=0).fits is True
    assert _room(kube, spec, running=1).fits is False


def test_untolerated_taints_and_cordoned_nodes_hold_no_room():
    kube = FakeKube()
    spec = _spec(resources={"gpus": 1})
    _node(kube, "tainted", 8)
    kube.objects[("v1", "Node", "", "tainted")]["spec"]["taints"].append(
        {"key": "dedicated", "value": "batch", "effect": "NoSchedule"}
    )
    _node(kube, "cordoned", 8)
    kube.objects[("v1", "Node", "", "cordoned")]["spec"]["unschedulable"] = True
    assert _room(kube, spec).fits is False
    _node(kube, "ok", 1)
    assert _room(kube, spec).fits is True


def test_a_nodepool_adds_what_its_limit_still_allows():
    spec = _spec(
        capacity={
            "provisioner": "karpenter",
            "karpenter": {
                "nodeClassRef": {
                    "group": "karpenter.k8s.aws",
                    "kind": "EC2NodeClass",
                    "name": "gpu",
                }
            },
        }
    )
    kube = FakeKube()
    pool = {"metadata": {"name": "p"}, "spec": {"limits": {GPU_RESOURCE: "4"}}, "status": {}}
    pool["status"] = {"resources": {GPU_RESOURCE: "4"}}
    verdict = _room(kube, spec, pool=pool)
    assert verdict.fits is False and "0 more within NodePool p's GPU limit" in verdict.message
    pool["status"] = {"resources": {GPU_RESOURCE: "2"}}
    assert _room(kube, spec, pool=pool).fits is True
    del pool["spec"]["limits"]
    assert _room(kube, spec, pool=pool).fits is True


def test_without_the_right_to_list_pods_the_answer_is_unknown():
    class Refusing(FakeKube):
        def list(self, api_version: str, kind: str, *args: Any, **kwargs: Any) -> Any:
            if kind == "Pod":
                raise ApiError(403, {"reason": "Forbidden", "message": "pods is forbidden"})
            return super().list(api_version, kind, *args, **kwargs)

    kube = Refusing()
    _node(kube, "a", 8)
    verdict = _room(kube, _spec())
    assert verdict.fits is None and "may not list the pods" in verdict.message


def test_counting_stops_once_there_is_room():
    asked: list[str] = []

    def pods_on(node: str) -> list[dict[str, Any]]:
        asked.append(node)
        return []

    nodes = [
        {"metadata": {"name": f"n{i}"}, "status": {"allocatable": {GPU_RESOURCE: "2"}}}
        for i in range(5)
    ]
    assert free_replicas(nodes, pods_on, gpus=1, enough=3) == 4
    assert asked == ["n0", "n1"]
    assert free_replicas(nodes, pods_on, gpus=1, enough=0) == 0
