"""Which replica gets a request with a long shared prefix: prefix-cache-aware routing against
the balancing the app does today (issue 14 item 5).

Two replicas of one model, served by `python -m alpaca_serving serve`, and a workload of shared
long prefixes: --prefixes documents (a system prompt or a retrieved document, --prefix-tokens
tokens each), each asked --questions short questions, sent in a shuffled order (the same for
every row) at --concurrency. Rows:

  fast             the fast path as it is by default: HAProxy balances by least connections
                   (no Python hop)
  fast-ray         the fast path with `request_router: ray`: Ray's LLMRouter picks the
                   replica for HAProxy, round robin
  fast-prefix      the fast path with Ray Serve LLM's PrefixCacheAffinityRouter in the LLMRouter
                   (HAProxy forwards each request's body to it)
  standard         the standard path, Serve's default router (power of two choices)
  standard-prefix  the standard path, PrefixCacheAffinityRouter in the OpenAI ingress's handle

Per row: the engines' prefix-cache hit rate (vLLM's prefix_cache_hits / prefix_cache_queries,
in tokens, summed over both replicas, for the measured requests only), how the requests split
between the replicas, TTFT p50/p99, end-to-end p50/p99, output tok/s. The KV cache of each
replica holds about --cache-share of all the prefixes' tokens (default 0.6): one replica cannot
keep every prefix, two can, which is where routing decides the hit rate (on a GPU the cache is
larger, and so are the number and length of real prefixes). Rounds alternate the row order.

    .venv/bin/python benchmarks/prefix_routing.py [--model smollm2] [--rounds 2]
        [--prefixes 8] [--questions 8] [--prefix-tokens 400] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving_overhead import (
    PYTHON,
    REPO,
    Scratch,
    Tree,
    _wait_ready,
    free_port,
    med,
    model_folder,
    pct,
)

ROWS = ("fast", "fast-ray", "fast-prefix", "standard", "standard-prefix")
# made-up words the documents are written in
WORDS = [
    a + b for a in ("ka", "lo", "mi", "ru", "se", "ta", "vo", "ne") for b in ("n", "r", "st", "l")
]
QUESTIONS = (
    "What is the main topic?",
    "Name one thing it mentions.",
    "Summarise it in five words.",
    "Which word comes first?",
    "Is it about a place?",
    "What colour appears in it?",
    "Give it a short title.",
    "What would you ask next?",
    "Does it mention weather?",
    "Which tool is named?",
    "Is there an animal in it?",
    "What is the last word?",
)


def kv_bytes_per_token(model: str) -> int:
    """bf16 K and V of every layer for one token."""
    cfg = json.loads((Path(model) / "config.json").read_text())
    heads = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return 2 * cfg["num_hidden_layers"] * heads * head_dim * 2


def workload(
    model: str, prefixes: int, questions: int, prefix_tokens: int, seed: int
) -> list[tuple[int, str]]:
    """(prefix index, prompt) in a shuffled order; each prefix is --prefix-tokens long and
    differs from the others from its first token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    rng = random.Random(seed)
    docs = []
    for i in range(prefixes):
        words = [f"Document {i} ({rng.randrange(10**6)}):"]
        while len(tok(" ".join(words))["input_ids"]) < prefix_tokens:
            words.append(rng.choice(WORDS))
        docs.append(" ".join(words))
    out = [
        (i, f"{docs[i]}\nQuestion: {QUESTIONS[j % len(QUESTIONS)]}\nAnswer:")
        for i in range(prefixes)
        for j in range(questions)
    ]
    rng.shuffle(out)
    return out


NEEDLES = ("prefix_cache", "request_success", "cache_config_info")


