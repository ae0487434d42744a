"""The capacity chain on simulated GPU nodes (issue 12, item 7): the real apiserver, scheduler,
controller-manager, KubeRay operator, Karpenter (KWOK cloud provider), Kueue and the operator;
KWOK plays the kubelets. Status must follow each step: no node -> a node too small -> a node
that fits and the Ray worker scheduled on it; a NodePool -> NodeClaims -> nodes; a queued
fine-tune -> quota -> admitted -> trained on the launched node."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from alpaca_dev import kwok
from alpaca_dev.controlplane import ControlPlane, wait_for
from tests.conftest import REPO
from tests.kwok.support import (
    KWOK_CLASS,
    TIMEOUT,
    condition,
    model,
    running_on,
    wait_reason,
    worker_pods,
)

pytestmark = [pytest.mark.kwok, pytest.mark.xdist_group("kwok")]


def test_a_model_on_existing_nodes_waits_for_a_node_that_fits(sim: ControlPlane, namespace: str):
    cp, ns = sim, namespace
    doc = model(
        "on-nodes",
        **{"capacity.nodeSelector": {"pool": "kwok-a"}, "resources.gpus": 2},
    )
    cp.apply(doc, ns)
    waiting = wait_reason(cp, "am", "on-nodes", ns, "CapacityReady", "WaitingForNodes")
    assert "pool=kwok-a" in waiting["message"]
    # the weights are filled meanwhile (KWOK completes the fill Job's pod on cpu-0) and the
    # RayService is deployed; its worker, asking for 2 GPUs, has nowhere to go
    wait_reason(cp, "am", "on-nodes", ns, "WeightsReady", "CacheFilled")
    wait_for(lambda: worker_pods(cp, ns, "on-nodes"), "the Ray worker pod", TIMEOUT)
    assert running_on(cp, ns, "on-nodes") == set()

    cp.apply(kwok.node("kwok-a-small", gpus=1, labels={"pool": "kwok-a"}))
    small = wait_reason(cp, "am", "on-nodes", ns, "CapacityReady", "InsufficientGPU")
    assert "largest allocatable on the 1 matching node(s) is 1" in small["message"]

    cp.apply(kwok.node("kwok-a-large", gpus=4, labels={"pool": "kwok-a"}))
    fits = wait_reason(cp, "am", "on-nodes", ns, "CapacityReady", "NodesAvailable")
    assert fits["status"] == "True" and "1 of 2 matching node(s)" in fits["message"]
    # the real scheduler puts the worker where its 2 GPUs fit, KWOK runs it
    wait_for(
        lambda: running_on(cp, ns, "on-nodes") == {"kwok-a-large"},
        "the Ray worker running on kwok-a-large",
        TIMEOUT,
        interval=1,
    )


def test_a_karpenter_model_gets_nodes_launched_for_its_replicas(sim: ControlPlane, namespace: str):
    cp, ns = sim, namespace
    doc = model(
        "spot",
        **{
            "capacity": {
                "provisioner": "karpenter",
                "karpenter": {"nodeClassRef": KWOK_CLASS, "gpuLimit": 4},
            }
        },
    )
    cp.apply(doc, ns)
    ready = wait_reason(cp, "am", "spot", ns, "CapacityReady", "NodePoolReady")
    pool = ready["message"].split()[1]
    wait_for(lambda: worker_pods(cp, ns, "spot"), "the Ray worker pod", TIMEOUT)

    def launched() -> set[str]:
        out = cp.kubectl_run("get", "nodes", "-l", f"karpenter.sh/nodepool={pool}", "-o", "json")
        return {n["metadata"]["name"] for n in json.loads(out.stdout)["items"]}

    wait_for(launched, f"a node launched for NodePool {pool}", TIMEOUT)
    claims = json.loads(cp.kubectl_run("get", "nodeclaims", "-o", "json").stdout)["items"]
    assert any(c["metadata"]["labels"].get("karpenter.sh/nodepool") == pool for c in claims)
    wait_for(
        lambda: running_on(cp, ns, "spot") & launched(),
        "the Ray worker running on a launched node",
        TIMEOUT,
        interval=1,
    )
    # launched from the NodePool the operator rendered: a GPU instance, the GPU taint
    node = cp.get_json("node", sorted(running_on(cp, ns, "spot") & launched())[0]) or {}
    assert int(node["status"]["allocatable"][kwok.GPU]) >= 1
    assert kwok.GPU_TAINT in node["spec"]["taints"]
    assert node["metadata"]["labels"]["node.kubernetes.io/instance-type"].startswith("g-a10g-")

    # the model goes, its NodePool goes, and Karpenter takes its nodes back
    cp.kubectl_run("delete", "am", "spot", "-n", ns)
    wait_for(lambda: cp.get_json("nodepool", pool) is None, f"NodePool {pool} deleted", TIMEOUT)
    wait_for(lambda: not launched(), f"the nodes of {pool} removed", TIMEOUT, interval=2)


def test_a_queued_fine_tune_trains_once_kueue_admits_it(sim: ControlPlane, namespace: str):
    cp, ns = sim, namespace
    kwok.kueue_queue(cp, ns, "research-gpus", gpus=0)
    doc = yaml.safe_load((REPO / "examples" / "finetune-lora.yaml").read_text())
    doc["spec"]["capacity"]["karpenter"]["nodeClassRef"] = KWOK_CLASS
    doc["spec"]["capacity"]["karpenter"]["capacityTypes"] = ["on-demand"]
    cp.apply(doc, ns)
    name = doc["metadata"]["name"]
    queued = wait_reason(cp, "aft", name, ns, "Training", "Queued")
    assert "research-gpus" in queued["message"]
    job = wait_for(lambda: _training_job(cp, ns), "training Job", 60)
    assert job["spec"]["suspend"] is True

    kwok.kueue_queue(cp, ns, "research-gpus", gpus=8)  # quota arrives: Kueue admits
    wait_for(
        lambda: cp.get_json("aft", name, ns)["status"].get("phase") == "Succeeded",
        "the fine-tune Succeeded",
        TIMEOUT,
        interval=2,
    )
    workloads = cp.items("workloads.kueue.x-k8s.io", ns)
    assert any(condition(w, "Admitted").get("status") == "True" for w in workloads)
    pods = json.loads(
        cp.kubectl_run(
            "get", "pods", "-n", ns, "-l", f"job-name={job['metadata']['name']}", "-o", "json"
        ).stdout
    )["items"]
    assert pods and all(p["spec"]["nodeName"].startswith("kwok-") for p in pods)


def _training_job(cp: ControlPlane, ns: str) -> dict[str, Any] | None:
    for job in cp.items("jobs", ns):
        if "kueue.x-k8s.io/queue-name" in job["metadata"].get("labels", {}):
            return job
    return None
