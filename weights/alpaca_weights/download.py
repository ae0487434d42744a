"""Parallel, resumable downloads: retries with backoff, stalls, sha256 and size checks.

Each file is appended to `<staging>/<path>.part` (so a retry, or the Job's next pod, resumes
where the last one stopped), hashed as it is written, checked against the size and sha256
the source lists, then renamed into place; a `<path>.done` note beside the part records the
finished file so a later attempt skips it without reading it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from alpaca_weights import errors
from alpaca_weights.errors import WeightsError
from alpaca_weights.httpfetch import Transient
from alpaca_weights.progress import Progress
from alpaca_weights.sources import RemoteFile, Source


@dataclass(frozen=True)
class Settings:
    """How hard to try: parallel files, attempts per file, backoff, stall timeout."""

    workers: int = 4
    retries: int = 5
    backoff: float = 1.0
    backoff_max: float = 30.0
    stall_seconds: float = 60.0


class Aborted(Exception):
    """Another file failed; this one stops."""


class _Interrupted(Exception):
    """A transient failure part way through a file, with how much of it is on disk."""

    def __init__(self, cause: Transient, written: int) -> None:
        super().__init__(str(cause))
        self.cause, self.written = cause, written


def _write(fh: object, chunk: bytes, what: str) -> None:
    try:
        fh.write(chunk)  # type: ignore[attr-defined]
    except OSError as exc:
        raise errors.from_local_os_error(exc, what) from exc


def _rehash(part: Path) -> tuple[hashlib._Hash, int]:
    digest = hashlib.sha256()
    size = 0
    if part.exists():
        with open(part, "rb") as fh:
            while block := fh.read(8 << 20):
                digest.update(block)
                size += len(block)
    return digest, size


@dataclass
class _FileJob:
    source: Source
    file: RemoteFile
    out: Path
    part: Path
    progress: Progress
    settings: Settings
    abort: threading.Event

    @property
    def note(self) -> Path:
        return self.part.with_name(self.part.name.removesuffix(".part") + ".done")

    def finished(self) -> str | None:
        """The sha256 of a file an earlier attempt finished (None when it must be fetched)."""
        try:
            note = json.loads(self.note.read_text())
        except (OSError, ValueError):
            return None
        if self.out.is_file() and self.out.stat().st_size == note["size"]:
            return str(note["sha256"])
        return None

    def run(self) -> str:
        sha = self.finished()
        if sha is not None:
            self.progress.add(self.out.stat().st_size)
            self.progress.file_done()
            return sha
        self.part.parent.mkdir(parents=True, exist_ok=True)
        digest, written = _rehash(self.part)
        if self.file.size is not None and written > self.file.size:
            self.part.unlink()
            digest, written = hashlib.sha256(), 0
        self.progress.add(written)
        attempt = 0
        while True:
            try:
                written = self.append(digest, written)
                break
            except _Interrupted as exc:
                written = exc.written
                attempt += 1
                if attempt > self.settings.retries:
                    raise exc.cause from None
                delay = min(self.settings.backoff * 2 ** (attempt - 1), self.settings.backoff_max)
                if self.abort.wait(delay * random.uniform(0.5, 1.0)):
                    raise Aborted() from None
        return self.seal(digest.hexdigest(), written)

    def append(self, digest: hashlib._Hash, written: int) -> int:
        """Append the source's bytes from `written` on; the new size (or _Interrupted)."""
        with open(self.part, "ab") as fh:
            try:
                for chunk in self.source.read(self.file, written):
                    if self.abort.is_set():
                        raise Aborted()
                    _write(fh, chunk, self.file.path)
                    digest.update(chunk)
                    written += len(chunk)
                    self.progress.add(len(chunk))
            except Transient as exc:
                raise _Interrupted(exc, written) from exc
            try:
                fh.flush()
                os.fsync(fh.fileno())
            except OSError as exc:
                raise errors.from_local_os_error(exc, self.file.path) from exc
        return written

    def seal(self, sha: str, size: int) -> str:
        f = self.file
        if f.size is not None and size != f.size:
            raise Transient(errors.SIZE_MISMATCH, f"{f.path}: got {size} bytes, expected {f.size}")
        if f.sha256 is not None and sha != f.sha256:
            self.part.unlink(missing_ok=True)
            raise WeightsError(
                errors.CHECKSUM_MISMATCH, f"{f.path}: sha256 {sha} != {f.sha256} (removed)"
            )
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.part, self.out)
            self.note.write_text(json.dumps({"sha256": sha, "size": size}))
        except OSError as exc:
            raise errors.from_local_os_error(exc, f.path) from exc
        self.progress.file_done()
        return sha


def fetch(
    source: Source,
    files: list[RemoteFile],
    out_dir: Path,
    partial_dir: Path,
    progress: Progress,
    settings: Settings,
    counted: bool = False,
) -> dict[str, str]:
    """Download `files` into `out_dir` in parallel; the sha256 of each, by path.

    `counted` when the caller already added these files to the progress totals.
    """
    if not counted:
        progress.total += sum(f.size or 0 for f in files)
        progress.files_total += len(files)
    abort = threading.Event()
    jobs = [
        _FileJob(
            source,
            f,
            out_dir / f.path,
            partial_dir / f"{f.path}.part",
            progress,
            settings,
            abort,
        )
        for f in sorted(files, key=lambda f: -(f.size or 0))
    ]
    with ThreadPoolExecutor(max(1, settings.workers), thread_name_prefix="fetch") as pool:
        futures = {pool.submit(job.run): job.file.path for job in jobs}
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [fut for fut in done if fut.exception() is not None]
        if failed:
            abort.set()
            wait(futures)
            first = next(fut.exception() for fut in failed)
            raise first  # type: ignore[misc]
    return {futures[fut]: fut.result() for fut in futures}
