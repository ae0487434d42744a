"""AlpacaModel status from what its children say: capacity, weights, serving, ready."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from alpaca_operator import conditions as cond
from alpaca_operator.api.model import AlpacaModelSpec
from alpaca_operator.api.weights import Weights
from alpaca_operator.conditions import (
    CAPACITY,
    FAILURE_REASONS,
    READY,
    SERVING,
    WEIGHTS,
    Verdict,
)
from alpaca_operator.config import KUBERAY_NAMESPACE
from alpaca_operator.render import names
from alpaca_operator.render.capacity import GPU_RESOURCE
from alpaca_operator.render.weights import (
    FILL_RETRIES,
    FILLED_ANNOTATION,
    GROW_REFUSED_ANNOTATION,
    GROW_REFUSED_MESSAGE_ANNOTATION,
    RETRY_ANNOTATION,
    storage_bytes,
)
from alpaca_weights import contract

KUBERAY_INSTALL = (
    "install the KubeRay operator (for example: helm install kuberay-operator "
    f"kuberay/kuberay-operator --version 1.5.0 -n {KUBERAY_NAMESPACE} --create-namespace), "
    "then this model deploys by itself"
)
KARPENTER_INSTALL = (
    "install Karpenter (https://karpenter.sh/docs/getting-started/) or set "
    "spec.capacity.provisioner: existing"
)

# How long a stage may wait before its condition says it ran over (each its own reason).
DEADLINES = {
    CAPACITY: (cond.CAPACITY_TIMEOUT, datetime.timedelta(minutes=20)),
    WEIGHTS: (cond.WEIGHTS_TIMEOUT, datetime.timedelta(hours=3)),
    SERVING: (cond.SERVING_TIMEOUT, datetime.timedelta(minutes=30)),
}


# A failed fill whose Job names a credentials Secret looks at the Secret again after 30 s,
# then twice as long each time, at most every 10 minutes (the Secret is not watched).
SECRET_RECHECK_FIRST = datetime.timedelta(seconds=30)
SECRET_RECHECK_MAX = datetime.timedelta(minutes=10)


@dataclass
class CacheState:
    """A weights cache as seen in one pass: its PVC, its fill Job, why the fill failed."""

    pvc: dict[str, Any] | None = None
    fill_job: dict[str, Any] | None = None
    fill_pod_message: str | None = None
    retry: str | None = None
    """Why a failed fill runs again (its Job was deleted in this pass; the next makes a new one)."""
    credentials_secret: str | None = None
    """The Secret a failed fill's Job names: looked at again with backoff, a change fills again."""

    @property
    def filled(self) -> bool:
        return ((self.pvc or {}).get("metadata", {}).get("annotations") or {}).get(
            FILLED_ANNOTATION
        ) == "true"


@dataclass
class ModelChildren:
    """What the operator saw of a model's world in one pass."""

    crds: set[str] = field(default_factory=set)
    nodepool: dict[str, Any] | None = None
    nodes: list[dict[str, Any]] = field(default_factory=list)
    cache: CacheState = field(default_factory=CacheState)
    adapter_caches: dict[str, CacheState] = field(default_factory=dict)  # by adapter name
    rayservice: dict[str, Any] | None = None
    cluster_action: str | None = None  # what settling the RayCluster did in this pass
    upgrade: Verdict | None = None  # the Upgrading condition, when serving was reconciled
    upgrade_at: datetime.datetime | None = None  # when a waiting upgrade looks again


