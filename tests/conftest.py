"""Shared fixtures: the real local control plane (etcd + kube-apiserver on loopback)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from alpaca_dev.controlplane import ControlPlane, stop_process
from tests.timeline import pytest_runtest_logreport, pytest_terminal_summary  # noqa: F401 (hooks)
from tests.xdist_schedule import pytest_xdist_make_scheduler  # noqa: F401 (a hook: xdist's controller)

REPO = Path(__file__).resolve().parent.parent
POD_SECURITY_MODES = ("enforce", "warn", "audit")  # of the `namespace` fixture's namespaces


@pytest.hookimpl(trylast=True)  # after pytest's tmpdir plugin has set up the factory
def pytest_configure(config: pytest.Config) -> None:
    """Importing torch._dynamo (transformers' Trainer, model classes) makes torch create its inductor cache
    folder, by default /tmp/torchinductor_$USER, already while test modules are collected: put it
    in this session's temporary folder (tmp_path's parent) instead."""
    basetemp = config._tmp_path_factory.getbasetemp()  # the factory behind tmp_path
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(basetemp / "torchinductor"))


def k8s_bin_dir() -> Path:
    """The folder with kube-apiserver, etcd and kubectl: ALPACA_K8S_BINS, else scripts/k8s-bins.sh
    (which honours KUBEBUILDER_ASSETS, and builds and caches the binaries on first use)."""
    if os.environ.get("ALPACA_K8S_BINS"):
        return Path(os.environ["ALPACA_K8S_BINS"])
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "k8s-bins.sh")], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A real etcd + kube-apiserver with our CRDs installed, for the whole session."""
    cp = ControlPlane(bin_dir=k8s_bin_dir(), workdir=tmp_path_factory.mktemp("cp"))
    with cp:
        cp.kubectl_run("apply", "--server-side", "-f", str(REPO / "crds"))
        cp.wait_established("alpacamodels.alpaca.dev", "alpacafinetunes.alpaca.dev")
        yield cp


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test (named after it), deleted afterwards. It enforces the
    `restricted` Pod Security Standard (and warns and audits by it), as hardened clusters do:
    a pod made there from what the operator rendered is refused unless it meets it.

    A test module may set NAMESPACE_PREFIX (default "t") to keep its namespaces apart.
    """
    prefix = getattr(request.module, "NAMESPACE_PREFIX", "t")
    stem = "".join(ch if ch.isalnum() else "-" for ch in request.node.name.lower())
    name = f"{prefix}-{stem[:40].strip('-')}-{uuid.uuid4().hex[:6]}"
    labels = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in POD_SECURITY_MODES}
    control_plane.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    )
    yield name
    control_plane.kubectl_run("delete", "namespace", name, "--wait=false")


def thirdparty_crd_dir() -> Path:
    """KubeRay and Karpenter CRDs from their Go modules (cached by scripts/thirdparty.sh)."""
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "thirdparty.sh"), "crds"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def thirdparty_crds(control_plane: ControlPlane) -> Path:
    """The session control plane with the real KubeRay and Karpenter CRDs installed."""
    folder = thirdparty_crd_dir()
    control_plane.kubectl_run("apply", "--server-side", "-f", str(folder), timeout=120)
    control_plane.wait_established(
        "rayservices.ray.io", "rayclusters.ray.io", "nodepools.karpenter.sh"
    )
    return folder


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlane):
    """The operator's own API client, on the session control plane."""
    import kubernetes

    from alpaca_operator.kube import Kube

    return Kube(kubernetes.config.new_client_from_config(config_file=str(control_plane.kubeconfig)))


def start_operator(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    """The operator as a process (`alpaca-operator run ARGS`), talking to the cluster `env`'s
    KUBECONFIG names, its output in `log`: how every tier without a node runs it (the node
    tier installs the chart)."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "alpaca_operator.cli", "run", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@contextlib.contextmanager
def operator_process(
    env: dict[str, str], log: Path, *args: str
) -> Iterator[subprocess.Popen[bytes]]:
    """start_operator for a block; stopped afterwards, the end of its log printed."""
    proc = start_operator(env, log, *args)
    try:
        yield proc
    finally:
        stop_process(proc)
        print(log.read_text()[-4000:])
