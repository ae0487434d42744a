"""The Helm chart for real: lint, template, install into a real apiserver, and the operator run
through full reconciles as the chart's ServiceAccount — its RBAC suffices, and the audit log
shows every request the operator made was one the ClusterRole names."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from alpaca_dev.controlplane import ControlPlane, free_port, stop_process, wait_for
from alpaca_operator.rbac import RULES, clusterrole_template
from tests.conftest import start_operator

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "alpaca-operator"
RELEASE, NS = "alpaca-operator", "alpaca-system"
USER = f"system:serviceaccount:{NS}:{RELEASE}"
AUDIT_POLICY = {"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "rules": [{"level": "Metadata"}]}
# Granted but not reached by this test's reconciles, each with the path that needs it.
NOT_EXERCISED = {
    ("ray.io", "rayclusters", "patch"): "rescaling worker bounds in place",
    ("ray.io", "rayclusters", "delete"): "recreating the RayCluster after a pod-template change",
    ("karpenter.sh", "nodepools", "delete"): "sweeping a NodePool whose AlpacaModel is gone",
    ("batch", "jobs", "get"): "granted on to the fill's Role (RBAC's escalation check)",
    ("alpaca.dev", "alpacafinetunes/status", "get"): "granted on to the trainer's Role (same)",
    ("", "pods", "list"): "reading a failed fill or training pod's message",
    ("", "namespaces", "list"): "namespace patterns (-n team-*)",
    ("", "namespaces", "watch"): "namespace patterns (-n team-*)",
    ("rbac.authorization.k8s.io", "roles", "patch"): "changing a trainer Role (rules are fixed)",
    ("rbac.authorization.k8s.io", "rolebindings", "patch"): "changing a trainer RoleBinding",
    ("", "serviceaccounts", "patch"): "changing a trainer ServiceAccount",
    # an authorization check of the OwnerReferencesPermissionEnforcement plugin, not a request
    # (the audit log has no line for it); without it the applies above are refused (403)
    ("alpaca.dev", "alpacamodels/finalizers", "update"): "blockOwnerDeletion on children",
    ("alpaca.dev", "alpacafinetunes/finalizers", "update"): "blockOwnerDeletion on children",
    ("", "persistentvolumeclaims", "delete"): "changing a shared cache's owners (same plugin)",
    ("batch", "jobs", "delete"): "changing a shared fill Job's owners (same plugin)",
}


def _helm() -> str:
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "thirdparty.sh"), "helm"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def audited(control_plane, thirdparty_crds, tmp_path_factory) -> Iterator[ControlPlane]:
    work = tmp_path_factory.mktemp("chart")
    policy = work / "audit-policy.yaml"
    policy.write_text(yaml.safe_dump(AUDIT_POLICY))
    args = [
        f"--audit-policy-file={policy}",
        f"--audit-log-path={work / 'audit.log'}",
        "--audit-log-format=json",
    ]  # OwnerReferencesPermissionEnforcement is on, as on every ControlPlane (ADMISSION_PLUGINS)
    with ControlPlane(
        bin_dir=control_plane.bin_dir, workdir=work / "cp", extra_apiserver_args=args
    ) as cp:
        cp.kubectl_run("apply", "--server-side", "-f", str(thirdparty_crds), timeout=120)
        cp.wait_established("rayservices.ray.io", "nodepools.karpenter.sh")
        yield cp


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
    role = docs[("ClusterRole", RELEASE)]
    assert role["rules"] == RULES
    for rule in role["rules"]:
        assert (
            "*" not in rule["verbs"]
            and "*" not in rule["resources"]
            and "*" not in rule["apiGroups"]
        )
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
    rules = docs[("ClusterRole", RELEASE)]["rules"]
    assert {
        "apiGroups": ["kopf.dev"],
        "resources": ["clusterkopfpeerings"],
        "verbs": ["get", "list", "watch", "patch"],
    } in rules
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
    assert (CHART / "templates" / "clusterrole.yaml").read_text() == clusterrole_template()
    for crd in (REPO / "crds").glob("*.yaml"):
        assert (CHART / "crds" / crd.name).read_text() == crd.read_text(), (
            f"{crd.name}: run `make crds`"
        )


def _token_kubeconfig(cp: ControlPlane, path: Path) -> Path:
    token = cp.kubectl_run("create", "token", RELEASE, "-n", NS, "--duration=1h").stdout.strip()
    ca = base64.b64encode(cp.pki.ca_cert.read_bytes()).decode()
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "sa",
                "clusters": [
                    {
                        "name": "local",
                        "cluster": {"server": cp.url, "certificate-authority-data": ca},
                    }
                ],
                "users": [{"name": "sa", "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": "local", "user": "sa"}}],
            }
        )
    )
    return path


def _get(cp, ns: str, kind: str, name: str) -> dict[str, Any] | None:
    return cp.get_json(kind, name, ns)


def _wait(check, what: str, timeout: float = 45) -> Any:
    return wait_for(check, what, timeout, interval=0.5)


def _complete_job(cp, ns: str, job: str, **extra: Any) -> None:
    cp.complete_job(ns, job, **extra)


def _used(audit_log: Path) -> set[tuple[str, str, str]]:
    used = set()
    for line in audit_log.read_text().splitlines():
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        if (
            event.get("user", {}).get("username") != USER
            or event.get("stage") != "ResponseComplete"
            or not ref.get("resource")
        ):
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        used.add((ref.get("apiGroup", ""), resource, event["verb"]))
        if event["verb"] == "patch" and event.get("responseStatus", {}).get("code") == 201:
            # a server-side apply that created the object: the apiserver checked `create`
            used.add((ref.get("apiGroup", ""), resource, "create"))
    return used


def _caches(examples: tuple[str, ...]) -> set[str]:
    """Every weights cache the examples use: models' weights and adapters, fine-tunes' bases."""
    from alpaca_operator.api import AlpacaFineTuneSpec, AlpacaModelSpec
    from alpaca_operator.render.names import cache_name

    out = set()
    for example in examples:
        doc = yaml.safe_load((REPO / "examples" / example).read_text())
        if doc["kind"] == "AlpacaModel":
            spec = AlpacaModelSpec.model_validate(doc["spec"])
            out.add(cache_name(spec.weights))
            out |= {cache_name(a.as_weights(spec.weights)) for a in spec.adapters}
        else:
            out.add(cache_name(AlpacaFineTuneSpec.model_validate(doc["spec"]).base_model))
    return out


def test_helm_install_and_reconcile_as_the_charts_service_account(audited, tmp_path):
    cp, helm = audited, _helm()
    install = subprocess.run(
        [
            helm,
            "install",
            RELEASE,
            str(CHART),
            "-n",
            NS,
            "--create-namespace",
            f"--kubeconfig={cp.kubeconfig}",
            "--wait=false",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert install.returncode == 0, install.stderr
    print(
        f"$ helm install {RELEASE} charts/alpaca-operator -n {NS} --create-namespace\n{install.stdout}"
    )
    assert "kubectl get alpacamodels" in install.stdout  # NOTES.txt tells the next step
    cp.wait_established("alpacamodels.alpaca.dev", "alpacafinetunes.alpaca.dev")
    # The Deployment cannot run here (no kubelet): run the same operator as its ServiceAccount.
    kubeconfig = _token_kubeconfig(cp, tmp_path / "sa.kubeconfig")
    log = tmp_path / "operator.log"
    env = {**cp.env(), "KUBECONFIG": str(kubeconfig)}
    proc = start_operator(env, log, "--standalone", "-n", "team-a", f"--metrics-port={free_port()}")
    try:
        cp.kubectl_run("create", "namespace", "team-a")
        examples = ("alpaca.yaml", "alpaca-karpenter.yaml", "finetune.yaml")
        for example in examples:
            cp.kubectl_run("apply", "-n", "team-a", "-f", str(REPO / "examples" / example))

        def fill_jobs() -> list[str] | None:
            items = json.loads(cp.kubectl_run("get", "jobs", "-n", "team-a", "-o", "json").stdout)[
                "items"
            ]
            names = [
                j["metadata"]["name"] for j in items if j["metadata"]["name"].endswith("-fill")
            ]
            return names if sorted(names) == expected else None

        expected = sorted(f"{cache}-fill" for cache in _caches(examples))
        for job in _wait(fill_jobs, f"the {len(expected)} fill Jobs (models and adapters)"):
            _complete_job(cp, "team-a", job)
        rs = _wait(lambda: _get(cp, "team-a", "rayservice", "alpaca-7b"), "RayService")
        assert rs["metadata"]["ownerReferences"][0]["kind"] == "AlpacaModel"
        train = _wait(lambda: _get(cp, "team-a", "job", "alpaca-7b-sft-train"), "training Job")
        _complete_job(cp, "team-a", train["metadata"]["name"], completedIndexes="0")
        _wait(lambda: _get(cp, "team-a", "alpacamodel", "my-alpaca-7b"), "the served AlpacaModel")
        _wait(
            lambda: (
                (_get(cp, "team-a", "aft", "alpaca-7b-sft") or {}).get("status", {}).get("phase")
                == "Succeeded"
            ),
            "Succeeded",
        )
        time.sleep(2)
    finally:
        stop_process(proc)
        print(log.read_text()[-6000:])
    text = log.read_text()
    refusals = [line for line in text.splitlines() if "Forbidden" in line or "status=403" in line]
    assert not refusals, "\n".join(refusals[:5])

    granted = {
        (g, r, v)
        for rule in RULES
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    used = _used(cp.workdir / ".." / "audit.log")
    assert used, "the audit log recorded nothing for the operator"
    assert used <= granted, f"used but not granted: {used - granted}"
    assert set(NOT_EXERCISED) <= granted, (
        "a documented exception names a permission that is not granted"
    )
    unused = granted - used - set(NOT_EXERCISED)
    assert not unused, f"granted, never used, and no reason on record: {sorted(unused)}"


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
