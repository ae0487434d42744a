"""What our serving app costs over vLLM, against what a user would run instead (issue 14).

One invocation runs, for each model (a tiny random Llama built now, and SmolLM2-135M-Instruct),
the same prompts, sampling and concurrency (1, 8, 32) through these rows:

  engine        vLLM's AsyncLLM engine driven in-process: the limit
  vllm serve    vLLM's own OpenAI server over HTTP: what users compare us with
  app standard  our app on Ray Serve's default path (Python proxy -> OpenAiIngress -> LLMServer)
  app fast      our app on the fast path (HAProxy, direct ingress, LLMServer as the ingress,
                throughput-optimized transport), as it is by default: HAProxy balances the
                replicas itself (`request_router: least_connections`)
  app fast direct
                the fast path with the client sending to the LLMServer replica's own port
                (Serve's direct ingress), not HAProxy's: HAProxy's hop is the difference
  app fast ray  the fast path with `request_router: ray`: HAProxy asks Ray's LLMRouter, a
                Python deployment, for the replica of every request (Ray's own default)
  app fast loop1s   the fast path with Serve's controller loop every 1 s instead of 0.1 s
  app fast nice0    the fast path with Ray's workers at nice 0 instead of Ray's 15
  app fast engine19 the fast path with Ray's workers at nice 0 and, once the row serves, vLLM's
                EngineCore and model worker at 19: below every other process (decision 40)
  vllm serve pinned, app fast pinned
                the row with a core of its own for vLLM's model worker: once it serves,
                every other process of the row, and this client, moves to the core vLLM
                reserves for its scheduler (decision 40)

Every row is a fresh process tree, started, warmed up, measured at each concurrency and
stopped (all its processes gone) before the next starts. The machine is shared and drifts by
2-3x within an hour, so the rows alternate (A B C D, then D C B A, ...) for --rounds rounds and
the tables give medians with the spread across rounds. Requests stream, so TTFT and the gaps
between chunks are measured as a client sees them.

Per row and concurrency: output tokens/s, requests/s, TTFT p50/p99, end-to-end p50/p99, the
gap between streamed chunks (p50/p99), CPU milliseconds per request by process group (where
the time goes; for an app row also the share of the groups that would run on the model's node
in a RayService, against `vllm serve`'s), peak summed RSS and PSS of the row's processes;
ratios to `vllm serve` and to the engine. Before the levels, each row idles 20 s after its
warm-up: its processes' CPU per second then (Ray's loops, health checks, metrics) is the
background, which the CPU lines separate from what the requests themselves cost.

    .venv/bin/python benchmarks/serving_overhead.py [--models tiny,smollm2] [--rounds 2]
        [--concurrency 1,8,32] [--rows engine,vllm-serve,app-standard,app-fast] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
PROMPT = "Below is an instruction that describes a task. Give three tips for staying healthy."
ENGINE: dict[str, Any] = {
    "dtype": "bfloat16",
    "max_model_len": 512,
    "enforce_eager": True,
    "kv_cache_memory_bytes": 256 * 2**20,
}
ROWS = (
    "engine", "vllm-serve", "app-standard", "app-fast", "app-fast-direct", "app-fast-ray",
    "app-fast-loop1s", "vllm-serve-pinned", "app-fast-pinned", "app-fast-nice0",
    "app-fast-engine19",
)  # fmt: skip
# the fast-path app with the client sending to the LLMServer replica's own HTTP port (Serve's
# direct ingress, what HAProxy forwards to) instead of HAProxy's: HAProxy's hop is the
# difference to `app-fast`
DIRECT = {"app-fast-direct"}
# rows whose engine has a core of its own: once the row serves, every process of its tree but
# vLLM's model worker (and this client) is moved off the cores the worker's threads are bound
# to. vLLM binds the worker to every core but the ones it reserves "for the scheduler"
# (VLLM_CPU_NUM_OF_RESERVED_CPU, one here) and assumes nothing else runs there.
PINNED = {"vllm-serve-pinned", "app-fast-pinned"}
ROW_ENV = {
    # Serve's controller loop every 1 s instead of 0.1 s: less CPU beside the engine on a
    # small machine, slower reactions (replica states, autoscaling decisions)
    "app-fast-loop1s": {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "1.0"},
    # Ray starts its workers (our replica, so vLLM's EngineCore and model worker too, and
    # HAProxy, a child of Ray's HAProxy manager actor) at nice 15, below its own daemons' and
    # this client's 0; `vllm serve` runs at 0
    "app-fast-nice0": {"RAY_worker_niceness": "0"},
    "app-fast-engine19": {"RAY_worker_niceness": "0"},
}
WORKER = "vLLM model worker"
RENICE = {
    # every Ray worker at 0 (ROW_ENV), and once the row serves vLLM's processes at 19, below
    # every other process: vLLM's processes wait for each other's messages by spinning
    # (sched_yield), so a process at their priority gets a core only when they yield it
    "app-fast-engine19": {"vLLM EngineCore": 19, WORKER: 19},
}
DIRECT_PORTS = (30000, 31000)  # Ray Serve's range for replicas' direct-ingress HTTP ports
START_TIMEOUT = 900.0
IDLE_S = 20.0
# which process of a row's tree did the work (first match of its name or command line)
GROUPS = (
    ("ServeReplica:alpaca:AlpacaLLMServer", "LLMServer replica"),  # ours, on every model
    ("ServeReplica:alpaca:LLMServer", "LLMServer replica"),
    ("ServeReplica:alpaca:OpenAiIngress", "OpenAiIngress replica"),
    ("ServeReplica:alpaca:AlpacaIngress", "OpenAiIngress replica"),
    # fast path: HAProxy asks it (HTTP, Python) which replica takes each request
    ("ServeReplica:alpaca:LLMRouter", "LLMRouter replica (picks the replica)"),
    ("ProxyActor", "Serve Python proxy"),
    ("HAProxyManager", "HAProxy manager actor"),
    ("haproxy", "HAProxy"),
    ("ServeController", "Serve controller"),
    ("EngineCore", "vLLM EngineCore"),
    ("VLLM::Worker", WORKER),
    ("raylet", "raylet"),
    ("gcs_server", "GCS"),
    ("DashboardAgent", "Ray dashboard agent"),
    ("RuntimeEnvAgent", "Ray runtime env agent"),
    ("ray::IDLE", "idle Ray worker"),
    ("log_monitor.py", "Ray log monitor"),
    ("dashboard/dashboard.py", "Ray dashboard"),
    ("/monitor.py", "Ray autoscaler monitor"),
    ("ray::", "other Ray workers"),
    ("ray/", "other Ray processes"),
)
HEAD_POD = {
    "Serve controller", "GCS", "Ray dashboard", "Ray autoscaler monitor",
    "launcher (row's main process)",
}  # fmt: skip
"""Where a group runs in the RayService the operator renders, for an app row: these on the
head pod (`num-cpus: 0`; the launcher is the serve command's driver, which a RayService does not
have: KubeRay deploys through the dashboard), every other group on the model's worker node
(HAProxy, the Python proxy, raylet and Ray's agents run on every node). On this machine all of
them share the engine's 2 cores; the report gives the model node's share on its own."""


def group_of(proc: psutil.Process, root: int) -> str:
    try:
        name, cmd = proc.name(), " ".join(proc.cmdline())
    except psutil.Error:
        return "gone"
    for needle, label in GROUPS:
        if needle in name or needle in cmd:
            return label
    return "launcher (row's main process)" if proc.pid == root else f"other ({name})"


class Tree:
    """A row's process tree: every process seen under its root, their CPU by group, memory."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.seen: dict[int, psutil.Process] = {}
        self.peak_rss = self.peak_pss = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def members(self) -> list[psutil.Process]:
        try:
            top = psutil.Process(self.root)
            procs = [top, *top.children(recursive=True)]
        except psutil.Error:
            procs = []
        for p in procs:
            self.seen.setdefault(p.pid, p)
        return procs

    def cpu(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for p in self.members():
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            key = group_of(p, self.root)
            out[key] = out.get(key, 0.0) + t.user + t.system
        return out

    def _sample(self) -> None:
        tick = 0
        while not self._stop.wait(0.5):
            rss = pss = 0
            full = tick % 4 == 0  # PSS reads every mapping: every 2 s
            for p in self.members():
                try:
                    if full:
                        m = p.memory_full_info()
                        rss, pss = rss + m.rss, pss + m.pss
                    else:
                        rss += p.memory_info().rss
                except psutil.Error:
                    continue
            self.peak_rss = max(self.peak_rss, rss / 2**30)
            if full:
                self.peak_pss = max(self.peak_pss, pss / 2**30)
            tick += 1

    def stop(self, grace: float = 90.0) -> None:
        """SIGINT to the root (each server shuts down its own children), then SIGKILL to
        whatever of the tree is left."""
        self.members()
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.root, signal.SIGINT)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in self.seen.values()):
            self.members()
            time.sleep(0.5)
        for p in self.seen.values():
            if _alive(p):
                with contextlib.suppress(psutil.Error):
                    p.kill()
        psutil.wait_procs([p for p in self.seen.values() if _alive(p)], timeout=30)


