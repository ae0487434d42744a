"""reconcile/finetune.py: base weights, output volume, trainer account, the Indexed Job, and the
served AlpacaModel once training completed (decision 14).

The same path as tests/integration/test_finetune_reconcile.py, on the in-memory fake.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from alpaca_operator import conditions as cond
from alpaca_operator.api import AlpacaFineTuneSpec
from alpaca_operator.render import names
from alpaca_operator.render.finetune import QUEUE_LABEL

from .fake_kube import FakeKube
from .support import (
    ALL_CRDS,
    API,
    NS,
    complete_job,
    create,
    example,
    fail_job,
    finetune_context,
    finetune_pass,
    owners,
    reasons,
    terminated_pod,
)

FULL = example("finetune.yaml")
LORA = example("finetune-lora.yaml")


def _start(doc: dict[str, Any]) -> tuple[FakeKube, str, str]:
    """A fine-tune after its first pass: (the fake, its name, its training Job's name)."""
    kube = FakeKube()
    create(kube, doc)
    name = doc["metadata"]["name"]
    finetune_pass(finetune_context(kube), name)
    return kube, name, names.training_job_name(name)


def _fill(kube: FakeKube, doc: dict[str, Any]) -> None:
    base = AlpacaFineTuneSpec.model_validate(doc["spec"]).base_model
    complete_job(kube, names.fill_job_name(names.cache_name(base)))


def _job(kube: FakeKube, name: str) -> dict[str, Any]:
    return kube.stored("batch/v1", "Job", name, NS)


def _patch_spec(kube: FakeKube, name: str, **spec: Any) -> None:
    obj = kube.objects[(API, "AlpacaFineTune", NS, name)]
    obj["spec"].update(spec)
    obj["metadata"]["generation"] += 1


def test_first_pass_makes_everything_but_the_job():
    kube, name, job = _start(FULL)
    ft = kube.stored(API, "AlpacaFineTune", name, NS)
    assert ft["status"]["phase"] == "Pending"
    assert reasons(ft)[cond.TRAINING] == cond.WAITING_FOR_WEIGHTS
    assert reasons(ft)[cond.SERVED] == cond.WAITING_FOR_TRAINING
    assert job not in kube.names("Job")
    cache = names.cache_name(AlpacaFineTuneSpec.model_validate(FULL["spec"]).base_model)
    assert owners(kube.stored("v1", "PersistentVolumeClaim", cache, NS)) == [
        ("AlpacaFineTune", name, False)
    ]
    output = kube.stored("v1", "PersistentVolumeClaim", names.output_pvc_name(name), NS)
    assert owners(output) == [("AlpacaFineTune", name, False)]
    assert output["spec"]["resources"]["requests"]["storage"] == "200Gi"
    controlled = [("AlpacaFineTune", name, True)]
    ranks = kube.stored("v1", "Service", names.rendezvous_service_name(name), NS)
    assert owners(ranks) == controlled and ranks["spec"]["clusterIP"] == "None"
    account = names.trainer_account_name(name)
    assert owners(kube.stored("v1", "ServiceAccount", account, NS)) == controlled
    role = kube.stored("rbac.authorization.k8s.io/v1", "Role", account, NS)
    assert owners(role) == controlled and role["rules"][0]["resourceNames"] == [name]
    assert kube.names("AlpacaModel") == []


def test_the_job_starts_once_the_base_is_filled_and_the_model_once_it_completed():
    kube, name, job = _start(FULL)
    ctx = finetune_context(kube)
    _fill(kube, FULL)
    ft, _ = finetune_pass(ctx, name)
    assert _job(kube, job)["spec"]["suspend"] is False  # no queue: it runs at once
    assert owners(_job(kube, job)) == [("AlpacaFineTune", name, True)]
    assert reasons(ft)[cond.TRAINING] == cond.WAITING_FOR_PODS

    kube.set_status("batch/v1", "Job", job, NS, {"active": 1, "ready": 1})
    ft, _ = finetune_pass(ctx, name)
    assert ft["status"]["phase"] == "Running"
    assert kube.names("AlpacaModel") == []  # not before the Job completed

    complete_job(kube, job)
    ft, _ = finetune_pass(ctx, name)
    assert ft["status"]["phase"] == "Succeeded"
    assert ft["status"]["output"] == f"pvc://{name}-output/final"
    assert reasons(ft)[cond.SUCCEEDED] == cond.TRAINING_SUCCEEDED
    assert reasons(ft)[cond.SERVED] == cond.MODEL_CREATED
    served = kube.stored(API, "AlpacaModel", "my-alpaca-7b", NS)
    assert served["spec"]["weights"]["source"] == f"pvc://{name}-output/final"
    assert served["metadata"]["labels"][names.LABEL_FINETUNE] == name
    assert owners(served) == []  # deleting the fine-tune record keeps the served model
    # and the served model owns the output it serves from, beside the fine-tune
    output = kube.stored("v1", "PersistentVolumeClaim", names.output_pvc_name(name), NS)
    assert sorted(o[0] for o in owners(output)) == ["AlpacaFineTune", "AlpacaModel"]

    writes = kube.writes
    _, outcome = finetune_pass(ctx, name)
    assert kube.writes == writes and outcome.events == []


def test_with_a_queue_the_job_is_created_suspended_and_kueue_owns_the_flag():
    kube, name, job = _start(LORA)
    ctx = finetune_context(kube)
    _fill(kube, LORA)
    ft, _ = finetune_pass(ctx, name)
    created = _job(kube, job)
    assert created["spec"]["suspend"] is True
    assert created["metadata"]["labels"][QUEUE_LABEL] == "research-gpus"
    assert reasons(ft)[cond.TRAINING] == cond.QUEUED
    assert ft["status"]["phase"] == "Suspended"

    # Kueue admits the Job by unsuspending it: the operator does not suspend it again
    kube.json_patch(
        "batch/v1", "Job", job, NS, [{"op": "replace", "path": "/spec/suspend", "value": False}]
    )
    ft, _ = finetune_pass(ctx, name)
    assert _job(kube, job)["spec"]["suspend"] is False
    assert reasons(ft)[cond.TRAINING] == cond.WAITING_FOR_PODS


def test_spec_suspend_wins_and_says_how_to_resume():
    kube, name, job = _start(FULL)
    ctx = finetune_context(kube)
    _fill(kube, FULL)
    finetune_pass(ctx, name)
    _patch_spec(kube, name, suspend=True)
    ft, _ = finetune_pass(ctx, name)
    assert _job(kube, job)["spec"]["suspend"] is True
    assert reasons(ft)[cond.TRAINING] == cond.SUSPENDED
    assert ft["status"]["phase"] == "Suspended"
    _patch_spec(kube, name, suspend=False)
    finetune_pass(ctx, name)
    assert _job(kube, job)["spec"]["suspend"] is False


def test_a_training_failure_names_the_pods_message_and_warns():
    kube, name, job = _start(LORA)
    ctx = finetune_context(kube)
    _fill(kube, LORA)
    finetune_pass(ctx, name)
    terminated_pod(kube, job, f"{job}-0-x", "torch.OutOfMemoryError: CUDA out of memory")
    fail_job(kube, job)
    ft, outcome = finetune_pass(ctx, name)
    assert ft["status"]["phase"] == "Failed"
    assert reasons(ft)[cond.TRAINING] == cond.TRAINING_FAILED
    message = next(c["message"] for c in ft["status"]["conditions"] if c["type"] == cond.TRAINING)
    assert "BackoffLimitExceeded" in message and "out of memory" in message
    assert ("Warning", cond.TRAINING_FAILED) in [(e.type, e.reason) for e in outcome.events]


def test_a_lora_result_is_served_as_an_adapter_on_the_base_weights():
    doc = example("finetune-lora.yaml")
    doc["spec"]["serve"] = {"name": "alpaca-lora"}
    kube, name, job = _start(doc)
    ctx = finetune_context(kube)
    _fill(kube, doc)
    finetune_pass(ctx, name)
    complete_job(kube, job)
    finetune_pass(ctx, name)
    served = kube.stored(API, "AlpacaModel", "alpaca-lora", NS)["spec"]
    assert served["weights"]["source"] == "hf://huggyllama/llama-7b"
    assert served["adapters"] == [{"name": name, "source": f"pvc://{name}-output/final"}]
    assert served["capacity"]["provisioner"] == "karpenter"  # the fine-tune's, by default


def test_an_invalid_spec_touches_no_child():
    doc = example("finetune.yaml")
    doc["spec"]["resources"]["nodes"] = 0
    kube = FakeKube()
    create(kube, doc)
    ft, outcome = finetune_pass(finetune_context(kube), doc["metadata"]["name"])
    assert ft["status"]["phase"] == "Failed"
    assert reasons(ft) == {cond.ACCEPTED: cond.INVALID_SPEC}
    assert [w.kind for w in kube.writes_log] == ["AlpacaFineTune"]
    assert [(e.type, e.reason) for e in outcome.events] == [("Warning", cond.INVALID_SPEC)]


def test_a_training_image_the_policy_does_not_allow_touches_no_child():
    doc = example("finetune.yaml")
    doc["spec"]["image"] = "evil.example/train:1"
    kube = FakeKube()
    create(kube, doc)
    ft, outcome = finetune_pass(finetune_context(kube), doc["metadata"]["name"])
    assert ft["status"]["phase"] == "Failed"
    assert reasons(ft) == {cond.ACCEPTED: cond.FORBIDDEN_BY_POLICY}
    assert "spec.image: image 'evil.example/train:1'" in ft["status"]["conditions"][0]["message"]
    assert [w.kind for w in kube.writes_log] == ["AlpacaFineTune"]
    assert [(e.type, e.reason) for e in outcome.events] == [("Warning", cond.FORBIDDEN_BY_POLICY)]


def test_a_succeeded_run_s_image_is_not_judged_again():
    """A tighter policy after the run (an operator upgrade) does not turn it Failed."""
    doc = example("finetune.yaml")
    doc["spec"]["image"] = "evil.example/train:1"
    kube = FakeKube()
    body = create(kube, doc)
    body["status"] = {"phase": "Succeeded", "observedGeneration": 1}
    kube.put(body)
    ft, _ = finetune_pass(finetune_context(kube), doc["metadata"]["name"])
    assert reasons(ft)[cond.ACCEPTED] == cond.SPEC_VALID


def test_each_condition_transition_is_one_event():
    """A new fine-tune's stages each get an Event; Ready, which only names the stage it waits
    for, and Accepted, true as on any valid spec, do not."""
    doc = example("finetune.yaml")
    kube = FakeKube()
    create(kube, doc)
    _, outcome = finetune_pass(finetune_context(kube), doc["metadata"]["name"])
    posted = sorted(e.reason for e in outcome.events)
    assert posted == sorted(
        [cond.FILL_PENDING, cond.WAITING_FOR_WEIGHTS, cond.NOT_FINISHED, cond.WAITING_FOR_TRAINING]
    )


def test_a_karpenter_finetune_gets_the_nodepool_its_pods_select():
    kube = FakeKube(ALL_CRDS)
    create(kube, LORA)
    name = LORA["metadata"]["name"]
    ctx = finetune_context(kube)
    finetune_pass(ctx, name)
    _fill(kube, LORA)
    finetune_pass(ctx, name)
    pod = _job(kube, names.training_job_name(name))["spec"]["template"]["spec"]
    assert kube.names("NodePool") == [pod["nodeSelector"][names.LABEL_NODEPOOL]]


def test_a_newer_operators_default_image_leaves_a_running_job_alone():
    """Every operator release moves the default training image; a Job's pod template is
    immutable, so re-applying it would be refused on every pass."""
    kube, name, job = _start(LORA)
    _fill(kube, LORA)
    finetune_pass(finetune_context(kube), name)
    before = _job(kube, job)
    upgraded = finetune_context(kube)
    upgraded.config = dataclasses.replace(upgraded.config, training_image="alpaca-training:next")
    finetune_pass(upgraded, name)  # FakeKube refuses a template change with a 422
    assert _job(kube, job)["spec"]["template"] == before["spec"]["template"]
    _patch_spec(kube, name, suspend=True)  # what a Job lets change still follows the spec
    finetune_pass(upgraded, name)
    assert _job(kube, job)["spec"]["suspend"] is True


def test_a_finished_runs_job_deleted_by_hand_is_not_run_again():
    kube, name, job = _start(LORA)
    _fill(kube, LORA)
    finetune_pass(finetune_context(kube), name)
    complete_job(kube, job)
    obj, _ = finetune_pass(finetune_context(kube), name)
    assert obj["status"]["phase"] == "Succeeded"
    del kube.objects[("batch/v1", "Job", NS, job)]  # its TTL, or a hand
    obj, outcome = finetune_pass(finetune_context(kube), name)
    assert job not in kube.names("Job")
    assert obj["status"]["phase"] == "Succeeded" and outcome.events == []
