"""render/networkpolicy.py: the policy selects exactly the pods KubeRay makes from the rendered
RayService, and opens to the world only the port the endpoint Service sends to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from alpaca_operator.api import AlpacaModelSpec
from alpaca_operator.reconcile.serving import application_for
from alpaca_operator.render import capacity, names, networkpolicy, rayservice

REPO = Path(__file__).resolve().parents[3]


def _rendered(example: str) -> tuple[str, dict[str, Any]]:
    doc = yaml.safe_load((REPO / "examples" / example).read_text())
    name = doc["metadata"]["name"]
    spec = AlpacaModelSpec.model_validate(doc["spec"])
    place = capacity.placement(spec.capacity, spec.resources, "team", name)
    app = application_for(spec, "/models/x", name)
    return name, rayservice.rayservice(spec, name, "team", app, "img", "2.60.0", place)


def _kuberay_pod_labels(template: dict[str, Any], cluster: str) -> dict[str, str]:
    """What KubeRay 1.5 puts on a pod (common/pod.go labelPod): its own labels, then the
    template's (which win, but for node-type, group and cluster)."""
    return {
        "ray.io/is-ray-node": "yes",
        "ray.io/cluster": cluster,
        "app.kubernetes.io/name": "kuberay",
        "app.kubernetes.io/created-by": "kuberay-operator",
        **template["metadata"]["labels"],
    }


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def test_it_selects_every_ray_pod_of_the_model_and_no_other():
    name, rs = _rendered("alpaca-local.yaml")
    policy = networkpolicy.ray_network_policy(name, "team", ["kuberay-system"])
    cluster = rs["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]
    for template in templates:
        # after a recreation the RayCluster has another name; the selector does not care
        for cluster_name in (f"{name}-abcde", f"{name}-fghij"):
            labels = _kuberay_pod_labels(template, cluster_name)
            assert _selects(policy["spec"]["podSelector"], labels)
            assert _selects(policy["spec"]["ingress"][0]["from"][0]["podSelector"], labels)
    other = _kuberay_pod_labels(
        {"metadata": {"labels": names.model_labels("other", "serving")}}, "x"
    )
    assert not _selects(policy["spec"]["podSelector"], other)
    fill_pod = names.cache_labels("weights-x")  # not a Ray pod
    assert not _selects(policy["spec"]["podSelector"], fill_pod)


def test_only_the_serve_and_metrics_ports_are_open_to_everyone():
    name, rs = _rendered("alpaca.yaml")
    policy = networkpolicy.ray_network_policy(name, "team", ["kuberay-system", "alpaca-system"])
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    own, open_, dashboard = spec["ingress"]
    assert set(own) == {"from"}  # every port, from the model's Ray pods only
    assert "from" not in open_
    endpoint = rayservice.endpoint_service(name, "team")["spec"]["ports"][0]["targetPort"]
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    # HAProxy's metrics on Ray Serve's fast path (decision 39), not a container port of ours
    assert [p["port"] for p in open_["ports"]] == [endpoint, ports["metrics"], 9101]
    assert [p["port"] for p in dashboard["ports"]] == [ports["dashboard"]]
    assert ports["gcs"] not in [p["port"] for p in open_["ports"] + dashboard["ports"]]
    peer = dashboard["from"][0]
    assert set(peer) == {"namespaceSelector"}  # not pods of every namespace
    assert peer["namespaceSelector"]["matchExpressions"] == [
        {
            "key": "kubernetes.io/metadata.name",
            "operator": "In",
            "values": ["alpaca-system", "kuberay-system"],
        }
    ]


def test_without_dashboard_namespaces_nobody_outside_reaches_the_dashboard():
    policy = networkpolicy.ray_network_policy("m", "team", [])
    assert len(policy["spec"]["ingress"]) == 2
    assert policy["metadata"]["name"] == names.network_policy_name("m")
    assert policy["metadata"]["labels"][names.LABEL_MODEL] == "m"
    assert policy["metadata"]["labels"]["app.kubernetes.io/managed-by"] == names.PART_OF
