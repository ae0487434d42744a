"""The control loop at scale: this design against a baseline commit, side by side, on the real
apiserver (issue 12).

For each design, in turn, on a fresh simulated cluster: etcd + kube-apiserver (with an audit
log), kube-scheduler, kube-controller-manager, the real KubeRay operator and KWOK playing the
kubelets of M GPU nodes (8 GPUs each, 4 pools) and a few CPU nodes (fill Jobs, Ray heads).
N AlpacaModels in K namespaces (existing capacity, a node selector per pool, models of a
namespace sharing their weights) are bulk-applied at once: each namespace's cache claim is bound
by the PV controller to a volume made beforehand, its fill Job runs (KWOK completes it), each
model's RayService is created, KubeRay makes its RayCluster and the scheduler puts
the pods on the KWOK nodes. Then

- settle: seconds from the apply until every model has its first status;
- filled: until every namespace's fill Job completed (KWOK completes its pod);
- children: until every model has its RayService (its weights filled first), and the lag from
  a fill Job's completion to each of its models' RayService (the operator's reaction);
- at rest: the operator's requests per minute (the audit log; watches counted apart);
- irrelevant churn: one label change per second on a node no model selects;
- relevant churn: one label change per second on a node a quarter of the models select;
- the operator's peak RSS and its CPU seconds over the whole run.

The baseline runs from a `git worktree` of --baseline (default: the last commit before this
design) put under .venv/tmp and removed afterwards. `--no-kwok` runs the apiserver alone with
plain Node objects (nothing schedules or completes anything: first statuses only).

    .venv/bin/python benchmarks/operator_scale.py [--models 1000] [--nodes 500] [--namespaces 100]
        [--rest 60] [--churn 30] [--baseline 202581c] [--only new|baseline]

The defaults take about 35 minutes on 2 cores (the baseline never settles at that size: it
stops at --settle-timeout); `--models 300 --nodes 50 --namespaces 30` about 10.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "dev"))

from alpaca_dev import kwok, nodeconfig, stack  # noqa: E402
from alpaca_dev.controlplane import ControlPlane, stop_process  # noqa: E402
from alpaca_dev.pki import issue_client_cert  # noqa: E402

OURS = ("alpaca-operator/", "kopf/", "OpenAPI-Generator/")
POOLS = ("p0", "p1", "p2", "p3")
STATIC_CLASS = "scale-static"
OPERATOR_USER = "alpaca-operator"
# only the operator's requests (it has a user of its own here): KubeRay, the scheduler and the
# rest would fill the log and the apiserver's CPU
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata", "users": [OPERATOR_USER]}, {"level": "None"}],
}


@dataclass
class Figures:
    requests_per_model: float = 0.0
    applied_s: float = 0.0
    settle_s: float = 0.0
    children_s: float = 0.0
    filled_s: float = 0.0
    reaction_p50_s: float = 0.0
    reaction_max_s: float = 0.0
    pods_running: int = 0
    quiet_s: float = 0.0
    rest_per_min: float = 0.0
    rest_watches_per_min: float = 0.0
    irrelevant_per_change: float = 0.0
    relevant_per_change: float = 0.0
    peak_rss_mib: float = 0.0
    cpu_s: float = 0.0


class Audit:
    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def _ours(self) -> Iterator[dict[str, Any]]:
        """The operator's audit entries since the mark."""
        with self.path.open("rb") as f:
            f.seek(self.offset)
            for line in f:
                entry = json.loads(line)
                if str(entry.get("userAgent", "")).startswith(OURS):
                    yield entry

    def by_kind(self) -> dict[str, int]:
        """The operator's requests since the mark, by verb and resource (watches apart)."""
        counts: dict[str, int] = {}
        for entry in self._ours():
            if entry.get("verb") == "watch" or entry.get("stage") != "ResponseComplete":
                continue
            ref = entry.get("objectRef") or {}
            sub = f"/{ref['subresource']}" if ref.get("subresource") else ""
            key = f"{entry.get('verb')} {ref.get('resource', '?')}{sub}"
            counts[key] = counts.get(key, 0) + 1
        return counts

    def count(self) -> tuple[int, int]:
        """(requests, watches) of the operator since the mark."""
        requests = watches = 0
        for entry in self._ours():
            if entry.get("verb") == "watch":
                watches += entry.get("stage") == "ResponseStarted"
            elif entry.get("stage") == "ResponseComplete":
                requests += 1
        return requests, watches


