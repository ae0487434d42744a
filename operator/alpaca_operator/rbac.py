"""The operator's permissions: the one source of the chart's ClusterRole.

Exactly what the code uses, no wildcards (every kind the operator reads it watches: its passes
read a watch-fed store, see store.py; a failed fill's pods and its credentials Secret are read
from the API, the Secret's metadata only); tests/integration/test_chart.py runs the operator
with only these rules and compares them with the requests the apiserver's audit log saw.
"""

from __future__ import annotations

from typing import Any

WATCH = ["list", "watch"]  # reads come from watches (get: the peering object, fill Secrets)
APPLY = ["create", "patch"]  # server-side apply may create

RULES: list[dict[str, Any]] = [
    # The custom resources: watched (kopf writes nothing on them); an AlpacaModel is created
    # when a fine-tune serves its result.
    {"apiGroups": ["alpaca.dev"], "resources": ["alpacamodels"], "verbs": [*WATCH, *APPLY]},
    {"apiGroups": ["alpaca.dev"], "resources": ["alpacafinetunes"], "verbs": WATCH},
    {
        "apiGroups": ["alpaca.dev"],
        "resources": ["alpacamodels/status", "alpacafinetunes/status"],
        "verbs": ["patch"],
    },
    {  # granted to the trainer's Role on its own fine-tune (the escalation check, as for Jobs)
        "apiGroups": ["alpaca.dev"],
        "resources": ["alpacafinetunes/status"],
        "verbs": ["get"],
    },
    # Children name their AlpacaModel or AlpacaFineTune as owner with blockOwnerDeletion (the
    # garbage collector deletes them first): under the OwnerReferencesPermissionEnforcement
    # admission plugin (hardened clusters, OpenShift) that needs update on the owner's finalizers.
    {
        "apiGroups": ["alpaca.dev"],
        "resources": ["alpacamodels/finalizers", "alpacafinetunes/finalizers"],
        "verbs": ["update"],
    },
    # Events on the custom resources (kopf posts core/v1 Events).
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    # Weights caches, endpoint and rank Services, trainer accounts.
    {"apiGroups": [""], "resources": ["services"], "verbs": [*WATCH, *APPLY]},
    # Caches and fine-tune outputs are shared: each user is added to their owners. Under the
    # OwnerReferencesPermissionEnforcement plugin, changing an object's owners needs delete on it
    # (the garbage collector may delete it as a result); the operator itself deletes neither.
    {
        "apiGroups": [""],
        "resources": ["persistentvolumeclaims"],
        "verbs": [*WATCH, *APPLY, "delete"],
    },
    {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": [*WATCH, *APPLY]},
    # The credentials Secret a fill Job names: its resourceVersion when the Job is made, and
    # while the fill is failed, so a fixed Secret fills again (metadata only, never its data;
    # not watched: one GET, with backoff, per failed fill).
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    # Failure messages of fill and training pods; GPU capacity of existing nodes (watched:
    # a node that comes, goes or changes its labels or GPUs wakes the models on existing nodes).
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]},
    # kopf's namespace patterns (-n team-*) follow namespaces as they come and go.
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    # Fill Jobs (shared like their caches: owners change, see above) and training Jobs.
    # get: the fill Role grants it on the fill's own Job, and a Role can only grant what its
    # creator holds (RBAC's escalation check).
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", *WATCH, *APPLY, "delete"]},
    # The trainer's Role and RoleBinding (it may patch its own AlpacaFineTune's status only).
    {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["roles", "rolebindings"],
        "verbs": [*WATCH, *APPLY],
    },
    # Who may reach each model's Ray pods (the dashboard and Jobs API run any command).
    {
        "apiGroups": ["networking.k8s.io"],
        "resources": ["networkpolicies"],
        "verbs": [*WATCH, *APPLY],
    },
    # Serving: RayServices; the running RayCluster is rescaled or recreated on changes.
    {"apiGroups": ["ray.io"], "resources": ["rayservices"], "verbs": [*WATCH, *APPLY]},
    {"apiGroups": ["ray.io"], "resources": ["rayclusters"], "verbs": [*WATCH, "patch", "delete"]},
    # Capacity: NodePools, swept when their AlpacaModel is gone.
    {
        "apiGroups": ["karpenter.sh"],
        "resources": ["nodepools"],
        "verbs": [*WATCH, *APPLY, "delete"],
    },
    # Whether KubeRay and Karpenter are installed (their CRDs), to say so on the status.
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": WATCH,
    },
]


PEERING_RULES: list[dict[str, Any]] = [
    # Several replicas: kopf peering (keep-alives in a ClusterKopfPeering; the object comes
    # with the chart when replicaCount > 1, its CRD with our CRDs).
    {
        "apiGroups": ["kopf.dev"],
        "resources": ["clusterkopfpeerings"],
        "verbs": ["get", "list", "watch", "patch"],
    },
]


def clusterrole_template() -> str:
    """The chart's ClusterRole template: Helm names and labels around the generated rules."""
    import yaml

    rules = yaml.safe_dump(RULES, sort_keys=False, width=100)
    return (
        "# Generated by `make crds` from operator/alpaca_operator/rbac.py. Do not edit.\n"
        "apiVersion: rbac.authorization.k8s.io/v1\n"
        "kind: ClusterRole\n"
        "metadata:\n"
        '  name: {{ include "alpaca-operator.fullname" . }}\n'
        "  labels:\n"
        '    {{- include "alpaca-operator.labels" . | nindent 4 }}\n'
        "rules:\n"
        + rules
        + "{{- if gt (int .Values.replicaCount) 1 }}\n"
        + yaml.safe_dump(PEERING_RULES, sort_keys=False, width=100)
        + "{{- end }}\n"
    )
