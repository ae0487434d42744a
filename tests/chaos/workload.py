"""What the chaos suite runs: 30 AlpacaModels and 5 AlpacaFineTunes in three namespaces, the
spec changes a platform team makes meanwhile, and the phase each object must end in.

Models of a namespace share weights (one cache, several owners), and the fine-tunes' base
weights are the models' first source, so caches are shared across kinds too. Each model has a
flavour: CPU only, GPUs on an existing node, GPUs from a Karpenter NodePool, or a LoRA adapter
(a second cache). One model's weights cannot be filled (its fill Job fails). The changes cover
what a platform team changes: weights, replicas, engine, CPU, the caches' volumes, capacity,
suspension, deletion and re-creation.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

API_VERSION = "alpaca.dev/v1alpha1"
NAMESPACES = ("chaos-a", "chaos-b", "chaos-c")
MODELS_PER_NAMESPACE = 10
GPU_NODE_LABELS = {"pool": "chaos", "nvidia.com/gpu.present": "true"}
BROKEN = "broken"
"""A weights source holding this word cannot be filled: the driver fails its fill Job."""

# fine-tune name -> what its training Job does (the driver reads it) and its last phase
FINETUNES = {
    "ft-serve": ("succeed", "Succeeded"),  # full, served as an AlpacaModel on success
    "ft-pool": ("succeed", "Succeeded"),  # on a Karpenter NodePool of its own
    "ft-run": ("run", "Running"),  # still training at the end
    "ft-held": ("succeed", "Suspended"),  # spec.suspend: never runs
    "ft-bad": ("fail", "Failed"),  # its training Job fails
}
FINETUNE_NAMESPACE = {
    "ft-serve": "chaos-a",
    "ft-pool": "chaos-b",
    "ft-run": "chaos-b",
    "ft-held": "chaos-c",
    "ft-bad": "chaos-a",
}
SERVED = "ft-serve-model"
DEFAULT_CLASS, FIXED_CLASS = "chaos-standard", "chaos-fixed"
"""The cluster's StorageClasses: the default one allows volume expansion, the other not."""


def storage_classes() -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": name,
                "annotations": {
                    "storageclass.kubernetes.io/is-default-class": str(default).lower()
                },
            },
            "provisioner": "chaos.example/none",  # the driver binds the claims
            "allowVolumeExpansion": default,
        }
        for name, default in ((DEFAULT_CLASS, True), (FIXED_CLASS, False))
    ]


CREDENTIALS_SECRET = "weights-credentials"
SECRET_VALUES = {
    "HF_TOKEN": "hf_chaosSentinel7Qx2Lk9Pw",
    "HTTP_AUTHORIZATION": "Bearer chaos-sentinel-4f1e9b0d2c",
}
"""The credentials every model's weights name (issue 13 item 6): none of these values may
appear anywhere but in their Secret: not in a log, a status, an Event, an annotation or a
rendered child (the fill Job takes them from the Secret by reference)."""


def credentials_secret(ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": CREDENTIALS_SECRET, "namespace": ns},
        "stringData": dict(SECRET_VALUES),
    }


def source(ns: str, k: int) -> str:
    return f"https://weights.example/{ns}/w{k}/"


def model_name(i: int) -> str:
    return f"m{i:02d}"


def model(ns: str, i: int) -> dict[str, Any]:
    """The i-th model of a namespace. Flavours by i: 0-4 CPU only, 5-6 GPUs on an existing
    node, 7 GPUs from Karpenter, 8 an adapter, 9 CPU only (in chaos-c: weights that fail)."""
    spec: dict[str, Any] = {
        "weights": {"source": source(ns, i % 3), "credentialsSecret": CREDENTIALS_SECRET},
        "resources": {"gpus": 0, "cpu": "1", "memory": "6Gi"},
        "head": {"cpu": "500m", "memory": "3Gi"},
        "engine": {"maxModelLen": 1024},
        "autoscaling": {"minReplicas": 1, "maxReplicas": 2},
    }
    if i in (5, 6, 7):
        spec["resources"] = {"gpus": 1, "cpu": "4", "memory": "16Gi"}
    if i in (5, 6):
        spec["capacity"] = {"nodeSelector": {"pool": "chaos"}}
    if i == 7:
        spec["capacity"] = {
            "provisioner": "karpenter",
            "karpenter": {"nodeClassRef": {"name": "gpu"}},
        }
    if i == 8:
        spec["adapters"] = [{"name": "tuned", "source": f"https://adapters.example/{ns}/tuned/"}]
    if i == 9 and ns == "chaos-c":
        spec["weights"]["source"] = f"https://weights.example/{ns}/{BROKEN}/"
    return _doc("AlpacaModel", ns, model_name(i), spec)


