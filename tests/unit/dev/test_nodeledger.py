"""The machine's node lock and the ledger a node leaves for the next one (real flock, real
processes; the node tier's test_recovery does it with a real node)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from alpaca_dev import hoststate, nodeledger


def test_a_second_node_waits_then_names_the_holder(tmp_path: Path):
    first, second = nodeledger.MachineLock(tmp_path), nodeledger.MachineLock(tmp_path)
    first.acquire(timeout=1)
    first.record(nodeledger.Ledger(4242, "/srv/node/a", "/alpaca-node", "/bin", {}))
    with pytest.raises(nodeledger.NodeBusy, match="pid 4242, folder /srv/node/a"):
        second.acquire(timeout=0)
    first.release()
    assert first.left_behind() is None  # a clean stop leaves no ledger
    second.acquire(timeout=0)
    second.release()


def test_a_stop_with_leftovers_keeps_the_ledger_for_the_next_node(tmp_path: Path):
    lock = nodeledger.MachineLock(tmp_path)
    lock.acquire(timeout=1)
    lock.record(nodeledger.Ledger(1, "/srv/node/a", "/alpaca-node", "/bin", {}))
    lock.release(keep_ledger=True)
    after = nodeledger.MachineLock(tmp_path)
    after.acquire(timeout=1)
    dead = after.left_behind()
    assert dead is not None and dead.work == "/srv/node/a"
    after.release()


def test_the_host_state_survives_the_ledger():
    state = hoststate.HostState(
        sysctls={"net.ipv4.ip_forward": "0", "kernel.panic": None},
        chains={("iptables", "nat", "CNI-abc"), ("ip6tables", "filter", "KUBE-FIREWALL")},
        interfaces={"lo", "eth0"},
        existing_paths={"/etc/cni"},
    )
    assert nodeledger.host_state_from_json(nodeledger.host_state_to_json(state)) == state


def test_a_dead_nodes_processes_are_found_by_its_folder_and_stopped(tmp_path: Path):
    work = tmp_path / "node"
    work.mkdir()
    by_cwd = subprocess.Popen(["sleep", "300"], cwd=work)
    by_arg = subprocess.Popen(["sh", "-c", "sleep 300", str(work / "kubelet.yaml")], cwd="/")
    other = subprocess.Popen(["sleep", "300"], cwd="/")
    by_env = subprocess.Popen(["sleep", "300"], env={**os.environ, "KUBECONFIG": f"{work}/k"})
    try:
        found = nodeledger.processes_of(str(work), "/alpaca-node-test-none")
        assert {by_cwd.pid, by_arg.pid, by_env.pid} <= found
        assert other.pid not in found
        assert os.getpid() not in found
        assert nodeledger.kill_all({by_cwd.pid, by_arg.pid, by_env.pid}) == []
    finally:
        for proc in (by_cwd, by_arg, other, by_env):
            proc.kill()
            proc.wait()


def test_a_ledger_naming_no_node_folder_is_refused():
    problems = nodeledger.recover(nodeledger.Ledger(1, "/", "/alpaca-node", "/bin", {}))
    assert problems and "which no node uses" in problems[0]
