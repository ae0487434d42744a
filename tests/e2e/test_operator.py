"""The operator process against the real apiserver: status, generations, Events, deletion."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e
NAMESPACE_PREFIX = "e2e"  # the operator under test watches e2e-* only

REPO = Path(__file__).resolve().parents[2]


def _wait(check: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@pytest.fixture(scope="module")
def operator(control_plane, tmp_path_factory) -> Iterator[subprocess.Popen[bytes]]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "alpaca_operator.cli", "run", "--standalone", "-n", "e2e-*"],
            env=control_plane.env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    yield proc
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    print(log.read_text()[-4000:])


def _get(cp, ns: str, resource: str, name: str) -> dict[str, Any] | None:
    result = cp.kubectl_run("get", "-n", ns, resource, name, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def _condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in (obj or {}).get("status", {}).get("conditions", []):
        if c["type"] == type_:
            return c
    return None


def test_model_lifecycle(control_plane, operator, namespace):
    cp = control_plane
    cp.kubectl_run("apply", "-n", namespace, "-f", str(REPO / "examples" / "alpaca.yaml"))

    def accepted_at(generation: int) -> dict[str, Any] | None:
        obj = _get(cp, namespace, "am", "alpaca-7b")
        ok = obj and obj.get("status", {}).get("observedGeneration") == generation
        return obj if ok and (_condition(obj, "Accepted") or {}).get("status") == "True" else None

    obj = _wait(lambda: accepted_at(1), what="generation 1 accepted")
    assert obj["status"]["phase"] == "Pending"
    ready = _condition(obj, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "StagesPending"
    assert ready["observedGeneration"] == 1
    assert "kopf" not in obj["status"]  # no handler-keyed status

    cp.kubectl_run(
        "patch",
        "-n",
        namespace,
        "am",
        "alpaca-7b",
        "--type=merge",
        "-p",
        '{"spec":{"autoscaling":{"maxReplicas":6}}}',
    )
    _wait(lambda: accepted_at(2), what="generation 2 accepted")

    events = _wait(
        lambda: json.loads(cp.kubectl_run("get", "events", "-n", namespace, "-o", "json").stdout)[
            "items"
        ],
        what="events",
    )
    reasons = {e["reason"] for e in events if e["involvedObject"]["name"] == "alpaca-7b"}
    assert {"SpecValid", "StagesPending"} <= reasons

    obj = _get(cp, namespace, "am", "alpaca-7b")
    assert obj["metadata"].get("finalizers", []) == []
    cp.kubectl_run("delete", "-n", namespace, "am", "alpaca-7b", "--timeout=30s")
    assert _get(cp, namespace, "am", "alpaca-7b") is None


def test_finetune_lifecycle(control_plane, operator, namespace):
    cp = control_plane
    cp.kubectl_run("apply", "-n", namespace, "-f", str(REPO / "examples" / "finetune-lora.yaml"))
    obj = _wait(
        lambda: (
            (o := _get(cp, namespace, "aft", "alpaca-lora-7b"))
            and o.get("status", {}).get("phase")
            and o
        ),
        what="finetune status",
    )
    assert obj["status"]["observedGeneration"] == 1
    assert _condition(obj, "Accepted")["status"] == "True"
    assert obj["status"]["phase"] == "Pending"

    cp.kubectl_run(
        "patch",
        "-n",
        namespace,
        "aft",
        "alpaca-lora-7b",
        "--type=merge",
        "-p",
        '{"spec":{"suspend":true}}',
    )
    _wait(
        lambda: (
            (_get(cp, namespace, "aft", "alpaca-lora-7b") or {}).get("status", {}).get("phase")
            == "Suspended"
        ),
        what="Suspended phase",
    )
    cp.kubectl_run("delete", "-n", namespace, "aft", "alpaca-lora-7b", "--timeout=30s")
    assert _get(cp, namespace, "aft", "alpaca-lora-7b") is None


def test_operator_ignores_other_namespaces(control_plane, operator):
    cp = control_plane
    cp.kubectl_run("apply", "-n", "default", "-f", str(REPO / "examples" / "alpaca-local.yaml"))
    try:
        time.sleep(3)
        assert "status" not in _get(cp, "default", "am", "smollm2")
    finally:
        cp.kubectl_run("delete", "-n", "default", "am", "smollm2")
