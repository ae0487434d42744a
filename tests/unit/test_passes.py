"""passes.py: one pass at a time per object, coalesced, retried with backoff, timed."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from alpaca_operator import passes as passes_module
from alpaca_operator.passes import Key, Passes

A: Key = ("AlpacaModel", "ns", "a")
B: Key = ("AlpacaModel", "ns", "b")


class Recorder:
    """A pass that records what ran, can be held open, and can fail on demand."""

    def __init__(self) -> None:
        self.runs: list[Key] = []
        self.running: dict[Key, int] = {}
        self.most_at_once: dict[Key, int] = {}
        self.gate = threading.Event()
        self.gate.set()
        self.fail: dict[Key, int] = {}
        self.lock = threading.Lock()

    def __call__(self, key: Key) -> float | None:
        with self.lock:
            self.running[key] = self.running.get(key, 0) + 1
            self.most_at_once[key] = max(self.most_at_once.get(key, 0), self.running[key])
        try:
            self.gate.wait(10)
            self.runs.append(key)
            if self.fail.get(key, 0) > 0:
                self.fail[key] -= 1
                raise RuntimeError("the apiserver said no")
            return None
        finally:
            with self.lock:
                self.running[key] -= 1


async def _settle(p: Passes, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not p.idle():
        assert time.monotonic() < deadline, "the queue never went idle"
        await asyncio.sleep(0.01)


def test_triggers_during_a_pass_cause_exactly_one_more():
    async def scenario() -> Recorder:
        rec = Recorder()
        p = Passes(rec, workers=4)
        p.start()
        rec.gate.clear()
        p.request(A)
        while not rec.running.get(A):
            await asyncio.sleep(0.01)
        for _ in range(10):  # ten events while the first pass runs
            p.request(A)
        rec.gate.set()
        await _settle(p)
        await p.stop()
        return rec

    rec = asyncio.run(scenario())
    assert rec.runs == [A, A]
    assert rec.most_at_once[A] == 1


def test_requests_for_a_queued_object_are_dropped_and_others_are_not_blocked():
    async def scenario() -> Recorder:
        rec = Recorder()
        p = Passes(rec, workers=1)
        for _ in range(5):
            p.request(A)
        p.request(B)
        p.start()
        await _settle(p)
        await p.stop()
        return rec

    rec = asyncio.run(scenario())
    assert rec.runs == [A, B]


def test_a_failed_pass_is_retried_with_backoff(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(passes_module, "BACKOFF_FIRST", 0.05)

    async def scenario() -> Recorder:
        rec = Recorder()
        rec.fail[A] = 2
        p = Passes(rec, workers=2)
        p.start()
        p.request(A)
        deadline = time.monotonic() + 10
        while len(rec.runs) < 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await _settle(p)
        await p.stop()
        assert not p._failures  # success forgets the failures
        return rec

    rec = asyncio.run(scenario())
    assert rec.runs == [A, A, A]


def test_a_timed_request_keeps_the_earliest_and_forget_drops_it():
    async def scenario() -> Recorder:
        rec = Recorder()
        p = Passes(rec, workers=1)
        p.start()
        p.request_after(A, 30)
        p.request_after(A, 0.05)  # sooner wins
        p.request_after(A, 60)  # later is ignored
        p.request_after(B, 0.05)
        p.forget(B)
        await asyncio.sleep(0.3)
        await _settle(p)
        assert not p._timers
        await p.stop()
        return rec

    rec = asyncio.run(scenario())
    assert rec.runs == [A]


def test_every_worker_runs_a_pass_at_once_beyond_the_default_executor():
    """Passes wait mostly on the apiserver: twelve workers hold twelve passes at once (asyncio's
    default executor would cap them at the CPUs + 4)."""
    workers = 12
    barrier = threading.Barrier(workers + 1, timeout=20)

    def run(key: Key) -> float | None:
        barrier.wait()  # each pass waits until all twelve are in
        return None

    async def scenario() -> None:
        p = Passes(run, workers=workers)
        p.start()
        for i in range(workers):
            p.request(("AlpacaModel", "ns", f"m{i}"))
        await asyncio.to_thread(barrier.wait)  # raises BrokenBarrierError if fewer ran
        await _settle(p)
        await p.stop()

    asyncio.run(scenario())
