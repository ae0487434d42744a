"""reconcile/model.py: what one pass over an AlpacaModel creates, and the status that follows.

The same path as tests/integration/test_model_reconcile.py, on the in-memory fake: the stages
move as the other controllers (Job controller, KubeRay, Karpenter) report.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
from typing import Any

from alpaca_operator import conditions as cond
from alpaca_operator.api import AlpacaModelSpec
from alpaca_operator.reconcile.model import RAYSERVICE_CRD, ModelContext
from alpaca_operator.render import names

from .fake_kube import FakeKube
from .support import (
    ALL_CRDS,
    API,
    NOW,
    NS,
    complete_job,
    create,
    example,
    fail_job,
    model_context,
    model_pass,
    owners,
    rayservice_ready,
    reasons,
    terminated_pod,
)

GPU_LABELS = {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "NVIDIA-A10G"}


def _cache(doc: dict[str, Any]) -> str:
    return names.cache_name(AlpacaModelSpec.model_validate(doc["spec"]).weights)


def _node(kube: FakeKube, name: str, gpus: int, labels: dict[str, str]) -> None:
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": labels},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}},
        }
    )


def test_a_model_goes_through_every_stage():
    kube = FakeKube(ALL_CRDS)
    ctx = model_context(kube)
    doc = example("alpaca.yaml")
    create(kube, doc)
    cache = _cache(doc)

    # 1. No GPU node: capacity waits; the cache and its fill Job exist; no RayService yet.
    obj, _ = model_pass(ctx, "alpaca-7b")
    assert obj["status"]["phase"] == "Provisioning"
    assert reasons(obj) == {
        cond.ACCEPTED: cond.SPEC_VALID,
        cond.CAPACITY: cond.WAITING_FOR_NODES,
        cond.WEIGHTS: cond.FILL_PENDING,
        cond.SERVING: cond.WAITING_FOR_WEIGHTS,
        cond.READY: cond.WAITING_FOR_NODES,
        cond.UPGRADING: cond.UP_TO_DATE,
    }
    assert owners(kube.stored("v1", "PersistentVolumeClaim", cache, NS)) == [
        ("AlpacaModel", "alpaca-7b", False)
    ]
    assert kube.names("Job") == [names.fill_job_name(cache)]
    assert kube.names("RayService") == [] and kube.names("Service") == []

    # 2. A node too small (a failure a person must fix), then one large enough.
    _node(kube, "small", 0, GPU_LABELS)
    obj, _ = model_pass(ctx, "alpaca-7b")
    assert reasons(obj)[cond.CAPACITY] == cond.INSUFFICIENT_GPU
    assert obj["status"]["phase"] == "Failed"
    _node(kube, "big", 4, GPU_LABELS)
    obj, _ = model_pass(ctx, "alpaca-7b")
    assert reasons(obj)[cond.CAPACITY] == cond.NODES_AVAILABLE
    assert obj["status"]["phase"] == "Downloading"

    # 3. The fill Job completes: the cache is marked filled, the RayService appears; the
    # endpoint Service waits for KubeRay to name the cluster it would send traffic to.
    complete_job(kube, names.fill_job_name(cache))
    obj, _ = model_pass(ctx, "alpaca-7b")
    assert reasons(obj)[cond.WEIGHTS] == cond.CACHE_FILLED
    assert reasons(obj)[cond.SERVING] == cond.WAITING_FOR_RAY_CLUSTER
    assert obj["status"]["phase"] == "Deploying"
    rs = kube.stored("ray.io/v1", "RayService", "alpaca-7b", NS)
    assert owners(rs) == [("AlpacaModel", "alpaca-7b", True)]
    assert rs["spec"]["upgradeStrategy"]["type"] == "None"
    assert kube.names("Service") == []
    assert obj["status"].get("endpoint", "") == ""

    # 4. KubeRay reports the app running: Ready, with the endpoint and replicas; the Service
    # is made in one write, sending traffic to that cluster's ready Serve pods.
    rayservice_ready(kube, "alpaca-7b", workers=2)
    writes = kube.writes
    obj, _ = model_pass(ctx, "alpaca-7b")
    service = kube.stored("v1", "Service", names.endpoint_service_name("alpaca-7b"), NS)
    assert owners(service) == [("AlpacaModel", "alpaca-7b", True)]
    assert service["spec"]["selector"]["ray.io/cluster"] == "alpaca-7b-abcde"
    assert kube.writes - writes == 2  # the Service and the status
    assert obj["status"]["phase"] == "Ready"
    assert reasons(obj)[cond.READY] == cond.ALL_STAGES_READY
    assert obj["status"]["endpoint"] == f"http://alpaca-7b-openai.{NS}.svc:8000"
    assert (obj["status"]["replicas"], obj["status"]["ready"]) == (2, "2/2")

    # 5. Nothing changed: the next pass sends no write, and posts no Event.
    writes = kube.writes
    _, outcome = model_pass(ctx, "alpaca-7b")
    assert kube.writes == writes and outcome.events == []


def test_each_condition_transition_is_one_event():
    kube = FakeKube(ALL_CRDS)
    ctx = model_context(kube)
    create(kube, example("alpaca-local.yaml"))
    body, outcome = model_pass(ctx, "smollm2")
    posted = [(e.type, e.reason) for e in outcome.events]
    # one per stage: not Accepted (a valid spec on a new object) nor Ready (it names the
    # first waiting stage, whose own Event says why)
    assert sorted(posted) == sorted(
        [
            ("Normal", cond.CPU_ONLY),
            ("Normal", cond.FILL_PENDING),
            ("Normal", cond.WAITING_FOR_WEIGHTS),
        ]
    )
    # Ready is set all the same
    ready = [c for c in body["status"]["conditions"] if c["type"] == cond.READY]
    assert ready and ready[0]["status"] == "False"


def test_an_invalid_spec_touches_no_child():
    kube = FakeKube(ALL_CRDS)
    ctx = model_context(kube)
    doc = example("alpaca-local.yaml")
    doc["spec"]["autoscaling"] = {"minReplicas": -1}
    create(kube, doc)
    obj, outcome = model_pass(ctx, "smollm2")
    assert obj["status"]["phase"] == "Failed"
    assert reasons(obj) == {cond.ACCEPTED: cond.INVALID_SPEC, cond.READY: cond.INVALID_SPEC}
    assert [w.kind for w in kube.writes_log] == ["AlpacaModel"]  # the status, nothing else
    assert ("Warning", cond.INVALID_SPEC) in [(e.type, e.reason) for e in outcome.events]


def test_an_image_the_policy_does_not_allow_touches_no_child():
    kube = FakeKube(ALL_CRDS)
    ctx = model_context(kube)
    doc = example("alpaca-local.yaml")
    doc["spec"]["images"] = {"serving": "evil.example/ray:1"}
    create(kube, doc)
    obj, outcome = model_pass(ctx, "smollm2")
    assert obj["status"]["phase"] == "Failed"
    assert reasons(obj) == {
        cond.ACCEPTED: cond.FORBIDDEN_BY_POLICY,
        cond.READY: cond.FORBIDDEN_BY_POLICY,
    }
    assert "spec.images.serving" in _message(obj, cond.ACCEPTED)
    assert [w.kind for w in kube.writes_log] == ["AlpacaModel"]  # the status, nothing else
    assert ("Warning", cond.FORBIDDEN_BY_POLICY) in [(e.type, e.reason) for e in outcome.events]
    # the administrator allows the registry: the next pass goes on
    ctx.config = dataclasses.replace(ctx.config, allowed_image_prefixes=("evil.example/",))
    obj, _ = model_pass(ctx, "smollm2")
    assert reasons(obj)[cond.ACCEPTED] == cond.SPEC_VALID


def test_the_ray_pods_network_policy_comes_first_and_is_owned():
    kube = FakeKube(ALL_CRDS)
    ctx = model_context(kube)
    create(kube, example("alpaca-local.yaml"))
    model_pass(ctx, "smollm2")
    assert kube.names("RayService") == []  # the weights are not filled yet
    policy = kube.stored("networking.k8s.io/v1", "NetworkPolicy", "smollm2-ray", NS)
    assert owners(policy) == [("AlpacaModel", "smollm2", True)]
    assert policy["spec"]["podSelector"]["matchLabels"] == names.ray_pod_labels("smollm2")


def test_without_kuberay_the_weights_fill_and_serving_names_the_fix():
    kube = FakeKube()  # no RayService CRD
    ctx = model_context(kube)
    doc = example("alpaca-local.yaml")
    create(kube, doc)
    obj, _ = model_pass(ctx, "smollm2")
    assert reasons(obj)[cond.SERVING] == cond.KUBERAY_MISSING
    assert "helm install kuberay-operator" in _message(obj, cond.SERVING)
    assert obj["status"]["phase"] == "Failed"
    complete_job(kube, names.fill_job_name(_cache(doc)))
    obj, _ = model_pass(ctx, "smollm2")
    assert reasons(obj)[cond.WEIGHTS] == cond.CACHE_FILLED
    assert kube.names("RayService") == []
    kube.crds.add(RAYSERVICE_CRD)  # KubeRay installed later: the next pass deploys
    obj, _ = model_pass(ctx, "smollm2")
    assert kube.names("RayService") == ["smollm2"]
    assert obj["status"]["phase"] == "Deploying"


def _message(obj: dict[str, Any], type_: str) -> str:
    return next(c["message"] for c in obj["status"]["conditions"] if c["type"] == type_)


def test_karpenter_capacity_is_a_nodepool():
    kube = FakeKube()
    ctx = model_context(kube)
    create(kube, example("alpaca-karpenter.yaml"))
    obj, _ = model_pass(ctx, "alpaca-7b-spot")
    assert reasons(obj)[cond.CAPACITY] == cond.NODEPOOL_CRD_MISSING
    assert "install Karpenter" in _message(obj, cond.CAPACITY)
    assert kube.names("NodePool") == []

    kube.crds.update(ALL_CRDS)
    obj, _ = model_pass(ctx, "alpaca-7b-spot")
    pool = names.nodepool_name(NS, "alpaca-7b-spot")
    assert kube.names("NodePool") == [pool]
    assert reasons(obj)[cond.CAPACITY] == cond.WAITING_FOR_NODEPOOL
    assert kube.list("v1", "Node") == [] and not any(w.kind == "Node" for w in kube.writes_log)
    kube.set_status(
        "karpenter.sh/v1",
        "NodePool",
        pool,
        None,
        {"conditions": [{"type": "Ready", "status": "True"}]},
    )
    obj, _ = model_pass(ctx, "alpaca-7b-spot")
    assert reasons(obj)[cond.CAPACITY] == cond.NODEPOOL_READY


def test_a_model_that_leaves_karpenter_gives_its_nodepool_up():
    """Found by the chaos suite: the NodePool stayed until the model was deleted."""
    kube = FakeKube(ALL_CRDS)
    ctx = model_context(kube)
    create(kube, example("alpaca-karpenter.yaml"))
    create(kube, example("alpaca-karpenter.yaml"), "stays")
    model_pass(ctx, "alpaca-7b-spot")
    model_pass(ctx, "stays")
    pool = names.nodepool_name(NS, "alpaca-7b-spot")
    assert kube.names("NodePool") == sorted([pool, names.nodepool_name(NS, "stays")])
    obj = kube.objects[(API, "AlpacaModel", NS, "alpaca-7b-spot")]
    obj["spec"]["capacity"] = {"provisioner": "existing"}
    obj["metadata"]["generation"] += 1
    obj, _ = model_pass(ctx, "alpaca-7b-spot")
    assert kube.names("NodePool") == [names.nodepool_name(NS, "stays")]
    assert reasons(obj)[cond.CAPACITY] == cond.WAITING_FOR_NODES
    before = len(kube.writes_log)
    model_pass(ctx, "alpaca-7b-spot")  # nothing left to give up: no write
    assert kube.writes_log[before:] == []


def test_serving_waits_for_every_adapter_cache():
    kube = FakeKube(ALL_CRDS)
    ctx = model_context(kube)
    doc = example("alpaca-karpenter.yaml")
    create(kube, doc)
    spec = AlpacaModelSpec.model_validate(doc["spec"])
    caches = [names.cache_name(spec.weights)] + [
        names.cache_name(a.as_weights(spec.weights)) for a in spec.adapters
    ]
    model_pass(ctx, "alpaca-7b-spot")
    assert kube.names("PersistentVolumeClaim") == sorted(caches)
    assert kube.names("Job") == sorted(names.fill_job_name(c) for c in caches)
    for cache in caches[:2]:
        complete_job(kube, names.fill_job_name(cache))
    obj, _ = model_pass(ctx, "alpaca-7b-spot")
    assert kube.names("RayService") == []
    assert reasons(obj)[cond.WEIGHTS] == cond.FILL_PENDING
    assert _message(obj, cond.WEIGHTS).startswith("Adapter alpaca-support: ")
    complete_job(kube, names.fill_job_name(caches[2]))
    obj, _ = model_pass(ctx, "alpaca-7b-spot")
    assert kube.names("RayService") == ["alpaca-7b-spot"]


def test_two_models_share_one_cache_and_one_fill():
    kube = FakeKube(ALL_CRDS)
    ctx = model_context(kube)
    doc = example("alpaca-local.yaml")
    create(kube, doc, "first")
    create(kube, doc, "second")
    model_pass(ctx, "first")
    model_pass(ctx, "second")
    cache = _cache(doc)
    assert kube.names("PersistentVolumeClaim") == [cache]
    both = [("AlpacaModel", "first", False), ("AlpacaModel", "second", False)]
    assert owners(kube.stored("v1", "PersistentVolumeClaim", cache, NS)) == both
    assert owners(kube.stored("batch/v1", "Job", names.fill_job_name(cache), NS)) == both


def test_users_already_there_join_a_cache_in_its_first_write():
    """Models applied together: the first pass makes every valid user of the cache an owner,
    so the others' passes write neither the PVC nor the fill Job again (at 1,000 models in
    100 namespaces that was a PVC and a Job write per model)."""
    kube = FakeKube(ALL_CRDS)
    ctx = model_context(kube)
    doc = example("alpaca-local.yaml")
    for name in ("a", "b", "c"):
        create(kube, doc, name)
    elsewhere = copy.deepcopy(doc)
    elsewhere["spec"]["weights"]["source"] = "/models/other"
    create(kube, elsewhere, "elsewhere")
    refused = copy.deepcopy(doc)
    refused["spec"]["weights"]["cache"]["accessMode"] = "Sometimes"  # not a valid spec
    create(kube, refused, "refused")
    model_pass(ctx, "a")
    cache = _cache(doc)
    users = [("AlpacaModel", n, False) for n in ("a", "b", "c")]
    assert sorted(owners(kube.stored("v1", "PersistentVolumeClaim", cache, NS))) == users
    job = names.fill_job_name(cache)
    assert sorted(owners(kube.stored("batch/v1", "Job", job, NS))) == users
    before = len(kube.writes_log)
    model_pass(ctx, "b")
    model_pass(ctx, "c")
    touched = {(w.kind, w.name) for w in kube.writes_log[before:]}
    assert ("PersistentVolumeClaim", cache) not in touched and ("Job", job) not in touched
    # a user that comes later adds itself, as before
    create(kube, doc, "d")
    model_pass(ctx, "d")
    assert ("AlpacaModel", "d", False) in owners(
        kube.stored("v1", "PersistentVolumeClaim", cache, NS)
    )


def test_a_stage_past_its_deadline_says_so_and_warns():
    kube = FakeKube(ALL_CRDS)
    ctx = model_context(kube)
    doc = example("alpaca.yaml")
    doc["spec"]["capacity"]["nodeSelector"] = {"pool": "none"}
    create(kube, doc, "slow")
    _, first = model_pass(ctx, "slow", NOW)
    # the pass asks to be run again at the capacity stage's deadline, the nearest one
    assert first.requeue_at == NOW + datetime.timedelta(minutes=20, seconds=1)
    obj, outcome = model_pass(ctx, "slow", NOW + datetime.timedelta(minutes=25))
    assert reasons(obj)[cond.CAPACITY] == cond.CAPACITY_TIMEOUT
    message = _message(obj, cond.CAPACITY)
    assert "deadline of 20 minutes (waiting since 2026-11-24T12:00:00Z)" in message
    # the next pass writes nothing: no running count in the message
    again, _ = model_pass(ctx, "slow", NOW + datetime.timedelta(minutes=40))
    assert _message(again, cond.CAPACITY) == message
    # the weights stage's deadline (3 hours) is the next one now
    assert outcome.requeue_at == NOW + datetime.timedelta(hours=3, seconds=1)
    assert reasons(obj)[cond.WEIGHTS] != cond.WEIGHTS_TIMEOUT  # its deadline is longer
    assert ("Warning", cond.CAPACITY_TIMEOUT) in [(e.type, e.reason) for e in outcome.events]
    assert obj["status"]["phase"] == "Provisioning"  # a timeout warns; the phase stays


def test_a_fill_failure_reason_reaches_the_status():
    kube = FakeKube(ALL_CRDS)
    ctx = model_context(kube)
    doc = example("alpaca-local.yaml")
    create(kube, doc)
    model_pass(ctx, "smollm2")
    job = names.fill_job_name(_cache(doc))
    terminated_pod(kube, job, f"{job}-x1", "ChecksumMismatch: model.safetensors differs")
    fail_job(kube, job, "PodFailurePolicy")
    obj, outcome = model_pass(ctx, "smollm2")
    assert reasons(obj)[cond.WEIGHTS] == "ChecksumMismatch"
    assert "model.safetensors differs" in _message(obj, cond.WEIGHTS)
    assert obj["status"]["phase"] == "Failed"
    assert ("Warning", "ChecksumMismatch") in [(e.type, e.reason) for e in outcome.events]


def _two_users_of_one_cache() -> tuple[FakeKube, ModelContext, str]:
    """Models "first" and "second" with the same weights, each passed once: one shared cache."""
    kube = FakeKube(ALL_CRDS)
    ctx = model_context(kube)
    doc = example("alpaca-local.yaml")
    create(kube, doc, "first")
    create(kube, doc, "second")
    model_pass(ctx, "first")
    model_pass(ctx, "second")
    return kube, ctx, _cache(doc)


def _switch_weights(kube: FakeKube, name: str, source: str) -> dict[str, Any]:
    obj = kube.objects[(API, "AlpacaModel", NS, name)]
    obj["spec"]["weights"]["source"] = source
    obj["metadata"]["generation"] += 1
    return copy.deepcopy(obj)


def test_new_weights_release_the_old_cache_once_serving_switched():
    kube = FakeKube(ALL_CRDS)
    ctx = model_context(kube)
    doc = example("alpaca-local.yaml")
    create(kube, doc)
    old = _cache(doc)
    model_pass(ctx, "smollm2")
    complete_job(kube, names.fill_job_name(old))
    model_pass(ctx, "smollm2")
    assert kube.names("RayService") == ["smollm2"]

    new = _cache(_switch_weights(kube, "smollm2", "https://example.com/models/other/"))
    model_pass(ctx, "smollm2")
    # the new cache fills while the old one still serves: both stay
    assert kube.names("PersistentVolumeClaim") == sorted([old, new])
    complete_job(kube, names.fill_job_name(new))
    model_pass(ctx, "smollm2")  # serving switches to the new cache, the old one goes
    assert kube.names("PersistentVolumeClaim") == [new]
    assert kube.names("Job") == [names.fill_job_name(new)]


def test_a_cache_another_model_uses_is_only_given_up():
    kube, ctx, shared = _two_users_of_one_cache()
    _switch_weights(kube, "first", "https://example.com/models/other/")
    model_pass(ctx, "first")  # nothing served from the shared cache yet: released at once
    assert owners(kube.stored("v1", "PersistentVolumeClaim", shared, NS)) == [
        ("AlpacaModel", "second", False)
    ]
    job = kube.stored("batch/v1", "Job", names.fill_job_name(shared), NS)
    assert owners(job) == [("AlpacaModel", "second", False)]


def test_a_user_that_joins_a_filled_cache_owns_its_fill_job_too():
    """Found by the chaos suite: a user joining after the fill completed was added to the
    PVC's owners only; when the Job's last listed owner left, the Job kept no owner at all,
    which the garbage collector never takes."""
    kube = FakeKube(ALL_CRDS)
    ctx = model_context(kube)
    doc = example("alpaca-local.yaml")
    create(kube, doc, "first")
    shared = _cache(doc)
    model_pass(ctx, "first")
    complete_job(kube, names.fill_job_name(shared))
    model_pass(ctx, "first")
    create(kube, doc, "second")
    model_pass(ctx, "second")
    job = kube.stored("batch/v1", "Job", names.fill_job_name(shared), NS)
    pvc = kube.stored("v1", "PersistentVolumeClaim", shared, NS)
    assert owners(job) == owners(pvc)
    new = _cache(_switch_weights(kube, "first", "https://example.com/models/other/"))
    model_pass(ctx, "first")
    complete_job(kube, names.fill_job_name(new))
    model_pass(ctx, "first")  # serving switched: the shared cache is given up
    second = [("AlpacaModel", "second", False)]
    assert owners(kube.stored("v1", "PersistentVolumeClaim", shared, NS)) == second
    assert owners(kube.stored("batch/v1", "Job", names.fill_job_name(shared), NS)) == second


def test_a_release_stopped_half_way_is_finished_by_the_next_pass():
    """The Job's owners are written before the PVC's; a stop between them leaves the PVC
    naming the user, so the next pass finds the cache and finishes the release. A Job still
    naming the user when the PVC no longer does (an older operator's order) is found too."""
    kube, ctx, shared = _two_users_of_one_cache()
    pvc = kube.stored("v1", "PersistentVolumeClaim", shared, NS)
    # an older operator stopped after the PVC's write: only the Job still names "first"
    kube.json_patch(
        "v1",
        "PersistentVolumeClaim",
        shared,
        NS,
        [
            {
                "op": "replace",
                "path": "/metadata/ownerReferences",
                "value": [r for r in pvc["metadata"]["ownerReferences"] if r["name"] == "second"],
            }
        ],
    )
    _switch_weights(kube, "first", "https://example.com/models/other/")
    model_pass(ctx, "first")
    second = [("AlpacaModel", "second", False)]
    assert owners(kube.stored("batch/v1", "Job", names.fill_job_name(shared), NS)) == second
    assert owners(kube.stored("v1", "PersistentVolumeClaim", shared, NS)) == second


def test_only_a_model_on_existing_gpu_nodes_names_the_nodes_that_concern_it():
    kube = FakeKube(ALL_CRDS)
    ctx = model_context(kube)
    for file in ("alpaca.yaml", "alpaca-karpenter.yaml", "alpaca-local.yaml"):
        create(kube, example(file))
    _, existing = model_pass(ctx, "alpaca-7b")
    assert existing.node_selector == {"nvidia.com/gpu.present": "true"} | {
        "nvidia.com/gpu.product": "NVIDIA-A10G"
    }
    _, karpenter = model_pass(ctx, "alpaca-7b-spot")
    _, cpu_only = model_pass(ctx, "smollm2")
    assert karpenter.node_selector is None and cpu_only.node_selector is None
