"""The operator process against the real apiserver: status, generations, Events, deletion."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from alpaca_dev.controlplane import free_port, wait_for
from tests.conftest import operator_process

pytestmark = pytest.mark.e2e
NAMESPACE_PREFIX = "e2e"  # the operator under test watches e2e-* only
METRICS_PORT = free_port()

REPO = Path(__file__).resolve().parents[2]


def _wait(check: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    return wait_for(check, what, timeout)


@pytest.fixture(scope="module")
def operator(control_plane, tmp_path_factory) -> Iterator[subprocess.Popen[bytes]]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    args = ("--standalone", "-n", "e2e-*", f"--metrics-port={METRICS_PORT}")
    with operator_process(control_plane.env(), log, *args) as proc:
        yield proc


def _get(cp, ns: str, resource: str, name: str) -> dict[str, Any] | None:
    return cp.get_json(resource, name, ns)


def _items(cp, ns: str, resource: str) -> list[dict[str, Any]]:
    return cp.items(resource, ns)


def _condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in (obj or {}).get("status", {}).get("conditions", []):
        if c["type"] == type_:
            return c
    return None


def test_model_lifecycle(control_plane, thirdparty_crds, operator, namespace):
    cp = control_plane
    cp.kubectl_run("apply", "-n", namespace, "-f", str(REPO / "examples" / "alpaca.yaml"))

    def accepted_at(generation: int) -> dict[str, Any] | None:
        obj = _get(cp, namespace, "am", "alpaca-7b")
        ok = obj and obj.get("status", {}).get("observedGeneration") == generation
        return obj if ok and (_condition(obj, "Accepted") or {}).get("status") == "True" else None

    obj = _wait(lambda: accepted_at(1), what="generation 1 accepted")
    assert obj["status"]["phase"] in ("Provisioning", "Downloading")
    types = [c["type"] for c in obj["status"]["conditions"]]
    assert types == [
        "Accepted",
        "CapacityReady",
        "WeightsReady",
        "ServingReady",
        "Ready",
        "Upgrading",
    ]
    assert all(c["observedGeneration"] == 1 for c in obj["status"]["conditions"])
    assert _condition(obj, "ServingReady")["reason"] == "WaitingForWeights"
    assert "kopf" not in obj["status"]  # no handler-keyed status

    # The fill Job completing (as the Job controller would report it) wakes the model: the
    # operator watches its children, so the RayService appears without a spec change.
    jobs = _wait(lambda: _items(cp, namespace, "jobs"), what="fill job")
    now = "2026-11-24T12:00:00Z"
    done = {"type": "Complete", "status": "True", "lastTransitionTime": now, "lastProbeTime": now}
    met = {**done, "type": "SuccessCriteriaMet"}
    status = {"startTime": now, "completionTime": now, "succeeded": 1, "conditions": [met, done]}
    patch = json.dumps({"status": status})
    job = jobs[0]["metadata"]["name"]
    cp.kubectl_run(
        "patch", "-n", namespace, "job", job, "--subresource=status", "--type=merge", "-p", patch
    )
    _wait(
        lambda: _get(cp, namespace, "rayservice", "alpaca-7b"), what="RayService after the fill Job"
    )
    _wait(
        lambda: (
            (_condition(_get(cp, namespace, "am", "alpaca-7b"), "WeightsReady") or {}).get("status")
            == "True"
        ),
        what="WeightsReady",
    )

    spec_patch = '{"spec":{"autoscaling":{"maxReplicas":6}}}'
    cp.kubectl_run("patch", "-n", namespace, "am", "alpaca-7b", "--type=merge", "-p", spec_patch)
    _wait(lambda: accepted_at(2), what="generation 2 accepted")
    _wait(
        lambda: (
            _get(cp, namespace, "rayservice", "alpaca-7b")["spec"]["rayClusterConfig"][
                "workerGroupSpecs"
            ][0]["maxReplicas"]
            == 6
        ),
        what="RayService updated in place",
    )

    events = _wait(lambda: _items(cp, namespace, "events"), what="events")
    reasons = {e["reason"] for e in events if e["involvedObject"]["name"] == "alpaca-7b"}
    # one per stage's transition; a valid spec on a new object is not news (no SpecValid)
    assert {"WaitingForWeights", "CacheFilled"} <= reasons and "SpecValid" not in reasons

    obj = _get(cp, namespace, "am", "alpaca-7b")
    assert obj["metadata"].get("finalizers", []) == []
    cp.kubectl_run("delete", "-n", namespace, "am", "alpaca-7b", "--timeout=30s")
    assert _get(cp, namespace, "am", "alpaca-7b") is None


def test_finetune_lifecycle(control_plane, operator, namespace):
    cp = control_plane
    cp.kubectl_run("apply", "-n", namespace, "-f", str(REPO / "examples" / "finetune-lora.yaml"))
    obj = _wait(
        lambda: (
            (o := _get(cp, namespace, "aft", "alpaca-lora-7b"))
            and o.get("status", {}).get("phase")
            and o
        ),
        what="finetune status",
    )
    assert obj["status"]["observedGeneration"] == 1
    assert _condition(obj, "Accepted")["status"] == "True"
    assert obj["status"]["phase"] == "Pending"

    cp.kubectl_run(
        "patch",
        "-n",
        namespace,
        "aft",
        "alpaca-lora-7b",
        "--type=merge",
        "-p",
        '{"spec":{"suspend":true}}',
    )
    _wait(
        lambda: (
            (_get(cp, namespace, "aft", "alpaca-lora-7b") or {}).get("status", {}).get("phase")
            == "Suspended"
        ),
        what="Suspended phase",
    )
    cp.kubectl_run("delete", "-n", namespace, "aft", "alpaca-lora-7b", "--timeout=30s")
    assert _get(cp, namespace, "aft", "alpaca-lora-7b") is None


def test_a_finished_finetune_hands_its_result_to_a_model_that_gets_its_own_pass(
    control_plane, thirdparty_crds, operator, namespace
):
    """The AlpacaModel a fine-tune creates is the operator's own write: it must still get a
    pass of its own (its status), as a model applied by a user does."""
    cp = control_plane
    cp.kubectl_run("apply", "-n", namespace, "-f", str(REPO / "examples" / "finetune.yaml"))
    fill = _wait(lambda: _items(cp, namespace, "jobs"), what="the base model's fill Job")
    cp.complete_job(namespace, fill[0]["metadata"]["name"])
    _wait(lambda: _get(cp, namespace, "job", "alpaca-7b-sft-train"), what="the training Job")
    cp.complete_job(namespace, "alpaca-7b-sft-train")
    served = _wait(
        lambda: (
            (m := _get(cp, namespace, "am", "my-alpaca-7b"))
            and m.get("status", {}).get("observedGeneration") == 1
            and m
        ),
        timeout=60,
        what="the served model's first status",
    )
    assert _condition(served, "Accepted")["status"] == "True"
    tune = _get(cp, namespace, "aft", "alpaca-7b-sft")
    assert tune["status"]["phase"] == "Succeeded"


def test_a_refused_write_is_said_on_the_object_and_retried(control_plane, operator, namespace):
    """A PVC of the cache's name that is not the cache (made by hand, another access mode):
    the operator's apply is refused (422, a PVC's spec is immutable), a Warning Event on the
    model says so, once; when the PVC goes, the retried pass makes the cache."""
    from alpaca_operator.api import AlpacaModelSpec
    from alpaca_operator.render import names

    cp = control_plane
    doc = yaml.safe_load((REPO / "examples" / "alpaca-local.yaml").read_text())
    cache = names.cache_name(AlpacaModelSpec.model_validate(doc["spec"]).weights)
    squatter = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": cache},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "2Gi"}}},
    }
    cp.kubectl_run("apply", "-n", namespace, "-f", "-", input=json.dumps(squatter))
    cp.kubectl_run("apply", "-n", namespace, "-f", str(REPO / "examples" / "alpaca-local.yaml"))

    def refusals() -> list[dict[str, Any]]:
        return [e for e in _items(cp, namespace, "events") if e["reason"] == "ApiRefused"]

    event = _wait(refusals, timeout=60, what="the ApiRefused Event")[0]
    assert event["type"] == "Warning" and event["involvedObject"]["name"] == "smollm2"
    assert "422" in event["message"] and cache in event["message"]
    time.sleep(5)  # the retries meanwhile post nothing new
    assert len(refusals()) == 1
    # no controller-manager here to lift the pvc-protection finalizer: the test does
    cp.kubectl_run("delete", "-n", namespace, "pvc", cache, "--wait=false")
    cp.kubectl_run(
        "patch",
        "-n",
        namespace,
        "pvc",
        cache,
        "--type=merge",
        "-p",
        '{"metadata":{"finalizers":null}}',
    )

    def ours() -> dict[str, Any] | None:
        pvc = _get(cp, namespace, "pvc", cache)
        return pvc if pvc and pvc["spec"]["accessModes"] == ["ReadWriteOnce"] else None

    _wait(ours, timeout=180, what="the cache PVC after the hand-made one went")


def test_operator_ignores_other_namespaces(control_plane, operator):
    cp = control_plane
    cp.kubectl_run("apply", "-n", "default", "-f", str(REPO / "examples" / "alpaca-local.yaml"))
    try:
        time.sleep(3)
        assert "status" not in _get(cp, "default", "am", "smollm2")
    finally:
        cp.kubectl_run("delete", "-n", "default", "am", "smollm2")


def test_metrics_endpoint(control_plane, operator, namespace):
    """After reconciles, the operator's Prometheus endpoint counts them, per kind and phase."""
    import urllib.request

    control_plane.kubectl_run(
        "apply", "-n", namespace, "-f", str(REPO / "examples" / "alpaca-local.yaml")
    )
    _wait(
        lambda: (
            (_get(control_plane, namespace, "am", "smollm2") or {}).get("status", {}).get("phase")
        ),
        what="status",
    )

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as resp:
            return resp.read().decode()

    counter = 'alpaca_reconcile_total{kind="AlpacaModel",result="ok"}'

    def scraped() -> str | None:
        # a pass counts itself, then sets the phase gauge: wait for both in one scrape
        text = scrape()
        return text if counter in text and 'alpaca_objects{kind="AlpacaModel"' in text else None

    text = _wait(scraped, what="reconcile counter")
    count = next(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith('alpaca_reconcile_total{kind="AlpacaModel",result="ok"}')
    )
    assert count >= 1
    print("\n".join(line for line in text.splitlines() if line.startswith("alpaca_")))
    assert 'alpaca_reconcile_duration_seconds_bucket{kind="AlpacaModel"' in text
    assert 'alpaca_objects{kind="AlpacaModel",phase=' in text
    assert 'alpaca_api_writes_total{kind="AlpacaModel"}' in text


