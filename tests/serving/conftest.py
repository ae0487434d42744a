"""Real Ray Serve LLM + vLLM (CPU build) serving a tiny random Llama: one application for the
whole module, stopped in teardown with everything it left in /dev/shm and /tmp."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from alpaca_dev.runtime import engine_shm_files, remove_orphaned_shm

from .tiny_llama import build_tiny_llama

ENGINE = {
    "dtype": "bfloat16",
    "max_model_len": 512,
    "enforce_eager": True,
    "kv_cache_memory_bytes": 256 * 2**20,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/serving/" in str(item.fspath):
            item.add_marker(pytest.mark.serving)
            # one xdist worker runs all serving tests (one Ray at a time), beside the cluster tests
            item.add_marker(pytest.mark.xdist_group("serving"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    base_url: str
    model: str
    model_path: Path
    metrics_url: str


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


RAY_LOGS = Path(
    os.environ.get(
        "ALPACA_RAY_LOGS", Path(__file__).resolve().parents[2] / ".pytest-tmp" / "ray-logs"
    )
)


def _keep_logs(logs: Path) -> None:
    """Ray's session logs (the engine's own traceback is only there) outlive the temp folder:
    kept under .pytest-tmp/ray-logs (the newest ten, until the next run clears it)."""
    if not logs.is_dir():
        return
    dest = RAY_LOGS / time.strftime("%Y%m%d-%H%M%S")
    shutil.copytree(logs, dest, ignore_dangling_symlinks=True, dirs_exist_ok=True)
    for old in sorted(RAY_LOGS.iterdir())[:-10]:  # the newest ten sessions
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def serve_app(model_path: Path, name: str, **overrides: object) -> Iterator[Served]:
    """The Alpaca app on a fresh Ray + Serve, answering on a free loopback port; everything
    it started and left (Ray's folder, the engines' /dev/shm files) is gone afterwards."""
    shm_before = engine_shm_files()
    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths are limited
    saved = {k: os.environ.get(k) for k in ("TMPDIR", "VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR")}
    os.environ.update(
        TMPDIR=tmp, VLLM_CACHE_ROOT=f"{tmp}/vllm", TORCHINDUCTOR_CACHE_DIR=f"{tmp}/inductor"
    )
    import ray
    from ray import serve

    from alpaca_serving.app import build_app

    metrics_port, port = _free_port(), _free_port()
    ray.init(
        num_cpus=8,
        _temp_dir=f"{tmp}/r",
        include_dashboard=False,
        _metrics_export_port=metrics_port,
        log_to_driver=False,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = {
            "model_path": str(model_path),
            "served_model_name": name,
            "accelerator": "cpu",
            "work_dir": f"{tmp}/work",
            "engine_kwargs": ENGINE,
            "autoscaling": {"min_replicas": 1, "max_replicas": 1},
        } | overrides
        serve.run(build_app(config), blocking=False, name="alpaca", route_prefix="/")
        import openai

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        deadline = time.monotonic() + 300
        while True:
            try:
                client.models.list()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
        yield Served(
            f"http://127.0.0.1:{port}/v1",
            name,
            model_path,
            f"http://127.0.0.1:{metrics_port}/metrics",
        )
    finally:
        serve.shutdown()
        ray.shutdown()
        _keep_logs(Path(tmp) / "r" / "session_latest" / "logs")
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(tmp, ignore_errors=True)
        remove_orphaned_shm(engine_shm_files() - shm_before)


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


@pytest.fixture(scope="module")
def served(tiny_llama: Path) -> Iterator[Served]:
    """The Alpaca app serving the tiny Llama, one replica until loaded."""
    with serve_app(tiny_llama, "tiny", autoscaling=SCALABLE) as app:
        yield app
