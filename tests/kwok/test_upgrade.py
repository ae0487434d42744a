"""Upgrades of a serving model on simulated GPU nodes (issue 17): the real KubeRay operator
carries out what the operator decides, the real scheduler places the new cluster's pods within
what is free, and fakeray answers for Ray on KWOK's pods. A client keeps calling the model's
endpoint through the apiserver's service proxy (the endpoint Service's own selection of pods)
throughout, and what it got is the verdict: no failed request when there is room; one outage,
reported, when there is not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import kubernetes
import pytest

from alpaca_dev import fakeray, kwok
from alpaca_dev.controlplane import ControlPlane, wait_for
from alpaca_operator import conditions as cond
from alpaca_operator.render import names
from tests.kwok.support import TIMEOUT, model, wait_reason
from tests.upgrades import Timeline, Traffic, model_events

pytestmark = [pytest.mark.kwok, pytest.mark.xdist_group("kwok")]

MAX_REQUESTS, EVERY = 3000, 0.2  # the client's bound: at most 10 minutes of requests


def _traffic(api: Any, namespace: str, model_name: str) -> Traffic:
    """One request every 0.2 s to the model's endpoint Service (GET /v1/models through the
    apiserver's service proxy); fakeray's answer names the cluster that gave it."""
    service = names.endpoint_service_name(model_name)
    path = f"/api/v1/namespaces/{namespace}/services/{service}:http/proxy/v1/models"

    def call() -> str:
        method, url, headers, body, _ = api.param_serialize(
            "GET", path, header_params={"Accept": "*/*"}, auth_settings=["BearerToken"]
        )
        response = api.call_api(method, url, header_params=headers, body=body, _request_timeout=10)
        response.read()
        if response.status != 200:
            raise RuntimeError(f"{response.status} {response.data[:120]!r}")
        return str(json.loads(response.data)["cluster"])

    return Traffic(call, EVERY, MAX_REQUESTS)


def _api(cp: ControlPlane) -> Any:
    return kubernetes.config.new_client_from_config(config_file=str(cp.kubeconfig))


def _gpu_nodes(cp: ControlPlane, ns: str, count: int) -> dict[str, str]:
    labels = {"pool": ns}
    for i in range(count):
        cp.apply(kwok.node(f"{ns}-gpu-{i}", gpus=1, labels=labels))
    for i in range(count):
        kwok.wait_node_ready(cp, f"{ns}-gpu-{i}")
    return labels


def _memory_of(cp: ControlPlane, ns: str, cluster: str) -> str:
    rc = cp.get_json("raycluster", cluster, ns)
    if rc is None:
        return ""
    worker = rc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    return str(worker["resources"]["limits"]["memory"])


def _serving(cp: ControlPlane, ns: str, name: str) -> str:
    """Wait for the model to be Ready; its serving cluster."""
    wait_for(
        lambda: (cp.get_json("am", name, ns) or {}).get("status", {}).get("phase") == "Ready",
        f"AlpacaModel {name} Ready",
        TIMEOUT,
        interval=1,
    )
    rs = cp.get_json("rayservice", name, ns) or {}
    return str(rs["status"]["activeServiceStatus"]["rayClusterName"])


def _cleanup(cp: ControlPlane, ns: str, nodes: int) -> None:
    cp.kubectl_run("delete", "am", "--all", "-n", ns, "--wait=false")
    for i in range(nodes):
        cp.kubectl_run("delete", "node", f"{ns}-gpu-{i}", "--wait=false")


@contextmanager
def _served(
    cp: ControlPlane, ns: str, name: str, gpu_nodes: int, **overrides: Any
) -> Iterator[tuple[dict[str, Any], str, Traffic, Timeline]]:
    """Model `name` with one replica on `gpu_nodes` one-GPU nodes of its own, Ready with
    fakeray answering for Ray, and a client calling its endpoint that has had answers from the
    first cluster: (its manifest, that cluster, the client, the timeline). All gone after."""
    pool = _gpu_nodes(cp, ns, gpu_nodes)
    doc = model(name, **{"capacity.nodeSelector": pool, "autoscaling.maxReplicas": 1, **overrides})
    api = _api(cp)
    try:
        with fakeray.FakeRay(api, ns, kwok.POD_CIDR, load_seconds=5):
            cp.apply(doc, ns)
            first = _serving(cp, ns, name)
            with _traffic(api, ns, name).running() as traffic:
                traffic.wait_answers(first)
                yield doc, first, traffic, Timeline(cp, ns, name)
    finally:
        _cleanup(cp, ns, gpu_nodes)


def test_with_a_free_gpu_an_upgrade_moves_traffic_without_a_failed_request(
    sim: ControlPlane, namespace: str
):
    """One GPU serving, one free: each new cluster starts beside the serving one, traffic moves
    once its app runs; a second change during the upgrade converges to the newest spec, its
    cluster waiting for the GPU the superseded one held rather than exceeding what is free."""
    cp, ns = sim, namespace
    with _served(cp, ns, "up", gpu_nodes=2) as (doc, first, traffic, timeline):
        doc["spec"]["resources"]["memory"] = "40Gi"
        cp.apply(doc, ns)
        # KubeRay starts the new cluster beside the first (it names it, then makes it from the
        # spec of that moment); then a second change
        _, _, superseded = timeline.until(
            lambda r, a, p: p != "" and _memory_of(cp, ns, p) == "40Gi",
            "a new cluster starting",
            TIMEOUT,
        )
        doc["spec"]["resources"]["memory"] = "48Gi"
        cp.apply(doc, ns)
        _, final, _ = timeline.until(
            lambda r, a, p: r == cond.UP_TO_DATE and a not in ("", first) and not p,
            "the newest cluster serving",
            timeout=2 * TIMEOUT,
        )
        traffic.wait_answers(final)
        print(f"timeline (s, Upgrading, active, pending): {timeline.steps}")
        print(f"traffic: {traffic.summary()}")
        assert final != superseded
        assert _memory_of(cp, ns, final) == "48Gi"
        assert not traffic.failures, traffic.summary()
        assert traffic.answered_by(first) and traffic.answered_by(final)
        # a step can last less than the timeline's 1 s sampling here (fake Ray answers at once):
        # what happened is in the Events, one per transition
        assert cond.RECREATING_WITH_OUTAGE not in timeline.reasons()
        events = model_events(cp, ns, "up")
        assert cond.NEW_CLUSTER_STARTING in events and cond.RECREATING_WITH_OUTAGE not in events
        rs = cp.get_json("rayservice", "up", ns) or {}
        assert rs["spec"]["upgradeStrategy"] == {"type": "None"}  # at rest again
        service = cp.get_json("service", names.endpoint_service_name("up"), ns) or {}
        assert service["spec"]["selector"]["ray.io/cluster"] == final


def test_without_room_auto_waits_then_recreates_once(sim: ControlPlane, namespace: str):
    """One GPU, in use: the change waits (the serving cluster keeps its spec), then at
    capacityTimeout the serving cluster goes first; the outage is counted, not hidden."""
    cp, ns = sim, namespace
    policy = {"upgrade": {"strategy": "Auto", "capacityTimeout": "30s"}}
    with _served(cp, ns, "tight", gpu_nodes=1, **policy) as (doc, first, traffic, timeline):
        doc["spec"]["resources"]["memory"] = "40Gi"
        cp.apply(doc, ns)
        waiting = wait_reason(cp, "am", "tight", ns, cond.UPGRADING, cond.WAITING_FOR_CAPACITY)
        assert "0 fit on the 1 matching node(s)" in waiting["message"], waiting
        rs = cp.get_json("rayservice", "tight", ns) or {}
        worker = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
        assert (
            worker["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "32Gi"
        ), "while it waits, the serving cluster keeps the spec it serves"
        assert not (rs.get("status") or {}).get("pendingServiceStatus", {}).get("rayClusterName")
        _, final, _ = timeline.until(
            lambda r, a, p: r == cond.UP_TO_DATE and a not in ("", first),
            "the recreated cluster serving",
            timeout=2 * TIMEOUT,
        )
        traffic.wait_answers(final)
        print(f"timeline (s, Upgrading, active, pending): {timeline.steps}")
        print(f"traffic during a forced recreate: {traffic.summary()}")
        assert _memory_of(cp, ns, final) == "40Gi"
        events = model_events(cp, ns, "tight")  # the outage lasts under the sampling's 1 s
        assert events.count(cond.RECREATING_WITH_OUTAGE) == 1
        assert events.count(cond.WAITING_FOR_CAPACITY) == 1
