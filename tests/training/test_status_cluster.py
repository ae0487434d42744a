"""Progress reports against the real kube-apiserver with the real AlpacaFineTune CRD: the apply
lands in status.progress (the schema keeps every field) under field manager alpaca-training,
beside the operator's own status fields."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from transformers import TrainerState

from alpaca_training.progress import FIELD_MANAGER, ProgressReporter, status_sink

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
NAMESPACE_PREFIX = "train"


def _state(step: int) -> TrainerState:
    state = TrainerState(global_step=step, max_steps=40, epoch=step / 20)
    state.is_world_process_zero = True
    return state


def test_progress_lands_in_the_finetune_status(control_plane, namespace, caplog):
    doc = yaml.safe_load((REPO / "examples" / "finetune-lora.yaml").read_text())
    name = doc["metadata"]["name"]
    control_plane.kubectl_run("apply", "-n", namespace, "-f", "-", input=json.dumps(doc))
    control_plane.patch_status("alpacafinetune", name, {"phase": "Running"}, namespace)

    sink = status_sink(name, namespace, str(control_plane.kubeconfig))
    reporter = ProgressReporter([sink], interval=0)
    reporter.on_step_begin(None, _state(0), None)
    with caplog.at_level(logging.WARNING, logger="alpaca_training.progress"):
        reporter.on_log(None, _state(10), None, logs={"loss": 1.5, "learning_rate": 2e-5})
        first = dict(reporter.last)
        obj = control_plane.get_json("alpacafinetune", name, namespace)
        assert obj["status"]["progress"] == first
        reporter.on_log(None, _state(20), None, logs={"loss": 1.25, "learning_rate": 1e-5})
    assert not [r for r in caplog.records if "failed" in r.getMessage()]

    obj = control_plane.get_json("alpacafinetune", name, namespace)
    progress = obj["status"]["progress"]
    assert progress == reporter.last
    assert (progress["step"], progress["totalSteps"], progress["summary"]) == (
        20,
        40,
        "20/40 (50%)",
    )
    assert progress["loss"] == pytest.approx(1.375)
    assert obj["status"]["phase"] == "Running"  # the operator's fields stay
    shown = control_plane.kubectl_run(
        "get", "-n", namespace, "alpacafinetune", name, "--show-managed-fields", "-o", "json"
    )
    owners = {
        (m["manager"], m.get("operation"), m.get("subresource"))
        for m in json.loads(shown.stdout)["metadata"]["managedFields"]
    }
    assert (FIELD_MANAGER, "Apply", "status") in owners
