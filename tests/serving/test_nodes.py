"""The app works when the builder and the engine do not share a disk, as in a RayService: the
head (this process) builds the app; the replicas run on a worker node whose /tmp is not the
head's. Before the chat template travelled as text, the builder wrote a tokenizer folder under
its own /tmp and the replica's vLLM could not find it (HFValidationError, DEPLOY_FAILED)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.serving.conftest import SERVING, Served, _isolated, _namespace_processes

pytestmark = [
    *SERVING,
    pytest.mark.skipif(not _isolated(), reason="needs root and unshare for a private /tmp"),
]


def test_the_worker_node_does_not_see_the_builders_tmp(served: Served):
    import ray

    marker = served.builder_tmp / "builder-only"
    marker.write_text("written on the head")

    @ray.remote(num_cpus=1)  # the head offers no CPUs: this runs on the worker node
    def seen_from_the_worker(path: str) -> tuple[bool, str]:
        return os.path.exists(path), ray.get_runtime_context().get_node_id()

    exists, node = ray.get(seen_from_the_worker.remote(str(marker)))
    assert not exists
    assert node != ray.get_runtime_context().get_node_id()


def test_the_engine_runs_on_the_worker_node(served: Served):
    def cmdline(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return ""

    commands = [cmdline(pid) for pid in _namespace_processes(served.worker.namespace)]
    assert any("LLMServer" in c for c in commands), commands


def test_the_replica_starts_its_engine_without_a_fetch_task(served: Served):
    """The model is a local folder (the cache volume): no Ray task on the node fetches it first
    (alpaca_serving.node_init), where Ray's default starts one worker process per node for it."""
    node = served.worker
    session = os.readlink(f"{node.root}{node.temp_dir}/session_latest")  # the node's own view
    logs = [
        p.read_text(errors="replace")
        for p in Path(f"{node.root}{session}/logs/serve").glob("replica_*LLMServer*.log")
    ]
    assert any("Started vLLM engine" in text for text in logs), "no replica log on the worker"
    assert not any("download model files" in text for text in logs)
