"""reconcile/runtime.py: what a pass posts and records, and what each watch event decides
(which passes to ask for, what a deletion forgets, which NodePools go) — everything the kopf
handlers hand over, without kopf."""

from __future__ import annotations

import copy
import datetime
from typing import Any

import pytest

from alpaca_operator import conditions as cond
from alpaca_operator.handlers import STORED
from alpaca_operator.kube import ApiError
from alpaca_operator.metrics import Metrics
from alpaca_operator.observe.model import DEADLINES
from alpaca_operator.passes import Key, Passes
from alpaca_operator.reconcile.apply import Applier
from alpaca_operator.reconcile.finetune import FineTuneContext
from alpaca_operator.reconcile.model import NODEPOOL_CRD, RAYSERVICE_CRD, ModelContext
from alpaca_operator.reconcile.runtime import OUTRANKED_RETRY, Runtime
from alpaca_operator.reconcile.serving import application_for
from alpaca_operator.render import names
from alpaca_operator.store import CachedKube, Store

from .fake_kube import FakeKube
from .support import API, CONFIG, NOW, NS, example

MODEL: Key = ("AlpacaModel", NS, "alpaca-7b-spot")  # examples/alpaca-karpenter.yaml
EXISTING: Key = ("AlpacaModel", NS, "alpaca-7b")  # examples/alpaca.yaml: existing GPU nodes
CRD_API = "apiextensions.k8s.io/v1"


class RecordingPasses(Passes):
    """The work queue as the runtime sees it: what was asked for, forgotten, started."""

    def __init__(self) -> None:
        super().__init__(run=lambda key: None)
        self.requested: list[Key] = []
        self.forgotten: list[Key] = []
        self.started = 0

    def request(self, key: Key) -> None:
        self.requested.append(key)

    def forget(self, key: Key) -> None:
        self.forgotten.append(key)

    def start(self) -> None:
        self.started += 1

    def take(self) -> list[Key]:
        """What was asked for since the last take."""
        taken, self.requested = self.requested, []
        return taken


class Env:
    """A runtime over the fake API, its store fed as the watches would feed it."""

    def __init__(self, crds: tuple[str, ...] = (RAYSERVICE_CRD, NODEPOOL_CRD), **kw: Any) -> None:
        self.api = FakeKube()
        self.store = Store(STORED)
        kube = CachedKube(self.api, self.store)
        applier = Applier(kube)
        self.passes = RecordingPasses()
        self.rt = Runtime(
            metrics=Metrics(),
            store=self.store,
            kube=kube,
            models=ModelContext(kube, applier, CONFIG, application_for),
            finetunes=FineTuneContext(kube, applier, CONFIG),
            passes=self.passes,
            clock=lambda: NOW,
            **kw,
        )
        for name in crds:
            self.seen(crd(name))

    def seen(self, obj: dict[str, Any]) -> dict[str, Any]:
        """An object created by someone else, and its watch event."""
        stored = self.api.put(obj)
        self.store.put(stored)
        return stored

    def custom_resource(self, example_file: str, name: str | None = None) -> dict[str, Any]:
        doc = copy.deepcopy(example(example_file))
        doc["metadata"]["namespace"] = NS
        if name:
            doc["metadata"]["name"] = name
        return self.seen(doc)

    def events(self) -> list[tuple[str, str]]:
        """(type, reason) of every Event posted, in order."""
        return [(e["type"], e["reason"]) for e in self.api.list("v1", "Event", NS)]

    def sample(self, name: str, **labels: str) -> float | None:
        return self.rt.metrics.registry.get_sample_value(name, labels)


def crd(name: str, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": CRD_API,
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name, **meta},
    }


def nodepool(name: str, owner: Key | None) -> dict[str, Any]:
    labels = names.nodepool_labels(*owner) if owner else {"team": "platform"}
    return {
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodePool",
        "metadata": {"name": name, "labels": labels},
    }


def node(name: str, rv: str, gpus: str = "1", **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "resourceVersion": rv, "labels": labels},
        "status": {"allocatable": {"nvidia.com/gpu": gpus}},
    }


# --- passes --------------------------------------------------------------------------------


