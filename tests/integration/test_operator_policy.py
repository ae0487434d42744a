"""The operator's policy on the real apiserver: a spec the CRD accepts but the platform
administrator's policy does not (an image override from elsewhere) is refused by the operator,
named in the Accepted condition and a Warning Event, and nothing is created; allowing the
prefix lets the next pass go on."""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from alpaca_operator import events
from alpaca_operator.config import OperatorConfig
from alpaca_operator.reconcile.apply import Applier
from alpaca_operator.reconcile.model import ModelContext, run_model
from alpaca_operator.reconcile.serving import application_for
from alpaca_operator.reconcile.status import write_status

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
NOW = datetime.datetime(2026, 11, 24, 12, 0, tzinfo=datetime.UTC)
CONFIG = OperatorConfig(allowed_image_prefixes=("registry.example.com/ml/",))


def _pass(ctx: ModelContext, cp, ns: str, name: str) -> dict[str, Any]:
    """One pass as the handlers run it: reconcile, status, Events."""
    body = cp.get_json("alpacamodel", name, ns)
    outcome = run_model(ctx, body, NOW)
    write_status(ctx.kube, body, outcome.status)
    events.post(ctx.kube, body, outcome.events, NOW)
    return cp.get_json("alpacamodel", name, ns)


def _items(cp, ns: str, kind: str) -> list[dict[str, Any]]:
    out = cp.kubectl_run("get", "-n", ns, kind, "-o", "json").stdout
    return list(json.loads(out)["items"])


def test_a_forbidden_image_override_is_not_accepted(
    control_plane, kube, thirdparty_crds, namespace
):
    cp = control_plane
    doc = yaml.safe_load((REPO / "examples" / "alpaca-local.yaml").read_text())
    doc["spec"]["images"] = {"serving": "evil.example/ray:latest"}
    cp.kubectl_run("apply", "-n", namespace, "-f", "-", input=json.dumps(doc))  # the CRD takes it
    ctx = ModelContext(kube, Applier(kube), CONFIG, application_for)

    obj = _pass(ctx, cp, namespace, "smollm2")
    assert obj["status"]["phase"] == "Failed"
    accepted = {c["type"]: c for c in obj["status"]["conditions"]}["Accepted"]
    assert (accepted["status"], accepted["reason"]) == ("False", "ForbiddenByPolicy")
    message = accepted["message"]
    assert "spec.images.serving" in message and "evil.example/ray:latest" in message
    for prefix in CONFIG.image_prefixes:  # the default images' repositories and the admin's
        assert prefix in message
    assert "registry.example.com/ml/" in message
    assert "allowedImagePrefixes" in message
    # Accepted's Event names the field (Ready's, of the same reason, points to Accepted); the
    # apiserver lists Events in no particular order
    warnings = [
        e
        for e in _items(cp, namespace, "events")
        if e["reason"] == "ForbiddenByPolicy" and e["message"].startswith("Accepted=")
    ]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"
    assert "spec.images.serving" in warnings[0]["message"]
    for kind in ("pvc", "jobs", "networkpolicies", "services"):  # nothing was created
        assert _items(cp, namespace, kind) == [], kind
    out = cp.kubectl_run("get", "-n", namespace, "am", "smollm2").stdout
    assert "Failed" in out

    # The administrator allows the registry: the next pass accepts the spec and goes on.
    allowing = dataclasses.replace(CONFIG, allowed_image_prefixes=("evil.example/",))
    ctx = ModelContext(kube, Applier(kube), allowing, application_for)
    obj = _pass(ctx, cp, namespace, "smollm2")
    accepted = {c["type"]: c for c in obj["status"]["conditions"]}["Accepted"]
    assert (accepted["status"], accepted["reason"]) == ("True", "SpecValid")
    assert len(_items(cp, namespace, "pvc")) == 1
