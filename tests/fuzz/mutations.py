"""Mutations of a spec, each aimed at one field where it makes sense: a wrong JSON type, null, a
number at or past its bounds or written as a float, a quantity Kubernetes would not parse, a bad
enum value or pattern, a huge or unicode string, `$(VAR)` in a string, whitespace or a control
character in a source, a URL with user:password@, a missing required field, an unknown field,
a map entry of the wrong type, a list too short or too long or with a duplicate key.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from alpaca_operator.api.weights import SOURCE_PATTERN
from tests.fuzz.specs import (
    HUGE,
    JSON_VALUES,
    LABEL_KEY,
    URL_CHARS,
    Case,
    Path_,
    Schema,
    dotted,
    sources,
    strings,
    valid,
)


@dataclass(frozen=True)
class Slot:
    """A place in a spec a mutation can aim at: a present value or an absent optional field."""

    path: Path_
    node: Schema
    present: bool


def slots(value: Any, node: Schema, path: Path_ = ()) -> list[Slot]:
    """Every place in a spec, walking the value beside its schema."""
    found = [Slot(path, node, True)]
    if node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string"):
        return found
    if isinstance(value, dict) and "properties" in node:
        for name, sub in node["properties"].items():
            if name in value:
                found += slots(value[name], sub, (*path, name))
            else:
                found.append(Slot((*path, name), sub, False))
    elif isinstance(value, dict) and isinstance(node.get("additionalProperties"), dict):
        for key, item in value.items():
            found += slots(item, node["additionalProperties"], (*path, key))
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, item in enumerate(value):
            found += slots(item, node["items"], (*path, i))
    return found


def put(spec: Any, path: Path_, value: Any) -> Any:
    """spec with the value at path (set or replaced); spec itself when path is empty."""
    if not path:
        return value
    parent = spec
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value
    return spec


def other_types(node: Schema) -> st.SearchStrategy[Any]:
    """A JSON value of a type the schema does not allow."""
    kind = "int-or-string" if node.get("x-kubernetes-int-or-string") else node.get("type")
    choices = {
        "string": st.text(max_size=8),
        "integer": st.integers(-5, 100),
        "number": st.floats(allow_nan=False, allow_infinity=False).filter(
            lambda f: not f.is_integer()
        ),
        "boolean": st.booleans(),
        "array": st.lists(st.integers(0, 3), max_size=2),
        "object": st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 3), max_size=2),
    }
    allowed = {
        "int-or-string": {"string", "integer"},
        "number": {"number", "integer"},
    }.get(kind, {kind})
    return st.one_of([s for name, s in choices.items() if name not in allowed])


def numeric_edges(node: Schema) -> st.SearchStrategy[Any]:
    """Numbers at and past the schema's bounds, beyond int64, and whole or not as floats."""
    edges: list[Any] = [2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 2**53, 2**53 - 1, 0, -1]
    for key in ("minimum", "maximum"):
        if key in node:
            bound = node[key]
            edges += [bound - 1, bound, bound + 1, bound - 0.5, bound + 0.5, float(bound)]
    floats = st.floats(allow_nan=False, allow_infinity=False)
    if node.get("type") == "integer":
        whole = st.integers(-(2**60), 2**60).map(float)
        return st.one_of(st.sampled_from(edges), whole, floats)
    return st.one_of(st.sampled_from(edges), floats)


QUANTITY_EDGES = st.one_of(
    st.sampled_from(
        [
            "8\n",
            " 8",
            "8 ",
            "1e1.5",
            "1e",
            "Gi",
            ".",
            "+",
            "1Ki1",
            "1.2.3",
            "1e999",
            "1e-999",
            "1e+07",
            "1E3",
            "1e-99999999999",
            "1e9999999999999999999",
            "0x10",
            "١٢",  # Arabic digits
            "3221225471.999999999",
            "3221225471.9999999991",
            "3221225472.0000000001",
            "-4Gi",
            3.5,
            3.0,
            3221225472.0,
            3221225471.5,
            2**63,
            -(2**63) - 1,
            2**53 + 1,
            True,
            None,
        ]
    ),
    st.from_regex(r"\A[0-9]{20,80}(Gi)?\Z"),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(codec="utf-8"), max_size=8),
)
DOLLAR = st.sampled_from(
    ["$(HF_TOKEN)", "$(AWS_SECRET_ACCESS_KEY)", "$$(HF_TOKEN)", "$(", "${HOME}", "$"]
)
USERINFO = st.sampled_from(["user:hunter2@", "token@", ":@", "AKIA:secret@", "a%40b:c@", "@"])
UNICODE_SPACES = st.sampled_from(
    [
        "\u00a0",
        "\u2003",
        "\u3000",
        "\u0085",
        "\u000b",
        "\u2028",
        "\u200b",
        "\ufeff",
        "\t",
        "\n",
        " ",
    ]
)


@st.composite
def credential_urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["https", "http", "s3", "gs", "hf", "pvc", "ftp"]))
    host = draw(st.text(URL_CHARS.filter(lambda c: c != "/"), min_size=1, max_size=12))
    path = draw(st.text(URL_CHARS, max_size=12))
    return f"{scheme}://{draw(USERINFO)}{host}/{path}"


@st.composite
def bad_sources(draw: st.DrawFn, current: Any) -> str:
    """A source with whitespace, a control character, `$(VAR)` or a newline in it."""
    base = current if isinstance(current, str) else draw(sources())
    at = draw(st.integers(1, len(base)))
    odd = draw(st.one_of(UNICODE_SPACES, DOLLAR, st.characters(codec="utf-8", max_codepoint=0x9F)))
    return base[:at] + odd + base[at:]


