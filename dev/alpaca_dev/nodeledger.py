"""One node per machine, and what a node that died left behind.

A node changes things outside its folder that only one node can hold at a time (its interface
and address, iptables chains, port 53 on the node IP, the kubelet's cgroup root, the folders at
fixed paths). Two nodes on one machine — a `make demo` while `make test` runs, or a test run
started while a killed one's processes still hold the interface — would break each other, and
a node whose owner was SIGKILLed (or whose sandbox was torn down) never ran its `stop()`.

- **The lock**: `flock` on a file under /run (tmpfs: gone with the kernel state it guards at
  reboot). A node holds it from before it changes anything until it has put everything back;
  another waits for it, then says who holds it.
- **The ledger**: beside the lock, what the running node will have to put back — the host as
  it was before (`HostState`), its folder, its cgroup root, its binaries. Written before the
  first change, deleted after a clean stop. A node that takes the lock and finds a ledger knows
  its writer died: it stops that node's leftover processes (found by the folder in their
  command line, environment or working directory, and in the old cgroups), unmounts its
  folder, and puts the host back as the ledger says, before starting.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from alpaca_dev import hoststate

RUN_DIR = Path("/run/alpaca-node")


class NodeBusy(RuntimeError):
    """Another node holds this machine for longer than we would wait."""


@dataclass
class Ledger:
    pid: int
    work: str
    cgroup_root: str
    node_bins: str
    host: dict[str, object]

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Ledger | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


class MachineLock:
    """The machine's node lock; `acquire` waits up to `timeout` seconds."""

    def __init__(self, run_dir: Path = RUN_DIR) -> None:
        self.run_dir = run_dir
        self.ledger_path = run_dir / "ledger.json"
        self._fd: int | None = None

    def acquire(self, timeout: float) -> None:
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.run_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = Ledger.load(self.ledger_path)
                who = f"pid {holder.pid}, folder {holder.work}" if holder else "unknown"
                if not said and timeout > 0:
                    print(
                        f"another node runs on this machine ({who}): waiting for it",
                        file=sys.stderr,
                    )
                    said = True
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise NodeBusy(
                        f"another node runs on this machine ({who}) and did not stop within "
                        f"{timeout:.0f}s: stop it (or wait for it) and try again"
                    ) from None
                time.sleep(2)
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self, keep_ledger: bool = False) -> None:
        if self._fd is not None:
            if not keep_ledger:
                self.release_ledger()
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def release_ledger(self) -> None:
        with contextlib.suppress(OSError):
            self.ledger_path.unlink()

    def record(self, ledger: Ledger) -> None:
        ledger.save(self.ledger_path)

    def left_behind(self) -> Ledger | None:
        """The ledger of a node that died holding the lock (we hold it now), if any."""
        return Ledger.load(self.ledger_path)


def host_state_to_json(state: hoststate.HostState) -> dict[str, object]:
    return {
        "sysctls": state.sysctls,
        "chains": sorted(list(c) for c in state.chains),
        "interfaces": sorted(state.interfaces),
        "existing_paths": sorted(state.existing_paths),
    }


def host_state_from_json(data: dict[str, object]) -> hoststate.HostState:
    chains = data.get("chains") or []
    assert isinstance(chains, list)
    return hoststate.HostState(
        sysctls=dict(data.get("sysctls") or {}),  # type: ignore[call-overload]
        chains={(str(t), str(tb), str(c)) for t, tb, c in chains},
        interfaces=set(data.get("interfaces") or []),  # type: ignore[call-overload]
        existing_paths=set(data.get("existing_paths") or []),  # type: ignore[call-overload]
    )


def processes_of(work: str, cgroup_root: str) -> set[int]:
    """Processes of a node that used `work`: in its cgroups (the containers), or naming the
    folder in their command line, environment or working directory (its daemons, the shims,
    and whatever a test started against it)."""
    found: set[int] = set()
    for folder in hoststate.cgroup_dirs(cgroup_root):
        for dirpath, _, files in os.walk(folder):
            if "cgroup.procs" in files:
                with contextlib.suppress(OSError):
                    text = Path(dirpath, "cgroup.procs").read_text()
                    found.update(int(p) for p in text.split())
    needle = work.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if (
                needle in (entry / "cmdline").read_bytes()
                or needle in (entry / "environ").read_bytes()
            ):
                found.add(int(entry.name))
                continue
            cwd = os.readlink(entry / "cwd")
            if cwd == work or cwd.startswith(work + "/"):
                found.add(int(entry.name))
    found.discard(os.getpid())
    return found


def kill_all(pids: set[int], timeout: float = 30) -> list[int]:
    """SIGKILL (they are a dead node's: nothing to shut down gracefully); what still lives."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while hoststate.leftover_processes(sorted(pids)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return hoststate.leftover_processes(sorted(pids))


def recover(ledger: Ledger) -> list[str]:
    """Put back what a dead node left (processes, kube-proxy's rules, mounts, the host);
    returns what could not be."""
    if not os.path.isabs(ledger.work) or len(Path(ledger.work).parts) < 3:
        return [f"a ledger naming folder {ledger.work!r}, which no node uses"]
    problems: list[str] = []
    pids = processes_of(ledger.work, ledger.cgroup_root)
    problems += [f"process {pid}" for pid in kill_all(pids)]
    hoststate.kube_proxy_cleanup(Path(ledger.node_bins))
    problems += hoststate.unmount_folder(Path(ledger.work))
    problems += host_state_from_json(ledger.host).restore(ledger.cgroup_root)
    return problems
