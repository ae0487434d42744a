"""The fill publishes its progress on its own Job, as the fill pod's service account, on the
real apiserver: the rendered Role is enough, and it allows nothing more."""

from __future__ import annotations

import json

import pytest

from alpaca_operator.api.weights import Weights
from alpaca_operator.render import names, weights
from alpaca_weights import cli
from tests.weights.helpers import TOTAL, read_term

pytestmark = pytest.mark.cluster
NAMESPACE_PREFIX = "wp"


def test_fill_annotates_its_own_job_with_the_rendered_least_privilege_role(
    control_plane, namespace, served, tmp_path, term_log, monkeypatch
):
    cp = control_plane
    spec = Weights(source=f"{served.url}/models/tiny/")
    cache = names.cache_name(spec)
    job = weights.fill_job(spec, namespace, "alpaca-weights:test")
    docs = [*weights.fill_rbac(cache, namespace), job]
    cp.kubectl_run(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps({"kind": "List", "apiVersion": "v1", "items": docs}),
    )
    account = names.fill_account_name(cache)
    token = cp.kubectl_run("create", "token", account, "-n", namespace).stdout.strip()
    secrets = tmp_path / "serviceaccount"
    secrets.mkdir()
    (secrets / "token").write_text(token)
    (secrets / "ca.crt").write_bytes(cp.pki.ca_cert.read_bytes())
    (secrets / "namespace").write_text(namespace)
    host, port = cp.url.removeprefix("https://").rsplit(":", 1)
    env = {
        e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    for key, value in {
        "ALPACA_WEIGHTS_JOB": env["ALPACA_WEIGHTS_JOB"],
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": port,
        "ALPACA_SERVICE_ACCOUNT_DIR": str(secrets),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)

    args = ["--termination-log", str(term_log), "fill", "--source", spec.source]
    assert cli.main([*args, "--dest", str(tmp_path / "cache"), "--progress-interval", "0.2"]) == 0
    live = cp.get_json("job", names.fill_job_name(cache), namespace)
    annotations = live["metadata"]["annotations"]
    assert (
        annotations["alpaca.dev/bytes-done"] == annotations["alpaca.dev/bytes-total"] == str(TOTAL)
    )
    assert annotations["alpaca.dev/fill-phase"] == "complete"
    assert read_term(term_log).startswith("Filled: ")

    who = f"system:serviceaccount:{namespace}:{account}"
    can = lambda *what: cp.kubectl_run(  # noqa: E731
        "auth", "can-i", *what, "-n", namespace, "--as", who, check=False
    ).stdout.strip()
    assert can("patch", f"jobs/{names.fill_job_name(cache)}") == "yes"
    assert can("patch", "jobs/another") == "no"
    assert can("create", "jobs") == "no"
    assert can("get", "secrets") == "no"
