"""What our Ray Serve app adds on top of the raw vLLM engine, measured side by side in one run.

Same model (a tiny random Llama, or --model DIR), same prompts, same concurrency, same
engine settings; first vLLM's own AsyncLLM engine driven directly, then the same engine
behind the Alpaca app on Ray Serve through its OpenAI HTTP API. Prints throughput (completion
tokens/s), the ratio, and p50 latency of each and the difference.

    .venv/bin/python benchmarks/serving_overhead.py [--model DIR] [--requests 64] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "Give three tips for staying healthy."
MAX_TOKENS = 32
ENGINE = {
    "dtype": "bfloat16",
    "max_model_len": 512,
    "enforce_eager": True,
    "kv_cache_memory_bytes": 256 * 2**20,
}


def summary(latencies: list[float], tokens: int, wall: float) -> tuple[float, float]:
    return tokens / wall, statistics.median(latencies)


def _cpu_by_process() -> dict[str, float]:
    """CPU seconds (user + system) of this machine's processes, by a short name."""
    import psutil

    out: dict[str, float] = {}
    for proc in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        times = proc.info["cpu_times"]
        if times is None:
            continue
        cmd = " ".join(proc.info["cmdline"] or [])
        name = proc.info["name"] or "?"
        for key in (
            "ServeReplica:alpaca:LLMServer",
            "ServeReplica:alpaca:OpenAiIngress",
            "ServeReplica:alpaca:AlpacaIngress",
            "ProxyActor",
            "ServeController",
            "raylet",
            "gcs_server",
            "EngineCore",
            "VLLM::Worker",
        ):
            if key in cmd or key in name:
                name = key
                break
        else:
            if proc.pid == os.getpid():
                name = "benchmark client (this process)"
            elif "ray::" in cmd or "ray/" in cmd:
                name = "other Ray processes"
            else:
                name = "other"
        out[name] = out.get(name, 0.0) + times.user + times.system
    return out


def _cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {
        k: after.get(k, 0.0) - before.get(k, 0.0)
        for k in after
        if after.get(k, 0.0) - before.get(k, 0.0) > 0.05
    }


CPU: dict[str, dict[str, float]] = {}
PEAK_RSS: dict[str, float] = {}


class RssPeak:
    """Samples the summed RSS of this process and the Ray / vLLM processes every 0.25 s."""

    def __init__(self, label: str) -> None:
        import threading

        self.label, self.peak = label, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _total(self) -> float:
        import psutil

        total = 0
        for proc in psutil.process_iter(["cmdline", "memory_info"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            mine = proc.pid == os.getpid()
            if proc.info["memory_info"] and (
                mine or any(k in cmd for k in ("ray", "VLLM", "vllm"))
            ):
                total += proc.info["memory_info"].rss
        return total / 2**30

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.peak = max(self.peak, self._total())

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        PEAK_RSS[self.label] = self.peak


async def _drive(call, requests: int, concurrency: int, label: str = "") -> tuple[float, float]:
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    tokens = 0

    async def one() -> None:
        nonlocal tokens
        async with sem:
            t0 = time.perf_counter()
            got = await call()  # awaited first: `tokens += await ...` reads tokens before the await
            tokens += got
            latencies.append(time.perf_counter() - t0)

    await call()  # warm-up
    cpu_before = _cpu_by_process()
    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(requests)))
    wall = time.perf_counter() - start
    CPU[label] = _cpu_delta(cpu_before, _cpu_by_process()) | {"(wall seconds)": wall}
    return summary(latencies, tokens, wall)


def raw_engine(model: str, prompt: str, requests: int, concurrency: int) -> tuple[float, float]:
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model=model, **ENGINE))
    params = SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True, temperature=0)
    counter = iter(range(10**9))

    async def call() -> int:
        final = None
        async for out in engine.generate(prompt, params, request_id=str(next(counter))):
            final = out
        return len(final.outputs[0].token_ids) if final else 0

    try:
        return asyncio.run(_drive(call, requests, concurrency, "raw vLLM engine"))
    finally:
        engine.shutdown()


def ray_app(
    model: str, prompt: str, requests: int, concurrency: int, work: str
) -> tuple[float, float]:
    import openai
    import ray
    from ray import serve

    from alpaca_serving.app import build_app

    ray.init(num_cpus=8, _temp_dir=f"{work}/r", include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 18123})
        config = {
            "model_path": model,
            "served_model_name": "m",
            "accelerator": "cpu",
            "engine_kwargs": ENGINE,
        }
        serve.run(build_app(config), name="alpaca", route_prefix="/")
        client = openai.AsyncOpenAI(base_url="http://127.0.0.1:18123/v1", api_key="unused")

        async def call() -> int:
            reply = await client.completions.create(
                model="m",
                prompt=prompt,
                max_tokens=MAX_TOKENS,
                temperature=0,
                extra_body={"ignore_eos": True},
            )
            return reply.usage.completion_tokens

        return asyncio.run(_drive(call, requests, concurrency, "Alpaca Ray app"))
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="model folder (default: a tiny random Llama built now)")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    from alpaca_dev.shm import engine_shm_files, remove_orphaned_shm

    shm_before = engine_shm_files()
    work = tempfile.mkdtemp(prefix="bench", dir="/tmp")
    os.environ.update(TMPDIR=work, VLLM_CACHE_ROOT=f"{work}/vllm")
    try:
        model = args.model
        if model is None:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
            from tests.tiny_llama import build_tiny_llama

            model = str(build_tiny_llama(Path(work) / "tiny"))
        with RssPeak("raw vLLM engine"):
            raw_tps, raw_p50 = raw_engine(model, PROMPT, args.requests, args.concurrency)
        with RssPeak("Alpaca Ray app"):
            app_tps, app_p50 = ray_app(model, PROMPT, args.requests, args.concurrency, work)
        print(f"requests={args.requests} concurrency={args.concurrency} max_tokens={MAX_TOKENS}")
        print(f"raw vLLM engine : {raw_tps:8.1f} tokens/s   p50 {raw_p50 * 1000:7.1f} ms")
        print(f"Alpaca Ray app  : {app_tps:8.1f} tokens/s   p50 {app_p50 * 1000:7.1f} ms")
        print(
            f"throughput ratio (app/raw): {app_tps / raw_tps:.3f}   added p50: {(app_p50 - raw_p50) * 1000:.1f} ms"
        )
        for label, peak in PEAK_RSS.items():
            print(f"memory peak (summed RSS of its processes), {label}: {peak:.2f} GiB")
        print("where the CPU time went during each measured run (seconds):")
        for label, cpu in CPU.items():
            print(f"  {label}:")
            for name, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]):
                print(f"    {seconds:7.2f}  {name}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        remove_orphaned_shm(engine_shm_files() - shm_before)  # left by the engines
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
