"""Real servers for the weights tests and the node tier: a folder over HTTP with Range support
(that can drop or stall a response part way), and a Hugging Face Hub imitation (the model-info
API route with file metadata, and the resolve route for bytes). On 127.0.0.1 by default; the
node tier and the demo serve models to pods on the node's address."""

from __future__ import annotations

import hashlib
import html
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

BLOCK = 256 << 10
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Faults:
    """Misbehaviour per file path: drop the connection (or stall) after N bytes, `times` times."""

    drop_after: dict[str, int] = field(default_factory=dict)
    stall_after: dict[str, int] = field(default_factory=dict)
    times: dict[str, int] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before each block of every response


class FileServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        root: Path,
        hub: dict[str, Path] | None = None,
        token: str | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__((host, 0), Handler)
        self.root = root
        self.hub = hub or {}
        self.token = token
        self.faults = Faults()
        self.requests: list[tuple[str, str, str | None]] = []
        self.bytes_sent = 0
        self.released = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        self.shutdown()
        self.server_close()
        self.thread.join()


def _hub_siblings(folder: Path) -> list[dict]:
    out = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        entry = {"rfilename": path.relative_to(folder).as_posix(), "size": len(data)}
        entry["blobId"] = hashlib.sha1(data).hexdigest()
        if path.suffix in (".safetensors", ".bin"):
            entry["lfs"] = {
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "pointerSize": 134,
            }
        out.append(entry)
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FileServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._handle(head=True)

    def do_GET(self) -> None:
        self._handle(head=False)

    def _reply(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self, head: bool) -> None:
        srv = self.server
        path = unquote(urlsplit(self.path).path)
        with srv.lock:
            srv.requests.append((self.command, path, self.headers.get("Range")))
        if srv.token and self.headers.get("Authorization") != f"Bearer {srv.token}":
            return self._reply(401, b"unauthorized")
        if path.startswith("/api/models/"):
            return self._api(path)
        match = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if match and srv.hub:
            folder = srv.hub.get(match.group(1))
            target = folder / match.group(3) if folder else None
            return self._file(target, match.group(3), head)
        target = srv.root / path.lstrip("/")
        if target.is_dir():
            return self._index(target, path)
        return self._file(target, path.lstrip("/"), head)

    def _api(self, path: str) -> None:
        match = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$", path)
        folder = self.server.hub.get(match.group(1)) if match else None
        if folder is None:
            return self._reply(404, b'{"error":"Repository not found"}', "application/json")
        body = {"id": match.group(1), "sha": COMMIT, "siblings": _hub_siblings(folder)}
        self._reply(200, json.dumps(body).encode(), "application/json")

    def _index(self, folder: Path, path: str) -> None:
        base = path if path.endswith("/") else path + "/"
        links = []
        for child in sorted(folder.iterdir()):
            name = child.name + ("/" if child.is_dir() else "")
            links.append(f'<li><a href="{quote(base + name)}">{html.escape(name)}</a></li>')
        body = f"<html><body><ul>{''.join(links)}</ul></body></html>".encode()
        self._reply(200, body, "text/html")

    def _fault(self, rel: str) -> tuple[int | None, bool]:
        """Bytes after which this response misbehaves, and whether it stalls (else drops)."""
        faults = self.server.faults
        with self.server.lock:
            if faults.times.get(rel, 0) <= 0:
                return None, False
            faults.times[rel] -= 1
        if rel in faults.stall_after:
            return faults.stall_after[rel], True
        return faults.drop_after.get(rel), False

    def _file(self, target: Path | None, rel: str, head: bool) -> None:
        if target is None or not target.is_file():
            return self._reply(404, b"not found")
        size = target.stat().st_size
        start = 0
        rng = self.headers.get("Range")
        if rng and (m := re.match(r"bytes=(\d+)-$", rng)):
            start = int(m.group(1))
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        if head:
            return None
        limit, stall = self._fault(rel) if not head else (None, False)
        sent = 0
        with open(target, "rb") as fh:
            fh.seek(start)
            while block := fh.read(BLOCK):
                if self.server.faults.delay:
                    self.server.released.wait(self.server.faults.delay)
                if limit is not None and sent + len(block) > limit:
                    block = block[: max(0, limit - sent)]
                    self.wfile.write(block)
                    self.wfile.flush()
                    with self.server.lock:
                        self.server.bytes_sent += len(block)
                    if stall:
                        self.server.released.wait(30)
                    self.close_connection = True
                    return None
                self.wfile.write(block)
                sent += len(block)
                with self.server.lock:
                    self.server.bytes_sent += len(block)
        return None
