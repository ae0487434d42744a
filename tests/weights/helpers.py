"""Helpers of the weights tests."""

from __future__ import annotations

import random
from pathlib import Path

FILES = {
    "config.json": 300,
    "model-00001-of-00002.safetensors": 3 << 20,
    "model-00002-of-00002.safetensors": (2 << 20) + 12345,
    "sub/tokenizer.json": 4000,
}
TOTAL = sum(FILES.values())


def write_model(folder: Path, seed: int = 0) -> Path:
    """A model-shaped folder of random bytes (sizes in FILES)."""
    rng = random.Random(seed)
    for name, size in FILES.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
    return folder


def read_term(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def no_marker(dest: Path) -> bool:
    return (
        not (dest / ".alpaca" / "complete").exists()
        and not (dest / ".alpaca" / "manifest.json").exists()
    )


def same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(
        p.relative_to(b) for p in b.rglob("*") if p.is_file() and ".alpaca" not in p.parts
    )
    return files_a == files_b and all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
