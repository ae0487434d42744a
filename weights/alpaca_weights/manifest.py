"""What a filled cache holds: a manifest (files, sizes, sha256) and an atomic completion marker.

Layout of a cache volume: the model folder at its root (config.json, tokenizer, *.safetensors),
the fill's own state under `.alpaca/`: `manifest.json`, `progress.json`, `lock`, `staging/`
(partial downloads, a weight diff and its base) and, written last, `complete`. A cache is
filled exactly when `complete` exists and names the same identity; every earlier failure
leaves no marker.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from alpaca_weights import errors
from alpaca_weights.errors import WeightsError

STATE_DIR = ".alpaca"
MARKER = "complete"
MANIFEST = "manifest.json"
HASH_CHUNK = 8 << 20


def state_dir(dest: Path) -> Path:
    return dest / STATE_DIR


def staging_dir(dest: Path) -> Path:
    return state_dir(dest) / "staging"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file, fsync it, rename it into place, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(HASH_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def model_files(dest: Path) -> list[Path]:
    """The model's files in the cache (everything outside `.alpaca/`)."""
    out = []
    for path in dest.rglob("*"):
        rel = path.relative_to(dest)
        if rel.parts[0] != STATE_DIR and path.is_file():
            out.append(path)
    return sorted(out)


def build(dest: Path, identity: dict[str, Any], known: dict[str, str]) -> dict[str, Any]:
    """The manifest of the cache's model files; sha256 from `known` (hashed while written) or read."""
    files = []
    for path in model_files(dest):
        rel = path.relative_to(dest).as_posix()
        sha = known.get(rel) or sha256_file(path)
        files.append({"path": rel, "size": path.stat().st_size, "sha256": sha})
    return {
        "identity": identity,
        "files": files,
        "totalBytes": sum(f["size"] for f in files),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def mark_complete(dest: Path, key: str, data: dict[str, Any]) -> None:
    """Write the manifest, then the marker: the last write of a successful fill."""
    write_json_atomic(state_dir(dest) / MANIFEST, data)
    write_json_atomic(state_dir(dest) / MARKER, {"key": key, "identity": data["identity"]})


def completed(dest: Path) -> dict[str, Any] | None:
    """The completion marker of the cache at `dest`, or None when it is not filled."""
    try:
        return json.loads((state_dir(dest) / MARKER).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return None


def read_manifest(dest: Path) -> dict[str, Any]:
    try:
        return json.loads((state_dir(dest) / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def verify(dest: Path) -> list[str]:
    """Re-hash every file of the manifest; the problems found (empty when the cache is sound)."""
    try:
        data = json.loads((state_dir(dest) / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        return [f"no readable manifest: {exc}"]
    problems = []
    for entry in data["files"]:
        path = dest / entry["path"]
        if not path.is_file():
            problems.append(f"{entry['path']}: missing")
        elif path.stat().st_size != entry["size"]:
            problems.append(f"{entry['path']}: size {path.stat().st_size} != {entry['size']}")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{entry['path']}: sha256 differs from the manifest")
    return problems


def require_verified(dest: Path) -> None:
    problems = verify(dest)
    if problems:
        raise WeightsError(errors.CHECKSUM_MISMATCH, "; ".join(problems))
