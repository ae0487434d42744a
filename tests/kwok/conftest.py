"""The simulated cluster the KWOK tests share (one per test run: its seven controllers take a
minute to start): the real apiserver, scheduler, controller-manager, KubeRay operator,
Karpenter (KWOK cloud provider), Kueue and the operator; KWOK plays the kubelets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from alpaca_dev import kwok
from alpaca_dev.controlplane import ControlPlane
from alpaca_dev.stack import kuberay, thirdparty
from tests.conftest import REPO, k8s_bin_dir, operator_process

RESTRICTED, MODES = "pod-security.kubernetes.io/", ("enforce", "warn", "audit")


@pytest.fixture(scope="package")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    work = tmp_path_factory.mktemp("kwok")
    cp = ControlPlane(bin_dir=k8s_bin_dir(), workdir=work / "cp")
    with cp:
        cp.kubectl_run("apply", "--server-side", "-f", str(REPO / "crds"))
        cp.start_controller_manager(["*"])
        cp.start_scheduler()
        kwok.start_kwok(cp)
        with kuberay(cp, thirdparty("crds"), work / "kuberay.log"):
            # after KubeRay's folder (it holds Karpenter 1.15's CRDs): the provider's own
            kwok.start_karpenter(cp, kwok.gpu_instance_types())
            kwok.start_kueue(cp)
            cp.apply(kwok.node("cpu-0", cpu="64", memory="512Gi"))  # fill Jobs, Ray heads
            kwok.wait_node_ready(cp, "cpu-0")
            log = work / "operator.log"
            with operator_process(cp.env(), log, "--standalone", "--metrics-port=0"):
                yield cp


@pytest.fixture
def namespace(sim: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    name = "kwok-" + request.node.name.removeprefix("test_").replace("_", "-")[:40].strip("-")
    sim.kubectl_run("create", "namespace", name)
    # as hardened clusters do: a pod the Job controller or KubeRay makes from what the
    # operator rendered is refused unless it meets the `restricted` Pod Security Standard
    sim.kubectl_run("label", "namespace", name, *(f"{RESTRICTED}{m}=restricted" for m in MODES))
    yield name
    sim.kubectl_run("delete", "namespace", name, "--wait=false")
