"""One start-up-sensitive phase at a time across the run's xdist workers.

Ray's start-up has deadlines no setting moves: the raylet aborts when its dashboard agent (a
Python process importing Ray) has not written its port file within 15 s. The serving tier starts
Ray on this machine; the node tier's upgrade tests run two Ray clusters at once in pods (vLLM
loading in one while the other serves a client). Side by side on 2 cores with no free memory,
every attempt of a serving-tier start-up missed that deadline (two fresh-clone runs, five
attempts each) although each passes alone. So the phases that start Ray here and the phases
that run two clusters on the node take this lock, an flock on a file in the run's folder that
every worker of the run shares, and the other waits: a wait of minutes, never a failure.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

LOCK = Path(
    os.environ.get(
        "ALPACA_RUN_LOCK",
        Path(__file__).resolve().parents[1] / ".pytest-tmp" / "run.lock",
    )
)
WAIT = 1200.0
"""Seconds to wait for the lock; a holder that keeps it longer is stuck, and the phase goes on
without it (the lock spares start-ups a busy machine, it must never be what fails a test)."""


def _log() -> Path:
    """Who waited for the lock and how long each held it, a line each (read by tests/timeline.py
    for the run's summary)."""
    return LOCK.with_name(LOCK.name + ".log")


def waits() -> list[tuple[float, str]]:
    """The log's entries, (when the phase asked for the lock, epoch seconds; what happened)."""
    try:
        lines = _log().read_text().splitlines()
    except FileNotFoundError:
        return []
    return [(float(when), what) for when, what in (line.split(" ", 1) for line in lines)]


@contextlib.contextmanager
def exclusive(what: str, wait: float = WAIT) -> Iterator[None]:
    """Hold the run's lock for `what` (named in a line on stderr when it had to wait)."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("a") as handle:
        asked, start = time.time(), time.monotonic()
        held = contended = False
        while not held:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
            except BlockingIOError:
                contended = True
                if time.monotonic() - start > wait:
                    break
                time.sleep(0.5)
        waited = time.monotonic() - start
        if not held:
            print(f"{what}: run's lock still held after {waited:.0f}s; going on", file=sys.stderr)
        elif contended:
            print(f"{what}: waited {waited:.0f}s for the run's lock", file=sys.stderr)
        got = time.monotonic()
        try:
            yield
        finally:
            if held:
                fcntl.flock(handle, fcntl.LOCK_UN)
            then = "held it" if held else "went on without it"
            line = f"{what}: waited {waited:.0f} s, then {then} {time.monotonic() - got:.0f} s"
            with _log().open("a") as log:
                log.write(f"{asked:.3f} {line}\n")
