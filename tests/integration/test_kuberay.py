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

from alpaca_operator.api import AlpacaModelSpec
from alpaca_operator.localdev.controlplane import free_port
from alpaca_operator.reconcile.serving import application_for
from alpaca_operator.render import capacity, names, rayservice

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kuberay(control_plane, thirdparty_crds, tmp_path_factory) -> Iterator[subprocess.Popen[bytes]]:
    binary = (
        subprocess.run(
            ["bash", str(REPO / "scripts" / "thirdparty.sh"), "kuberay"],
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    log = tmp_path_factory.mktemp("kuberay") / "kuberay.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--kubeconfig={control_plane.kubeconfig}",
                "--enable-leader-election=false",
                f"--metrics-addr=127.0.0.1:{free_port()}",
                f"--health-probe-bind-address=127.0.0.1:{free_port()}",
                "--zap-log-level=info",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    yield proc
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    print(log.read_text()[-3000:])


def _items(cp, ns: str, resource: str) -> list[dict[str, Any]]:
    return json.loads(cp.kubectl_run("get", resource, "-n", ns, "-o", "json").stdout)["items"]


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
