"""Fine-tuning: the output volume, the rank Service, the trainer's least-privilege account and
the Indexed Job that runs `torchrun` with the Stanford Alpaca recipe, one pod per node."""

from __future__ import annotations

import json
from typing import Any

from alpaca_operator.api.base import API_VERSION
from alpaca_operator.api.finetune import PLURAL, AlpacaFineTuneSpec, Lora
from alpaca_operator.render import names
from alpaca_operator.render.capacity import GPU_RESOURCE, Placement
from alpaca_operator.render.security import container_security, pod_security, verbatim

OUTPUT_MOUNT = "/output"
BASE_MOUNT = "/base"
RENDEZVOUS_PORT = 29400
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
DO_NOT_DISRUPT = "karpenter.sh/do-not-disrupt"


def output_pvc(spec: AlpacaFineTuneSpec, name: str, namespace: str) -> dict[str, Any]:
    volume = spec.output.volume
    pvc_spec: dict[str, Any] = {
        "accessModes": [volume.access_mode],
        "resources": {"requests": {"storage": volume.size}},
    }
    if volume.storage_class_name:
        pvc_spec["storageClassName"] = volume.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": names.output_pvc_name(name),
            "namespace": namespace,
            "labels": names.finetune_labels(name, "output"),
        },
        "spec": pvc_spec,
    }


def rendezvous_service(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": names.rendezvous_service_name(name),
            "namespace": namespace,
            "labels": names.finetune_labels(name, "rendezvous"),
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,  # ranks must find each other before they are ready
            "selector": {"batch.kubernetes.io/job-name": names.training_job_name(name)},
            "ports": [
                {"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}
            ],
        },
    }


def trainer_rbac(name: str, namespace: str) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding: rank 0 may read and patch the status of this one
    AlpacaFineTune, and nothing else."""
    account = names.trainer_account_name(name)
    labels = names.finetune_labels(name, "trainer")
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": account, "namespace": namespace, "labels": dict(labels)},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": account, "namespace": namespace, "labels": dict(labels)},
            "rules": [
                {
                    "apiGroups": [API_VERSION.split("/")[0]],
                    "resources": [f"{PLURAL}/status"],
                    "resourceNames": [name],
                    "verbs": ["get", "patch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": account, "namespace": namespace, "labels": dict(labels)},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        },
    ]


def train_config(spec: AlpacaFineTuneSpec, base_path: str) -> dict[str, Any]:
    """The training run's configuration, as alpaca_training reads it (JSON in an env var)."""
    hp = spec.hyperparameters
    config: dict[str, Any] = {
        "modelPath": base_path,
        "dataPath": f"{OUTPUT_MOUNT}/data",
        "outputDir": OUTPUT_MOUNT,
        "method": spec.method,
        "hyperparameters": hp.to_wire() | {"learningRate": hp.effective_learning_rate(spec.method)},
        "saveSteps": spec.output.save_steps,
        "keepCheckpoints": spec.output.keep_checkpoints,
    }
    if spec.method == "lora":
        config["lora"] = (spec.lora or Lora()).to_wire()
    return config


def _torchrun(spec: AlpacaFineTuneSpec, name: str) -> list[str]:
    nodes, gpus = spec.resources.nodes, max(spec.resources.gpus, 1)
    rank0 = f"{names.training_job_name(name)}-0.{names.rendezvous_service_name(name)}"
    return [
        "torchrun",
        f"--nnodes={nodes}",
        f"--nproc-per-node={gpus}",
        "--node-rank=$(JOB_COMPLETION_INDEX)",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={rank0}:{RENDEZVOUS_PORT}",
        f"--rdzv-id={name}",
        "--max-restarts=3",
        "-m",
        "alpaca_training",
    ]


