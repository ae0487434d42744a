"""Validation of a custom resource's spec with the API models, as a person-readable message.

The apiserver rejects most bad input through the CRD schema and its CEL rules; this is the
operator's second line (objects stored before a CRD upgrade, rules CEL cannot express). Both
judge every spec alike (tests/fuzz checks it against the real apiserver): the models carry
the same types, ranges, patterns and rules as the CRD they generate, and a spec is read the
way the apiserver decodes it (`as_decoded`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from alpaca_operator.api.base import FLOAT_INTEGER_MAX, INT64_MAX, INT64_MIN
from alpaca_operator.api.crd import structural_schema

SpecT = TypeVar("SpecT", bound=BaseModel)


@dataclass(frozen=True)
class Invalid:
    """Why a spec is invalid: the field path (spec.x.y) and what would be valid."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True)
class Valid(Generic[SpecT]):
    spec: SpecT


def _field_path(loc: tuple[int | str, ...], below: str = "") -> str:
    """spec.x[0].y from pydantic's location; `below`: a rule's field under it (`.minReplicas`)."""
    return "spec" + "".join(f"[{i}]" if isinstance(i, int) else f".{i}" for i in loc) + below


@cache
def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return structural_schema(model)


def _number(value: int | float) -> int | float:
    """A JSON number as the apiserver decodes it: an integer beyond int64 is a float64 to it
    (no integer field takes it), and a whole float64 within 2^53 (`2.0`) an integer (it passes
    as one, and is stored as `2`)."""
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        return float(value)
    if isinstance(value, float) and value.is_integer() and abs(value) <= FLOAT_INTEGER_MAX:
        return int(value)
    return value


def as_decoded(value: Any, schema: dict[str, Any]) -> Any:
    """The value as the apiserver decodes it before judging: a field set to null is dropped (no
    field of ours is nullable; a field with a default then gets it) and numbers read as int64 or
    float64 (`_number`), except where the schema keeps unknown fields as they are
    (engine.extraArgs: its values reach vLLM as written)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _number(value)
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        out = {}
        for key, item in value.items():
            sub = props.get(key) if props is not None else extra
            if item is None and sub is not None:
                continue  # an unknown field stays, null or not: the apiserver refuses it
            out[key] = as_decoded(item, sub) if isinstance(sub, dict) else item
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [as_decoded(item, schema["items"]) for item in value]
    return value


def validate_spec(spec: dict[str, Any], model: type[SpecT]) -> Valid[SpecT] | list[Invalid]:
    """The typed spec, or every problem found in it (field paths in camelCase, as in YAML)."""
    try:
        return Valid(model.model_validate(as_decoded(spec, _schema(model))))
    except ValidationError as exc:
        return [
            Invalid(
                field=_field_path(err["loc"], err["ctx"]["at"] if err["type"] == "rule" else ""),
                message=err["msg"],
            )
            for err in exc.errors(include_url=False)
        ]


def describe(problems: list[Invalid]) -> str:
    """One message listing the problems."""
    return "; ".join(str(p) for p in problems)
