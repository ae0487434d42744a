"""Where a run's time went: at the end of a run, each xdist worker's long tests in the order they
ran (start, setup/call/teardown) and the run lock's waits (`tests/run_lock.py`).

`--durations` says which tests are slow, not which of them the run waited for: the run ends when
its last worker does, and a test on a worker that finished early cost the run nothing. This says
which worker ended last and what it ran, so a cut of the CI time starts from the critical path.
The hooks are imported by tests/conftest.py; in an xdist run the controller gets every worker's
reports and prints the summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from tests import run_lock

LONG = 30.0
"""Seconds: a test that took at least this long (all phases) is listed."""


@dataclass
class _Test:
    worker: str
    nodeid: str
    start: float = float("inf")
    stop: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)


_tests: dict[tuple[str, str], _Test] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    node = getattr(report, "node", None)  # xdist: the worker that ran it
    worker = node.gateway.id if node is not None else "main"
    test = _tests.setdefault((worker, report.nodeid), _Test(worker, report.nodeid))
    test.start, test.stop = min(test.start, report.start), max(test.stop, report.stop)
    test.phases[report.when] = report.duration


def summary(tests: list[_Test], waits: list[tuple[float, str]]) -> list[str]:
    """The summary's lines: per worker (the one that ended last first), its end, its busy time and
    its tests of LONG seconds or more; then the lock's waits."""
    if not tests:
        return []
    t0 = min(t.start for t in tests)
    workers: dict[str, list[_Test]] = {}
    for t in sorted(tests, key=lambda t: t.start):
        workers.setdefault(t.worker, []).append(t)
    lines = []
    for worker, mine in sorted(workers.items(), key=lambda kv: -max(t.stop for t in kv[1])):
        end = max(t.stop for t in mine) - t0
        busy = sum(sum(t.phases.values()) for t in mine)
        lines.append(f"{worker}: ends at {_clock(end)}, {len(mine)} tests, busy {busy:.0f} s")
        for t in mine:
            took = sum(t.phases.values())
            if took >= LONG:
                phases = " ".join(
                    f"{when} {t.phases[when]:.0f}"
                    for when in ("setup", "call", "teardown")
                    if t.phases.get(when, 0.0) >= 1.0
                )
                lines.append(f"  {_clock(t.start - t0)} {took:5.0f} s  {t.nodeid}  ({phases})")
    lines += [f"run lock at {_clock(when - t0)}: {what}" for when, what in sorted(waits)]
    return lines


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60):2d}:{int(seconds % 60):02d}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _tests or hasattr(terminalreporter.config, "workerinput"):
        return
    terminalreporter.section("where the run's time went (tests/timeline.py)")
    for line in summary(list(_tests.values()), run_lock.waits()):
        terminalreporter.write_line(line)
