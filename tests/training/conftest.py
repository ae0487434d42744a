"""Fixtures for the training tests: the tiny Llama, the Alpaca fixture data and run configs."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.tiny_llama import FIXTURE, build_tiny_llama

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama folder (safetensors + tokenizer without a pad token), built once."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A dataset folder as the operator's init container leaves it: the fixture file inside."""
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(FIXTURE, folder / FIXTURE.name)
    return folder


def make_config(
    model: Path, data: Path, output: Path, method: str = "full", **overrides: Any
) -> dict[str, Any]:
    """A training config as the operator writes it, sized for a few CPU steps: 24 examples,
    global batch 4 (2 per device x 2 accumulation) -> 6 steps per epoch, 3 epochs."""
    hp = {
        "globalBatchSize": 4,
        "perDeviceBatchSize": 2,
        "learningRate": 1e-3 if method == "full" else 3e-3,
        "epochs": 3,
        "maxLength": 128,
        "weightDecay": 0.0,
        "warmupRatio": 0.03,
        "lrScheduler": "cosine",
        "precision": "bf16",
        "seed": 42,
    } | overrides.pop("hyperparameters", {})
    config: dict[str, Any] = {
        "modelPath": str(model),
        "dataPath": str(data),
        "outputDir": str(output),
        "method": method,
        "hyperparameters": hp,
        "saveSteps": 200,
        "keepCheckpoints": 2,
    }
    if method == "lora":
        config["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0, "targetModules": ["q_proj", "v_proj"]}
    return config | overrides


def subprocess_env(config: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    """The environment of a training process: the config, one thread, temp files in tmp_path,
    the repository's packages importable, no cluster to report to."""
    tmp = tmp_path / "proc-tmp"
    tmp.mkdir(exist_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ALPACA_", "KUBERNETES_"))
        and k not in {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}
    }
    env.update(
        ALPACA_TRAIN_CONFIG=json.dumps(config),
        OMP_NUM_THREADS="1",
        TMPDIR=str(tmp),
        PYTHONPATH=os.pathsep.join([str(REPO / "training"), env.get("PYTHONPATH", "")]),
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


PYTHON = sys.executable