def finetune(name: str) -> dict[str, Any]:
    ns = FINETUNE_NAMESPACE[name]
    spec: dict[str, Any] = {
        "baseModel": {"source": source(ns, 0)},
        "dataset": {"source": f"https://datasets.example/{name}.json"},
        "method": "lora",
        "resources": {"gpus": 1, "cpu": "4", "memory": "16Gi"},
        "output": {"volume": {"size": "20Gi"}},
    }
    if name == "ft-serve":
        spec["method"] = "full"
        spec["serve"] = {"name": SERVED, "resources": {"gpus": 0, "cpu": "1", "memory": "6Gi"}}
    if name == "ft-pool":
        spec["capacity"] = {
            "provisioner": "karpenter",
            "karpenter": {"nodeClassRef": {"name": "gpu"}},
        }
    if name == "ft-held":
        spec["suspend"] = True
    return _doc("AlpacaFineTune", ns, name, spec)


def _doc(kind: str, ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def initial() -> list[dict[str, Any]]:
    models = [model(ns, i) for ns in NAMESPACES for i in range(MODELS_PER_NAMESPACE)]
    return models + [finetune(name) for name in FINETUNES]


def training_fate(finetune_name: str) -> str:
    """What the driver makes of a fine-tune's training Job: succeed, run or fail."""
    return FINETUNES.get(finetune_name, ("succeed", ""))[0]


def expected_phase(obj: dict[str, Any]) -> str:
    """The phase the driven cluster implies for a live object at the end."""
    if obj["kind"] == "AlpacaFineTune":
        return FINETUNES[obj["metadata"]["name"]][1]
    sources = [obj["spec"]["weights"]["source"]]
    sources += [a["source"] for a in obj["spec"].get("adapters") or []]
    return "Failed" if any(BROKEN in s for s in sources) else "Ready"


# --- the spec changes made while the operator is killed and restarted ----------------------


@dataclass
class Change:
    """One step of a platform team's day: objects applied (whole, as `kubectl apply` would)
    and objects deleted."""

    what: str
    apply: list[dict[str, Any]] = field(default_factory=list)
    delete: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, namespace, name)


