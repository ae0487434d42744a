"""What the upgrade tests of the KWOK and node tiers share: a bounded client that keeps calling
a model's endpoint and keeps what it got, the timeline of an upgrade (the Upgrading condition
and KubeRay's active and pending clusters), and what the clusters run."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from alpaca_dev.controlplane import ControlPlane, wait_for
from alpaca_operator import conditions as cond
from alpaca_operator.observe.model import condition_of


class Traffic:
    """`call()` every `every` seconds, one at a time, at most `max_requests` times: each call
    returns who answered (a cluster's name, or "" when the answer does not say) or raises,
    and both are kept with when the call started."""

    def __init__(self, call: Callable[[], str], every: float, max_requests: int) -> None:
        self.call, self.every, self.max_requests = call, every, max_requests
        self.answers: list[tuple[float, str]] = []  # (time, who)
        self.failures: list[tuple[float, str]] = []  # (time, what)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def _run(self) -> None:
        for _ in range(self.max_requests):
            if self._stop.wait(self.every):
                return
            at = time.monotonic()
            try:
                self.answers.append((at, self.call()))
            except Exception as exc:  # a refused connection, a time-out, a 5xx
                self.failures.append((at, repr(exc)[:160]))

    def answered_by(self, who: str) -> int:
        return sum(1 for _, w in self.answers if w == who)

    def answered_since(self, moment: float) -> int:
        return sum(1 for at, _ in self.answers if at >= moment)

    def wait_answers(self, who: str, count: int = 3, timeout: float = 60) -> None:
        try:
            wait_for(lambda: self.answered_by(who) >= count, f"answers from {who!r}", timeout)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}: {self.summary()}") from None

    @contextmanager
    def running(self) -> Iterator[Traffic]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=120)

    def summary(self) -> str:
        by_who = Counter(w for _, w in self.answers)
        return (
            f"answered {dict(by_who)}, failed {len(self.failures)}: "
            f"{self.failures[:2]} ... {self.failures[-2:]}"
        )


class Timeline:
    """The Upgrading condition and KubeRay's clusters, sampled every second: what happened."""

    def __init__(self, cp: ControlPlane, ns: str, name: str) -> None:
        self.cp, self.ns, self.name = cp, ns, name
        self.start = time.monotonic()
        self.steps: list[tuple[float, str, str, str]] = []  # (s, reason, active, pending)

    def sample(self) -> tuple[str, str, str]:
        obj = self.cp.get_json("am", self.name, self.ns)
        rs = (self.cp.get_json("rayservice", self.name, self.ns) or {}).get("status") or {}
        now = (
            str((condition_of(obj, cond.UPGRADING) or {}).get("reason", "")),
            str((rs.get("activeServiceStatus") or {}).get("rayClusterName") or ""),
            str((rs.get("pendingServiceStatus") or {}).get("rayClusterName") or ""),
        )
        if not self.steps or self.steps[-1][1:] != now:
            self.steps.append((round(time.monotonic() - self.start, 1), *now))
        return now

    def until(self, check: Any, what: str, timeout: float) -> tuple[str, str, str]:
        """Sample until `check(reason, active, pending)`; that sample."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.sample()
            if check(*now):
                return now
            time.sleep(1)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}: {self.steps}")

    def reasons(self) -> list[str]:
        return [reason for _, reason, _, _ in self.steps]

    def at(self, reason: str) -> float:
        """When `reason` was first seen (monotonic), or +inf."""
        return next((self.start + s for s, r, _, _ in self.steps if r == reason), float("inf"))

    def clusters(self) -> set[str]:
        """Every RayCluster that was active or pending."""
        return {c for _, _, active, pending in self.steps for c in (active, pending) if c}


def completions(base_url: str, model: str, every: float, max_requests: int) -> Traffic:
    """POST /v1/completions (two tokens) to an OpenAI endpoint: a new connection each time, no
    retries; anything but a 200 with a choice is a failure."""
    body = json.dumps({"model": model, "prompt": "Hello", "max_tokens": 2}).encode()

    def call() -> str:
        request = urllib.request.Request(
            f"{base_url}/completions", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read())["choices"], "no choice in the answer"
        return ""

    return Traffic(call, every, max_requests)


def cluster_images(cp: ControlPlane, ns: str, name: str) -> set[str]:
    """The images a RayCluster's Ray containers run (KubeRay's autoscaler sidecar aside)."""
    spec = (cp.get_json("raycluster", name, ns) or {}).get("spec", {})
    templates = [spec["headGroupSpec"]["template"]] + [
        g["template"] for g in spec.get("workerGroupSpecs", [])
    ]
    return {
        c["image"] for t in templates for c in t["spec"]["containers"] if c["name"] != "autoscaler"
    }


def cluster_names(cp: ControlPlane, ns: str) -> list[str]:
    return [c["metadata"]["name"] for c in cp.items("rayclusters", ns)]


def model_events(cp: ControlPlane, ns: str, name: str) -> list[str]:
    """The reasons of the Events posted on an AlpacaModel."""
    out = cp.kubectl_run(
        "get", "events", "-n", ns, "--field-selector", f"involvedObject.name={name}", "-o", "json"
    ).stdout
    return [
        e["reason"]
        for e in json.loads(out)["items"]
        if e["involvedObject"]["kind"] == "AlpacaModel"
    ]
