"""Stanford Alpaca weight-diff recovery, streamed tensor by tensor over safetensors shards.

The arithmetic of stanford_alpaca's `weight_diff.py recover`: both models in float32; when the
base's tokenizer has no pad token, the base's input and output embeddings grow by the rows the
diff has more (the "[PAD]" token), each new row the mean of the old rows, as
`smart_tokenizer_and_embedding_resize` does; then tuned = diff + base for every key of the
diff; the integrity check is the sum over keys (in state-dict order) of each tensor's float32
sum, compared with the expected value at atol 1e-2; the tokenizer and config come from the diff.

Unlike the script, which holds two float32 models, this reads one tensor of the diff at a
time and the base tensor it needs (`tensorfile`: pread, no memory map) and writes the sum at
once into the output shard: memory is a few tensors, not even one shard. The output keeps the diff's shard layout and, unless told
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

from alpaca_weights import errors, tensorfile
from alpaca_weights.convert import KEY_ORDER, SAFE_INDEX
from alpaca_weights.errors import WeightsError

ATOL = 1e-2
ALPACA_7B_CHECKSUM = 50637.1836
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".part", ".done")
SKIPPED_FILES = {SAFE_INDEX, "pytorch_model.bin.index.json"}


def shards(folder: Path) -> dict[str, Path]:
    """Every tensor key of a safetensors model folder, mapped to its shard file."""
    index = folder / SAFE_INDEX
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {key: folder / name for key, name in weight_map.items()}
    out: dict[str, Path] = {}
    for path in sorted(folder.glob("*.safetensors")):
        out.update(dict.fromkeys((e.name for e in tensorfile.read_header(path).entries), path))
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
    """The base model's tensors, read one at a time (pread, no memory map), in float32."""

    def __init__(self, folder: Path, config: dict[str, Any], stack: ExitStack) -> None:
        self.map = shards(folder)
        self.pad_added = not has_pad_token(folder)
        self.config = config
        self._stack = stack
        self._open: dict[Path, tuple[Any, tensorfile.Header]] = {}

    def _read(self, key: str) -> Any:
        path = self.map[key]
        if path not in self._open:
            fh = self._stack.enter_context(open(path, "rb"))  # noqa: SIM115 - closed by the stack
            self._open[path] = (fh, tensorfile.read_header(path))
        fh, header = self._open[path]
        return tensorfile.read_tensor(fh, header, header.entry(key))

    def tensor(self, key: str, shape: tuple[int, ...]) -> Any:
        """The base tensor for `key`, float32, resized like the script resizes embeddings."""
        import torch

        if key not in self.map:
            if key.endswith("rotary_emb.inv_freq"):
                return rotary_inv_freq(self.config)
            raise WeightsError(errors.RECOVERY_FAILED, f"the base has no tensor {key}")
        raw = self._read(key).to(torch.float32)
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
    order: list[str] = []
    for path in sorted(set(diff_map.values())):
        header = tensorfile.read_header(path)
        meta = header.metadata
        order.extend(
            json.loads(meta[KEY_ORDER]) if KEY_ORDER in meta else [e.name for e in header.entries]
        )
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


def _recover_shard(shard: Path, base: Base, out: Path, out_dtype: Any, sums: dict[str, Any]) -> int:
    """diff + base for every tensor of one diff shard, each written as soon as it is made; the
    bytes written. Memory: a few tensors, never the shard."""
    import torch

    header = tensorfile.read_header(shard)
    layout = [
        (e.name, tensorfile.code_of(out_dtype) if out_dtype else e.dtype, e.shape)
        for e in header.entries
    ]
    dest = out / shard.name
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        writer = tensorfile.Writer(tmp, layout, {"format": "pt"})
        try:
            with open(shard, "rb") as fh:
                for entry in header.entries:
                    delta = tensorfile.read_tensor(fh, header, entry)
                    # in place when the diff is float32 (its buffer is ours): one tensor less
                    tuned = delta.to(torch.float32).add_(base.tensor(entry.name, entry.shape))
                    sums[entry.name] = tuned.sum()
                    writer.write(entry.name, tuned.to(out_dtype or delta.dtype))
                    del delta, tuned
            writer.close()
        except BaseException:
            writer.abort()
            raise
        os.replace(tmp, dest)
    except OSError as exc:
        raise errors.from_local_os_error(exc, dest.name) from exc
    return os.path.getsize(dest) - tensorfile.read_header(dest).data_start


def recover(
    diff: Path,
    base: Path,
    out: Path,
    expected_checksum: float | None = None,
    dtype: str | None = None,
) -> float:
    """Write diff + base into `out`; the integrity checksum (checked when one is expected)."""
    import torch

    diff_map = shards(diff)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise errors.from_local_os_error(exc, str(out)) from exc
    config_file = diff / "config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    out_dtype = getattr(torch, dtype) if dtype else None
    sums: dict[str, Any] = {}
    total_size = 0
    with ExitStack() as stack:
        base_model = Base(base, config, stack)
        for shard in sorted(set(diff_map.values())):
            total_size += _recover_shard(shard, base_model, out, out_dtype, sums)
    codes = {e.dtype for p in out.glob("*.safetensors") for e in tensorfile.read_header(p).entries}
    dtype_name = tensorfile.DTYPES[max(codes)] if len(codes) == 1 else "float32"
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
