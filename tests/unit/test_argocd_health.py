"""The Argo CD health checks, run by a real Lua 5.1 interpreter against status samples."""

from __future__ import annotations

from pathlib import Path

import pytest
from lupa import lua51  # a real Lua 5.1, like the gopher-lua Argo CD runs

DOCS = Path(__file__).resolve().parents[2] / "docs" / "argocd"


def health(script: str, obj: dict) -> tuple[str, str]:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)

    def to_lua(value):
        if isinstance(value, dict):
            return lua.table_from({k: to_lua(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([to_lua(v) for v in value])
        return value

    lua.globals().obj = to_lua(obj)
    result = lua.execute((DOCS / script).read_text())
    return result["status"], result["message"]


def cond(type_, status, reason="R", message="m"):
    return {"type": type_, "status": status, "reason": reason, "message": message}


def model(phase, conditions, generation=1, observed=1):
    return {
        "metadata": {"generation": generation},
        "status": {"phase": phase, "observedGeneration": observed, "conditions": conditions},
    }


@pytest.mark.parametrize(
    ("obj", "status", "words"),
    [
        ({"metadata": {"generation": 1}}, "Progressing", "observe"),
        (
            model(
                "Downloading",
                [
                    cond("Accepted", "True"),
                    cond("CapacityReady", "True"),
                    cond("WeightsReady", "False", "Downloading", "3 GiB of 12 GiB"),
                    cond("Ready", "False"),
                ],
            ),
            "Progressing",
            "3 GiB of 12 GiB",
        ),
        (
            model(
                "Ready",
                [
                    cond("Accepted", "True"),
                    cond("Ready", "True", "Ready", "Serving at http://x/v1."),
                ],
            ),
            "Healthy",
            "Serving at",
        ),
        (
            model(
                "Failed",
                [
                    cond("Accepted", "True"),
                    cond("CapacityReady", "False", "InsufficientGPU", "needs 2"),
                    cond("Ready", "False"),
                ],
            ),
            "Degraded",
            "InsufficientGPU",
        ),
        (
            model(
                "Failed",
                [cond("Accepted", "False", "InvalidSpec", "spec.x bad"), cond("Ready", "False")],
            ),
            "Degraded",
            "spec.x bad",
        ),
        (
            model(
                "Degraded",
                [
                    cond("Accepted", "True"),
                    cond("ServingReady", "False", "EngineLoading"),
                    cond("Ready", "False"),
                ],
            ),
            "Degraded",
            "EngineLoading",
        ),
        (
            model("Ready", [cond("Ready", "True")], generation=3, observed=2),
            "Progressing",
            "not observed the latest spec",
        ),
        (
            model(
                "Ready",
                [
                    cond("Accepted", "True"),
                    cond("Ready", "True", "Ready", "Serving at http://x/v1."),
                    cond("Upgrading", "True", "NewClusterStarting", "starts beside"),
                ],
            ),
            "Progressing",
            "NewClusterStarting",
        ),
        (
            model(
                "Ready",
                [
                    cond("Accepted", "True"),
                    cond("Ready", "True", "Ready", "Serving at http://x/v1."),
                    cond("Upgrading", "False", "UpToDate", "The running RayCluster is the spec's."),
                ],
            ),
            "Healthy",
            "Serving at",
        ),
        (
            model(
                "Deploying",
                [
                    cond("Accepted", "True"),
                    cond("ServingReady", "False", "EngineLoading", "loading"),
                    cond("Ready", "False"),
                    cond("Upgrading", "False", "UpToDate", "No RayCluster runs yet."),
                ],
            ),
            "Progressing",
            "EngineLoading",
        ),
    ],
)
def test_alpacamodel_health(obj, status, words):
    got_status, message = health("health-alpacamodel.lua", obj)
    assert got_status == status
    assert words in message


def ft(phase, conditions=(), **status):
    return {
        "metadata": {"generation": 1},
        "status": {"phase": phase, "conditions": list(conditions), **status},
    }


@pytest.mark.parametrize(
    ("obj", "status", "words"),
    [
        ({"metadata": {}}, "Progressing", "observe"),
        (
            ft("Pending", [cond("WeightsReady", "False", "Downloading", "1 GiB")]),
            "Progressing",
            "1 GiB",
        ),
        (
            ft("Running", [cond("Training", "True")], progress={"summary": "120/1218 (10%)"}),
            "Progressing",
            "120/1218",
        ),
        (
            ft("Suspended", [cond("Training", "False", "Queued", "Waiting in Kueue queue q")]),
            "Suspended",
            "Kueue",
        ),
        (
            ft("Failed", [cond("Training", "False", "TrainingFailed", "CUDA out of memory")]),
            "Degraded",
            "out of memory",
        ),
        (
            ft("Succeeded", [cond("Succeeded", "True")], output="pvc://x-output/final"),
            "Healthy",
            "pvc://x-output/final",
        ),
    ],
)
def test_alpacafinetune_health(obj, status, words):
    got_status, message = health("health-alpacafinetune.lua", obj)
    assert got_status == status
    assert words in message
