"""Condition reasons are API (users, Events, the Argo CD health checks read them): each is a
named constant in conditions.py, CamelCase, unique, and no module spells one inline."""

from __future__ import annotations

import ast
import re
import typing
from pathlib import Path

import alpaca_operator
from alpaca_operator import conditions as cond
from alpaca_operator.api.finetune import FineTunePhase
from alpaca_operator.api.model import ModelPhase
from alpaca_weights import contract

PACKAGE = Path(alpaca_operator.__file__).parent
CONDITIONS = PACKAGE / "conditions.py"
CAMEL_CASE = re.compile(r"^[A-Z][A-Za-z0-9]*$")
TYPE_CONSTANTS = {
    "ACCEPTED",
    "CAPACITY",
    "WEIGHTS",
    "SERVING",
    "READY",
    "UPGRADING",
    "TRAINING",
    "SUCCEEDED",
    "SERVED",
}
# Phases are not reasons, though some share a word with one (Downloading, Running, ...).
PHASES = set(typing.get_args(ModelPhase)) | set(typing.get_args(FineTunePhase))
# Where a call takes its reason: Verdict(status, reason, message), Event(type, reason, message),
# set_condition(conditions, type, status, reason, ...).
REASON_ARGUMENT = {"Verdict": 1, "Event": 1, "set_condition": 3}


def reason_constants() -> dict[str, str]:
    """Every module-level `NAME = "Value"` in conditions.py that is not a condition type."""
    out = {}
    for node in ast.parse(CONDITIONS.read_text()).body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
            and node.targets[0].id not in TYPE_CONSTANTS
        ):
            out[node.targets[0].id] = node.value.value
    return out


def test_condition_types_are_the_ones_declared():
    assert {getattr(cond, n) for n in TYPE_CONSTANTS} == set(
        cond.MODEL_CONDITIONS + cond.FINETUNE_CONDITIONS
    )
    assert set(cond.REASONS_OF) == set(cond.MODEL_CONDITIONS + cond.FINETUNE_CONDITIONS)


def test_every_reason_constant_is_camel_case_and_unique():
    constants = reason_constants()
    assert len(constants) > 40
    bad = {name: value for name, value in constants.items() if not CAMEL_CASE.match(value)}
    assert not bad
    assert len(set(constants.values())) == len(constants), "two constants, one reason"
    assert not set(constants.values()) & set(contract.REASONS), "the weights CLI's are its own"
    assert all(CAMEL_CASE.match(r) for r in contract.REASONS)


def test_every_reason_belongs_to_a_condition_type_or_an_event():
    constants = set(reason_constants().values())
    grouped = set().union(*cond.REASONS_OF.values())
    assert constants == (grouped | cond.EVENT_REASONS) - cond.FILL_FAILURES
    assert set(contract.REASONS) == cond.FILL_FAILURES and grouped >= cond.FILL_FAILURES
    assert grouped >= cond.FAILURE_REASONS and grouped >= cond.TIMEOUT_REASONS
    assert not cond.FAILURE_REASONS & cond.TIMEOUT_REASONS


