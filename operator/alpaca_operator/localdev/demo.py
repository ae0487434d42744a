"""`make demo`: a local control plane, the operator, and the example AlpacaModel applied.

Runs until Ctrl-C (or, with --once, exits after printing the result); stops every process it
started and removes its folder either way.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from alpaca_operator.localdev.controlplane import ControlPlane

EXAMPLES = ("alpaca-local.yaml", "finetune-lora.yaml")


def _say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _observed(cp: ControlPlane, resource: str, name: str) -> bool:
    result = cp.kubectl_run("get", resource, name, "-o", "json", check=False)
    return result.returncode == 0 and "observedGeneration" in json.loads(result.stdout).get(
        "status", {}
    )


def _start_operator(cp: ControlPlane, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "alpaca_operator.cli", "run", "--standalone", "-n", "default"],
            env=cp.env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def run(bin_dir: Path, repo: Path, once: bool, thirdparty_crds: Path | None) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="alpaca-demo-"))
    cp = ControlPlane(bin_dir=bin_dir, workdir=workdir)
    operator: subprocess.Popen[bytes] | None = None
    started = time.monotonic()
    try:
        _say("starting etcd + kube-apiserver on 127.0.0.1")
        cp.start()
        print(f"    {cp.url}  (export KUBECONFIG={cp.kubeconfig})")
        _say("installing the CRDs")
        print(cp.kubectl_run("apply", "--server-side", "-f", str(repo / "crds")).stdout, end="")
        cp.wait_established("alpacamodels.alpaca.dev", "alpacafinetunes.alpaca.dev")
        if thirdparty_crds is not None:
            _say("installing the KubeRay and Karpenter CRDs")
            cp.kubectl_run("apply", "--server-side", "-f", str(thirdparty_crds), timeout=120)
            cp.wait_established("rayservices.ray.io", "nodepools.karpenter.sh")
        _say(f"starting the operator (log: {workdir / 'operator.log'})")
        operator = _start_operator(cp, workdir / "operator.log")
        for example in EXAMPLES:
            _say(f"kubectl apply -f examples/{example}")
            print(cp.kubectl_run("apply", "-f", str(repo / "examples" / example)).stdout, end="")
        deadline = time.monotonic() + 60
        while not (_observed(cp, "am", "smollm2") and _observed(cp, "aft", "alpaca-lora-7b")):
            if operator.poll() is not None or time.monotonic() > deadline:
                print((workdir / "operator.log").read_text()[-3000:])
                raise SystemExit("the operator did not update the status; its log is above")
            time.sleep(0.5)
        _say(f"kubectl get am,aft   ({time.monotonic() - started:.1f}s after start)")
        print(cp.kubectl_run("get", "am,aft").stdout, end="")
        _say("kubectl get am smollm2 -o jsonpath='{.status.conditions}'")
        conditions = json.loads(
            cp.kubectl_run("get", "am", "smollm2", "-o", "jsonpath={.status.conditions}").stdout
        )
        for c in conditions:
            print(f"    {c['type']}={c['status']} ({c['reason']}): {c['message']}")
        if not once:
            _say(
                f"running; in another shell: export KUBECONFIG={cp.kubeconfig}. Ctrl-C stops everything."
            )
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0
    finally:
        _say("stopping")
        if operator is not None and operator.poll() is None:
            os.killpg(operator.pid, signal.SIGTERM)
            operator.wait(timeout=20)
        cp.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alpaca-demo", description=__doc__)
    parser.add_argument(
        "--bin-dir", type=Path, required=True, help="folder with kube-apiserver, etcd, kubectl"
    )
    parser.add_argument(
        "--repo", type=Path, default=Path.cwd(), help="the alpaca-operator checkout"
    )
    parser.add_argument("--once", action="store_true", help="exit after printing the result")
    parser.add_argument(
        "--thirdparty-crds", type=Path, help="folder with the KubeRay and Karpenter CRDs"
    )
    args = parser.parse_args(argv)
    if not args.once:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    return run(args.bin_dir, args.repo, args.once, args.thirdparty_crds)


if __name__ == "__main__":
    raise SystemExit(main())
