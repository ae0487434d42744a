"""The serve command's local Ray, started again when Ray's own start-up gives up too early.

`ray.init()` gives the raylet it starts a fixed 30 s to register with the GCS (not
configurable in Ray 2.60) and raises otherwise, leaving the GCS, raylet and their helpers
running. On a workstation or CI machine whose cores are busy that wait can run out while
nothing is wrong. In a pod the kubelet would restart the container; the local command does
the same itself: it stops what the failed attempt started and tries again after a pause that
doubles each time (as the kubelet's back-off does: the machine gets time to calm down), a
bounded number of times, saying so on stderr.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil

ATTEMPTS = 5
BACKOFF = 10.0
"""Seconds before the second attempt; doubled before each further one (10, 20, 40, 80)."""
GIVEN_UP = "timed out during startup"
"""What Ray's exception says when the raylet did not register in time (ray/_private/node.py)."""


def pause(attempt: int, backoff: float = BACKOFF) -> float:
    """Seconds to wait after failed attempt number `attempt` (from 1): `backoff`, doubled for
    each further attempt."""
    return backoff * 2 ** (attempt - 1)


def _descendants() -> dict[int, psutil.Process]:
    return {p.pid: p for p in psutil.Process().children(recursive=True)}


def stop_new_processes(before: set[int], grace: float = 5.0) -> list[int]:
    """Stop every process below this one that was not there before (SIGTERM, then SIGKILL after
    `grace` seconds); returns their pids."""
    started = [p for pid, p in _descendants().items() if pid not in before]
    for proc in started:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(started, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace)
    return [p.pid for p in started]


def init(
    ray_init: Callable[..., Any],
    attempts: int = ATTEMPTS,
    backoff: float = BACKOFF,
    **kwargs: Any,
) -> Any:
    """`ray_init(**kwargs)`, started over after Ray's start-up timeout, up to `attempts` times,
    `backoff` seconds after the first failure and twice as long after each further one; any
    other error, or the last timeout, is raised as it came."""
    for attempt in range(1, attempts + 1):
        before = set(_descendants())
        started = time.monotonic()
        try:
            return ray_init(**kwargs)
        except Exception as e:
            if GIVEN_UP not in str(e) or attempt == attempts:
                raise
            stopped = stop_new_processes(before)
            wait = pause(attempt, backoff)
            print(
                f"alpaca_serving: Ray's start-up gave up after {time.monotonic() - started:.0f}s "
                f"({str(e).split('. ')[0]}); stopped the {len(stopped)} processes it had "
                f"started, starting Ray again in {wait:.0f}s (attempt {attempt + 1} of "
                f"{attempts})",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(wait)
    raise AssertionError("unreachable")