def test_reason_values_do_not_change():
    """They are API: a rename breaks users' alerts and the Argo CD health checks."""
    assert sorted(reason_constants().values()) == sorted(
        [
            "ApiRefused",
            "SpecValid",
            "InvalidSpec",
            "ForbiddenByPolicy",
            "NodePoolCRDMissing",
            "NodePoolCreating",
            "WaitingForNodePool",
            "NodePoolReady",
            "NodePoolRejected",
            "CPUOnly",
            "WaitingForNodes",
            "InsufficientGPU",
            "NodesAvailable",
            "CapacityTimeout",
            "CacheCreating",
            "FillPending",
            "Downloading",
            "DownloadRetrying",
            "Converting",
            "Recovering",
            "Verifying",
            "CacheVerifying",
            "CacheFilled",
            "CacheExpanding",
            "CacheExpansionRefused",
            "CacheNotShrunk",
            "FillFailed",
            "WeightsTimeout",
            "KubeRayMissing",
            "WaitingForWeights",
            "Deploying",
            "WaitingForRayCluster",
            "EngineLoading",
            "ServeDeployFailed",
            "Serving",
            "ServingTimeout",
            "StagesPending",
            "Ready",
            "Suspended",
            "Queued",
            "JobCreating",
            "WaitingForPods",
            "Running",
            "Finishing",
            "Completed",
            "TrainingFailed",
            "NotFinished",
            "Succeeded",
            "WaitingForTraining",
            "ModelCreated",
            "RayClusterRecreated",
            "RayClusterRescaled",
            "UpToDate",
            "WaitingForCapacity",
            "NewClusterStarting",
            "SwitchingTraffic",
            "RecreatingWithOutage",
        ]
    )


# --- no reason spelled inline -----------------------------------------------------------


def _is_text(node: ast.AST) -> bool:
    return isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.Constant) and isinstance(node.value, str)
    )


def _texts(node: ast.AST) -> list[ast.AST]:
    """The node if it is a string, or the strings of a tuple, list or set."""
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [e for e in node.elts if _is_text(e)]
    return [node] if _is_text(node) else []


def _is_reason(node: ast.AST) -> bool:
    """`reason`, `x.reason`, `x["reason"]` or `x.get("reason")`."""
    if isinstance(node, ast.Name):
        return node.id == "reason"
    if isinstance(node, ast.Attribute):
        return node.attr == "reason"
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "reason"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        first = node.args[0] if node.args else None
        return (
            node.func.attr == "get" and isinstance(first, ast.Constant) and first.value == "reason"
        )
    return False


def _callee(node: ast.Call) -> str:
    func = node.func
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")


def inline_reasons(source: str, known: set[str]) -> list[tuple[int, str]]:
    """(line, code) of each reason written as a literal: a Verdict's, Event's or condition's
    reason argument, a `reason=` keyword, a comparison with a reason, or any string that is a
    known reason's value (a reason in a table)."""
    found: list[ast.AST] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            index = REASON_ARGUMENT.get(_callee(node))
            if index is not None and len(node.args) > index:
                found += _texts(node.args[index])
            found += [k.value for k in node.keywords if k.arg == "reason" and _is_text(k.value)]
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(_is_reason(o) for o in operands):
                found += [t for o in operands if not _is_reason(o) for t in _texts(o)]
        elif isinstance(node, ast.Assign) and any(_is_reason(t) for t in node.targets):
            found += _texts(node.value)
        elif isinstance(node, ast.Constant) and node.value in known:
            found.append(node)
    return sorted({(n.lineno, ast.unparse(n)) for n in found})


def _known() -> set[str]:
    return (set(reason_constants().values()) | set(contract.REASONS)) - PHASES


def test_the_check_finds_inline_reasons():
    source = """
Verdict("False", "WaitingForNodes", "m")
Verdict("False", f"{x}Timeout", "m")
Event("Normal", reason="RayClusterRescaled", message="m")
set_condition(c, "Ready", "False", "Oops", "m", 1)
if v.reason in ("Suspended", "Queued"): pass
if c["reason"] == "Nope": pass
reason = "Something"
TABLE = {"a": ("CacheVerifying", "text")}
Verdict("False", cond.WAITING_FOR_NODES, "Waiting: fine, a message")
"""
    assert [line for line, _ in inline_reasons(source, _known())] == [2, 3, 4, 5, 6, 6, 7, 8, 9]


def test_no_module_spells_a_reason_inline():
    known = _known()
    found = {
        f"{path.relative_to(PACKAGE)}:{line}: {code}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != CONDITIONS
        for line, code in inline_reasons(path.read_text(), known)
    }
    assert not found, "use the constants in conditions.py:\n" + "\n".join(sorted(found))
