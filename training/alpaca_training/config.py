"""The training run's configuration: the JSON the operator puts in `ALPACA_TRAIN_CONFIG`.

The operator writes it (operator/alpaca_operator/render/finetune.py, `train_config`) with
camelCase keys; this module parses it into typed models with snake_case attributes. Light on
purpose (pydantic only): no torch, transformers or peft.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

CONFIG_ENV = "ALPACA_TRAIN_CONFIG"
"""The environment variable holding the configuration JSON."""


class _Wire(BaseModel):
    """camelCase on the wire; unknown keys rejected (the operator and this image share a repo,
    so an unknown key is drift between the two and should fail loudly)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class Hyperparameters(_Wire):
    """The recipe; the defaults are Stanford Alpaca's for LLaMA-7B (as in the operator's API)."""

    global_batch_size: int = Field(default=128, ge=1)
    per_device_batch_size: int = Field(default=4, ge=1)
    learning_rate: float = Field(default=2e-5, gt=0)
    epochs: float = Field(default=3, gt=0)
    max_length: int = Field(default=512, ge=2)
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_ratio: float = Field(default=0.03, ge=0, le=1)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    seed: int = Field(default=42, ge=0)


class LoraSettings(_Wire):
    """LoRA settings (alpaca-lora's defaults)."""

    r: int = Field(default=8, ge=1)
    alpha: int = Field(default=16, ge=1)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1)


class TrainConfig(_Wire):
    """One fine-tuning run."""

    model_path: Path
    data_path: Path
    output_dir: Path
    method: Literal["full", "lora"] = "full"
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    save_steps: int = Field(default=200, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1)
    lora: LoraSettings | None = None

    @property
    def lora_settings(self) -> LoraSettings:
        """The LoRA settings in effect (the defaults when the config has none)."""
        return self.lora or LoraSettings()

    @property
    def checkpoints_dir(self) -> Path:
        """Where the Trainer writes `checkpoint-N` folders."""
        return self.output_dir / "checkpoints"

    @property
    def final_dir(self) -> Path:
        """Where the finished model (full) or adapter (lora) goes."""
        return self.output_dir / "final"

    def gradient_accumulation_steps(self, world_size: int) -> int:
        """Forward passes per optimizer step so that one step sees globalBatchSize examples:
        globalBatchSize // (perDeviceBatchSize x world_size), at least 1.

        Raises ValueError (naming hyperparameters.globalBatchSize) when it is not a multiple of
        perDeviceBatchSize x world_size."""
        if world_size < 1:
            raise ValueError(f"world size must be at least 1, not {world_size}")
        hp = self.hyperparameters
        per_step = hp.per_device_batch_size * world_size
        if hp.global_batch_size % per_step:
            raise ValueError(
                f"hyperparameters.globalBatchSize ({hp.global_batch_size}) must be a multiple of "
                f"hyperparameters.perDeviceBatchSize ({hp.per_device_batch_size}) x the number of "
                f"training processes ({world_size}) = {per_step}"
            )
        return max(1, hp.global_batch_size // per_step)


def parse_config(text: str) -> TrainConfig:
    """Parse the configuration JSON (pydantic's ValidationError, a ValueError, names any bad
    field)."""
    return TrainConfig.model_validate_json(text)


def config_from_env(env: Mapping[str, str] | None = None) -> TrainConfig:
    """The configuration from `ALPACA_TRAIN_CONFIG`."""
    env = os.environ if env is None else env
    text = env.get(CONFIG_ENV)
    if not text:
        raise ValueError(f"{CONFIG_ENV} is not set: it must hold the training configuration JSON")
    return parse_config(text)


def world_size_from_env(env: Mapping[str, str] | None = None) -> int:
    """The number of training processes (torchrun's WORLD_SIZE; 1 without torchrun)."""
    env = os.environ if env is None else env
    return int(env.get("WORLD_SIZE", "1"))
