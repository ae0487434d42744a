"""The output folder: the newest complete checkpoint to resume from, and the final model, written
to a temporary folder and renamed into place.

    <outputDir>/checkpoints/checkpoint-N   the Trainer's checkpoints (keepCheckpoints newest)
    <outputDir>/final                      the model (full) or the LoRA adapter (lora)
    <outputDir>/progress.json              the last progress report (progress.py)
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase, Trainer

log = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
SINGLE_WEIGHTS = (
    "model.safetensors",
    "pytorch_model.bin",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _has_weights(folder: Path) -> bool:
    if any((folder / name).is_file() for name in SINGLE_WEIGHTS):
        return True
    for index in WEIGHT_INDEXES:
        try:
            shards = set(json.loads((folder / index).read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if shards and all((folder / shard).is_file() for shard in shards):
            return True
    # FSDP sharded state dict: one folder of distributed checkpoint files per model
    return any(p.is_dir() and any(p.iterdir()) for p in folder.glob("pytorch_model_fsdp_*"))


def checkpoint_step(folder: Path) -> int | None:
    """N for a folder named checkpoint-N, else None."""
    match = CHECKPOINT_RE.match(folder.name)
    return int(match.group(1)) if match else None


def is_complete(folder: Path) -> bool:
    """Whether a checkpoint was written to the end: the Trainer writes trainer_state.json last,
    so it must parse and name the folder's step, and the weights must all be there."""
    try:
        state = json.loads((folder / TRAINER_STATE).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(state, dict) or state.get("global_step") != checkpoint_step(folder):
        return False
    return _has_weights(folder)


def find_resume_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The newest complete checkpoint under `checkpoints_dir` (partial ones, say from a pod
    killed while saving, are skipped and logged), or None to start from the beginning."""
    if not checkpoints_dir.is_dir():
        return None
    candidates = sorted(
        (step, p)
        for p in checkpoints_dir.iterdir()
        if p.is_dir() and (step := checkpoint_step(p)) is not None
    )
    for _, folder in reversed(candidates):
        if is_complete(folder):
            return folder
        log.warning("ignoring incomplete checkpoint %s", folder)
    return None


def replace_dir(source: Path, target: Path) -> None:
    """Rename `source` to `target` (same filesystem, so the final folder appears whole); an old
    `target` is moved aside first and removed afterwards."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    source.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _cast(state_dict: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}


def save_final(
    trainer: Trainer,
    tokenizer: PreTrainedTokenizerBase,
    final_dir: Path,
    method: Literal["full", "lora"],
    dtype: torch.dtype,
) -> None:
    """Write the result to `final_dir`: every rank takes part (FSDP gathers the full weights),
    rank 0 writes to a temporary folder beside it, then renames it into place.

    full: the whole model (safetensors, in `dtype`) with its config and tokenizer; lora: the
    peft adapter (adapter_config.json + adapter_model.safetensors) with the tokenizer."""
    accelerator = trainer.accelerator
    tmp = final_dir.with_name(f".{final_dir.name}.tmp")
    if trainer.args.should_save:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    if method == "lora":
        trainer.save_model(str(tmp))
    else:
        state_dict = accelerator.get_state_dict(trainer.model)  # collective under FSDP
        if trainer.args.should_save:
            model = accelerator.unwrap_model(trainer.model)
            model.save_pretrained(tmp, state_dict=_cast(state_dict, dtype))
            model.config.dtype = dtype  # the config names the dtype the weights are in
            model.config.save_pretrained(tmp)
    if trainer.args.should_save:
        tokenizer.save_pretrained(tmp)
        replace_dir(tmp, final_dir)
        log.info("final %s written to %s", "adapter" if method == "lora" else "model", final_dir)
    accelerator.wait_for_everyone()
