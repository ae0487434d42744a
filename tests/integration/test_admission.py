"""Admission as in hardened clusters (issue 13, item 4): every pod template the operator renders,
and the chart's own, becomes a pod that the `restricted` Pod Security Standard admits without a
warning; so do the pods the real KubeRay makes from a rendered RayService.

Pods are created with server-side dry-run (every admission plugin runs, nothing is stored) in a
namespace of the `namespace` fixture (enforce, warn and audit `restricted`), over HTTP as the
cluster admin, so the apiserver's `Warning` response headers are read as they come.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from alpaca_dev.controlplane import ControlPlane, wait_for
from alpaca_operator.api import AlpacaFineTuneSpec, AlpacaModelSpec
from alpaca_operator.config import OperatorConfig
from alpaca_operator.kube import KINDS
from alpaca_operator.reconcile.finetune import finetune_manifests
from alpaca_operator.reconcile.model import model_manifests
from alpaca_operator.reconcile.serving import application_for

pytestmark = pytest.mark.cluster
NAMESPACE_PREFIX = "adm"
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
CONFIG = OperatorConfig()
CLUSTER_SCOPED = {"NodePool"}  # not pod-bearing, and one name for the whole cluster


def warning_text(header: str) -> str:
    """A Warning header's text (RFC 9111: `299 - "quoted text"`, quotes and backslashes escaped)."""
    match = re.fullmatch(r'\d{3} \S+ "((?:[^"\\]|\\.)*)"(?: .*)?', header.strip())
    return re.sub(r"\\(.)", r"\1", match.group(1)) if match else header


def _request(
    cp: ControlPlane, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, list[str], dict[str, Any]]:
    """One request as the cluster admin: status, Warning headers, answer."""
    assert cp.pki is not None
    ctx = ssl.create_default_context(cafile=str(cp.pki.ca_cert))
    ctx.load_cert_chain(str(cp.pki.admin_cert), str(cp.pki.admin_key))
    req = urllib.request.Request(
        cp.url + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=60) as resp:
            return resp.status, _warnings(resp.headers), json.load(resp)
    except urllib.error.HTTPError as err:
        text = err.read().decode(errors="replace")
        answer = json.loads(text) if text.startswith("{") else {"message": text}
        return err.code, _warnings(err.headers), answer


def _warnings(headers: Any) -> list[str]:
    return [warning_text(h) for h in headers.get_all("Warning") or []]


def _collection(obj: dict[str, Any], namespace: str) -> str:
    api_version, kind = obj["apiVersion"], obj["kind"]
    plural = "pods" if kind == "Pod" else KINDS[(api_version, kind)].plural
    root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{root}/namespaces/{namespace}/{plural}"


def dry_run_create(
    cp: ControlPlane, obj: dict[str, Any], namespace: str
) -> tuple[int, list[str], dict[str, Any]]:
    """Create `obj` in `namespace` with server-side dry-run: admitted or not, and the warnings."""
    path = _collection(obj, namespace) + "?dryRun=All&fieldManager=admission-test"
    return _request(cp, "POST", path, obj)


