"""The apiserver rejects bad specs with a message that names the offending field.

Every case goes through the real `kubectl apply -f` against the real kube-apiserver with our
generated CRDs; the assertion is on the field path in the error.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.cluster

MODEL = {"weights": {"source": "hf://org/model"}}
FINETUNE = {
    "baseModel": {"source": "hf://org/base"},
    "dataset": {"source": "s3://data/alpaca.json"},
}


def _with(base: dict[str, Any], **paths: Any) -> dict[str, Any]:
    """A copy of base with dotted paths set (a value of None deletes)."""
    spec = copy.deepcopy(base)
    for dotted, value in paths.items():
        *parents, leaf = dotted.split("__")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return spec


CASES = [
    # (id, kind, spec, field path in the error, words from the message)
    ("no-weights", "AlpacaModel", {}, "spec.weights", "Required value"),
    (
        "bad-scheme",
        "AlpacaModel",
        _with(MODEL, weights__source="ftp://host/m"),
        "spec.weights.source",
        "should match",
    ),
    (
        "typo-field",
        "AlpacaModel",
        _with(MODEL, weights__sourc="hf://x/y"),
        "spec.weights.sourc",
        "unknown field",
    ),
    (
        "min-gt-max",
        "AlpacaModel",
        _with(MODEL, autoscaling={"minReplicas": 3, "maxReplicas": 2}),
        "spec.autoscaling.minReplicas",
        "less than or equal to maxReplicas",
    ),
    (
        "negative-min",
        "AlpacaModel",
        _with(MODEL, autoscaling={"minReplicas": -1}),
        "spec.autoscaling.minReplicas",
        "greater than or equal to 0",
    ),
    (
        "bad-delay",
        "AlpacaModel",
        _with(MODEL, autoscaling={"scaleToZeroDelay": "soon"}),
        "spec.autoscaling.scaleToZeroDelay",
        "should match",
    ),
    (
        "drain-over-a-day",
        "AlpacaModel",
        _with(MODEL, upgrade={"drainTime": "25h"}),
        "spec.upgrade.drainTime",
        "between 10s and 24h",
    ),
    (
        "too-many-gpus",
        "AlpacaModel",
        _with(MODEL, resources={"gpus": 17}),
        "spec.resources.gpus",
        "less than or equal to 16",
    ),
    (
        "bad-memory",
        "AlpacaModel",
        _with(MODEL, resources={"memory": "lots"}),
        "spec.resources.memory",
        "should match",
    ),
    (
        "credentials-in-weights-url",
        "AlpacaModel",
        _with(MODEL, weights__source="https://user:hunter2@models.example/alpaca/"),
        "spec.weights.source",
        "must not carry credentials",
    ),
    (
        "credentials-in-recover-base",
        "AlpacaModel",
        _with(MODEL, weights__recover={"base": "s3://AKIAKEY:secret@bucket/llama-7b"}),
        "spec.weights.recover.base",
        "credentialsSecret names",
    ),
    (
        "credentials-in-adapter-url",
        "AlpacaModel",
        _with(MODEL, adapters=[{"name": "a", "source": "https://token@host.example/a/"}]),
        "spec.adapters[0].source",
        "must not carry credentials",
    ),
    (
        "credentials-in-dataset-url",
        "AlpacaFineTune",
        _with(FINETUNE, dataset__source="https://u:p@data.example/alpaca.json"),
        "spec.dataset.source",
        "must not carry credentials",
    ),
    (
        "head-too-small",
        "AlpacaModel",
        _with(MODEL, head={"memory": "2Gi"}),
        "spec.head.memory",
        "at least 3Gi",
    ),
    (
        "head-too-small-int",
        "AlpacaModel",
        _with(MODEL, head={"memory": 2147483648}),
        "spec.head.memory",
        "at least 3Gi",
    ),
    (
        "served-head-too-small",
        "AlpacaFineTune",
        _with(FINETUNE, serve={"name": "tuned", "head": {"memory": "1500Mi"}}),
        "spec.serve.head.memory",
        "at least 3Gi",
    ),
    (
        "gpu-type-no-gpu",
        "AlpacaModel",
        _with(MODEL, resources={"gpus": 0, "gpuType": "NVIDIA-L4"}),
        "spec.resources.gpuType",
        "gpuType needs gpus",
    ),
    (
        "gpu-mem-util",
        "AlpacaModel",
        _with(MODEL, engine={"gpuMemoryUtilization": 1.5}),
        "spec.engine.gpuMemoryUtilization",
        "less than or equal to 1",
    ),
    (
        "bad-dtype",
        "AlpacaModel",
        _with(MODEL, engine={"dtype": "int3"}),
        "spec.engine.dtype",
        "Unsupported value",
    ),
    (
        "tp-gt-gpus",
        "AlpacaModel",
        _with(MODEL, resources={"gpus": 2}, engine={"tensorParallelSize": 4}),
        "spec.engine.tensorParallelSize",
        "must not exceed resources.gpus",
    ),
    (
        "custom-without-template",
        "AlpacaModel",
        _with(MODEL, prompt={"template": "custom"}),
        "spec.prompt.custom",
        "prompt.custom is required",
    ),
    (
        "template-with-custom",
        "AlpacaModel",
        _with(MODEL, prompt={"template": "alpaca", "custom": "{{x}}"}),
        "spec.prompt.custom",
        "only allowed",
    ),
    (
        "karpenter-without-settings",
        "AlpacaModel",
        _with(MODEL, capacity={"provisioner": "karpenter"}),
        "spec.capacity.karpenter",
        "nodeClassRef",
    ),
    (
        "karpenter-settings-on-existing",
        "AlpacaModel",
        _with(MODEL, capacity={"karpenter": {"nodeClassRef": {"name": "gpu"}}}),
        "spec.capacity.karpenter",
        "only used with provisioner: karpenter",
    ),
    (
        "bad-provisioner",
        "AlpacaModel",
        _with(MODEL, capacity={"provisioner": "gke"}),
        "spec.capacity.provisioner",
        "Unsupported value",
    ),
    (
        "bad-capacity-type",
        "AlpacaModel",
        _with(
            MODEL,
            capacity={
                "provisioner": "karpenter",
                "karpenter": {"nodeClassRef": {"name": "gpu"}, "capacityTypes": ["cheap"]},
            },
        ),
        "spec.capacity.karpenter.capacityTypes[0]",
        "Unsupported value",
    ),
    (
        "duplicate-adapters",
        "AlpacaModel",
        _with(
            MODEL,
            adapters=[{"name": "a", "source": "s3://b/a"}, {"name": "a", "source": "s3://b/c"}],
        ),
        "spec.adapters[1]",
        "Duplicate value",
    ),
    (
        "bad-adapter-name",
        "AlpacaModel",
        _with(MODEL, adapters=[{"name": "Bad_Name", "source": "s3://b/a"}]),
        "spec.adapters[0].name",
        "should match",
    ),
    (
        "bad-access-mode",
        "AlpacaModel",
        _with(MODEL, weights__cache={"accessMode": "ReadOnlyMany"}),
        "spec.weights.cache.accessMode",
        "Unsupported value",
    ),
    (
        "bad-secret-name",
        "AlpacaModel",
        _with(MODEL, weights__credentialsSecret="My Secret"),
        "spec.weights.credentialsSecret",
        "should match",
    ),
    (
        "no-dataset",
        "AlpacaFineTune",
        _with(FINETUNE, dataset=None),
        "spec.dataset",
        "Required value",
    ),
    (
        "lora-with-full",
        "AlpacaFineTune",
        _with(FINETUNE, method="full", lora={"r": 16}),
        "spec.lora",
        "only allowed with method: lora",
    ),
    (
        "bad-method",
        "AlpacaFineTune",
        _with(FINETUNE, method="qlora"),
        "spec.method",
        "Unsupported value",
    ),
    (
        "batch-not-multiple",
        "AlpacaFineTune",
        _with(FINETUNE, hyperparameters={"globalBatchSize": 100, "perDeviceBatchSize": 8}),
        "spec.hyperparameters.globalBatchSize",
        "multiple of perDeviceBatchSize",
    ),
    (
        "zero-lr",
        "AlpacaFineTune",
        _with(FINETUNE, hyperparameters={"learningRate": 0}),
        "spec.hyperparameters.learningRate",
        "greater than 0",
    ),
    (
        "warmup-ratio",
        "AlpacaFineTune",
        _with(FINETUNE, hyperparameters={"warmupRatio": 2}),
        "spec.hyperparameters.warmupRatio",
        "less than or equal to 1",
    ),
    (
        "bad-format",
        "AlpacaFineTune",
        _with(FINETUNE, dataset={"source": "s3://d/x.json", "format": "sharegpt"}),
        "spec.dataset.format",
        "Unsupported value",
    ),
    (
        "zero-nodes",
        "AlpacaFineTune",
        _with(FINETUNE, resources={"nodes": 0}),
        "spec.resources.nodes",
        "greater than or equal to 1",
    ),
]


def _doc(kind: str, name: str, spec: dict[str, Any]) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "alpaca.dev/v1alpha1",
            "kind": kind,
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        }
    )


@pytest.mark.parametrize(
    ("name", "kind", "spec", "field", "words"), CASES, ids=[c[0] for c in CASES]
)
def test_rejected_naming_the_field(control_plane, name, kind, spec, field, words):
    result = control_plane.kubectl_run(
        "apply", "-f", "-", input=_doc(kind, f"bad-{name}", spec), check=False
    )
    assert result.returncode != 0, f"accepted: {result.stdout}"
    assert field in result.stderr, result.stderr
    assert words in result.stderr, result.stderr


def test_case_table_is_wide():
    assert len(CASES) >= 15


def test_immutable_fields_of_a_finetune(control_plane):
    control_plane.kubectl_run(
        "apply", "-f", "-", input=_doc("AlpacaFineTune", "immutable", FINETUNE)
    )
    try:
        changed = _with(FINETUNE, baseModel__source="hf://org/other")
        result = control_plane.kubectl_run(
            "apply", "-f", "-", input=_doc("AlpacaFineTune", "immutable", changed), check=False
        )
        assert result.returncode != 0
        assert "spec.baseModel" in result.stderr
        assert "cannot change once created" in result.stderr
        # What may change still can: suspend.
        control_plane.kubectl_run(
            "apply",
            "-f",
            "-",
            input=_doc("AlpacaFineTune", "immutable", _with(FINETUNE, suspend=True)),
        )
    finally:
        control_plane.kubectl_run("delete", "aft", "immutable", "--wait=false")
