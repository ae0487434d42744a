"""Under concurrent load Serve scales the model from 1 to 2 replicas, and back after it stops."""

from __future__ import annotations

import threading
import time

import openai
import pytest

from .conftest import serve_app


def _replicas() -> int:
    from ray import serve

    app = serve.status().applications["alpaca"]
    return sum(
        d.replica_states.get("RUNNING", 0)
        for name, d in app.deployments.items()
        if "LLMServer" in name or "LLM" in name
    )


@pytest.fixture(scope="module")
def scalable(tiny_llama):
    autoscaling = {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 2,
        "upscale_delay_s": 2,
        "downscale_delay_s": 5,
        "metrics_interval_s": 1,
        "look_back_period_s": 2,
    }
    with serve_app(tiny_llama, "tiny", autoscaling=autoscaling) as app:
        yield app


def _wait(check, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def test_scales_up_under_load_and_back_down(scalable):
    client = openai.OpenAI(base_url=scalable.base_url, api_key="unused", max_retries=0, timeout=120)
    assert _replicas() == 1
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                client.completions.create(
                    model="tiny", prompt="Tell me a long story", max_tokens=200, temperature=1.0
                )
            except openai.APIError:
                time.sleep(0.2)

    workers = [threading.Thread(target=load, daemon=True) for _ in range(12)]
    for w in workers:
        w.start()
    try:
        _wait(lambda: _replicas() >= 2, "a second replica under load", timeout=240)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=120)
    _wait(lambda: _replicas() == 1, "scaling back to one replica", timeout=180)
