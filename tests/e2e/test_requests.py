"""What the operator asks of the apiserver, counted by the apiserver's own audit log: nothing
at rest, nothing for a pass over an unchanged object, nothing for a node no model selects, and
for a node some models select only those models' status writes (issue 12)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from alpaca_dev.controlplane import ControlPlane, free_port, wait_for
from tests.conftest import REPO, k8s_bin_dir, operator_process, thirdparty_crd_dir

pytestmark = pytest.mark.e2e

NAMESPACES = ("req-a", "req-b", "req-c")
POOLS = ("p0", "p1", "p2", "p3")
MODELS_PER_NAMESPACE = 8
NODES_PER_POOL = 3
OURS = ("alpaca-operator/", "kopf/")
AUDIT_POLICY = {"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "rules": [{"level": "Metadata"}]}
PASSES = 'alpaca_reconcile_total{kind="AlpacaModel",result="ok"}'
DEPTH = "alpaca_work_queue_depth"


class Audit:
    """The operator's requests in the apiserver's audit log, from a mark on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def requests(self) -> list[dict[str, Any]]:
        """Completed requests from the operator since the mark (a watch's long life aside)."""
        with self.path.open("rb") as f:
            f.seek(self.offset)
            lines = f.read().decode().splitlines()
        found = []
        for line in lines:
            entry = json.loads(line)
            if not str(entry.get("userAgent", "")).startswith(OURS):
                continue
            # kopf's watch machinery (a watch, a re-list after a 410) is not a pass's request
            if entry.get("stage") == "ResponseComplete" and entry.get("verb") not in (
                "watch",
                "list",
            ):
                found.append(entry)
        return found


def _described(entries: list[dict[str, Any]]) -> list[str]:
    return [
        f"{e['verb']} {e.get('objectRef', {}).get('resource')}/{e.get('objectRef', {}).get('name')}"
        for e in entries
    ]


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlane, Audit]]:
    work = tmp_path_factory.mktemp("requests")
    policy = work / "audit-policy.yaml"
    policy.write_text(yaml.safe_dump(AUDIT_POLICY))
    cp = ControlPlane(
        bin_dir=k8s_bin_dir(),
        workdir=work / "cp",
        extra_apiserver_args=[
            f"--audit-policy-file={policy}",
            f"--audit-log-path={work / 'audit.log'}",
            "--audit-log-format=json",
        ],
    )
    with cp:
        cp.kubectl_run("apply", "--server-side", "-f", str(REPO / "crds"))
        cp.kubectl_run("apply", "--server-side", "-f", str(thirdparty_crd_dir()), timeout=120)
        cp.wait_established(
            "alpacamodels.alpaca.dev", "rayservices.ray.io", "nodepools.karpenter.sh"
        )
        yield cp, Audit(work / "audit.log")


def _node(name: str, pool: str) -> dict[str, Any]:
    labels = {
        "pool": pool,
        "nvidia.com/gpu.product": "NVIDIA-A10G",
        "nvidia.com/gpu.present": "true",
    }
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}


def _model(name: str, pool: str) -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "examples" / "alpaca.yaml").read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["capacity"]["nodeSelector"] = {"pool": pool}
    return dict(doc)


def _apply(cp: ControlPlane, docs: list[dict[str, Any]], namespace: str | None = None) -> None:
    text = yaml.safe_dump_all(docs)
    cp.kubectl_run("apply", *(("-n", namespace) if namespace else ()), "-f", "-", input=text)


def _gpus(cp: ControlPlane, node: str, count: int) -> None:
    status = {
        "status": {
            "allocatable": {"nvidia.com/gpu": str(count)},
            "capacity": {"nvidia.com/gpu": str(count)},
        }
    }
    cp.kubectl_run(
        "patch", "node", node, "--subresource=status", "--type=merge", "-p", json.dumps(status)
    )


