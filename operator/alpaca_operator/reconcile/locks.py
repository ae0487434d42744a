"""Locks for what several objects' passes write: the weights caches of a namespace.

A cache is shared: each user adds itself to the PVC's and the fill Job's owner references,
read from the store and written back whole. Two passes of the work queue's workers over two
users of one cache could each read the owners before the other's write came back, and the
second write would drop the first user (a model left out of its cache's owners: the garbage
collector would delete the cache under it). Passes over the same namespace's caches take
turns; passes elsewhere go on. One operator replica works at a time (peering), so a lock in
the process is enough.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class KeyedLocks:
    """One lock per key, made when first asked for (a namespace's: a few bytes each)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield


CACHES = KeyedLocks()
"""Held by a pass while it reads and writes its namespace's weights caches (never nested)."""
