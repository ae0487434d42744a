"""The Helm chart as Helm sees it: lint, templates per install mode (least privilege: the
RBAC by install mode, no wildcards), generated files, values that fail on typos, the dashboard.
Installing it and running the operator under its RBAC: test_chart_rbac.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from alpaca_operator.rbac import (
    CLUSTER_RULES,
    NAMESPACE_RULES,
    NAMESPACED_RULES,
    PEERING_RULES,
    chart_files,
)

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "alpaca-operator"
RELEASE, NS = "alpaca-operator", "alpaca-system"


def _helm() -> str:
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "thirdparty.sh"), "helm"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]


def _template(*values: str, namespace: str = NS) -> dict[tuple[str, str, str], Any]:
    """`helm template` with `--set` values: the objects by kind, namespace and name."""
    out = subprocess.run(
        [_helm(), "template", RELEASE, str(CHART), "-n", namespace, *values],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {
        (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d
        for d in yaml.safe_load_all(out)
        if d
    }


def _bindings(docs: dict[tuple[str, str, str], Any]) -> set[tuple[str, str, str]]:
    """Each binding's kind, namespace and ClusterRole."""
    return {
        (kind, ns, doc["roleRef"]["name"])
        for (kind, ns, _), doc in docs.items()
        if kind in ("ClusterRoleBinding", "RoleBinding")
    }


def test_chart_rbac_by_install_mode():
    """Cluster-wide: both ClusterRoles bound cluster-wide, no namespaces right (kopf lists none).
    With watchNamespaces: the namespaced ClusterRole bound in each namespace named exactly and
    nowhere else (a pattern's namespaces cannot be known), namespaces list/watch for kopf."""
    namespaced = f"{RELEASE}-namespaced"
    everywhere = _template()
    assert everywhere[("ClusterRole", "", RELEASE)]["rules"] == CLUSTER_RULES
    assert everywhere[("ClusterRole", "", namespaced)]["rules"] == NAMESPACED_RULES
    assert _bindings(everywhere) == {
        ("ClusterRoleBinding", "", RELEASE),
        ("ClusterRoleBinding", "", namespaced),
    }
    scoped = _template("--set", "watchNamespaces={team-a,team-b,ml-*,!ml-x}")
    assert scoped[("ClusterRole", "", RELEASE)]["rules"] == CLUSTER_RULES + NAMESPACE_RULES
    assert scoped[("ClusterRole", "", namespaced)]["rules"] == NAMESPACED_RULES
    assert _bindings(scoped) == {
        ("ClusterRoleBinding", "", RELEASE),
        ("RoleBinding", "team-a", namespaced),
        ("RoleBinding", "team-b", namespaced),
    }
    binding = scoped[("RoleBinding", "team-a", RELEASE)]
    assert binding["roleRef"]["kind"] == "ClusterRole"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NS}]
    for docs in (everywhere, scoped):
        for (kind, _, _), doc in docs.items():
            for rule in doc.get("rules", []) if kind == "ClusterRole" else []:
                assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
    notes = subprocess.run(
        [
            *(_helm(), "install", RELEASE, str(CHART), "-n", NS, "--dry-run=client"),
            *("--set", "watchNamespaces={team-a,ml-*}"),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert f"--clusterrole={namespaced}" in notes and "ml-*" in notes  # how to bind a pattern's


def test_chart_lints_and_renders_least_privilege():
    helm = _helm()
    lint = subprocess.run([helm, "lint", "--strict", str(CHART)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    out = subprocess.run(
        [helm, "template", RELEASE, str(CHART), "-n", NS, "--set", "watchNamespaces={team-*}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out) if d}
    pod = docs[("Deployment", RELEASE)]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "--namespace=team-*" in container["args"]
    # the Ray dashboards' NetworkPolicies let in KubeRay's namespace and the operator's; no image
    # prefix beyond the default images' repositories, no remote code, unless set
    assert [a for a in container["args"] if a.startswith("--ray-dashboard-namespace")] == [
        "--ray-dashboard-namespace=kuberay-system",
        f"--ray-dashboard-namespace={NS}",
    ]
    assert not [a for a in container["args"] if a.startswith(("--allowed-image", "--allow-remote"))]
    policy = subprocess.run(
        [
            *(helm, "template", RELEASE, str(CHART), "-n", NS),
            *("--set", "allowedImagePrefixes={ghcr.io/team/}", "--set", "allowRemoteCode=true"),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    deployment = next(d for d in yaml.safe_load_all(policy) if d and d["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--allowed-image-prefix=ghcr.io/team/" in args and "--allow-remote-code" in args
    bad = subprocess.run(
        [helm, "template", RELEASE, str(CHART), "--set", "replicaCont=2"],
        capture_output=True,
        text=True,
    )
    assert (
        bad.returncode != 0 and "replicaCont" in bad.stderr
    )  # typos fail: additionalProperties false


def test_chart_with_several_replicas_uses_peering():
    helm = _helm()
    out = subprocess.run(
        [helm, "template", RELEASE, str(CHART), "-n", NS, "--set", "replicaCount=2"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out) if d}
    assert ("ClusterKopfPeering", RELEASE) in docs
    args = docs[("Deployment", RELEASE)]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--peering={RELEASE}" in args and "--standalone" not in args
    assert docs[("ClusterRole", RELEASE)]["rules"] == CLUSTER_RULES + PEERING_RULES
    refused = subprocess.run(
        [
            helm,
            "template",
            RELEASE,
            str(CHART),
            "--set",
            "replicaCount=2",
            "--set",
            "watchNamespaces={a}",
        ],
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0 and "cluster-wide kopf peering" in refused.stderr


def test_chart_files_are_generated():
    for relative, text in chart_files().items():
        assert (CHART / relative).read_text() == text, f"{relative}: run `make crds`"
    for crd in (REPO / "crds").glob("*.yaml"):
        assert (CHART / "crds" / crd.name).read_text() == crd.read_text(), (
            f"{crd.name}: run `make crds`"
        )


def test_grafana_dashboard_ships_and_names_real_metrics():
    """Every metric the dashboard queries exists: the operator's in its registry, vLLM's in the
    installed vLLM's metric definitions."""
    import re

    from alpaca_operator.metrics import Metrics

    dashboard = json.loads((CHART / "dashboards" / "alpaca-operator.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    families = {m.name for m in Metrics().registry.collect()}
    for name in {n for e in exprs for n in re.findall(r"\b(alpaca_[a-z_]+)", e)}:
        assert re.sub(r"_(total|bucket|sum|count)$", "", name) in families, (
            f"{name} is not an operator metric"
        )
    vllm_source = "".join(
        p.read_text()
        for p in Path(__import__("vllm").__file__).parent.joinpath("v1", "metrics").glob("*.py")
    )
    for name in {n for e in exprs for n in re.findall(r"vllm\[:_\]([a-z0-9_]+)", e)}:
        base = re.sub(r"_(bucket|total)$", "", name)
        assert f'"vllm:{base}"' in vllm_source, f"vllm:{base} is not a vLLM metric"
    out = subprocess.run(
        [_helm(), "template", RELEASE, str(CHART), "--set", "grafanaDashboard.enabled=true"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    config_map = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["alpaca-operator.json"]) == dashboard
