"""Serve's autoscaler adds a replica under concurrent load and removes it afterwards, on both
request paths (the module runs last among the serving tests: it changes the replica count). It
asserts what the autoscaler decided (replicas wanted: starting or running; on the fast path the
controller's target replicas), not how fast a 2-core machine starts a second engine."""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from collections.abc import Callable

import openai

from tests.serving.conftest import SERVING, LocalServe, Served

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


def _under_load(base_url: str, model: str, until: Callable[[], bool], what: str) -> None:
    """Twelve clients asking for long completions until `until()` holds."""
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                client.completions.create(
                    model=model, prompt="Tell me a long story", max_tokens=200
                )
            except openai.APIError:
                time.sleep(0.2)

    workers = [threading.Thread(target=load, daemon=True) for _ in range(12)]
    for w in workers:
        w.start()
    try:
        _wait(until, what, 240)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=120)


def test_scales_up_under_load_and_back_down(served: Served):
    assert _replicas() == 1
    _under_load(
        served.base_url,
        served.model,
        lambda: _replicas() >= 2,
        "the autoscaler to ask for a second replica",
    )
    _wait(lambda: _replicas() == 1, "the autoscaler to go back to one replica", 300)
    _wait(lambda: _replicas(("RUNNING",)) == 1, "one running replica", 300)


TARGET = re.compile(
    r'^ray_serve_autoscaling_target_replicas\{[^}]*deployment="LLM[^"]*"[^}]*\}\s+([0-9.]+)', re.M
)


def _target(metrics_url: str) -> int | None:
    """The replicas Serve's controller is trying to reach for the LLM deployment (its own gauge,
    on the command's Ray metrics port); None until exported."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=10) as resp:
            found = TARGET.findall(resp.read().decode())
    except OSError:
        return None
    return round(float(found[0])) if found else None


def test_fast_path_scales_up_under_load_and_back_down(served_fast: LocalServe):
    """Under HAProxy no handle sees the requests: the replicas report their own load (direct
    ingress), and the autoscaler must still add a replica and remove it."""
    metrics = served_fast.engine_metrics_url
    _wait(lambda: _target(metrics) == 1, "one target replica before the load", 120)
    _under_load(
        served_fast.base_url,
        served_fast.model,
        lambda: (_target(metrics) or 0) >= 2,
        "the autoscaler to ask for a second replica on the fast path",
    )
    _wait(lambda: _target(metrics) == 1, "the autoscaler to go back to one replica", 300)
    client = openai.OpenAI(base_url=served_fast.base_url, api_key="unused", timeout=120)
    assert client.completions.create(model=served_fast.model, prompt="Hi", max_tokens=4).choices
