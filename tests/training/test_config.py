"""The configuration: the operator's JSON parses, and the gradient accumulation arithmetic."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from alpaca_operator.api.finetune import AlpacaFineTuneSpec
from alpaca_operator.render.finetune import train_config
from alpaca_training.config import TrainConfig, config_from_env, parse_config
from tests.training.conftest import subprocess_env


def operator_config(method: str = "full", **spec: object) -> dict:
    """The JSON the operator renders into the training Job's ALPACA_TRAIN_CONFIG."""
    base = {
        "baseModel": {"source": "hf://huggyllama/llama-7b"},
        "dataset": {"source": "https://example.com/alpaca_data.json"},
        "method": method,
    }
    return train_config(AlpacaFineTuneSpec.model_validate(base | spec), "/base/llama-7b")


def test_parses_the_operators_full_config():
    config = parse_config(json.dumps(operator_config("full")))
    assert config.method == "full"
    assert str(config.model_path) == "/base/llama-7b"
    assert str(config.final_dir) == "/output/final"
    assert str(config.checkpoints_dir) == "/output/checkpoints"
    hp = config.hyperparameters
    assert (hp.global_batch_size, hp.per_device_batch_size, hp.learning_rate) == (128, 4, 2e-5)
    assert (hp.epochs, hp.max_length, hp.lr_scheduler, hp.precision, hp.seed) == (
        3,
        512,
        "cosine",
        "bf16",
        42,
    )
    assert (config.save_steps, config.keep_checkpoints, config.lora) == (200, 2, None)


def test_parses_the_operators_lora_config():
    raw = operator_config("lora", lora={"r": 16, "targetModules": ["q_proj", "k_proj", "v_proj"]})
    config = parse_config(json.dumps(raw))
    assert config.method == "lora"
    assert config.hyperparameters.learning_rate == 3e-4  # the operator's lora default
    assert config.lora_settings.r == 16
    assert config.lora_settings.alpha == 16
    assert config.lora_settings.target_modules == ["q_proj", "k_proj", "v_proj"]


@pytest.mark.parametrize(
    ("global_batch", "per_device", "world_size", "expected"),
    [(128, 4, 1, 32), (128, 4, 8, 4), (128, 4, 32, 1), (4, 2, 2, 1), (6, 3, 1, 2)],
)
def test_gradient_accumulation(global_batch, per_device, world_size, expected):
    config = TrainConfig.model_validate(
        {
            "modelPath": "/m",
            "dataPath": "/d",
            "outputDir": "/o",
            "hyperparameters": {"globalBatchSize": global_batch, "perDeviceBatchSize": per_device},
        }
    )
    assert config.gradient_accumulation_steps(world_size) == expected


@pytest.mark.parametrize(("global_batch", "world_size"), [(128, 3), (2, 1), (100, 8)])
def test_a_global_batch_that_does_not_divide_is_an_error(global_batch, world_size):
    config = TrainConfig.model_validate(
        {
            "modelPath": "/m",
            "dataPath": "/d",
            "outputDir": "/o",
            "hyperparameters": {"globalBatchSize": global_batch, "perDeviceBatchSize": 4},
        }
    )
    with pytest.raises(ValueError, match=r"hyperparameters\.globalBatchSize") as exc:
        config.gradient_accumulation_steps(world_size)
    assert str(4 * world_size) in str(exc.value)


def test_bad_fields_are_named():
    with pytest.raises(ValidationError, match="learningRate"):
        parse_config(
            json.dumps(
                {
                    "modelPath": "/m",
                    "dataPath": "/d",
                    "outputDir": "/o",
                    "hyperparameters": {"learningRate": "fast"},
                }
            )
        )
    with pytest.raises(ValidationError, match="outputDir"):
        parse_config(json.dumps({"modelPath": "/m", "dataPath": "/d"}))
    with pytest.raises(ValidationError, match="saveStep"):
        parse_config(
            json.dumps({"modelPath": "/m", "dataPath": "/d", "outputDir": "/o", "saveStep": 5})
        )


def test_config_from_env_needs_the_variable():
    with pytest.raises(ValueError, match="ALPACA_TRAIN_CONFIG"):
        config_from_env({})
    env = {"ALPACA_TRAIN_CONFIG": json.dumps(operator_config())}
    assert config_from_env(env).method == "full"


def test_importing_the_config_is_light():
    code = (
        "import sys, alpaca_training.config, alpaca_training.data; "
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_entry_point_refuses_a_bad_config_by_name(tmp_path):
    """At once: before torch, transformers and peft are imported (the import log says which)."""
    raw = {
        "modelPath": "/m",
        "dataPath": "/d",
        "outputDir": str(tmp_path / "out"),
        "hyperparameters": {"globalBatchSize": 6, "perDeviceBatchSize": 4},
    }
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "alpaca_training"],
        env=subprocess_env(raw, tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "bad training configuration: hyperparameters.globalBatchSize (6)" in result.stderr
    assert not (tmp_path / "out").exists()
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "pydantic" in imported  # the import log is there
    assert not imported & {"torch", "transformers", "peft"}