class Scratch:
    """A benchmark's work folder under /tmp, and what its rows leave outside it: engine shared
    memory a killed engine could not remove, and HAProxy folders (the serve command puts its
    own under /tmp when the work folder's path is too long for HAProxy's sockets, and removes
    it when it exits, which a row stopped with SIGKILL cannot)."""

    def __init__(self, prefix: str) -> None:
        sys.path.insert(0, str(REPO / "dev"))
        from alpaca_dev.shm import engine_shm_files, remove_orphaned_shm

        self._shm, self._remove_shm = engine_shm_files, remove_orphaned_shm
        self._shm_before = engine_shm_files()
        self.work = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        # torch makes /tmp/torchinductor_<user> when transformers is first imported (the
        # benchmark's own process loads a tokenizer or builds the tiny model): in here instead
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(self.work / "inductor"))

    @contextlib.contextmanager
    def row(self) -> Any:
        """Whatever a row left outside the work folder is gone after it."""
        haproxy_before = set(Path("/tmp").glob("haproxy-*"))
        try:
            yield
        finally:
            for folder in set(Path("/tmp").glob("haproxy-*")) - haproxy_before:
                shutil.rmtree(folder, ignore_errors=True)
            self._remove_shm(self._shm() - self._shm_before)

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        self._remove_shm(self._shm() - self._shm_before)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@dataclass
class Level:
    concurrency: int
    requests: int
    wall: float
    tokens: int
    ttft: list[float]
    e2e: list[float]
    gaps: list[float]
    cpu: dict[str, float] = field(default_factory=dict)
    errors: int = 0
    idle: dict[str, float] = field(default_factory=dict)
    """CPU seconds per second by group with no request in flight, measured before the levels:
    what the row's processes spend whatever the load (loops, health checks, metrics)."""

    @property
    def tok_s(self) -> float:
        return self.tokens / self.wall

    @property
    def req_s(self) -> float:
        return self.requests / self.wall


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def n_requests(concurrency: int, per_slot: int, minimum: int) -> int:
    return max(minimum, per_slot * concurrency)


