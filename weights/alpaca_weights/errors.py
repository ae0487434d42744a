"""Failures of the weights CLI, each with a reason from `contract` (the operator shows it as the
condition reason).

The CLI writes `Reason: message` to the Pod's termination message path and exits with
`EXIT_RETRY` when another attempt may succeed (the Job retries and resumes) or `EXIT_PERMANENT`
when it cannot (the Job's podFailurePolicy fails the Job at once).
"""

from __future__ import annotations

import errno

from alpaca_weights.contract import (  # noqa: F401 - the reasons, re-exported for the CLI's modules
    CACHE_IDENTITY_MISMATCH,
    CHECKSUM_MISMATCH,
    CONVERSION_FAILED,
    DOWNLOAD_FAILED,
    DOWNLOAD_STALLED,
    EXIT_PERMANENT,
    EXIT_RETRY,
    INTEGRITY_CHECK_FAILED,
    INTERNAL_ERROR,
    INVALID_SOURCE,
    NO_SPACE_LEFT,
    PERMANENT,
    PERMISSION_DENIED,
    REASONS,
    RECOVERY_FAILED,
    SIZE_MISMATCH,
    SOURCE_NOT_FOUND,
    UNAUTHORIZED,
    exit_code,
)


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
        return exit_code(self.reason)


def from_local_os_error(exc: OSError, what: str) -> WeightsError:
    """An OSError while writing the cache, as a reason a person can act on."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return WeightsError(NO_SPACE_LEFT, f"no space left writing {what}: {exc.strerror}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return WeightsError(PERMISSION_DENIED, f"cannot write {what}: {exc.strerror}")
    return WeightsError(INTERNAL_ERROR, f"{what}: {exc}")
