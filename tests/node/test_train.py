"""An AlpacaFineTune with method lora on the node: the tiny Llama and the Alpaca fixture over
HTTP, an Indexed Job of two pods running `torchrun` over gloo with rank 0 found through the
rank Service's DNS name, progress in the status, and on success the AlpacaModel it asked for,
serving the adapter as `<model>:<fine-tune>` through the endpoint Service."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from alpaca_dev import stack
from alpaca_operator.render import names
from tests.node.conftest import NODE, Cluster, isolated_namespace

pytestmark = NODE

NS = "research"
FINETUNE, SERVED = "tiny-lora", "tiny-served"
CPU_ENGINE = {
    "dtype": "bfloat16",
    "maxModelLen": 512,
    "extraArgs": {"kv_cache_memory_bytes": 268435456, "enforce_eager": True},
}


def _finetune(cluster: Cluster) -> dict[str, Any]:
    return {
        "apiVersion": "alpaca.dev/v1alpha1",
        "kind": "AlpacaFineTune",
        "metadata": {"name": FINETUNE, "namespace": NS},
        "spec": {
            "baseModel": {
                "source": f"{cluster.models_url}/tiny-llama/",
                "cache": {"size": "1Gi", "accessMode": "ReadWriteOnce"},
            },
            "dataset": {"source": f"{cluster.models_url}/alpaca-data/"},
            "method": "lora",
            "lora": {"r": 4, "alpha": 8},
            # 24 records, 4 a step (2 per rank x 2 ranks): 6 steps an epoch
            "hyperparameters": {
                "globalBatchSize": 4,
                "perDeviceBatchSize": 2,
                "epochs": 2,
                "maxLength": 128,
                "learningRate": 0.003,
            },
            "resources": {"gpus": 0, "nodes": 2, "cpu": "500m", "memory": "2Gi"},
            "output": {"volume": {"size": "1Gi", "accessMode": "ReadWriteMany"}, "saveSteps": 4},
            "serve": {
                "name": SERVED,
                "resources": {"gpus": 0, "cpu": "1", "memory": "4Gi"},
                "head": {"cpu": "300m", "memory": "3Gi"},
                "engine": CPU_ENGINE,
                "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
            },
        },
    }


@pytest.fixture(scope="module")
def namespace(cluster: Cluster) -> Iterator[str]:
    yield from isolated_namespace(cluster, NS)


def test_lora_on_two_ranks_then_served_with_its_adapter(cluster: Cluster, namespace: str):
    cp = cluster.node.cp
    cp.kubectl_run("apply", "-f", "-", input=json.dumps(_finetune(cluster)))
    done = stack.follow(
        cp, "aft", FINETUNE, NS, lambda s: s.get("phase") == "Succeeded", 1200, print
    )
    progress = done["progress"]
    assert progress["step"] == progress["totalSteps"] == 12
    assert progress["loss"] > 0
    pods = json.loads(
        cp.kubectl_run(
            "get", "pods", "-n", NS, "-l", f"{names.LABEL_FINETUNE}={FINETUNE}", "-o", "json"
        ).stdout
    )["items"]
    ranks = sorted(
        p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods
    )
    assert ranks == ["0", "1"]
    assert all(p["status"]["phase"] == "Succeeded" for p in pods)

    stack.follow(cp, "am", SERVED, NS, lambda s: s.get("phase") == "Ready", 1200, print)
    url = stack.endpoint_url(cp, SERVED, NS)
    reply = stack.chat(url, f"{SERVED}:{FINETUNE}", "Name a primary colour.", max_tokens=8)
    assert reply.model == f"{SERVED}:{FINETUNE}"
    assert reply.usage.prompt_tokens > 20  # the Alpaca preamble around the instruction
    print(cp.kubectl_run("get", "pods", "-n", NS, "-o", "wide").stdout)
    print(cp.kubectl_run("get", "am,aft", "-n", NS).stdout)
