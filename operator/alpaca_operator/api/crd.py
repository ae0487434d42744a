"""CustomResourceDefinitions generated from the API models: the one source of truth.

Pydantic's JSON Schema is turned into a Kubernetes structural schema: references inlined,
optional fields made plain (absent means unset), OpenAPI v3.0 keywords, and the CEL rules
(`x-kubernetes-validations`) and list/map markers the models carry.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from alpaca_operator.api import finetune, model
from alpaca_operator.api.base import GROUP, VERSION

_DROP = {"title", "examples"}
_RULES = "x-kubernetes-validations"


def structural_schema(type_: type[BaseModel]) -> dict[str, Any]:
    """The Kubernetes structural OpenAPI v3 schema of a model."""
    raw = type_.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _convert(raw, defs)


def _convert(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    node = copy.deepcopy(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        rules = [*target.get(_RULES, []), *node.get(_RULES, [])]
        node = {**copy.deepcopy(target), **node}  # the field's own description wins
        if rules:  # the type's rules and the field's (immutable) both hold
            node[_RULES] = rules
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"unions are not structural: {branches}")
        inner = _convert(branches[0], defs)
        node = {**inner, **{k: v for k, v in node.items() if k != "default" or v is not None}}
    if node.get("default", ...) is None:
        del node["default"]
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        if isinstance(node.get(key), int | float) and not isinstance(node[key], bool):
            node["minimum" if key == "exclusiveMinimum" else "maximum"] = node[key]
            node[key] = True
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: _convert(sub, defs) for name, sub in value.items()}
        elif key == "items" or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = _convert(value, defs)
        elif key == "additionalProperties" and value is False:
            continue  # structural schemas forbid unknown fields by pruning
        else:
            out[key] = value
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("additionalProperties", None)
    if (
        "properties" in out
        or "additionalProperties" in out
        or out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out.setdefault("type", "object")
    return out


@dataclass(frozen=True)
class Kind:
    """What a CRD needs besides its schema."""

    kind: str
    plural: str
    short_names: list[str]
    spec: type[BaseModel]
    status: type[BaseModel]
    description: str
    columns: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.plural}.{GROUP}"


def _column(
    name: str, path: str, type_: str = "string", priority: int = 0, description: str = ""
) -> dict[str, Any]:
    col: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path}
    if priority:
        col["priority"] = priority
    if description:
        col["description"] = description
    return col


_AGE = _column("Age", ".metadata.creationTimestamp", "date")

KINDS = [
    Kind(
        kind=model.KIND,
        plural=model.PLURAL,
        short_names=["am", "alpaca"],
        spec=model.AlpacaModelSpec,
        status=model.AlpacaModelStatus,
        description="An instruction-tuned LLM served over an OpenAI-compatible API by Ray Serve "
        "LLM and vLLM on GPU nodes, with its weights pulled once into a shared cache.",
        columns=[
            _column("Phase", ".status.phase", description="Stage the model is in"),
            _column("Ready", ".status.ready", description="Ready replicas / replicas"),
            _column("Endpoint", ".status.endpoint", description="OpenAI-compatible base URL"),
            _column("Source", ".spec.weights.source", priority=1, description="Weights source"),
            _column("GPUs", ".spec.resources.gpus", "integer", 1, "GPUs per replica"),
            _AGE,
        ],
    ),
    Kind(
        kind=finetune.KIND,
        plural=finetune.PLURAL,
        short_names=["aft"],
        spec=finetune.AlpacaFineTuneSpec,
        status=finetune.AlpacaFineTuneStatus,
        description="A supervised fine-tuning run with the Stanford Alpaca recipe (full FSDP or "
        "LoRA) on cluster GPUs, with checkpoints, progress and an optional AlpacaModel serving "
        "the result.",
        columns=[
            _column("Phase", ".status.phase", description="Stage of the run"),
            _column("Progress", ".status.progress.summary", description="Steps done / total"),
            _column("Loss", ".status.progress.loss", "number", description="Training loss"),
            _column("Method", ".spec.method", priority=1, description="full or lora"),
            _column("ETA", ".status.progress.eta", priority=1, description="Time left"),
            _AGE,
        ],
    ),
]


def crd(kind: Kind) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    spec_schema = structural_schema(kind.spec)
    spec_schema["description"] = kind.spec.__doc__.strip() if kind.spec.__doc__ else kind.kind
    status_schema = structural_schema(kind.status)
    status_schema["description"] = kind.status.__doc__.strip() if kind.status.__doc__ else kind.kind
    schema = {
        "type": "object",
        "description": kind.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "alpaca.dev/v1alpha1"},
            "kind": {"type": "string", "description": kind.kind},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.name},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.kind.lower(),
                "shortNames": kind.short_names,
                "categories": ["alpaca"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": kind.columns,
                }
            ],
        },
    }


def all_crds() -> list[dict[str, Any]]:
    """Every CRD this operator owns."""
    return [crd(k) for k in KINDS]


def kopf_peering_crd() -> dict[str, Any]:
    """kopf's ClusterKopfPeering (kopf.dev/v1): where operator replicas find each other, so
    that only the one with the highest priority works. Installed with our CRDs."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "clusterkopfpeerings.kopf.dev"},
        "spec": {
            "group": "kopf.dev",
            "scope": "Cluster",
            "names": {
                "kind": "ClusterKopfPeering",
                "plural": "clusterkopfpeerings",
                "singular": "clusterkopfpeering",
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "Operator replicas' keep-alives and priorities (kopf peering).",
                            "properties": {
                                "status": {
                                    "type": "object",
                                    "description": "One entry per live operator replica.",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


def all_documents() -> list[tuple[str, dict[str, Any]]]:
    """(file stem, CRD) for everything `alpaca-operator crds` writes."""
    return [(k.name, crd(k)) for k in KINDS] + [
        ("clusterkopfpeerings.kopf.dev", kopf_peering_crd())
    ]
