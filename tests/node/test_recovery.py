"""A node whose owner was SIGKILLed (a killed test run, a torn-down sandbox) never ran its
stop(): its daemons, a pod's containers, mounts, interfaces and iptables chains stay, and the
next node on this machine could not even add its interface (`ip link add alpaca-node0`: exit 2,
which is how a CI run failed after a killed one). The next node takes the machine's lock, reads
the dead node's ledger and puts all of it back before it starts. This module runs before the
tier's session node exists (a node waits for the one that holds the machine)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from alpaca_dev import hoststate, nodeledger
from alpaca_dev import images as image_builds
from alpaca_dev.node import NODE_INTERFACE, Node
from tests.node.conftest import NODE, REPO, _script, node_bins_or_skip

pytestmark = NODE

OWNER = """
import json, sys, time
from pathlib import Path
from alpaca_dev.images import BuiltImage
from alpaca_dev.node import Node

args = json.loads(sys.argv[1])
node = Node(
    k8s_bins=Path(args["k8s_bins"]),
    node_bins=Path(args["node_bins"]),
    work=Path(args["work"]),
    containerd_root=Path(args["containerd_root"]),
    images=[BuiltImage(**args["pause"])],
    volumes=1,
)
node.start()
node.cp.kubectl_run(
    "run", "held", "--image", args["pause"]["ref"], "--image-pull-policy", "Never",
    "--restart", "Never",
)
deadline = time.monotonic() + 300
while node.cp.get_json("pod", "held", "default").get("status", {}).get("phase") != "Running":
    assert time.monotonic() < deadline, "the pod did not start"
    time.sleep(1)
print("RUNNING", flush=True)
time.sleep(3600)  # killed long before
"""


def _node_args(work: Path, node_bins: Path) -> dict[str, object]:
    pause = image_builds.build(["pause"])["pause"]
    return {
        "k8s_bins": str(_script("k8s-bins.sh", "controller-manager", "scheduler")),
        "node_bins": str(node_bins),
        "work": str(work),
        "containerd_root": str(image_builds.cache_root().parent / "node" / "containerd-root"),
        "pause": {"name": pause.name, "ref": pause.ref, "stored": pause.stored},
    }


def test_a_node_puts_back_what_a_killed_one_left(tmp_path_factory: pytest.TempPathFactory):
    node_bins = node_bins_or_skip()
    tmp_path = tmp_path_factory.mktemp("rec")  # short: the daemons' sockets live under it
    dead_work = tmp_path / "dead"
    args = _node_args(dead_work, node_bins)
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, json.dumps(args)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline()  # blocks until the pod runs (or the owner fails)
        assert line.strip() == "RUNNING", f"the first node did not come up: {line!r}"
        os.kill(owner.pid, signal.SIGKILL)  # no teardown: its daemons run on in their sessions
        owner.wait(timeout=30)

        left = nodeledger.processes_of(str(dead_work.resolve()), "/alpaca-node")
        assert len(left) >= 8, left  # etcd, apiserver, 2 controllers, containerd, shims, kubelet
        assert Path("/sys/class/net", NODE_INTERFACE).exists()
        assert hoststate.mounts_under(dead_work)  # the pod's volumes, its rootfs
        assert nodeledger.MachineLock().left_behind() is not None

        node = Node(
            k8s_bins=Path(str(args["k8s_bins"])),
            node_bins=node_bins,
            work=tmp_path / "next",
            containerd_root=Path(str(args["containerd_root"])),
            volumes=1,
        )
        with node:
            ready = node.cp.get_json("node", "alpaca-node")
            assert ready is not None
            assert not hoststate.leftover_processes(sorted(left))
            assert not hoststate.mounts_under(dead_work)
            ledger = nodeledger.MachineLock().left_behind()
            assert ledger is not None and ledger.work == str((tmp_path / "next").resolve())
        # and the second node left nothing either
        assert not Path("/sys/class/net", NODE_INTERFACE).exists()
        assert not hoststate.mounts_under(tmp_path)
        assert nodeledger.MachineLock().left_behind() is None
        assert not {c for c in hoststate.iptables_chains() if c[2].startswith("CNI-")}
    finally:
        if owner.poll() is None:
            os.kill(owner.pid, signal.SIGKILL)
            owner.wait(timeout=30)  # what it left is the next node's to put back
