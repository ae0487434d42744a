"""The run: configuration -> model, data and Trainer -> resume from the newest complete
checkpoint -> train -> the final model in `<outputDir>/final`.

Started by the operator's Job as `torchrun ... -m alpaca_training` (one process per GPU; on CPU,
DDP over gloo), with the configuration in ALPACA_TRAIN_CONFIG.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from alpaca_training.config import TrainConfig
from alpaca_training.data import SupervisedCollator, load_records, tokenize_records
from alpaca_training.model import load_model_and_tokenizer
from alpaca_training.output import find_resume_checkpoint, save_final
from alpaca_training.progress import ProgressReporter, Sink, default_sinks

if TYPE_CHECKING:
    import torch
    from transformers import Trainer, TrainingArguments

log = logging.getLogger(__name__)

DEFAULT_WRAP = ("LlamaDecoderLayer",)
MAX_WARMUP_FRACTION = 0.999
"""transformers reads warmup_steps >= 1 as a step count; a warmupRatio of 1 becomes this."""


def training_arguments_kwargs(
    config: TrainConfig,
    world_size: int,
    cuda: bool,
    layer_classes: Sequence[str] = DEFAULT_WRAP,
) -> dict[str, Any]:
    """TrainingArguments for the recipe (a plain dict, so it is testable without a GPU).

    Mixed precision (bf16/fp16) only on CUDA; CPU trains in fp32. Full fine-tuning on several
    GPUs shards with FSDP like Stanford Alpaca's `--fsdp "full_shard auto_wrap"
    --fsdp_transformer_layer_cls_to_wrap LlamaDecoderLayer`, in the fsdp_config form current
    transformers takes (FSDP2; full_shard = reshard_after_forward). Otherwise the Trainer runs
    DDP by itself under torchrun (gloo on CPU)."""
    hp = config.hyperparameters
    kwargs: dict[str, Any] = {
        "output_dir": str(config.checkpoints_dir),
        "per_device_train_batch_size": hp.per_device_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps(world_size),
        "learning_rate": hp.learning_rate,
        "num_train_epochs": hp.epochs,
        "weight_decay": hp.weight_decay,
        "warmup_steps": min(hp.warmup_ratio, MAX_WARMUP_FRACTION),  # < 1: a ratio of the steps
        "lr_scheduler_type": hp.lr_scheduler,
        "bf16": cuda and hp.precision == "bf16",
        "fp16": cuda and hp.precision == "fp16",
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": config.keep_checkpoints,
        "logging_strategy": "steps",
        "logging_steps": 1,
        "report_to": "none",
        "seed": hp.seed,
        "disable_tqdm": True,  # the progress reporter logs one line per step instead
        "use_cpu": not cuda,
    }
    if not cuda and world_size > 1:
        kwargs["ddp_backend"] = "gloo"
    if cuda and world_size > 1 and config.method == "full":
        kwargs["fsdp"] = True
        kwargs["fsdp_config"] = {
            "reshard_after_forward": True,  # full_shard
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "transformer_layer_cls_to_wrap": list(layer_classes),
            "state_dict_type": "FULL_STATE_DICT",
        }
    return kwargs


def final_dtype(precision: str) -> torch.dtype:
    """The dtype the final full model is saved in: the run's precision."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def build_trainer(
    config: TrainConfig,
    world_size: int,
    cuda: bool,
    sinks: list[Sink] | None = None,
    report_interval: float = 10.0,
    **overrides: Any,
) -> Trainer:
    """The model, tokenized data and a Trainer with the progress reporter; `overrides` replace
    TrainingArguments (tests and benchmarks: max_steps, save_strategy, ...)."""
    from transformers import PrinterCallback, Trainer, TrainingArguments, set_seed

    hp = config.hyperparameters
    if not cuda and hp.precision != "fp32":
        log.info("no CUDA device: training in fp32 (precision %s applies on GPUs)", hp.precision)
    set_seed(hp.seed)  # before get_peft_model: the adapters' initialisation
    model, tokenizer = load_model_and_tokenizer(config, cuda)
    dataset = tokenize_records(load_records(config.data_path), tokenizer, hp.max_length)
    log.info("%d training examples from %s", len(dataset), config.data_path)
    layers = tuple(getattr(model, "_no_split_modules", None) or DEFAULT_WRAP)
    kwargs = training_arguments_kwargs(config, world_size, cuda, layers) | overrides
    args: TrainingArguments = TrainingArguments(**kwargs)
    reporter = ProgressReporter(
        default_sinks(config.output_dir) if sinks is None else sinks, interval=report_interval
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=SupervisedCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[reporter],
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def run(
    config: TrainConfig,
    world_size: int,
    cuda: bool,
    sinks: list[Sink] | None = None,
    report_interval: float = 10.0,
) -> Trainer:
    """Train (resuming from the newest complete checkpoint) and save the final result; returns
    the Trainer (its state holds the log history)."""
    trainer = build_trainer(config, world_size, cuda, sinks, report_interval)
    checkpoint = find_resume_checkpoint(config.checkpoints_dir)
    if checkpoint is not None:
        log.info("resuming from %s", checkpoint)
    else:
        log.info("starting from step 0 (no complete checkpoint in %s)", config.checkpoints_dir)
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    log.info("training done: %d steps, loss %.4f", result.global_step, result.training_loss)
    save_final(
        trainer,
        trainer.processing_class,
        config.final_dir,
        config.method,
        final_dtype(config.hyperparameters.precision),
    )
    return trainer


def start(config: TrainConfig, world_size: int, accumulation: int) -> int:
    """The run, once the entry point (alpaca_training.__main__) has accepted the configuration."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one log line per step is enough in a pod's log
    cuda = torch.cuda.is_available()
    log.info(
        "method %s, %d process(es), %s, %d gradient accumulation step(s)",
        config.method,
        world_size,
        "CUDA" if cuda else "CPU",
        accumulation,
    )
    run(config, world_size, cuda)
    return 0
