"""The one tiny random Llama of every test tier: a LLaMA-shaped model small enough to train on
CPU in seconds and to load in vLLM's CPU build, with a byte-level BPE tokenizer trained here on
the Alpaca fixture (<unk>, <s> and </s>, a bos first, no pad token: like LLaMA's).

head_dim is 32 because vLLM's CPU attention supports {32, 64, 80, 96, 112, 128, ...}.
The weights tests (tests/weights/tiny.py) grow and shard it the way Stanford made Alpaca's
weight diff; the training tests fine-tune it; the serving tests serve it and an adapter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "alpaca_tiny.jsonl"
"""24 Alpaca-format records written for the project (instruction, input, output)."""


def corpus() -> list[str]:
    """The fixture's text and the two Alpaca templates, to train the tokenizer on."""
    from alpaca_training.data import PROMPT_DICT

    texts = [PROMPT_DICT["prompt_input"], PROMPT_DICT["prompt_no_input"]]
    for line in FIXTURE.read_text().splitlines():
        record = json.loads(line)
        texts.extend(record[key] for key in ("instruction", "input", "output") if record[key])
    return texts * 5


def train_tokenizer(vocab_size: int = 600, bos: bool = True) -> Any:
    """A fast tokenizer trained on `corpus()`; with `bos`, encodings start with <s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus(), trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def tiny_config(tokenizer: Any, **overrides: Any) -> Any:
    """Two layers, hidden size 64, head_dim 32; the tokenizer's vocabulary and special ids."""
    from transformers import LlamaConfig

    settings: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "max_position_embeddings": 1024,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "tie_word_embeddings": False,
    }
    return LlamaConfig(**(settings | overrides))


def build_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """Write a tiny random LlamaForCausalLM (float32 safetensors) and its tokenizer."""
    import torch
    from transformers import LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    LlamaForCausalLM(tiny_config(tokenizer)).save_pretrained(folder, safe_serialization=True)
    return folder
