"""The user's path on the real node, as building blocks shared by `make demo` and the node
tier's tests: models served over HTTP on the node's address, the real KubeRay operator, the
chart installed with Helm, an example applied and followed until Ready, a chat request
through the endpoint Service's ClusterIP (kube-proxy's rules, as from any pod)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from alpaca_dev.controlplane import ControlPlane, free_port, stop_process
from alpaca_dev.fileserver import FileServer
from alpaca_dev.images import BuiltImage
from alpaca_dev.node import NODE_IP

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "alpaca-operator"
RELEASE, OPERATOR_NAMESPACE = "alpaca-operator", "alpaca-system"


def script(name: str, *args: str) -> Path:
    """The path a scripts/ provider prints last (k8s-bins.sh, thirdparty.sh: built and cached
    on first use)."""
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / name), *args], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def thirdparty(what: str) -> Path:
    """A third-party piece from scripts/thirdparty.sh (built and cached on first use)."""
    return script("thirdparty.sh", what)


@contextmanager
def model_server(root: Path, folders: dict[str, Path]) -> Iterator[str]:
    """Serve each folder at `<url>/<name>/` over HTTP (ranged reads, an index page per
    folder) on the node's address, where pods reach it; yields the base URL."""
    root.mkdir(parents=True, exist_ok=True)
    for name, folder in folders.items():
        link = root / name
        if not link.exists():
            link.symlink_to(folder.resolve(), target_is_directory=True)
    with FileServer(root, host=NODE_IP) as server:
        yield server.url


@contextmanager
def kuberay(cp: ControlPlane, crds: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The real KubeRay operator, as a process outside the cluster: it reaches each Ray head's
    dashboard through the apiserver's service proxy (its `--use-kubernetes-proxy`), since cluster
    DNS names do not resolve out here."""
    cp.kubectl_run("apply", "--server-side", "-f", str(crds), timeout=120)
    cp.wait_established("rayservices.ray.io", "rayclusters.ray.io")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(thirdparty("kuberay")),
                f"--kubeconfig={cp.kubeconfig}",
                "--enable-leader-election=false",
                "--use-kubernetes-proxy",
                f"--metrics-addr=127.0.0.1:{free_port()}",
                f"--health-probe-bind-address=127.0.0.1:{free_port()}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        stop_process(proc, timeout=15)


def install_operator(cp: ControlPlane, images: dict[str, BuiltImage], timeout: float = 300) -> str:
    """`helm install` the chart with the images built here; returns Helm's output once the
    operator's Deployment is available."""
    repository, _, tag = images["operator"].ref.rpartition(":")
    values = {
        "image": {"repository": repository, "tag": tag},
        "workloadImages": {
            "serving": images["serving-cpu"].ref,
            "weights": images["weights"].ref,
            "training": images["training"].ref,
        },
    }
    done = subprocess.run(
        [
            str(thirdparty("helm")),
            *("install", RELEASE, str(CHART), "-n", OPERATOR_NAMESPACE, "--create-namespace"),
            *("--values", "-", "--wait", f"--timeout={int(timeout)}s"),
        ],
        input=json.dumps(values),
        env={**os.environ, "KUBECONFIG": str(cp.kubeconfig)},
        capture_output=True,
        text=True,
        timeout=timeout + 60,
    )
    if done.returncode != 0:
        pods = cp.kubectl_run("get", "pods", "-A", "-o", "wide", check=False).stdout
        raise RuntimeError(f"helm install failed: {done.stderr}\n{pods}")
    return done.stdout


def example(name: str, **overrides: Any) -> dict[str, Any]:
    """An example's first document, with fields of its spec replaced (dotted paths)."""
    doc = yaml.safe_load((REPO / "examples" / name).read_text())
    for path, value in overrides.items():
        target = doc["spec"]
        *parents, leaf = path.split(".")
        for key in parents:
            target = target.setdefault(key, {})
        target[leaf] = value
    return doc


def status(cp: ControlPlane, kind: str, name: str, namespace: str) -> dict[str, Any]:
    return (cp.get_json(kind, name, namespace) or {}).get("status", {})


def follow(
    cp: ControlPlane,
    kind: str,
    name: str,
    namespace: str,
    done: Callable[[dict[str, Any]], bool],
    timeout: float,
    say: Callable[[str], None] = lambda _: None,
    fail_on_failed: bool = True,
) -> dict[str, Any]:
    """Poll an object's status until `done(status)`; `say` each new phase and reason. A phase
    `Failed` ends the wait with its reason (unless `fail_on_failed` is False)."""
    seen = None
    deadline = time.monotonic() + timeout
    while True:
        now = status(cp, kind, name, namespace)
        conditions = now.get("conditions", [])
        # the Ready condition when there is one, else the first that is not True
        shown = next((c for c in conditions if c["type"] == "Ready"), None) or next(
            (c for c in conditions if c["status"] != "True"), conditions[-1] if conditions else {}
        )
        line = (now.get("phase"), shown.get("reason"), shown.get("message"))
        if line != seen and line[0]:
            say(f"phase={line[0]:<12} {line[1]}: {line[2]}")
            seen = line
        if done(now):
            return now
        if fail_on_failed and now.get("phase") == "Failed":
            raise RuntimeError(f"{kind} {namespace}/{name} failed: {line[1]}: {line[2]}")
        if time.monotonic() > deadline:
            pods = cp.kubectl_run("get", "pods", "-n", namespace, "-o", "wide", check=False)
            raise TimeoutError(
                f"{kind} {name} not done after {timeout:.0f}s: {line}\n{pods.stdout}"
            )
        time.sleep(2)


def endpoint_url(cp: ControlPlane, model: str, namespace: str) -> str:
    """The OpenAI base URL through the endpoint Service's ClusterIP."""
    service = cp.get_json("service", f"{model}-openai", namespace)
    assert service is not None, f"no endpoint Service for {model}"
    ip = service["spec"]["clusterIP"]
    port = service["spec"]["ports"][0]["port"]
    return f"http://{ip}:{port}/v1"


def chat(base_url: str, model: str, question: str, max_tokens: int = 48) -> Any:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", timeout=300, max_retries=2)
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=max_tokens,
        temperature=0,
    )