def _metric(port: int, name: str) -> float:
    """A sample's value by its full name (labels included), 0 when absent."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            key, _, value = line.rpartition(" ")
            if key == name:
                return float(value)
    return 0.0


def _passes(port: int) -> float:
    return _metric(port, PASSES)


def _quiet(port: int, seconds: float = 4.0) -> float:
    """Wait until the work queue is empty and no pass has finished for `seconds`; the count
    of passes then."""
    last, since = _passes(port), time.monotonic()

    def settled() -> float | None:
        nonlocal last, since
        now = _passes(port)
        if now != last or _metric(port, DEPTH):
            last, since = now, time.monotonic()
        return now if time.monotonic() - since >= seconds else None

    return float(wait_for(settled, "the operator to go quiet", 120))


def test_requests_at_rest_for_unchanged_objects_and_for_node_changes(audited, tmp_path):
    cp, audit = audited
    nodes = [f"gpu-{pool}-{i}" for pool in POOLS for i in range(NODES_PER_POOL)]
    _apply(cp, [_node(n, n.split("-")[1]) for n in nodes] + [_node("spare", "spare")])
    for n in [*nodes, "spare"]:
        _gpus(cp, n, 1)
    for ns in NAMESPACES:
        cp.kubectl_run("create", "namespace", ns)
        _apply(
            cp, [_model(f"m{i}", POOLS[i % len(POOLS)]) for i in range(MODELS_PER_NAMESPACE)], ns
        )
    port = free_port()
    log = tmp_path / "operator.log"
    with operator_process(cp.env(), log, "--standalone", f"--metrics-port={port}"):
        total = len(NAMESPACES) * MODELS_PER_NAMESPACE

        def all_seen() -> bool:
            found = [
                m
                for ns in NAMESPACES
                for m in cp.items("alpacamodels", ns)
                if m.get("status", {}).get("observedGeneration") == 1
            ]
            return len(found) == total

        wait_for(all_seen, "every model's first status", 180)
        for ns in NAMESPACES:
            for m in cp.items("alpacamodels", ns):
                capacity = next(
                    c for c in m["status"]["conditions"] if c["type"] == "CapacityReady"
                )
                assert capacity["status"] == "True", capacity
        before = _quiet(port)

        # At rest: nothing but the watches.
        audit.mark()
        time.sleep(15)
        assert _described(audit.requests()) == []
        assert _passes(port) == before

        # A pass over every model whose children did not change: many passes, no request.
        audit.mark()
        for ns in NAMESPACES:
            cp.kubectl_run("annotate", "pvc", "-n", ns, "--all", "touched=1")
        after = _quiet(port)
        assert after - before >= total  # each cache's users all looked again
        assert _described(audit.requests()) == []

        # A node no model selects changes: no pass, no request.
        audit.mark()
        cp.kubectl_run("label", "node", "spare", "note=irrelevant")
        _gpus(cp, "spare", 8)
        time.sleep(5)
        assert _quiet(port) == after
        assert _described(audit.requests()) == []

        # The p1 nodes lose their GPUs: only the p1 models look again, and write only their status.
        audit.mark()
        for n in nodes:
            if "-p1-" in n:
                _gpus(cp, n, 0)
        p1 = {f"m{i}" for i in range(MODELS_PER_NAMESPACE) if POOLS[i % len(POOLS)] == "p1"}

        def p1_waiting() -> bool:
            return all(
                next(c for c in m["status"]["conditions"] if c["type"] == "CapacityReady")["status"]
                == "False"
                for ns in NAMESPACES
                for m in cp.items("alpacamodels", ns)
                if m["metadata"]["name"] in p1
            )

        wait_for(p1_waiting, "the p1 models to see their nodes without GPUs", 60)
        final = _quiet(port)
        woken = len(p1) * len(NAMESPACES)
        assert woken <= final - after <= woken * NODES_PER_POOL  # coalesced, never the others
        requests = audit.requests()
        touched = {e["objectRef"].get("name") for e in requests if e["verb"] != "create"}
        assert touched == p1, _described(requests)
        writes_per_model = len(requests) / woken
        print(
            f"p1 change: {len(requests)} requests for {woken} models ({writes_per_model:.1f} each)"
        )
        print("\n".join(sorted(_described(requests))))
        assert {e["objectRef"]["resource"] for e in requests} <= {"alpacamodels", "events"}

    # One Event per transition: no object got the same Event twice.
    seen: set[tuple[str, str, str, str]] = set()
    for ns in NAMESPACES:
        for event in cp.items("events", ns):
            key = (ns, event["involvedObject"]["name"], event["reason"], event["message"])
            assert key not in seen, f"posted twice: {key}"
            seen.add(key)


def test_the_apiserver_away_for_a_minute_loses_no_change(audited, tmp_path):
    """The apiserver stops for 60 s right after a spec change; when it is back, the operator
    (never restarted) brings the model to its newest generation and follows a node change."""
    cp, _ = audited
    ns = "req-outage"
    cp.kubectl_run("create", "namespace", ns)
    cp.kubectl_run("apply", "-f", "-", input=yaml.safe_dump(_node("outage-node", "outage")))
    _gpus(cp, "outage-node", 1)
    _apply(cp, [_model("m", "outage")], ns)
    port = free_port()
    with operator_process(
        cp.env(), tmp_path / "operator.log", "--standalone", f"--metrics-port={port}"
    ) as proc:

        def observed(generation: int, capacity: str) -> bool:
            m = cp.get_json("alpacamodel", "m", ns) or {}
            status = m.get("status") or {}
            conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
            return (
                status.get("observedGeneration") == generation
                and conditions.get("CapacityReady") == capacity
            )

        wait_for(lambda: observed(1, "True"), "the first status", 120)
        changed = _model("m", "outage")
        changed["spec"]["engine"]["maxModelLen"] = 1024
        _apply(cp, [changed], ns)
        cp.restart_apiserver(down=60)
        _gpus(cp, "outage-node", 0)
        wait_for(lambda: observed(2, "False"), "the newest generation and the node change", 360)
        assert proc.poll() is None  # the same operator process
