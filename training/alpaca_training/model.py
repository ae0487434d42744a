"""The tokenizer and model: Stanford Alpaca's special-token defaults and mean-initialised new
embeddings (full fine-tuning), or LoRA adapters on the unchanged base (peft).

Heavy imports (torch, transformers, peft) happen inside the functions.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from alpaca_training.config import LoraSettings, TrainConfig

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DEFAULT_PAD_TOKEN = "[PAD]"
DEFAULT_EOS_TOKEN = "</s>"
DEFAULT_BOS_TOKEN = "<s>"
DEFAULT_UNK_TOKEN = "<unk>"


def load_tokenizer(model_path: Path, max_length: int) -> PreTrainedTokenizerBase:
    """The base model's tokenizer, padding on the right, cut at max_length."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        model_path, model_max_length=max_length, padding_side="right"
    )


def missing_special_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[str, str]:
    """Stanford's defaults for the special tokens the tokenizer lacks ([PAD], </s>, <s>, <unk>)."""
    defaults = {
        "pad_token": DEFAULT_PAD_TOKEN,
        "eos_token": DEFAULT_EOS_TOKEN,
        "bos_token": DEFAULT_BOS_TOKEN,
        "unk_token": DEFAULT_UNK_TOKEN,
    }
    return {name: token for name, token in defaults.items() if getattr(tokenizer, name) is None}


def smart_tokenizer_and_embedding_resize(
    special_tokens: dict[str, str], tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel
) -> int:
    """Add the special tokens; for each token new to the vocabulary, the row of the input AND
    output embeddings becomes the mean of the rows before it (Stanford Alpaca's
    smart_tokenizer_and_embedding_resize). The matrices grow only when the new ids do not fit
    (a vocabulary padded for speed keeps its size). Returns the number of new tokens."""
    import torch

    first_new = len(tokenizer)
    added = tokenizer.add_special_tokens(special_tokens)  # type: ignore[arg-type]
    if added == 0:
        return 0
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # set below
    with torch.no_grad():
        for embeddings in (model.get_input_embeddings(), model.get_output_embeddings()):
            if embeddings is None:
                continue
            weight: torch.Tensor = embeddings.weight
            weight[first_new : first_new + added] = weight[:first_new].mean(dim=0, keepdim=True)
    log.info("added %d special token(s) %s; new embedding rows = mean", added, special_tokens)
    return added


def _reuse_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """LoRA keeps the base vocabulary (the adapter must load on the unchanged base in vLLM), so a
    missing pad token reuses <unk>, else </s> (as alpaca-lora); padding is masked either way."""
    if tokenizer.eos_token is None:
        raise ValueError("the base tokenizer has no eos token; method lora cannot add one")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        log.info("lora: no pad token; padding with %r (the vocabulary stays)", tokenizer.pad_token)


def model_dtype(method: Literal["full", "lora"], precision: str, cuda: bool) -> torch.dtype:
    """Full fine-tuning keeps fp32 master weights (the Trainer's mixed precision casts); LoRA
    on a GPU loads the frozen base in the training precision to save memory (peft keeps the
    adapter weights in fp32)."""
    import torch

    if method == "lora" and cuda:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    return torch.float32


def lora_config(settings: LoraSettings) -> LoraConfig:
    """peft's LoraConfig for a causal LM from the run's settings."""
    from peft import LoraConfig, TaskType

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type=TaskType.CAUSAL_LM,
        bias="none",
    )


def load_model_and_tokenizer(
    config: TrainConfig, cuda: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model to train (full: the whole model; lora: a PeftModel with only the adapters
    trainable) and its tokenizer, special tokens settled."""
    from transformers import AutoModelForCausalLM

    hp = config.hyperparameters
    tokenizer = load_tokenizer(config.model_path, hp.max_length)
    model = AutoModelForCausalLM.from_pretrained(
        config.model_path, dtype=model_dtype(config.method, hp.precision, cuda)
    )
    if config.method == "full":
        smart_tokenizer_and_embedding_resize(missing_special_tokens(tokenizer), tokenizer, model)
    else:
        _reuse_pad_token(tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    if config.method == "lora":
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(config.lora_settings))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        log.info("lora: %d of %d parameters trainable", trainable, total)
    return model, tokenizer