def _node(name: str, pool: str) -> dict[str, Any]:
    # room for 8 Ray workers of the example's size (8 CPU, 32 GiB, 1 GPU each)
    return kwok.node(name, gpus=8, cpu="128", memory="1Ti", labels={"pool": pool})


def _model(name: str, pool: str) -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "examples" / "alpaca.yaml").read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["capacity"]["nodeSelector"] = {"pool": pool}
    doc["spec"]["weights"]["cache"]["storageClassName"] = STATIC_CLASS
    return dict(doc)


def _static_volumes(count: int) -> list[dict[str, Any]]:
    """A StorageClass with no provisioner and `count` PersistentVolumes of it, which the real
    PV controller binds to the caches' claims. KWOK's own volume stages provision one claim at a
    time (its generic stage controllers have a parallelism of 1): at 100 caches on a busy
    apiserver that took about 5 s a claim, and every model waited minutes for its fill pod to
    be scheduled, which measured KWOK, not the operator."""
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": STATIC_CLASS},
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "Immediate",
        }
    ]
    for i in range(count):
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"scale-cache-{i}"},
                "spec": {
                    "storageClassName": STATIC_CLASS,
                    "capacity": {"storage": "1Ti"},
                    "accessModes": ["ReadWriteMany"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    # never mounted: KWOK runs the pods, no kubelet
                    "hostPath": {"path": f"/nonexistent/alpaca-scale/{i}"},
                },
            }
        )
    return docs


