"""A local runtime for development: runs what the operator renders, on this machine.

There is no kubelet and no KubeRay here. This runtime plays both for one namespace, with the
real programs: a weights fill Job's container command (`alpaca-weights fill ...`) runs as a
local process, and a RayService's serveConfigV2 application runs on a local Ray with Serve
(`python -m alpaca_serving serve --config ...`, the same builder the RayService imports).
Volumes are folders: a PersistentVolumeClaim is `<root>/volumes/<namespace>/<claim>`, an
emptyDir a fresh folder, and container paths under a `host_paths` prefix map to local folders
(the example's `/models/...` source). It then writes the status a Job controller or KubeRay
would write, so the operator drives its stages exactly as in a cluster.

It is a development tool, not a kubelet: it runs one pod per Job, ignores resources,
placement and security contexts, and serves each RayService on one local port.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alpaca_dev.controlplane import ControlPlane, free_port, stop_process

FILL_LABEL = "app.kubernetes.io/name=alpaca-weights"
COMMANDS = {
    "alpaca-weights": [sys.executable, "-m", "alpaca_weights.cli"],
}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def engine_shm_files() -> set[str]:
    """The /dev/shm files vLLM's engine processes make (a killed engine leaves them behind)."""
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith(("psm_", "sem.mp-"))}
    except OSError:
        return set()


def _mapped_shm_files() -> set[str]:
    """The /dev/shm files some live process still has mapped."""
    out: set[str] = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/maps") as fh:
                for line in fh:
                    if "/dev/shm/" in line:
                        out.add(line.rsplit("/dev/shm/", 1)[1].split()[0])
        except OSError:  # gone, or not ours to read
            continue
    return out


