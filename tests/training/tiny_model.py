"""A tiny random Llama whose tokenizer is trained here on the Alpaca fixture: fine-tunes on CPU
in seconds. The tokenizer has <unk>, <s> and </s> but no pad token, like LLaMA's."""

from __future__ import annotations

import json
from pathlib import Path

from alpaca_training.data import PROMPT_DICT

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "alpaca_tiny.jsonl"


def corpus() -> list[str]:
    """The fixture's text and the two templates, to train the tokenizer on."""
    texts = [PROMPT_DICT["prompt_input"], PROMPT_DICT["prompt_no_input"]]
    for line in FIXTURE.read_text().splitlines():
        record = json.loads(line)
        texts.extend(record[key] for key in ("instruction", "input", "output") if record[key])
    return texts * 5


def build_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """Write a tiny random LlamaForCausalLM (safetensors) and its tokenizer into `folder`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )  # a bos first, as LLaMA's tokenizer does
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder
