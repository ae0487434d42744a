"""Real fine-tuning runs on CPU (tiny Llama, the fixture data): full and LoRA, in-process."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from alpaca_training.config import TrainConfig
from alpaca_training.data import SupervisedCollator, load_records, tokenize_records
from alpaca_training.train import run, training_arguments_kwargs
from tests.training.conftest import make_config


def _losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def _mean_loss(model, tokenizer, data_dir: Path) -> float:
    """The model's loss on the whole fixture (the training objective)."""
    examples = tokenize_records(load_records(data_dir), tokenizer, 128)
    batch = SupervisedCollator(tokenizer.pad_token_id)(examples)
    with torch.no_grad():
        return float(model(**batch).loss)


def test_full_fine_tune_lowers_the_loss(tiny_llama: Path, data_dir: Path, tmp_path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "out"
    config = TrainConfig.model_validate(make_config(tiny_llama, data_dir, out))
    reports: list[dict] = []
    trainer = run(config, world_size=1, cuda=False, sinks=[reports.append], report_interval=0)

    losses = _losses(trainer)
    print(f"full fine-tune: {len(losses)} steps, first loss {losses[0]:.4f}, last {losses[-1]:.4f}")
    assert len(losses) == 18  # 24 examples / global batch 4 x 3 epochs
    assert losses[-1] < losses[0] - 0.5

    final = out / "final"
    names = {p.name for p in final.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not list(out.glob(".final*"))  # the temporary folder was renamed
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert model.dtype == torch.bfloat16  # saved in the run's precision
    assert tokenizer.pad_token == "[PAD]"
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    model = model.float()
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    trained_loss = _mean_loss(model, tokenizer, data_dir)
    base_loss = _mean_loss(base, tokenizer, data_dir)
    print(f"fixture loss: base {base_loss:.4f}, final model {trained_loss:.4f}")
    assert trained_loss < base_loss - 0.5

    # the progress reporter saw the run, in the operator's field names
    assert [r["step"] for r in reports] == sorted(r["step"] for r in reports)
    last = reports[-1]
    assert (last["step"], last["totalSteps"], last["summary"]) == (18, 18, "18/18 (100%)")
    assert last["epoch"] == 3.0
    assert abs(last["loss"] - sum(losses[-10:]) / 10) < 1e-4  # smoothed over the last 10
    assert 0 <= last["learningRate"] < 1e-3
    assert last["eta"] == "0s"


def test_lora_writes_an_adapter_and_trains_only_it(
    tiny_llama: Path, data_dir: Path, tmp_path: Path
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    config = TrainConfig.model_validate(make_config(tiny_llama, data_dir, out, method="lora"))
    trainer = run(config, world_size=1, cuda=False, sinks=[], report_interval=0)
    losses = _losses(trainer)
    print(f"lora: {len(losses)} steps, first loss {losses[0]:.4f}, last {losses[-1]:.4f}")
    assert losses[-1] < losses[0]

    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)

    final = out / "final"
    names = {p.name for p in final.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= names
    assert "model.safetensors" not in names
    adapter_config = json.loads((final / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA"
    assert (adapter_config["r"], adapter_config["lora_alpha"]) == (4, 8)
    assert set(adapter_config["target_modules"]) == {"q_proj", "v_proj"}
    assert adapter_config["task_type"] == "CAUSAL_LM"
    with safe_open(final / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and all("lora_A" in k or "lora_B" in k for k in keys)
    assert len(keys) == 2 * 2 * 2  # A and B, q_proj and v_proj, 2 layers

    # the adapter loads on the unchanged base, and fits the data better than the base alone
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(final)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    base_loss = _mean_loss(base, tokenizer, data_dir)
    tuned = PeftModel.from_pretrained(base, final)
    tuned_loss = _mean_loss(tuned, tokenizer, data_dir)
    print(f"fixture loss: base {base_loss:.4f}, base + adapter {tuned_loss:.4f}")
    assert tuned_loss < base_loss


def _config(method: str = "full") -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "modelPath": "/m",
            "dataPath": "/d",
            "outputDir": "/out",
            "method": method,
            "hyperparameters": {
                "globalBatchSize": 128,
                "perDeviceBatchSize": 4,
                "precision": "bf16",
            },
            "saveSteps": 50,
            "keepCheckpoints": 3,
        }
    )


def test_arguments_on_gpus_shard_full_fine_tuning_with_fsdp():
    kwargs = training_arguments_kwargs(_config("full"), world_size=8, cuda=True)
    assert kwargs["output_dir"] == "/out/checkpoints"
    assert (kwargs["per_device_train_batch_size"], kwargs["gradient_accumulation_steps"]) == (4, 4)
    assert (kwargs["bf16"], kwargs["fp16"], kwargs["use_cpu"]) == (True, False, False)
    assert (kwargs["save_strategy"], kwargs["save_steps"], kwargs["save_total_limit"]) == (
        "steps",
        50,
        3,
    )
    assert (kwargs["learning_rate"], kwargs["num_train_epochs"], kwargs["warmup_steps"]) == (
        2e-5,
        3,
        0.03,
    )
    assert (kwargs["lr_scheduler_type"], kwargs["logging_steps"], kwargs["report_to"]) == (
        "cosine",
        1,
        "none",
    )
    assert kwargs["fsdp"] is True
    assert kwargs["fsdp_config"]["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    assert kwargs["fsdp_config"]["reshard_after_forward"] is True
    assert "ddp_backend" not in kwargs

    lora = training_arguments_kwargs(_config("lora"), world_size=8, cuda=True)
    assert "fsdp" not in lora  # DDP for LoRA
    single = training_arguments_kwargs(_config("full"), world_size=1, cuda=True)
    assert "fsdp" not in single


def test_arguments_on_cpu_are_fp32_ddp_over_gloo():
    from transformers import TrainingArguments

    kwargs = training_arguments_kwargs(_config("full"), world_size=2, cuda=False)
    assert (kwargs["bf16"], kwargs["fp16"], kwargs["use_cpu"]) == (False, False, True)
    assert kwargs["ddp_backend"] == "gloo"
    assert "fsdp" not in kwargs
    assert kwargs["gradient_accumulation_steps"] == 16
    args = TrainingArguments(**training_arguments_kwargs(_config("full"), world_size=1, cuda=False))
    assert args.get_warmup_steps(1000) == 30
    assert args.save_total_limit == 3 and not args.bf16
