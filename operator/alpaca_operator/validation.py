"""Validation of a custom resource's spec with the API models, as a person-readable message.

The apiserver rejects most bad input through the CRD schema and its CEL rules; this is the
operator's second line (objects stored before a CRD upgrade, rules CEL cannot express).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

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


def validate_spec(spec: dict[str, Any], model: type[SpecT]) -> Valid[SpecT] | list[Invalid]:
    """The typed spec, or every problem found in it (field paths in camelCase, as in YAML)."""
    try:
        return Valid(model.model_validate(spec))
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
