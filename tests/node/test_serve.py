"""The user's path on a real node: `helm install` (the operator runs as a pod from its image),
`kubectl apply -f examples/alpaca-local.yaml` (the fill Job's pod fills the cache from an HTTP
source, KubeRay starts a head and a worker pod running the rendered serveConfigV2 app on vLLM),
Ready from what the pods report, a chat answer through the endpoint Service's ClusterIP with the
Alpaca template applied; then a spec change applied in place, a new serving image with no room
for a second cluster (a recreate, its outage counted), and a deletion that keeps the shared
cache while another user holds it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from transformers import AutoTokenizer

from alpaca_dev import stack
from alpaca_dev.controlplane import wait_for
from alpaca_dev.node import NODE_NAME
from alpaca_operator import conditions as cond
from alpaca_operator.api.weights import Weights
from alpaca_operator.render import names
from alpaca_serving.templates import alpaca_prompt
from tests.node.conftest import NODE, Cluster, isolated_namespace
from tests.run_lock import exclusive
from tests.upgrades import Timeline, cluster_images, cluster_names, completions, model_events

pytestmark = NODE

NS = "users"
MODEL = "smollm2"
QUESTION = "What is the capital of France?"
EVERY, MAX_REQUESTS = 0.5, 4800  # the upgrade's client: at most 40 minutes of requests


def _pods(cluster: Cluster, selector: str) -> list[dict[str, Any]]:
    out = cluster.node.cp.kubectl_run("get", "pods", "-n", NS, "-l", selector, "-o", "json")
    return json.loads(out.stdout)["items"]


@pytest.fixture(scope="module")
def namespace(cluster: Cluster) -> Iterator[str]:
    yield from isolated_namespace(cluster, NS)


@pytest.fixture(scope="module")
def ready(cluster: Cluster, namespace: str) -> Iterator[dict[str, Any]]:
    """examples/alpaca-local.yaml applied (its source: the model over HTTP), followed to Ready."""
    cp = cluster.node.cp
    doc = stack.example(
        "alpaca-local.yaml", **{"weights.source": f"{cluster.models_url}/SmolLM2-135M-Instruct/"}
    )
    applied = time.monotonic()
    cp.kubectl_run("apply", "-n", NS, "-f", "-", input=json.dumps(doc))
    status = stack.follow(
        cp, "alpacamodel", MODEL, NS, lambda s: s.get("phase") == "Ready", 1200, print
    )
    print(f"apply -> Ready: {time.monotonic() - applied:.0f}s")
    print(cp.kubectl_run("get", "pods", "-A", "-o", "wide").stdout)
    print(cp.kubectl_run("get", "am,aft", "-A").stdout)
    yield status


def test_the_operator_runs_from_its_image_as_the_charts_account(cluster: Cluster):
    pods = json.loads(
        cluster.node.cp.kubectl_run(
            "get", "pods", "-n", stack.OPERATOR_NAMESPACE, "-o", "json"
        ).stdout
    )["items"]
    (pod,) = pods
    assert pod["spec"]["serviceAccountName"] == stack.RELEASE
    assert pod["spec"]["containers"][0]["image"] == cluster.images["operator"].ref
    assert pod["spec"]["nodeName"] == NODE_NAME
    assert all(c["ready"] for c in pod["status"]["containerStatuses"])


def test_a_fill_that_cannot_succeed_fails_with_the_clis_reason(cluster: Cluster, namespace):
    """A source that does not exist: the fill pod's CLI exits 3, the Job's podFailurePolicy
    fails the Job at once, and the CLI's reason becomes the model's status. The source reaches
    the CLI as written: the kubelet expands `$(VAR)` in args from the container's environment
    (a Secret's token, with credentials), and the fill container has POD_NAMESPACE."""
    cp = cluster.node.cp
    source = f"{cluster.models_url}/no-such-model-$(POD_NAMESPACE)/"
    doc = stack.example("alpaca-local.yaml", **{"weights.source": source})
    doc["metadata"]["name"] = "missing"
    cp.kubectl_run("apply", "-n", NS, "-f", "-", input=json.dumps(doc))
    status = stack.follow(
        cp, "am", "missing", NS, lambda s: s.get("phase") == "Failed", 300, fail_on_failed=False
    )
    weights = next(c for c in status["conditions"] if c["type"] == "WeightsReady")
    assert weights["reason"] == "SourceNotFound", weights
    assert "no-such-model-$(POD_NAMESPACE)" in weights["message"], weights
    assert f"no-such-model-{NS}" not in weights["message"], weights
    cp.kubectl_run("delete", "-n", NS, "am", "missing", "--wait=true", timeout=120)


def test_the_model_is_ready_from_what_its_pods_report(cluster: Cluster, ready):
    conditions = {c["type"]: c["status"] for c in ready["conditions"]}
    assert conditions == {
        **dict.fromkeys(
            ("Accepted", "CapacityReady", "WeightsReady", "ServingReady", "Ready"), "True"
        ),
        "Upgrading": "False",  # no upgrade runs
    }
    fill = _pods(cluster, names.LABEL_CACHE)
    assert [p["status"]["phase"] for p in fill] == ["Succeeded"]
    assert fill[0]["spec"]["containers"][0]["image"] == cluster.images["weights"].ref
    serving = _pods(cluster, f"{names.LABEL_MODEL}={MODEL},ray.io/node-type")
    kinds = sorted(p["metadata"]["labels"]["ray.io/node-type"] for p in serving)
    assert kinds == ["head", "worker"]
    for pod in serving:
        assert pod["status"]["phase"] == "Running" and pod["spec"]["nodeName"] == NODE_NAME
        assert pod["spec"]["containers"][0]["image"] == cluster.images["serving-cpu"].ref


def test_chat_through_the_cluster_ip_uses_the_alpaca_template(cluster: Cluster, ready):
    url = stack.endpoint_url(cluster.node.cp, MODEL, NS)
    reply = stack.chat(url, MODEL, QUESTION)
    answer = reply.choices[0].message.content or ""
    print(f"user: {QUESTION}\nassistant: {answer}")
    assert "Paris" in answer
    tokenizer = AutoTokenizer.from_pretrained(cluster.smollm2)
    prompt = len(tokenizer(alpaca_prompt(QUESTION), add_special_tokens=False)["input_ids"])
    assert reply.usage.prompt_tokens in (prompt, prompt + 1)


def test_a_spec_change_applies_without_a_second_ray_cluster(cluster: Cluster, ready):
    cp = cluster.node.cp
    (before,) = cp.items("rayclusters", NS)
    patch = {"spec": {"autoscaling": {"maxReplicas": 2}}}
    cp.kubectl_run("patch", "-n", NS, "am", MODEL, "--type=merge", "-p", json.dumps(patch))

    def rescaled() -> dict[str, Any] | None:
        clusters = cp.items("rayclusters", NS)
        assert len(clusters) == 1, "a second RayCluster"
        group = clusters[0]["spec"]["workerGroupSpecs"][0]
        return clusters[0] if group["maxReplicas"] == 2 else None

    after = wait_for(rescaled, "the worker group's maxReplicas to become 2", 180)
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    stack.follow(cp, "alpacamodel", MODEL, NS, lambda s: s.get("phase") == "Ready", 300)


def test_a_new_image_without_room_recreates_once_and_counts_the_outage(
    cluster: Cluster, ready, next_serving_image
):
    """The example's cluster (1.6 CPU) leaves no room for a second on this 2-CPU node. Under
    `upgrade.strategy: Auto` the new cluster's pods wait for the scheduler while the running
    one keeps serving; after capacityTimeout the running one is deleted to make room (an
    outage, said as RecreatingWithOutage) and the new one serves. One recreate, no deadlock;
    the failed requests of a client calling all along are counted and printed."""
    cp = cluster.node.cp
    (old,) = cluster_names(cp, NS)
    url = stack.endpoint_url(cp, MODEL, NS)
    # the run's lock: a cluster loads beside one serving; no serving-tier Ray start-up
    with (
        exclusive("the node tier's recreate"),
        completions(url, MODEL, EVERY, MAX_REQUESTS).running() as traffic,
    ):
        traffic.wait_answers("", timeout=120)
        timeline = Timeline(cp, NS, MODEL)  # times from the change
        patch = {
            "spec": {
                "images": {"serving": next_serving_image},
                "upgrade": {"capacityTimeout": "1m"},
            }
        }
        cp.kubectl_run("patch", "-n", NS, "am", MODEL, "--type=merge", "-p", json.dumps(patch))
        _, new, _ = timeline.until(
            lambda r, a, p: r == cond.UP_TO_DATE and a not in ("", old) and not p,
            "the recreated cluster serving",
            1200,
        )
        back = time.monotonic()
        wait_for(lambda: traffic.answered_since(back) >= 3, "answers after the recreate", 120)
    failed = [at for at, _ in traffic.failures]
    outage = f"{max(failed) - min(failed):.0f}s" if failed else "none"
    print(f"recreate timeline (s, Upgrading, active, pending): {timeline.steps}")
    print(f"traffic during the recreate: {traffic.summary()}; outage {outage}")
    waiting, recreating = (
        timeline.at(cond.WAITING_FOR_CAPACITY),
        timeline.at(cond.RECREATING_WITH_OUTAGE),
    )
    assert waiting < recreating < float("inf"), timeline.steps
    # the running cluster served while the new one waited for room
    waited = [at for at, _ in traffic.answers if waiting <= at < recreating - 5]
    assert len(waited) >= 3, traffic.summary()
    assert failed, f"a recreate with no failed request: {traffic.summary()}"
    assert timeline.clusters() == {old, new}  # one new cluster: no second attempt
    assert cluster_names(cp, NS) == [new]
    assert cluster_images(cp, NS, new) == {next_serving_image}
    events = model_events(cp, NS, MODEL)
    assert events.count(cond.RECREATING_WITH_OUTAGE) == 1, events
    stack.follow(cp, "alpacamodel", MODEL, NS, lambda s: s.get("phase") == "Ready", 300)


def test_deleting_the_model_keeps_the_cache_another_user_holds(cluster: Cluster, ready):
    cp = cluster.node.cp
    source = f"{cluster.models_url}/SmolLM2-135M-Instruct/"
    weights = stack.example("alpaca-local.yaml")["spec"]["weights"] | {"source": source}
    cache = names.cache_name(Weights.model_validate(weights))
    holder = {
        "apiVersion": "alpaca.dev/v1alpha1",
        "kind": "AlpacaFineTune",
        "metadata": {"name": "holds-the-cache", "namespace": NS},
        "spec": {
            "baseModel": weights,
            "dataset": {"source": f"{cluster.models_url}/alpaca-data/"},
            "method": "lora",
            "resources": {"gpus": 0, "cpu": "500m", "memory": "2Gi"},
            "suspend": True,
        },
    }
    cp.kubectl_run("apply", "-f", "-", input=json.dumps(holder))

    def held() -> bool:
        owners = (cp.get_json("pvc", cache, NS) or {}).get("metadata", {}).get("ownerReferences")
        return {o["kind"] for o in owners or []} == {"AlpacaModel", "AlpacaFineTune"}

    wait_for(held, "the fine-tune to hold the cache too", 120)
    cp.kubectl_run("delete", "-n", NS, "am", MODEL, "--wait=true", timeout=300)
    wait_for(
        lambda: not _pods(cluster, f"{names.LABEL_MODEL}={MODEL}"), "the model's pods to go", 300
    )
    pvc = cp.get_json("pvc", cache, NS)
    assert pvc is not None and pvc["metadata"].get("deletionTimestamp") is None
    owners = [o["kind"] for o in pvc["metadata"]["ownerReferences"]]
    assert owners == ["AlpacaFineTune"]
    cp.kubectl_run("delete", "-n", NS, "aft", "holds-the-cache", "--wait=true", timeout=300)
    wait_for(lambda: cp.get_json("pvc", cache, NS) is None, "the cache to go", 300)
