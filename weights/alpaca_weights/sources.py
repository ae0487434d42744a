"""Where weights come from: URI parsing, listing a source's files, reading one from an offset.

Schemes: `hf://ORG/NAME` (huggingface_hub lists the repo at a pinned commit; honours
HF_ENDPOINT and HF_TOKEN), `s3://` and `gs://` (fsspec: s3fs, gcsfs), `http(s)://HOST/PATH/`
(a folder with an HTML index, listed by fsspec; or one file), and local paths (`/...`,
`file://`; a `pvc://` source is mounted by the operator and arrives as a path).
Bytes of http(s) and hf files are read by `httpfetch` (ranged, resumable, stall-aware); s3/gs
through the filesystem's own ranged reads; local files by seeking.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from alpaca_weights import errors, httpfetch
from alpaca_weights.errors import WeightsError

CHUNK = 1 << 20
SKIPPED = (".gitattributes", ".alpaca/*", ".git/*", ".cache/*", ".hf/*")
WEIGHT_FORMATS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.ot")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a source: its path in the model folder, size and sha256 when the source knows them."""

    path: str
    size: int | None
    locator: str
    sha256: str | None = None


class Source(Protocol):
    uri: str

    def list_files(self) -> list[RemoteFile]: ...

    def read(self, file: RemoteFile, offset: int) -> Iterator[bytes]: ...


@dataclass
class Options:
    """How sources read: stall timeout and credentials from the environment."""

    stall_seconds: float = 60.0
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))


def select(files: list[RemoteFile], include: list[str], exclude: list[str]) -> list[RemoteFile]:
    """Drop repository noise and, when safetensors exist, the same weights in older formats."""
    has_safetensors = any(f.path.endswith(".safetensors") for f in files)
    dropped = list(SKIPPED) + list(exclude) + (list(WEIGHT_FORMATS) if has_safetensors else [])
    kept = [f for f in files if not any(fnmatch.fnmatch(f.path, p) for p in dropped)]
    if include:
        kept = [f for f in kept if any(fnmatch.fnmatch(f.path, p) for p in include)]
    return sorted(kept, key=lambda f: f.path)


@dataclass
class LocalSource:
    """A folder on a mounted volume (PVC, hostPath) or the local disk."""

    uri: str
    root: Path
    options: Options

    def list_files(self) -> list[RemoteFile]:
        if not self.root.exists():
            raise WeightsError(errors.SOURCE_NOT_FOUND, f"{self.root} does not exist")
        if self.root.is_file():
            return [RemoteFile(self.root.name, self.root.stat().st_size, str(self.root))]
        out = []
        for path in self.root.rglob("*"):
            if path.is_file():
                rel = path.relative_to(self.root).as_posix()
                out.append(RemoteFile(rel, path.stat().st_size, str(path)))
        return out

    def read(self, file: RemoteFile, offset: int) -> Iterator[bytes]:
        try:
            with open(file.locator, "rb") as fh:
                fh.seek(offset)
                while chunk := fh.read(CHUNK):
                    yield chunk
        except FileNotFoundError as exc:
            raise WeightsError(errors.SOURCE_NOT_FOUND, f"{file.locator} vanished") from exc
        except PermissionError as exc:
            raise WeightsError(errors.UNAUTHORIZED, f"cannot read {file.locator}") from exc


@dataclass
class HttpSource:
    """A folder served over HTTP(S) (an HTML index page listing its files), or a single file."""

    uri: str
    options: Options

    def headers(self) -> dict[str, str]:
        auth = self.options.env.get("HTTP_AUTHORIZATION")
        return {"Authorization": auth} if auth else {}

    def list_files(self) -> list[RemoteFile]:
        if not self.uri.endswith("/"):
            size = httpfetch.head_size(self.uri, self.headers(), self.options.stall_seconds)
            return [RemoteFile(unquote(self.uri.rsplit("/", 1)[-1]), size, self.uri)]
        import aiohttp
        import fsspec

        fs = fsspec.filesystem("http", headers=self.headers(), skip_instance_cache=True)
        try:
            found = fs.find(self.uri, detail=True)
        except FileNotFoundError as exc:
            raise WeightsError(errors.SOURCE_NOT_FOUND, f"{self.uri} not found") from exc
        except (OSError, aiohttp.ClientError) as exc:
            # a refused listing (401, 403) comes as aiohttp's ClientResponseError, no OSError:
            # it escaped as a crash (exit 1, retried) instead of Unauthorized
            raise httpfetch.classify_listing_error(self.uri, exc) from exc
        out = []
        for url, info in found.items():
            if not url.startswith(self.uri) or info.get("type") == "directory":
                continue
            size = info.get("size")
            if size is None:
                size = httpfetch.head_size(url, self.headers(), self.options.stall_seconds)
            out.append(RemoteFile(unquote(url[len(self.uri) :]), size, url))
        if not out:
            raise WeightsError(errors.SOURCE_NOT_FOUND, f"{self.uri} lists no files")
        return out

    def read(self, file: RemoteFile, offset: int) -> Iterator[bytes]:
        return httpfetch.chunks(file.locator, offset, self.headers(), self.options.stall_seconds)


