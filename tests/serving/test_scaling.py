"""Serve's autoscaler adds a replica under concurrent load and removes it afterwards (the
module runs last among the serving tests: it changes the replica count). It asserts what the
autoscaler decided (replicas wanted: starting or running), not how fast a 2-core machine starts
a second engine."""

from __future__ import annotations

import threading
import time

import openai

from tests.serving.conftest import SERVING, Served

pytestmark = SERVING

WANTED = ("STARTING", "UPDATING", "RECOVERING", "RUNNING", "PENDING_MIGRATION")


def _replicas(states: tuple[str, ...] = WANTED) -> int:
    """Replicas of the LLM deployment in the given states."""
    from ray import serve

    app = serve.status().applications["alpaca"]
    return sum(
        count
        for name, deployment in app.deployments.items()
        if "LLM" in name
        for state, count in deployment.replica_states.items()
        if str(getattr(state, "value", state)) in states
    )


def _wait(check, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def test_scales_up_under_load_and_back_down(served: Served):
    client = openai.OpenAI(base_url=served.base_url, api_key="unused", max_retries=0, timeout=120)
    assert _replicas() == 1
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                client.completions.create(
                    model=served.model, prompt="Tell me a long story", max_tokens=200
                )
            except openai.APIError:
                time.sleep(0.2)

    workers = [threading.Thread(target=load, daemon=True) for _ in range(12)]
    for w in workers:
        w.start()
    try:
        _wait(lambda: _replicas() >= 2, "the autoscaler to ask for a second replica", 240)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=120)
    _wait(lambda: _replicas() == 1, "the autoscaler to go back to one replica", 300)
    _wait(lambda: _replicas(("RUNNING",)) == 1, "one running replica", 300)