def scrape(url: str) -> dict[str, float]:
    """The few series this benchmark reads (NEEDLES), summed over label sets by name and
    replica (`name@replica`)."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"([A-Za-z_:][\w:]*)(\{[^}]*\})?\s+([0-9.eE+-]+|NaN)$", line)
        if not m or not any(n in m.group(1) for n in NEEDLES):
            continue
        name = m.group(1)
        rid = re.search(r'ReplicaId="([^"]+)"', m.group(2) or "")
        if rid:
            name = f"{name}@{rid.group(1)}"
        out[name] = out.get(name, 0.0) + float(m.group(3))
    return out


def delta(after: dict[str, float], before: dict[str, float], needle: str) -> dict[str, float]:
    return {
        k: v - before.get(k, 0.0)
        for k, v in after.items()
        if needle in k.split("@")[0] and not k.split("@")[0].endswith("_created")
    }


@dataclass
class Result:
    row: str
    ttft: list[float]
    e2e: list[float]
    tokens: int
    wall: float
    errors: int
    hits: float
    queries: float
    split: list[float]  # requests finished per replica (the engines' own counters)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else float("nan")


async def _drive(url: str, prompts: list[str], concurrency: int, max_tokens: int) -> Any:
    import aiohttp

    sem = asyncio.Semaphore(concurrency)
    ttft: list[float] = []
    e2e: list[float] = []
    tokens = errors = 0

    async def one(session: Any, prompt: str) -> None:
        nonlocal tokens, errors
        body = {
            "model": "m",
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with sem:
            t0 = time.perf_counter()
            first = None
            try:
                async with session.post(f"{url}/v1/completions", json=body) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:300]}")
                    async for raw in resp.content:
                        line = raw.strip()
                        if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                            continue
                        obj = json.loads(line[5:])
                        if obj.get("usage"):
                            tokens += obj["usage"].get("completion_tokens") or 0
                        if first is None and (obj.get("choices") or [{}])[0].get("text"):
                            first = time.perf_counter() - t0
            except Exception as exc:
                errors += 1
                if errors == 1:
                    print(f"    request failed: {exc}", flush=True)
                return
            end = time.perf_counter() - t0
            ttft.append(first if first is not None else end)
            e2e.append(end)

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
    ) as session:
        start = time.perf_counter()
        await asyncio.gather(*(one(session, p) for p in prompts))
        return ttft, e2e, tokens, errors, time.perf_counter() - start


def run_row(row: str, model: str, work: Path, args: argparse.Namespace, load: list[str]) -> Result:
    engine = {
        "dtype": "bfloat16",
        "max_model_len": args.prefix_tokens + 128,
        "enforce_eager": True,
        "enable_prefix_caching": True,
        "kv_cache_memory_bytes": args.kv_cache_bytes,
    }
    config = {
        "model_path": model,
        "served_model_name": "m",
        "prompt_template": "none",
        "accelerator": "cpu",
        "engine_kwargs": engine,
        "autoscaling": {"min_replicas": 2, "max_replicas": 2},
        "request_router": {"prefix": "prefix_affinity", "ray": "ray"}.get(
            row.partition("-")[2], "least_connections"
        ),
    }
    (work / f"{row}.yaml").write_text(json.dumps(config))
    port, metrics = free_port(), free_port()
    env = dict(
        os.environ,
        TMPDIR=str(work),
        VLLM_CACHE_ROOT=str(work / "vllm"),
        TORCHINDUCTOR_CACHE_DIR=str(work / "inductor"),
        RAY_SERVE_HAPROXY_METRICS_PORT=str(free_port()),
        RAY_SERVE_HAPROXY_STATS_PORT=str(free_port()),
        PYTHONPATH=os.pathsep.join([str(REPO / "serving"), os.environ.get("PYTHONPATH", "")]),
    )
    path = row.split("-")[0]
    cmd = [
        PYTHON, "-m", "alpaca_serving", "serve", "--config", str(work / f"{row}.yaml"),
        "--port", str(port), "--metrics-port", str(metrics), "--request-path", path,
    ]  # fmt: skip
    log = work / f"{row}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    tree = Tree(proc.pid)
    url, metrics_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics}/metrics"
    try:
        _wait_ready(url, proc, log)
        _wait_replicas(metrics_url, 2)
        before = scrape(metrics_url)
        ttft, e2e, tokens, errors, wall = asyncio.run(
            _drive(url, load, args.concurrency, args.max_tokens)
        )
        time.sleep(args.metrics_wait)  # Ray's metrics agent exports every few seconds
        after = scrape(metrics_url)
    finally:
        tree.stop()
    hits = sum(delta(after, before, "prefix_cache_hits").values())
    queries = sum(delta(after, before, "prefix_cache_queries").values())
    split = sorted(delta(after, before, "request_success").values(), reverse=True)
    return Result(row, ttft, e2e, tokens, wall, errors, hits, queries, split)


def _wait_replicas(metrics_url: str, count: int, timeout: float = 900) -> None:
    """Until `count` engines have started: each sets vLLM's cache_config_info gauge when it is
    initialized, labelled with its replica (the first replica alone serves /v1/models)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            seen = {k for k in scrape(metrics_url) if "cache_config_info" in k and "@" in k}
        except OSError:
            seen = set()
        if len(seen) >= count:
            return
        time.sleep(3)
    raise RuntimeError(f"fewer than {count} engines started within {timeout} s")


