"""Every example applies with the real kubectl; explain and get teach the API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def _is_subset(wanted, stored) -> bool:
    if isinstance(wanted, dict):
        return isinstance(stored, dict) and all(
            k in stored and _is_subset(v, stored[k]) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(stored, list)
            and len(wanted) == len(stored)
            and all(map(_is_subset, wanted, stored))
        )
    return wanted == stored


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_applies_and_gets_defaults(control_plane, namespace, path):
    control_plane.kubectl_run("apply", "-n", namespace, "-f", str(path))
    for doc in yaml.safe_load_all(path.read_text()):
        stored = json.loads(
            control_plane.kubectl_run(
                "get", "-n", namespace, doc["kind"], doc["metadata"]["name"], "-o", "json"
            ).stdout
        )
        # What the user wrote is kept; the apiserver filled in the defaults of the rest.
        assert _is_subset(doc["spec"], stored["spec"])
        if doc["kind"] == "AlpacaModel":
            assert stored["spec"]["autoscaling"]["targetOngoingRequests"] >= 1
            assert "provisioner" in stored["spec"]["capacity"]
        else:
            assert stored["spec"]["hyperparameters"]["globalBatchSize"] == 128
            assert stored["spec"]["output"]["saveSteps"] >= 1


def test_examples_cover_both_kinds_and_provisioners():
    docs = [yaml.safe_load(p.read_text()) for p in EXAMPLES]
    kinds = {d["kind"] for d in docs}
    assert kinds == {"AlpacaModel", "AlpacaFineTune"}
    provisioners = {d["spec"].get("capacity", {}).get("provisioner", "existing") for d in docs}
    assert provisioners == {"existing", "karpenter"}


def test_explain_teaches_the_api(control_plane):
    out = control_plane.kubectl_run("explain", "alpacamodel.spec.weights").stdout
    assert "The model's weights and their cache." in out
    assert "hf://ORG/NAME" in out and "s3://BUCKET/PREFIX" in out and "pvc://CLAIM/PATH" in out
    assert "recover\t<Object>" in out
    out = control_plane.kubectl_run(
        "explain", "alpacafinetune.spec.hyperparameters.learningRate"
    ).stdout
    assert "2e-05 for method full" in out
    out = control_plane.kubectl_run(
        "explain", "alpacamodel.spec.weights.recover.expectedChecksum"
    ).stdout
    assert "50637.1836" in out


def test_get_shows_printer_columns(control_plane, namespace):
    cp = control_plane
    cp.kubectl_run("apply", "-n", namespace, "-f", str(REPO / "examples" / "alpaca.yaml"))
    cp.kubectl_run("apply", "-n", namespace, "-f", str(REPO / "examples" / "finetune.yaml"))
    cp.kubectl_run(
        "patch",
        "-n",
        namespace,
        "am",
        "alpaca-7b",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(
            {
                "status": {
                    "phase": "Ready",
                    "ready": "2/2",
                    "endpoint": "http://alpaca-7b.ns.svc:8000",
                }
            }
        ),
    )
    cp.kubectl_run(
        "patch",
        "-n",
        namespace,
        "aft",
        "alpaca-7b-sft",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(
            {
                "status": {
                    "phase": "Running",
                    "progress": {"step": 120, "summary": "120/1218 (10%)", "loss": 1.234},
                }
            }
        ),
    )
    out = cp.kubectl_run("get", "-n", namespace, "am,aft").stdout
    lines = [line.split() for line in out.splitlines() if line.strip()]
    assert lines[0] == ["NAME", "PHASE", "READY", "ENDPOINT", "AGE"]
    assert lines[1][:4] == [
        "alpacamodel.alpaca.dev/alpaca-7b",
        "Ready",
        "2/2",
        "http://alpaca-7b.ns.svc:8000",
    ]
    assert lines[2] == ["NAME", "PHASE", "PROGRESS", "LOSS", "AGE"]
    assert lines[3][0] == "alpacafinetune.alpaca.dev/alpaca-7b-sft"
    assert lines[3][1:5] == ["Running", "120/1218", "(10%)", "1.234"]
    wide = cp.kubectl_run("get", "-n", namespace, "am", "-o", "wide").stdout
    assert "SOURCE" in wide and "hf://tatsu-lab/alpaca-7b-wdiff" in wide