def test_a_pass_writes_the_status_posts_each_transition_once_and_records_it():
    env = Env()
    env.custom_resource("alpaca-karpenter.yaml")
    seconds = env.rt.run_pass(MODEL)
    model = env.api.stored(API, "AlpacaModel", MODEL[2], NS)
    conditions = model["status"]["conditions"]
    # one Event per stage, each with its condition's reason (not Accepted nor Ready, see
    # accept.transition_events)
    # no Event for what did not happen: Accepted on a new object, Ready not yet, no upgrade
    stages = [c for c in conditions if c["type"] not in (cond.ACCEPTED, cond.READY, cond.UPGRADING)]
    assert sorted(reason for _, reason in env.events()) == sorted(c["reason"] for c in stages)
    # due again at the earliest deadline of the stages still waiting (all began now)
    waiting = [c["type"] for c in conditions if c["status"] == "False" and c["type"] in DEADLINES]
    assert waiting
    assert seconds == min(DEADLINES[t][1] for t in waiting).total_seconds() + 1
    assert env.sample("alpaca_reconcile_total", kind="AlpacaModel", result="ok") == 1
    assert env.sample("alpaca_objects", kind="AlpacaModel", phase=model["status"]["phase"]) == 1
    assert env.sample("alpaca_reconcile_duration_seconds_count", kind="AlpacaModel") == 1
    assert MODEL not in env.rt.selectors  # on Karpenter capacity: node changes do not concern it

    writes = len(env.api.writes_log)
    assert env.rt.run_pass(MODEL) == seconds
    assert len(env.api.writes_log) == writes  # nothing moved: no status write, no Event
    assert env.sample("alpaca_reconcile_total", kind="AlpacaModel", result="ok") == 2


def test_a_model_on_existing_gpu_nodes_leaves_its_node_selector_for_node_wakes():
    env = Env()
    body = env.custom_resource("alpaca.yaml")
    env.rt.run_pass(EXISTING)
    assert env.rt.selectors[EXISTING] == {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": "NVIDIA-A10G",
    }
    # moved to Karpenter capacity: its node selector is forgotten
    moved = env.api.stored(API, "AlpacaModel", EXISTING[2], NS)
    moved["spec"]["capacity"] = example("alpaca-karpenter.yaml")["spec"]["capacity"]
    moved["metadata"]["generation"] = body["metadata"]["generation"] + 1
    env.seen(moved)
    env.rt.run_pass(EXISTING)
    assert EXISTING not in env.rt.selectors


def test_no_pass_over_what_is_gone_going_or_out_of_scope():
    env = Env(namespaces=["prod-*"])
    env.custom_resource("alpaca-karpenter.yaml")
    assert env.rt.run_pass(MODEL) is None  # its namespace is not watched
    assert env.rt.run_pass(("AlpacaModel", NS, "never-created")) is None
    env.rt.namespaces = []
    going = env.api.stored(API, "AlpacaModel", MODEL[2], NS)
    going["metadata"]["deletionTimestamp"] = "2026-11-24T11:59:00Z"
    env.seen(going)
    assert env.rt.run_pass(MODEL) is None
    assert env.api.writes_log == []
    assert env.sample("alpaca_reconcile_total", kind="AlpacaModel", result="ok") is None


@pytest.mark.parametrize(
    ("lastseen", "waits"), [("2026-11-24T11:59:30", True), ("2026-11-24T11:00:00", False)]
)
def test_a_replica_outranked_by_a_live_peer_waits(lastseen, waits):
    env = Env(peering="alpaca-operator", priority=10)
    env.api.put(
        {
            "apiVersion": "kopf.dev/v1",
            "kind": "ClusterKopfPeering",
            "metadata": {"name": "alpaca-operator"},
            "status": {"other-replica": {"priority": 20, "lastseen": lastseen, "lifetime": 60}},
        }
    )
    env.custom_resource("alpaca-karpenter.yaml")
    result = env.rt.run_pass(MODEL)
    if waits:
        assert result == OUTRANKED_RETRY
        assert env.api.writes_log == []
    else:  # the peer stopped renewing its lease: this replica works
        assert result is not None and result != OUTRANKED_RETRY
        assert env.api.writes_log


