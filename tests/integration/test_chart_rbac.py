"""The chart installed into a real apiserver (audit log on, OwnerReferencesPermissionEnforcement
as on every ControlPlane) and the operator run through full reconciles as the chart's
ServiceAccount with the arguments its Deployment gives it, in both install modes: its RBAC
suffices, the audit log shows every request was one the chart grants and none refused, every
grant is used (or its reason on record), and with watchNamespaces the operator touched nothing
outside the watched namespaces while the real authorizer gives it nothing there either."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from alpaca_dev.controlplane import ControlPlane, free_port, stop_process, wait_for
from alpaca_operator.rbac import CLUSTER_RULES, NAMESPACE_RULES, NAMESPACED_RULES, RULES, granted
from tests.conftest import start_operator
from tests.integration.test_chart import CHART, NS, RELEASE, REPO, _helm

pytestmark = pytest.mark.cluster
SCOPED, SCOPED_NS = "scoped-alpaca-operator", "scoped-system"  # the watchNamespaces install
WATCHED, UNWATCHED = "team-b", "team-c"
EXAMPLES = ("alpaca.yaml", "alpaca-karpenter.yaml", "finetune.yaml")
AUDIT_POLICY = {"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "rules": [{"level": "Metadata"}]}
# Granted but not reached by this test's reconciles, each with the path that needs it.
NOT_EXERCISED = {
    ("ray.io", "rayclusters", "patch"): "rescaling worker bounds in place",
    ("ray.io", "rayclusters", "delete"): "recreating the RayCluster after a pod-template change",
    ("karpenter.sh", "nodepools", "delete"): "sweeping a NodePool whose AlpacaModel is gone",
    ("batch", "jobs", "get"): "granted on to the fill's Role (RBAC's escalation check)",
    ("alpaca.dev", "alpacafinetunes/status", "get"): "granted on to the trainer's Role (same)",
    ("", "pods", "list"): "reading a failed fill or training pod's message",
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


def _token_kubeconfig(cp: ControlPlane, path: Path, account: str, namespace: str) -> Path:
    token = cp.kubectl_run(
        "create", "token", account, "-n", namespace, "--duration=1h"
    ).stdout.strip()
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


def _user(release: str, namespace: str) -> str:
    return f"system:serviceaccount:{namespace}:{release}"  # the chart's account: its full name


def _audit(cp: ControlPlane, user: str) -> list[dict[str, Any]]:
    """The user's completed requests on resources, from the apiserver's audit log."""
    lines = (cp.workdir / ".." / "audit.log").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    return [
        e
        for e in events
        if e.get("user", {}).get("username") == user
        and e.get("stage") == "ResponseComplete"
        and (e.get("objectRef") or {}).get("resource")
    ]


def _used(events: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    used = set()
    for event in events:
        ref = event["objectRef"]
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


def _install(cp: ControlPlane, release: str, namespace: str, *values: str) -> str:
    """`helm install` into the audited apiserver; Helm's output."""
    install = subprocess.run(
        [
            *(_helm(), "install", release, str(CHART), "-n", namespace, "--create-namespace"),
            *(f"--kubeconfig={cp.kubeconfig}", "--wait=false", *values),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert install.returncode == 0, install.stderr
    print(f"$ helm install {release} charts/alpaca-operator -n {namespace} {' '.join(values)}")
    print(install.stdout)
    cp.wait_established("alpacamodels.alpaca.dev", "alpacafinetunes.alpaca.dev")
    return install.stdout


def _operator_args(cp: ControlPlane, release: str, namespace: str) -> list[str]:
    """The arguments the installed Deployment gives the operator (its probe and metrics on
    ports of their own here)."""
    manifest = subprocess.run(
        [_helm(), "get", "manifest", release, "-n", namespace, f"--kubeconfig={cp.kubeconfig}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    deployment = next(d for d in yaml.safe_load_all(manifest) if d and d["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "run"
    own = [a for a in args[1:] if not a.startswith(("--liveness=", "--metrics-port="))]
    return [*own, f"--metrics-port={free_port()}"]


def _reconcile_examples(cp: ControlPlane, team: str, env: dict[str, str], log: Path, args) -> None:
    """Run the operator (`args`, as `env` says) until the examples in `team` are through:
    fills done, serving, a fine-tune trained and its result served."""
    proc = start_operator(env, log, *args)
    try:
        for example in EXAMPLES:
            cp.kubectl_run("apply", "-n", team, "-f", str(REPO / "examples" / example))

        def fill_jobs() -> list[str] | None:
            names = [j["metadata"]["name"] for j in cp.items("jobs", team)]
            names = [n for n in names if n.endswith("-fill")]
            return names if sorted(names) == expected else None

        expected = sorted(f"{cache}-fill" for cache in _caches(EXAMPLES))
        for job in _wait(fill_jobs, f"the {len(expected)} fill Jobs (models and adapters)"):
            _complete_job(cp, team, job)
        rs = _wait(lambda: _get(cp, team, "rayservice", "alpaca-7b"), "RayService")
        assert rs["metadata"]["ownerReferences"][0]["kind"] == "AlpacaModel"
        train = _wait(lambda: _get(cp, team, "job", "alpaca-7b-sft-train"), "training Job")
        _complete_job(cp, team, train["metadata"]["name"], completedIndexes="0")
        _wait(lambda: _get(cp, team, "alpacamodel", "my-alpaca-7b"), "the served AlpacaModel")
        _wait(
            lambda: (
                (_get(cp, team, "aft", "alpaca-7b-sft") or {}).get("status", {}).get("phase")
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


def _check_audit(cp: ControlPlane, user: str, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every request the user made was granted by `rules` and none refused; every grant was
    used, or its reason is on record. The user's events."""
    events = _audit(cp, user)
    used, grants = _used(events), granted(rules)
    assert used, "the audit log recorded nothing for the operator"
    assert used <= grants, f"used but not granted: {used - grants}"
    refused = [e for e in events if e.get("responseStatus", {}).get("code") == 403]
    assert not refused, f"refused: {[(e['verb'], e['requestURI']) for e in refused[:5]]}"
    assert set(NOT_EXERCISED) <= grants, "a documented exception names a right not granted"
    unused = grants - used - set(NOT_EXERCISED)
    assert not unused, f"granted, never used, and no reason on record: {sorted(unused)}"
    return events


def test_helm_install_and_reconcile_as_the_charts_service_account(audited, tmp_path):
    """A cluster-wide install (watchNamespaces empty)."""
    cp = audited
    out = _install(cp, RELEASE, NS)
    assert "kubectl get alpacamodels" in out  # NOTES.txt tells the next step
    cp.kubectl_run("create", "namespace", "team-a")
    # The Deployment cannot run here (no kubelet): run the same operator as its ServiceAccount.
    kubeconfig = _token_kubeconfig(cp, tmp_path / "sa.kubeconfig", RELEASE, NS)
    env = {**cp.env(), "KUBECONFIG": str(kubeconfig)}
    args = _operator_args(cp, RELEASE, NS)
    assert not [a for a in args if a.startswith("--namespace")]
    _reconcile_examples(cp, "team-a", env, tmp_path / "operator.log", args)
    _check_audit(cp, _user(RELEASE, NS), RULES)


def _rights(cp: ControlPlane, user: str, namespace: str) -> set[tuple[str, str, str]]:
    """What the real authorizer lets `user` do in `namespace` (`kubectl auth can-i --list`):
    every (API group, resource, verb), its cluster-wide rights included."""
    out = cp.kubectl_run("auth", "can-i", "--list", f"--as={user}", "-n", namespace).stdout
    rights = set()
    for line in out.splitlines()[1:]:
        match = re.fullmatch(r"(\S+)\s+\[.*?\]\s+\[(.*?)\]\s+\[(.*?)\]\s*", line)
        if not match:  # non-resource URLs (discovery, health) start with blanks
            continue
        name, names, verbs = match.groups()
        assert not names, f"{line}: rights on named objects only are not expected"
        resource, _, group = name.partition(".")
        sub = ""
        if "/" in group:  # resource.group/subresource
            group, _, sub = group.partition("/")
        elif "/" in resource:
            resource, _, sub = resource.partition("/")
        rights |= {(group, resource + (f"/{sub}" if sub else ""), v) for v in verbs.split()}
    return rights


def _check_authorizer(cp: ControlPlane, user: str) -> None:
    """The namespaced rights in the watched namespace and nowhere else; the cluster ones
    everywhere (beyond what every account may: self reviews, discovery)."""
    cp.kubectl_run("create", "serviceaccount", "nobody", "-n", SCOPED_NS)
    baseline = _rights(cp, f"system:serviceaccount:{SCOPED_NS}:nobody", UNWATCHED)
    cluster = granted(CLUSTER_RULES + NAMESPACE_RULES)
    assert _rights(cp, user, WATCHED) - baseline == cluster | granted(NAMESPACED_RULES)
    for namespace in (UNWATCHED, SCOPED_NS, "default"):
        assert _rights(cp, user, namespace) - baseline == cluster, namespace
    for verb, resource, namespace, answer in [
        ("create", "jobs.batch", WATCHED, "yes"),
        ("create", "jobs.batch", UNWATCHED, "no"),
        ("get", "secrets", UNWATCHED, "no"),
        ("create", "roles.rbac.authorization.k8s.io", UNWATCHED, "no"),
        ("list", "nodes", "", "yes"),
    ]:
        where = ["-n", namespace] if namespace else []
        said = cp.kubectl_run("auth", "can-i", verb, resource, f"--as={user}", *where, check=False)
        print(
            f"$ kubectl auth can-i {verb} {resource} {' '.join(where)} --as={user}: {said.stdout}"
        )
        assert said.stdout.strip() == answer, (verb, resource, namespace)
    said = cp.kubectl_run("auth", "can-i", "list", "jobs.batch", "-A", f"--as={user}", check=False)
    assert said.stdout.strip() == "no"


def _foreign_nodepool(cp: ControlPlane) -> str:
    """A karpenter model in the unwatched namespace and its NodePool, as the operator that does
    watch that namespace made them; the NodePool's name."""
    from alpaca_operator.api import AlpacaModelSpec
    from alpaca_operator.config import OperatorConfig
    from alpaca_operator.reconcile.model import model_manifests
    from alpaca_operator.reconcile.serving import application_for

    doc = yaml.safe_load((REPO / "examples" / "alpaca-karpenter.yaml").read_text())
    cp.apply(doc, UNWATCHED)
    spec, name = AlpacaModelSpec.model_validate(doc["spec"]), doc["metadata"]["name"]
    pool = model_manifests(spec, name, UNWATCHED, OperatorConfig(), application_for).nodepool
    assert pool is not None
    cp.apply(pool)
    return str(pool["metadata"]["name"])


def test_watch_namespaces_grants_rights_in_those_namespaces_only(audited, tmp_path):
    """watchNamespaces: the namespaced rights come from a RoleBinding in each watched namespace,
    and the operator makes and reads nothing in another (where a model waits untouched)."""
    cp = audited
    for namespace in (WATCHED, UNWATCHED):
        cp.kubectl_run("create", "namespace", namespace)  # before the install: its RoleBinding
    _install(cp, SCOPED, SCOPED_NS, "--set", f"watchNamespaces={{{WATCHED}}}")
    foreign_pool = _foreign_nodepool(cp)
    kubeconfig = _token_kubeconfig(cp, tmp_path / "sa.kubeconfig", SCOPED, SCOPED_NS)
    env = {**cp.env(), "KUBECONFIG": str(kubeconfig)}
    args = _operator_args(cp, SCOPED, SCOPED_NS)
    assert f"--namespace={WATCHED}" in args
    _reconcile_examples(cp, WATCHED, env, tmp_path / "operator.log", args)

    user = _user(SCOPED, SCOPED_NS)
    events = _check_audit(cp, user, CLUSTER_RULES + NAMESPACE_RULES + NAMESPACED_RULES)
    namespaces = {e["objectRef"]["namespace"] for e in events if e["objectRef"].get("namespace")}
    assert namespaces == {WATCHED}
    assert not cp.items("jobs", UNWATCHED) and not cp.items("persistentvolumeclaims", UNWATCHED)
    assert "status" not in (cp.get_json("alpacamodel", "alpaca-7b-spot", UNWATCHED) or {})
    _check_authorizer(cp, user)
    # the start-up sweep leaves the NodePool of a model in a namespace it does not watch
    assert cp.get_json("nodepool", foreign_pool) is not None
