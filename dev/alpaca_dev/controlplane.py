"""Real etcd + kube-apiserver on loopback, with a kubeconfig for an admin user.

Used by the test suite's session fixture and by `make demo`. Everything lives in one folder
(data, certificates, logs) that `stop()` removes; every process started is stopped by its pid.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alpaca_dev.pki import Pki, issue_client_cert, write_pki

BINARIES = ("etcd", "kube-apiserver", "kubectl")
ADMISSION_PLUGINS = ("OwnerReferencesPermissionEnforcement",)
"""Enabled besides kube-apiserver's defaults (PodSecurity is one of them), as hardened clusters
(OpenShift) run it: setting blockOwnerDeletion on an ownerReference needs update on the owner's
`finalizers`, changing an existing object's owners needs delete on it."""


class ControlPlaneError(RuntimeError):
    """The control plane did not come up; the message carries the end of its log."""


def wait_for(
    check: Callable[[], Any], what: str, timeout: float = 45, interval: float = 0.3
) -> Any:
    """Poll until `check` returns something truthy, and return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """Terminate a process we started, kill it if it does not go."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class KubectlError(RuntimeError):
    """kubectl exited non-zero; the message carries its stderr."""


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, below the kernel's ephemeral range.
    A port is often chosen well before something listens on it (an operator's metrics port, at
    collection time); one from the ephemeral range may meanwhile be the local end of any
    outgoing connection on this machine (a fresh-clone CI run lost the e2e operator's startup
    to that: "Address already in use"). Below the range only other listeners compete."""
    low, pick = _ephemeral_low(), random.SystemRandom()  # not the seeded global random
    for _ in range(500):
        port = pick.randint(20000, low - 1) if low > 20100 else pick.randint(1024, 65535)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def admission_flag(extra_args: list[str]) -> tuple[str, list[str]]:
    """The one --enable-admission-plugins flag (ADMISSION_PLUGINS and any a caller passes in
    `extra_args`: the apiserver would append a second one's plugins to the first's), and the
    other arguments."""
    plugins, rest = list(ADMISSION_PLUGINS), []
    for arg in extra_args:
        name, _, value = arg.partition("=")
        if name == "--enable-admission-plugins":
            plugins += [p for p in value.split(",") if p and p not in plugins]
        else:
            rest.append(arg)
    return f"--enable-admission-plugins={','.join(plugins)}", rest


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class ControlPlane:
    """One local control plane. Use as a context manager, or call start() and stop()."""

    bin_dir: Path
    workdir: Path | None = None
    extra_apiserver_args: list[str] = field(default_factory=list)
    address: str = "127.0.0.1"
    """Where the apiserver listens and what it advertises; a node's agents and pods must reach
    it (the node tier uses an address on an interface it creates)."""
    extra_sans: tuple[str, ...] = ()
    """More IP addresses for the serving certificate (the `kubernetes` Service's ClusterIP)."""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _owns_workdir: bool = False
    _apiserver_args: list[str] = field(default_factory=list)

    # Filled by start():
    url: str = ""
    kubeconfig: Path = Path()
    pki: Pki | None = None

    def __post_init__(self) -> None:
        missing = [b for b in BINARIES if not (self.bin_dir / b).is_file()]
        if missing:
            raise ControlPlaneError(
                f"{', '.join(missing)} not found in {self.bin_dir}: run `make k8s-bins` "
                "(or set KUBEBUILDER_ASSETS to a folder that has them)"
            )

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def kubectl(self) -> Path:
        return self.bin_dir / "kubectl"

    def start(self, timeout: float = 90.0) -> None:
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="alpaca-cp-"))
            self._owns_workdir = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki = write_pki(self.workdir / "pki", (self.address, *self.extra_sans))
        try:
            etcd_url = self._start_etcd()
            self._start_apiserver(etcd_url)
            self._wait_ready(timeout)
            self._write_kubeconfig()
        except BaseException:
            self.stop()
            raise

    def spawn(
        self, name: str, args: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Run a process that belongs to this control plane (its own daemons, a controller,
        KWOK): its output in `<workdir>/<name>.log`, stopped by stop() (before etcd)."""
        assert self.workdir is not None
        log = (self.workdir / f"{name}.log").open("ab")  # a restart adds to it
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
        log.close()
        self.processes[name] = proc
        return proc

    def _start_etcd(self) -> str:
        assert self.workdir is not None
        client, peer = free_port(), free_port()
        url = f"http://127.0.0.1:{client}"
        self.spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={url}",
                f"--advertise-client-urls={url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
                "--quota-backend-bytes=2147483648",
            ],
        )
        return url

    def _start_apiserver(self, etcd_url: str) -> None:
        assert self.workdir is not None and self.pki is not None
        port = free_port()
        self.url = f"https://{self.address}:{port}"
        pki = self.pki
        # the apiserver's client certificate towards kubelets (logs, exec, port-forward)
        kubelet_client = issue_client_cert(
            pki,
            self.workdir / "pki",
            "apiserver-kubelet-client",
            "kube-apiserver",
            "system:masters",
        )
        admission, extra = admission_flag(self.extra_apiserver_args)
        self._apiserver_args = [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            f"--bind-address={self.address}",
            f"--advertise-address={self.address}",
            f"--secure-port={port}",
            f"--cert-dir={self.workdir / 'certs'}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            f"--service-account-key-file={pki.sa_public}",
            f"--service-account-signing-key-file={pki.sa_private}",
            "--service-account-issuer=https://kubernetes.default.svc",
            "--api-audiences=https://kubernetes.default.svc",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--authorization-mode=Node,RBAC",
            admission,
            f"--kubelet-client-certificate={kubelet_client}",
            f"--kubelet-client-key={kubelet_client.with_suffix('.key')}",
            "--kubelet-preferred-address-types=InternalIP",
            "--allow-privileged=true",
            "--enable-priority-and-fairness=false",
            "--event-ttl=1h",
            # the endpoint reconciler refuses loopback addresses; elsewhere (a node's
            # address) it keeps the `kubernetes` Service's endpoints, for pods
            *(["--endpoint-reconciler-type=none"] if self.address.startswith("127.") else []),
            "--v=0",
            *extra,
        ]
        self.spawn("kube-apiserver", self._apiserver_args)

    def restart_apiserver(self, down: float, timeout: float = 90.0) -> None:
        """Stop the apiserver, keep it away for `down` seconds, start it again on the same
        address (clients see refused connections meanwhile; etcd keeps the state)."""
        stop_process(self.processes.pop("kube-apiserver"))
        time.sleep(down)
        self.spawn("kube-apiserver", self._apiserver_args)
        self._wait_ready(timeout)

    def start_controller_manager(self, controllers: list[str]) -> None:
        """Run kube-controller-manager with only the named controllers (e.g. the garbage
        collector; `*` for all), as the cluster admin. It signs service-account tokens and
        publishes the CA into every namespace (`kube-root-ca.crt`) for pods that use them."""
        assert self.pki is not None
        self.spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                f"--controllers={','.join(controllers)}",
                "--leader-elect=false",
                "--use-service-account-credentials=false",
                f"--root-ca-file={self.pki.ca_cert}",
                f"--service-account-private-key-file={self.pki.sa_private}",
                "--secure-port=0",
                "--concurrent-gc-syncs=5",
                "--v=1",
            ],
        )

    def start_scheduler(self) -> None:
        """Run kube-scheduler as the cluster admin."""
        self.spawn(
            "kube-scheduler",
            [
                str(self.bin_dir / "kube-scheduler"),
                f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--secure-port=0",
                "--v=1",
            ],
        )

    def _ssl_context(self) -> ssl.SSLContext:
        assert self.pki is not None
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        ctx.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return ctx

    def _wait_ready(self, timeout: float) -> None:
        assert self.workdir is not None
        deadline = time.monotonic() + timeout
        ctx = self._ssl_context()
        last = ""
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise ControlPlaneError(
                        f"{name} exited with {proc.returncode}:\n{_tail(self.workdir / f'{name}.log')}"
                    )
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", context=ctx, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.25)
        raise ControlPlaneError(
            f"kube-apiserver not ready after {timeout:.0f}s ({last}):\n"
            f"{_tail(self.workdir / 'kube-apiserver.log')}"
        )

    def _write_kubeconfig(self) -> None:
        assert self.workdir is not None and self.pki is not None

        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "alpaca-local",
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": b64(self.pki.ca_cert),
                    },
                }
            ],
            "users": [
                {
                    "name": "alpaca-admin",
                    "user": {
                        "client-certificate-data": b64(self.pki.admin_cert),
                        "client-key-data": b64(self.pki.admin_key),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "alpaca-local",
                    "context": {
                        "cluster": "alpaca-local",
                        "user": "alpaca-admin",
                        "namespace": "default",
                    },
                }
            ],
            "current-context": "alpaca-local",
        }
        self.kubeconfig = self.workdir / "kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)

    def kubectl_run(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this control plane."""
        result = subprocess.run(
            [str(self.kubectl), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise KubectlError(
                f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}"
            )
        return result

    def apply(self, obj: dict[str, Any], namespace: str | None = None) -> None:
        """kubectl apply one object (client-side, as a user would)."""
        where = ["-n", namespace] if namespace else []
        self.kubectl_run("apply", *where, "-f", "-", input=json.dumps(obj))

    def get_json(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """An object as kubectl prints it, or None when it does not exist."""
        where = ["-n", namespace] if namespace else []
        result = self.kubectl_run("get", *where, kind, name, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def items(self, resource: str, namespace: str) -> list[dict[str, Any]]:
        return list(
            json.loads(self.kubectl_run("get", resource, "-n", namespace, "-o", "json").stdout)[
                "items"
            ]
        )

    def patch_status(
        self, kind: str, name: str, status: dict[str, Any], namespace: str | None = None
    ) -> None:
        """Write an object's status as its controller would (tests play the controllers here)."""
        where = ["-n", namespace] if namespace else []
        patch = json.dumps({"status": status})
        self.kubectl_run(
            "patch", *where, kind, name, "--subresource=status", "--type=merge", "-p", patch
        )

    def complete_job(self, namespace: str, job: str, **extra: Any) -> None:
        """Report a Job as succeeded, as the Job controller would."""
        ts = "2026-11-24T12:00:00Z"
        done = {"type": "Complete", "status": "True", "lastTransitionTime": ts, "lastProbeTime": ts}
        met = {**done, "type": "SuccessCriteriaMet"}
        status = {"startTime": ts, "completionTime": ts, "succeeded": 1, "conditions": [met, done]}
        self.patch_status("job", job, status | extra, namespace)

    def wait_established(self, *crds: str, timeout: float = 60) -> None:
        """Wait until every named CRD is Established (kubectl wait races a brand-new CRD)."""
        deadline = time.monotonic() + timeout
        pending = list(crds)
        while pending:
            path = '{.status.conditions[?(@.type=="Established")].status}'
            out = self.kubectl_run("get", "crd", pending[0], "-o", f"jsonpath={path}", check=False)
            if out.stdout.strip() == "True":
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"CRD {pending[0]} not Established after {timeout:.0f}s")
            time.sleep(0.2)

    def env(self) -> dict[str, str]:
        """The environment for a process that should talk to this control plane."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def stop(self) -> None:
        """Stop every process (etcd last) and remove the folder."""
        for name in (
            "kube-apiserver",
            *[n for n in self.processes if n not in ("kube-apiserver", "etcd")],
            "etcd",
        ):
            proc = self.processes.pop(name, None)
            if proc is None:
                continue
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
        if self._owns_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
