"""Cleaning up after vLLM engines removes only orphaned /dev/shm files: never those of an
engine still running beside us (a CI run lost an engine to exactly that)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from alpaca_dev.shm import engine_shm_files, remove_orphaned_shm

HOLDER = """
import sys, time
from multiprocessing import shared_memory
shm = shared_memory.SharedMemory(name=sys.argv[1], create=True, size=4096)
print("ready", flush=True)
sys.stdin.read()
shm.close(); shm.unlink()
"""


def test_a_file_a_live_process_maps_stays_and_an_orphan_goes():
    live, orphan = f"psm_{uuid.uuid4().hex[:8]}", f"psm_{uuid.uuid4().hex[:8]}"
    Path("/dev/shm", orphan).write_bytes(b"left by a killed engine")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, live],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert {live, orphan} <= engine_shm_files()
        remove_orphaned_shm({live, orphan})
        assert Path("/dev/shm", live).exists()
        assert not Path("/dev/shm", orphan).exists()
    finally:
        holder.communicate("", timeout=30)
        Path("/dev/shm", orphan).unlink(missing_ok=True)
    assert not Path("/dev/shm", live).exists()
