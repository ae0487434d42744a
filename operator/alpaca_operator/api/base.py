"""Building blocks shared by every API type: the base model, Kubernetes scalar types, conditions."""

from __future__ import annotations

import decimal
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

GROUP = "alpaca.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One `x-kubernetes-validations` entry (a CEL rule checked by the apiserver)."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


@dataclass(frozen=True)
class Rule:
    """A rule over the fields of one object, checked on both sides: by the apiserver as a CEL
    rule (`x-kubernetes-validations` on the object's schema) and by the operator in Python."""

    cel: str
    message: str
    field_path: str
    """The field the rule blames, relative to the object (CEL's fieldPath: `.minReplicas`)."""
    holds: Callable[[Any], bool]
    """The same rule over the typed object."""


def rule_error(message: str, field_path: str) -> PydanticCustomError:
    """A validation error for the field at `field_path` below the object that raises it
    (validation.validate_spec appends it to the object's path)."""
    return PydanticCustomError("rule", "{message}", {"message": message, "at": field_path})


def _rules_schema(schema: dict[str, Any], cls: type) -> None:
    rules: tuple[Rule, ...] = getattr(cls, "RULES", ())
    if rules:
        schema["x-kubernetes-validations"] = [cel(r.cel, r.message, r.field_path) for r in rules]


class ApiModel(BaseModel):
    """Base of every API type: camelCase on the wire, unknown fields rejected, JSON types taken
    as the apiserver takes them (strict: no "2" for 2, no 1 for true), and the model's RULES
    checked on both sides."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        strict=True,
        json_schema_extra=_rules_schema,
    )

    RULES: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _rules_hold(self) -> Self:
        for rule in self.RULES:
            if not rule.holds(self):
                raise rule_error(rule.message, rule.field_path)
        return self

    def to_wire(self) -> dict[str, Any]:
        """The object as the apiserver stores it (camelCase, unset optional fields left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def immutable(what: str, remedy: str) -> dict[str, list[dict[str, str]]]:
    """Schema extra for a field that cannot change after creation (a CEL transition rule)."""
    return {
        "x-kubernetes-validations": [
            cel("self == oldSelf", f"{what} cannot change once created: {remedy}")
        ]
    }


def defaulted(
    model: type[ApiModel],
    description: str,
    *,
    frozen: dict[str, Any] | None = None,
    **overrides: Any,
) -> Any:
    """A nested object field that defaults to the model's defaults, on both sides.

    The CRD gets the full default object (not `{}`), so the apiserver fills the nested values in
    (`kubectl get -o yaml` shows the values in effect) and CEL rules always see them. `frozen`:
    an `immutable(...)` schema extra.
    """
    return Field(
        default_factory=lambda: model(**overrides),
        description=description,
        json_schema_extra={"default": model(**overrides).to_wire(), **(frozen or {})},
    )


# --- Kubernetes scalar types -------------------------------------------------------------

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FLOAT_INTEGER_MAX = 2**53 - 1
"""The largest whole number the apiserver takes as an integer when JSON writes it as a float
(`2.0`); beyond it a float64 holds no exact integer."""


QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?[0-9]{1,2}))?$"
)
"""Kubernetes' quantity syntax with the exponent an integer of at most two digits: its own
OpenAPI pattern allows any exponent, `1e1.5` that ParseQuantity then refuses, and `1e-99999999999`
that keeps ParseQuantity (behind CEL's quantity()) computing for minutes."""
QUANTITY_MAX_LENGTH = 64
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)


def _quantity(value: object) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) <= FLOAT_INTEGER_MAX:
        value = int(value)  # 2.0: a whole number the apiserver takes as the integer 2
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("must be a Kubernetes quantity such as 8, 500m, 32Gi")
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise ValueError("must be a Kubernetes quantity: an integer within int64, or a string")
    text = str(value)
    if len(text) > QUANTITY_MAX_LENGTH or not _QUANTITY_RE.fullmatch(text):
        shown = text if len(text) <= QUANTITY_MAX_LENGTH else text[:QUANTITY_MAX_LENGTH] + "..."
        raise ValueError(f"{shown!r} is not a Kubernetes quantity (for example 8, 500m, 32Gi)")
    return text


Quantity = Annotated[
    str,
    BeforeValidator(_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "maxLength": QUANTITY_MAX_LENGTH,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
"""A Kubernetes resource quantity (`8`, `500m`, `32Gi`), an int or a string on the wire."""


def parse_cpu(quantity: str) -> float:
    """CPUs in a CPU quantity (`2` -> 2.0, `500m` -> 0.5, `1.5` -> 1.5)."""
    text = _quantity(quantity)
    if text.endswith("m"):
        return float(text[:-1]) / 1000
    return float(text)


_SUFFIXES = {
    **{s: decimal.Decimal(1024**i) for i, s in enumerate(("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{s: decimal.Decimal(1000**i) for i, s in enumerate(("", "k", "M", "G", "T", "P", "E"))},
    "m": decimal.Decimal("1e-3"),
    "u": decimal.Decimal("1e-6"),
    "n": decimal.Decimal("1e-9"),
}
_EXACT = decimal.Context(prec=200)  # 64 characters, exponents of two digits: exact


def quantity_value(quantity: str) -> decimal.Decimal:
    """The exact value of a quantity in base units, as Kubernetes' ParseQuantity reads it (and
    CEL's quantity() compares it): rounded up, away from zero, to a multiple of 1n
    (`3Gi` -> 3221225472, `500M` -> 500000000, `1.0000000001` -> 1.000000001)."""
    text = _quantity(quantity)
    number = re.match(r"^[+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?", text)
    assert number is not None
    value = _EXACT.multiply(decimal.Decimal(number.group(0)), _SUFFIXES[text[number.end() :]])
    return value.quantize(decimal.Decimal("1e-9"), rounding=decimal.ROUND_UP, context=_EXACT)


DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
Duration = Annotated[str, Field(pattern=DURATION_PATTERN)]
"""A duration in Go's notation: `90s`, `15m`, `1h30m`."""

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DnsLabel = Annotated[str, Field(pattern=DNS_LABEL_PATTERN, max_length=63)]
"""A DNS-1123 label: lower-case letters, digits and '-', at most 63 characters."""


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration string (`1h30m` -> 5400.0)."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration such as 90s, 15m or 1h30m")
    return sum(float(n) * units[u] for n, u in parts)


# --- Conditions -------------------------------------------------------------------------

ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """One observation of an aspect of the object, in the shape of metav1.Condition."""

    type: str = Field(
        description="What this condition is about, in CamelCase (for example WeightsReady).",
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        max_length=316,
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="The metadata.generation of the object this condition was computed from.",
    )
    last_transition_time: datetime = Field(
        strict=False,  # an RFC 3339 string on the wire
        description="When the status last changed from one value to another.",
    )
    reason: str = Field(
        description="A CamelCase word for why the condition is in its status, for tools and alerts.",
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        min_length=1,
        max_length=1024,
    )
    message: str = Field(
        default="",
        max_length=32768,
        description="What happened and what a person can do about it.",
    )