def _proc_figures(pid: int) -> tuple[float, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return hwm / 1024, (int(fields[11]) + int(fields[12])) / ticks


class Watcher:
    """Watches AlpacaModels, fill Jobs and RayServices (one stream each, cheap for the
    apiserver, unlike a LIST of every model each second), and keeps when each object first
    passed its check: a model's first status, a fill Job's completion, a RayService's
    creation."""

    def __init__(self, kubeconfig: Path, total: int, fills: int) -> None:
        from kubernetes import client, config, watch

        api = config.new_client_from_config(str(kubeconfig))
        custom, batch = client.CustomObjectsApi(api), client.BatchV1Api(api)
        self.total, self.fills, self.started = total, fills, time.monotonic()
        self.seen: dict[str, dict[str, float]] = {"models": {}, "fills": {}, "rayservices": {}}
        streams: dict[str, tuple[Any, tuple[Any, ...], dict[str, Any], Any]] = {
            "models": (
                custom.list_cluster_custom_object,
                ("alpaca.dev", "v1alpha1", "alpacamodels"),
                {},
                self._status,
            ),
            "fills": (
                batch.list_job_for_all_namespaces,
                (),
                {"label_selector": "alpaca.dev/weights-cache"},
                self._complete,
            ),
            "rayservices": (
                custom.list_cluster_custom_object,
                ("ray.io", "v1", "rayservices"),
                {},
                self._exists,
            ),
        }
        self._watches = {name: watch.Watch() for name in streams}
        self._threads = [
            threading.Thread(target=self._follow, args=(name, *stream), daemon=True)
            for name, stream in streams.items()
        ]

    def start(self) -> None:
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        for w in self._watches.values():
            w.stop()

    def _all(self, name: str, count: int) -> float | None:
        times = self.seen[name]
        return max(times.values()) if len(times) >= count else None

    @property
    def settled_at(self) -> float | None:
        return self._all("models", self.total)

    @property
    def children_at(self) -> float | None:
        return self._all("rayservices", self.total)

    @property
    def filled_at(self) -> float | None:
        return self._all("fills", self.fills)

    def reactions(self) -> list[float]:
        """Seconds from each model's fill Job completing to its RayService appearing."""
        fills = {key.split("/")[0]: at for key, at in self.seen["fills"].items()}
        return sorted(
            at - fills[key.split("/")[0]]
            for key, at in self.seen["rayservices"].items()
            if key.split("/")[0] in fills
        )

    @staticmethod
    def _status(obj: dict[str, Any]) -> bool:
        return (obj.get("status") or {}).get("observedGeneration") == 1

    @staticmethod
    def _complete(obj: dict[str, Any]) -> bool:
        conditions = (obj.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Complete" and c["status"] == "True" for c in conditions)

    @staticmethod
    def _exists(obj: dict[str, Any]) -> bool:
        return True

    def _follow(
        self, name: str, lister: Any, args: tuple[Any, ...], kwargs: dict[str, Any], check: Any
    ) -> None:
        w, seen = self._watches[name], self.seen[name]
        while True:
            try:
                for event in w.stream(lister, *args, timeout_seconds=3600, **kwargs):
                    obj = event["raw_object"]  # the JSON, for typed APIs (Jobs) too
                    key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
                    if event["type"] != "DELETED" and key not in seen and check(obj):
                        seen[key] = time.monotonic() - self.started
                return
            except Exception:  # a dropped stream: list and watch again
                if getattr(w, "_stop", False):
                    return
                time.sleep(1)


def _count(cp: ControlPlane, resource: str, *args: str) -> int:
    out = cp.kubectl_run("get", resource, "-A", "--no-headers", *args, timeout=120).stdout
    return len(out.splitlines())


def run_design(
    label: str, source: Path, args: argparse.Namespace, work: Path, bins: Path
) -> Figures:
    figures = Figures()
    work.mkdir(parents=True)
    policy = work / "audit-policy.yaml"
    policy.write_text(yaml.safe_dump(AUDIT_POLICY))
    cp = ControlPlane(
        bin_dir=bins,
        workdir=work / "cp",
        extra_apiserver_args=[
            f"--audit-policy-file={policy}",
            f"--audit-log-path={work / 'audit.log'}",
            "--audit-log-format=json",
            "--audit-log-maxsize=100000",  # no rotation under a measurement's offset
            "--max-requests-inflight=800",
        ],
    )
    with cp, contextlib.ExitStack() as stack_:
        cp.kubectl_run("apply", "--server-side", "-f", str(source / "crds"))
        if args.kwok:
            cp.start_controller_manager(["*"])
            cp.start_scheduler()
            kwok.start_kwok(cp)
            stack_.enter_context(stack.kuberay(cp, stack.thirdparty("crds"), work / "kuberay.log"))
        else:
            cp.kubectl_run("apply", "--server-side", "-f", str(stack.thirdparty("crds")))
        cp.wait_established("alpacamodels.alpaca.dev", "rayservices.ray.io")
        nodes = [_node(f"gpu-{i}", POOLS[i % len(POOLS)]) for i in range(args.nodes)]
        nodes.append(_node("spare", "spare"))
        # fill Jobs and Ray heads: room for every model's head (and its fill Job's pod)
        room = args.models + args.namespaces
        nodes += [
            kwok.node(f"cpu-{i}", cpu=str(room), memory="64Ti", pods=room // 4 + 1)
            for i in range(4)
        ]
        cp.kubectl_run("apply", "-f", "-", input=yaml.safe_dump_all(nodes), timeout=300)
        volumes = _static_volumes(args.namespaces)
        cp.kubectl_run("apply", "-f", "-", input=yaml.safe_dump_all(volumes), timeout=300)
        for ns in range(args.namespaces):
            cp.kubectl_run("create", "namespace", f"scale-{ns}")
        # a client that loads a kubeconfig with inline certificates writes them to TMPDIR and
        # removes them at exit, which an operator killed after its stop timeout never reaches
        (work / "tmp").mkdir()
        assert cp.pki is not None
        cert = issue_client_cert(
            cp.pki, work / "certs", "operator", OPERATOR_USER, "system:masters"
        )
        kubeconfig = work / "operator.kubeconfig"
        kubeconfig.write_text(
            nodeconfig.kubeconfig(
                cp.url, cp.pki.ca_cert, cert, cert.with_suffix(".key"), OPERATOR_USER
            )
        )
        env = cp.env() | {
            "KUBECONFIG": str(kubeconfig),
            "PYTHONPATH": str(source / "operator"),
            "TMPDIR": str(work / "tmp"),
        }
        log = (work / "operator.log").open("wb")
        operator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "alpaca_operator.cli",
                "run",
                "--standalone",
                "--metrics-port=0",
                *([f"--workers={args.workers}"] if args.workers and label == "new" else []),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=source,
        )
        try:
            time.sleep(5)  # the operator lists what is there (nothing yet)
            audit = Audit(work / "audit.log")
            whole = Audit(work / "audit.log")
            whole.mark()
            per_ns = args.models // args.namespaces
            docs = {
                ns: [_model(f"m{i}", POOLS[i % len(POOLS)]) for i in range(per_ns)]
                for ns in range(args.namespaces)
            }
            total = per_ns * args.namespaces
            watcher = Watcher(cp.kubeconfig, total, args.namespaces)
            watcher.start()
            started = watcher.started
            # a bulk server-side apply in a few parallel streams, as a GitOps tool sends it
            # (Argo CD applies 20 at once; one kubectl per namespace spent more time starting
            # kubectl than applying, and one kubectl sends its objects one by one)
            for ns, models in docs.items():
                for doc in models:
                    doc["metadata"]["namespace"] = f"scale-{ns}"
            bulk = [doc for models in docs.values() for doc in models]
            streams = [bulk[i :: args.apply_streams] for i in range(args.apply_streams)]
            with concurrent.futures.ThreadPoolExecutor(args.apply_streams) as pool:
                applies = [
                    pool.submit(
                        cp.kubectl_run,
                        "apply",
                        "--server-side",
                        "-f",
                        "-",
                        input=yaml.safe_dump_all(part),
                        timeout=600,
                    )
                    for part in streams
                    if part
                ]
                for apply in applies:
                    apply.result()  # a refused apply fails the benchmark
            figures.applied_s = time.monotonic() - started
            deadline = started + args.settle_timeout
            while watcher.settled_at is None or (args.kwok and watcher.children_at is None):
                if time.monotonic() > deadline:
                    print(f"{label}: not settled after {args.settle_timeout} s", file=sys.stderr)
                    break
                time.sleep(1)
            watcher.stop()
            figures.settle_s = watcher.settled_at or float("inf")
            figures.children_s = (watcher.children_at or float("inf")) if args.kwok else 0.0
            if args.kwok:
                figures.filled_s = watcher.filled_at or float("inf")
                reactions = watcher.reactions()
                if reactions:
                    figures.reaction_p50_s = reactions[len(reactions) // 2]
                    figures.reaction_max_s = reactions[-1]
            # the first passes' writes come back as events and make more passes: wait until the
            # operator has sent nothing for 10 s (the baseline never gets there: its resync)
            quiet_since, deadline = time.monotonic(), time.monotonic() + args.quiet_timeout
            audit.mark()
            while time.monotonic() - quiet_since < 10 and time.monotonic() < deadline:
                time.sleep(2)
                if audit.count()[0]:
                    quiet_since = time.monotonic()
                audit.mark()
            quiet = time.monotonic() - quiet_since >= 10
            figures.quiet_s = quiet_since - started if quiet else float("inf")
            spent = whole.by_kind()
            figures.requests_per_model = sum(spent.values()) / total
            print(f"{label}: the operator's requests from the apply until quiet, per model:")
            for key, n in sorted(spent.items(), key=lambda kv: -kv[1]):
                print(f"  {key:48} {n / total:6.2f}")

            audit.mark()
            time.sleep(args.rest)
            requests, watches = audit.count()
            figures.rest_per_min = requests * 60 / args.rest
            figures.rest_watches_per_min = watches * 60 / args.rest

            for name, attr in (
                ("spare", "irrelevant_per_change"),
                ("gpu-1", "relevant_per_change"),
            ):
                audit.mark()
                for i in range(args.churn):
                    cp.kubectl_run("label", "node", name, f"churn={i}", "--overwrite")
                    time.sleep(1)
                time.sleep(5)
                requests, _ = audit.count()
                setattr(figures, attr, requests / args.churn)
            figures.peak_rss_mib, figures.cpu_s = _proc_figures(operator.pid)
            if args.kwok:
                figures.pods_running = _count(cp, "pods", "--field-selector=status.phase=Running")
        finally:
            stop_process(operator)  # type: ignore[arg-type]
            log.close()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--namespaces", type=int, default=100)
    parser.add_argument("--rest", type=float, default=60)
    parser.add_argument("--churn", type=int, default=30)
    parser.add_argument("--settle-timeout", type=float, default=900)
    parser.add_argument("--apply-streams", type=int, default=4, help="parallel kubectl applies")
    parser.add_argument(
        "--workers", type=int, help="the operator's --workers (its default if unset)"
    )
    parser.add_argument(
        "--quiet-timeout", type=float, default=180, help="inf in the table: never quiet so long"
    )
    parser.add_argument("--baseline", default="202581c")
    parser.add_argument("--only", choices=("new", "baseline"))
    parser.add_argument(
        "--kwok",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="scheduler, controller-manager, KubeRay and KWOK nodes (default), or the apiserver alone",
    )
    args = parser.parse_args()

    bins = stack.script("k8s-bins.sh", "controller-manager", "scheduler")
    scratch = REPO / ".venv" / "tmp" / "operator-scale"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    baseline = scratch / "baseline-src"
    results: dict[str, Figures] = {}
    try:
        if args.only != "baseline":
            results["new"] = run_design("new", REPO, args, scratch / "new", bins)
        if args.only != "new":
            subprocess.run(
                [
                    "git",
                    "-C",
                    str(REPO),
                    "worktree",
                    "add",
                    "--detach",
                    str(baseline),
                    args.baseline,
                ],
                check=True,
                capture_output=True,
            )
            results[f"baseline {args.baseline}"] = run_design(
                "baseline", baseline, args, scratch / "baseline", bins
            )
    finally:
        if baseline.exists():
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(baseline)],
                check=False,
            )
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"\n{args.models} AlpacaModels in {args.namespaces} namespaces, {args.nodes} GPU nodes")
    rows = [
        ("time until every model was applied (s)", "applied_s", "{:.1f}"),
        ("time until every model has a status (s)", "settle_s", "{:.1f}"),
        ("time until every fill Job completed (KWOK) (s)", "filled_s", "{:.1f}"),
        ("time until every model has its RayService (s)", "children_s", "{:.1f}"),
        ("fill Job done -> its models' RayService, p50 (s)", "reaction_p50_s", "{:.1f}"),
        ("fill Job done -> its models' RayService, max (s)", "reaction_max_s", "{:.1f}"),
        ("time until the operator went quiet (s)", "quiet_s", "{:.1f}"),
        ("operator requests per model until quiet", "requests_per_model", "{:.2f}"),
        ("requests/min at rest (watches apart)", "rest_per_min", "{:.1f}"),
        ("watch (re)connections/min at rest", "rest_watches_per_min", "{:.1f}"),
        ("requests per irrelevant node change", "irrelevant_per_change", "{:.2f}"),
        ("requests per relevant node change", "relevant_per_change", "{:.2f}"),
        ("operator peak RSS (MiB)", "peak_rss_mib", "{:.0f}"),
        ("operator CPU over the run (s)", "cpu_s", "{:.1f}"),
        ("pods running on KWOK nodes at the end", "pods_running", "{:d}"),
    ]
    names = list(results)
    print(f"{'':48}" + "".join(f"{n:>22}" for n in names))
    for title, attr, fmt in rows:
        cells = "".join(f"{fmt.format(getattr(results[n], attr)):>22}" for n in names)
        print(f"{title:48}{cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
