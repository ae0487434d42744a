"""AlpacaModel reconcile against the real apiserver with the real KubeRay and Karpenter CRDs.

Child statuses (Job, RayService, NodePool) are patched by the test the way their controllers
would, and drive the phases; the CRDs' own schemas validate everything the operator renders.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from alpaca_operator.api import AlpacaModelSpec
from alpaca_operator.config import OperatorConfig
from alpaca_operator.reconcile.apply import Applier
from alpaca_operator.reconcile.model import ModelContext, run_model
from alpaca_operator.reconcile.serving import application_for
from alpaca_operator.reconcile.status import write_status
from alpaca_operator.render import names

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
NOW = datetime.datetime(2026, 11, 24, 12, 0, tzinfo=datetime.UTC)


@pytest.fixture
def ctx(kube, thirdparty_crds) -> ModelContext:
    return ModelContext(kube, Applier(kube), OperatorConfig(), application_for)


def _example(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "examples" / name).read_text())


def _create(cp, ns: str, doc: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    if name:
        doc["metadata"]["name"] = name
    cp.kubectl_run("apply", "-n", ns, "-f", "-", input=json.dumps(doc))
    return _get(cp, ns, doc["kind"], doc["metadata"]["name"])


def _get(cp, ns: str, kind: str, name: str) -> dict[str, Any] | None:
    return cp.get_json(kind, name, ns)


def _pass(
    ctx: ModelContext, cp, ns: str, name: str, now: datetime.datetime = NOW
) -> dict[str, Any]:
    """One reconcile + status write, as the handlers do; returns the fresh AlpacaModel."""
    body = _get(cp, ns, "alpacamodel", name)
    outcome = run_model(ctx, body, now)
    write_status(ctx.kube, body, outcome.status)
    return _get(cp, ns, "alpacamodel", name)


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in obj["status"]["conditions"]}


def _patch_status(cp, ns: str, kind: str, name: str, status: dict[str, Any]) -> None:
    cp.patch_status(kind, name, status, ns or None)


def _gpu_node(cp, name: str, gpus: int, labels: dict[str, str]) -> None:
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}
    cp.kubectl_run("apply", "-f", "-", input=json.dumps(node))
    _patch_status(
        cp,
        "",
        "node",
        name,
        {
            "allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "32", "memory": "256Gi"},
            "capacity": {"nvidia.com/gpu": str(gpus)},
        },
    )


def _job_complete(cp, ns: str, job: str) -> None:
    cp.complete_job(ns, job)


def _rayservice_ready(cp, ns: str, name: str, workers: int) -> None:
    now = "2026-11-24T12:00:00Z"
    _patch_status(
        cp,
        ns,
        "rayservice",
        name,
        {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "NonZeroServeEndpoints",
                    "message": "",
                    "lastTransitionTime": now,
                }
            ],
            "serviceStatus": "Running",
            "numServeEndpoints": workers + 1,
            "activeServiceStatus": {
                "rayClusterName": f"{name}-abcde",
                "applicationStatuses": {"alpaca": {"status": "RUNNING"}},
                "rayClusterStatus": {
                    "desiredWorkerReplicas": workers,
                    "readyWorkerReplicas": workers,
                },
            },
        },
    )


def test_model_goes_through_every_stage(control_plane, ctx, namespace):
    cp = control_plane
    doc = _example("alpaca.yaml")
    _create(cp, namespace, doc)
    cache = names.cache_name(AlpacaModelSpec.model_validate(doc["spec"]).weights)

    # 1. No GPU node yet: capacity waits; the cache and its fill Job exist; no RayService.
    obj = _pass(ctx, cp, namespace, "alpaca-7b")
    cond = _conditions(obj)
    assert obj["status"]["phase"] == "Provisioning"
    assert cond["CapacityReady"]["reason"] == "WaitingForNodes"
    assert cond["WeightsReady"]["reason"] in ("FillPending", "Downloading")
    assert cond["ServingReady"]["reason"] == "WaitingForWeights"
    pvc = _get(cp, namespace, "pvc", cache)
    assert [r["name"] for r in pvc["metadata"]["ownerReferences"]] == ["alpaca-7b"]
    job = _get(cp, namespace, "job", f"{cache}-fill")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:3] == ["fill", "--source", "hf://tatsu-lab/alpaca-7b-wdiff"]
    assert "--expected-checksum" in args and "50637.1836" in args
    assert _get(cp, namespace, "rayservice", "alpaca-7b") is None

    # 2. A node too small, then one large enough.
    _gpu_node(
        cp,
        f"{namespace}-small",
        0,
        {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "NVIDIA-A10G"},
    )
    obj = _pass(ctx, cp, namespace, "alpaca-7b")
    assert _conditions(obj)["CapacityReady"]["reason"] == "InsufficientGPU"
    assert obj["status"]["phase"] == "Failed"
    _gpu_node(
        cp,
        f"{namespace}-big",
        4,
        {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "NVIDIA-A10G"},
    )
    obj = _pass(ctx, cp, namespace, "alpaca-7b")
    assert _conditions(obj)["CapacityReady"]["status"] == "True"
    assert obj["status"]["phase"] == "Downloading"

    # 3. The fill Job completes: the cache is marked filled and the RayService appears.
    _job_complete(cp, namespace, f"{cache}-fill")
    obj = _pass(ctx, cp, namespace, "alpaca-7b")
    assert _conditions(obj)["WeightsReady"]["reason"] == "CacheFilled"
    assert (
        _get(cp, namespace, "pvc", cache)["metadata"]["annotations"]["alpaca.dev/filled"] == "true"
    )
    rs = _get(cp, namespace, "rayservice", "alpaca-7b")
    assert rs is not None and rs["spec"]["upgradeStrategy"]["type"] == "None"
    worker = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert (
        worker["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    )
    assert worker["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-A10G"
    assert (worker["minReplicas"], worker["maxReplicas"]) == (1, 4)
    assert obj["status"]["phase"] == "Deploying"
    # no endpoint Service until KubeRay names the cluster it would send traffic to
    assert _get(cp, namespace, "service", "alpaca-7b-openai") is None

    # 4. KubeRay reports the app running: Ready, with endpoint and replicas.
    _rayservice_ready(cp, namespace, "alpaca-7b", workers=2)
    obj = _pass(ctx, cp, namespace, "alpaca-7b")
    service = _get(cp, namespace, "service", "alpaca-7b-openai")
    assert service is not None and "ray.io/cluster" in service["spec"]["selector"]
    assert obj["status"]["phase"] == "Ready"
    assert _conditions(obj)["Ready"]["status"] == "True"
    assert obj["status"]["endpoint"] == f"http://alpaca-7b-openai.{namespace}.svc:8000"
    assert obj["status"]["ready"] == "2/2"
    out = cp.kubectl_run("get", "-n", namespace, "am", "alpaca-7b").stdout
    assert "Ready" in out and "2/2" in out

    # 5. Nothing changed: a reconcile sends no write at all (the apiserver's defaults on
    # Services and PVCs, which have no generation, do not count as changes).
    before = ctx.kube.writes
    _pass(ctx, cp, namespace, "alpaca-7b")
    assert ctx.kube.writes == before

    # 6. Hand edits of children without a generation are put back.
    service = "alpaca-7b-openai"
    cp.kubectl_run(
        "patch",
        "-n",
        namespace,
        "service",
        service,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"selector": {"ray.io/serve": "false"}}}),
    )
    cp.kubectl_run(
        "label", "-n", namespace, "pvc", cache, "app.kubernetes.io/component=edited", "--overwrite"
    )
    _pass(ctx, cp, namespace, "alpaca-7b")
    assert _get(cp, namespace, "service", service)["spec"]["selector"]["ray.io/serve"] == "true"
    labels = _get(cp, namespace, "pvc", cache)["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "weights-cache"
    before = ctx.kube.writes
    _pass(ctx, cp, namespace, "alpaca-7b")
    assert ctx.kube.writes == before


def test_ray_pods_network_policy_is_rendered_and_kept(control_plane, ctx, namespace):
    """Before any Ray pod exists the model's NetworkPolicy does: Ray pods reach each other,
    anyone the Serve port (and metrics), KubeRay's namespace the dashboard; a hand edit that
    opens the dashboard to every pod is put back by the next pass."""
    cp = control_plane
    _create(cp, namespace, _example("alpaca-local.yaml"))
    _pass(ctx, cp, namespace, "smollm2")
    policy = _get(cp, namespace, "networkpolicy", "smollm2-ray")
    assert policy is not None and _get(cp, namespace, "rayservice", "smollm2") is None
    owner = policy["metadata"]["ownerReferences"]
    assert [(r["kind"], r["name"], r["controller"]) for r in owner] == [
        ("AlpacaModel", "smollm2", True)
    ]
    assert policy["metadata"]["labels"]["alpaca.dev/model"] == "smollm2"
    spec = policy["spec"]
    ray_pods = {"matchLabels": {"alpaca.dev/model": "smollm2", "ray.io/is-ray-node": "yes"}}
    assert spec["podSelector"] == ray_pods
    assert spec["policyTypes"] == ["Ingress"]
    assert spec["ingress"] == [
        {"from": [{"podSelector": ray_pods}]},
        # Serve (or HAProxy), Ray's metrics, HAProxy's exporter on the fast path
        {"ports": [{"protocol": "TCP", "port": p} for p in (8000, 8080, 9101)]},
        {
            "from": [
                {
                    "namespaceSelector": {
                        "matchExpressions": [
                            {
                                "key": "kubernetes.io/metadata.name",
                                "operator": "In",
                                "values": ["kuberay-system"],
                            }
                        ]
                    }
                }
            ],
            "ports": [{"protocol": "TCP", "port": 8265}],
        },
    ]

    opened = [{"op": "replace", "path": "/spec/ingress", "value": [{}]}]
    cp.kubectl_run(
        "patch",
        "-n",
        namespace,
        "networkpolicy",
        "smollm2-ray",
        "--type=json",
        "-p",
        json.dumps(opened),
    )
    assert _get(cp, namespace, "networkpolicy", "smollm2-ray")["spec"]["ingress"] == [{}]
    _pass(ctx, cp, namespace, "smollm2")
    assert _get(cp, namespace, "networkpolicy", "smollm2-ray")["spec"] == spec
    before = ctx.kube.writes
    _pass(ctx, cp, namespace, "smollm2")
    assert ctx.kube.writes == before


def test_same_weights_share_one_cache_and_one_job(control_plane, ctx, namespace):
    cp = control_plane
    doc = _example("alpaca-local.yaml")
    _create(cp, namespace, doc, "first")
    _create(cp, namespace, doc, "second")
    _pass(ctx, cp, namespace, "first")
    _pass(ctx, cp, namespace, "second")
    pvcs = json.loads(cp.kubectl_run("get", "-n", namespace, "pvc", "-o", "json").stdout)["items"]
    jobs = json.loads(cp.kubectl_run("get", "-n", namespace, "jobs", "-o", "json").stdout)["items"]
    assert len(pvcs) == 1 and len(jobs) == 1
    assert sorted(r["name"] for r in pvcs[0]["metadata"]["ownerReferences"]) == ["first", "second"]
    assert not any(r.get("controller") for r in pvcs[0]["metadata"]["ownerReferences"])

    # New weights for both: the shared cache is given up by the first and goes with the second
    # (an emptied owner list would leave it to no one: the garbage collector never takes it).
    shared = pvcs[0]["metadata"]["name"]
    other = json.loads(json.dumps(doc))
    other["spec"]["weights"]["source"] = "https://example.com/models/other/"
    for name in ("first", "second"):
        _create(cp, namespace, other, name)
        _pass(ctx, cp, namespace, name)
        pvc = _get(cp, namespace, "pvc", shared)
        if name == "first":
            assert [r["name"] for r in pvc["metadata"]["ownerReferences"]] == ["second"]
        else:  # deleted (pvc-protection holds it while a pod might use it)
            assert pvc is None or pvc["metadata"].get("deletionTimestamp")
    job = _get(cp, namespace, "job", jobs[0]["metadata"]["name"])
    assert job is None or job["metadata"].get("deletionTimestamp")


def test_karpenter_nodepool_accepted_by_the_real_crd(control_plane, ctx, namespace):
    cp = control_plane
    _create(cp, namespace, _example("alpaca-karpenter.yaml"))
    obj = _pass(ctx, cp, namespace, "alpaca-7b-spot")
    pool_name = names.nodepool_name(namespace, "alpaca-7b-spot")
    pool = _get(cp, "", "nodepool", pool_name)
    assert pool is not None
    reqs = {r["key"]: r for r in pool["spec"]["template"]["spec"]["requirements"]}
    assert reqs["karpenter.sh/capacity-type"]["values"] == ["spot", "on-demand"]
    assert reqs["karpenter.k8s.aws/instance-family"]["values"] == ["g5", "g6"]
    assert pool["spec"]["limits"] == {"nvidia.com/gpu": "8"}
    assert pool["spec"]["disruption"]["consolidateAfter"] == "5m"
    assert _conditions(obj)["CapacityReady"]["reason"] == "WaitingForNodePool"
    _patch_status(
        cp,
        "",
        "nodepool",
        pool_name,
        {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Ready",
                    "message": "",
                    "lastTransitionTime": "2026-11-24T12:00:00Z",
                }
            ]
        },
    )
    obj = _pass(ctx, cp, namespace, "alpaca-7b-spot")
    assert _conditions(obj)["CapacityReady"]["reason"] == "NodePoolReady"
    cp.kubectl_run("delete", "nodepool", pool_name)


def test_fill_failure_reason_reaches_the_status(control_plane, ctx, namespace):
    cp = control_plane
    doc = _example("alpaca-local.yaml")
    _create(cp, namespace, doc, "broken")
    _pass(ctx, cp, namespace, "broken")
    cache = names.cache_name(AlpacaModelSpec.model_validate(doc["spec"]).weights)
    job = f"{cache}-fill"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{job}-x1", "labels": {"job-name": job}},
        "spec": {  # what the `restricted` namespace admits, as the rendered template is
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "fill",
                    "image": "x",
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    cp.kubectl_run(
        "create", "serviceaccount", "default", "-n", namespace
    )  # no controller-manager here
    cp.kubectl_run("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))
    _patch_status(
        cp,
        namespace,
        "pod",
        f"{job}-x1",
        {
            "containerStatuses": [
                {
                    "name": "fill",
                    "image": "x",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {
                        "terminated": {
                            "exitCode": 3,
                            "reason": "Error",
                            "message": "ChecksumMismatch: sum of tensor sums 50601.2 differs from 50637.1836",
                        }
                    },
                }
            ]
        },
    )
    now = "2026-11-24T12:00:00Z"
    _patch_status(
        cp,
        namespace,
        "job",
        job,
        {
            "failed": 1,
            "conditions": [
                {
                    "type": "FailureTarget",
                    "status": "True",
                    "reason": "PodFailurePolicy",
                    "lastTransitionTime": now,
                    "lastProbeTime": now,
                },
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "PodFailurePolicy",
                    "lastTransitionTime": now,
                    "lastProbeTime": now,
                },
            ],
            "startTime": now,
        },
    )
    obj = _pass(ctx, cp, namespace, "broken")
    weights = _conditions(obj)["WeightsReady"]
    assert weights["reason"] == "ChecksumMismatch"
    assert "50637.1836" in weights["message"]
    assert obj["status"]["phase"] == "Failed"


def test_stage_deadlines_have_their_own_reasons(control_plane, ctx, namespace):
    cp = control_plane
    doc = _example("alpaca.yaml")
    doc["spec"]["capacity"]["nodeSelector"] = {"pool": namespace}  # no node has this label
    _create(cp, namespace, doc, "slow")
    _pass(ctx, cp, namespace, "slow", now=NOW)
    obj = _pass(ctx, cp, namespace, "slow", now=NOW + datetime.timedelta(minutes=25))
    cond = _conditions(obj)
    assert cond["CapacityReady"]["reason"] == "CapacityTimeout"
    assert "deadline of 20 minutes" in cond["CapacityReady"]["message"]
    assert cond["WeightsReady"]["reason"] != "WeightsTimeout"  # its deadline is longer


@pytest.fixture(scope="module")
def bare_control_plane(tmp_path_factory, control_plane):
    """A second control plane with only our CRDs: no KubeRay, no Karpenter."""
    from alpaca_dev.controlplane import ControlPlane

    with ControlPlane(bin_dir=control_plane.bin_dir, workdir=tmp_path_factory.mktemp("bare")) as cp:
        cp.kubectl_run("apply", "--server-side", "-f", str(REPO / "crds"))
        cp.wait_established("alpacamodels.alpaca.dev", "alpacafinetunes.alpaca.dev")
        yield cp


def test_missing_dependencies_are_named_with_the_fix(bare_control_plane):
    import kubernetes

    from alpaca_operator.kube import Kube

    cp = bare_control_plane
    kube = Kube(kubernetes.config.new_client_from_config(config_file=str(cp.kubeconfig)))
    ctx = ModelContext(kube, Applier(kube), OperatorConfig(), application_for)
    _create(cp, "default", _example("alpaca-karpenter.yaml"))
    obj = _pass(ctx, cp, "default", "alpaca-7b-spot")
    cond = _conditions(obj)
    assert cond["CapacityReady"]["reason"] == "NodePoolCRDMissing"
    assert "install Karpenter" in cond["CapacityReady"]["message"]
    assert cond["ServingReady"]["reason"] == "KubeRayMissing"
    assert "helm install kuberay-operator" in cond["ServingReady"]["message"]
    assert obj["status"]["phase"] == "Failed"
    # The weights stage goes on regardless: the cache fills while KubeRay is being installed.
    assert cond["WeightsReady"]["reason"] in ("FillPending", "Downloading")
