"""Safetensors files read and written one tensor at a time, without memory-mapping the file.

The safetensors library reads through a memory map (every page touched stays in the
process's RSS until the file is closed) and writes a file only from a dict holding all of its
tensors. Recovery needs neither: it reads one tensor with `pread` into its own buffer and
writes each result as soon as it exists, so memory is a few tensors, not shards. The format
is small and fixed (https://github.com/huggingface/safetensors#format): an 8-byte
little-endian header length, a JSON header mapping each name to dtype, shape and byte
offsets (plus `__metadata__`), then the bytes. Files written here are read back by the
library in the tests.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

METADATA = "__metadata__"
DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}
CODES = {name: code for code, name in DTYPES.items()}


@dataclass(frozen=True)
class Entry:
    """One tensor of a file: dtype code (F32...), shape, and its byte range after the header."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class Header:
    entries: list[Entry]  # in the order of their bytes in the file
    metadata: dict[str, str]
    data_start: int

    def entry(self, name: str) -> Entry:
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(name)


def read_header(path: Path) -> Header:
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        raw = json.loads(fh.read(length))
    metadata = raw.pop(METADATA, None) or {}
    entries = [
        Entry(name, info["dtype"], tuple(info["shape"]), *info["data_offsets"])
        for name, info in raw.items()
    ]
    return Header(sorted(entries, key=lambda e: e.start), metadata, 8 + length)


def read_tensor(fh: BinaryIO, header: Header, entry: Entry) -> Any:
    """One tensor, read with pread into a buffer of its own (a torch tensor owning it)."""
    import torch

    size = entry.end - entry.start
    dtype = getattr(torch, DTYPES[entry.dtype])
    if size == 0:
        return torch.empty(entry.shape, dtype=dtype)
    buffer = torch.empty(size, dtype=torch.uint8)  # not zeroed: every byte is read into it
    view = memoryview(buffer.numpy())
    got = 0
    while got < size:
        n = os.preadv(fh.fileno(), [view[got:]], header.data_start + entry.start + got)
        if n == 0:
            raise EOFError(f"{entry.name}: file ends after {got} of {size} bytes")
        got += n
    return buffer.view(dtype).reshape(entry.shape)


class Writer:
    """Writes a safetensors file whose tensors are announced up front and then written in order."""

    def __init__(
        self, path: Path, layout: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str]
    ) -> None:
        import torch

        header: dict[str, Any] = {METADATA: dict(metadata)} if metadata else {}
        self._order: list[tuple[str, int]] = []
        offset = 0
        for name, dtype, shape in layout:
            size = (
                math.prod(shape)
                * torch.empty((), dtype=getattr(torch, DTYPES[dtype])).element_size()
            )
            header[name] = {
                "dtype": dtype,
                "shape": list(shape),
                "data_offsets": [offset, offset + size],
            }
            self._order.append((name, size))
            offset += size
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the library writes it
        self.path = path
        self._fh = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._fh.write(struct.pack("<Q", len(text)) + text)
        self._next = 0

    def write(self, name: str, tensor: Any) -> None:
        import torch

        expected, size = self._order[self._next]
        if name != expected:
            raise ValueError(f"{self.path.name}: {name} written where {expected} belongs")
        data = tensor.contiguous().view(torch.uint8).reshape(-1) if tensor.numel() else tensor
        if data.numel() != size:
            raise ValueError(f"{name}: {data.numel()} bytes, the header says {size}")
        if size:
            self._fh.write(memoryview(data.numpy()))
        self._next += 1

    def close(self) -> None:
        if self._next != len(self._order):
            self._fh.close()
            raise ValueError(f"{self.path.name}: {len(self._order) - self._next} tensors missing")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()

    def abort(self) -> None:
        self._fh.close()
        self.path.unlink(missing_ok=True)


def code_of(dtype: Any) -> str:
    """The safetensors dtype code of a torch dtype."""
    return CODES[str(dtype).removeprefix("torch.")]
