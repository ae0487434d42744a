"""One fill of a cache: lock, list, download, (convert, recover), manifest, marker.

A fill that finds the cache complete for its identity downloads nothing; a second fill of the
same cache waits on the lock and then finds it complete. Nothing marks the cache complete
except the last step, so a failure at any point leaves it unmarked (and resumable).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alpaca_weights import cache, contract, convert, download, errors, manifest, sources
from alpaca_weights.errors import WeightsError
from alpaca_weights.progress import Progress


@dataclass
class FillRequest:
    """What to fill: the CLI's `fill` arguments."""

    source: str
    dest: Path
    revision: str | None = None
    recover_base: str | None = None
    recover_base_revision: str | None = None
    expected_checksum: float | None = None
    to_safetensors: bool = False
    key: str | None = None
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    settings: download.Settings = field(default_factory=download.Settings)
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def identity(self) -> dict[str, Any]:
        return cache.identity(
            self.source,
            self.revision,
            self.recover_base,
            self.recover_base_revision,
            self.to_safetensors,
        )


@dataclass
class FillResult:
    key: str
    reused: bool
    total_bytes: int
    downloaded_bytes: int
    checksum: float | None = None


def _probe_writable(dest: Path) -> None:
    probe = manifest.state_dir(dest) / ".probe"
    try:
        with open(probe, "wb") as fh:
            fh.write(b"0")
            fh.flush()
            os.fsync(fh.fileno())
        probe.unlink()
    except OSError as exc:
        raise errors.from_local_os_error(exc, str(dest)) from exc


def _listed(uri: str, revision: str | None, req: FillRequest) -> tuple[Any, list[Any]]:
    options = sources.Options(stall_seconds=req.settings.stall_seconds, env=req.env)
    src = sources.parse(uri, revision, options)
    return src, sources.select(src.list_files(), req.include, req.exclude)


def _plain(req: FillRequest, progress: Progress) -> dict[str, str]:
    """Download straight into the cache root; convert .bin checkpoints when asked."""
    src, files = _listed(req.source, req.revision, req)
    progress.set_phase("downloading")
    shas = download.fetch(
        src,
        files,
        req.dest,
        manifest.staging_dir(req.dest) / "model",
        progress,
        req.settings,
    )
    if req.to_safetensors and convert.checkpoint_bins(req.dest):
        progress.set_phase(contract.PHASE_CONVERTING)
        convert.convert_folder(req.dest)
    return shas


def _recovered(req: FillRequest, progress: Progress) -> float | None:
    """Download the diff and the base into staging, then recover the model into the cache root."""
    from alpaca_weights import recover

    assert req.recover_base is not None
    staging = manifest.staging_dir(req.dest)
    diff_src, diff_files = _listed(req.source, req.revision, req)
    base_src, base_files = _listed(req.recover_base, req.recover_base_revision, req)
    progress.set_phase("downloading")
    progress.total += sum(f.size or 0 for f in diff_files + base_files)
    progress.files_total += len(diff_files) + len(base_files)
    for src, files, name in ((diff_src, diff_files, "diff"), (base_src, base_files, "base")):
        parts = staging / f"{name}.parts"
        download.fetch(src, files, staging / name, parts, progress, req.settings, counted=True)
    progress.set_phase(contract.PHASE_CONVERTING)
    for name in ("diff", "base"):
        if convert.checkpoint_bins(staging / name):
            convert.convert_folder(staging / name)
    progress.set_phase(contract.PHASE_RECOVERING)
    return recover.recover(staging / "diff", staging / "base", req.dest, req.expected_checksum)


def fill(req: FillRequest, progress: Progress) -> FillResult:
    """Fill the cache at `req.dest` once; reuse it when already complete for the same identity."""
    ident = req.identity()
    key = req.key or cache.key_of(ident)
    with cache.fill_lock(req.dest):
        marker = manifest.completed(req.dest)
        if marker is not None:
            if marker.get("identity") != ident:
                raise WeightsError(
                    errors.CACHE_IDENTITY_MISMATCH,
                    f"{req.dest} is complete for {marker.get('identity')}, not {ident}",
                )
            total = manifest.read_manifest(req.dest).get("totalBytes", 0)
            progress.set_phase("complete")
            return FillResult(key, True, total, 0)
        _probe_writable(req.dest)
        checksum = None
        shas: dict[str, str] = {}
        if req.recover_base is None:
            shas = _plain(req, progress)
        else:
            checksum = _recovered(req, progress)
        progress.set_phase(contract.PHASE_VERIFYING)
        try:
            data = manifest.build(req.dest, ident, shas)
            if checksum is not None:
                data["recoveredChecksum"] = checksum
            manifest.mark_complete(req.dest, key, data)
            shutil.rmtree(manifest.staging_dir(req.dest), ignore_errors=True)
        except OSError as exc:
            raise errors.from_local_os_error(exc, "the manifest") from exc
        progress.set_phase("complete")
        return FillResult(key, False, data["totalBytes"], progress.done, checksum)
