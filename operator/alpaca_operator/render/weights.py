"""Weights: the shared cache PersistentVolumeClaim and the Job that fills it once."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from alpaca_operator.api.weights import Weights
from alpaca_operator.render import names
from alpaca_operator.render.security import container_security, pod_security, verbatim
from alpaca_weights import contract

CACHE_MOUNT = "/cache"
FILLED_ANNOTATION = "alpaca.dev/filled"
FILL_RETRIES = 4  # downloads resume, so a retry continues where the last one stopped
FILL_TTL = 3600
"""Seconds a finished fill Job stays: a Complete one is not needed once the PVC says filled; a
Failed one is kept by the operator, which removes this from it (reconcile/cache.py), until
something that could change its outcome changes."""

# On the cache PVC.
RETRY_ANNOTATION = "alpaca.dev/retry-fill"
"""A user's request to fill a cache whose fill failed once more: any new value (the fill Job
records the value it was made under, so each value retries once)."""
GROW_REFUSED_ANNOTATION = "alpaca.dev/grow-refused"
GROW_REFUSED_MESSAGE_ANNOTATION = "alpaca.dev/grow-refused-message"
"""The size the apiserver refused to grow the PVC to, and its words: no user asks for that size,
or a smaller one, again (remove the annotation to try again, e.g. after allowing expansion)."""

# On the fill Job: what its outcome depended on when it was made.
SECRET_VERSION_ANNOTATION = "alpaca.dev/credentials-version"
"""The credentials Secret's resourceVersion ("" when it did not exist)."""
SIZE_ANNOTATION = "alpaca.dev/cache-size"
"""The cache's requested size."""


def storage_bytes(quantity: str | int) -> Decimal:
    """A storage quantity (`50Gi`, `1.5T`) in bytes, to compare sizes written differently."""
    return Decimal(parse_quantity(quantity))


def cache_pvc(weights: Weights, namespace: str) -> dict[str, Any]:
    """The cache volume, one per weights identity."""
    cache = names.cache_name(weights)
    spec: dict[str, Any] = {
        "accessModes": [weights.cache.access_mode],
        "resources": {"requests": {"storage": weights.cache.size}},
    }
    if weights.cache.storage_class_name:
        spec["storageClassName"] = weights.cache.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": cache,
            "namespace": namespace,
            "labels": names.cache_labels(cache),
            "annotations": {"alpaca.dev/source": weights.source},
        },
        "spec": spec,
    }


def _source_arg(
    uri: str, mount: str, volumes: list[dict[str, Any]], mounts: list[dict[str, Any]]
) -> str:
    """pvc://CLAIM/PATH becomes a read-only mount; every other source is passed as it is
    (verbatim: no `$(VAR)` of the container's environment is expanded into it)."""
    if not uri.startswith("pvc://"):
        return verbatim(uri)
    claim, _, path = uri.removeprefix("pvc://").partition("/")
    volume = f"src-{len(volumes)}"
    volumes.append(
        {"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
    )
    mounts.append({"name": volume, "mountPath": mount, "readOnly": True})
    return verbatim(f"{mount}/{path}".rstrip("/"))


def fill_args(
    weights: Weights, volumes: list[dict[str, Any]], mounts: list[dict[str, Any]]
) -> list[str]:
    """The weights CLI's arguments for this identity."""
    args = [
        "fill",
        "--source",
        _source_arg(weights.source, "/source", volumes, mounts),
        "--dest",
        CACHE_MOUNT,
        "--key",
        names.cache_name(weights),
    ]
    if weights.revision:
        args += ["--revision", verbatim(weights.revision)]
    if weights.recover is not None:
        args += ["--recover-base", _source_arg(weights.recover.base, "/base", volumes, mounts)]
        if weights.recover.base_revision:
            args += ["--recover-base-revision", verbatim(weights.recover.base_revision)]
        if weights.recover.expected_checksum is not None:
            args += ["--expected-checksum", repr(weights.recover.expected_checksum)]
    if weights.convert_to_safetensors:
        args.append("--to-safetensors")
    return args


def fill_rbac(cache: str, namespace: str) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding of the fill pod: it may read and annotate its own
    Job (the progress the status shows as bytes done of total), and nothing else."""
    account, job = names.fill_account_name(cache), names.fill_job_name(cache)
    labels = names.cache_labels(cache)
    meta = {"name": account, "namespace": namespace, "labels": dict(labels)}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": dict(meta)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": dict(meta),
            "rules": [
                {
                    "apiGroups": ["batch"],
                    "resources": ["jobs"],
                    "resourceNames": [job],
                    "verbs": ["get", "patch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": dict(meta),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        },
    ]


def fill_job(weights: Weights, namespace: str, image: str) -> dict[str, Any]:
    """The Job that downloads (and recovers, converts) the weights into the cache."""
    cache = names.cache_name(weights)
    volumes: list[dict[str, Any]] = [
        {"name": "cache", "persistentVolumeClaim": {"claimName": cache}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "cache", "mountPath": CACHE_MOUNT},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    args = fill_args(weights, volumes, mounts)
    container: dict[str, Any] = {
        "name": "fill",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["alpaca-weights"],
        "args": args,
        "env": [
            {"name": "HF_HOME", "value": f"{CACHE_MOUNT}/.hf"},
            {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
            # where the CLI publishes its progress (annotations on this Job)
            {"name": contract.JOB_ENV, "value": names.fill_job_name(cache)},
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
        ],
        "resources": {
            "requests": {"cpu": "1", "memory": "2Gi"},
            "limits": {"memory": "8Gi"},
        },
        "volumeMounts": mounts,
        "securityContext": container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if weights.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": weights.credentials_secret}}]
    labels = names.cache_labels(cache)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": names.fill_job_name(cache),
            "namespace": namespace,
            "labels": dict(labels),
        },
        "spec": {
            "backoffLimit": FILL_RETRIES,
            "ttlSecondsAfterFinished": FILL_TTL,
            # A failure the CLI knows a retry cannot fix (checksum, auth, not found) ends the Job.
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": "fill",
                            "operator": "In",
                            "values": [contract.EXIT_PERMANENT],
                        },
                    },
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]
            },
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": names.fill_account_name(cache),
                    "securityContext": pod_security(),
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


@dataclass
class CacheManifests:
    """A weights cache's children as its users' passes render them: the volume, the fill
    Job's account and the fill Job."""

    pvc: dict[str, Any]
    rbac: list[dict[str, Any]]
    fill_job: dict[str, Any]
    credentials_secret: str | None = None
    """The Secret the fill Job takes its environment from."""

    def all(self) -> list[dict[str, Any]]:
        return [self.pvc, *self.rbac, self.fill_job]


def cache_manifests(weights: Weights, namespace: str, image: str) -> CacheManifests:
    """Everything of the cache for `weights` in `namespace`, filled by `image`."""
    return CacheManifests(
        pvc=cache_pvc(weights, namespace),
        rbac=fill_rbac(names.cache_name(weights), namespace),
        fill_job=fill_job(weights, namespace, image),
        credentials_secret=weights.credentials_secret,
    )