def test_a_new_gpu_node_wakes_a_model_waiting_for_nodes(control_plane, operator, namespace):
    """Nodes are watched: a matching GPU node added (or its GPUs changed) moves CapacityReady
    at once, not at the next resync (a minute away here)."""
    cp = control_plane
    doc = {
        "apiVersion": "alpaca.dev/v1alpha1",
        "kind": "AlpacaModel",
        "metadata": {"name": "waits"},
        "spec": {
            "weights": {"source": "hf://acme/tiny"},
            "resources": {"gpus": 1},
            "capacity": {"provisioner": "existing", "nodeSelector": {"pool": namespace}},
        },
    }
    cp.kubectl_run("apply", "-n", namespace, "-f", "-", input=json.dumps(doc))

    def capacity(reason: str) -> dict[str, Any] | None:
        cond = _condition(_get(cp, namespace, "am", "waits"), "CapacityReady")
        return cond if cond and cond["reason"] == reason else None

    _wait(lambda: capacity("WaitingForNodes"), 30, "WaitingForNodes")
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": namespace, "labels": {"pool": namespace}},
    }
    cp.kubectl_run("apply", "-f", "-", input=json.dumps(node))
    try:
        _wait(lambda: capacity("InsufficientGPU"), 20, "InsufficientGPU (a node without GPUs)")
        cp.patch_status(
            "node",
            namespace,
            {"allocatable": {"nvidia.com/gpu": "1"}, "capacity": {"nvidia.com/gpu": "1"}},
        )
        cond = _wait(lambda: capacity("NodesAvailable"), 20, "NodesAvailable after the GPUs appear")
        assert cond["status"] == "True"
    finally:
        cp.kubectl_run("delete", "node", namespace, "--wait=false", check=False)
