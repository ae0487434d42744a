"""PyTorch `.bin` checkpoints to safetensors, one shard at a time (torch.load with mmap).

Each `pytorch_model*.bin` becomes `model*.safetensors` (written to a temporary name and renamed),
the `.bin` index becomes `model.safetensors.index.json`, and the `.bin` files are removed
only once every shard is converted, so a retry never has to download them again. The state
dict's key order is kept in each file's metadata (`alpaca.key_order`): the integrity check of
a recovery sums tensors in that order, as the original script did.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from alpaca_weights import errors
from alpaca_weights.errors import WeightsError

BIN_INDEX = "pytorch_model.bin.index.json"
SAFE_INDEX = "model.safetensors.index.json"
KEY_ORDER = "alpaca.key_order"


def checkpoint_bins(folder: Path) -> list[Path]:
    """The PyTorch checkpoint shards of a model folder (not training_args.bin and the like)."""
    if not folder.is_dir():
        return []
    index = folder / BIN_INDEX
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    return sorted(folder.glob("pytorch_model*.bin"))


def safetensors_name(bin_name: str) -> str:
    """`pytorch_model-00001-of-00002.bin` -> `model-00001-of-00002.safetensors`."""
    stem = bin_name.removesuffix(".bin")
    stem = (
        "model" + stem.removeprefix("pytorch_model") if stem.startswith("pytorch_model") else stem
    )
    return f"{stem}.safetensors"


def _unshared(state: dict[str, Any]) -> dict[str, Any]:
    """Contiguous tensors, with a copy for any that shares storage with an earlier one."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for key, tensor in state.items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        out[key] = tensor.contiguous() if ident not in seen else tensor.clone().contiguous()
        seen.add(ident)
    return out


def convert_file(src: Path, dest: Path) -> list[str]:
    """One `.bin` shard to safetensors; its key order."""
    import torch
    from safetensors.torch import save_file

    try:
        try:
            state = torch.load(src, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (pre-zip) format cannot be memory-mapped
            state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(errors.CONVERSION_FAILED, f"{src.name}: {exc}") from exc
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    order = list(state)
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        save_file(_unshared(state), tmp, metadata={"format": "pt", KEY_ORDER: json.dumps(order)})
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise errors.from_local_os_error(exc, dest.name) from exc
    return order


def convert_folder(folder: Path) -> list[Path]:
    """Convert every checkpoint shard of `folder` in place; the safetensors files written."""
    bins = checkpoint_bins(folder)
    written = []
    for src in bins:
        dest = folder / safetensors_name(src.name)
        if not dest.exists():
            convert_file(src, dest)
        written.append(dest)
    index = folder / BIN_INDEX
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = {k: safetensors_name(v) for k, v in data["weight_map"].items()}
        (folder / SAFE_INDEX).write_text(json.dumps(data, indent=2, sort_keys=True))
        index.unlink()
    for src in bins:
        src.unlink(missing_ok=True)
    return written
