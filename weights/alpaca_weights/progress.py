"""Progress of a fill (bytes done of total, phase), published where the operator reads it.

Three places, every `interval` seconds and at each phase change:
- `<cache>/.alpaca/progress.json` (written atomically): anyone mounting the cache can read it;
- the fill Job's annotations `alpaca.dev/bytes-done` and `alpaca.dev/bytes-total` (and
  `alpaca.dev/fill-phase`), merge-patched through the in-cluster API when the Job's name is in
  `ALPACA_WEIGHTS_JOB` (the operator's observer reads these for the WeightsReady message),
  with the pod's service account (mounted at the usual path, or `ALPACA_SERVICE_ACCOUNT_DIR`),
  whose Role allows `get` and `patch` on that one Job and nothing else;
- a log line on stdout.
Publishing is best effort: a failed patch is logged once and never fails the fill.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alpaca_weights import manifest
from alpaca_weights.contract import ANNOTATION_DONE, ANNOTATION_PHASE, ANNOTATION_TOTAL, JOB_ENV

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass
class Progress:
    """Thread-safe counters the downloaders add to; `last_change` feeds the stall watchdog."""

    total: int = 0
    done: int = 0
    phase: str = "listing"
    files_total: int = 0
    files_done: int = 0
    last_change: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            self.last_change = time.monotonic()

    def file_done(self) -> None:
        with self._lock:
            self.files_done += 1

    def set_phase(self, phase: str) -> None:
        with self._lock:
            self.phase = phase
            self.last_change = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "phase": self.phase,
                "bytesDone": self.done,
                "bytesTotal": self.total,
                "filesDone": self.files_done,
                "filesTotal": self.files_total,
                "updated": time.time(),
            }


def job_patcher(env: dict[str, str]) -> Callable[[dict[str, Any]], None] | None:
    """A function patching the fill Job's progress annotations, when running in a cluster Job."""
    job = env.get(JOB_ENV)
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
    account = Path(env.get("ALPACA_SERVICE_ACCOUNT_DIR") or SERVICE_ACCOUNT)
    token_file = account / "token"
    if not (job and host and token_file.exists()):
        return None
    namespace = env.get("POD_NAMESPACE") or (account / "namespace").read_text().strip()
    url = f"https://{host}:{port}/apis/batch/v1/namespaces/{namespace}/jobs/{job}"

    def patch(snap: dict[str, Any]) -> None:
        import requests

        body = {
            "metadata": {
                "annotations": {
                    ANNOTATION_DONE: str(snap["bytesDone"]),
                    ANNOTATION_TOTAL: str(snap["bytesTotal"]),
                    ANNOTATION_PHASE: snap["phase"],
                }
            }
        }
        resp = requests.patch(
            url,
            data=json.dumps(body),
            headers={
                "Authorization": f"Bearer {token_file.read_text().strip()}",
                "Content-Type": "application/merge-patch+json",
            },
            verify=str(account / "ca.crt"),
            timeout=10,
        )
        resp.raise_for_status()

    return patch


class Publisher:
    """A daemon thread writing the progress file (and patching the Job) every `interval` s."""

    def __init__(
        self,
        progress: Progress,
        dest: Path,
        interval: float = 5.0,
        patch: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.progress, self.dest, self.interval, self.patch = progress, dest, interval, patch
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="weights-progress", daemon=True)
        self._patch_failed = False

    def __enter__(self) -> Publisher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.publish()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.publish()

    def publish(self) -> None:
        snap = self.progress.snapshot()
        with contextlib.suppress(OSError):  # a full or read-only cache fails the fill itself
            manifest.write_json_atomic(manifest.state_dir(self.dest) / "progress.json", snap)
        print(
            f"[alpaca-weights] {snap['phase']}: {snap['bytesDone']}/{snap['bytesTotal']} bytes, "
            f"{snap['filesDone']}/{snap['filesTotal']} files",
            file=sys.stdout,
            flush=True,
        )
        if self.patch is not None and not self._patch_failed:
            try:
                self.patch(snap)
            except Exception as exc:  # best effort: the status then shows no byte counts
                self._patch_failed = True
                print(f"[alpaca-weights] cannot annotate the Job: {exc}", file=sys.stderr)


def read(dest: Path) -> dict[str, Any] | None:
    """The last published progress of the cache at `dest` (None before the first)."""
    try:
        return json.loads((manifest.state_dir(dest) / "progress.json").read_text())
    except (OSError, ValueError):
        return None
