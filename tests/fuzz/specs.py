"""Valid AlpacaModel and AlpacaFineTune specs, drawn from the CRD schema the API models generate:
every field's type, range, enum, pattern, length and list shape (cross-field rules aside, which
break by themselves: small numbers are drawn often, minReplicas beside maxReplicas and
tensorParallelSize beside gpus, and optional fields come and go, prompt.custom,
capacity.karpenter, lora, gpuType). Also the examples/ manifests, and the case a test judges.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

from alpaca_operator.api.base import DNS_LABEL_PATTERN, DURATION_PATTERN
from alpaca_operator.api.crd import KINDS, crd
from alpaca_operator.api.weights import SOURCE_PATTERN

REPO = Path(__file__).resolve().parents[2]
INT64_MAX = 2**63 - 1
HUGE = 800_000
"""Bytes of JSON in a huge string: three of them stay under the apiserver's 3 MiB a request."""

Schema = dict[str, Any]
Path_ = tuple[str | int, ...]


@cache
def spec_schema(kind: str) -> Schema:
    """The openAPIV3Schema of a kind's spec, as the models generate it (crds/ holds the same)."""
    (found,) = [k for k in KINDS if k.kind == kind]
    return crd(found)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


@cache
def example_specs(kind: str) -> list[dict[str, Any]]:
    """The specs of the examples/ manifests of a kind."""
    docs = [
        doc
        for path in sorted((REPO / "examples").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") == kind
    ]
    return [doc["spec"] for doc in docs]


def dotted(path: Path_) -> str:
    """spec.adapters[0].source: a path as both the apiserver and the operator write it."""
    out = "spec"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


@dataclass
class Case:
    """One spec to judge, and what was done to it."""

    kind: str
    spec: Any
    mutations: list[tuple[str, str]] = field(default_factory=list)
    """(what, field path) of each mutation, e.g. ("wrong type", "spec.resources.gpus")."""

    def __repr__(self) -> str:
        text = repr(self.spec)
        shown = text if len(text) <= 2000 else text[:2000] + f"... ({len(text)} characters)"
        return f"Case(kind={self.kind!r}, mutations={self.mutations!r}, spec={shown})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """How hypothesis prints a falsifying case: as repr, a huge string cut short."""
        printer.text(repr(self))


# --- valid values, from the schema -----------------------------------------------------------

URL_CHARS = st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-._~/%")
LABEL_KEY = st.from_regex(r"\A([a-z0-9.]{1,12}/)?[a-zA-Z0-9][-a-zA-Z0-9_.]{0,15}\Z")
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**31), 2**31),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3)
    ),
    max_leaves=6,
)
"""Any JSON value: what engine.extraArgs (x-kubernetes-preserve-unknown-fields) may hold."""
EXTRA_KEYS = st.one_of(
    st.sampled_from(["enable_prefix_caching", "max_num_seqs", "trust_remote_code", "seed"]),
    st.text(min_size=1, max_size=16),
)


@st.composite
def sources(draw: st.DrawFn) -> str:
    """A source as SOURCE_HELP describes it; sometimes with an `@` in its path (no userinfo)."""
    path = draw(st.text(URL_CHARS.filter(lambda c: c != "/"), min_size=1, max_size=12))
    path += "/" + draw(st.text(URL_CHARS, max_size=16))
    if draw(st.booleans()):
        path += "@" + draw(st.text(URL_CHARS, max_size=6))
    scheme = draw(st.sampled_from(["hf", "s3", "gs", "http", "https", "pvc", "/"]))
    return f"/{path}" if scheme == "/" else f"{scheme}://{path}"


QUANTITIES = st.one_of(
    st.sampled_from(["8", "500m", "32Gi", "4Gi", "3Gi", "3072Mi", "3G", "1.5", "2e3", "+1", "0"]),
    st.integers(0, 2**40),
    st.integers(3 * 2**30 - 2, 3 * 2**30 + 2),  # beside the head's 3Gi
    st.from_regex(r"\A[+-]?[0-9]{1,6}(\.[0-9]{0,10})?([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9])?\Z"),
    st.builds(
        lambda n, frac: f"{n}.{frac}",
        st.sampled_from([3221225471, 3221225472, 3 * 2**30 - 1]),
        st.from_regex(r"\A[0-9]{1,12}\Z"),
    ),
)
PATTERNS = {
    SOURCE_PATTERN: sources(),
    DNS_LABEL_PATTERN: st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,14}[a-z0-9])?\Z"),
    DURATION_PATTERN: st.from_regex(r"\A([0-9]{1,3}(\.[0-9])?(ms|s|m|h)){1,2}\Z"),
}


def integers(node: Schema) -> st.SearchStrategy[int]:
    """Small numbers near the minimum as often as any in range: rules compare fields."""
    low = node.get("minimum", -INT64_MAX) + (1 if node.get("exclusiveMinimum") else 0)
    high = node.get("maximum", INT64_MAX) - (1 if node.get("exclusiveMaximum") else 0)
    return st.one_of(st.integers(low, min(high, low + 8)), st.integers(low, high))


def numbers(node: Schema) -> st.SearchStrategy[float]:
    return st.floats(
        min_value=node.get("minimum"),
        max_value=node.get("maximum"),
        exclude_min=bool(node.get("exclusiveMinimum")),
        exclude_max=bool(node.get("exclusiveMaximum")),
        allow_nan=False,
        allow_infinity=False,
    )


def strings(node: Schema) -> st.SearchStrategy[str]:
    if "enum" in node:
        return st.sampled_from(node["enum"])
    pattern = node.get("pattern")
    if pattern in PATTERNS:
        return PATTERNS[pattern]
    if pattern:
        longest = node.get("maxLength", 64)
        return st.from_regex(pattern, fullmatch=True).filter(lambda s: len(s) <= longest)
    return st.text(
        st.characters(codec="utf-8"),
        min_size=node.get("minLength", 0),
        max_size=min(node.get("maxLength", 40), 40),
    )


_VALID: dict[int, st.SearchStrategy[Any]] = {}


def valid(node: Schema) -> st.SearchStrategy[Any]:
    """A value the schema allows (cross-field rules aside); one strategy per schema node (the
    schemas are cached, so a node's id is stable)."""
    if id(node) not in _VALID:
        _VALID[id(node)] = _valid(node)
    return _VALID[id(node)]


def _valid(node: Schema) -> st.SearchStrategy[Any]:
    if node.get("x-kubernetes-int-or-string"):
        return QUANTITIES
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return st.dictionaries(EXTRA_KEYS, JSON_VALUES, max_size=3)
    kind = node.get("type")
    if kind == "object" and "properties" in node:
        return objects(node)
    if kind == "object":
        return st.dictionaries(LABEL_KEY, valid(node["additionalProperties"]), max_size=3)
    if kind == "array":
        return st.lists(
            valid(node["items"]),
            min_size=node.get("minItems", 0),
            max_size=min(node.get("maxItems", 3), 3),
            unique_by=_list_key(node),
        )
    if kind == "integer":
        return integers(node)
    if kind == "number":
        return numbers(node)
    if kind == "boolean":
        return st.booleans()
    return strings(node)


def _list_key(node: Schema) -> Any:
    keys = node.get("x-kubernetes-list-map-keys")
    if not keys:
        return None
    return lambda item: tuple(item.get(k) for k in keys)


@st.composite
def objects(draw: st.DrawFn, node: Schema) -> dict[str, Any]:
    """Every required property, and each optional one half the time."""
    required = set(node.get("required", ()))
    out = {}
    for name, sub in node["properties"].items():
        if name in required or draw(st.booleans()):
            out[name] = draw(valid(sub))
    return out


@cache
def rule_fields(kind: str) -> list[re.Pattern[str]]:
    """The fields the kind's CEL rules blame (`spec.adapters[N].source`), as patterns."""
    found: list[re.Pattern[str]] = []

    def walk(node: Schema, path: str) -> None:
        for rule in node.get("x-kubernetes-validations", ()):
            blamed = re.escape(path + rule.get("fieldPath", ""))
            found.append(re.compile(blamed.replace(r"\[N\]", r"\[[0-9]+\]")))
        for name, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[N]")

    walk(spec_schema(kind), "spec")
    return found