def report(results: dict[str, list[Result]], args: argparse.Namespace) -> None:
    print(
        f"\n=== {args.model}: {args.prefixes} prefixes x {args.questions} questions, "
        f"{args.prefix_tokens} prefix tokens, concurrency {args.concurrency}, "
        f"KV cache {args.kv_cache_bytes / 2**20:.0f} MiB per replica; medians over rounds ==="
    )
    head = (
        f"{'row':16} {'hit rate':>8} {'(spread)':>12} {'TTFT p50':>9} {'p99':>8} "
        f"{'e2e p50':>8} {'p99':>8} {'tok/s':>7} {'split':>12} {'err':>4}"
    )
    print(head + "\n" + "-" * len(head))
    for row in ROWS:
        rs = results.get(row)
        if not rs:
            continue
        rates = [r.hit_rate for r in rs]
        spread = f"{min(rates):.3f}-{max(rates):.3f}" if len(rs) > 1 else ""
        split = "/".join(f"{x:.0f}" for x in rs[-1].split)
        print(
            f"{row:16} {med(rates):8.3f} {spread:>12} "
            f"{med([pct(r.ttft, 0.5) for r in rs]) * 1000:9.1f} "
            f"{med([pct(r.ttft, 0.99) for r in rs]) * 1000:8.1f} "
            f"{med([pct(r.e2e, 0.5) for r in rs]) * 1000:8.1f} "
            f"{med([pct(r.e2e, 0.99) for r in rs]) * 1000:8.1f} "
            f"{med([r.tokens / r.wall for r in rs]):7.1f} {split:>12} "
            f"{sum(r.errors for r in rs):4d}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2", help="tiny, smollm2 or a folder")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prefixes", type=int, default=8)
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--prefix-tokens", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument(
        "--cache-share",
        type=float,
        default=0.6,
        help="each replica's KV cache, as a share of all the prefixes' tokens",
    )
    parser.add_argument("--metrics-wait", type=float, default=12.0)
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    if unknown := set(rows) - set(ROWS):
        parser.error(f"--rows: unknown {sorted(unknown)}; valid: {', '.join(ROWS)}")
    scratch = Scratch("bench-prefix-")
    work = scratch.work
    try:
        model = model_folder(args.model, work)
        load = workload(model, args.prefixes, args.questions, args.prefix_tokens, args.seed)
        total = args.prefixes * args.prefix_tokens * kv_bytes_per_token(model)
        args.kv_cache_bytes = max(int(total * args.cache_share), 16 * 2**20)
        print(
            f"{len(load)} requests; all prefixes take {total / 2**20:.1f} MiB of KV cache; "
            f"each replica gets {args.kv_cache_bytes / 2**20:.1f} MiB",
            flush=True,
        )
        results: dict[str, list[Result]] = {r: [] for r in rows}
        for rnd in range(args.rounds):
            for row in rows if rnd % 2 == 0 else rows[::-1]:
                t0 = time.perf_counter()
                try:
                    with scratch.row():
                        r = run_row(row, model, work, args, [p for _, p in load])
                except RuntimeError as e:
                    # one row that did not come up costs its round, not the whole run: what
                    # it logged last is printed, the other rows go on
                    log = work / f"{row}.log"
                    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                    print(f"[round {rnd + 1}] {row}: FAILED: {e}\n{tail}", flush=True)
                    continue
                results[row].append(r)
                print(
                    f"[round {rnd + 1}] {row}: hit rate {r.hit_rate:.3f} "
                    f"({r.hits:.0f}/{r.queries:.0f} tokens), TTFT p50 "
                    f"{pct(r.ttft, 0.5) * 1000:.0f} ms, split {r.split}, errors {r.errors} "
                    f"({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
        report(results, args)
    finally:
        scratch.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
