"""Serving: the KubeRay RayService (ray.io/v1) running the Ray Serve LLM app, and its endpoint Service."""

from __future__ import annotations

import functools
import json
from typing import Any

import yaml

from alpaca_operator.api.base import parse_duration
from alpaca_operator.api.model import AlpacaModelSpec
from alpaca_operator.render import names
from alpaca_operator.render.capacity import GPU_RESOURCE, Placement
from alpaca_operator.render.security import container_security, pod_security
from alpaca_serving import paths, usage
from alpaca_serving.config import ServingConfig

SERVE_PORT = 8000  # Ray Serve's HTTP proxy (HAProxy on the fast path): the OpenAI API
DASHBOARD_PORT = 8265  # Ray's dashboard and Jobs API (KubeRay submits the Serve config here)
METRICS_PORT = 8080  # Ray's Prometheus metrics (vLLM's among them)
HAPROXY_METRICS_PORT = 9101  # HAProxy's Prometheus metrics, on Ray Serve's fast path
MODELS_MOUNT = "/models"
RAY_CLUSTER_LABEL = "ray.io/cluster"  # KubeRay's, on every pod of a RayCluster
# None: KubeRay never starts a second RayCluster beside the first (NewCluster would need twice
# the GPUs during every change). Serve config changes (engine, adapters, autoscaling) are applied
# in place by KubeRay; see docs/decisions.md for changes to the cluster itself.
UPGRADE_STRATEGY = "None"


# KubeRay's autoscaler sidecar on the head (its default is 500m and 512Mi, reserved): it
# wakes every few seconds to compare Serve's demand with the workers.
AUTOSCALER_RESOURCES = {
    "requests": {"cpu": "100m", "memory": "256Mi"},
    "limits": {"memory": "512Mi"},
}


def _container(
    name: str,
    image: str,
    resources: dict[str, Any],
    mounts: list[dict[str, Any]],
    env: dict[str, str],
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "resources": resources,
        "volumeMounts": mounts,
        # Ray writes session files under /tmp and the image's home; vLLM compiles kernels.
        "securityContext": container_security(read_only_root=False),
    }
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    return container


def ray_env(application: dict[str, Any]) -> dict[str, str]:
    """What every Ray container of the application needs in its environment before `ray start`:
    Ray's usage stats off (alpaca_serving.usage), and Ray Serve's fast-path variables when its
    config takes that path (alpaca_serving.paths)."""
    config = ServingConfig.model_validate(application["args"])
    return {**usage.OFF, **paths.environment(paths.request_path(config), config)}


