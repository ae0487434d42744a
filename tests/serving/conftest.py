"""Real Ray Serve LLM + vLLM (CPU build) serving a tiny random Llama and a LoRA adapter trained
here, laid out as a RayService lays them out: the app is built on a head node that runs no
replica, and every replica runs on a worker node that does not share the head's /tmp (its own
mount namespace with a fresh tmpfs there, as another pod would). One application for all the
serving tests, stopped in teardown with everything it left in /dev/shm and /tmp."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from alpaca_dev.controlplane import free_port
from alpaca_dev.shm import engine_shm_files, remove_orphaned_shm
from alpaca_serving import local_ray, usage
from alpaca_serving.__main__ import PROXY_READY_TIMEOUT
from tests.run_lock import exclusive
from tests.tiny_llama import FIXTURE, build_tiny_llama
from tests.training.conftest import PYTHON, make_config, subprocess_env

ENGINE = {
    "dtype": "bfloat16",
    "max_model_len": 512,
    "enforce_eager": True,
    "kv_cache_memory_bytes": 256 * 2**20,
}
MODEL, ADAPTER = "tiny", "alpaca-lora"
WORKER_CPUS = 8  # logical: two replicas of a 2-CPU bundle (plus the replica actor) fit
# Up to two replicas, quick to react: a lone client never scales it, a crowd does.
SCALABLE = {
    "min_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 2,
    "upscale_delay_s": 2,
    "downscale_delay_s": 5,
    "metrics_interval_s": 1,
    "look_back_period_s": 2,
}
RAY_LOGS = Path(
    os.environ.get(
        "ALPACA_RAY_LOGS", Path(__file__).resolve().parents[2] / ".pytest-tmp" / "ray-logs"
    )
)


# Every serving test module carries these (a module's pytestmark: xdist groups the tests by
# marks present at collection, which a conftest's collection hook adds too late): one xdist
# worker runs all serving tests, against one Ray app, beside the other tiers. The first test's
# setup trains an adapter and starts the app: 2.5 minutes alone, 7 beside the other tiers.
SERVING = [pytest.mark.serving, pytest.mark.xdist_group("serving"), pytest.mark.timeout(1800)]
APP_DEADLINE = 900.0
"""Seconds the app may take to answer after serve.run (vLLM's start on a busy 2-core machine)."""


@dataclass
class Served:
    base_url: str
    model: str
    model_path: Path
    metrics_url: str  # the head's: Serve's proxy counts requests there
    engine_metrics_url: str  # the worker's: the replicas' (vLLM's) metrics
    builder_tmp: Path  # the head's temporary folder, which the worker node cannot see
    worker: WorkerNode


@pytest.fixture(scope="session")
def tiny_with_adapter(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(base, adapter): the tiny Llama and a LoRA adapter fine-tuned on the Alpaca fixture by
    alpaca_training's own recipe. They must live outside /tmp: the worker node sees a /tmp
    of its own."""
    root = tmp_path_factory.mktemp("lora")
    if _isolated() and root.resolve().is_relative_to("/tmp"):
        pytest.fail(
            f"the serving tier's models would be under /tmp ({root}), which its Ray worker node "
            "cannot see: run pytest with --basetemp=.pytest-tmp (as `make test` does)"
        )
    base = build_tiny_llama(root / "base")
    data = root / "data"
    data.mkdir()
    (data / FIXTURE.name).write_text(FIXTURE.read_text())
    config = make_config(base, data, root / "out", method="lora")
    done = subprocess.run(
        [PYTHON, "-m", "alpaca_training"],
        env=subprocess_env(config, root),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return base, root / "out" / "final"


def _keep_logs(logs: Path, name: str) -> None:
    """Ray's session logs (the engine's own traceback is only there) outlive the temp folder:
    kept under .pytest-tmp/ray-logs (the newest ten, until the next run clears it)."""
    if not logs.is_dir():
        return
    dest = RAY_LOGS / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
    shutil.copytree(logs, dest, ignore_dangling_symlinks=True, dirs_exist_ok=True)
    for old in sorted(RAY_LOGS.iterdir())[:-10]:  # the newest ten sessions
        shutil.rmtree(old, ignore_errors=True)


def _isolated() -> bool:
    """A private mount namespace needs root (CAP_SYS_ADMIN) and util-linux's unshare."""
    return os.geteuid() == 0 and shutil.which("unshare") is not None


STARTUP_NICE = -10
"""Ray gives its own processes fixed start-up deadlines (the raylet aborts when the dashboard
agent has not written its ports within 15 s, `ray.init()` and `ray start` give the raylet 30 s to
register); on this 2-core machine, with the other tiers' batch work beside it (an image import
into the node's containerd, training steps, pods), a start-up starved of CPU misses them. A pod
would have its CPU request (cgroup weight) for that; here the serving tier's Ray processes get a
higher priority (root only) until their app answers, and the default one after."""


def raised(command: list[str]) -> list[str]:
    """`command` at the start-up priority (coreutils' nice), when root."""
    if os.geteuid() != 0:
        return command
    return ["nice", "-n", str(STARTUP_NICE), *command]


@contextlib.contextmanager
def _raised_priority() -> Iterator[None]:
    """This thread (Linux keeps the nice value per thread, and a child starts with its parent
    thread's) at the start-up priority while Ray starts processes from it."""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    if os.geteuid() == 0:
        os.setpriority(os.PRIO_PROCESS, 0, STARTUP_NICE)
    try:
        yield
    finally:
        os.setpriority(os.PRIO_PROCESS, 0, before)


def _default_priority(root: int, since: set[int] | None = None) -> None:
    """Back to the default priority: process `root` and its descendants (those not in `since`)."""
    try:
        top = psutil.Process(root)
        family = [top, *top.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in family:
        if since is None or proc.pid not in since:
            with contextlib.suppress(psutil.Error):
                if proc.nice() < 0:
                    proc.nice(0)


@dataclass
class WorkerNode:
    proc: subprocess.Popen[bytes]
    temp_dir: str  # Ray's folder of this node, as the node sees it
    namespace: str | None  # its mount namespace ("mnt:[...]"), when isolated

    @property
    def root(self) -> str:
        """Where this process sees the node's filesystem (/proc/PID/root enters its namespace)."""
        return f"/proc/{self.proc.pid}/root" if self.namespace else ""


def _start_worker_node(gcs: str, tmp: str, metrics_port: int) -> WorkerNode:
    """`ray start` joining the head, in its own mount namespace whose /tmp is a fresh tmpfs:
    nothing the builder wrote under /tmp is there (as in another pod)."""
    ray = str(Path(sys.executable).with_name("ray"))
    temp_dir = f"{tmp}/w"
    command = [
        *(ray, "start", f"--address={gcs}", f"--num-cpus={WORKER_CPUS}", "--block"),
        *(f"--temp-dir={temp_dir}", f"--metrics-export-port={metrics_port}"),
        "--disable-usage-stats",
    ]
    if _isolated():
        script = (
            'mount -t tmpfs -o mode=1777 alpaca-worker-tmp /tmp && mkdir -p "$TMPDIR" && exec "$@"'
        )
        unshare = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script]
        command = [*unshare, "worker", *command]
    with open(f"{tmp}/worker-node.log", "ab") as log:  # every attempt's output
        proc = subprocess.Popen(
            raised(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    namespace = None
    if _isolated():
        ours = os.readlink("/proc/self/ns/mnt")
        deadline = time.monotonic() + 30
        while (namespace := os.readlink(f"/proc/{proc.pid}/ns/mnt")) == ours:
            assert proc.poll() is None and time.monotonic() < deadline, "unshare did not start"
            time.sleep(0.05)
    return WorkerNode(proc, temp_dir, namespace)


def _namespace_processes(namespace: str | None) -> set[int]:
    """Every process in a mount namespace (the worker node's)."""
    if namespace is None:
        return set()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/ns/mnt") == namespace:
                    found.add(int(entry))
    return found


def _stop_worker_node(node: WorkerNode) -> None:
    """Keep its logs, stop it, and make sure nothing it started survives (its namespace and
    the tmpfs go with the last of its processes)."""
    latest = Path(f"{node.root}{node.temp_dir}/session_latest")
    with contextlib.suppress(OSError):  # an absolute link, inside the node's own view
        _keep_logs(Path(f"{node.root}{os.readlink(latest)}/logs"), "worker")
    node.proc.send_signal(signal.SIGTERM)  # `ray start --block` stops the node's processes
    with contextlib.suppress(subprocess.TimeoutExpired):
        node.proc.wait(timeout=60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(node.proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while left := _namespace_processes(node.namespace):
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert time.monotonic() < deadline, f"worker node processes left: {sorted(left)}"
        time.sleep(0.2)
    node.proc.wait(timeout=10)


class WorkerExited(AssertionError):
    """The worker's `ray start` gave up before its node joined."""


def _wait_for_nodes(
    count: int, log: Path, timeout: float = 300, worker: subprocess.Popen[bytes] | None = None
) -> None:
    """Until `count` Ray nodes are alive; the worker's `ray start` output (`log`) is in the
    failure, because the worker's own session logs go with its namespace."""
    import ray

    def said() -> str:
        return log.read_text(errors="replace")[-3000:] if log.exists() else "(no output)"

    deadline = time.monotonic() + timeout
    while sum(1 for n in ray.nodes() if n["Alive"]) < count:
        if worker is not None and worker.poll() is not None:
            raise WorkerExited(f"the worker's `ray start` exited ({worker.returncode}):\n{said()}")
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"fewer than {count} Ray nodes after {timeout:.0f}s; the worker said:\n{said()}"
            )
        time.sleep(0.5)


def _join_worker_node(gcs: str, tmp: str, metrics_port: int) -> WorkerNode:
    """A worker node that has joined the head. `ray start` gives its raylet a fixed 30 s to
    register with the GCS and exits otherwise, which a 2-core machine running the other tiers
    beside this one can exceed; a pod's kubelet would restart it after a back-off, and so is
    this node, as the serve command restarts its own Ray (local_ray's attempts and pauses;
    each failure is in the log)."""
    log = Path(tmp) / "worker-node.log"
    for attempt in range(1, local_ray.ATTEMPTS + 1):
        worker = _start_worker_node(gcs, tmp, metrics_port)
        try:
            _wait_for_nodes(2, log, worker=worker.proc)
            return worker
        except WorkerExited:
            _stop_worker_node(worker)
            if attempt == local_ray.ATTEMPTS:
                raise
            time.sleep(local_ray.pause(attempt))
    raise AssertionError("unreachable")


@contextlib.contextmanager
def serve_app(model_path: Path, name: str, **overrides: object) -> Iterator[Served]:
    """The Alpaca app on a fresh two-node Ray (head in this process, builds the app, no CPUs;
    a worker node with its own /tmp runs the replicas), Serve's proxy on the head answering on
    a free loopback port. Everything it started and left is gone afterwards."""
    shm_before = engine_shm_files()
    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths are limited
    ready_timeout, ready_default = PROXY_READY_TIMEOUT
    changed = ("TMPDIR", "VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", ready_timeout, *usage.OFF)
    saved = {k: os.environ.get(k) for k in changed}
    os.environ.update(
        TMPDIR=tmp, VLLM_CACHE_ROOT=f"{tmp}/vllm", TORCHINDUCTOR_CACHE_DIR=f"{tmp}/inductor"
    )
    os.environ.update(usage.OFF)  # as the operator's Ray pods and the serve command run
    # what the serve command does: Serve's 5 s for a new proxy to start is too short beside
    # the other tiers (the controller kills the proxy and serve.start() fails)
    os.environ.setdefault(ready_timeout, ready_default)
    import ray
    from ray import serve

    from alpaca_serving.app import build_app

    metrics_port, engine_metrics_port, port = free_port(), free_port(), free_port()
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    starting = contextlib.ExitStack()  # the run's lock, until the app answers
    worker = None
    try:
        starting.enter_context(exclusive(f"the serving tier's {name} app"))
        with _raised_priority():
            local_ray.init(  # the serve command's: Ray's start-up can run out beside the tiers
                ray.init,
                num_cpus=0,
                _temp_dir=f"{tmp}/r",
                include_dashboard=False,
                _metrics_export_port=metrics_port,
                log_to_driver=False,
            )
        worker = _join_worker_node(ray.get_runtime_context().gcs_address, tmp, engine_metrics_port)
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        config = {
            "model_path": str(model_path),
            "served_model_name": name,
            "accelerator": "cpu",
            "engine_kwargs": ENGINE,
            "autoscaling": {"min_replicas": 1, "max_replicas": 1},
        } | overrides
        serve.run(build_app(config), blocking=False, name="alpaca", route_prefix="/")
        import openai

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        deadline = time.monotonic() + APP_DEADLINE
        while True:
            try:
                client.models.list()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
        starting.close()
        _default_priority(os.getpid(), since=before)
        _default_priority(worker.proc.pid)
        yield Served(
            f"http://127.0.0.1:{port}/v1",
            name,
            model_path,
            f"http://127.0.0.1:{metrics_port}/metrics",
            f"http://127.0.0.1:{engine_metrics_port}/metrics",
            Path(tmp),
            worker,
        )
    finally:
        starting.close()
        with contextlib.suppress(Exception):
            serve.shutdown()
        if worker is not None:
            _stop_worker_node(worker)
        ray.shutdown()
        _keep_logs(Path(tmp) / "r" / "session_latest" / "logs", "head")
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(tmp, ignore_errors=True)
        remove_orphaned_shm(engine_shm_files() - shm_before)


@pytest.fixture(scope="session")
def served(tiny_with_adapter: tuple[Path, Path]) -> Iterator[Served]:
    """The Alpaca app serving the tiny Llama and its adapter; one replica until loaded, up to
    two under load (tests/serving/test_scaling.py runs last)."""
    base, adapter = tiny_with_adapter
    adapters = [{"name": ADAPTER, "path": str(adapter)}]
    with serve_app(base, MODEL, adapters=adapters, autoscaling=SCALABLE) as app:
        yield app


@dataclass
class LocalServe:
    """`python -m alpaca_serving serve` in a process of its own, as a workstation runs it."""

    base_url: str
    model: str
    model_path: Path
    metrics_url: str  # HAProxy's exporter on the fast path, else Ray's
    engine_metrics_url: str  # Ray's: the replicas' (vLLM's) metrics
    proc: subprocess.Popen[bytes]
    log: Path
    path: str  # Ray Serve's request path: fast or standard


@contextlib.contextmanager
def serve_command(
    model_path: Path, name: str, *flags: str, **overrides: object
) -> Iterator[LocalServe]:
    """The local command on a free loopback port, its Ray and HAProxy files in a folder of its
    own; stopped with Ctrl-C (SIGINT), and whatever it left is gone afterwards."""
    import openai

    shm_before = engine_shm_files()
    tmp = tempfile.mkdtemp(prefix="rays", dir="/tmp")
    port, metrics_port, haproxy_port = free_port(), free_port(), free_port()
    env = dict(
        os.environ,
        TMPDIR=tmp,
        VLLM_CACHE_ROOT=f"{tmp}/vllm",
        TORCHINDUCTOR_CACHE_DIR=f"{tmp}/inductor",
        # HAProxy's exporter and stats page are on fixed ports unless told otherwise
        RAY_SERVE_HAPROXY_METRICS_PORT=str(haproxy_port),
        RAY_SERVE_HAPROXY_STATS_PORT=str(free_port()),
    )
    for key in usage.OFF:  # the command's own default, not the other app's environment
        env.pop(key, None)
    log = Path(tmp) / "serve.log"
    config = Path(tmp) / "serving.yaml"
    config.write_text(
        json.dumps(
            {
                "model_path": str(model_path),
                "served_model_name": name,
                "accelerator": "cpu",
                "engine_kwargs": ENGINE,  # the other app's: the command's --cpu defaults are larger
            }
            | overrides
        )
    )
    command = [
        *(sys.executable, "-m", "alpaca_serving", "serve", "--config", str(config)),
        *("--port", str(port), "--metrics-port", str(metrics_port), "--num-cpus", "4", *flags),
    ]
    starting = contextlib.ExitStack()  # the run's lock, until the app answers
    starting.enter_context(exclusive(f"the serving tier's {name} command"))
    try:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                raised(command),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
    except BaseException:
        starting.close()  # the other phase waits for no start-up that never began
        raise
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        deadline = time.monotonic() + APP_DEADLINE
        while True:
            assert proc.poll() is None, f"the serve command exited: {log.read_text()[-3000:]}"
            try:
                client.models.list()
                break
            except Exception:
                assert time.monotonic() < deadline, f"not serving: {log.read_text()[-3000:]}"
                time.sleep(2)
        starting.close()
        _default_priority(proc.pid)
        fast = "fast" in flags
        yield LocalServe(
            f"http://127.0.0.1:{port}/v1",
            name,
            model_path,
            f"http://127.0.0.1:{haproxy_port if fast else metrics_port}/metrics",
            f"http://127.0.0.1:{metrics_port}/metrics",
            proc,
            log,
            "fast" if fast else "standard",
        )
    finally:
        starting.close()
        proc.send_signal(signal.SIGINT)  # the command shuts Serve and Ray down
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=90)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        _keep_logs(Path(tmp) / "ray" / "session_latest" / "logs", "serve-command")
        shutil.rmtree(tmp, ignore_errors=True)
        remove_orphaned_shm(engine_shm_files() - shm_before)


@pytest.fixture(scope="session")
def served_fast(tiny_with_adapter: tuple[Path, Path]) -> Iterator[LocalServe]:
    """The tiny Llama without adapters on the fast path (HAProxy, direct streaming), served by
    the local command; one replica until loaded, up to two under load (test_scaling)."""
    base, _ = tiny_with_adapter
    with serve_command(base, MODEL, "--request-path", "fast", autoscaling=SCALABLE) as app:
        yield app
