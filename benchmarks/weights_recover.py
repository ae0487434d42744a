"""Weight-diff recovery: peak memory vs the largest shard, time vs a plain read+write.

One run builds a float32 "base" and "diff" of the same layout (--shards safetensors shards of
--shard-mib each), then runs, each in a fresh child process so that peak RSS is its own:
  - plain:   read every diff and base shard's bytes, write the diff's bytes out (no arithmetic);
  - recover: `alpaca_weights.recover.recover(diff, base, out)`.
Each child imports torch and safetensors first and measures from there (time, and peak RSS
above its RSS after the imports). Prints recover's peak / the largest shard (goal <= 2) and
recover's time / plain's (goal <= 1.5). Each runs --repeats times, alternating; medians.

    .venv/bin/python benchmarks/weights_recover.py [--shards 4] [--shard-mib 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build(root: Path, shards: int, shard_mib: int) -> None:
    import torch
    from safetensors.torch import save_file

    rows = shard_mib * 2**20 // 4 // 4096 // 4  # four tensors of [rows, 4096] per shard
    for name in ("base", "diff"):
        folder = root / name
        folder.mkdir()
        weight_map = {}
        for s in range(shards):
            shard = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            tensors = {
                f"model.layers.{s}.mlp.{p}.weight": torch.randn(rows, 4096)
                for p in ("gate_proj", "up_proj", "down_proj", "o_proj")
            }
            save_file(tensors, folder / shard, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(tensors, shard))
        index = {"metadata": {}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        (folder / "config.json").write_text('{"model_type": "llama", "torch_dtype": "float32"}')


def _status(field: str) -> float:
    """A /proc/self/status memory figure, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def child(kind: str, root: Path) -> None:
    """Run one kind; print the seconds it took and its peak RSS above the RSS after imports
    (the high-water mark is reset once torch is loaded: write 5 to /proc/self/clear_refs)."""
    import safetensors  # noqa: F401
    import torch  # noqa: F401

    Path("/proc/self/clear_refs").write_text("5")
    floor = _status("VmRSS")
    started = time.perf_counter()
    out = root / "out"
    if kind == "plain":
        out.mkdir()
        for path in sorted((root / "diff").glob("*.safetensors")):
            diff = path.read_bytes()
            (root / "base" / path.name).read_bytes()
            (out / path.name).write_bytes(diff)
            del diff
    elif kind == "recover":
        sys.path.insert(0, str(REPO / "operator"))
        from alpaca_weights.recover import recover

        recover(root / "diff", root / "base", out)
    took = time.perf_counter() - started
    print(json.dumps({"seconds": took, "added": _status("VmHWM") - floor, "floor": floor}))


def measure(kind: str, root: Path) -> tuple[float, float]:
    """Seconds of the work and peak RSS (MiB) it added, from a fresh child process."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(root)],
        check=True,
        capture_output=True,
        text=True,
    )
    shutil.rmtree(root / "out", ignore_errors=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return data["seconds"], data["added"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--shard-mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return
    root = Path(tempfile.mkdtemp(prefix="alpaca-bench-recover-"))
    try:
        build(root, args.shards, args.shard_mib)
        largest = max(p.stat().st_size for p in (root / "diff").glob("*.safetensors")) / 2**20
        results: dict[str, list[tuple[float, float]]] = {"plain": [], "recover": []}
        for _ in range(args.repeats):
            for kind in results:
                results[kind].append(measure(kind, root))
        med = {
            k: (statistics.median(t for t, _ in v), statistics.median(m for _, m in v))
            for k, v in results.items()
        }
        total = args.shards * largest
        print(
            f"model: {args.shards} shards x {largest:.0f} MiB float32 "
            f"({total:.0f} MiB diff + {total:.0f} MiB base), {args.repeats} repeats, medians"
        )
        for kind, (took, rss) in med.items():
            print(f"{kind:8}: {took:6.2f} s  peak RSS above the import floor {rss:7.0f} MiB")
        print(
            f"ratio recover peak RSS / largest shard: {med['recover'][1] / largest:.2f}  (goal <= 2)"
        )
        print(
            f"ratio recover time / plain read+write: {med['recover'][0] / med['plain'][0]:.2f}  (goal <= 1.5)"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
