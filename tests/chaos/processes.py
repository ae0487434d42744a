"""The processes the chaos suite starts, kills and restarts: the operator (one log per run)
and the control plane's kube-apiserver and etcd."""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import kubernetes

from alpaca_dev.controlplane import ControlPlane, free_port, stop_process, wait_for
from tests.chaos.driver import ClusterClient
from tests.conftest import start_operator

STARTED = "Initial authentication has finished"  # kopf's log line once it talks to the API


class Operator:
    """The operator process, started again after each kill; one log per run."""

    def __init__(self, cp: ControlPlane, work: Path) -> None:
        (work / "tmp").mkdir()
        # the client writes the kubeconfig's certificates to TMPDIR and removes them at exit,
        # which a SIGKILLed process never reaches
        self.env = cp.env() | {"TMPDIR": str(work / "tmp")}
        # 21 starts: compile the operator's modules once, into the module's folder
        self.env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.work = work
        self.runs: list[Path] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.metrics_port = 0

    def start(self, metrics: bool = False) -> None:
        """Start a run and wait until kopf has started (its imports take seconds here): the
        uptime before a kill counts from then, so kills land in the operator's work (its
        listing, its passes, their writes) rather than in Python's imports."""
        log = self.work / f"operator-{len(self.runs) + 1:02d}.log"
        self.runs.append(log)
        self.metrics_port = free_port() if metrics else 0
        proc = start_operator(self.env, log, "--standalone", f"--metrics-port={self.metrics_port}")
        self.proc = proc

        def started() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the operator exited with {proc.returncode}: {log.read_text()[-3000:]}"
                )
            return STARTED in log.read_text(errors="replace")

        wait_for(started, "the operator's start", 120, interval=0.1)
        self.started = time.monotonic()

    def kill(self) -> tuple[float, bool]:
        """SIGKILL; its uptime and whether it had written a status."""
        assert self.proc is not None
        uptime = time.monotonic() - self.started
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        return uptime, "status written" in self.runs[-1].read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def metric(self, prefix: str) -> float:
        """The sum of every sample whose name (with labels) starts with `prefix`."""
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as r:
            lines = r.read().decode().splitlines()
        return sum(float(line.rpartition(" ")[2]) for line in lines if line.startswith(prefix))


def client(cp: ControlPlane, manager: str) -> ClusterClient:
    """A client from the control plane's files (no temporary copies of its certificates)."""
    assert cp.pki is not None
    config = kubernetes.client.Configuration()
    config.host = cp.url
    config.ssl_ca_cert = str(cp.pki.ca_cert)
    config.cert_file, config.key_file = str(cp.pki.admin_cert), str(cp.pki.admin_key)
    return ClusterClient(kubernetes.client.ApiClient(config), field_manager=manager)


def sigkill(cp: ControlPlane, name: str) -> list[str]:
    """SIGKILL one of the control plane's processes; its command line."""
    proc = cp.processes.pop(name)
    args = [str(a) for a in proc.args]  # type: ignore[union-attr]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return args


def restart(cp: ControlPlane, name: str, down: float) -> None:
    """SIGKILL kube-apiserver or etcd (etcd's data stays: --unsafe-no-fsync only skips the
    disk flush), start it again with the same flags after `down` seconds, and wait until the
    apiserver is ready. (ControlPlane.restart_apiserver stops it gracefully, which takes it
    20 s here while the controller-manager's watches are open.)"""
    args = sigkill(cp, name)
    time.sleep(down)
    cp.spawn(name, args)
    wait_for(
        lambda: cp.kubectl_run("get", "--raw", "/readyz", check=False).returncode == 0,
        f"the apiserver ready again after {name}'s restart",
        120,
        interval=1,
    )
