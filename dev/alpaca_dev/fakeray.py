"""Ray as KubeRay and clients see it, for KWOK's pods: the dashboard's Serve API on each head
(:8265) and Serve's HTTP proxy on every pod (:8000), so the real KubeRay operator deploys Serve
configs, health-checks proxies and switches clusters as it would on a real cluster.

KWOK gives pods addresses from its CIDR (kwok.POD_CIDR) and runs nothing behind them. While a
`FakeRay` is open, that CIDR is a local route on this machine (as `ip route add local` makes
any address of a range one of this host's own: a test network the test creates and removes),
and one listener per pod address and port answers for the pod's RayCluster:

- `PUT /api/serve/applications/` (KubeRay deploys the Serve config): the applications named in
  it are DEPLOYING, then RUNNING `load_seconds` later (the model loading);
- `GET /api/serve/applications/`: their statuses, as Ray's dashboard reports them;
- `GET /-/healthz` on :8000: the proxy is up (before the model is loaded, as on Ray);
- anything else on :8000: 200 with the pod's cluster name once the cluster's applications run,
  else 503, as a Serve proxy without a running app answers.

KubeRay reaches them through the apiserver's proxy (its `--use-kubernetes-proxy`), clients
through the apiserver's service proxy: every hop but Ray itself is the real one.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DASHBOARD_PORT, SERVE_PORT = 8265, 8000
SERVE_API = "/api/serve/applications/"


@dataclass
class Cluster:
    """One RayCluster's Serve applications: name -> when it was deployed (monotonic)."""

    deployed: dict[str, float] = field(default_factory=dict)
    deploys: int = 0

    def status(self, app: str, load_seconds: float) -> str:
        return "RUNNING" if time.monotonic() - self.deployed[app] >= load_seconds else "DEPLOYING"


class FakeRay:
    """Listeners for the pods of `namespace` (found by polling the apiserver)."""

    def __init__(self, client: Any, namespace: str, cidr: str, load_seconds: float = 5.0) -> None:
        import kubernetes

        self.core = kubernetes.client.CoreV1Api(client)
        self.namespace, self.cidr, self.load_seconds = namespace, cidr, load_seconds
        self.clusters: dict[str, Cluster] = {}
        self.pods: dict[str, str] = {}  # pod IP -> RayCluster
        self._servers: dict[tuple[str, int], ThreadingHTTPServer] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="fakeray-pods", daemon=True)

    # --- the pods -------------------------------------------------------------------------

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            try:
                pods = self.core.list_namespaced_pod(
                    self.namespace, label_selector="ray.io/cluster", _request_timeout=10
                ).items
            except Exception:  # the apiserver restarting: look again next round
                continue
            for pod in pods:
                ip, labels = pod.status.pod_ip, pod.metadata.labels or {}
                if not ip or pod.metadata.deletion_timestamp:
                    continue
                cluster = labels["ray.io/cluster"]
                with self._lock:  # KWOK hands a deleted pod's address out again
                    self.pods[ip] = cluster
                    self.clusters.setdefault(cluster, Cluster())
                ports = [SERVE_PORT]
                if labels.get("ray.io/node-type") == "head":
                    ports.append(DASHBOARD_PORT)
                for port in ports:
                    if (ip, port) not in self._servers:
                        self._listen(ip, port)

    def _listen(self, ip: str, port: int) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.0: a connection per request. The apiserver's proxy keeps connections to a
            # pod address open, and KWOK gives a deleted pod's address to the next pod: a kept
            # connection would reach the listener (and the cluster) of the pod before.
            protocol_version = "HTTP/1.0"

            def log_message(self, *_: Any) -> None:
                pass

            def _answer(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode() if not isinstance(body, bytes) else body
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _cluster(self) -> Cluster:
                with fake._lock:
                    return fake.clusters[fake.pods[ip]]

            def do_PUT(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                cluster = self._cluster()
                with fake._lock:
                    cluster.deploys += 1
                    for app in body.get("applications", []):
                        cluster.deployed.setdefault(app["name"], time.monotonic())
                self._answer(200, {})

            def do_GET(self) -> None:
                cluster = self._cluster()
                if port == DASHBOARD_PORT and self.path.startswith(SERVE_API):
                    apps = {
                        name: {
                            "name": name,
                            "status": (status := cluster.status(name, fake.load_seconds)),
                            "message": "",
                            "route_prefix": "/",
                            "deployments": {
                                "LLMServer": {
                                    "name": "LLMServer",
                                    "status": "HEALTHY" if status == "RUNNING" else "UPDATING",
                                    "message": "",
                                }
                            },
                        }
                        for name in cluster.deployed
                    }
                    self._answer(200, {"applications": apps, "deploy_mode": "MULTI_APP"})
                elif port == SERVE_PORT and self.path.startswith("/-/healthz"):
                    self._answer(200, b"success")
                elif port == SERVE_PORT:
                    running = cluster.deployed and all(
                        cluster.status(a, fake.load_seconds) == "RUNNING" for a in cluster.deployed
                    )
                    if running:
                        self._answer(200, {"cluster": fake.pods[ip]})
                    else:
                        self._answer(503, {"error": "no running application"})
                else:
                    self._answer(404, {})

            do_POST = do_GET

        server = ThreadingHTTPServer((ip, port), Handler)
        server.daemon_threads = True
        self._servers[(ip, port)] = server
        threading.Thread(
            target=server.serve_forever, name=f"fakeray-{ip}:{port}", daemon=True
        ).start()

    # --- open and close -------------------------------------------------------------------

    def __enter__(self) -> FakeRay:
        subprocess.run(["ip", "route", "replace", "local", self.cidr, "dev", "lo"], check=True)
        self._poller.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._poller.join(timeout=15)
        for server in self._servers.values():
            server.shutdown()
            server.server_close()
        subprocess.run(["ip", "route", "del", "local", self.cidr, "dev", "lo"], check=False)
