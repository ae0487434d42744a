"""The model: Stanford's special-token defaults with mean-initialised embeddings (full), and
LoRA on the unchanged base (lora)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from alpaca_training.config import TrainConfig
from alpaca_training.model import (
    load_model_and_tokenizer,
    missing_special_tokens,
    smart_tokenizer_and_embedding_resize,
)


def _config(model: Path, method: str) -> TrainConfig:
    return TrainConfig.model_validate(
        {"modelPath": str(model), "dataPath": "/d", "outputDir": "/o", "method": method}
    )


def _base(model: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)


def test_full_adds_pad_with_mean_embeddings(tiny_llama: Path):
    base = _base(tiny_llama)
    old_in = base.get_input_embeddings().weight.detach().clone()
    old_out = base.get_output_embeddings().weight.detach().clone()
    model, tokenizer = load_model_and_tokenizer(_config(tiny_llama, "full"), cuda=False)
    assert tokenizer.pad_token == "[PAD]"
    pad = tokenizer.pad_token_id
    assert pad == old_in.shape[0] == len(tokenizer) - 1
    new_in = model.get_input_embeddings().weight.detach()
    new_out = model.get_output_embeddings().weight.detach()
    assert new_in.shape[0] == new_out.shape[0] == len(tokenizer)
    assert not torch.equal(old_in.mean(0), old_out.mean(0))  # two different means to check
    torch.testing.assert_close(new_in[pad], old_in.mean(0), rtol=0, atol=1e-7)
    torch.testing.assert_close(new_out[pad], old_out.mean(0), rtol=0, atol=1e-7)
    torch.testing.assert_close(new_in[:pad], old_in, rtol=0, atol=0)  # old rows untouched
    torch.testing.assert_close(new_out[:pad], old_out, rtol=0, atol=0)
    assert model.config.pad_token_id == pad
    assert model.dtype == torch.float32


def test_missing_eos_bos_unk_get_stanfords_defaults(tiny_llama: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    bare = Tokenizer(models.WordLevel({"hello": 0, "world": 1, "x": 2}, unk_token=None))
    bare.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bare)
    wanted = missing_special_tokens(tokenizer)
    assert wanted == {
        "pad_token": "[PAD]",
        "eos_token": "</s>",
        "bos_token": "<s>",
        "unk_token": "<unk>",
    }

    model = _base(tiny_llama)  # vocabulary 568: the 3 new ids fit, no resize needed
    rows = model.get_input_embeddings().weight.shape[0]
    old_mean = model.get_input_embeddings().weight[:3].detach().mean(0).clone()
    assert smart_tokenizer_and_embedding_resize(wanted, tokenizer, model) == 4
    assert model.get_input_embeddings().weight.shape[0] == rows
    ids = [tokenizer.convert_tokens_to_ids(t) for t in wanted.values()]
    assert sorted(ids) == [3, 4, 5, 6]
    for row in ids:
        torch.testing.assert_close(
            model.get_input_embeddings().weight[row].detach(), old_mean, rtol=0, atol=1e-7
        )
    assert missing_special_tokens(tokenizer) == {}


def test_lora_keeps_the_vocabulary_and_trains_only_adapters(tiny_llama: Path):
    base_rows = _base(tiny_llama).get_input_embeddings().weight.shape[0]
    model, tokenizer = load_model_and_tokenizer(_config(tiny_llama, "lora"), cuda=False)
    assert tokenizer.pad_token == "<unk>"  # reused: the adapter must fit the unchanged base
    assert len(tokenizer) == base_rows
    assert model.get_input_embeddings().weight.shape[0] == base_rows
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    assert all("lora_A" in n or "lora_B" in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == {"q_proj", "v_proj"}
    config = model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout, config.bias) == (8, 16, 0.05, "none")
    assert config.task_type == "CAUSAL_LM"


def test_lora_without_eos_is_refused(tmp_path: Path, tiny_llama: Path):
    import shutil

    from transformers import AutoTokenizer

    copy = tmp_path / "no-eos"
    shutil.copytree(tiny_llama, copy)
    tokenizer = AutoTokenizer.from_pretrained(copy)
    tokenizer.eos_token = None
    tokenizer.save_pretrained(copy)
    with pytest.raises(ValueError, match="no eos token"):
        load_model_and_tokenizer(_config(copy, "lora"), cuda=False)
