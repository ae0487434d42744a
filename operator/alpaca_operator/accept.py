"""Accepting a custom resource: validate its spec and compute the status and Events that follow.

Pure: the handlers pass in what kopf gives them and apply what comes back.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from alpaca_operator import conditions as cond
from alpaca_operator.validation import Invalid, Valid, describe, validate_spec

Policy = Callable[[Any], list[Invalid]]
"""The typed spec -> what of it the operator's policy does not allow (policy.py)."""


@dataclass(frozen=True)
class Event:
    """An Event to post on the object."""

    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass
class Outcome:
    """What a reconcile decided: a status patch and the Events to post."""

    status: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    requeue_at: datetime.datetime | None = None  # the next deadline: a pass is due then
    node_selector: dict[str, str] | None = None
    """Set when the object's state depends on existing nodes (a model on existing GPU nodes):
    the selector a node must match for its changes to concern the object."""


def transition_events(
    before: list[dict[str, Any]] | None, after: list[dict[str, Any]]
) -> list[Event]:
    """One Event for every condition whose status or reason moved, except those that would only
    repeat another or say nothing happened: Ready while it stays not true (it names the stage
    whose own Event says why; its becoming true, and its loss, are posted), Upgrading while no
    upgrade runs (each step of one, and its end, are posted), and Accepted on a new object's first
    status (a valid spec is the rule; a refused one is posted). A new model gets one Event per
    stage, not five (1,000 models applied at once: 2,000 fewer writes)."""
    first = not before

    def worth_an_event(was: dict[str, Any] | None, c: dict[str, Any]) -> bool:
        if not cond.changed(was, c):
            return False
        if c["type"] in (cond.READY, cond.UPGRADING) and "True" not in (
            c["status"],
            (was or {}).get("status"),
        ):
            return False
        return not (first and c["type"] == cond.ACCEPTED and c["status"] == "True")

    return [
        Event(
            "Warning" if c["reason"] in cond.WARNING_REASONS else "Normal",
            c["reason"],
            f"{c['type']}={c['status']}: {c['message']}",
        )
        for c in after
        if worth_an_event(cond.find(before, c["type"]), c)
    ]


_NOT = {cond.INVALID_SPEC: "invalid", cond.FORBIDDEN_BY_POLICY: "not allowed"}


def _verdict(
    spec: dict[str, Any], spec_model: type[BaseModel], policy: Policy | None
) -> tuple[str, str, str]:
    """The Accepted condition's status, reason and message."""
    result = validate_spec(spec, spec_model)
    if not isinstance(result, Valid):
        return "False", cond.INVALID_SPEC, f"Fix the spec: {describe(result)}"
    refused = policy(result.spec) if policy is not None else []
    if refused:
        return (
            "False",
            cond.FORBIDDEN_BY_POLICY,
            f"Not allowed by the operator's policy: {describe(refused)}",
        )
    return "True", cond.SPEC_VALID, "The spec is valid."


def accept(
    spec: dict[str, Any],
    spec_model: type[BaseModel],
    generation: int | None,
    status: dict[str, Any],
    accepted_phase: str,
    pending_message: str | None = None,
    policy: Policy | None = None,
) -> Outcome:
    """Validate the spec and hold it to the operator's policy; set Accepted (and, while stages
    are pending, Ready) and the phase."""
    before = status.get("conditions") or []
    accepted, reason, message = _verdict(spec, spec_model, policy)
    conditions = cond.set_condition(before, cond.ACCEPTED, accepted, reason, message, generation)
    phase = accepted_phase if accepted == "True" else "Failed"
    if pending_message is not None:
        ready_status, ready_reason, ready_message = (
            ("False", cond.STAGES_PENDING, pending_message)
            if phase != "Failed"
            else ("False", reason, f"The spec is {_NOT[reason]}; see the Accepted condition.")
        )
        conditions = cond.set_condition(
            conditions, cond.READY, ready_status, ready_reason, ready_message, generation
        )
    return Outcome(
        status={"phase": phase, "observedGeneration": generation, "conditions": conditions},
        events=transition_events(before, conditions),
    )