def condition_of(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in (obj or {}).get("status", {}).get("conditions", []) or []:
        if c.get("type") == type_:
            return dict(c)
    return None


def _gpus(node: dict[str, Any]) -> int:
    value = node.get("status", {}).get("allocatable", {}).get(GPU_RESOURCE, "0")
    try:
        return int(value)
    except ValueError:
        return 0


def _matches(node: dict[str, Any], selector: dict[str, str]) -> bool:
    labels = node.get("metadata", {}).get("labels", {}) or {}
    return all(labels.get(k) == v for k, v in selector.items())


def capacity(spec: AlpacaModelSpec, children: ModelChildren, selector: dict[str, str]) -> Verdict:
    gpus = spec.resources.gpus
    if spec.capacity.provisioner == "karpenter":
        if "nodepools.karpenter.sh" not in children.crds:
            return Verdict(
                "False",
                cond.NODEPOOL_CRD_MISSING,
                f"The karpenter.sh/v1 NodePool CRD is not installed: {KARPENTER_INSTALL}.",
            )
        pool = children.nodepool
        if pool is None:
            return Verdict("False", cond.NODEPOOL_CREATING, "Creating the Karpenter NodePool.")
        ready = condition_of(pool, "Ready")
        name = pool["metadata"]["name"]
        if ready and ready.get("status") == "True":
            return Verdict(
                "True",
                cond.NODEPOOL_READY,
                f"NodePool {name} is ready; Karpenter launches GPU nodes as replicas need them.",
            )
        if ready and ready.get("status") == "False":
            return Verdict(
                "False",
                cond.NODEPOOL_REJECTED,
                f"NodePool {name} is not ready: {ready.get('message') or ready.get('reason')}.",
            )
        return Verdict(
            "False", cond.WAITING_FOR_NODEPOOL, f"Waiting for Karpenter to accept NodePool {name}."
        )
    if gpus == 0:
        return Verdict(
            "True", cond.CPU_ONLY, "No GPUs requested; replicas run on any node that matches."
        )
    matching = [n for n in children.nodes if _matches(n, selector)]
    if not matching:
        shown = ", ".join(f"{k}={v}" for k, v in selector.items()) or "(any)"
        return Verdict(
            "False",
            cond.WAITING_FOR_NODES,
            f"No node matches the node selector {shown}; add GPU nodes with these labels or change spec.capacity.nodeSelector.",
        )
    largest = max(_gpus(n) for n in matching)
    if largest < gpus:
        return Verdict(
            "False",
            cond.INSUFFICIENT_GPU,
            f"Each replica needs {gpus} {GPU_RESOURCE}, but the largest allocatable on the {len(matching)} matching node(s) is {largest}; lower spec.resources.gpus or add larger nodes.",
        )
    fit = sum(1 for n in matching if _gpus(n) >= gpus)
    return Verdict(
        "True",
        cond.NODES_AVAILABLE,
        f"{fit} of {len(matching)} matching node(s) can hold a replica ({gpus} {GPU_RESOURCE} each).",
    )


# What the weights CLI says it is doing after the download (its `alpaca.dev/fill-phase`).
FILL_PHASES = {
    contract.PHASE_CONVERTING: (
        cond.CONVERTING,
        "Converting PyTorch .bin checkpoints to safetensors",
    ),
    contract.PHASE_RECOVERING: (
        cond.RECOVERING,
        "Recovering the model from its weight diff and base",
    ),
    contract.PHASE_VERIFYING: (
        cond.VERIFYING,
        "Writing the manifest (sizes, sha256) of the weights",
    ),
}


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def _fill_failure(message: str | None) -> tuple[str, str]:
    """The weights CLI writes `Reason: message` as its termination message."""
    if parsed := contract.parse_termination_message(message):
        return parsed
    return cond.FILL_FAILED, (message or "the fill Job failed; see its pod logs").strip()


def _job_failure(message: str | None) -> tuple[str, str]:
    """Why the fill Job failed: one of the CLI's reasons, else FillFailed with what the pod said
    (a crash's log tail may start with `Word:` too)."""
    reason, text = _fill_failure(message)
    if reason in cond.FILL_FAILURES:
        return reason, text
    return cond.FILL_FAILED, (message or "the fill Job failed; see its pod logs").strip()


def _at(pvc: dict[str, Any], *path: str) -> str | None:
    value: Any = pvc
    for key in path:
        value = (value or {}).get(key)
    return str(value) if value is not None else None


def _filled(spec: Weights, pvc: dict[str, Any], cache: str, field: str) -> Verdict:
    """A filled cache, and whether its volume is the size the spec asks for."""
    done = f"Weights cache {cache} is filled from {spec.source}."
    want = spec.cache.size
    have = _at(pvc, "spec", "resources", "requests", "storage")
    if have is None:
        return Verdict("True", cond.CACHE_FILLED, done)
    size = f"{field}.cache.size"
    if storage_bytes(want) > storage_bytes(have):
        annotations = pvc["metadata"].get("annotations") or {}
        refused = annotations.get(GROW_REFUSED_ANNOTATION)
        if refused is not None and storage_bytes(want) <= storage_bytes(refused):
            why = annotations.get(GROW_REFUSED_MESSAGE_ANNOTATION, "")
            return Verdict(
                "True",
                cond.CACHE_EXPANSION_REFUSED,
                f"{done} It stays {have}: growing it to {want} ({size}) was refused ({why}); "
                f"it is used as it is. Set {size} back to {have}, or allow volume expansion on "
                f"its StorageClass and remove the PVC's {GROW_REFUSED_ANNOTATION} annotation.",
            )
        return Verdict(
            "True",
            cond.CACHE_EXPANDING,
            f"{done} It grows from {have} to {want} ({size}) once its volume is bound.",
        )
    if storage_bytes(want) < storage_bytes(have):
        return Verdict(
            "True",
            cond.CACHE_NOT_SHRUNK,
            f"{done} It stays {have}, larger than {size} ({want}): a volume never shrinks "
            "(or another user of the cache asked for more).",
        )
    capacity = _at(pvc, "status", "capacity", "storage")
    if capacity is not None and storage_bytes(capacity) < storage_bytes(have):
        return Verdict(
            "True", cond.CACHE_EXPANDING, f"{done} Its volume grows from {capacity} to {have}."
        )
    return Verdict("True", cond.CACHE_FILLED, done)


def _fill_again(spec: Weights, cache: str, field: str) -> str:
    """What fills a cache whose fill failed once more (other weights are another cache)."""
    secret = f"Secret {spec.credentials_secret} changes, " if spec.credentials_secret else ""
    return (
        f"It is filled again when {secret}the cache grows ({field}.cache.size), or on "
        f"`kubectl annotate pvc {cache} {RETRY_ANNOTATION}=<a new value> --overwrite`."
    )


def weights(spec: Weights, state: CacheState, field: str = "spec.weights") -> Verdict:
    """The weights stage of anything that uses a cache (a model, a fine-tune's base; `field`:
    where the spec's weights are)."""
    cache = names.cache_name(spec)
    if state.pvc is None:
        return Verdict("False", cond.CACHE_CREATING, f"Creating the weights cache volume {cache}.")
    if state.filled:
        return _filled(spec, state.pvc, cache, field)
    job = state.fill_job
    if job is None:
        if state.retry:
            return Verdict("False", cond.FILL_PENDING, f"Filling {cache} again: {state.retry}.")
        return Verdict("False", cond.FILL_PENDING, f"Starting the Job that fills {cache}.")
    status = job.get("status", {})
    failed = condition_of(job, "Failed")
    if failed and failed.get("status") == "True":
        reason, text = _job_failure(state.fill_pod_message)
        text = text[:-1] if text.endswith(".") else text
        return Verdict(
            "False", reason, f"Filling {cache} failed: {text}. {_fill_again(spec, cache, field)}"
        )
    complete = condition_of(job, "Complete")
    if complete and complete.get("status") == "True":
        return Verdict(
            "False", cond.CACHE_VERIFYING, f"The fill Job finished; marking {cache} as filled."
        )
    progress = job["metadata"].get("annotations") or {}
    done, total = progress.get(contract.ANNOTATION_DONE), progress.get(contract.ANNOTATION_TOTAL)
    phase = progress.get(contract.ANNOTATION_PHASE, "")
    if phase in FILL_PHASES:
        reason, text = FILL_PHASES[phase]
        return Verdict("False", reason, f"{text} into {cache}.")
    if status.get("failed") and state.fill_pod_message:
        last, text = _fill_failure(state.fill_pod_message)
        attempts = int(status["failed"])
        return Verdict(
            "False",
            cond.DOWNLOAD_RETRYING,
            f"Attempt {attempts} to fill {cache} failed ({last}: {text}); "
            f"retrying from where it stopped (at most {FILL_RETRIES + 1} attempts).",
        )
    if done and total:
        pct = 100 * int(done) / max(int(total), 1)
        return Verdict(
            "False",
            cond.DOWNLOADING,
            f"Downloading {spec.source}: {_bytes(int(done))} of {_bytes(int(total))} ({pct:.0f}%).",
        )
    if status.get("active"):
        return Verdict("False", cond.DOWNLOADING, f"Downloading {spec.source} into {cache}.")
    return Verdict(
        "False", cond.FILL_PENDING, f"The fill Job for {cache} is waiting for a pod to start."
    )


def model_weights(spec: AlpacaModelSpec, children: ModelChildren) -> Verdict:
    """The model's weights, then each adapter's: the first that is not filled speaks."""
    verdict = weights(spec.weights, children.cache)
    if not verdict.ok:
        return verdict
    for adapter in spec.adapters:
        state = children.adapter_caches.get(adapter.name, CacheState())
        one = weights(adapter.as_weights(spec.weights), state)
        if not one.ok:
            return Verdict(one.status, one.reason, f"Adapter {adapter.name}: {one.message}")
    if spec.adapters:
        names_ = ", ".join(a.name for a in spec.adapters)
        return Verdict("True", verdict.reason, f"{verdict.message} Adapters filled: {names_}.")
    return verdict


def _app_status(rayservice: dict[str, Any]) -> tuple[str, str]:
    apps = (
        rayservice.get("status", {}).get("activeServiceStatus", {}).get("applicationStatuses", {})
        or {}
    )
    for app in apps.values():
        return str(app.get("status", "")), str(app.get("message", ""))
    return "", ""


def serving(spec: AlpacaModelSpec, children: ModelChildren, weights_ok: bool) -> Verdict:
    if "rayservices.ray.io" not in children.crds:
        return Verdict(
            "False",
            cond.KUBERAY_MISSING,
            f"The ray.io/v1 RayService CRD is not installed: {KUBERAY_INSTALL}.",
        )
    if not weights_ok:
        return Verdict(
            "False", cond.WAITING_FOR_WEIGHTS, "Serving starts once the weights cache is filled."
        )
    rs = children.rayservice
    if rs is None:
        return Verdict("False", cond.DEPLOYING, "Creating the RayService.")
    app, app_message = _app_status(rs)
    ready = condition_of(rs, "Ready")
    if app in ("DEPLOY_FAILED", "UNHEALTHY"):
        return Verdict(
            "False", cond.SERVE_DEPLOY_FAILED, f"Ray Serve reports {app}: {app_message[:500]}"
        )
    if ready and ready.get("status") == "True":
        return Verdict("True", cond.ENDPOINT_SERVING, "The OpenAI-compatible API answers.")
    if app == "DEPLOYING":
        return Verdict("False", cond.ENGINE_LOADING, "vLLM is loading the model.")
    return Verdict(
        "False", cond.WAITING_FOR_RAY_CLUSTER, "Waiting for the Ray head and workers to start."
    )


def ready(stages: dict[str, Verdict], endpoint: str) -> Verdict:
    for type_ in (CAPACITY, WEIGHTS, SERVING):
        if not stages[type_].ok:
            return Verdict("False", stages[type_].reason, f"{type_}: {stages[type_].message}")
    return Verdict("True", cond.ALL_STAGES_READY, f"Serving at {endpoint}/v1.")


def phase(stages: dict[str, Verdict], was_ready: bool) -> str:
    if any(v.reason in FAILURE_REASONS for v in stages.values()):
        return "Failed"
    if stages[READY].ok:
        return "Ready"
    if was_ready and stages[CAPACITY].ok and stages[WEIGHTS].ok:
        return "Degraded"
    if not stages[CAPACITY].ok:
        return "Provisioning"
    if not stages[WEIGHTS].ok:
        return "Downloading"
    return "Deploying"


def replicas(rayservice: dict[str, Any] | None) -> tuple[int, int]:
    """(wanted, ready) serving replicas: the worker pods of the active RayCluster, one replica
    each, as KubeRay reports them."""
    if rayservice is None:
        return 0, 0
    cluster = (
        rayservice.get("status", {}).get("activeServiceStatus", {}).get("rayClusterStatus", {})
        or {}
    )
    return int(cluster.get("desiredWorkerReplicas", 0) or 0), int(
        cluster.get("readyWorkerReplicas", 0) or 0
    )


def stamp(t: datetime.datetime) -> str:
    """A time as conditions and messages show it (RFC 3339, seconds, UTC)."""
    return t.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _since(previous: list[dict[str, Any]], type_: str, status: str) -> datetime.datetime | None:
    for c in previous:
        if c.get("type") == type_ and c.get("status") == status:
            return parse_time(c.get("lastTransitionTime"))
    return None


def _clock(
    type_: str, verdict: Verdict, previous: list[dict[str, Any]]
) -> datetime.datetime | None:
    """When a waiting stage's clock started: when it became not ready, or (serving) when the
    weights it waits for became ready, whichever is later. None: no clock runs."""
    if (
        verdict.ok
        or verdict.reason in FAILURE_REASONS
        or verdict.reason == cond.WAITING_FOR_WEIGHTS
    ):
        return None
    start = _since(previous, type_, "False")
    if type_ == SERVING:
        weights_ready = _since(previous, WEIGHTS, "True")
        start = max(filter(None, (start, weights_ready)), default=None)
    return start


def with_deadlines(
    stages: dict[str, Verdict], previous: list[dict[str, Any]], now: datetime.datetime
) -> dict[str, Verdict]:
    """Stages still waiting past their own deadline get their own reason. The message names
    the deadline and when the wait began, not a running count (which would change the status
    on every pass)."""
    out = dict(stages)
    for type_, (reason, limit) in DEADLINES.items():
        verdict = stages[type_]
        start = _clock(type_, verdict, previous)
        if start is not None and now - start > limit:
            since = stamp(start)
            out[type_] = Verdict(
                "False",
                reason,
                f"Not ready within its deadline of {int(limit.total_seconds() // 60)} minutes (waiting since {since}): {verdict.message}",
            )
    return out


def next_deadline(
    stages: dict[str, Verdict], conditions: list[dict[str, Any]], now: datetime.datetime
) -> datetime.datetime | None:
    """The earliest deadline still ahead among the waiting stages (given the conditions just
    written): when the object needs a pass even if nothing else changes."""
    ahead = []
    for type_, (_, limit) in DEADLINES.items():
        start = _clock(type_, stages[type_], conditions)
        if start is not None and start + limit >= now:
            ahead.append(start + limit + datetime.timedelta(seconds=1))
    return min(ahead, default=None)


def _failed_at(job: dict[str, Any] | None) -> datetime.datetime | None:
    failed = condition_of(job, "Failed")
    if not failed or failed.get("status") != "True":
        return None
    return parse_time(failed.get("lastTransitionTime"))


def secret_recheck(caches: list[CacheState], now: datetime.datetime) -> datetime.datetime | None:
    """When a failed fill's credentials Secret is next looked at: 30 s after the failure, then
    twice as long each time up to every 10 minutes (a pure function of the failure's time, so
    every pass agrees). None when no failed fill waits on a Secret."""
    ahead = []
    for state in caches:
        start = _failed_at(state.fill_job) if state.credentials_secret else None
        if start is None:
            continue
        step, at = SECRET_RECHECK_FIRST, start + SECRET_RECHECK_FIRST
        while at <= now and step < SECRET_RECHECK_MAX:
            step = min(step * 2, SECRET_RECHECK_MAX)
            at += step
        if at <= now:
            at += SECRET_RECHECK_MAX * ((now - at) // SECRET_RECHECK_MAX + 1)
        ahead.append(at)
    return min(ahead, default=None)


def earliest(*times: datetime.datetime | None) -> datetime.datetime | None:
    return min((t for t in times if t is not None), default=None)


def stages(
    spec: AlpacaModelSpec,
    children: ModelChildren,
    selector: dict[str, str],
    endpoint: str,
    previous: list[dict[str, Any]],
    now: datetime.datetime,
) -> dict[str, Verdict]:
    """Every stage's verdict, deadlines applied, and Ready from them."""
    out = {
        CAPACITY: capacity(spec, children, selector),
        WEIGHTS: model_weights(spec, children),
    }
    out[SERVING] = serving(spec, children, out[WEIGHTS].ok)
    out = with_deadlines(out, previous, now)
    out[READY] = ready(out, endpoint)
    return out
