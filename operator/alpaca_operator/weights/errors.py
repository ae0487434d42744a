"""Failure reasons of the weights CLI: stable CamelCase strings the operator shows as condition reasons.

The CLI writes `Reason: message` to the Pod's termination message path and exits with
`EXIT_RETRY` when another attempt may succeed (the Job retries and resumes) or `EXIT_PERMANENT`
when it cannot (the Job's podFailurePolicy fails the Job at once).
"""

from __future__ import annotations

import errno

EXIT_RETRY = 1
EXIT_PERMANENT = 3

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

PERMANENT = {
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


class WeightsError(Exception):
    """A failure with a stable reason; `permanent` when a retry of the Job cannot fix it."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message

    @property
    def permanent(self) -> bool:
        return self.reason in PERMANENT

    @property
    def exit_code(self) -> int:
        return EXIT_PERMANENT if self.permanent else EXIT_RETRY


def from_local_os_error(exc: OSError, what: str) -> WeightsError:
    """An OSError while writing the cache, as a reason a person can act on."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return WeightsError(NO_SPACE_LEFT, f"no space left writing {what}: {exc.strerror}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return WeightsError(PERMISSION_DENIED, f"cannot write {what}: {exc.strerror}")
    return WeightsError(INTERNAL_ERROR, f"{what}: {exc}")
