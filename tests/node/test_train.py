"""An AlpacaFineTune with method lora on the node: the tiny Llama and the Alpaca fixture over
HTTP, an Indexed Job of two pods running `torchrun` over gloo with rank 0 found through the
rank Service's DNS name, progress in the status, and on success the AlpacaModel it asked for,
serving the adapter as `<model>:<fine-tune>` through the endpoint Service. Then a new serving
image reaches that model without an outage (issue 17): its cluster is small enough that a
second one fits beside it on this 2-CPU node, so `upgrade.strategy: Auto` starts the new one
there, and a client asking the adapter for completions all along sees no failed request."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from alpaca_dev import stack
from alpaca_dev.controlplane import wait_for
from alpaca_operator import conditions as cond
from alpaca_operator.render import names
from tests.node.conftest import NODE, Cluster, isolated_namespace
from tests.run_lock import exclusive
from tests.upgrades import Timeline, cluster_images, cluster_names, completions, model_events

pytestmark = NODE

NS = "research"
FINETUNE, SERVED = "tiny-lora", "tiny-served"
CPU_ENGINE = {
    "dtype": "bfloat16",
    "maxModelLen": 512,
    "extraArgs": {"kv_cache_memory_bytes": 268435456, "enforce_eager": True},
}
EVERY, MAX_REQUESTS = 0.5, 4800  # the upgrade's client: at most 40 minutes of requests
LOAD = 1200  # seconds a cluster may take to serve on this busy machine (vLLM's start included)


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
                # 0.6 + 0.15 + the autoscaler's 0.1 CPU: two clusters fit on the 2-CPU node
                # beside the operator and CoreDNS (0.1 each), as an upgrade with room needs
                "resources": {"gpus": 0, "cpu": "600m", "memory": "4Gi"},
                "head": {"cpu": "150m", "memory": "3Gi"},
                "engine": CPU_ENGINE,
                "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
            },
        },
    }


@pytest.fixture(scope="module")
def namespace(cluster: Cluster) -> Iterator[str]:
    yield from isolated_namespace(cluster, NS)


@pytest.fixture(scope="module")
def trained(cluster: Cluster, namespace: str) -> dict[str, Any]:
    """The fine-tune applied and followed until it succeeded: its status."""
    cp = cluster.node.cp
    cp.kubectl_run("apply", "-f", "-", input=json.dumps(_finetune(cluster)))
    return stack.follow(
        cp, "aft", FINETUNE, NS, lambda s: s.get("phase") == "Succeeded", 1200, print
    )


def test_lora_on_two_ranks_then_served_with_its_adapter(cluster: Cluster, trained):
    cp = cluster.node.cp
    progress = trained["progress"]
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


def test_a_new_image_with_room_fails_no_request(cluster: Cluster, trained, next_serving_image):
    """Auto, with room: the new cluster starts beside the serving one and takes the traffic
    once its app answers; the old one drains for the model's `upgrade.drainTime`, then KubeRay
    deletes it. The client asks for the adapter, which the new cluster loads from the
    fine-tune's volume."""
    cp = cluster.node.cp
    stack.follow(cp, "am", SERVED, NS, lambda s: s.get("phase") == "Ready", LOAD)
    (old,) = cluster_names(cp, NS)
    url = stack.endpoint_url(cp, SERVED, NS)
    # the run's lock: two clusters on the node; no serving-tier Ray start-up beside them
    with (
        exclusive("the node tier's zero-downtime upgrade"),
        completions(url, f"{SERVED}:{FINETUNE}", EVERY, MAX_REQUESTS).running() as traffic,
    ):
        traffic.wait_answers("", timeout=120)
        timeline = Timeline(cp, NS, SERVED)  # times from the change
        # 15 s of drain, not KubeRay's minute: no request of this client lasts more than one
        patch = {
            "spec": {
                "images": {"serving": next_serving_image},
                "upgrade": {"drainTime": "15s"},
            }
        }
        cp.kubectl_run("patch", "-n", NS, "am", SERVED, "--type=merge", "-p", json.dumps(patch))
        _, new, _ = timeline.until(
            lambda r, a, p: r == cond.UP_TO_DATE and a not in ("", old) and not p,
            "the new cluster serving",
            LOAD,
        )
        switched = time.monotonic()
        wait_for(lambda: cluster_names(cp, NS) == [new], f"{new} alone", 300, interval=2)
        wait_for(lambda: traffic.answered_since(time.monotonic() - 5) > 0, "answers", 60)
    print(f"zero-downtime timeline (s, Upgrading, active, pending): {timeline.steps}")
    print(f"traffic during the zero-downtime upgrade: {traffic.summary()}")
    assert not traffic.failures, traffic.summary()
    assert traffic.answered_since(switched) >= 3, traffic.summary()
    assert cond.RECREATING_WITH_OUTAGE not in timeline.reasons()
    assert timeline.clusters() == {old, new}
    assert cluster_images(cp, NS, new) == {next_serving_image}
    events = model_events(cp, NS, SERVED)  # every transition, however short
    assert cond.NEW_CLUSTER_STARTING in events and cond.RECREATING_WITH_OUTAGE not in events
