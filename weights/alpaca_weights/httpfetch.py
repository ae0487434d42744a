"""Ranged, resumable HTTP reads with stall detection, on top of requests.

Our own because the fill needs one behaviour for every http(s) and hf file: start at any
offset (`Range: bytes=N-`), treat "no byte for N seconds" as a stall (the socket read timeout),
and tell failures a retry can fix from those it cannot (401/403/404).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from alpaca_weights import errors
from alpaca_weights.errors import WeightsError

CHUNK = 1 << 20
_local = threading.local()


class Transient(WeightsError):
    """A failure another attempt may not repeat: a stall, a reset, a 5xx."""


def _session() -> Any:
    import requests

    if getattr(_local, "session", None) is None:
        _local.session = requests.Session()
    return _local.session


def _check(url: str, status: int) -> None:
    if status in (401, 403):
        raise WeightsError(errors.UNAUTHORIZED, f"{url}: HTTP {status}")
    if status in (404, 410):
        raise WeightsError(errors.SOURCE_NOT_FOUND, f"{url}: HTTP {status}")
    if status >= 400:
        raise Transient(errors.DOWNLOAD_FAILED, f"{url}: HTTP {status}")


def _transient(url: str, exc: Exception) -> Transient:
    import requests

    if isinstance(exc, requests.Timeout) or "timed out" in str(exc).lower():
        return Transient(errors.DOWNLOAD_STALLED, f"{url}: no bytes arrived in time ({exc})")
    return Transient(errors.DOWNLOAD_FAILED, f"{url}: {exc}")


def head_size(url: str, headers: dict[str, str], stall: float) -> int | None:
    """The size of one file from a HEAD request (None when the server does not say)."""
    import requests

    try:
        resp = _session().head(url, headers=headers, timeout=(stall, stall), allow_redirects=True)
    except requests.RequestException as exc:
        raise _transient(url, exc) from exc
    _check(url, resp.status_code)
    length = resp.headers.get("Content-Length")
    return int(length) if length is not None else None


def chunks(url: str, offset: int, headers: dict[str, str], stall: float) -> Iterator[bytes]:
    """The bytes of `url` from `offset` on; a server that ignores Range is skipped ahead.

    Reads with `read1` (whatever the socket has, up to CHUNK) so that bytes received before a
    connection breaks are kept and the next attempt resumes exactly after them.
    """
    import requests
    import urllib3

    sent = {**headers, "Accept-Encoding": "identity"}
    if offset:
        sent["Range"] = f"bytes={offset}-"
    try:
        with _session().get(url, headers=sent, stream=True, timeout=(stall, stall)) as resp:
            if resp.status_code == 416:
                return
            _check(url, resp.status_code)
            skip = offset if (offset and resp.status_code == 200) else 0
            while chunk := resp.raw.read1(CHUNK):
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                if chunk:
                    yield chunk
    except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
        raise _transient(url, exc) from exc


def classify_listing_error(uri: str, exc: Exception) -> WeightsError:
    """A listing failure from fsspec's HTTP filesystem (aiohttp) as a reason."""
    status = getattr(exc, "status", None)
    if status is None and exc.__cause__ is not None:
        status = getattr(exc.__cause__, "status", None)
    if isinstance(status, int) and status >= 400:
        try:
            _check(uri, status)
        except WeightsError as err:
            return err
    return Transient(errors.DOWNLOAD_FAILED, f"listing {uri}: {exc}")


def classify_hub_error(uri: str, exc: Exception) -> WeightsError:
    """A huggingface_hub failure as a reason: not found, unauthorized, or transient."""
    from huggingface_hub import errors as hub

    if isinstance(exc, hub.GatedRepoError):
        return WeightsError(errors.UNAUTHORIZED, f"{uri}: gated repo ({exc})")
    if isinstance(exc, hub.RepositoryNotFoundError | hub.RevisionNotFoundError):
        return WeightsError(errors.SOURCE_NOT_FOUND, f"{uri}: {type(exc).__name__}")
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int) and status >= 400:
        try:
            _check(uri, status)
        except WeightsError as err:
            return err
    return _transient(uri, exc)
