"""What the operator and the weights CLI must agree on, in one dependency-free module.

The operator (`alpaca_operator`) renders the fill Job and reads its outcome; the CLI
(`alpaca_weights`, run by that Job) fills the cache and reports. Both import this module and
nothing else of each other (import-linter holds that), so these facts exist once:

- the cache key: a pure function of the weights identity, the cache PVC's name;
- the names derived from it (the fill Job, its ServiceAccount);
- the failure reasons and the exit codes that tell the Job whether a retry can help;
- the progress annotations the CLI writes on its Job and the operator reads;
- the termination message's shape, `Reason: message`.

Standard library only: the operator image carries no torch, fsspec or huggingface_hub.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

# --- the cache key ---------------------------------------------------------------------

STEM_LIMIT = 30
"""Characters of the source's last path segment kept in the key (the key stays <= 49 long,
so `<key>-fill` is a valid name too)."""


def identity(
    source: str,
    revision: str | None = None,
    recover_base: str | None = None,
    recover_base_revision: str | None = None,
    convert_to_safetensors: bool = True,
) -> dict[str, Any]:
    """What makes two fills the same cache: where from, which revision, how recovered and
    converted. Trailing slashes do not count."""
    ident: dict[str, Any] = {
        "source": source.rstrip("/"),
        "revision": revision,
        "convertToSafetensors": convert_to_safetensors,
    }
    if recover_base is not None:
        ident["recoverBase"] = recover_base.rstrip("/")
        ident["recoverBaseRevision"] = recover_base_revision
    return ident


def slug(text: str, limit: int) -> str:
    """Lower-case letters, digits and single dashes, at most `limit` long (never empty)."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return cleaned[:limit].strip("-") or "x"


def digest(*parts: object, length: int = 10) -> str:
    """The first `length` hex digits of the sha256 of the parts as canonical JSON."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:length]


def key_of(ident: dict[str, Any]) -> str:
    """The cache's name: `weights-<stem>-<10 hex>`, a DNS-1123 label stable across releases,
    e.g. `weights-alpaca-7b-wdiff-b102b48050`."""
    stem = slug(str(ident["source"]).rsplit("/", 1)[-1], STEM_LIMIT)
    return f"weights-{stem}-{digest(ident)}"


def cache_key(
    source: str,
    revision: str | None = None,
    recover_base: str | None = None,
    recover_base_revision: str | None = None,
    convert_to_safetensors: bool = True,
) -> str:
    """`key_of(identity(...))`."""
    return key_of(
        identity(source, revision, recover_base, recover_base_revision, convert_to_safetensors)
    )


def fill_job_name(key: str) -> str:
    """One fill Job per cache, named after it: two users applied at once make one Job."""
    return f"{key}-fill"


def fill_account_name(key: str) -> str:
    """The fill pod's ServiceAccount (and its Role and RoleBinding)."""
    return f"{key}-fill"


# --- how a fill ends --------------------------------------------------------------------

EXIT_RETRY = 1
"""Another attempt may succeed: the Job retries, and the download resumes."""
EXIT_PERMANENT = 3
"""A retry cannot help: the Job's podFailurePolicy fails the Job at once."""

INVALID_SOURCE = "InvalidSource"
SOURCE_NOT_FOUND = "SourceNotFound"
UNAUTHORIZED = "Unauthorized"
DOWNLOAD_STALLED = "DownloadStalled"
DOWNLOAD_FAILED = "DownloadFailed"
CHECKSUM_MISMATCH = "ChecksumMismatch"
SIZE_MISMATCH = "SizeMismatch"
NO_SPACE_LEFT = "NoSpaceLeft"
PERMISSION_DENIED = "PermissionDenied"
CACHE_IDENTITY_MISMATCH = "CacheIdentityMismatch"
CONVERSION_FAILED = "ConversionFailed"
RECOVERY_FAILED = "RecoveryFailed"
INTEGRITY_CHECK_FAILED = "IntegrityCheckFailed"
INTERNAL_ERROR = "InternalError"

REASONS: dict[str, str] = {
    INVALID_SOURCE: "the source URI or an option is malformed or unsupported",
    SOURCE_NOT_FOUND: "the repository, bucket, prefix, revision or file does not exist (HTTP 404)",
    UNAUTHORIZED: "the source refused the credentials, or none were given (HTTP 401/403)",
    DOWNLOAD_STALLED: "no bytes arrived for --stall-seconds on every retry",
    DOWNLOAD_FAILED: "the network or server failed on every retry (resets, 5xx, timeouts)",
    CHECKSUM_MISMATCH: "a downloaded file's sha256 differs from the source's (the file is removed)",
    SIZE_MISMATCH: "a downloaded file's size differs from the size the source listed",
    NO_SPACE_LEFT: "the cache volume is full (ENOSPC, EDQUOT, EFBIG)",
    PERMISSION_DENIED: "the cache volume is not writable by the fill Job (EACCES, EPERM, EROFS)",
    CACHE_IDENTITY_MISMATCH: "the cache is marked complete for another weights identity",
    CONVERSION_FAILED: "a PyTorch .bin checkpoint could not be converted to safetensors",
    RECOVERY_FAILED: "the weight diff and the base do not fit together (keys, shapes, files)",
    INTEGRITY_CHECK_FAILED: "the recovered model's sum of tensor sums differs from the expected value",
    INTERNAL_ERROR: "an unexpected error; the message holds the exception",
}
"""Every reason the CLI can end with, and what it means (the operator shows it as the
WeightsReady reason)."""

PERMANENT = frozenset(
    {
        INVALID_SOURCE,
        SOURCE_NOT_FOUND,
        UNAUTHORIZED,
        CHECKSUM_MISMATCH,
        SIZE_MISMATCH,
        NO_SPACE_LEFT,
        PERMISSION_DENIED,
        CACHE_IDENTITY_MISMATCH,
        CONVERSION_FAILED,
        RECOVERY_FAILED,
        INTEGRITY_CHECK_FAILED,
    }
)
"""Reasons the CLI exits with EXIT_PERMANENT for; the others exit with EXIT_RETRY."""


def exit_code(reason: str) -> int:
    return EXIT_PERMANENT if reason in PERMANENT else EXIT_RETRY


def termination_message(reason: str, message: str) -> str:
    """What the CLI writes to the pod's termination log."""
    return f"{reason}: {message}"


def parse_termination_message(text: str | None) -> tuple[str, str] | None:
    """(reason, message) from a termination message the CLI wrote; None for anything else
    (a crash's log tail, an empty message)."""
    if text and ":" in text:
        reason, _, message = text.partition(":")
        if reason.isalnum() and reason[:1].isupper():
            return reason, message.strip()
    return None


# --- progress on the fill Job -----------------------------------------------------------

ANNOTATION_DONE = "alpaca.dev/bytes-done"
ANNOTATION_TOTAL = "alpaca.dev/bytes-total"
ANNOTATION_PHASE = "alpaca.dev/fill-phase"
"""Annotations the CLI merge-patches on its own Job; the operator's observer reads them."""

PHASE_CONVERTING = "converting"
PHASE_RECOVERING = "recovering"
PHASE_VERIFYING = "verifying"
"""Values of ANNOTATION_PHASE after the download (before it: listing, downloading)."""

JOB_ENV = "ALPACA_WEIGHTS_JOB"
"""The environment variable that names the fill Job to the CLI (set by the Job's template)."""
