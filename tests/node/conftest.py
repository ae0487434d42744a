"""The node tier: a real kubelet + containerd node on this machine, images built here from the
project's Dockerfiles, the chart installed with Helm, the real KubeRay operator, and models
served over HTTP on the node's address. One node for the whole session (on its own xdist
worker); every process, mount, interface and iptables chain it made is gone afterwards."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from alpaca_dev import images as image_builds
from alpaca_dev import stack
from alpaca_dev.node import Node, NodeUnavailable, check_host
from alpaca_dev.smollm2 import ensure_smollm2
from tests.conftest import POD_SECURITY_MODES, thirdparty_crd_dir
from tests.tiny_llama import FIXTURE, build_tiny_llama

REPO = Path(__file__).resolve().parents[2]


# Every node test module carries these as its pytestmark (xdist groups by marks present at
# collection): one xdist worker runs the node tier, one node at a time; pods start for real, and
# the first test also waits for the node, the images and the chart.
NODE = [pytest.mark.node, pytest.mark.xdist_group("node"), pytest.mark.timeout(2400)]


def _script(name: str, *args: str) -> Path:
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / name), *args], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


@dataclass
class Cluster:
    node: Node
    images: dict[str, image_builds.BuiltImage]
    models_url: str  # the HTTP server pods fill caches from: <url>/<folder>/
    smollm2: Path  # the model folder on this machine


def node_bins_or_skip() -> Path:
    """The node's binaries; a machine that cannot run a node skips the tier (fails it in CI)."""
    node_bins = _script("node-bins.sh")
    try:
        check_host(node_bins)
    except NodeUnavailable as why:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no real node on this machine: {why}")
    return node_bins


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The node with the operator installed by Helm and KubeRay running; models on HTTP."""
    node_bins = node_bins_or_skip()
    built = image_builds.build()  # `make images` built them: a no-op check here
    work = tmp_path_factory.mktemp("node")
    tiny = build_tiny_llama(work / "models" / "tiny-llama")
    data = work / "models" / "alpaca-data"
    data.mkdir()
    (data / FIXTURE.name).write_text(FIXTURE.read_text())
    smollm2 = ensure_smollm2()
    node = Node(
        k8s_bins=_script("k8s-bins.sh", "controller-manager", "scheduler"),
        node_bins=node_bins,
        work=work / "node",
        containerd_root=image_builds.cache_root().parent / "node" / "containerd-root",
        images=list(built.values()),
    )
    folders = {"SmolLM2-135M-Instruct": smollm2, "tiny-llama": tiny, "alpaca-data": data}
    with node, stack.model_server(work / "served", folders) as url:
        cp = node.cp
        with stack.kuberay(cp, thirdparty_crd_dir(), work / "kuberay.log"):
            print(stack.install_operator(cp, built))
            yield Cluster(node, built, url, smollm2)
            print(cp.kubectl_run("get", "pods", "-A", "-o", "wide", check=False).stdout)
            logs = cp.kubectl_run(
                "logs", "-n", stack.OPERATOR_NAMESPACE, f"deploy/{stack.RELEASE}", check=False
            )
            print(logs.stdout[-4000:])
        print((work / "kuberay.log").read_text()[-3000:])


def isolated_namespace(cluster: Cluster, name: str) -> Iterator[str]:
    """A namespace for one module, deleted afterwards with everything in it (its pods gone
    before the next module needs the node's CPUs). It enforces the `restricted` Pod Security
    Standard, as the other tiers' namespaces do: every pod the node runs there (fill and
    training Jobs, Ray head and workers, KubeRay's autoscaler sidecar) must meet it."""
    cp = cluster.node.cp
    labels = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in POD_SECURITY_MODES}
    cp.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    )
    yield name
    cp.kubectl_run("delete", "namespace", name, "--wait=true", timeout=600, check=False)


@pytest.fixture(scope="session")
def next_serving_image(cluster: Cluster) -> Iterator[str]:
    """The serving image under a second tag in the node's containerd, as a registry would hold a
    new release: what an upgrade of the pods changes to (the upgrade tests)."""
    image = cluster.images["serving-cpu"].ref
    tagged = f"{image.rsplit(':', 1)[0]}:next-release"
    cluster.node.ctr("images", "tag", "--force", image, tagged)
    yield tagged
    cluster.node.ctr("images", "rm", tagged, check=False)
