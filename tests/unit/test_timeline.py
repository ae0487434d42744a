"""tests/timeline.py: the run's summary names the worker that ended last first, lists its long
tests in the order they ran with their phases, and places the run lock's waits on the same clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import run_lock
from tests.timeline import _Test, summary


def test_the_worker_that_ended_last_comes_first_with_its_long_tests() -> None:
    t0 = 1_000_000.0
    tests = [
        _Test("gw0", "tests/unit/test_a.py::quick", t0, t0 + 1, {"call": 1.0}),
        _Test(
            "gw1",
            "tests/node/test_serve.py::upgrade",
            t0 + 5,
            t0 + 305,
            {"setup": 200.0, "call": 99.0, "teardown": 1.0},
        ),
        _Test("gw1", "tests/unit/test_b.py::quick", t0 + 305, t0 + 306, {"call": 0.5}),
        _Test("gw0", "tests/serving/test_app.py::chat", t0 + 2, t0 + 62, {"call": 60.0}),
    ]
    lines = summary(
        tests, [(t0 + 65.0, "the node tier's recreate: waited 40 s, then held it 90 s")]
    )
    assert lines == [
        "gw1: ends at  5:06, 2 tests, busy 300 s",
        "   0:05   300 s  tests/node/test_serve.py::upgrade  (setup 200 call 99 teardown 1)",
        "gw0: ends at  1:02, 2 tests, busy 61 s",
        "   0:02    60 s  tests/serving/test_app.py::chat  (call 60)",
        "run lock at  1:05: the node tier's recreate: waited 40 s, then held it 90 s",
    ]


def test_the_lock_logs_each_holder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tests.run_lock.LOCK", tmp_path / "run.lock")
    assert run_lock.waits() == []
    with run_lock.exclusive("a phase"):
        pass
    [(when, what)] = run_lock.waits()
    assert when > 0 and what.startswith("a phase: waited 0 s, then held it ")