def _reap_group(pgid: int, timeout: float = 30.0) -> None:
    """Wait for every process of a process group to exit; SIGKILL what is left at the end."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    time.sleep(1.0)


def remove_orphaned_shm(candidates: set[str]) -> None:
    """Remove those of `candidates` no live process maps: what engines we stopped left, never
    the files of an engine still running beside us (another test, another demo)."""
    for name in candidates - _mapped_shm_files():
        Path("/dev/shm", name).unlink(missing_ok=True)


@dataclass
class _Run:
    """One local process standing in for a pod."""

    proc: subprocess.Popen[bytes]
    log: Path
    termination_log: Path | None = None
    digest: str = ""
    ready: bool = False
    exited: bool = False  # its exit has been reported
    scratch: Path | None = None  # removed by cleanup()


@dataclass
class LocalRuntime:
    cp: ControlPlane
    root: Path
    namespace: str = "default"
    host_paths: dict[str, Path] = field(default_factory=dict)
    num_cpus: int = 8
    poll: float = 1.0
    jobs: dict[str, _Run] = field(default_factory=dict)
    services: dict[str, _Run] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _shm_before: set[str] = field(default_factory=set)

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> LocalRuntime:
        self._shm_before = engine_shm_files()
        self._thread = threading.Thread(target=self._loop, name="local-runtime", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for run in [*self.jobs.values(), *self.services.values()]:
            if run.proc.poll() is None:
                os.killpg(run.proc.pid, signal.SIGTERM)
                stop_process(run.proc, timeout=30)
            _reap_group(run.proc.pid)  # Ray's workers and vLLM's engines outlive the main process
        # vLLM's engine processes may sit outside the group and exit a little later: wait for
        # their files to be orphaned (only when we ran an engine; never remove a live one's).
        deadline = time.monotonic() + (30.0 if self.services else 0.0)
        while True:
            remove_orphaned_shm(engine_shm_files() - self._shm_before)
            if not engine_shm_files() - self._shm_before or time.monotonic() >= deadline:
                break
            time.sleep(1.0)

    def endpoint(self, rayservice: str) -> str | None:
        """The local URL of a served RayService's OpenAI API, once it answers."""
        run = self.services.get(rayservice)
        if run is None or not run.ready:
            return None
        return f"http://127.0.0.1:{self.ports[rayservice]}/v1"

    def _say(self, text: str) -> None:
        self.events.append(text)
        print(f"    [local runtime] {text}", flush=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self._pass()
            except Exception as exc:  # a dev tool keeps going; the next pass retries
                self._say(f"pass failed: {type(exc).__name__}: {exc}")

    def _pass(self) -> None:
        for job in self.cp.items("jobs", self.namespace):
            if (job["metadata"].get("labels") or {}).get(
                "app.kubernetes.io/name"
            ) == "alpaca-weights":
                self._job(job)
        for rs in self.cp.items("rayservices", self.namespace):
            self._rayservice(rs)

    # --- paths -------------------------------------------------------------------------

    def volume(self, claim: str) -> Path:
        path = self.root / "volumes" / self.namespace / claim
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _mounts(
        self, owner: str, pod: dict[str, Any], container: dict[str, Any]
    ) -> dict[str, Path]:
        """Container mount path -> local folder."""
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        out: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes.get(mount["name"], {})
            if "persistentVolumeClaim" in volume:
                out[mount["mountPath"]] = self.volume(volume["persistentVolumeClaim"]["claimName"])
            else:
                scratch = self.root / "scratch" / owner / mount["name"]
                scratch.mkdir(parents=True, exist_ok=True)
                out[mount["mountPath"]] = scratch
        return out

    def local(self, path: str, mounts: dict[str, Path]) -> str:
        """A container path as a local one (mounts first, then host paths); others unchanged."""
        for prefix, folder in sorted(
            [*mounts.items(), *self.host_paths.items()], key=lambda kv: -len(kv[0])
        ):
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return str(folder) + path[len(prefix.rstrip("/")) :]
        return path

    # --- Jobs (the weights fill) -------------------------------------------------------

    def _account_dir(self, account: str, where: Path) -> dict[str, str]:
        """The pod's service account token, mounted as a kubelet would (for progress)."""
        token = self.cp.kubectl_run("create", "token", account, "-n", self.namespace, check=False)
        if token.returncode != 0:
            return {}
        where.mkdir(parents=True, exist_ok=True)
        (where / "token").write_text(token.stdout.strip())
        (where / "ca.crt").write_bytes(self.cp.pki.ca_cert.read_bytes())
        (where / "namespace").write_text(self.namespace)
        host, port = self.cp.url.removeprefix("https://").rsplit(":", 1)
        return {
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": port,
            "ALPACA_SERVICE_ACCOUNT_DIR": str(where),
        }

    def _job(self, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        conditions = {c["type"] for c in job.get("status", {}).get("conditions", []) or []}
        if conditions & {"Complete", "Failed"}:
            return
        run = self.jobs.get(name)
        if run is None:
            self.jobs[name] = self._start_job(job)
            return
        code = run.proc.poll()
        if code is None:
            return
        message = run.termination_log.read_text() if run.termination_log else ""
        if code == 0:
            self._say(f"Job {name} succeeded: {message.strip()}")
            now = _now()
            done = {"status": "True", "lastTransitionTime": now, "lastProbeTime": now}
            status = {
                "active": 0,
                "succeeded": 1,
                "completionTime": now,
                "conditions": [
                    {**done, "type": "SuccessCriteriaMet"},
                    {**done, "type": "Complete"},
                ],
            }
            self.cp.patch_status("job", name, status, self.namespace)
        else:
            self._say(f"Job {name} failed ({code}): {message.strip()}")
            self._fail_job(job, code, message)

    def _start_job(self, job: dict[str, Any]) -> _Run:
        name = job["metadata"]["name"]
        pod = job["spec"]["template"]["spec"]
        container = pod["containers"][0]
        mounts = self._mounts(name, pod, container)
        command = [*container.get("command", []), *container.get("args", [])]
        argv = [
            *COMMANDS.get(command[0], [command[0]]),
            *(self.local(a, mounts) for a in command[1:]),
        ]
        env = dict(os.environ)
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = self.local(item["value"], mounts)
            elif (
                item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
                == "metadata.namespace"
            ):
                env[item["name"]] = self.namespace
        if pod.get("serviceAccountName"):
            env |= self._account_dir(pod["serviceAccountName"], self.root / "accounts" / name)
        term = self.root / "logs" / f"{name}.termination"
        env["ALPACA_TERMINATION_LOG"] = str(term)
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self._say(f"Job {name}: running `{' '.join(command)}` here (log: {log})")
        self.cp.patch_status("job", name, {"startTime": _now(), "active": 1}, self.namespace)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return _Run(proc, log, term)

    def _fail_job(self, job: dict[str, Any], code: int, message: str) -> None:
        """A failed pod with the CLI's termination message, and the Job Failed, as in a cluster."""
        name = job["metadata"]["name"]
        pod_name = f"{name}-local"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": self.namespace,
                "labels": {"job-name": name},
            },
            "spec": {
                "serviceAccountName": job["spec"]["template"]["spec"].get(
                    "serviceAccountName", "default"
                ),
                "automountServiceAccountToken": False,
                "containers": [{"name": "fill", "image": "local"}],
            },
        }
        self.cp.kubectl_run("apply", "-f", "-", input=json.dumps(pod), check=False)
        now = _now()
        terminated = {"exitCode": code, "reason": "Error", "message": message[-4096:]}
        self.cp.patch_status(
            "pod",
            pod_name,
            {
                "phase": "Failed",
                "containerStatuses": [
                    {
                        "name": "fill",
                        "image": "local",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"terminated": terminated},
                    }
                ],
            },
            self.namespace,
        )
        failed = {
            "status": "True",
            "reason": "LocalRun",
            "lastTransitionTime": now,
            "lastProbeTime": now,
        }
        self.cp.patch_status(
            "job",
            name,
            {
                "failed": 1,
                "active": 0,
                "conditions": [{**failed, "type": "FailureTarget"}, {**failed, "type": "Failed"}],
            },
            self.namespace,
        )

    # --- RayServices (Ray Serve on this machine) ---------------------------------------

    def _rayservice(self, rs: dict[str, Any]) -> None:
        name = rs["metadata"]["name"]
        digest = hashlib.sha256(rs["spec"].get("serveConfigV2", "").encode()).hexdigest()[:12]
        run = self.services.get(name)
        if run is not None and run.digest != digest:
            self._say(f"RayService {name}: serveConfigV2 changed; restarting the app")
            os.killpg(run.proc.pid, signal.SIGTERM)
            stop_process(run.proc, timeout=30)
            run = None
        if run is None:
            self.services[name] = self._start_serve(rs, digest)
            self._rs_status(name, "DEPLOYING", ready=False)
            return
        if run.proc.poll() is not None:
            if not run.exited:
                tail = run.log.read_text()[-600:]
                self._say(f"RayService {name}: Ray Serve exited ({run.proc.returncode}): {tail}")
                self._rs_status(name, "DEPLOY_FAILED", ready=False, message=tail)
                run.ready, run.exited = False, True
            return
        if not run.ready and self._answers(self.ports[name]):
            run.ready = True
            self._say(
                f"RayService {name}: the OpenAI API answers at http://127.0.0.1:{self.ports[name]}/v1"
            )
            self._rs_status(name, "RUNNING", ready=True)

    def _start_serve(self, rs: dict[str, Any], digest: str) -> _Run:
        name = rs["metadata"]["name"]
        config = yaml.safe_load(rs["spec"]["serveConfigV2"])
        app = config["applications"][0]
        head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
        mounts = self._mounts(name, head, head["containers"][0])
        args = json.loads(json.dumps(app.get("args", {})))
        args["model_path"] = self.local(args["model_path"], mounts)
        work = Path(f"/tmp/alpaca-rt-{os.getpid()}-{name}")  # short: Ray's socket paths are limited
        for adapter in args.get("adapters") or []:
            adapter["path"] = self.local(adapter["path"], mounts)
        cfg = self.root / "serve" / f"{name}.yaml"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(yaml.safe_dump(args, sort_keys=False))
        port = self.ports.setdefault(name, free_port())
        log = self.root / "logs" / f"rayservice-{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            TMPDIR=str(work),
            VLLM_CACHE_ROOT=str(work / "vllm"),
            TORCHINDUCTOR_CACHE_DIR=str(work / "inductor"),
        )
        work.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "alpaca_serving", "serve", "--config", str(cfg)]
        argv += ["--port", str(port), "--num-cpus", str(self.num_cpus)]
        self._say(
            f"RayService {name}: running its serveConfigV2 app ({app['import_path']}) on local Ray "
            f"Serve, port {port} (log: {log})"
        )
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return _Run(proc, log, digest=digest, scratch=work)

    @staticmethod
    def _answers(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def _rs_status(self, name: str, app: str, ready: bool, message: str = "") -> None:
        now = _now()
        status: dict[str, Any] = {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "reason": "NonZeroServeEndpoints" if ready else "Initializing",
                    "message": message[-1000:],
                    "lastTransitionTime": now,
                }
            ],
            "serviceStatus": "Running" if ready else "",
            "numServeEndpoints": 1 if ready else 0,
            "activeServiceStatus": {
                "rayClusterName": f"{name}-local",
                "applicationStatuses": {"alpaca": {"status": app, "message": message[-1000:]}},
                "rayClusterStatus": {"desiredWorkerReplicas": 1, "readyWorkerReplicas": int(ready)},
            },
        }
        self.cp.patch_status("rayservice", name, status, self.namespace)

    def cleanup(self) -> None:
        """Remove the runtime's scratch folders under /tmp (the volumes stay under root)."""
        for run in self.services.values():
            if run.scratch is not None:
                shutil.rmtree(run.scratch, ignore_errors=True)


def wait_until(predicate: Any, timeout: float, what: str, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)
