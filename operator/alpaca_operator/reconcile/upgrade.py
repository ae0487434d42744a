"""Rolling a changed AlpacaModel onto its running RayCluster: beside it when there is room, in
its place when there is not (spec.upgrade, decision 41).

At rest the RayService runs KubeRay's upgrade strategy `None`: Serve config changes (engine
options, adapters, Serve autoscaling) are applied in place and KubeRay never starts a second
cluster by itself (its `NewCluster` would wait for twice the GPUs on every change, and
deadlock where they never come: kuberay#1476, #4239). What a change leaves stale on the running
cluster is the operator's call, made in each pass from what it sees:

- worker min/max replicas only: patched on the running RayCluster in place;
- anything in the pod templates (image, GPUs, CPU, memory, placement, volumes), with
  `ZeroDowntime`, or `Auto` when the free capacity holds the new cluster (room.py): the
  RayService goes to `NewCluster` for the change; KubeRay starts the new cluster beside the old,
  moves its serve Service once the new Serve app is healthy and deletes the old cluster a
  minute later; the endpoint Service follows the cluster KubeRay names active (model.py);
- `Auto` without room: the change waits (the old cluster keeps serving the previous spec) until
  there is room or `capacityTimeout` has passed since the upgrade began; then, and at once with
  `Recreate`, the running cluster is deleted and KubeRay makes the new one: an outage, never
  more GPUs than one cluster. The same deadline covers a new cluster whose workers the
  scheduler cannot place (another workload took the GPUs meanwhile): the old one is deleted so
  the new one gets its GPUs.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from alpaca_operator import conditions as cond
from alpaca_operator.api.base import parse_duration
from alpaca_operator.api.model import Upgrade
from alpaca_operator.conditions import Verdict
from alpaca_operator.kube import Kube
from alpaca_operator.observe.model import parse_time, stamp

RECREATED = "Recreated"
RESCALED = "Rescaled"
AT_REST, NEW_CLUSTER = "None", "NewCluster"  # KubeRay's upgradeStrategy.type
RECHECK = datetime.timedelta(seconds=30)  # how often a waiting upgrade looks for room again


@dataclass(frozen=True)
class Room:
    """Whether the new cluster fits beside the running one now. `fits` None: it cannot be told
    (the operator may not list the pods on the nodes); the upgrade then tries, and the deadline
    on its workers being scheduled decides."""

    fits: bool | None
    message: str


@dataclass
class Plan:
    """What a pass does about the model's RayClusters, and what the Upgrading condition says."""

    verdict: Verdict
    strategy: str = AT_REST  # rendered into the RayService
    hold: bool = False  # leave the live RayService as it is: the change waits for room
    delete: list[str] = field(default_factory=list)  # RayClusters to delete in this pass
    scale: tuple[str, list[dict[str, Any]]] | None = None  # (RayCluster, JSON patch): min/max
    action: str | None = None  # RECREATED when a cluster is deleted for the change
    requeue_at: datetime.datetime | None = None


def _pod_shape(template: dict[str, Any]) -> dict[str, Any]:
    """What needs new pods when it changes. Not the containers' env: Ray Serve's fast-path
    variables (decision 39) change with the adapter volumes (a model takes the standard path
    exactly when it has adapters), so a model moving between paths is recreated anyway; a
    cluster made before the fast path existed keeps serving on the standard path, which works,
    and one made before Ray's usage stats were turned off (decision 43) keeps them on, rather
    than every model going down once when the operator is upgraded. Either reaches the
    cluster when it is recreated for a change."""
    spec = template.get("spec", {})
    return {
        "containers": [
            {"name": c.get("name"), "image": c.get("image"), "resources": c.get("resources", {})}
            for c in spec.get("containers", [])
            if c.get("name") != "autoscaler"  # KubeRay's own sidecar
        ],
        "nodeSelector": spec.get("nodeSelector") or {},
        "tolerations": spec.get("tolerations") or [],
        "volumes": spec.get("volumes") or [],
    }


def shape(cluster_spec: dict[str, Any]) -> dict[str, Any]:
    """A RayCluster spec's pods, as far as a change needs new ones."""
    return {
        "head": _pod_shape(cluster_spec.get("headGroupSpec", {}).get("template", {})),
        "workers": {
            g.get("groupName"): _pod_shape(g.get("template", {}))
            for g in cluster_spec.get("workerGroupSpecs", [])
        },
    }