@st.composite
def bad_strings(draw: st.DrawFn, node: Schema, current: Any) -> str:
    """A string beside the pattern, enum or length the schema asks for."""
    base = current if isinstance(current, str) else draw(strings(node))
    kind = draw(
        st.sampled_from(
            ["unicode", "huge", "dollar", "space", "newline", "too long", "empty", "case"]
        )
    )
    if kind == "unicode":
        return draw(st.text(st.characters(codec="utf-8"), min_size=1, max_size=30))
    if kind == "huge":  # replaces the value: three of them still fit in one request
        char = draw(st.sampled_from(["a", "9", "é", "\U0001f999", "/"]))
        most = HUGE // len(json.dumps(char))
        return char * draw(st.integers(most // 2, most))
    if kind == "dollar":
        at = draw(st.integers(0, len(base)))
        return base[:at] + draw(DOLLAR) + base[at:]
    if kind == "space":
        at = draw(st.integers(0, len(base)))
        return base[:at] + draw(UNICODE_SPACES) + base[at:]
    if kind == "newline":
        return base + "\n"
    if kind == "too long":
        limit = node.get("maxLength", 300)
        return (base or "a") * (limit // max(len(base), 1) + 1) + "a"
    if kind == "empty":
        return ""
    return base.upper() if base != base.upper() else base.lower() + "x"


def _value_at(spec: Any, path: Path_) -> Any:
    for part in path:
        spec = spec[part]
    return spec


def moves_at(slot: Slot, current: Any) -> list[str]:
    """The mutations that make sense at a slot."""
    node, path = slot.node, slot.path
    is_dict = slot.present and isinstance(current, dict)
    moves = ["wrong type", "null"] if path else []  # the spec itself is always an object
    if is_dict and "properties" in node:
        moves.append("unknown field")
        if node.get("required"):
            moves.append("missing required")
    if is_dict and "additionalProperties" in node:
        moves.append("map entry")
    if node.get("type") in ("integer", "number"):
        moves.append("number edge")
    if node.get("x-kubernetes-int-or-string"):
        moves.append("quantity edge")
    if node.get("type") == "string":
        moves.append("bad string")
        if node.get("pattern") == SOURCE_PATTERN:
            moves += ["credentials", "source string"]
    if node.get("type") == "array":
        moves.append("list length")
        if node.get("x-kubernetes-list-map-keys") and isinstance(current, list) and current:
            moves.append("duplicate key")
    return moves


@st.composite
def unknown_names(draw: st.DrawFn, node: Schema) -> str:
    """A field name the object does not have; printable, since the apiserver quotes the name in
    its message and escapes the rest."""
    printable = st.characters(
        codec="utf-8", categories=["L", "N", "P", "S"], exclude_characters="."
    )
    return draw(
        st.one_of(
            st.from_regex(r"\A[a-zA-Z][a-zA-Z0-9_]{0,15}\Z"),
            st.text(printable, min_size=1, max_size=10),
        ).filter(lambda name: name not in node["properties"])
    )


@st.composite
def list_lengths(draw: st.DrawFn, node: Schema) -> list[Any]:
    """A list too short (empty) or one item too long."""
    if draw(st.booleans()):
        return []
    item = draw(valid(node["items"]))
    return [copy.deepcopy(item) for _ in range(node.get("maxItems", 3) + 1)]


REPLACEMENTS: dict[str, Callable[[Schema, Any], st.SearchStrategy[Any]]] = {
    "wrong type": lambda node, _: other_types(node),
    "null": lambda node, _: st.none(),
    "number edge": lambda node, _: numeric_edges(node),
    "quantity edge": lambda node, _: QUANTITY_EDGES,
    "bad string": bad_strings,
    "credentials": lambda node, _: credential_urls(),
    "source string": lambda node, current: bad_sources(current),
    "list length": lambda node, _: list_lengths(node),
}
"""The mutations that replace the value at their place: what they draw it from."""


@st.composite
def mutate(draw: st.DrawFn, case: Case, schema: Schema) -> Case:
    """The case with one more mutation: a kind of mutation first (each as likely, so a rare
    kind such as a URL with credentials is drawn as often as a common one), then a place in the
    spec where it makes sense."""
    spec = copy.deepcopy(case.spec)
    where: dict[str, list[tuple[Slot, Any]]] = {}
    for slot in slots(spec, schema):
        current = _value_at(spec, slot.path) if slot.present else None
        for move in moves_at(slot, current):
            where.setdefault(move, []).append((slot, current))
    move = draw(st.sampled_from(sorted(where)))
    slot, current = draw(st.sampled_from(where[move]))
    node, at = slot.node, slot.path
    if move in REPLACEMENTS:
        spec = put(spec, at, draw(REPLACEMENTS[move](node, current)))
    elif move == "unknown field":
        at = (*at, draw(unknown_names(node)))
        put(spec, at, draw(JSON_VALUES))
    elif move == "map entry":
        at = (*at, draw(LABEL_KEY))
        put(spec, at, draw(st.one_of(other_types(node["additionalProperties"]), st.none())))
    elif move == "missing required":
        at = (*at, draw(st.sampled_from(sorted(node["required"]))))
        current.pop(at[-1], None)
    else:  # duplicate key: a copy of one of the items, appended
        at = (*at, len(current))
        current.append(copy.deepcopy(draw(st.sampled_from(current))))
    return Case(case.kind, spec, [*case.mutations, (move, dotted(at))])
