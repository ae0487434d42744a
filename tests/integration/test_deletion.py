"""Deletion with the real garbage collector: children go by owner references, a weights cache
stays while another model uses it, and nothing waits on a finalizer."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

import kubernetes
import pytest
import yaml

from alpaca_dev.controlplane import ControlPlane, wait_for
from alpaca_operator.api import AlpacaModelSpec
from alpaca_operator.config import OperatorConfig
from alpaca_operator.kube import Kube
from alpaca_operator.reconcile.apply import Applier
from alpaca_operator.reconcile.model import ModelContext, run_model
from alpaca_operator.reconcile.serving import application_for
from alpaca_operator.reconcile.status import write_status
from alpaca_operator.render import names

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
CONTROLLERS = [
    "garbage-collector-controller",
    "persistentvolumeclaim-protection-controller",
    "serviceaccount-controller",
]


@pytest.fixture(scope="module")
def gc_plane(control_plane, thirdparty_crds, tmp_path_factory):
    """A control plane of its own with the garbage collector running (the shared one has no
    controllers, so tests there can play the controllers' part)."""
    with ControlPlane(bin_dir=control_plane.bin_dir, workdir=tmp_path_factory.mktemp("gc")) as cp:
        cp.kubectl_run("apply", "--server-side", "-f", str(REPO / "crds"))
        cp.kubectl_run("apply", "--server-side", "-f", str(thirdparty_crds), timeout=120)
        cp.wait_established("alpacamodels.alpaca.dev", "rayservices.ray.io")
        cp.start_controller_manager(CONTROLLERS)
        yield cp


def _get(cp, kind: str, name: str):
    return cp.get_json(kind, name, "default")


def _wait_gone(cp, kind: str, name: str, timeout: float = 60) -> None:
    wait_for(
        lambda: _get(cp, kind, name) is None,
        f"{kind}/{name} to be garbage-collected",
        timeout,
        interval=0.5,
    )


def _finished_pod(cp, cache: str, job_name: str) -> None:
    """A Completed pod of the Job on a node, mounting the cache (what a fill leaves)."""
    job = _get(cp, "job", job_name)
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": job_name}
    owner |= {"uid": job["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{job_name}-pod", "namespace": "default", "ownerReferences": [owner]},
        "spec": {
            "nodeName": "a-node",
            "restartPolicy": "Never",
            "containers": [{"name": "fill", "image": "alpaca-weights:test"}],
            "volumes": [{"name": "cache", "persistentVolumeClaim": {"claimName": cache}}],
        },
    }
    cp.kubectl_run("apply", "-f", "-", input=json.dumps(pod))
    cp.patch_status("pod", f"{job_name}-pod", {"phase": "Succeeded"}, "default")


def _reconcile(ctx, cp, name: str) -> None:
    body = _get(cp, "alpacamodel", name)
    write_status(ctx.kube, body, run_model(ctx, body, datetime.datetime.now(datetime.UTC)).status)


def test_shared_cache_outlives_one_user_and_goes_with_the_last(gc_plane):
    cp = gc_plane
    kube = Kube(kubernetes.config.new_client_from_config(config_file=str(cp.kubeconfig)))
    ctx = ModelContext(kube, Applier(kube), OperatorConfig(), application_for)
    doc = yaml.safe_load((REPO / "examples" / "alpaca-local.yaml").read_text())
    cache = names.cache_name(AlpacaModelSpec.model_validate(doc["spec"]).weights)
    for name in ("first", "second"):
        doc["metadata"]["name"] = name
        cp.kubectl_run("apply", "-n", "default", "-f", "-", input=json.dumps(doc))
        _reconcile(ctx, cp, name)
    # The fill Job is done (as the Job controller would say): both models get a RayService.
    cp.complete_job("default", f"{cache}-fill")
    # Its pod stays, Completed, and holds the cache: pvc-protection keeps a PVC while any
    # scheduled pod mounts it, so the Job must not wait for the PVC to go (it did when the
    # PVC owned it, until the Job's TTL: found on a real node).
    _finished_pod(cp, cache, f"{cache}-fill")
    for name in ("first", "second"):
        _reconcile(ctx, cp, name)
        assert _get(cp, "rayservice", name) is not None
    assert _get(cp, "networkpolicy", "first-ray") is not None

    started = time.monotonic()
    cp.kubectl_run("delete", "-n", "default", "alpacamodel", "first", "--timeout=30s")
    assert time.monotonic() - started < 30  # no finalizer held it
    _wait_gone(cp, "rayservice", "first")
    _wait_gone(cp, "networkpolicy", "first-ray")
    assert _get(cp, "rayservice", "second") is not None
    time.sleep(2)  # give the collector time to (wrongly) take the shared cache
    assert _get(cp, "pvc", cache) is not None, "the cache went while 'second' still uses it"

    cp.kubectl_run("delete", "-n", "default", "alpacamodel", "second", "--timeout=30s")
    _wait_gone(cp, "rayservice", "second")
    _wait_gone(cp, "job", f"{cache}-fill")
    _wait_gone(cp, "pod", f"{cache}-fill-pod")
    _wait_gone(cp, "pvc", cache)