# ---- the client: streamed completions over HTTP, or the engine in-process -------------------


async def _http_one(
    session: Any, url: str, max_tokens: int
) -> tuple[float, float, list[float], int]:
    body = {
        "model": "m",
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first, last, gaps, chunks, tokens = None, 0.0, [], 0, None
    async with session.post(f"{url}/v1/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:300]}")
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            obj = json.loads(data)
            if obj.get("usage"):
                tokens = obj["usage"].get("completion_tokens")
            choices = obj.get("choices") or []
            if choices and choices[0].get("text"):
                now = time.perf_counter()
                if first is None:
                    first = now - t0
                else:
                    gaps.append(now - last)
                last = now
                chunks += 1
    end = time.perf_counter() - t0
    return (
        (first if first is not None else end),
        end,
        gaps,
        tokens if tokens is not None else chunks,
    )


async def _one_into(level: Level, sem: asyncio.Semaphore, one: Any) -> None:
    async with sem:
        try:
            ttft, e2e, gaps, tokens = await one()
        except Exception as exc:  # counted and shown; the row goes on
            level.errors += 1
            if level.errors == 1:
                print(f"    request failed: {exc}", flush=True)
            return
    level.ttft.append(ttft)
    level.e2e.append(e2e)
    level.gaps.extend(gaps)
    level.tokens += tokens


async def _levels(one: Any, levels: list[tuple[int, int]], tree: Tree | None) -> list[Level]:
    """Drive `one()` (-> ttft, e2e, gaps, tokens) at each (concurrency, requests)."""
    for _ in range(2):  # warm-up: first-request paths, caches
        await one()
    # the background: vLLM's processes spin for 1 s after their last message, then sleep
    await asyncio.sleep(2)
    before = tree.cpu() if tree else {}
    start = time.perf_counter()
    await asyncio.sleep(IDLE_S)
    after = tree.cpu() if tree else {}
    idle = {k: (after[k] - before.get(k, 0.0)) / (time.perf_counter() - start) for k in after}
    out = []
    for concurrency, requests in levels:
        sem = asyncio.Semaphore(concurrency)
        level = Level(concurrency, requests, 0.0, 0, [], [], [], idle=idle)

        before = tree.cpu() if tree else {}
        start = time.perf_counter()
        await asyncio.gather(*(_one_into(level, sem, one) for _ in range(requests)))
        level.wall = time.perf_counter() - start
        after = tree.cpu() if tree else {}
        level.cpu = {k: after[k] - before.get(k, 0.0) for k in after}
        out.append(level)
    return out


async def drive_http(
    url: str, levels: list[tuple[int, int]], max_tokens: int, tree: Tree
) -> list[Level]:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        return await _levels(lambda: _http_one(session, url, max_tokens), levels, tree)


def engine_child(model: str, levels: list[tuple[int, int]], max_tokens: int) -> None:
    """Row `engine`, in a process of its own: AsyncLLM driven in-process. Prints JSON."""
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model=model, **ENGINE))
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0)
    counter = iter(range(10**9))
    tree = Tree(os.getpid())

    async def one() -> tuple[float, float, list[float], int]:
        t0 = time.perf_counter()
        first, last, gaps, n = None, 0.0, [], 0
        async for out in engine.generate(PROMPT, params, request_id=str(next(counter))):
            got = len(out.outputs[0].token_ids)
            if got > n:
                now = time.perf_counter()
                if first is None:
                    first = now - t0
                else:
                    gaps.append(now - last)
                last, n = now, got
        end = time.perf_counter() - t0
        return (first if first is not None else end), end, gaps, n

    try:
        results = asyncio.run(_levels(one, levels, tree))
    finally:
        tree._stop.set()
        engine.shutdown()
    print("RESULT " + json.dumps([r.__dict__ for r in results]), flush=True)


