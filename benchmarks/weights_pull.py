"""Pull throughput of `alpaca-weights fill` vs a raw copy of the same bytes over loopback.

One run: a folder of model-sized random files is served by a separate `python -m http.server`
process on 127.0.0.1; then, alternating, (a) a raw copy — one `requests` stream per file,
written to disk, nothing else — and (b) the fill — listing, parallel ranged downloads, sha256
while writing, fsync, manifest and marker. Prints the median throughput of each and the
ratio fill/raw (goal >= 0.9).

    .venv/bin/python benchmarks/weights_pull.py [--mib 768] [--files 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))


def make_files(root: Path, total_mib: int, files: int) -> list[str]:
    names = []
    per = total_mib * 2**20 // files
    for i in range(files):
        name = f"model-{i + 1:05d}-of-{files:05d}.safetensors"
        with open(root / name, "wb") as fh:
            for _ in range(per // 2**20):
                fh.write(os.urandom(2**20))
        names.append(name)
    (root / "config.json").write_text('{"model_type": "llama"}')
    return [*names, "config.json"]


def _copy_one(url: str, name: str, dest: Path) -> None:
    import requests

    with requests.get(f"{url}/{name}", stream=True) as resp, open(dest / name, "wb") as fh:
        resp.raise_for_status()
        for chunk in resp.iter_content(1 << 20):
            fh.write(chunk)


def raw_copy(url: str, names: list[str], dest: Path, workers: int = 1) -> None:
    """The bytes and nothing else: `workers` plain streams, no hashing, no fsync."""
    from concurrent.futures import ThreadPoolExecutor

    dest.mkdir()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda name: _copy_one(url, name, dest), names))


def fill(url: str, dest: Path) -> None:
    from alpaca_weights import cli

    code = cli.main(
        [
            *("--termination-log", os.devnull, "fill", "--source", f"{url}/"),
            *("--dest", str(dest), "--progress-interval", "60"),
        ]
    )
    if code != 0:
        raise SystemExit(f"fill failed with {code}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=768)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="alpaca-bench-pull-"))
    server = None
    try:
        src = work / "src"
        src.mkdir()
        names = make_files(src, args.mib, args.files)
        nbytes = sum((src / n).stat().st_size for n in names)
        port = 18000 + os.getpid() % 1000
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
            cwd=src,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        time.sleep(1.0)
        runs = {
            "raw, 1 stream": lambda dest: raw_copy(url, names, dest, 1),
            "raw, 4 streams": lambda dest: raw_copy(url, names, dest, 4),
            "fill (4 workers)": lambda dest: fill(url, dest),
        }
        times: dict[str, list[float]] = {kind: [] for kind in runs}
        for i in range(args.repeats):
            for j, (kind, run) in enumerate(runs.items()):
                dest = work / f"run-{i}-{j}"
                started = time.perf_counter()
                run(dest)
                times[kind].append(time.perf_counter() - started)
                shutil.rmtree(dest)
        mib = nbytes / 2**20
        medians = {kind: statistics.median(t) for kind, t in times.items()}
        print(f"bytes: {mib:.0f} MiB in {len(names)} files, {args.repeats} repeats, medians")
        for kind, took in medians.items():
            print(f"{kind:17}: {took:6.2f} s  {mib / took:7.1f} MiB/s")
        ours = medians["fill (4 workers)"]
        for kind in ("raw, 1 stream", "raw, 4 streams"):
            print(f"ratio fill / {kind}: {medians[kind] / ours:.3f}  (goal >= 0.9)")
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