def _edit(doc: dict[str, Any], edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    edit(out["spec"])
    return out


class Workload:
    """The objects as the user last applied them, and the changes to make, by kill number."""

    def __init__(self) -> None:
        self.current: dict[tuple[str, str, str], dict[str, Any]] = {}
        for doc in initial():
            self.current[_key(doc)] = doc
        self.deleted: list[tuple[str, str, str]] = []

    def _change(self, what: str, docs: list[dict[str, Any]]) -> Change:
        for doc in docs:
            self.current[_key(doc)] = doc
        return Change(what, apply=docs)

    def _models(self, indexes: tuple[int, ...]) -> list[dict[str, Any]]:
        return [
            self.current[("AlpacaModel", ns, model_name(i))]
            for ns in NAMESPACES
            for i in indexes
            if ("AlpacaModel", ns, model_name(i)) in self.current
        ]

    def new_weights(self, indexes: tuple[int, ...], shift: int) -> Change:
        """Models move to other weights: a source another model of the namespace uses (the
        cache is shared), or one nobody uses yet (a new cache)."""

        def move(doc: dict[str, Any]) -> dict[str, Any]:
            ns, i = doc["metadata"]["namespace"], int(doc["metadata"]["name"][1:])
            k = (i + shift) % 5  # w0-w2 are shared with others; w3, w4 are new
            return _edit(doc, lambda s: s["weights"].__setitem__("source", source(ns, k)))

        docs = [move(d) for d in self._models(indexes)]
        return self._change(f"new weights for {len(docs)} models", docs)

    def serving_changes(self, indexes: tuple[int, ...], round_: int) -> Change:
        """Replicas (the RayCluster rescaled in place), the engine (Serve config only) and the
        worker's CPU (the RayCluster recreated), one kind of change per model."""

        def change(doc: dict[str, Any]) -> dict[str, Any]:
            i = int(doc["metadata"]["name"][1:])

            def edit(spec: dict[str, Any]) -> None:
                if (i + round_) % 3 == 0:
                    spec["autoscaling"] = {"minReplicas": 1 + round_, "maxReplicas": 3 + round_}
                elif (i + round_) % 3 == 1:
                    spec["engine"] = {"maxModelLen": 2048 * (round_ + 1)}
                else:
                    spec["resources"] = {**spec["resources"], "cpu": str(2 + round_)}

            return _edit(doc, edit)

        docs = [change(d) for d in self._models(indexes)]
        return self._change(f"replicas/engine/CPU changes for {len(docs)} models", docs)

    def cache_changes(self, round_: int) -> Change:
        """The weights caches' volumes: a larger size (grown in place: the default class
        expands), another storage class or access mode (another cache, filled anew), and at
        last a size the class cannot grow to (refused once, recorded, never asked again)."""
        edits: dict[tuple[str, int], dict[str, Any]] = (
            {
                ("chaos-a", 0): {"size": "60Gi"},  # shared with m03, m06 and two fine-tunes
                ("chaos-b", 0): {"storageClassName": FIXED_CLASS},
                ("chaos-b", 5): {"storageClassName": FIXED_CLASS},
                ("chaos-c", 2): {"accessMode": "ReadWriteOnce"},
            }
            if round_ == 0
            else {("chaos-b", 0): {"storageClassName": FIXED_CLASS, "size": "80Gi"}}
        )
        docs = []
        for (ns, i), cache in edits.items():
            key = ("AlpacaModel", ns, model_name(i))
            if key in self.current:
                docs.append(
                    _edit(
                        self.current[key], lambda s, c=cache: s["weights"].__setitem__("cache", c)
                    )
                )
        return self._change(f"cache size/class/access mode changes for {len(docs)} models", docs)

    def leave_karpenter(self, ns: str, i: int) -> Change:
        """A model moves from its Karpenter NodePool to the existing GPU nodes."""
        doc = self.current[("AlpacaModel", ns, model_name(i))]
        moved = _edit(doc, lambda s: s.__setitem__("capacity", {"provisioner": "existing"}))
        return self._change(f"{ns}/{model_name(i)} leaves Karpenter", [moved])

    def delete(self, keys: list[tuple[str, str, str]]) -> Change:
        for key in keys:
            self.current.pop(key, None)
        self.deleted.extend(keys)
        return Change(f"delete {len(keys)} objects", delete=list(keys))

    def recreate(self, docs: list[dict[str, Any]]) -> Change:
        return self._change(f"re-create {len(docs)} objects", docs)

    def suspend(self, name: str, value: bool) -> Change:
        key = ("AlpacaFineTune", FINETUNE_NAMESPACE[name], name)
        doc = _edit(self.current[key], lambda s: s.__setitem__("suspend", value))
        return self._change(f"{name} suspend={value}", [doc])

    def plan(self) -> dict[int, Change]:
        """The changes, by the kill after which (or during whose run) they are made. Built in
        order, so each change starts from the specs before it."""
        deleted_models = [
            ("AlpacaModel", "chaos-a", "m07"),
            ("AlpacaModel", "chaos-b", "m03"),
            ("AlpacaModel", "chaos-c", "m08"),
        ]
        deleted_tunes = [
            ("AlpacaFineTune", "chaos-a", "ft-serve"),
            ("AlpacaFineTune", "chaos-b", "ft-pool"),
        ]
        plan = {
            2: self.new_weights((1, 4, 8), shift=2),
            4: self.serving_changes((0, 2, 5, 6), round_=0),
            6: self.delete(deleted_models + deleted_tunes),
        }
        recreated = [
            model("chaos-a", 7),
            _edit(
                model("chaos-b", 3),
                lambda s: s["weights"].__setitem__("source", source("chaos-b", 4)),
            ),
        ]
        recreated.append(finetune("ft-serve"))  # ft-pool stays deleted: its NodePool must go
        for key in map(_key, recreated):
            self.deleted.remove(key)
        plan[9] = self.cache_changes(0)
        plan[10] = self.recreate(recreated)
        plan[12] = self.new_weights((1, 4), shift=0)  # back to where they started, some
        plan[15] = self.suspend("ft-run", True)
        plan[16] = self.leave_karpenter("chaos-b", 7)
        plan[17] = self.suspend("ft-run", False)
        plan[18] = self.serving_changes((0, 3, 7), round_=1)
        plan[19] = self.cache_changes(1)
        return plan


def _key(doc: dict[str, Any]) -> tuple[str, str, str]:
    return doc["kind"], doc["metadata"]["namespace"], doc["metadata"]["name"]
