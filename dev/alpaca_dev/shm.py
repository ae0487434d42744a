"""The /dev/shm files vLLM's engine processes make, and cleaning up after engines we stopped:
a killed engine leaves its files behind (2 GB from a dozen runs, once)."""

from __future__ import annotations

import os
from pathlib import Path


def engine_shm_files() -> set[str]:
    """The /dev/shm files vLLM's engine processes make (a killed engine leaves them behind)."""
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith(("psm_", "sem.mp-"))}
    except OSError:
        return set()


def _mapped_shm_files() -> set[str]:
    """The /dev/shm files some live process still has mapped."""
    out: set[str] = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/maps") as fh:
                for line in fh:
                    if "/dev/shm/" in line:
                        out.add(line.rsplit("/dev/shm/", 1)[1].split()[0])
        except OSError:  # gone, or not ours to read
            continue
    return out


def remove_orphaned_shm(candidates: set[str]) -> None:
    """Remove those of `candidates` no live process maps: what engines we stopped left, never
    the files of an engine still running beside us (another test, another demo)."""
    for name in candidates - _mapped_shm_files():
        Path("/dev/shm", name).unlink(missing_ok=True)
