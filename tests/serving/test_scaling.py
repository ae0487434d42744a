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


def _wait(
    check: Callable[[], bool], what: str, timeout: float, explain: Callable[[], str] = str
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {explain()}")
        time.sleep(1)


class Load:
    """Twelve clients asking for long completions; what they got, for the failure message."""

    def __init__(self, base_url: str, model: str) -> None:
        self.client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
        self.model = model
        self.answered = self.failed = 0
        self.last_error = ""
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def _ask(self) -> None:
        while not self.stop.is_set():
            try:
                self.client.completions.create(
                    model=self.model, prompt="Tell me a long story", max_tokens=200
                )
                with self.lock:
                    self.answered += 1
            except openai.APIError as e:
                with self.lock:
                    self.failed += 1
                    self.last_error = repr(e)[:300]
                time.sleep(0.2)

    def __str__(self) -> str:
        return f"{self.answered} answered, {self.failed} failed (last: {self.last_error or '-'})"

    def until(self, check: Callable[[], bool], what: str, explain: Callable[[], str]) -> None:
        workers = [threading.Thread(target=self._ask, daemon=True) for _ in range(12)]
        for w in workers:
            w.start()
        try:
            _wait(check, what, 240, lambda: f"load: {self}; {explain()}")
        finally:
            self.stop.set()
            for w in workers:
                w.join(timeout=120)


def _states() -> str:
    from ray import serve

    app = serve.status().applications["alpaca"]
    return str({name: d.replica_states for name, d in app.deployments.items()})


def test_scales_up_under_load_and_back_down(served: Served):
    assert _replicas() == 1
    Load(served.base_url, served.model).until(
        lambda: _replicas() >= 2, "the autoscaler to ask for a second replica", _states
    )
    _wait(lambda: _replicas() == 1, "the autoscaler to go back to one replica", 300, _states)
    _wait(lambda: _replicas(("RUNNING",)) == 1, "one running replica", 300, _states)


TARGET = re.compile(
    r"^ray_serve_autoscaling_target_replicas"
    r'\{[^}]*deployment="[^"]*LLMServer[^"]*"[^}]*\}\s+([0-9.]+)',
    re.M,
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


SCALED = re.compile(
    r"(Up|Down)scaling Deployment\(name='[^']*LLMServer[^']*'.*? from (\d+) to (\d+) replicas"
)


def _scalings(app: LocalServe) -> list[str]:
    """What Serve's controller logged it decided for the LLM deployment, in order: its own
    record, which (unlike the exported gauge) no metrics pipeline delays."""
    logs = app.log.parent / "ray" / "session_latest" / "logs" / "serve"
    lines = []
    for log in sorted(logs.glob("controller_*.log")):
        lines += [
            line for line in log.read_text(errors="replace").splitlines() if SCALED.search(line)
        ]
    return lines


def _scaled(app: LocalServe, before: int, to: int, since: int = 0) -> bool:
    """Whether the controller decided `before` -> `to` after its first `since` decisions."""
    return any(
        (int(m[2]), int(m[3])) == (before, to)
        for line in _scalings(app)[since:]
        if (m := SCALED.search(line))
    )


def test_fast_path_scales_up_under_load_and_back_down(served_fast: LocalServe):
    """Under HAProxy no proxy handle sees the requests: the replicas report their own load
    (direct ingress), and the autoscaler must still add a replica and remove it. What it
    decided is read from the controller's log; its target-replicas gauge is checked too."""
    metrics = served_fast.engine_metrics_url

    def seen() -> str:
        return f"target gauge {_target(metrics)}; controller: {_scalings(served_fast)[-5:]}"

    _wait(lambda: _target(metrics) == 1, "one target replica before the load", 120, seen)
    earlier = len(_scalings(served_fast))  # the other tests' requests may have scaled it
    Load(served_fast.base_url, served_fast.model).until(
        lambda: _scaled(served_fast, 1, 2, since=earlier),
        "the autoscaler to ask for a second replica on the fast path",
        seen,
    )
    _wait(
        lambda: _scaled(served_fast, 2, 1, since=earlier),
        "the autoscaler to go back to one replica",
        300,
        seen,
    )
    _wait(lambda: _target(metrics) == 1, "the exported target to say one replica", 120, seen)
    client = openai.OpenAI(base_url=served_fast.base_url, api_key="unused", timeout=120)
    assert client.completions.create(model=served_fast.model, prompt="Hi", max_tokens=4).choices
