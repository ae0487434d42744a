"""The cache's identity and name, and the lock that lets one fill run per cache.

`cache_key` is a pure function of the weights identity (source, revision, recover base and its
revision, safetensors conversion) giving a DNS-1123 label usable as the PVC's name:
`weights-<stem>-<10 hex>`, where the stem is the source's last path segment slugged to at most
30 characters and the hex digits are the start of the sha256 of the identity as canonical JSON.
It is the same function as the operator's `render.names.cache_name` (a test holds them equal).
At most 49 characters, so `<key>-fill` (the fill Job) is also a valid name.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alpaca_operator.weights import errors, manifest

STEM_LIMIT = 30


def identity(
    source: str,
    revision: str | None = None,
    recover_base: str | None = None,
    recover_base_revision: str | None = None,
    convert_to_safetensors: bool = True,
) -> dict[str, Any]:
    """What makes two fills the same cache."""
    ident: dict[str, Any] = {
        "source": source.rstrip("/"),
        "revision": revision,
        "convertToSafetensors": convert_to_safetensors,
    }
    if recover_base is not None:
        ident["recoverBase"] = recover_base.rstrip("/")
        ident["recoverBaseRevision"] = recover_base_revision
    return ident


def _slug(text: str, limit: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].strip("-") or "x"


def key_of(ident: dict[str, Any]) -> str:
    """The cache name of an identity (see the module docstring)."""
    digest = hashlib.sha256(json.dumps([ident], sort_keys=True).encode()).hexdigest()[:10]
    stem = _slug(str(ident["source"]).rsplit("/", 1)[-1], STEM_LIMIT)
    return f"weights-{stem}-{digest}"


def cache_key(
    source: str,
    revision: str | None = None,
    recover_base: str | None = None,
    recover_base_revision: str | None = None,
    convert_to_safetensors: bool = True,
) -> str:
    """The stable, DNS-1123-safe cache name for a weights identity, e.g. `weights-alpaca-7b-1a2b3c4d5e`."""
    return key_of(
        identity(source, revision, recover_base, recover_base_revision, convert_to_safetensors)
    )


def fill_job_name(key: str) -> str:
    """One fill Job per cache, named after it (two users applied at once make one Job)."""
    return f"{key}-fill"


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