# ---- the rows -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    import urllib.request

    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as resp:
                if any(m.get("id") == "m" for m in json.load(resp).get("data", [])):
                    return
        except (OSError, ValueError):
            pass
        time.sleep(2)
    raise RuntimeError(f"not serving within {START_TIMEOUT:.0f} s: {log.read_text()[-2000:]}")


def server_command(row: str, model: str, port: int, work: Path) -> list[str]:
    if row in ("vllm-serve", "vllm-serve-pinned"):
        return [
            # `vllm serve` is this module behind a CLI that looks up the `vllm` distribution
            # (here `vllm-cpu`)
            PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
            "--served-model-name", "m", "--host", "127.0.0.1", "--port", str(port),
            "--dtype", ENGINE["dtype"], "--max-model-len", str(ENGINE["max_model_len"]),
            "--enforce-eager", "--kv-cache-memory-bytes", str(ENGINE["kv_cache_memory_bytes"]),
            "--uvicorn-log-level", "warning",
        ]  # fmt: skip
    config = work / f"{row}.yaml"
    config.write_text(
        json.dumps(
            {
                "model_path": model,
                "served_model_name": "m",
                "prompt_template": "none",
                "accelerator": "cpu",
                "engine_kwargs": ENGINE,
            }
            | ({"request_router": "ray"} if row == "app-fast-ray" else {})
        )
    )
    path = "standard" if row == "app-standard" else "fast"
    return [
        PYTHON, "-m", "alpaca_serving", "serve", "--config", str(config),
        "--port", str(port), "--request-path", path,
    ]  # fmt: skip


@dataclass
class Run:
    row: str
    levels: list[Level]
    peak_rss: float
    peak_pss: float
    start_s: float


