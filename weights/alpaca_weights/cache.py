"""The cache's identity and name (from `contract`, shared with the operator), and the lock that
lets one fill run per cache."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alpaca_weights import errors, manifest
from alpaca_weights.contract import cache_key, fill_job_name, identity, key_of  # noqa: F401


@contextmanager
def fill_lock(dest: Path, poll: float = 2.0) -> Iterator[None]:
    """Hold the cache's exclusive lock (flock on `.alpaca/lock`); a second fill waits here."""
    lock_path = manifest.state_dir(dest) / "lock"
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(lock_path, "a+")  # noqa: SIM115 - held for the whole fill
    except OSError as exc:
        raise errors.from_local_os_error(exc, str(lock_path)) from exc
    try:
        waited = False
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    print(f"[alpaca-weights] another fill holds {lock_path}; waiting", flush=True)
                    waited = True
                time.sleep(poll)
        yield
    finally:
        fh.close()
