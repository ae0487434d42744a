"""The node's sockets fit the kernel's and containerd's limits, or the node says so before it
changes anything on the machine (a CI checkout deeper than a developer's once made containerd
exit with `unix socket path too long` half-way through a start)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from alpaca_dev import nodeconfig
from alpaca_dev.controlplane import ControlPlaneError
from alpaca_dev.node import Node


def _layout(work: Path) -> nodeconfig.NodeLayout:
    return nodeconfig.NodeLayout(
        name="n", work=work, containerd_root=work / "root", bin_dir=work / "bin", node_ip="10.0.0.1"
    )


def test_containerd_listens_on_the_sockets_the_layout_checks():
    layout = _layout(Path("/w"))
    config = tomllib.loads(nodeconfig.containerd_config(layout))
    assert config["grpc"]["address"] in map(str, layout.sockets)
    assert config["ttrpc"]["address"] in map(str, layout.sockets)


def test_a_short_folder_passes_and_a_deep_one_is_named():
    assert (
        _layout(Path("/check/work/main/.pytest-tmp/popen-gw1/node0/node")).too_long_sockets() == []
    )
    deep = Path("/check/work/main/.pytest-tmp/popen-gw1/test_a_node_puts_back_what_a_k0/dead")
    assert str(deep / "containerd" / "containerd.sock.ttrpc") in _layout(deep).too_long_sockets()


def test_a_node_in_a_deep_folder_refuses_before_it_takes_the_machine(tmp_path: Path):
    k8s = tmp_path / "k8s"
    k8s.mkdir()
    for name in ("etcd", "kube-apiserver", "kubectl"):  # never run: the refusal comes first
        (k8s / name).touch()
    node = Node(
        k8s_bins=k8s,
        node_bins=tmp_path / "bins",
        work=tmp_path / ("x" * 90),
        containerd_root=tmp_path / "root",
    )
    with pytest.raises(ControlPlaneError, match="too deep for its daemons' sockets"):
        node.start()
    assert not node.lock.held
    assert not (tmp_path / ("x" * 90)).exists()
