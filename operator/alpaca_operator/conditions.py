"""Conditions in the metav1.Condition shape: pure functions over the status's list.

Condition types and reasons are named constants; messages are written for a person.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from alpaca_weights import contract as weights_contract

# Condition types, in stage order for an AlpacaModel.
ACCEPTED = "Accepted"
CAPACITY = "CapacityReady"
WEIGHTS = "WeightsReady"
SERVING = "ServingReady"
READY = "Ready"

# Reasons
SPEC_VALID = "SpecValid"
INVALID_SPEC = "InvalidSpec"
STAGES_PENDING = "StagesPending"

FAILURE_REASONS = frozenset(
    {
        INVALID_SPEC,
        "NodePoolCRDMissing",
        "KubeRayMissing",
        "InsufficientGPU",
        "NodePoolRejected",
        "FillFailed",
        "ServeDeployFailed",
    }
    # the weights CLI's reasons, when its Job failed
    | set(weights_contract.REASONS)
)
"""Reasons that need a person to change something: phase Failed and a Warning Event."""

TIMEOUT_REASONS = frozenset({"CapacityTimeout", "WeightsTimeout", "ServingTimeout"})
"""A stage waited longer than its deadline: a Warning Event; the phase stays."""

WARNING_REASONS = FAILURE_REASONS | TIMEOUT_REASONS


@dataclass(frozen=True)
class Verdict:
    """One stage's condition: status, CamelCase reason, message for a person."""

    status: str  # True, False, Unknown
    reason: str
    message: str

    @property
    def ok(self) -> bool:
        return self.status == "True"


def now() -> str:
    """The current time as the apiserver writes it (RFC 3339, seconds, UTC)."""
    return (
        datetime.datetime.now(datetime.UTC)
        .replace(microsecond=0)
        .isoformat()
        .replace("+00:00", "Z")
    )


def find(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    """The condition of a type, if present."""
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int | None,
    timestamp: str | None = None,
) -> list[dict[str, Any]]:
    """A new list with the condition set; lastTransitionTime moves only when status changes."""
    previous = find(conditions, type_)
    transition = (
        previous["lastTransitionTime"]
        if previous and previous.get("status") == status and previous.get("lastTransitionTime")
        else timestamp or now()
    )
    condition = {
        "type": type_,
        "status": status,
        "observedGeneration": generation,
        "lastTransitionTime": transition,
        "reason": reason,
        "message": message,
    }
    others = [c for c in conditions or [] if c.get("type") != type_]
    return [*others, condition]


def changed(before: dict[str, Any] | None, after: dict[str, Any]) -> bool:
    """Whether a condition moved (status or reason) between two observations."""
    return before is None or (before.get("status"), before.get("reason")) != (
        after["status"],
        after["reason"],
    )