def training_job(
    spec: AlpacaFineTuneSpec,
    name: str,
    namespace: str,
    base_cache: str,
    image: str,
    weights_image: str,
    place: Placement,
    suspend: bool,
) -> dict[str, Any]:
    """The Indexed Job: one pod per node; an init container fetches the dataset to the output
    volume, then torchrun starts one process per GPU. Preemption (DisruptionTarget) does not
    count as a failure: the run resumes from its newest checkpoint."""
    res = spec.resources
    limits: dict[str, Any] = {"cpu": res.cpu, "memory": res.memory}
    if res.gpus > 0:
        limits[GPU_RESOURCE] = str(res.gpus)
    base_path = f"{BASE_MOUNT}/{base_cache}"
    mounts = [
        {"name": "output", "mountPath": OUTPUT_MOUNT},
        {"name": "base", "mountPath": base_path, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    env = [
        {
            "name": "ALPACA_TRAIN_CONFIG",
            "value": verbatim(json.dumps(train_config(spec, base_path), sort_keys=True)),
        },
        {"name": "ALPACA_FINETUNE_NAME", "value": name},
        {"name": "ALPACA_FINETUNE_NAMESPACE", "value": namespace},
        {"name": "HF_HOME", "value": "/tmp/hf"},
    ]
    fetch: dict[str, Any] = {
        "name": "dataset",
        "image": weights_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["alpaca-weights"],
        "args": [
            "fill",
            "--source",
            verbatim(spec.dataset.source),
            "--dest",
            f"{OUTPUT_MOUNT}/data",
        ],
        "volumeMounts": [
            {"name": "output", "mountPath": OUTPUT_MOUNT},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.dataset.credentials_secret:
        fetch["envFrom"] = [{"secretRef": {"name": spec.dataset.credentials_secret}}]
    trainer = {
        "name": "train",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": _torchrun(spec, name),
        "env": env,
        "ports": [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}],
        "resources": {"requests": dict(limits), "limits": dict(limits)},
        "volumeMounts": mounts,
        "securityContext": container_security(read_only_root=False),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    labels = names.finetune_labels(name, "training")
    pod: dict[str, Any] = {
        "restartPolicy": "Never",  # podFailurePolicy needs it; a new pod keeps its index and hostname
        "subdomain": names.rendezvous_service_name(name),
        "serviceAccountName": names.trainer_account_name(name),
        "securityContext": pod_security(),
        "initContainers": [fetch],
        "containers": [trainer],
        "volumes": [
            {"name": "output", "persistentVolumeClaim": {"claimName": names.output_pvc_name(name)}},
            {"name": "base", "persistentVolumeClaim": {"claimName": base_cache, "readOnly": True}},
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    if place.node_selector:
        pod["nodeSelector"] = dict(place.node_selector)
    if place.tolerations:
        pod["tolerations"] = list(place.tolerations)
    job_labels = dict(labels)
    if spec.queue_name:
        job_labels[QUEUE_LABEL] = spec.queue_name
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": names.training_job_name(name),
            "namespace": namespace,
            "labels": job_labels,
        },
        "spec": {
            "completionMode": "Indexed",
            "completions": res.nodes,
            "parallelism": res.nodes,
            "backoffLimit": 6 * res.nodes,
            "suspend": suspend,
            "podFailurePolicy": {
                "rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]
            },
            "template": {
                "metadata": {"labels": dict(labels), "annotations": {DO_NOT_DISRUPT: "true"}},
                "spec": pod,
            },
        },
    }


def served_model(
    spec: AlpacaFineTuneSpec, name: str, namespace: str, base_source: dict[str, Any]
) -> dict[str, Any] | None:
    """The AlpacaModel that serves the result (spec.serve): the full model from the output
    volume, or for lora the base weights with the adapter under the fine-tune's name."""
    serve = spec.serve
    if serve is None:
        return None
    final = f"pvc://{names.output_pvc_name(name)}/final"
    model_spec: dict[str, Any] = {
        "weights": {"source": final, "cache": {"size": spec.output.volume.size}}
    }
    if spec.method == "lora":
        model_spec = {"weights": base_source, "adapters": [{"name": name, "source": final}]}
    for key in ("resources", "capacity", "engine", "autoscaling", "head"):
        value = getattr(serve, key)
        if value is not None:
            model_spec[key] = value.to_wire()
    if "capacity" not in model_spec:
        model_spec["capacity"] = spec.capacity.to_wire()
    return {
        "apiVersion": API_VERSION,
        "kind": "AlpacaModel",
        "metadata": {
            "name": serve.name,
            "namespace": namespace,
            "labels": {names.LABEL_FINETUNE: name, "app.kubernetes.io/managed-by": names.PART_OF},
        },
        "spec": model_spec,
    }
