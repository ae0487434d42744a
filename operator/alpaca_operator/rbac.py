"""The operator's permissions: the one source of the chart's ClusterRoles, and of the table of
what each install mode grants where (the chart's README).

Exactly what the code uses, no wildcards (every kind the operator reads it watches: its passes
read a watch-fed store, see store.py; a failed fill's pods and its credentials Secret are read
from the API, the Secret's metadata only); tests/integration/test_chart.py runs the operator
with only these rules, in both install modes, and compares them with the requests the
apiserver's audit log saw.

Two ClusterRoles, by where the objects live:
- `<release>` holds the rights on cluster-scoped kinds (nodes, NodePools, CRDs, namespaces),
  bound cluster-wide;
- `<release>-namespaced` holds the rights on the objects in the custom resources' namespaces.
  A cluster-wide install binds it with a ClusterRoleBinding; with `watchNamespaces` set it is
  bound by a RoleBinding in each watched namespace only, so it grants nothing elsewhere (kopf
  watches each namespace on its own when namespaces are given).
"""

from __future__ import annotations

from typing import Any

WATCH = ["list", "watch"]  # reads come from watches (get: the peering object, fill Secrets)
APPLY = ["create", "patch"]  # server-side apply may create

Rule = dict[str, Any]

NAMESPACED_RULES: list[Rule] = [
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
    # Failure messages of fill and training pods.
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
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
]

CLUSTER_RULES: list[Rule] = [
    # GPU capacity of existing nodes (watched: a node that comes, goes or changes its labels or
    # GPUs wakes the models on existing nodes).
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]},
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

NAMESPACE_RULES: list[Rule] = [
    # With namespaces given (watchNamespaces), kopf lists and watches namespaces to follow the
    # patterns (-n team-*) and namespaces that come and go; cluster-wide it does not.
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
]

PEERING_RULES: list[Rule] = [
    # Several replicas: kopf peering (keep-alives in a ClusterKopfPeering; the object comes
    # with the chart when replicaCount > 1, its CRD with our CRDs).
    {
        "apiGroups": ["kopf.dev"],
        "resources": ["clusterkopfpeerings"],
        "verbs": ["get", "list", "watch", "patch"],
    },
]

RULES: list[Rule] = [*NAMESPACED_RULES, *CLUSTER_RULES]
"""What a cluster-wide install of one replica grants (its two ClusterRoles together)."""


def granted(rules: list[Rule]) -> set[tuple[str, str, str]]:
    """Every (API group, resource, verb) the rules grant."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _dump(rules: list[Rule]) -> str:
    import yaml

    return yaml.safe_dump(rules, sort_keys=False, width=100)


def clusterrole_template() -> str:
    """The chart's ClusterRoles template: Helm names and labels around the generated rules."""
    header = (
        "apiVersion: rbac.authorization.k8s.io/v1\n"
        "kind: ClusterRole\n"
        "metadata:\n"
        '  name: {{ include "alpaca-operator.%s" . }}\n'
        "  labels:\n"
        '    {{- include "alpaca-operator.labels" . | nindent 4 }}\n'
        "rules:\n"
    )
    return (
        "# Generated by `make crds` from operator/alpaca_operator/rbac.py. Do not edit.\n"
        "# Rights on cluster-scoped kinds, bound cluster-wide (clusterrolebinding.yaml).\n"
        + header % "fullname"
        + _dump(CLUSTER_RULES)
        + "{{- if .Values.watchNamespaces }}\n"
        + _dump(NAMESPACE_RULES)
        + "{{- end }}\n"
        + "{{- if gt (int .Values.replicaCount) 1 }}\n"
        + _dump(PEERING_RULES)
        + "{{- end }}\n"
        "---\n"
        "# Rights in the custom resources' namespaces: bound cluster-wide when watchNamespaces is\n"
        "# empty (clusterrolebinding-namespaced.yaml), else in each watched namespace\n"
        "# (rolebinding.yaml).\n" + header % "namespacedRole" + _dump(NAMESPACED_RULES)
    )


def _row(rule: Rule, cluster_wide: str, watched: str) -> str:
    groups = ", ".join(f"`{g}`" if g else "core" for g in rule["apiGroups"])
    resources = ", ".join(rule["resources"])
    return f"| {resources} | {groups} | {', '.join(rule['verbs'])} | {cluster_wide} | {watched} |"


def table() -> str:
    """Markdown: each rule, its verbs, and where each install mode grants it."""
    rows = [
        "| resources | API group | verbs | cluster-wide install | with `watchNamespaces` |",
        "| --- | --- | --- | --- | --- |",
        *(_row(r, "all namespaces", "each watched namespace") for r in NAMESPACED_RULES),
        *(_row(r, "cluster", "cluster") for r in CLUSTER_RULES),
        *(_row(r, "not granted", "cluster") for r in NAMESPACE_RULES),
        *(_row(r, "cluster, when `replicaCount` > 1", "not granted") for r in PEERING_RULES),
    ]
    return "\n".join(rows) + "\n"


def rbac_markdown() -> str:
    """The chart's RBAC.md: what each install mode grants, and where."""
    return (
        "<!-- Generated by `make crds` from operator/alpaca_operator/rbac.py. Do not edit. -->\n"
        "# What the operator may do, by install mode\n\n"
        "Two ClusterRoles: `<release>` (cluster-scoped kinds, bound cluster-wide) and\n"
        "`<release>-namespaced` (objects in the custom resources' namespaces). A cluster-wide\n"
        "install (`watchNamespaces` empty) binds the second with a ClusterRoleBinding; with\n"
        "`watchNamespaces` set it is bound by a RoleBinding in each watched namespace named\n"
        "exactly, and grants nothing elsewhere (for a pattern's namespaces, bind it by hand:\n"
        "NOTES.txt prints the command). No wildcards; every right is used by the code\n"
        "(`tests/integration/test_chart.py` checks both modes against the apiserver's audit\n"
        "log and authorizer).\n\n" + table()
    )


def chart_files() -> dict[str, str]:
    """What `alpaca-operator crds --chart` writes into the chart, by path inside it."""
    return {"templates/clusterrole.yaml": clusterrole_template(), "RBAC.md": rbac_markdown()}