def scale_ops(live: dict[str, Any], want: dict[str, Any]) -> list[dict[str, Any]]:
    """JSON patch operations that bring a RayCluster's worker min/max to the desired ones."""
    ops: list[dict[str, Any]] = []
    wanted = {g["groupName"]: g for g in want.get("workerGroupSpecs", [])}
    for i, group in enumerate(live.get("workerGroupSpecs", [])):
        target = wanted.get(group.get("groupName"))
        if target is None:
            continue
        for key in ("minReplicas", "maxReplicas"):
            if group.get(key) != target.get(key):
                ops.append(
                    {
                        "op": "replace",
                        "path": f"/spec/workerGroupSpecs/{i}/{key}",
                        "value": target[key],
                    }
                )
    return ops


def cluster_names(rayservice: dict[str, Any] | None) -> tuple[str, str]:
    """(active, pending) RayCluster names as KubeRay reports them ("" when none)."""
    status = (rayservice or {}).get("status") or {}
    return (
        str((status.get("activeServiceStatus") or {}).get("rayClusterName") or ""),
        str((status.get("pendingServiceStatus") or {}).get("rayClusterName") or ""),
    )


def clusters(
    kube: Kube, rayservice: dict[str, Any] | None, namespace: str
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The (active, pending) RayClusters KubeRay names, where they exist."""
    active, pending = (
        kube.get("ray.io/v1", "RayCluster", name, namespace) if name else None
        for name in cluster_names(rayservice)
    )
    return active, pending


def serving_cluster(rayservice: dict[str, Any] | None) -> str:
    """The RayCluster the endpoint sends traffic to: the one KubeRay made active (it promotes a
    new cluster once its Serve app is healthy), else the first one starting."""
    active, pending = cluster_names(rayservice)
    return active or pending


def _pending_apps_running(rayservice: dict[str, Any]) -> bool:
    apps = ((rayservice.get("status") or {}).get("pendingServiceStatus") or {}).get(
        "applicationStatuses"
    ) or {}
    return bool(apps) and all(a.get("status") == "RUNNING" for a in apps.values())


def _began(previous: dict[str, Any] | None, now: datetime.datetime) -> datetime.datetime:
    """When the upgrade in progress began: when Upgrading turned True (every step of one
    upgrade is True, so its lastTransitionTime stays put), or now."""
    if previous and previous.get("status") == "True":
        return parse_time(previous.get("lastTransitionTime")) or now
    return now


def _live(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if obj is None or obj["metadata"].get("deletionTimestamp") else obj


def _scale(
    cluster: dict[str, Any], desired: dict[str, Any]
) -> tuple[str, list[dict[str, Any]]] | None:
    """The patch that brings a running cluster's worker min/max to the desired ones, if any."""
    ops = scale_ops(cluster["spec"], desired["spec"]["rayClusterConfig"])
    return (cluster["metadata"]["name"], ops) if ops else None


UP_TO_DATE = Verdict("False", cond.UP_TO_DATE, "The running RayCluster is the spec's.")
NOTHING_RUNS = Verdict("False", cond.UP_TO_DATE, "No RayCluster runs yet.")


def plan(
    policy: Upgrade,
    rayservice: dict[str, Any] | None,
    active: dict[str, Any] | None,
    pending: dict[str, Any] | None,
    desired: dict[str, Any],
    room: Callable[[], Room],
    unschedulable: Callable[[str], str | None],
    previous: dict[str, Any] | None,
    now: datetime.datetime,
) -> Plan:
    """Decide for one pass (`active`/`pending`: the RayClusters KubeRay names; `room` and
    `unschedulable` are asked only when the answer matters: they read the API). Pure apart
    from them."""
    want = shape(desired["spec"]["rayClusterConfig"])
    active, pending = _live(active), _live(pending)
    was = (previous or {}).get("reason")

    if active is None:
        # Nothing serves (a first start, or after a recreate): no outage to avoid.
        verdict = UP_TO_DATE
        if was == cond.RECREATING_WITH_OUTAGE:
            verdict = Verdict(
                "True",
                cond.RECREATING_WITH_OUTAGE,
                str((previous or {}).get("message") or "The RayCluster is recreated."),
            )
        elif pending is None:
            verdict = NOTHING_RUNS
        if pending is None:
            return Plan(verdict)
        if shape(pending["spec"]) != want:
            # a cluster that never served is made again from the new spec
            return Plan(verdict, delete=[pending["metadata"]["name"]], action=RECREATED)
        return Plan(verdict, scale=_scale(pending, desired))

    old = active["metadata"]["name"]
    timeout = datetime.timedelta(seconds=parse_duration(policy.capacity_timeout))
    deadline = _began(previous, now) + timeout

    def recreate(why: str) -> Plan:
        return Plan(
            Verdict(
                "True",
                cond.RECREATING_WITH_OUTAGE,
                f"{why}: RayCluster {old} was deleted and a new one starts from the spec; "
                "the endpoint answers again once it serves.",
            ),
            strategy=NEW_CLUSTER if pending is not None else AT_REST,
            delete=[old],
            action=RECREATED,
        )

    if pending is not None:
        # An upgrade KubeRay carries out (it also replaces a pending cluster of an older spec).
        new = pending["metadata"]["name"]
        if rayservice is not None and _pending_apps_running(rayservice):
            return Plan(
                Verdict(
                    "True",
                    cond.SWITCHING_TRAFFIC,
                    f"RayCluster {new} serves the new spec; traffic moves to it from {old}, "
                    "which is deleted a minute later.",
                ),
                strategy=NEW_CLUSTER,
            )
        why = unschedulable(new)
        if why is None:
            return Plan(
                Verdict(
                    "True",
                    cond.NEW_CLUSTER_STARTING,
                    f"RayCluster {new} starts beside {old} with the new spec; {old} serves "
                    "until the new Serve app is healthy.",
                ),
                strategy=NEW_CLUSTER,
            )
        if policy.strategy == "Auto" and now >= deadline:
            return recreate(
                f"The new RayCluster {new} found no room within spec.upgrade.capacityTimeout "
                f"({policy.capacity_timeout}: {why})"
            )
        until = (
            f"; at {stamp(deadline)} {old} is deleted to make room (an outage)"
            if policy.strategy == "Auto"
            else ""
        )
        return Plan(
            Verdict(
                "True",
                cond.WAITING_FOR_CAPACITY,
                f"RayCluster {new} waits for room beside {old}, which keeps serving: {why}{until}.",
            ),
            strategy=NEW_CLUSTER,
            requeue_at=min(deadline, now + RECHECK) if policy.strategy == "Auto" else now + RECHECK,
        )

    if shape(active["spec"]) == want:
        return Plan(UP_TO_DATE, scale=_scale(active, desired))

    if policy.strategy == "Recreate":
        return recreate("The pod templates changed and spec.upgrade.strategy is Recreate")
    fits = Room(True, "spec.upgrade.strategy is ZeroDowntime")
    if policy.strategy == "Auto":
        fits = room()
    if fits.fits is not False:
        return Plan(
            Verdict(
                "True",
                cond.NEW_CLUSTER_STARTING,
                f"The pod templates changed: a new RayCluster starts beside {old} ({fits.message}); "
                f"{old} serves until the new Serve app is healthy.",
            ),
            strategy=NEW_CLUSTER,
        )
    if now >= deadline:
        return recreate(
            f"No room for a second RayCluster within spec.upgrade.capacityTimeout "
            f"({policy.capacity_timeout}: {fits.message})"
        )
    return Plan(
        Verdict(
            "True",
            cond.WAITING_FOR_CAPACITY,
            f"The pod templates changed; no room for a second RayCluster yet ({fits.message}). "
            f"{old} keeps serving the previous spec; at {stamp(deadline)} it is deleted to "
            "make room (an outage) unless room appears first.",
        ),
        hold=True,
        requeue_at=min(deadline, now + RECHECK),
    )


def carry_out(kube: Kube, namespace: str, step: Plan) -> str | None:
    """Delete what the plan deletes, patch what it rescales; what was done (RECREATED,
    RESCALED) if anything."""
    for name in step.delete:
        kube.delete("ray.io/v1", "RayCluster", name, namespace)
    if step.action:
        return step.action
    if step.scale:
        cluster, ops = step.scale
        kube.json_patch("ray.io/v1", "RayCluster", cluster, namespace, ops)
        return RESCALED
    return None
