"""tests/run_lock.py: the serving tier's Ray start-ups and the node tier's two-cluster
upgrades run on different xdist workers (processes); the lock makes one wait for the other,
and a holder that never lets go delays the other phase but does not fail it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.run_lock import exclusive

ROOT = Path(__file__).resolve().parents[2]
OTHER = """
import sys, time
from tests.run_lock import exclusive
print("trying", flush=True)
with exclusive("the other worker", wait=float(sys.argv[1])):
    print("in at", time.monotonic(), flush=True)
"""


def _other_worker(lock: Path, wait: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", OTHER, str(wait)],
        cwd=ROOT,
        env=dict(os.environ, ALPACA_RUN_LOCK=str(lock)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _entered(out: str) -> float:
    """When the other worker got in (CLOCK_MONOTONIC: one clock for every process)."""
    lines = out.splitlines()
    assert lines[:1] == ["trying"] and lines[1].startswith("in at "), out
    return float(lines[1].removeprefix("in at "))


def test_the_other_worker_gets_in_only_once_the_holder_lets_go(tmp_path: Path, monkeypatch):
    lock = tmp_path / "run.lock"
    monkeypatch.setattr("tests.run_lock.LOCK", lock)
    with exclusive("this worker"):
        other = _other_worker(lock, wait=600)
        assert other.stdout is not None
        assert other.stdout.readline() == "trying\n"
        time.sleep(0.5)
        released = time.monotonic()
    out, err = other.communicate(timeout=60)
    assert other.returncode == 0, err
    assert _entered("trying\n" + out) >= released


def test_a_holder_that_never_lets_go_delays_but_does_not_fail(tmp_path: Path, monkeypatch):
    lock = tmp_path / "run.lock"
    monkeypatch.setattr("tests.run_lock.LOCK", lock)
    with exclusive("a stuck holder"):
        other = _other_worker(lock, wait=0.5)
        out, err = other.communicate(timeout=60)
    assert other.returncode == 0, err
    _entered(out)
    assert "the other worker: run's lock still held after" in err, err


def test_free_means_no_wait(tmp_path: Path):
    out, err = _other_worker(tmp_path / "run.lock", wait=600).communicate(timeout=60)
    _entered(out)
    assert err == "", err
