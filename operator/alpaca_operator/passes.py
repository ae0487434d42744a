"""Reconcile passes as a work queue: one pass at a time per object, coalesced, retried with
backoff per object, rescheduled for the object's own next deadline.

Every trigger (kopf's create/update/resume, a child's or a node's event, a deadline) only asks
for a pass. A request for an object already queued is dropped; one for an object whose pass is
running makes exactly one more pass after it. A fixed number of workers take objects in the
order they were asked for, so a long pass never blocks the others and nothing starves.
Everything here runs on the operator's event loop; the passes themselves run in threads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

Key = tuple[str, str, str]  # (kind, namespace, name)
Pass = Callable[[Key], float | None]
"""Runs one pass (in a worker thread); returns seconds until the object's next deadline, if any."""

log = logging.getLogger(__name__)

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 300.0


@dataclass
class Passes:
    run: Pass
    workers: int = 4
    _queue: asyncio.Queue[Key] = field(default_factory=asyncio.Queue)
    _queued: set[Key] = field(default_factory=set)
    _running: set[Key] = field(default_factory=set)
    _again: set[Key] = field(default_factory=set)
    _timers: dict[Key, asyncio.TimerHandle] = field(default_factory=dict)
    _failures: dict[Key, int] = field(default_factory=dict)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _threads: ThreadPoolExecutor | None = None
    done: int = 0  # passes finished (for tests and metrics)

    def start(self) -> None:
        # threads of their own: asyncio.to_thread's default executor has min(32, CPUs + 4)
        # threads (6 on two cores), shared with kopf, so more workers than that would wait
        self._threads = ThreadPoolExecutor(self.workers, thread_name_prefix="pass")
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]

    async def stop(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)

    def request(self, key: Key) -> None:
        """Ask for a pass over `key` as soon as a worker is free."""
        if key in self._running:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def request_after(self, key: Key, seconds: float) -> None:
        """Ask for a pass in `seconds`, unless one is already due sooner."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(0.0, seconds)
        held = self._timers.get(key)
        if held is not None and held.when() <= when:
            return
        if held is not None:
            held.cancel()
        self._timers[key] = loop.call_at(when, self._due, key)

    def forget(self, key: Key) -> None:
        """The object is gone: no timers, no backoff."""
        handle = self._timers.pop(key, None)
        if handle is not None:
            handle.cancel()
        self._failures.pop(key, None)

    def _due(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.request(key)

    def idle(self) -> bool:
        return not (self._queued or self._running or self._again)

    def depth(self) -> int:
        """Objects waiting for a pass or in one (timers aside): the work queue's depth."""
        return len(self._queued | self._running | self._again)

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._running.add(key)
            try:
                loop = asyncio.get_running_loop()
                next_in = await loop.run_in_executor(self._threads, self.run, key)
            except Exception:
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (failures - 1))
                log.exception("pass over %s %s/%s failed; again in %.0f s", *key, delay)
                self.request_after(key, delay)
            else:
                self._failures.pop(key, None)
                if next_in is not None:
                    self.request_after(key, next_in)
            finally:
                self._running.discard(key)
                self.done += 1
                if key in self._again:
                    self._again.discard(key)
                    self.request(key)