@dataclass
class HfSource:
    """A Hugging Face Hub model repo at a revision, pinned to the commit it resolves to."""

    uri: str
    repo_id: str
    revision: str | None
    options: Options

    def endpoint(self) -> str:
        return self.options.env.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")

    def token(self) -> str | None:
        return self.options.env.get("HF_TOKEN") or self.options.env.get("HUGGING_FACE_HUB_TOKEN")

    def headers(self) -> dict[str, str]:
        token = self.token()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def list_files(self) -> list[RemoteFile]:
        from huggingface_hub import HfApi, hf_hub_url

        api = HfApi(endpoint=self.endpoint(), token=self.token() or False)
        try:
            info = api.model_info(
                self.repo_id,
                revision=self.revision,
                files_metadata=True,
                timeout=self.options.stall_seconds,
            )
        except Exception as exc:
            raise httpfetch.classify_hub_error(self.uri, exc) from exc
        commit = info.sha or self.revision
        out = []
        for sib in info.siblings or []:
            url = hf_hub_url(self.repo_id, sib.rfilename, revision=commit, endpoint=self.endpoint())
            sha = sib.lfs.sha256 if sib.lfs is not None else None
            out.append(RemoteFile(sib.rfilename, sib.size, url, sha))
        return out

    def read(self, file: RemoteFile, offset: int) -> Iterator[bytes]:
        return httpfetch.chunks(file.locator, offset, self.headers(), self.options.stall_seconds)


@dataclass
class FsspecSource:
    """An object store prefix through fsspec (s3fs for s3://, gcsfs for gs://)."""

    uri: str
    protocol: str
    options: Options

    def filesystem(self) -> Any:
        import fsspec

        stall = self.options.stall_seconds
        env = self.options.env
        kwargs: dict[str, Any] = {"skip_instance_cache": True}
        if self.protocol == "s3":
            kwargs["config_kwargs"] = {
                "connect_timeout": stall,
                "read_timeout": stall,
                "retries": {"max_attempts": 1},
            }
            if env.get("AWS_ENDPOINT_URL"):
                kwargs["endpoint_url"] = env["AWS_ENDPOINT_URL"]
            if env.get("AWS_ACCESS_KEY_ID"):
                kwargs["key"] = env["AWS_ACCESS_KEY_ID"]
                kwargs["secret"] = env.get("AWS_SECRET_ACCESS_KEY")
            elif not env.get("AWS_PROFILE"):
                kwargs["anon"] = env.get("AWS_NO_SIGN_REQUEST", "").lower() in ("1", "true")
        elif self.protocol == "gs":
            kwargs["timeout"] = stall
            if env.get("GOOGLE_APPLICATION_CREDENTIALS_JSON"):
                kwargs["token"] = json.loads(env["GOOGLE_APPLICATION_CREDENTIALS_JSON"])
        return fsspec.filesystem(self.protocol, **kwargs)

    def list_files(self) -> list[RemoteFile]:
        fs = self.filesystem()
        root = self.uri.split("://", 1)[1].rstrip("/")
        try:
            found = fs.find(root, detail=True)
        except FileNotFoundError as exc:
            raise WeightsError(errors.SOURCE_NOT_FOUND, f"{self.uri} not found") from exc
        except PermissionError as exc:
            raise WeightsError(errors.UNAUTHORIZED, f"{self.uri}: {exc}") from exc
        except OSError as exc:
            raise httpfetch.Transient(errors.DOWNLOAD_FAILED, f"listing {self.uri}: {exc}") from exc
        out = []
        for key, info in found.items():
            if info.get("type") == "directory" or key.endswith("/"):
                continue
            rel = key[len(root) :].lstrip("/") or key.rsplit("/", 1)[-1]
            out.append(RemoteFile(rel, int(info["size"]), key))
        if not out:
            raise WeightsError(errors.SOURCE_NOT_FOUND, f"{self.uri} holds no objects")
        return out

    def read(self, file: RemoteFile, offset: int) -> Iterator[bytes]:
        fs = self.filesystem()
        try:
            with fs.open(file.locator, "rb", block_size=8 * CHUNK, cache_type="none") as fh:
                fh.seek(offset)
                while chunk := fh.read(8 * CHUNK):
                    yield chunk
        except FileNotFoundError as exc:
            raise WeightsError(errors.SOURCE_NOT_FOUND, f"{file.locator} not found") from exc
        except PermissionError as exc:
            raise WeightsError(errors.UNAUTHORIZED, f"{file.locator}: {exc}") from exc
        except OSError as exc:
            raise httpfetch.Transient(errors.DOWNLOAD_FAILED, f"{file.locator}: {exc}") from exc


def parse(uri: str, revision: str | None = None, options: Options | None = None) -> Source:
    """The source behind a URI (the same forms the AlpacaModel API accepts)."""
    options = options or Options()
    scheme = urlsplit(uri).scheme
    if scheme == "" and uri.startswith("/"):
        return LocalSource(uri, Path(uri), options)
    if scheme == "file":
        return LocalSource(uri, Path(unquote(urlsplit(uri).path)), options)
    if scheme in ("http", "https"):
        return HttpSource(uri, options)
    if scheme == "hf":
        repo_id = uri.removeprefix("hf://").strip("/")
        if repo_id.count("/") > 1 or not repo_id:
            raise WeightsError(errors.INVALID_SOURCE, f"{uri}: expected hf://ORG/NAME")
        return HfSource(uri, repo_id, revision, options)
    if scheme in ("s3", "gs"):
        return FsspecSource(uri, scheme, options)
    if scheme == "pvc":
        raise WeightsError(
            errors.INVALID_SOURCE, f"{uri}: mount the claim and pass its path (the operator does)"
        )
    raise WeightsError(errors.INVALID_SOURCE, f"{uri}: unsupported scheme {scheme!r}")
