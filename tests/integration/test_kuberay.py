"""The real KubeRay operator (built from its Go module) accepts the RayService we render and
turns it into a RayCluster with head and worker pods (they stay Pending: no kubelet here)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from alpaca_dev.controlplane import free_port, stop_process
from alpaca_operator.api import AlpacaModelSpec
from alpaca_operator.reconcile.serving import application_for
from alpaca_operator.render import capacity, names, rayservice

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]


def _start_kuberay(cp, log: Path) -> subprocess.Popen[bytes]:
    script = REPO / "scripts" / "thirdparty.sh"
    binary = subprocess.run(
        ["bash", str(script), "kuberay"], check=True, capture_output=True, text=True
    ).stdout
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                binary.strip().splitlines()[-1],
                f"--kubeconfig={cp.kubeconfig}",
                "--enable-leader-election=false",
                f"--metrics-addr=127.0.0.1:{free_port()}",
                f"--health-probe-bind-address=127.0.0.1:{free_port()}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    stop_process(proc, timeout=15)
    print(log.read_text()[-3000:])


@pytest.fixture(scope="module")
def kuberay(control_plane, thirdparty_crds, tmp_path_factory) -> Iterator[subprocess.Popen[bytes]]:
    """The real KubeRay operator on the session control plane."""
    log = tmp_path_factory.mktemp("kuberay") / "kuberay.log"
    proc = _start_kuberay(control_plane, log)
    yield proc
    _stop(proc, log)


@pytest.fixture(scope="module")
def gc_kuberay_plane(control_plane, thirdparty_crds, tmp_path_factory):
    """A control plane with the garbage collector and KubeRay running: pods of a deleted
    RayCluster really go, as in a cluster."""
    from alpaca_dev.controlplane import ControlPlane

    with ControlPlane(bin_dir=control_plane.bin_dir, workdir=tmp_path_factory.mktemp("gckr")) as cp:
        cp.kubectl_run("apply", "--server-side", "-f", str(thirdparty_crds), timeout=120)
        cp.wait_established("rayservices.ray.io", "rayclusters.ray.io")
        cp.start_controller_manager(["garbage-collector-controller", "serviceaccount-controller"])
        log = cp.workdir / "kuberay.log"
        proc = _start_kuberay(cp, log)
        yield cp
        _stop(proc, log)


def _items(cp, ns: str, resource: str) -> list[dict[str, Any]]:
    return cp.items(resource, ns)


def test_kuberay_accepts_our_rayservice(control_plane, kuberay, namespace):
    cp = control_plane
    cp.kubectl_run(
        "create", "serviceaccount", "default", "-n", namespace
    )  # no controller-manager here
    spec = AlpacaModelSpec.model_validate(
        {
            "weights": {"source": "hf://tatsu-lab/alpaca-7b"},
            "resources": {"gpus": 1},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 3},
        }
    )
    place = capacity.placement(spec.capacity, spec.resources, namespace, "alpaca")
    cache = names.cache_name(spec.weights)
    app = application_for(spec, rayservice.model_path(cache), "alpaca")
    body = rayservice.rayservice(
        spec, "alpaca", namespace, app, "rayproject/ray:2.60.0", "2.60.0", place
    )
    cp.kubectl_run("apply", "-f", "-", input=json.dumps(body))

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        clusters = _items(cp, namespace, "rayclusters")
        pods = _items(cp, namespace, "pods")
        if clusters and len(pods) >= 2:
            break
        assert kuberay.poll() is None, "the KubeRay operator exited"
        time.sleep(1)
    else:
        raise AssertionError(f"no RayCluster/pods from KubeRay: {clusters=} pods={len(pods)}")
    cluster = clusters[0]
    assert cluster["metadata"]["name"].startswith("alpaca")
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    groups = cluster["spec"]["workerGroupSpecs"]
    assert [(g["groupName"], g["minReplicas"], g["maxReplicas"]) for g in groups] == [("gpu", 1, 3)]
    kinds = sorted(p["metadata"]["labels"].get("ray.io/node-type") for p in pods)
    assert kinds == ["head", "worker"]
    worker = next(p for p in pods if p["metadata"]["labels"].get("ray.io/node-type") == "worker")
    container = next(c for c in worker["spec"]["containers"] if c["name"] == "ray-worker")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "weights", "mountPath": f"/models/{cache}", "readOnly": True} in container[
        "volumeMounts"
    ]
    assert worker["metadata"]["labels"][names.LABEL_MODEL] == "alpaca"
    # KubeRay adds the autoscaler sidecar to the head because in-tree autoscaling is on.
    head = next(p for p in pods if p["metadata"]["labels"].get("ray.io/node-type") == "head")
    assert "autoscaler" in [c["name"] for c in head["spec"]["containers"]]
    cp.kubectl_run("delete", "rayservice", "alpaca", "-n", namespace, "--wait=false")


def test_changes_before_serving_never_start_a_second_cluster(gc_kuberay_plane):
    """Worker bounds change in place; a pod-template change to a cluster that has not served
    yet makes the one cluster again, whatever spec.upgrade says (no outage to avoid)."""
    import datetime

    from alpaca_operator.api.model import Upgrade
    from alpaca_operator.reconcile import upgrade
    from alpaca_operator.reconcile.upgrade import RECREATED, RESCALED

    def settle_cluster(kube: Any, rs: dict[str, Any], desired: dict[str, Any]) -> str | None:
        active, pending = upgrade.clusters(kube, rs, namespace)
        step = upgrade.plan(
            Upgrade(strategy="ZeroDowntime"),
            rs,
            active,
            pending,
            desired,
            room=lambda: upgrade.Room(True, "unused"),
            unschedulable=lambda _: None,
            previous=None,
            now=datetime.datetime.now(datetime.UTC),
        )
        assert step.strategy == upgrade.AT_REST
        return upgrade.carry_out(kube, namespace, step)

    cp = gc_kuberay_plane
    namespace = "default"

    def render(gpus: int, max_replicas: int) -> dict[str, Any]:
        spec = AlpacaModelSpec.model_validate(
            {
                "weights": {"source": "hf://a/b"},
                "resources": {"gpus": gpus},
                "autoscaling": {"maxReplicas": max_replicas},
            }
        )
        place = capacity.placement(spec.capacity, spec.resources, namespace, "m")
        app = application_for(spec, "/models/x", "m")
        return rayservice.rayservice(spec, "m", namespace, app, "img", "2.60.0", place)

    def apply(body: dict[str, Any]) -> dict[str, Any]:
        cp.kubectl_run(
            "apply",
            "--server-side",
            "--field-manager=alpaca-operator",
            "--force-conflicts",
            "-f",
            "-",
            input=json.dumps(body),
        )
        return json.loads(
            cp.kubectl_run("get", "rayservice", "m", "-n", namespace, "-o", "json").stdout
        )

    def clusters() -> list[dict[str, Any]]:
        return [
            c
            for c in _items(cp, namespace, "rayclusters")
            if not c["metadata"].get("deletionTimestamp")
        ]

    def wait_for(check, what: str) -> Any:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if result := check():
                return result
            time.sleep(0.5)
        raise AssertionError(f"timed out: {what}")

    import kubernetes

    from alpaca_operator.kube import Kube

    kube = Kube(kubernetes.config.new_client_from_config(config_file=str(cp.kubeconfig)))
    apply(render(1, 2))
    first_cluster = wait_for(lambda: clusters(), "first RayCluster")[0]
    first, first_uid = first_cluster["metadata"]["name"], first_cluster["metadata"]["uid"]

    def named() -> bool:
        status = json.loads(
            cp.kubectl_run("get", "rayservice", "m", "-n", namespace, "-o", "json").stdout
        ).get("status", {})
        return any(
            (status.get(k) or {}).get("rayClusterName")
            for k in ("activeServiceStatus", "pendingServiceStatus")
        )

    wait_for(named, "the RayCluster's name in the RayService status")

    wider = render(1, 5)
    rs = apply(wider)
    assert settle_cluster(kube, rs, wider) == RESCALED
    live = clusters()
    assert [c["metadata"]["name"] for c in live] == [first]
    assert live[0]["spec"]["workerGroupSpecs"][0]["maxReplicas"] == 5
    assert settle_cluster(kube, rs, wider) is None  # settled: nothing more to do

    bigger = render(2, 5)
    rs = apply(bigger)
    assert settle_cluster(kube, rs, bigger) == RECREATED
    second = wait_for(
        lambda: [c for c in clusters() if c["metadata"]["uid"] != first_uid],
        "the recreated RayCluster",
    )
    assert len(clusters()) == 1, "never two clusters (and twice the GPUs) at once"
    gpu = second[0]["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0][
        "resources"
    ]["limits"]["nvidia.com/gpu"]
    assert gpu == "2"
