"""Two operator replicas with kopf peering: the higher priority works, the other waits and
takes over when the first goes. On a control plane of its own (the replicas watch all
namespaces)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from alpaca_dev.controlplane import ControlPlane, free_port, stop_process, wait_for
from tests.conftest import start_operator

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
PEERING = "alpaca-e2e"


@pytest.fixture(scope="module")
def plane(control_plane, tmp_path_factory) -> Iterator[ControlPlane]:
    with ControlPlane(bin_dir=control_plane.bin_dir, workdir=tmp_path_factory.mktemp("peer")) as cp:
        cp.kubectl_run("apply", "--server-side", "-f", str(REPO / "crds"))
        cp.wait_established("alpacamodels.alpaca.dev", "clusterkopfpeerings.kopf.dev")
        cp.kubectl_run(
            "apply",
            "-f",
            "-",
            input=json.dumps(
                {
                    "apiVersion": "kopf.dev/v1",
                    "kind": "ClusterKopfPeering",
                    "metadata": {"name": PEERING},
                }
            ),
        )
        yield cp


def _start(cp: ControlPlane, priority: int, log: Path) -> subprocess.Popen[bytes]:
    args = (f"--peering={PEERING}", f"--priority={priority}", f"--metrics-port={free_port()}")
    return start_operator(cp.env(), log, *args, "--verbose")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    stop_process(proc)


def _wait(check, what: str, timeout: float = 45):
    return wait_for(check, what, timeout)


def _observed(cp: ControlPlane, name: str) -> bool:
    r = cp.kubectl_run("get", "am", name, "-o", "json", check=False)
    return r.returncode == 0 and "observedGeneration" in json.loads(r.stdout).get("status", {})


def test_one_replica_works_the_other_takes_over(plane, tmp_path):
    cp = plane
    high_log, low_log = tmp_path / "high.log", tmp_path / "low.log"
    high = _start(cp, 200, high_log)
    low = None
    try:
        # A replica starts paused until it has seen the peering; the higher one then works.
        _wait(lambda: "Resuming operations" in high_log.read_text(), "the higher replica to work")
        low = _start(cp, 100, low_log)  # sees the higher replica at once and stays paused
        _wait(
            lambda: "watch-stream for alpacamodels" in low_log.read_text(),
            "the lower replica to start",
        )
        cp.kubectl_run("apply", "-f", str(REPO / "examples" / "alpaca-local.yaml"))
        _wait(lambda: _observed(cp, "smollm2"), "the working replica's status")
        time.sleep(2)
        assert "smollm2: status written" in high_log.read_text()
        assert "Resuming operations" not in low_log.read_text()
        assert "status written" not in low_log.read_text()

        _stop(high)  # a graceful exit removes it from the peering at once
        _wait(
            lambda: "Resuming operations" in low_log.read_text(), "the other replica to take over"
        )
        doc = (
            (REPO / "examples" / "alpaca-local.yaml")
            .read_text()
            .replace("name: smollm2", "name: second")
        )
        cp.kubectl_run("apply", "-f", "-", input=doc)
        _wait(lambda: _observed(cp, "second"), "the new leader's status")
    finally:
        _stop(high)
        if low is not None:
            _stop(low)