def pod_templates(obj: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod template in a manifest, at any depth (a Job's, a RayService's groups'), with
    where it is."""
    if isinstance(obj, dict):
        if isinstance(obj.get("spec"), dict) and "containers" in obj["spec"]:
            yield path, obj
            return
        for key, value in obj.items():
            yield from pod_templates(value, f"{path}.{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from pod_templates(value, f"{path}[{i}]")


def as_pod(template: dict[str, Any], name: str) -> dict[str, Any]:
    """The pod a controller makes from `template` (the Job controller and KubeRay add labels,
    names and env; nothing the Pod Security Standards look at)."""
    meta = template.get("metadata") or {}
    metadata = {"name": name, **{k: meta[k] for k in ("labels", "annotations") if k in meta}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}


def rendered(example: Path, namespace: str) -> list[dict[str, Any]]:
    """Every child the operator renders for an example, and for a fine-tune also the children of
    the AlpacaModel that serves its result (its LoRA adapter or full weights)."""
    doc = yaml.safe_load(example.read_text())
    name = doc["metadata"]["name"]
    if doc["kind"] == "AlpacaModel":
        spec = AlpacaModelSpec.model_validate(doc["spec"])
        return model_manifests(spec, name, namespace, CONFIG, application_for).all()
    tune = AlpacaFineTuneSpec.model_validate(doc["spec"])
    out = finetune_manifests(tune, name, namespace, CONFIG).all()
    for served in [o for o in out if o["kind"] == "AlpacaModel"]:
        spec = AlpacaModelSpec.model_validate(served["spec"])
        name = served["metadata"]["name"]
        out += model_manifests(spec, name, namespace, CONFIG, application_for).all()
    return out


def _service_accounts(cp: ControlPlane, namespace: str, names: set[str]) -> None:
    """The accounts pods name (the ServiceAccount plugin refuses a pod whose account is
    missing; no controller-manager here makes `default`)."""
    for name in sorted(names):
        cp.kubectl_run("create", "serviceaccount", name, "-n", namespace, check=False)


def _verdicts(
    cp: ControlPlane, namespace: str, cases: list[tuple[str, dict[str, Any]]]
) -> list[tuple[str, int, list[str], str]]:
    out = []
    for label, obj in cases:
        code, warnings, answer = dry_run_create(cp, obj, namespace)
        out.append((label, code, warnings, str(answer.get("message", ""))))
        print(f"{label}: {'admitted' if code == 201 else f'REFUSED {code}'}, warnings {warnings}")
    return out


def _assert_admitted_without_warnings(verdicts: list[tuple[str, int, list[str], str]]) -> None:
    refused = [f"{label}: {code} {message}" for label, code, _, message in verdicts if code != 201]
    warned = [f"{label}: {warnings}" for label, _, warnings, _ in verdicts if warnings]
    assert not refused, "\n".join(refused)
    assert not warned, "\n".join(warned)


def test_the_harness_sees_refusals_and_warnings(control_plane, namespace):
    """The check below can fail: a pod without a securityContext is refused in the fixture's
    namespaces, and warned about where `restricted` is only warned."""
    cp = control_plane
    bare = {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    _service_accounts(cp, namespace, {"default"})
    code, _, answer = dry_run_create(cp, as_pod(bare, "bare"), namespace)
    assert code == 403 and 'violates PodSecurity "restricted:latest"' in answer["message"]
    warn_only = f"{namespace}-warn"
    labels = {"pod-security.kubernetes.io/warn": "restricted"}
    cp.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": warn_only, "labels": labels}}
    )
    try:
        _service_accounts(cp, warn_only, {"default"})
        code, warnings, _ = dry_run_create(cp, as_pod(bare, "bare"), warn_only)
        assert code == 201 and any('would violate PodSecurity "restricted' in w for w in warnings)
    finally:
        cp.kubectl_run("delete", "namespace", warn_only, "--wait=false")


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_rendered_pod_template_is_admitted_without_warnings(
    control_plane, thirdparty_crds, namespace, example
):
    """Each pod template becomes a pod (dry-run); each rendered object itself is created too
    (dry-run), since PodSecurity also warns on a Job whose template would be refused."""
    cp = control_plane
    objects = rendered(example, namespace)
    templates = [
        (f"{o['kind']}/{o['metadata']['name']}{where}", template)
        for o in objects
        for where, template in pod_templates(o)
    ]
    assert templates, f"{example.name} renders no pod template"
    accounts = {t["spec"].get("serviceAccountName") or "default" for _, t in templates}
    _service_accounts(cp, namespace, accounts)
    cases = [(f"pod from {label}", as_pod(t, f"pod-{i}")) for i, (label, t) in enumerate(templates)]
    cases += [
        (f"{o['kind']}/{o['metadata']['name']}", o)
        for o in objects
        if o["kind"] not in CLUSTER_SCOPED and o["kind"] != "ServiceAccount"
    ]
    _assert_admitted_without_warnings(_verdicts(cp, namespace, cases))


def test_the_charts_operator_pod_is_admitted_without_warnings(control_plane, namespace):
    from alpaca_dev.stack import CHART, RELEASE, thirdparty

    out = subprocess.run(
        [str(thirdparty("helm")), "template", RELEASE, str(CHART), "-n", namespace],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    deployment = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment")
    template = deployment["spec"]["template"]
    _service_accounts(control_plane, namespace, {template["spec"]["serviceAccountName"]})
    cases = [("pod from Deployment/" + RELEASE, as_pod(template, "operator"))]
    _assert_admitted_without_warnings(_verdicts(control_plane, namespace, cases))


@pytest.fixture(scope="module")
def kuberay(control_plane, thirdparty_crds, tmp_path_factory) -> Iterator[None]:
    from alpaca_dev.stack import kuberay as run_kuberay

    with run_kuberay(control_plane, thirdparty_crds, tmp_path_factory.mktemp("kuberay") / "log"):
        yield


MODELS = [p for p in EXAMPLES if yaml.safe_load(p.read_text())["kind"] == "AlpacaModel"]


@pytest.mark.parametrize("example", MODELS, ids=lambda p: p.name)
def test_the_pods_kuberay_makes_are_admitted_without_warnings(
    control_plane, kuberay, namespace, example
):
    """KubeRay adds to the head its autoscaler sidecar (with the securityContext the RayService
    gives it) and to every pod its own env, ports and probes: the pods it really created (so
    admitted where `restricted` is enforced) are created again with dry-run for the warnings."""
    cp = control_plane
    objects = rendered(example, namespace)
    service = next(o for o in objects if o["kind"] == "RayService")
    accounts = {t["spec"].get("serviceAccountName") or "default" for _, t in pod_templates(service)}
    _service_accounts(cp, namespace, accounts)
    cp.apply(service, namespace)
    workers = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    expected = 1 + sum(
        max(g.get("replicas", 0), g.get("minReplicas", 0)) * g.get("numOfHosts", 1) for g in workers
    )

    def pods() -> list[dict[str, Any]] | None:
        found = cp.items("pods", namespace)
        return found if len(found) >= expected else None

    made = wait_for(pods, f"KubeRay's {expected} pods for {example.name}", 180, interval=1)
    head = next(p for p in made if p["metadata"]["labels"].get("ray.io/node-type") == "head")
    assert "autoscaler" in [c["name"] for c in head["spec"]["containers"]]
    cases = [
        (f"pod {p['metadata']['name']} (KubeRay)", as_pod(p, f"again-{i}"))
        for i, p in enumerate(made)
    ]
    try:
        _assert_admitted_without_warnings(_verdicts(cp, namespace, cases))
    finally:
        cp.kubectl_run("delete", "rayservice", service["metadata"]["name"], "-n", namespace)