def test_a_refused_write_is_said_once_per_refusal_and_again_after_a_good_pass(monkeypatch):
    env = Env()
    env.custom_resource("alpaca-karpenter.yaml")
    apply = env.api.apply
    quota = ApiError(403, {"reason": "Forbidden", "message": "exceeded quota: pvcs"})

    def refusing(obj: dict[str, Any], subresource: str | None = None) -> dict[str, Any]:
        if obj["kind"] == "PersistentVolumeClaim":
            raise quota
        return apply(obj, subresource)

    monkeypatch.setattr(env.api, "apply", refusing)
    for _ in range(2):
        with pytest.raises(ApiError):
            env.rt.run_pass(MODEL)
    assert env.events() == [("Warning", cond.API_REFUSED)]  # once, not on every retry
    (event,) = env.api.list("v1", "Event", NS)
    assert "exceeded quota: pvcs" in event["message"]
    assert env.sample("alpaca_reconcile_total", kind="AlpacaModel", result="error") == 2
    assert env.api.names("PersistentVolumeClaim") == []

    monkeypatch.setattr(env.api, "apply", apply)
    env.rt.run_pass(MODEL)
    assert MODEL not in env.rt.refusals
    # a hand deletes the cache volume, and creating it again is refused: said again
    monkeypatch.setattr(env.api, "apply", refusing)
    for pvc in env.store.list("v1", "PersistentVolumeClaim", NS):
        env.api.delete("v1", "PersistentVolumeClaim", pvc["metadata"]["name"], NS)
        env.store.discard("v1", "PersistentVolumeClaim", pvc["metadata"]["name"], NS)
    with pytest.raises(ApiError):
        env.rt.run_pass(MODEL)
    assert [r for _, r in env.events()].count(cond.API_REFUSED) == 2  # said again


def test_a_failure_that_is_not_the_apiservers_is_counted_and_raised_without_an_event(monkeypatch):
    env = Env()
    env.custom_resource("alpaca-karpenter.yaml")

    def broken(*_: Any, **__: Any) -> dict[str, Any]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(env.api, "apply", broken)
    with pytest.raises(RuntimeError):
        env.rt.run_pass(MODEL)
    assert env.events() == []
    assert env.sample("alpaca_reconcile_total", kind="AlpacaModel", result="error") == 1


# --- start-up and deletions ----------------------------------------------------------------


def test_start_up_sweeps_the_nodepools_whose_owner_went_while_the_operator_was_away():
    env = Env()
    env.custom_resource("alpaca-karpenter.yaml")
    gone_model: Key = ("AlpacaModel", NS, "deleted-meanwhile")
    gone_tune: Key = ("AlpacaFineTune", NS, "alpaca-7b-spot")  # the live model's name
    for pool in (
        nodepool("kept", MODEL),
        nodepool("orphan-model", gone_model),
        nodepool("orphan-tune", gone_tune),
        nodepool("not-ours", None),
    ):
        env.seen(pool)
    orphans = env.rt.become_ready()
    assert sorted(orphans) == [("orphan-model", gone_model), ("orphan-tune", gone_tune)]
    assert env.rt.ready and env.passes.started == 1
    assert env.rt.become_ready() == [] and env.passes.started == 1  # once
    for name, owner in orphans:
        env.rt.delete_nodepool(name, owner)
    assert env.api.names("NodePool") == ["kept", "not-ours"]


def test_a_scoped_operator_sweeps_only_the_nodepools_of_namespaces_it_watches():
    """A model in a namespace another operator watches is not in this one's store: its
    NodePool is not an orphan (two scoped operators would delete each other's capacity)."""
    env = Env(namespaces=[NS])
    elsewhere: Key = ("AlpacaModel", "other-team", "m")
    gone: Key = ("AlpacaModel", NS, "deleted-meanwhile")
    env.seen(nodepool("theirs", elsewhere))
    env.seen(nodepool("orphan", gone))
    assert env.rt.become_ready() == [("orphan", gone)]


def test_a_failed_nodepool_deletion_is_logged_not_raised(monkeypatch, caplog):
    env = Env()

    def refusing(*_: Any, **__: Any) -> bool:
        raise ApiError(403, {"reason": "Forbidden", "message": "no"})

    monkeypatch.setattr(env.api, "delete", refusing)
    env.rt.delete_nodepool("pool", MODEL)
    assert "deleting NodePool pool failed" in caplog.text


