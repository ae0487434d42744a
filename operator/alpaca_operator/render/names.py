"""The one place that knows every child's name and labels."""

from __future__ import annotations

from alpaca_operator.api.weights import Volume, Weights
from alpaca_weights import contract

PART_OF = "alpaca-operator"
LABEL_MODEL = "alpaca.dev/model"
LABEL_FINETUNE = "alpaca.dev/finetune"
LABEL_CACHE = "alpaca.dev/weights-cache"
LABEL_NODEPOOL = "alpaca.dev/nodepool"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_RAY_NODE = "ray.io/is-ray-node"  # KubeRay's, "yes" on every pod of a RayCluster
OURS = {"app.kubernetes.io/part-of": PART_OF, "app.kubernetes.io/managed-by": PART_OF}
"""What every object the operator makes carries (the watches select on managed-by)."""
# A NodePool is cluster-scoped, so it cannot carry an owner reference to its namespaced
# AlpacaModel or AlpacaFineTune: these labels name it (reconcile/triggers.py reads them back).
LABEL_OWNER_KIND = "alpaca.dev/owner-kind"
LABEL_OWNER_NAMESPACE = "alpaca.dev/owner-namespace"
LABEL_OWNER_NAME = "alpaca.dev/owner-name"
DEFAULT_ACCESS_MODE = Volume.model_fields["access_mode"].default


def weights_identity(weights: Weights) -> dict[str, object]:
    """What makes two weights the same cache (the weights CLI computes the same, from the
    shared contract)."""
    recover = weights.recover
    return contract.identity(
        weights.source,
        weights.revision,
        recover.base if recover is not None else None,
        recover.base_revision if recover is not None else None,
        weights.convert_to_safetensors,
    )


def cache_identity(weights: Weights) -> dict[str, object]:
    """What names a cache: the weights identity, plus the volume's storage class and access
    mode where the user chose other than the defaults (a PVC cannot change either, so another
    class or mode is another cache; with the defaults the identity, and so the name, is the one
    caches had before the volume counted: decision 36)."""
    ident = weights_identity(weights)
    volume = weights.cache
    if volume.storage_class_name is not None:
        ident["storageClassName"] = volume.storage_class_name
    if volume.access_mode != DEFAULT_ACCESS_MODE:
        ident["accessMode"] = volume.access_mode
    return ident


def cache_name(weights: Weights) -> str:
    """The cache PVC's name: a readable stem from the source plus a hash of the identity.

    Stable across operator restarts and releases; `weights-alpaca-7b-wdiff-1a2b3c4d5e`.
    """
    return contract.key_of(cache_identity(weights))


fill_job_name = contract.fill_job_name
fill_account_name = contract.fill_account_name


def nodepool_name(namespace: str, name: str, owner_kind: str = "AlpacaModel") -> str:
    """A cluster-scoped NodePool for a namespaced owner: namespace and name, hashed when long.
    A fine-tune's always carries the hash (and `ft`), so it never takes a model's name."""
    if owner_kind != "AlpacaModel":
        full = f"alpaca-ft-{namespace}-{name}"
        return f"{full[:52].rstrip('-')}-{contract.digest(owner_kind, namespace, name)}"
    full = f"alpaca-{namespace}-{name}"
    if len(full) <= 63:
        return full
    return f"{full[:52].rstrip('-')}-{contract.digest(namespace, name)}"


def nodepool_labels(owner_kind: str, namespace: str, name: str) -> dict[str, str]:
    """A NodePool's labels: ours, and its owner's kind, namespace and name."""
    return OURS | {
        LABEL_OWNER_KIND: owner_kind,
        LABEL_OWNER_NAMESPACE: namespace,
        LABEL_OWNER_NAME: name,
    }


def rayservice_name(name: str) -> str:
    return name


def endpoint_service_name(name: str) -> str:
    return f"{name}-openai"


def network_policy_name(name: str) -> str:
    """The NetworkPolicy guarding the model's Ray pods."""
    return f"{name}-ray"


def ray_pod_labels(name: str) -> dict[str, str]:
    """What every Ray pod of a model carries, whatever KubeRay names its RayCluster (a new name
    after each recreation): our label from the pod templates and KubeRay's own."""
    return {LABEL_MODEL: name, LABEL_RAY_NODE: "yes"}


def _labels(
    app: str, component: str, owner_label: str, owner: str, instance: bool = True
) -> dict[str, str]:
    """The labels of every child: the standard app.kubernetes.io set plus the owner's."""
    labels = {"app.kubernetes.io/name": app}
    if instance:
        labels["app.kubernetes.io/instance"] = owner
    return labels | OURS | {LABEL_COMPONENT: component, owner_label: owner}


def model_labels(name: str, component: str) -> dict[str, str]:
    return _labels("alpaca-model", component, LABEL_MODEL, name)


def cache_labels(cache: str) -> dict[str, str]:
    return _labels("alpaca-weights", "weights-cache", LABEL_CACHE, cache, instance=False)


def output_pvc_name(finetune: str) -> str:
    return f"{finetune}-output"


def training_job_name(finetune: str) -> str:
    return f"{finetune}-train"


def rendezvous_service_name(finetune: str) -> str:
    """Headless Service giving each training pod a stable DNS name (rank 0 hosts rendezvous)."""
    return f"{finetune}-ranks"


def trainer_account_name(finetune: str) -> str:
    return f"{finetune}-trainer"


def finetune_labels(name: str, component: str) -> dict[str, str]:
    return _labels("alpaca-finetune", component, LABEL_FINETUNE, name)
