"""Stanford Alpaca weight-diff recovery, streamed tensor by tensor over safetensors shards.

The arithmetic of stanford_alpaca's `weight_diff.py recover`: both models in float32; when the
base's tokenizer has no pad token, the base's input and output embeddings grow by the rows the
diff has more (the "[PAD]" token), each new row the mean of the old rows, as
`smart_tokenizer_and_embedding_resize` does; then tuned = diff + base for every key of the
diff; the integrity check is the sum over keys (in state-dict order) of each tensor's float32
sum, compared with the expected value at atol 1e-2; the tokenizer and config come from the diff.

Unlike the script, which holds two float32 models, this reads one diff shard at a time and
only the base tensors it needs (memory-mapped), writing each recovered shard before the next:
memory is about one output shard. The output keeps the diff's shard layout and, unless told
otherwise, the diff's dtype (float32 for Alpaca-7B, as the script saves).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from alpaca_operator.weights import errors
from alpaca_operator.weights.convert import KEY_ORDER, SAFE_INDEX
from alpaca_operator.weights.errors import WeightsError

ATOL = 1e-2
ALPACA_7B_CHECKSUM = 50637.1836
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".part", ".done")
SKIPPED_FILES = {SAFE_INDEX, "pytorch_model.bin.index.json"}


def shards(folder: Path) -> dict[str, Path]:
    """Every tensor key of a safetensors model folder, mapped to its shard file."""
    from safetensors import safe_open

    index = folder / SAFE_INDEX
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {key: folder / name for key, name in weight_map.items()}
    out: dict[str, Path] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, framework="pt") as fh:
            out.update(dict.fromkeys(fh.keys(), path))
    if not out:
        raise WeightsError(errors.RECOVERY_FAILED, f"no safetensors weights in {folder}")
    return out


def has_pad_token(folder: Path) -> bool:
    """Whether a model folder's tokenizer defines a pad token (as AutoTokenizer would see it)."""
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        try:
            data = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        if data.get("pad_token"):
            return True
    return False


def rotary_inv_freq(config: dict[str, Any]) -> Any:
    """`rotary_emb.inv_freq` as the LLaMA conversion script stored it (for a base without it)."""
    import torch

    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    theta = float(config.get("rope_theta", 10000.0))
    return 1.0 / (theta ** (torch.arange(0, dim, 2).float() / dim))


class Base:
    """The base model's tensors, read one at a time from memory-mapped shards, in float32."""

    def __init__(self, folder: Path, config: dict[str, Any], stack: ExitStack) -> None:
        self.map = shards(folder)
        self.pad_added = not has_pad_token(folder)
        self.config = config
        self._stack = stack
        self._open: dict[Path, Any] = {}

    def _handle(self, path: Path) -> Any:
        from safetensors import safe_open

        if path not in self._open:
            self._open[path] = self._stack.enter_context(safe_open(path, framework="pt"))
        return self._open[path]

    def tensor(self, key: str, shape: tuple[int, ...]) -> Any:
        """The base tensor for `key`, float32, resized like the script resizes embeddings."""
        import torch

        if key not in self.map:
            if key.endswith("rotary_emb.inv_freq"):
                return rotary_inv_freq(self.config)
            raise WeightsError(errors.RECOVERY_FAILED, f"the base has no tensor {key}")
        raw = self._handle(self.map[key]).get_tensor(key).to(torch.float32)
        if tuple(raw.shape) == shape:
            return raw
        grows = (
            len(shape) == raw.dim()
            and shape[1:] == tuple(raw.shape[1:])
            and shape[0] > raw.shape[0]
        )
        if not (grows and self.pad_added):
            raise WeightsError(
                errors.RECOVERY_FAILED,
                f"{key}: diff shape {list(shape)} does not fit base shape {list(raw.shape)}",
            )
        added = shape[0] - raw.shape[0]
        mean = raw.mean(dim=0, keepdim=True)
        return torch.cat([raw, mean.expand(added, *raw.shape[1:])], dim=0)


def _order(diff_map: dict[str, Path]) -> list[str]:
    """The diff's keys in state-dict order: from conversion metadata, else the index order."""
    from safetensors import safe_open

    order: list[str] = []
    for path in sorted(set(diff_map.values())):
        with safe_open(path, framework="pt") as fh:
            meta = fh.metadata() or {}
            keys = json.loads(meta[KEY_ORDER]) if KEY_ORDER in meta else list(fh.keys())
        order.extend(keys)
    return order if set(order) == set(diff_map) else list(diff_map)


def _copy_side_files(diff: Path, out: Path, dtype_name: str) -> None:
    """Config, tokenizer and other small files from the diff; config's dtype set to the output's."""
    out.mkdir(parents=True, exist_ok=True)
    for path in diff.iterdir():
        if (
            path.is_file()
            and not path.name.endswith(WEIGHT_SUFFIXES)
            and path.name not in SKIPPED_FILES
        ):
            shutil.copyfile(path, out / path.name)
    config_path = out / "config.json"
    if config_path.exists():
        config = json.loads(config_path.read_text())
        config["torch_dtype"] = dtype_name
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True))


def _write_shard(tensors: dict[str, Any], dest: Path) -> None:
    from safetensors.torch import save_file

    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        save_file(tensors, tmp, metadata={"format": "pt"})
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise errors.from_local_os_error(exc, dest.name) from exc


def recover(
    diff: Path,
    base: Path,
    out: Path,
    expected_checksum: float | None = None,
    dtype: str | None = None,
) -> float:
    """Write diff + base into `out`; the integrity checksum (checked when one is expected)."""
    import torch
    from safetensors import safe_open

    diff_map = shards(diff)
    config = (
        json.loads((diff / "config.json").read_text()) if (diff / "config.json").exists() else {}
    )
    sums: dict[str, Any] = {}
    out_dtype = getattr(torch, dtype) if dtype else None
    total_size = 0
    written: set[Any] = set()
    with ExitStack() as stack:
        base_model = Base(base, config, stack)
        for shard in sorted(set(diff_map.values())):
            recovered = {}
            with safe_open(shard, framework="pt") as fh:
                keys = list(fh.keys())
                for key in keys:
                    delta = fh.get_tensor(key)
                    target = out_dtype or delta.dtype
                    tuned = delta.to(torch.float32) + base_model.tensor(key, tuple(delta.shape))
                    sums[key] = tuned.sum()
                    recovered[key] = tuned.to(target).contiguous()
                    written.add(target)
                    total_size += recovered[key].numel() * recovered[key].element_size()
                    del delta, tuned
            _write_shard(recovered, out / shard.name)
            del recovered
    dtype_name = str(max(written, key=str) if written else torch.float32).removeprefix("torch.")
    _copy_side_files(diff, out, dtype_name)
    if (diff / SAFE_INDEX).exists():
        index = json.loads((diff / SAFE_INDEX).read_text())
        index["metadata"] = {"total_size": total_size}
        (out / SAFE_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))
    checksum = float(sum(sums[key] for key in _order(diff_map)))
    if expected_checksum is not None and not math.isclose(
        checksum, expected_checksum, rel_tol=0, abs_tol=ATOL
    ):
        raise WeightsError(
            errors.INTEGRITY_CHECK_FAILED,
            f"sum of tensor sums {checksum:.4f} != expected {expected_checksum:.4f} (atol {ATOL})",
        )
    return checksum