def test_a_deleted_custom_resource_is_forgotten_and_only_its_nodepools_go():
    env = Env()
    body = env.custom_resource("alpaca-karpenter.yaml")
    env.rt.custom_resource_seen(body)
    env.rt.run_pass(MODEL)
    env.rt.selectors[MODEL] = {"gpu": "a10"}
    env.rt.refusals[MODEL] = "refused"
    phase = env.api.stored(API, "AlpacaModel", MODEL[2], NS)["status"]["phase"]
    assert env.sample("alpaca_objects", kind="AlpacaModel", phase=phase) == 1
    pools = env.api.names("NodePool")  # the pass created the model's own
    assert len(pools) == 1
    env.seen(nodepool("same-name-fine-tune", ("AlpacaFineTune", NS, MODEL[2])))
    env.seen(nodepool("same-name-elsewhere", ("AlpacaModel", "other", MODEL[2])))

    assert env.rt.custom_resource_deleted(body) == pools
    assert env.store.get(API, "AlpacaModel", MODEL[2], NS) is None
    assert env.passes.forgotten == [MODEL]
    assert MODEL not in env.rt.selectors
    assert MODEL not in env.rt.marks
    assert MODEL not in env.rt.refusals
    assert env.sample("alpaca_objects", kind="AlpacaModel", phase=phase) is None
    env.passes.take()
    env.rt.custom_resource_seen(body)  # created again under the same name: a pass
    assert env.passes.take() == [MODEL]


# --- watch events --------------------------------------------------------------------------


def test_a_custom_resource_asks_for_a_pass_only_when_its_spec_moved():
    env = Env()
    body = env.custom_resource("alpaca-karpenter.yaml")
    env.rt.custom_resource_seen(body)
    assert env.passes.take() == [MODEL]  # new to us
    status_only = copy.deepcopy(body)
    status_only["status"] = {"phase": "Pending"}
    status_only["metadata"]["resourceVersion"] = "900"
    env.rt.custom_resource_seen(status_only)
    assert env.passes.take() == []  # our own status write (or the trainer's)
    assert env.store.get(API, "AlpacaModel", MODEL[2], NS)["status"] == {"phase": "Pending"}
    edited = copy.deepcopy(status_only)
    edited["metadata"].update(generation=2, resourceVersion="901")
    env.rt.custom_resource_seen(edited)
    assert env.passes.take() == [MODEL]
    going = copy.deepcopy(edited)
    going["metadata"].update(deletionTimestamp="2026-11-24T12:01:00Z", resourceVersion="902")
    env.rt.custom_resource_seen(going)
    assert env.passes.take() == [MODEL]


def test_a_childs_event_wakes_the_objects_it_belongs_to():
    env = Env()
    cache = "weights-llama-7b-0123456789"
    env.seen(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": cache,
                "namespace": NS,
                "labels": names.cache_labels(cache),
                "ownerReferences": [
                    {"kind": "AlpacaModel", "name": "m", "uid": "u1"},
                    {"kind": "AlpacaFineTune", "name": "t", "uid": "u2"},
                ],
            },
        }
    )
    fill = env.seen(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": f"{cache}-fill",
                "namespace": NS,
                "labels": names.cache_labels(cache),
            },
        }
    )
    env.rt.child_event("MODIFIED", fill)
    assert env.passes.take() == [("AlpacaModel", NS, "m"), ("AlpacaFineTune", NS, "t")]
    train = env.seen(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": "t-train",
                "namespace": NS,
                "labels": names.finetune_labels("t", "training"),
            },
        }
    )
    env.rt.child_event("DELETED", train)
    assert env.passes.take() == [("AlpacaFineTune", NS, "t")]
    assert env.store.get("batch/v1", "Job", "t-train", NS) is None
    assert env.store.get("batch/v1", "Job", f"{cache}-fill", NS) is not None