def _volumes(
    cache: str, adapter_caches: list[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The weights cache and each adapter's, read-only under /models/<cache>; shared memory."""
    volumes = [
        {"name": "weights", "persistentVolumeClaim": {"claimName": cache, "readOnly": True}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},  # NCCL / vLLM shared memory
    ]
    mounts = [
        {"name": "weights", "mountPath": model_path(cache), "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    for i, claim in enumerate(adapter_caches):
        volume = f"adapter-{i}"
        volumes.append(
            {"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
        mounts.append({"name": volume, "mountPath": model_path(claim), "readOnly": True})
    return volumes, mounts


def model_path(cache: str) -> str:
    """Where the serving pods see the weights."""
    return f"{MODELS_MOUNT}/{cache}"


def serve_config(application: dict[str, Any]) -> str:
    """KubeRay's serveConfigV2: one application, as YAML text. Every pass renders it and few
    change it: PyYAML's pure-Python emitter was 14% of the operator's busy time in a burst of
    1,000 models, so the text is remembered by the application's JSON (C-encoded; key order
    kept, as the YAML keeps it)."""
    return _serve_config(json.dumps(application))


@functools.lru_cache(maxsize=4096)
def _serve_config(application: str) -> str:
    return yaml.safe_dump({"applications": [json.loads(application)]}, sort_keys=False)


def rayservice(
    spec: AlpacaModelSpec,
    name: str,
    namespace: str,
    application: dict[str, Any],
    image: str,
    ray_version: str,
    place: Placement,
) -> dict[str, Any]:
    """The RayService: a CPU-only head (Serve controller and proxy) and one worker group whose
    pods each hold one model replica's GPUs; KubeRay's in-tree autoscaler follows Serve."""
    cache = names.cache_name(spec.weights)
    labels = names.model_labels(name, "serving")
    res = spec.resources
    worker_resources: dict[str, Any] = {"cpu": res.cpu, "memory": res.memory}
    if res.gpus > 0:
        worker_resources[GPU_RESOURCE] = str(res.gpus)
    scaling = spec.autoscaling
    adapters = [names.cache_name(a.as_weights(spec.weights)) for a in spec.adapters]
    head_volumes, head_mounts = _volumes(cache, adapters)
    worker_volumes, worker_mounts = _volumes(cache, adapters)
    # The head runs no replica: its CPU is a request only (the proxy may burst into idle CPU)
    head_resources = {
        "requests": {"cpu": spec.head.cpu, "memory": spec.head.memory},
        "limits": {"memory": spec.head.memory},
    }
    # Ray reads them in every process (controller and builder on the head, HAProxy on every
    # node, the replicas on the workers): the same on head and workers
    env = ray_env(application)
    head = _container("ray-head", image, head_resources, head_mounts, env)
    head["ports"] = [
        {"name": "gcs", "containerPort": 6379},
        {"name": "dashboard", "containerPort": DASHBOARD_PORT},
        {"name": "client", "containerPort": 10001},
        {"name": "serve", "containerPort": SERVE_PORT},
        {"name": "metrics", "containerPort": METRICS_PORT},
    ]
    worker_pod: dict[str, Any] = {
        "securityContext": pod_security(fs_group=False),
        "containers": [
            _container(
                "ray-worker",
                image,
                {"requests": dict(worker_resources), "limits": dict(worker_resources)},
                worker_mounts,
                env,
            )
        ],
        "volumes": worker_volumes,
    }
    if place.node_selector:
        worker_pod["nodeSelector"] = dict(place.node_selector)
    if place.tolerations:
        worker_pod["tolerations"] = list(place.tolerations)
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {
            "name": names.rayservice_name(name),
            "namespace": namespace,
            "labels": dict(labels),
        },
        "spec": {
            "upgradeStrategy": {"type": UPGRADE_STRATEGY},
            # how long the replaced cluster drains after the switch (KubeRay's default: 60)
            "rayClusterDeletionDelaySeconds": int(parse_duration(spec.upgrade.drain_time)),
            "serveConfigV2": serve_config(application),
            "rayClusterConfig": {
                "rayVersion": ray_version,
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": {
                    "upscalingMode": "Default",
                    "idleTimeoutSeconds": int(parse_duration(scaling.scale_to_zero_delay)),
                    "resources": AUTOSCALER_RESOURCES,
                    # KubeRay injects this sidecar with no securityContext of its own: a
                    # namespace enforcing the `restricted` Pod Security Standard refuses the
                    # whole head pod. It writes its logs beside Ray's, so its root stays writable.
                    "securityContext": container_security(read_only_root=False),
                },
                "headGroupSpec": {
                    # num-cpus 0: no model replica lands on the head; it runs Serve's controller
                    # and HTTP proxy only.
                    "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                    "template": {
                        "metadata": {"labels": dict(labels)},
                        "spec": {
                            "securityContext": pod_security(fs_group=False),
                            "containers": [head],
                            "volumes": head_volumes,
                        },
                    },
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "gpu" if res.gpus > 0 else "cpu",
                        "replicas": scaling.min_replicas,
                        "minReplicas": scaling.min_replicas,
                        "maxReplicas": scaling.max_replicas,
                        "rayStartParams": {},
                        "template": {"metadata": {"labels": dict(labels)}, "spec": worker_pod},
                    }
                ],
            },
        },
    }


def endpoint_service(name: str, namespace: str, cluster: str = "") -> dict[str, Any]:
    """A stable ClusterIP Service for the OpenAI API, independent of KubeRay's own names.
    `cluster`: the RayCluster that serves (KubeRay's active one): while a new cluster starts
    beside it, the new one's pods (whose proxies are up before its model is loaded) get no
    traffic."""
    selector = {names.LABEL_MODEL: name, "ray.io/serve": "true"}
    if cluster:
        selector[RAY_CLUSTER_LABEL] = cluster
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": names.endpoint_service_name(name),
            "namespace": namespace,
            "labels": names.model_labels(name, "endpoint"),
        },
        "spec": {
            "type": "ClusterIP",
            # Our label is on every pod of the RayService; KubeRay sets ray.io/serve=true on the
            # pods whose Serve proxy is ready, so traffic goes only to them, and only to those
            # of the serving cluster.
            "selector": selector,
            "ports": [
                {"name": "http", "port": SERVE_PORT, "targetPort": SERVE_PORT, "protocol": "TCP"}
            ],
        },
    }


def endpoint_url(name: str, namespace: str) -> str:
    return f"http://{names.endpoint_service_name(name)}.{namespace}.svc:{SERVE_PORT}"
