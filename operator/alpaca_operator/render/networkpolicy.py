"""Who may reach a model's Ray pods: a networking.k8s.io/v1 NetworkPolicy.

Ray's head serves its dashboard and Jobs API (8265: submit a job, i.e. run any command), GCS
(6379) and the Ray client (10001) without authentication; unguarded, any pod of the cluster can
run code in the model's pods, with its weights and credentials. The policy selects every Ray pod
of the model (head and workers) and lets in only:

- the model's own Ray pods, on every port (GCS, raylets, object transfer, Serve's replicas);
- anyone on the Serve HTTP port (the OpenAI API the endpoint Service sends to) and on the
  metrics ports, Ray's and HAProxy's on Ray Serve's fast path (read-only; Prometheus runs
  wherever the cluster keeps it);
- pods of the configured namespaces (KubeRay's, the operator's) on the dashboard port, which
  KubeRay uses to deploy the Serve application and read its status.

Ingress only: what the pods reach out to (weights, the apiserver for KubeRay's autoscaler) is
not restricted. Where no NetworkPolicy controller runs, the policy is inert (docs/decisions.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from alpaca_operator.render import names
from alpaca_operator.render.rayservice import (
    DASHBOARD_PORT,
    HAPROXY_METRICS_PORT,
    METRICS_PORT,
    SERVE_PORT,
)

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set by the apiserver on every namespace


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port} for port in ports]


def ray_network_policy(
    name: str, namespace: str, dashboard_namespaces: Iterable[str]
) -> dict[str, Any]:
    """The model's NetworkPolicy (`dashboard_namespaces`: whose pods may reach the dashboard)."""
    ray_pods = {"matchLabels": names.ray_pod_labels(name)}
    ingress: list[dict[str, Any]] = [
        {"from": [{"podSelector": {"matchLabels": names.ray_pod_labels(name)}}]},
        # no `from`: every source (nothing listens on HAProxy's port on the standard path)
        {"ports": _tcp(SERVE_PORT, METRICS_PORT, HAPROXY_METRICS_PORT)},
    ]
    allowed = sorted(set(dashboard_namespaces))
    if allowed:
        selector = {"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": allowed}
        ingress.append(
            {
                "from": [{"namespaceSelector": {"matchExpressions": [selector]}}],
                "ports": _tcp(DASHBOARD_PORT),
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": names.network_policy_name(name),
            "namespace": namespace,
            "labels": names.model_labels(name, "network-policy"),
        },
        "spec": {"podSelector": ray_pods, "policyTypes": ["Ingress"], "ingress": ingress},
    }