def run_row(
    row: str, model: str, levels: list[tuple[int, int]], max_tokens: int, work: Path
) -> Run:
    env = dict(os.environ)
    # everything a row writes stays in the work folder (Ray's session; the serve command puts
    # HAProxy's files in a folder of its own)
    env.update(
        TMPDIR=str(work),
        RAY_TMPDIR=str(work / "ray"),
        VLLM_CACHE_ROOT=str(work / "vllm"),
        TORCHINDUCTOR_CACHE_DIR=str(work / "inductor"),
        PYTHONPATH=os.pathsep.join(
            [str(REPO / d) for d in ("serving", "dev")] + [env.get("PYTHONPATH", "")]
        ),
    )
    env.update(ROW_ENV.get(row, {}))
    log = work / f"{row}.log"
    start = time.perf_counter()
    if row == "engine":
        cmd = [PYTHON, __file__, "--engine-child", model, "--levels", json.dumps(levels),
               "--max-tokens", str(max_tokens)]  # fmt: skip
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=out, env=env, start_new_session=True
            )
        tree = Tree(proc.pid)
        try:
            stdout, _ = proc.communicate(timeout=START_TIMEOUT + 1800)
        finally:
            tree.stop()
        line = [x for x in stdout.decode().splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            raise RuntimeError(f"engine row failed ({proc.returncode}): {log.read_text()[-2000:]}")
        done = [Level(**d) for d in json.loads(line[-1][7:])]
        return Run(row, done, tree.peak_rss, tree.peak_pss, 0.0)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            server_command(row, model, port, work), stdout=out, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )  # fmt: skip
    tree = Tree(proc.pid)
    own = os.sched_getaffinity(0)
    try:
        _wait_ready(url, proc, log)
        started = time.perf_counter() - start
        if row in PINNED:
            print(f"  {row}: {pin_beside_engine(tree)}", flush=True)
        if row in RENICE:
            print(f"  {row}: {renice(tree, RENICE[row])}", flush=True)
        if row in DIRECT:
            url = replica_url(tree)
            print(f"  {row}: the client sends to {url}", flush=True)
        done = asyncio.run(drive_http(url, levels, max_tokens, tree))
    finally:
        tree.stop()
        _set_affinity(os.getpid(), own)
    return Run(row, done, tree.peak_rss, tree.peak_pss, started)


def replica_url(tree: Tree) -> str:
    """The LLMServer replica's own HTTP port (Serve's direct ingress: the port HAProxy's backend
    names), on loopback."""
    ports = []
    for p in tree.members():
        if group_of(p, tree.root) != "LLMServer replica":
            continue
        with contextlib.suppress(psutil.Error):
            ports += [
                c.laddr for c in p.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN and DIRECT_PORTS[0] <= c.laddr.port <= DIRECT_PORTS[1]
            ]  # fmt: skip
    if len(ports) != 1:
        raise RuntimeError(f"want one direct-ingress port of one replica, found {ports}")
    host, port = ports[0].ip, ports[0].port
    if not host.startswith("127."):
        raise RuntimeError(f"the replica listens on {host}, not loopback")
    return f"http://{host}:{port}"


def renice(tree: Tree, nice: dict[str, int]) -> str:
    """Every thread of the tree's processes in those groups to that nice value. Says what."""
    done = []
    for p in tree.members():
        group = group_of(p, tree.root)
        if group in nice:
            for task in _tasks(p.pid):
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, task, nice[group])
            done.append(f"{group} ({p.pid}) at {nice[group]}")
    return "; ".join(done) or f"nothing reniced: none of {sorted(nice)} in the tree"


