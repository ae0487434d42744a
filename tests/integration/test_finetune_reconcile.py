"""AlpacaFineTune reconcile against the real apiserver: base weights from the shared cache, the
Indexed torchrun Job, a least-privilege trainer account, phases from the Job, serve on success."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from alpaca_operator.api import AlpacaFineTuneSpec
from alpaca_operator.config import OperatorConfig
from alpaca_operator.reconcile.apply import Applier
from alpaca_operator.reconcile.finetune import FineTuneContext, run_finetune
from alpaca_operator.reconcile.status import write_status
from alpaca_operator.render import names

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
NOW = datetime.datetime(2026, 11, 24, 12, 0, tzinfo=datetime.UTC)
TS = "2026-11-24T12:00:00Z"


@pytest.fixture
def ctx(kube) -> FineTuneContext:
    return FineTuneContext(
        kube, Applier(kube), OperatorConfig(training_image="alpaca-training:test")
    )


def _get(cp, ns: str, kind: str, name: str) -> dict[str, Any] | None:
    return cp.get_json(kind, name, ns)


def _pass(ctx, cp, ns: str, name: str) -> dict[str, Any]:
    body = _get(cp, ns, "alpacafinetune", name)
    write_status(ctx.kube, body, run_finetune(ctx, body, NOW).status)
    return _get(cp, ns, "alpacafinetune", name)


def _cond(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


def _status(cp, ns: str, kind: str, name: str, status: dict[str, Any]) -> None:
    cp.patch_status(kind, name, status, ns)


def _complete(cp, ns: str, job: str, **extra: Any) -> None:
    cp.complete_job(ns, job, **extra)


def _apply_example(cp, ns: str, example: str) -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "examples" / example).read_text())
    cp.kubectl_run("apply", "-n", ns, "-f", "-", input=json.dumps(doc))
    return doc


def test_full_finetune_from_weights_to_served_model(control_plane, ctx, namespace):
    cp = control_plane
    doc = _apply_example(cp, namespace, "finetune.yaml")
    name = doc["metadata"]["name"]
    cache = names.cache_name(AlpacaFineTuneSpec.model_validate(doc["spec"]).base_model)

    obj = _pass(ctx, cp, namespace, name)
    assert obj["status"]["phase"] == "Pending"
    assert _cond(obj, "Training")["reason"] == "WaitingForWeights"
    assert _get(cp, namespace, "job", names.training_job_name(name)) is None
    pvc = _get(cp, namespace, "pvc", cache)
    assert [r["kind"] for r in pvc["metadata"]["ownerReferences"]] == ["AlpacaFineTune"]
    assert (
        _get(cp, namespace, "pvc", f"{name}-output")["spec"]["resources"]["requests"]["storage"]
        == "200Gi"
    )
    svc = _get(cp, namespace, "service", f"{name}-ranks")
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True

    # Least privilege: the trainer may patch this fine-tune's status and nothing else.
    account = f"system:serviceaccount:{namespace}:{name}-trainer"

    def can(*args: str) -> bool:
        return (
            cp.kubectl_run(
                "auth", "can-i", *args, f"--as={account}", "-n", namespace, check=False
            ).stdout.strip()
            == "yes"
        )

    assert can("patch", f"alpacafinetunes.alpaca.dev/{name}", "--subresource=status")
    assert not can("patch", "alpacafinetunes.alpaca.dev/other", "--subresource=status")
    assert not can("patch", f"alpacafinetunes.alpaca.dev/{name}")
    assert not can("list", "pods")

    _complete(cp, namespace, f"{cache}-fill")
    obj = _pass(ctx, cp, namespace, name)
    job = _get(cp, namespace, "job", names.training_job_name(name))
    assert (
        job["spec"]["completionMode"],
        job["spec"]["completions"],
        job["spec"]["parallelism"],
    ) == ("Indexed", 1, 1)
    pod = job["spec"]["template"]["spec"]
    train = pod["containers"][0]
    assert train["command"][:3] == ["torchrun", "--nnodes=1", "--nproc-per-node=4"]
    assert f"--rdzv-endpoint={name}-train-0.{name}-ranks:29400" in train["command"]
    assert train["resources"]["limits"]["nvidia.com/gpu"] == "4"
    config = json.loads(
        next(e["value"] for e in train["env"] if e["name"] == "ALPACA_TRAIN_CONFIG")
    )
    assert config["method"] == "full" and config["hyperparameters"]["learningRate"] == 2e-5
    assert config["hyperparameters"]["globalBatchSize"] == 128
    assert pod["serviceAccountName"] == f"{name}-trainer"
    assert pod["initContainers"][0]["args"][:3] == [
        "fill",
        "--source",
        "s3://my-datasets/alpaca_data.json",
    ]
    assert (
        job["spec"]["template"]["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] == "true"
    )
    assert _cond(obj, "Training")["reason"] == "WaitingForPods"

    _status(
        cp,
        namespace,
        "job",
        names.training_job_name(name),
        {"active": 1, "ready": 1, "startTime": TS},
    )
    obj = _pass(ctx, cp, namespace, name)
    assert obj["status"]["phase"] == "Running"

    cp.kubectl_run(
        "patch", "-n", namespace, "aft", name, "--type=merge", "-p", '{"spec":{"suspend":true}}'
    )
    obj = _pass(ctx, cp, namespace, name)
    assert obj["status"]["phase"] == "Suspended"
    assert _get(cp, namespace, "job", names.training_job_name(name))["spec"]["suspend"] is True
    cp.kubectl_run(
        "patch", "-n", namespace, "aft", name, "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )
    _pass(ctx, cp, namespace, name)

    _complete(cp, namespace, names.training_job_name(name), active=0, ready=0, completedIndexes="0")
    obj = _pass(ctx, cp, namespace, name)
    assert obj["status"]["phase"] == "Succeeded"
    assert obj["status"]["output"] == f"pvc://{name}-output/final"
    served = _get(cp, namespace, "alpacamodel", "my-alpaca-7b")
    assert served["spec"]["weights"]["source"] == f"pvc://{name}-output/final"
    assert served["metadata"]["labels"]["alpaca.dev/finetune"] == name
    obj = _pass(ctx, cp, namespace, name)
    assert _cond(obj, "Served")["status"] == "True"
    owners = {
        r["kind"]
        for r in _get(cp, namespace, "pvc", f"{name}-output")["metadata"]["ownerReferences"]
    }
    assert owners == {"AlpacaFineTune", "AlpacaModel"}  # the served model keeps its weights


def test_lora_queue_label_and_failure_reason(control_plane, ctx, namespace):
    cp = control_plane
    doc = _apply_example(cp, namespace, "finetune-lora.yaml")
    name = doc["metadata"]["name"]
    cache = names.cache_name(AlpacaFineTuneSpec.model_validate(doc["spec"]).base_model)
    _pass(ctx, cp, namespace, name)
    _complete(cp, namespace, f"{cache}-fill")
    _pass(ctx, cp, namespace, name)
    job_name = names.training_job_name(name)
    job = _get(cp, namespace, "job", job_name)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "research-gpus"
    config = json.loads(
        next(
            e["value"]
            for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
            if e["name"] == "ALPACA_TRAIN_CONFIG"
        )
    )
    assert config["method"] == "lora" and config["hyperparameters"]["learningRate"] == 3e-4
    assert config["lora"] == {
        "r": 8,
        "alpha": 16,
        "dropout": 0.05,
        "targetModules": ["q_proj", "v_proj"],
    }
    # With a queue the Job is created suspended: Kueue admits it by unsuspending, and the
    # operator does not fight that.
    assert job["spec"]["suspend"] is True
    obj = _pass(ctx, cp, namespace, name)
    assert _cond(obj, "Training")["reason"] == "Queued"
    cp.kubectl_run(
        "patch",
        "-n",
        namespace,
        "job",
        job_name,
        "--type=merge",
        "-p",
        '{"spec":{"suspend":false}}',
    )
    obj = _pass(ctx, cp, namespace, name)
    assert _get(cp, namespace, "job", job_name)["spec"]["suspend"] is False
    assert _cond(obj, "Training")["reason"] == "WaitingForPods"

    cp.kubectl_run("create", "serviceaccount", "default", "-n", namespace)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{job_name}-0-x", "labels": {"job-name": job_name}},
        "spec": {  # what the `restricted` namespace admits, as the rendered template is
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "train",
                    "image": "x",
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    cp.kubectl_run("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))
    _status(
        cp,
        namespace,
        "pod",
        f"{job_name}-0-x",
        {
            "containerStatuses": [
                {
                    "name": "train",
                    "image": "x",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 6,
                    "state": {
                        "terminated": {
                            "exitCode": 1,
                            "message": "torch.OutOfMemoryError: CUDA out of memory",
                        }
                    },
                }
            ]
        },
    )
    failed = {
        "type": "Failed",
        "status": "True",
        "reason": "BackoffLimitExceeded",
        "message": "Job has reached the specified backoff limit",
        "lastTransitionTime": TS,
        "lastProbeTime": TS,
    }
    _status(
        cp,
        namespace,
        "job",
        job_name,
        {"failed": 7, "startTime": TS, "conditions": [{**failed, "type": "FailureTarget"}, failed]},
    )
    obj = _pass(ctx, cp, namespace, name)
    assert obj["status"]["phase"] == "Failed"
    training = _cond(obj, "Training")
    assert training["reason"] == "TrainingFailed"
    assert "BackoffLimitExceeded" in training["message"] and "out of memory" in training["message"]