def test_the_echo_of_the_operators_own_write_wakes_no_one():
    """A pass's write went into the store with the apiserver's answer; its watch event (the
    same resourceVersion) wakes no one, a later change by someone else does."""
    env = Env()
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "t-train", "namespace": NS, "labels": names.finetune_labels("t", "x")},
    }
    written = env.rt.kube.apply(job)  # as a pass writes it: the answer goes into the store
    env.rt.child_stored(copy.deepcopy(written))  # its watch event
    env.rt.child_event("MODIFIED", written)
    assert env.passes.take() == []
    assert env.rt.echoes == set()  # consumed
    changed = env.api.put({**written, "status": {"active": 1}})  # the Job controller
    env.rt.child_stored(copy.deepcopy(changed))
    env.rt.child_event("MODIFIED", changed)
    assert env.passes.take() == [("AlpacaFineTune", NS, "t")]
    env.rt.child_stored(copy.deepcopy(changed))  # its event again (a relist): an echo, but
    env.rt.child_event("DELETED", changed)  # a deletion always wakes and leaves the store
    assert env.passes.take() == [("AlpacaFineTune", NS, "t")]
    assert env.store.get("batch/v1", "Job", "t-train", NS) is None


def test_node_changes_wake_only_the_models_they_concern():
    env = Env()
    a10: Key = ("AlpacaModel", NS, "a")
    h100: Key = ("AlpacaModel", NS, "b")
    unknown: Key = ("AlpacaModel", NS, "c")  # no pass yet: selector not known
    env.rt.selectors = {a10: {"gpu": "a10"}, h100: {"gpu": "h100"}, unknown: None}
    env.rt.node_seen(node("n1", "1", gpu="a10"))
    assert env.passes.take() == []  # kopf's initial listing: the first passes see it anyway
    env.rt.become_ready()
    env.rt.node_seen(node("n2", "2", gpu="h100"))
    assert env.passes.take() == [h100, unknown]  # a new node
    env.rt.node_seen(node("n1", "3", gpu="a10"))
    assert env.passes.take() == []  # a heartbeat
    env.rt.node_seen(node("n1", "4", gpus="0", gpu="a10"))
    assert env.passes.take() == [a10, unknown]  # its GPUs went
    env.rt.node_seen(node("n1", "5", gpus="0", gpu="h100"))
    assert env.passes.take() == [a10, h100, unknown]  # matched before, matches after
    assert env.store.get("v1", "Node", "n1")["metadata"]["labels"] == {"gpu": "h100"}
    env.rt.cluster_object_deleted(node("n2", "6", gpu="h100"))
    assert env.passes.take() == [h100, unknown]
    assert env.store.get("v1", "Node", "n2") is None


def test_kuberay_or_karpenter_coming_or_going_wakes_every_model():
    env = Env(crds=())
    env.custom_resource("alpaca-karpenter.yaml")
    env.custom_resource("finetune.yaml")
    env.rt.crd_seen(crd(RAYSERVICE_CRD, resourceVersion="1"))
    assert env.passes.take() == []  # before start-up: the first passes see it
    assert env.rt.kube.crd_installed(RAYSERVICE_CRD)
    env.rt.become_ready()
    env.rt.crd_seen(crd("widgets.example.com", resourceVersion="2"))
    assert env.passes.take() == []
    assert env.store.get(CRD_API, "CustomResourceDefinition", "widgets.example.com") is None
    env.rt.crd_seen(crd(NODEPOOL_CRD, resourceVersion="3"))
    assert env.passes.take() == [MODEL]  # the models, not the fine-tunes
    env.rt.crd_seen(crd(NODEPOOL_CRD, resourceVersion="4"))
    assert env.passes.take() == []  # still installed
    env.rt.crd_seen(
        crd(NODEPOOL_CRD, resourceVersion="5", deletionTimestamp="2026-11-24T12:00:00Z")
    )
    assert env.passes.take() == [MODEL]  # being deleted: its objects go with it
    env.rt.cluster_object_deleted(crd(RAYSERVICE_CRD))
    assert env.passes.take() == [MODEL]
    assert not env.rt.kube.crd_installed(RAYSERVICE_CRD)


def test_deadlines_are_counted_from_the_clock_the_runtime_is_given():
    env = Env()
    env.custom_resource("alpaca-karpenter.yaml")
    first = env.rt.run_pass(MODEL)
    assert first is not None
    env.rt.clock = lambda: NOW + datetime.timedelta(seconds=100)
    assert env.rt.run_pass(MODEL) == first - 100