def _tasks(pid: int) -> list[int]:
    """The process's threads (sched_setaffinity and setpriority act on the one they name)."""
    try:
        return [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return []


def _set_affinity(pid: int, cpus: set[int]) -> None:
    """Every thread of the process."""
    for task in _tasks(pid):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(task, cpus)


def pin_beside_engine(tree: Tree) -> str:
    """Moves the tree's processes but vLLM's model worker, and this client, to the cores the
    worker is not bound to. Says what it did."""
    procs = tree.members()
    workers = [p for p in procs if group_of(p, tree.root) == WORKER]
    if len(workers) != 1:
        return f"not pinned: {len(workers)} vLLM workers in the tree"
    every = set(range(os.cpu_count() or 1))
    bound: set[int] = set()
    for task in _tasks(workers[0].pid):
        with contextlib.suppress(OSError):
            mask = os.sched_getaffinity(task)
            if mask < every:
                bound |= mask
    rest = every - bound
    if not bound or not rest:
        return f"not pinned: the worker's threads are bound to {sorted(bound)}"
    moved = 0
    for p in procs:
        if p.pid != workers[0].pid:
            with contextlib.suppress(OSError, psutil.Error):
                _set_affinity(p.pid, rest)
                moved += 1
    _set_affinity(os.getpid(), rest)
    return f"worker bound to cores {sorted(bound)}; {moved} processes and the client moved to {sorted(rest)}"


# ---- the report -----------------------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float]) -> str:
    return f"{min(values):.0f}-{max(values):.0f}" if len(values) > 1 else ""


def report(model: str, runs: dict[str, list[Run]], concurrencies: list[int]) -> None:
    print(f"\n=== {model}: medians over rounds (spread min-max) ===")
    rows = [r for r in ROWS if runs.get(r)]
    for i, c in enumerate(concurrencies):
        print(f"\n-- concurrency {c} --")
        head = f"{'row':17} {'tok/s':>7} {'(spread)':>10} {'req/s':>6} {'TTFT p50':>9} {'p99':>7} {'e2e p50':>8} {'p99':>7} {'gap p50':>8} {'p99':>7} {'x serve':>8} {'x engine':>8} {'+TTFT50':>8} {'+TTFT99':>8} {'err':>4}"
        print(head + "\n" + "-" * len(head))
        stat: dict[str, dict[str, float]] = {}
        for row in rows:
            levels = [run.levels[i] for run in runs[row]]
            stat[row] = {
                "tok": med([lv.tok_s for lv in levels]),
                "req": med([lv.req_s for lv in levels]),
                "t50": med([pct(lv.ttft, 0.5) for lv in levels]) * 1000,
                "t99": med([pct(lv.ttft, 0.99) for lv in levels]) * 1000,
                "e50": med([pct(lv.e2e, 0.5) for lv in levels]) * 1000,
                "e99": med([pct(lv.e2e, 0.99) for lv in levels]) * 1000,
                "g50": med([pct(lv.gaps, 0.5) for lv in levels]) * 1000,
                "g99": med([pct(lv.gaps, 0.99) for lv in levels]) * 1000,
                "err": sum(lv.errors for lv in levels),
            }
            stat[row]["spread"] = spread([lv.tok_s for lv in levels])  # type: ignore[assignment]
        base, limit = stat.get("vllm-serve"), stat.get("engine")
        for row in rows:
            s = stat[row]
            vs = f"{s['tok'] / base['tok']:.3f}" if base else "-"
            ve = f"{s['tok'] / limit['tok']:.3f}" if limit else "-"
            d50 = f"{s['t50'] - base['t50']:+.1f}" if base else "-"
            d99 = f"{s['t99'] - base['t99']:+.1f}" if base else "-"
            print(
                f"{row:17} {s['tok']:7.1f} {s['spread']:>10} {s['req']:6.2f} {s['t50']:9.1f} {s['t99']:7.1f} "
                f"{s['e50']:8.1f} {s['e99']:7.1f} {s['g50']:8.1f} {s['g99']:7.1f} {vs:>8} {ve:>8} {d50:>8} {d99:>8} {s['err']:4.0f}"
            )
        print("CPU ms per request, by process group (median over rounds):")
        cpu_lines(rows, runs, i)
    print(
        "\nbackground: CPU ms per second with no request in flight, by group (median over rounds):"
    )
    for row in rows:
        idle = [run.levels[0].idle for run in runs[row] if run.levels]
        groups = sorted({g for d in idle for g in d})
        per = {g: med([d.get(g, 0.0) * 1000 for d in idle]) for g in groups}
        print(f"  {row:17} total {sum(per.values()):5.0f}: {_largest_first(per, 0)}")
    print("\nmemory, peak summed over the row's processes (median over rounds), and start-up:")
    base = runs.get("vllm-serve")
    for row in rows:
        rss, pss = med([r.peak_rss for r in runs[row]]), med([r.peak_pss for r in runs[row]])
        ratio = f"  {pss / med([r.peak_pss for r in base]):.2f}x vllm serve (PSS)" if base else ""
        start = med([r.start_s for r in runs[row]])
        started = f"   serving {start:.0f} s after launch" if start else ""
        print(f"  {row:17} RSS {rss:5.2f} GiB  PSS {pss:5.2f} GiB{ratio}{started}")


def cpu_lines(rows: list[str], runs: dict[str, list[Run]], i: int) -> None:
    """Each row's CPU per request at level i, by group; split into the background (the idle
    rate over the level's wall time: a fixed cost per second, which a faster engine spreads over
    more requests) and the work the requests themselves cost, and, for an app row, into the
    groups that would run on the model's node in a RayService and those of the head pod."""
    base: dict[str, float] = {}
    for row in sorted(rows, key=lambda r: r != "vllm-serve"):
        levels = [run.levels[i] for run in runs[row]]
        groups = sorted({g for lv in levels for g in lv.cpu})
        per = {g: med([lv.cpu.get(g, 0.0) * 1000 / lv.requests for lv in levels]) for g in groups}
        total = sum(per.values())
        print(f"  {row:17} total {total:7.1f}: {_largest_first(per, 1)}")
        rate = med([sum(lv.idle.values()) * 1000 for lv in levels])
        bg = _background(levels, lambda g: True)
        node = sum(v for g, v in per.items() if g not in HEAD_POD)
        node_bg = _background(levels, lambda g: g not in HEAD_POD)
        split = {"total": total, "work": total - bg, "node": node, "node work": node - node_bg}
        if row == "vllm-serve":
            base = split
        line = f"{'':19}background {bg:.1f} (idle {rate:.0f} ms/s), requests' work {total - bg:.1f}"
        if row.startswith("app"):
            line += f"; model's node {node:.1f} (work {node - node_bg:.1f}), head pod {total - node:.1f}"
        if base and row != "vllm-serve":
            line += "; vllm serve's CPU per request over this row's: " + ", ".join(
                f"{k} {_base_for(base, k) / v:.3f}x"
                for k, v in split.items()
                if v > 0 and (row.startswith("app") or not k.startswith("node"))
            )
        print(line)


def _largest_first(per: dict[str, float], digits: int) -> str:
    """'group value, ...' from the largest value down, leaving out those under 0.5."""
    ordered = sorted(per.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{g} {v:.{digits}f}" for g, v in ordered if v >= 0.5)


def _background(levels: list[Level], counted: Callable[[str], bool]) -> float:
    """The background's CPU ms per request of the counted groups: their idle rate over each
    level's wall time, shared by its requests (median over rounds)."""
    return med(
        [
            sum(v for g, v in lv.idle.items() if counted(g)) * 1000 * lv.wall / lv.requests
            for lv in levels
        ]
    )


def _base_for(base: dict[str, float], key: str) -> float:
    """`vllm serve` runs on the model's node as a whole: its total against a node's total, its
    work against a node's work."""
    return base["work"] if key.endswith("work") else base["total"]


def model_folder(name: str, work: Path) -> str:
    if name == "tiny":
        sys.path.insert(0, str(REPO))
        from tests.tiny_llama import build_tiny_llama

        return str(build_tiny_llama(work / "tiny"))
    if name == "smollm2":
        sys.path.insert(0, str(REPO / "dev"))
        from alpaca_dev.smollm2 import ensure_smollm2

        return str(ensure_smollm2())
    return str(Path(name).resolve())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", default="tiny,smollm2", help="tiny, smollm2 or folders, comma-separated"
    )
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--requests-per-slot", type=int, default=4, help="requests = this x concurrency"
    )
    parser.add_argument("--min-requests", type=int, default=16)
    parser.add_argument("--engine-child", help=argparse.SUPPRESS)
    parser.add_argument("--levels", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine_child:
        engine_child(
            args.engine_child, [tuple(x) for x in json.loads(args.levels)], args.max_tokens
        )
        return 0
    rows = [r for r in args.rows.split(",") if r]
    unknown = set(rows) - set(ROWS)
    if unknown:
        parser.error(f"--rows: unknown {sorted(unknown)}; valid: {', '.join(ROWS)}")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    levels = [(c, n_requests(c, args.requests_per_slot, args.min_requests)) for c in concurrencies]
    scratch = Scratch("bench-serving-")
    work = scratch.work
    print(
        f"levels (concurrency, requests): {levels}; max_tokens={args.max_tokens}; engine {ENGINE}"
    )
    try:
        for name in args.models.split(","):
            model = model_folder(name, work)
            runs: dict[str, list[Run]] = {r: [] for r in rows}
            for rnd in range(args.rounds):
                order = rows if rnd % 2 == 0 else rows[::-1]
                for row in order:
                    t0 = time.perf_counter()
                    with scratch.row():
                        run = run_row(row, model, levels, args.max_tokens, work)
                    runs[row].append(run)
                    print(
                        f"[{name} round {rnd + 1}] {row}: "
                        + ", ".join(f"c={lv.concurrency} {lv.tok_s:.1f} tok/s" for lv in run.levels)
                        + f" ({time.perf_counter() - t0:.0f} s)",
                        flush=True,
                    )
            report(name, runs, concurrencies)
    finally:
        scratch.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
