"""Tiny random Llamas for the recovery tests, made the way Stanford made Alpaca's weight diff.

raw: a LLaMA-like base whose tokenizer has no pad token (safetensors, several shards).
tuned: raw with its embeddings grown by a "[PAD]" row (the mean of the others, as
`smart_tokenizer_and_embedding_resize` does), every weight scaled by 1 + U(-1%, 1%), as a
fine-tune would move it. Since tuned and raw are within a factor of two, tuned - raw is exact
in float32 (Sterbenz), so diff + raw gives tuned back bit for bit.
diff: tuned - resized raw, in float32, as safetensors shards and as `.bin` shards (how the
real Alpaca-7B diff is published).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tests.tiny_llama import tiny_config, train_tokenizer


@dataclass
class Llamas:
    raw: Path
    tuned: Path
    diff: Path
    diff_bin: Path
    checksum: float  # the script's integrity value for tuned (sum of tensor sums, in order)


def _resize_like_alpaca(model, tokenizer) -> None:
    """smart_tokenizer_and_embedding_resize: add "[PAD]", new rows = mean of the old rows."""
    added = tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    model.resize_token_embeddings(len(tokenizer))
    for emb in (
        model.get_input_embeddings().weight.data,
        model.get_output_embeddings().weight.data,
    ):
        emb[-added:] = emb[:-added].mean(dim=0, keepdim=True)


def save_bin_shards(state: dict, folder: Path, shards: int) -> None:
    """Write a state dict as `pytorch_model-0000k-of-0000n.bin` shards plus the index."""
    import torch

    keys = list(state)
    per = -(-len(keys) // shards)
    weight_map = {}
    for i in range(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {k: state[k].clone() for k in keys[i * per : (i + 1) * per]}
        torch.save(part, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, sort_keys=True))


def build(root: Path) -> Llamas:
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    raw_tok = train_tokenizer()
    raw = LlamaForCausalLM(tiny_config(raw_tok)).to(torch.float32)
    paths = Llamas(root / "raw", root / "tuned", root / "diff", root / "diff-bin", 0.0)
    raw.save_pretrained(paths.raw, max_shard_size="200KB")
    raw_tok.save_pretrained(paths.raw)

    tuned = raw
    tuned_tok = train_tokenizer()
    _resize_like_alpaca(tuned, tuned_tok)
    resized_raw = {k: v.clone() for k, v in tuned.state_dict().items()}
    with torch.no_grad():
        for param in tuned.parameters():
            param.mul_(1 + (torch.rand_like(param) * 2 - 1) * 0.01)
    tuned.save_pretrained(paths.tuned, max_shard_size="200KB")
    tuned_tok.save_pretrained(paths.tuned)
    state = tuned.state_dict()
    paths.checksum = float(sum(state[k].sum() for k in state))

    with torch.no_grad():
        for key, tensor in tuned.state_dict().items():
            tensor.sub_(resized_raw[key])
    tuned.save_pretrained(paths.diff, max_shard_size="200KB")
    tuned_tok.save_pretrained(paths.diff)
    paths.diff_bin.mkdir()
    save_bin_shards(tuned.state_dict(), paths.diff_bin, shards=3)
    tuned_tok.save_pretrained(paths.diff_bin)
    (paths.diff_bin / "config.json").write_text((paths.diff / "config.json").read_text())
    return paths
